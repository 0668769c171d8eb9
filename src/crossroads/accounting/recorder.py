"""Generation records, written in batches off the request path.

`record()` appends to an in-memory buffer; a background task flushes it at least every `flush_interval` seconds (or
sooner when a batch fills), writing full batches back to back while they wait, so the writer keeps up however fast
records arrive. When the store is unavailable the rows stay in the buffer and the
flush is retried with backoff, so a database outage delays records but loses none; `stop()` flushes what is left
before the process exits. The buffer is bounded (`max_pending`): when it is full, `record()` waits for room — requests
slow down rather than memory growing without end or records being dropped. With `strict=True` each `record()` waits
until its row is committed.

Rows not yet written are still visible through `pending()`, so a record can be read back at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from crossroads.store import StoreUnavailable
from crossroads.store.rows import GenerationRow, from_record

if TYPE_CHECKING:
    from crossroads.store import Store
    from crossroads.store.rows import GenerationRecord

log = logging.getLogger("crossroads.accounting")


class GenerationRecorder:
    def __init__(self, store: Store, *, flush_interval: float = 1.0, batch_size: int = 2000,
                 max_pending: int = 100_000, strict: bool = False) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self._room = asyncio.Event()  # set while the buffer has room
        self._room.set()
        self.strict = strict
        self._buffer: list[GenerationRecord] = []
        self._by_id: dict[str, GenerationRecord] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def record(self, record: GenerationRecord) -> Awaitable[None] | None:
        """Buffer a record. Returns what the caller must await when it has to wait (the buffer is full; or strict
        durability, until the record is committed), else None: the common case costs no coroutine."""
        if len(self._buffer) >= self.max_pending or self.strict:
            return self._record_waiting(record)
        self._add(record)
        return None

    async def _record_waiting(self, record: GenerationRecord) -> None:
        while len(self._buffer) >= self.max_pending:
            if self._room.is_set():
                log.warning("%d generation records waiting to be written: holding requests until the store "
                            "catches up", len(self._buffer))
                self._room.clear()
            await self._room.wait()
        self._add(record)
        if self.strict:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[record[0]] = waiter
            self._wake.set()
            await waiter

    def _add(self, record: GenerationRecord) -> None:
        self._buffer.append(record)
        self._by_id[record[0]] = record
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def pending(self, generation_id: str) -> GenerationRow | None:
        record = self._by_id.get(generation_id)
        return from_record(record) if record is not None else None

    def pending_count(self) -> int:
        return len(self._buffer)

    async def stop(self, grace: float = 30.0) -> None:
        """Flush everything still buffered, retrying for up to `grace` seconds."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        deadline = asyncio.get_running_loop().time() + grace
        delay = 0.1
        while self._buffer:
            if await self._flush():
                continue
            if asyncio.get_running_loop().time() + delay > deadline:
                log.error("could not write %d generation records before shutdown", len(self._buffer))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _run(self) -> None:
        delay = self.flush_interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._buffer:
                delay = self.flush_interval
                continue
            ok = await self._flush()
            # Keep going while full batches wait (the writer keeps up with any rate); a remainder waits for the next
            # round, so a quiet moment never turns into a stream of one-row transactions.
            while ok and len(self._buffer) >= self.batch_size:
                ok = await self._flush()
            # After a failure, back off (up to 5 s) instead of hammering a database that is down.
            delay = self.flush_interval if ok else min(max(delay * 2, 0.25), 5.0)

    async def _flush(self) -> bool:
        batch = self._buffer[: self.batch_size]
        try:
            await self.store.insert_generations(batch)
        except StoreUnavailable as exc:
            log.warning("store unavailable, %d generation records held for retry: %s", len(self._buffer), exc)
            return False
        except Exception:  # noqa: BLE001 - a bad row must not wedge the writer forever
            log.exception("writing %d generation records failed; retrying them one by one", len(batch))
            batch = await self._write_singly(batch)
        del self._buffer[: len(batch)]
        if len(self._buffer) < self.max_pending:
            self._room.set()
        for record in batch:
            self._by_id.pop(record[0], None)
            waiter = self._waiters.pop(record[0], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return True

    async def _write_singly(self, batch: list[GenerationRecord]) -> list[GenerationRecord]:
        """Write records one at a time; return the prefix that was dealt with (written, or dropped as unwritable)."""
        for done, record in enumerate(batch):
            try:
                await self.store.insert_generations([record])
            except StoreUnavailable:
                return batch[:done]
            except Exception:  # noqa: BLE001
                log.exception("dropping unwritable generation record %s", record[0])
        return batch
