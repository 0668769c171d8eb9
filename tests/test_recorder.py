"""The generation writer: bounded buffer with backpressure, whole-buffer flushes, on a real SQLite store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crossroads.accounting.recorder import GenerationRecorder
from crossroads.store import GenerationRow, Store, migrate
from crossroads.store.rows import GenerationRecord, to_record

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


async def test_full_buffer_holds_callers_until_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    await asyncio.to_thread(migrate, url)
    store = await Store.open(url)
    recorder = GenerationRecorder(store, flush_interval=60, batch_size=1000, max_pending=5)
    recorder.start()
    try:
        for n in range(5):
            assert recorder.record(row(n)) is None  # room: nothing to wait for
        waiting = recorder.record(row(5))
        assert waiting is not None
        sixth = asyncio.ensure_future(waiting)
        await asyncio.sleep(0.2)
        assert not sixth.done()  # the buffer is full: the caller waits instead of the buffer growing
        assert recorder.pending("gen-test-0") is not None
        recorder._wake.set()  # what a full batch or the flush interval would do
        await asyncio.wait_for(sixth, 5)
        await recorder.stop(5)
        assert await stored_count(store) == 6
    finally:
        await store.close()


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
