"""The generation writer on a real SQLite store: whole-buffer flushes; while the store is unavailable (its write lock
held elsewhere) a bounded buffer that spools its oldest records, spooling at shutdown and replay at the next start,
refused rows spooled, and strict durability's bounded commit wait."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from crossroads.accounting.recorder import GenerationRecorder, NotCommitted
from crossroads.accounting.spool import Spool
from crossroads.store import GenerationRow, Store, migrate
from crossroads.store.engine import async_url, create_engine
from crossroads.store.rows import GENERATION_COLUMNS, GenerationRecord, to_record

pytestmark = pytest.mark.asyncio(loop_scope="function")


def row(n: int) -> GenerationRecord:
    return to_record(GenerationRow(id=f"gen-test-{n}", created_at=datetime.now(UTC), key_hash=None, model="m",
                                    provider_name="p", provider_type="openai", upstream_model="u",
                                    upstream_id=None))


async def stored_count(store: Store) -> int:
    found = 0
    for n in range(100):
        if await store.get_generation(f"gen-test-{n}") is not None:
            found += 1
    return found


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """The database's write lock held by another connection: writes through a short busy timeout fail with
    StoreUnavailable (SQLITE_BUSY), as they would while another process holds it too long."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


async def open_store(tmp_path: Path) -> tuple[Store, Path]:
    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"
    await asyncio.to_thread(migrate, url)
    return Store(create_engine(async_url(url), busy_timeout_ms=50)), path


async def eventually(check) -> None:  # noqa: ANN001
    for _ in range(200):  # 10 s
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def spooled_ids(directory: Path) -> list[str]:
    return [orjson.loads(line)[0] for path in sorted(directory.glob("generations-*.jsonl"))
            for line in path.read_bytes().splitlines()]


async def test_full_buffer_without_a_spool_holds_callers_until_written(tmp_path: Path) -> None:
    store, path = await open_store(tmp_path)
    recorder = GenerationRecorder(store, flush_interval=0.05, batch_size=1000, max_pending=5)
    recorder.start()
    try:
        with locked(path):
            for n in range(5):
                assert recorder.record(row(n)) is None  # room: nothing to wait for
            waiting = recorder.record(row(5))
            assert waiting is not None
            sixth = asyncio.ensure_future(waiting)
            await asyncio.sleep(0.5)
            assert not sixth.done()  # the buffer is full and nothing can spool: the caller waits
            assert recorder.pending("gen-test-0") is not None
        await asyncio.wait_for(sixth, 10)  # written once the store is back
        await recorder.stop(5)
        assert await stored_count(store) == 6
    finally:
        await store.close()


