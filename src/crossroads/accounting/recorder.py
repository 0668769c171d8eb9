"""Generation records, written in batches off the request path.

`record()` appends to an in-memory buffer; a background task flushes it at least every `flush_interval` seconds (or
sooner when a batch fills), writing full batches back to back while they wait, so the writer keeps up however fast
records arrive. When the store is unavailable the rows stay in the buffer and the flush is retried with backoff
(records arriving meanwhile do not bring the retry forward: a failed attempt costs a connection attempt, and retrying
on every arrival once cost most of the CPU during an outage), so a database outage delays records but loses none.

Nothing answered is ever dropped; what cannot stay in memory goes to the local spool (`spool.py`, `data_dir/spool/`):

- the buffer is bounded (`max_pending`): when it is full, the oldest records are written to the spool (in a worker
  thread) instead of making requests wait; only when the spool cannot be written either does `record()` make its
  caller wait for room;
- `stop()` flushes what is left for up to the shutdown grace period and spools whatever it could not write;
- a row the database refuses for another reason than being unavailable (after the batch was retried one row at a
  time) is spooled with a warning naming it, instead of being dropped.

Spool files are replayed when the writer starts (records of an earlier run or of a worker that died) and whenever this
process spooled records and its writes succeed again.

With `strict=True` each `record()` waits until its row is committed, for at most `commit_wait` seconds; past that it
raises `NotCommitted` (the record stays held, and is written or spooled later). While the store is known to be
unavailable (the last write failed, or a commit wait ran out, and no write succeeded since) `refusing` is true: the
gateway then refuses strict-durability requests before they go upstream (`Services.check_recordable`), and the writer
probes the store until a write transaction succeeds again.

Rows not yet written are still visible through `pending()`, so a record can be read back at once (spooled ones not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from crossroads.store import StoreUnavailable
from crossroads.store.loops import STOP_BOUND, Stopping
from crossroads.store.rows import GENERATION_COLUMNS, GenerationRow, from_record

if TYPE_CHECKING:
    from crossroads.accounting.spool import Spool
    from crossroads.store import Store
    from crossroads.store.rows import GenerationRecord

log = logging.getLogger("crossroads.accounting")

COMMIT_WAIT = 2.0  # seconds a strict-durability request waits for its record's commit before it is answered 503
MAX_BACKOFF = 5.0  # seconds between write attempts while the store is unavailable (batched)
MAX_BACKOFF_STRICT = 1.0  # strict: requests are refused until a write succeeds, so the store is probed more often
WARN_EVERY = 30.0  # seconds between repeated warnings of the same outage
_STATUS = GENERATION_COLUMNS.index("status")
_ERROR = GENERATION_COLUMNS.index("error")


class NotCommitted(Exception):
    """A strict-durability record was not committed within the wait; it is still held (or spooled), not lost."""


class GenerationRecorder:
    def __init__(self, store: Store, *, flush_interval: float = 1.0, batch_size: int = 2000,
                 max_pending: int = 100_000, strict: bool = False, spool: Spool | None = None,
                 commit_wait: float = COMMIT_WAIT) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.spill_size = max(batch_size, max_pending // 4)  # records moved to the spool at once when the buffer fills
        # A flush starts early at a full batch, or at half the buffer when that is smaller: while the store keeps up,
        # records are written before the buffer fills and none is spooled.
        self._wake_at = max(1, min(batch_size, max_pending // 2))
        self._room = asyncio.Event()  # set while the buffer has room (only waited on when the spool is unusable)
        self._room.set()
        self.strict = strict
        self.commit_wait = commit_wait
        self.spool = spool
        self.store_down = False  # the last write failed (or a commit wait ran out) and none succeeded since
        self.refusing = False  # strict and store_down: requests are refused before they go upstream (one attribute)
        self._buffer: list[GenerationRecord] = []
        self._writing: list[GenerationRecord] = []  # the batch being written (out of the buffer meanwhile)
        self._by_id: dict[str, GenerationRecord] = {}  # every record not yet written or spooled
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._spilling: asyncio.Task[None] | None = None
        self._spool_lock = asyncio.Lock()
        self._spool_retry_at = 0.0  # after a failed spool write: when to try the spool again (callers wait till then)
        self._replay_due = spool is not None  # spool files may wait for the database (set again by each spill)
        self._warned_at = 0.0
        self._closing = False
        self._stopping = Stopping()
        # Observers set by the metrics (observability/metrics.py): seconds each committed batch took; each failure.
        self.on_write: Callable[[float], None] | None = None
        self.on_store_error: Callable[[], None] | None = None

    def start(self) -> None:
        self._stopping = Stopping()
        self._task = asyncio.get_running_loop().create_task(self._run())

    # -- the request path -------------------------------------------------------------------------------------------
    def record(self, record: GenerationRecord) -> Awaitable[None] | None:
        """Buffer a record. Returns what the caller must await when it has to wait (strict durability, until the
        record is committed; or the buffer is full and cannot be spooled), else None: the common case costs no
        coroutine."""
        if self.strict:
            return self._record_strict(record)
        if len(self._buffer) >= self.max_pending:
            if self.spool is None or time.monotonic() < self._spool_retry_at:
                return self._record_waiting(record)
            if self._spilling is None:
                self._spilling = asyncio.get_running_loop().create_task(self._spill())
        self._add(record)
        return None

    async def _record_waiting(self, record: GenerationRecord) -> None:
        while len(self._buffer) >= self.max_pending:
            if self._room.is_set():
                log.warning("%d generation records waiting to be written and the spool cannot take them: holding "
                            "requests until the store catches up", len(self._buffer))
                self._room.clear()
            await self._room.wait()
        self._add(record)

    async def _record_strict(self, record: GenerationRecord) -> None:
        generation_id = record[0]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[generation_id] = waiter
        self._add(record)
        self._wake.set()
        try:
            await asyncio.wait_for(waiter, self.commit_wait)
        except TimeoutError:
            if not self.store_down:
                log.warning("generation record %s not committed within %.1f s: refusing strict-durability requests "
                            "until a write succeeds", generation_id, self.commit_wait)
                self._set_down(True)
            raise NotCommitted(generation_id) from None
        finally:
            if self._waiters.get(generation_id) is waiter:
                del self._waiters[generation_id]

    def _add(self, record: GenerationRecord) -> None:
        self._buffer.append(record)
        self._by_id[record[0]] = record
        if len(self._buffer) >= self._wake_at and not self.store_down:
            self._wake.set()

    def amend(self, generation_id: str, *, status: int, error: str) -> None:
        """Change the status and error of a record not yet written (what the client was answered after all)."""
        old = self._by_id.get(generation_id)
        if old is None:
            return
        new = (*old[:_STATUS], status, *old[_STATUS + 1:_ERROR], error, *old[_ERROR + 1:])
        self._by_id[generation_id] = new
        for records in (self._buffer, self._writing):
            for index in range(len(records) - 1, -1, -1):  # newest last: a request's record is near the end
                if records[index] is old:
                    records[index] = new
                    return

    def pending(self, generation_id: str) -> GenerationRow | None:
        record = self._by_id.get(generation_id)
        return from_record(record) if record is not None else None

    def pending_count(self) -> int:
        return len(self._buffer) + len(self._writing)

    # -- the writer -------------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        if self._replay_due:  # what an earlier run (or a worker that died) left in the spool
            await self._replay()
        delay = self.flush_interval
        limit = MAX_BACKOFF_STRICT if self.strict else MAX_BACKOFF
        while not self._closing:
            if self.store_down:  # (also when a commit wait ran out: not before the next write attempt)
                await self._stopping.pause(min(delay, limit))  # backoff, whatever arrives meanwhile
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except TimeoutError:
                    pass
            if self._closing:  # stop() writes what is left
                return
            self._wake.clear()
            if not self._buffer:
                ok = await self._probe() if self.store_down else True
                if ok and self._replay_due:
                    ok = await self._replay()
            else:
                ok = await self._flush()
                # Keep going while full batches wait (the writer keeps up with any rate); a remainder waits for the
                # next round, so a quiet moment never turns into a stream of one-row transactions.
                while ok and len(self._buffer) >= self.batch_size:
                    ok = await self._flush()
                if ok and self._replay_due:
                    ok = await self._replay()
            delay = self.flush_interval if ok else min(max(delay * 2, 0.25), limit)

    async def _flush(self) -> bool:
        """Write the oldest batch; False when the store is unavailable (the batch is back in the buffer)."""
        batch = self._buffer[: self.batch_size]
        del self._buffer[: len(batch)]
        self._writing = batch
        done = 0  # how many of the batch are dealt with (committed, or spooled)
        took: float | None = None  # seconds the batch's write took, when it went through whole
        try:
            try:
                started = time.monotonic()
                await self.store.insert_generations(batch)
                done = len(batch)
                took = time.monotonic() - started
            except StoreUnavailable as exc:
                self._unavailable(exc)
                return False
            except Exception:  # noqa: BLE001 - a bad row must not wedge the writer forever
                log.exception("writing %d generation records failed; retrying them one by one", len(batch))
                done = await self._write_singly(batch)
                if done < len(batch):
                    return False
        finally:
            self._writing = []
            if done < len(batch):
                self._buffer[0:0] = batch[done:]  # back in front, oldest first
            self._written(batch[:done])
        self._set_down(False)
        if took is not None and self.on_write is not None:
            self.on_write(took)
        return True

    async def _write_singly(self, batch: list[GenerationRecord]) -> int:
        """Write records one at a time; return how many (from the front) were dealt with: written, or refused by the
        database and spooled instead."""
        for done, record in enumerate(batch):
            try:
                await self.store.insert_generations([record])
            except StoreUnavailable as exc:
                self._unavailable(exc)
                return done
            except Exception as exc:  # noqa: BLE001
                await self._refused(record, exc)
        return len(batch)

    async def _refused(self, record: GenerationRecord, exc: Exception) -> None:
        """A row the database will not take (not an outage): kept in the spool, never dropped silently. A strict
        request waiting for it is told it was not committed."""
        waiter = self._waiters.pop(record[0], None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(NotCommitted(record[0]))
        try:
            path = await self._to_spool([record])
        except OSError as spool_error:
            log.error("generation record %s refused by the database (%s) and the spool cannot take it (%s): it is "
                      "lost", record[0], exc, spool_error)
            return
        log.warning("generation record %s refused by the database (%s): kept in the spool file %s", record[0], exc,
                    path)

    def _spooled(self, records: list[GenerationRecord]) -> None:
        by_id = self._by_id
        for record in records:
            by_id.pop(record[0], None)
        if len(self._buffer) < self.max_pending:
            self._room.set()

    def _written(self, records: list[GenerationRecord]) -> None:
        by_id, waiters = self._by_id, self._waiters
        for record in records:
            by_id.pop(record[0], None)
            waiter = waiters.pop(record[0], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if len(self._buffer) < self.max_pending:
            self._room.set()

    async def _probe(self) -> bool:
        """While the store is down and nothing is buffered: whether a write transaction works again."""
        try:
            await self.store.ping(write=True)
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            self._unavailable(exc)
            return False
        self._set_down(False)
        return True

    def _unavailable(self, exc: BaseException) -> None:
        if self.on_store_error is not None:
            self.on_store_error()
        now = time.monotonic()
        if not self.store_down or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("store unavailable, %d generation records held for retry%s: %s", self.pending_count(),
                        " (strict durability: refusing requests until a write succeeds)" if self.strict else "", exc)
        self._set_down(True)

    def _set_down(self, down: bool) -> None:
        if self.store_down and not down:
            log.warning("store available again (%d generation records still to write)", self.pending_count())
        self.store_down = down
        self.refusing = down and self.strict

    # -- the spool --------------------------------------------------------------------------------------------------
    async def _to_spool(self, records: list[GenerationRecord]) -> str:
        """Append records to this process's spool file (in a worker thread: it fsyncs). Raises OSError."""
        if self.spool is None:
            raise OSError("no spool directory")
        async with self._spool_lock:
            path = await asyncio.to_thread(self.spool.write, records)
        self._replay_due = True
        self._spool_retry_at = 0.0
        return str(path)

    async def _spill(self) -> None:
        """The buffer is full: move its oldest records to the spool so that requests keep flowing."""
        try:
            while len(self._buffer) >= self.max_pending:
                chunk = self._buffer[: self.spill_size]
                del self._buffer[: len(chunk)]
                try:
                    path = await self._to_spool(chunk)
                except OSError as exc:
                    self._buffer[0:0] = chunk
                    self._spool_retry_at = time.monotonic() + WARN_EVERY
                    log.error("the spool cannot take generation records (%s): requests wait for the store while the "
                              "buffer is full", exc)
                    return
                self._spooled(chunk)
                log.warning("generation record buffer full (%d): %d oldest records written to the spool file %s, "
                            "to be written to the database once it takes them", self.max_pending, len(chunk), path)
        finally:
            self._spilling = None

    async def _replay(self) -> bool:
        """Write the records of every spool file nobody else holds, removing each file once all of its records are
        committed. False when the store became unavailable (the file being replayed stays for a later attempt)."""
        assert self.spool is not None
        self._replay_due = False
        async with self._spool_lock:
            self.spool.close()  # this process's own file becomes claimable (a later spill starts a new one)
        for file in self.spool.claim():
            replayed, kept, complete = 0, False, False
            try:
                for batch in file.batches(self.batch_size):
                    try:
                        await self.store.insert_generations(batch)
                    except StoreUnavailable as exc:
                        self._unavailable(exc)
                        self._replay_due = True
                        return False
                    except Exception as exc:  # noqa: BLE001 - one by one, so that one bad row keeps only its file
                        for record in batch:
                            try:
                                await self.store.insert_generations([record])
                            except StoreUnavailable as exc2:
                                self._unavailable(exc2)
                                self._replay_due = True
                                return False
                            except Exception as exc2:  # noqa: BLE001
                                kept = True
                                log.warning("spooled generation record %s refused by the database (%s): %s is kept",
                                            record[0], exc2 or exc, file.path)
                    replayed += len(batch)
                    # Live records meanwhile: full batches, and at once when a strict request waits for its commit.
                    if (len(self._buffer) >= self.batch_size or self._waiters) and not await self._flush():
                        self._replay_due = True
                        return False
                complete = True
            finally:
                if complete and not kept:
                    file.remove()
                else:
                    file.release()
            log.info("replayed %d generation records from the spool file %s", replayed, file.path)
        self._set_down(False)
        return True

    # -- shutdown ---------------------------------------------------------------------------------------------------
    async def stop(self, grace: float = 30.0) -> None:
        """Flush everything still buffered, retrying for up to `grace` seconds; spool whatever is left."""
        self._closing = True
        self._wake.set()
        # Between two writes (store/loops.py says why); a round against a store known to be down is cut short.
        await self._stopping.stop(self._task, bound=1.0 if self.store_down else STOP_BOUND)
        if self._spilling is not None:
            await asyncio.shield(self._spilling)  # not cancelled: its worker thread would go on writing regardless
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        delay = 0.1
        while self._buffer:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                if await asyncio.wait_for(self._flush(), remaining):
                    continue
            except TimeoutError:  # an attempt that hangs (a connection timing out): the batch is back in the buffer
                break
            if loop.time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        if self._buffer:
            left = list(self._buffer)
            try:
                path = await self._to_spool(left)
            except OSError as exc:
                log.error("could not write %d generation records before shutdown, nor keep them in the spool (%s): "
                          "they are lost", len(left), exc)
            else:
                self._buffer.clear()
                self._spooled(left)
                log.warning("could not write %d generation records before shutdown: kept in the spool file %s, "
                            "written to the database at the next start", len(left), path)
        if self.spool is not None:
            self.spool.close()