async def test_full_buffer_spools_the_oldest_and_replays_them(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    store, path = await open_store(tmp_path)
    spool = Spool(tmp_path / "spool")
    recorder = GenerationRecorder(store, flush_interval=0.05, batch_size=1000, max_pending=10, spool=spool)
    recorder.start()
    try:
        with locked(path):
            await asyncio.sleep(0.2)
            for n in range(25):
                assert recorder.record(row(n)) is None  # never waits: the oldest go to the spool instead
                await asyncio.sleep(0)
            await eventually(lambda: asyncio.sleep(0, len(spooled_ids(tmp_path / "spool")) >= 10))
            spooled = spooled_ids(tmp_path / "spool")
            assert len(set(spooled)) == len(spooled)
            assert recorder.pending_count() + len(spooled) == 25  # every record in memory or in the spool
            assert await stored_count(store) == 0
        # The store is back: the buffer is written, then the spool replayed and emptied.
        await eventually(lambda: _all_written(store, 25, tmp_path / "spool"))
        await recorder.stop(5)
        assert "written to the spool" in caplog.text
    finally:
        await store.close()


async def _all_written(store: Store, count: int, spool_dir: Path) -> bool:
    return await stored_count(store) == count and not spooled_ids(spool_dir)


async def test_stop_spools_what_it_cannot_write_and_the_next_start_replays_it(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    store, path = await open_store(tmp_path)
    try:
        recorder = GenerationRecorder(store, flush_interval=0.05, spool=Spool(tmp_path / "spool"))
        recorder.start()
        with locked(path):
            for n in range(7):
                assert recorder.record(row(n)) is None
            started = time.monotonic()
            await recorder.stop(0.5)
            assert time.monotonic() - started < 3
            assert sorted(spooled_ids(tmp_path / "spool")) == sorted(f"gen-test-{n}" for n in range(7))
        assert "kept in the spool file" in caplog.text
        assert await stored_count(store) == 0
        recorder = GenerationRecorder(store, flush_interval=0.05, spool=Spool(tmp_path / "spool"))
        recorder.start()  # the next start replays the spool at once
        await eventually(lambda: _all_written(store, 7, tmp_path / "spool"))
        await recorder.stop(5)
    finally:
        await store.close()


async def test_a_refused_row_is_spooled_not_dropped(tmp_path: Path, caplog) -> None:  # noqa: ANN001
    store, _ = await open_store(tmp_path)
    try:
        recorder = GenerationRecorder(store, flush_interval=0.05, spool=Spool(tmp_path / "spool"))
        recorder.start()
        bad = list(row(1))
        bad[GENERATION_COLUMNS.index("tokens_prompt")] = 2**70  # refused (too large), and not because the store is away
        for record in (row(0), tuple(bad), row(2)):
            assert recorder.record(record) is None
        await eventually(lambda: asyncio.sleep(0, "gen-test-1 refused by the database" in caplog.text))
        assert "kept in the spool file" in caplog.text
        assert not recorder.pending_count() and await _stored(store, "gen-test-0") and await _stored(store, "gen-test-2")
        # The spool is replayed once writes succeed: JSON reads the number back as a float, which SQLite takes.
        await eventually(lambda: _all_written(store, 3, tmp_path / "spool"))
        await recorder.stop(5)
    finally:
        await store.close()


async def test_strict_commit_wait_is_bounded_and_refuses_until_a_write_succeeds(tmp_path: Path) -> None:
    store, path = await open_store(tmp_path)
    recorder = GenerationRecorder(store, flush_interval=0.05, strict=True, commit_wait=0.5,
                                  spool=Spool(tmp_path / "spool"))
    recorder.start()
    try:
        await recorder.record(row(0))  # committed before it returns
        assert await stored_count(store) == 1 and not recorder.refusing
        with locked(path):
            started = time.monotonic()
            with pytest.raises(NotCommitted):
                await recorder.record(row(1))
            assert time.monotonic() - started < 1.5
            assert recorder.refusing  # requests are refused from now on, until a write succeeds
            recorder.amend("gen-test-1", status=503, error="not recorded in time")
        await eventually(lambda: asyncio.sleep(0, not recorder.refusing))
        await eventually(lambda: _stored(store, "gen-test-1"))
        got = await store.get_generation("gen-test-1")
        assert got is not None and (got.status, got.error) == (503, "not recorded in time")  # kept, not lost
        await recorder.stop(5)
    finally:
        await store.close()


async def _stored(store: Store, generation_id: str) -> bool:
    return await store.get_generation(generation_id) is not None


async def test_flush_writes_everything_buffered(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    await asyncio.to_thread(migrate, url)
    store = await Store.open(url)
    recorder = GenerationRecorder(store, flush_interval=0.05, batch_size=7)
    recorder.start()
    try:
        for n in range(50):
            assert recorder.record(row(n)) is None
        for _ in range(100):
            if not recorder.pending_count():
                break
            await asyncio.sleep(0.05)
        assert not recorder.pending_count()  # several batches of 7 in one flush round, nothing left behind
        assert await stored_count(store) == 50
        await recorder.stop(5)
    finally:
        await store.close()
