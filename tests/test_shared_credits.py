"""The shared credit ledger (gate/shared_credits.py) against a real Redis: limits held by several ledgers at once
(as several processes would), leases that release a dead process's reservations, periods, reconciliation.

Needs CROSSROADS_TEST_REDIS_URL (`eval "$(scripts/ci-services.sh)"`); skips without it, except under CI."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from crossroads.errors import GatewayError
from crossroads.gate.shared_credits import NeedsReconcile, RedisCreditLedger
from crossroads.store.rows import KeyRow
from tests.conftest import count_admitted, redis_test_url, results_of_processes

pytestmark = pytest.mark.asyncio(loop_scope="function")



async def ledger(prefix: str, *, lease: float = 60.0, now: datetime | None = None) -> RedisCreditLedger:
    book = RedisCreditLedger(redis_test_url(), lease=lease, prefix=prefix,
                             clock=(lambda: now) if now is not None else None)
    await book.reconcile({})  # as a gateway does at start: nothing in the database yet
    return book


def key(limit: float | None, reset: str | None = None) -> KeyRow:
    return KeyRow(hash=uuid.uuid4().hex, name="k", label="sk-…", limit=limit, limit_reset=reset)


@pytest.fixture
def prefix() -> str:
    return f"crossroads-test:credit:{uuid.uuid4().hex}"


async def test_reserve_settle_and_refuse(prefix) -> None:
    book = await ledger(prefix)
    try:
        k = key(1.0)
        held = await book.reserve(k, 0.6, prompt_cost=0.1, completion_price=0.001)
        assert held.amount == 0.6 and held.id
        with pytest.raises(GatewayError) as refused:
            await book.reserve(k, 0.5, prompt_cost=0.1, completion_price=0.001)
        error = refused.value
        assert error.status == 402 and error.metadata["limit_remaining"] == pytest.approx(0.4)
        assert "At most 300 max_tokens would fit" in error.message
        figures = await book.spend(k.hash)
        assert (figures.total, figures.reserved) == (0.0, pytest.approx(0.6))
        await book.settle(held, 0.25)
        await book.settle(held, 0.25)  # exactly once
        figures = await book.spend(k.hash)
        assert figures.total == pytest.approx(0.25) and figures.daily == pytest.approx(0.25)
        assert figures.reserved == 0.0
        assert (await book.reserve(k, 0.75, prompt_cost=0, completion_price=0)).amount == 0.75  # exactly fits
        # Keys without a limit never reach Redis.
        free = await book.reserve(key(None), 100.0, prompt_cost=0, completion_price=0)
        assert free.id == "" and free.amount == 0.0
    finally:
        await book.close()


def _reserve_many(url: str, prefix: str, key_hash: str, count: int, results: multiprocessing.Queue) -> None:
    async def run() -> int:
        book = RedisCreditLedger(url, lease=60.0, prefix=prefix)
        try:
            await book.reconcile({})
            return await count_admitted(book, KeyRow(hash=key_hash, name="k", label="x", limit=10.0), count)
        finally:
            await book.close()
    results.put(asyncio.run(run()))


async def test_processes_together_never_exceed_the_limit(prefix) -> None:
    admitted = await results_of_processes(_reserve_many, (redis_test_url(), prefix, uuid.uuid4().hex, 25))
    assert sum(admitted) == 10, admitted  # 100 requests of $1 against a $10 limit, from 4 processes


async def test_a_dead_process_reservations_are_released_after_the_lease(prefix) -> None:
    dying, survivor = await ledger(prefix, lease=0.5), await ledger(prefix, lease=0.5)
    try:
        k = key(1.0)
        await dying.reserve(k, 1.0, prompt_cost=0, completion_price=0)  # then the process "dies": never settled
        with pytest.raises(GatewayError):
            await survivor.reserve(k, 0.1, prompt_cost=0, completion_price=0)
        await asyncio.sleep(0.6)
        assert (await survivor.reserve(k, 1.0, prompt_cost=0, completion_price=0)).amount == 1.0
    finally:
        await dying.close()
        await survivor.close()


async def test_a_late_settle_still_counts_its_cost(prefix) -> None:
    book = await ledger(prefix, lease=0.2)
    try:
        k = key(1.0)
        held = await book.reserve(k, 0.5, prompt_cost=0, completion_price=0)
        await asyncio.sleep(0.3)  # the lease ran out while the request was still going
        await book.settle(held, 0.4)
        figures = await book.spend(k.hash)
        assert figures.total == pytest.approx(0.4) and figures.reserved == 0.0
    finally:
        await book.close()


async def test_periods_reset_once_for_everyone(prefix) -> None:
    monday = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
    today, tomorrow = await ledger(prefix, now=monday), await ledger(prefix, now=monday + timedelta(hours=2))
    try:
        k = key(1.0, "daily")
        await today.settle(await today.reserve(k, 0.9, prompt_cost=0, completion_price=0), 0.9)
        with pytest.raises(GatewayError):
            await today.reserve(k, 0.2, prompt_cost=0, completion_price=0)
        # After midnight UTC the day's spend starts again; the week's and the total keep it.
        assert (await tomorrow.reserve(k, 0.95, prompt_cost=0, completion_price=0)).amount == 0.95
        figures = await tomorrow.spend(k.hash)
        assert (figures.daily, figures.weekly, figures.total) == (0.0, pytest.approx(0.9), pytest.approx(0.9))
        weekly = key(1.0, "weekly")
        await today.settle(await today.reserve(weekly, 0.9, prompt_cost=0, completion_price=0), 0.9)
        with pytest.raises(GatewayError):  # the same week
            await tomorrow.reserve(weekly, 0.2, prompt_cost=0, completion_price=0)
    finally:
        await today.close()
        await tomorrow.close()


async def test_reconcile_repairs_lost_spend_and_never_lowers_it(prefix) -> None:
    book = await ledger(prefix)
    try:
        lost, ahead = key(5.0), key(5.0)
        await book.settle(await book.reserve(ahead, 2.0, prompt_cost=0, completion_price=0), 2.0)
        # The database knows of $3 for `lost` (Redis was emptied) and of $1 for `ahead` (a record still unwritten).
        await book.reconcile({lost.hash: {"total": 3.0, "daily": 3.0, "weekly": 3.0, "monthly": 3.0},
                              ahead.hash: {"total": 1.0, "daily": 1.0, "weekly": 1.0, "monthly": 1.0},
                              None: {"total": 50.0}})
        assert (await book.spend(lost.hash)).total == pytest.approx(3.0)
        assert (await book.spend(ahead.hash)).total == pytest.approx(2.0)
        with pytest.raises(GatewayError):
            await book.reserve(lost, 2.5, prompt_cost=0, completion_price=0)
    finally:
        await book.close()


async def test_renewed_leases_outlive_the_lease_and_settled_ones_are_not_renewed(prefix) -> None:
    holder, other = await ledger(prefix, lease=0.4), await ledger(prefix, lease=0.4)
    try:
        k = key(1.0)
        long_stream = await holder.reserve(k, 0.7, prompt_cost=0, completion_price=0)
        short = await holder.reserve(k, 0.2, prompt_cost=0, completion_price=0)
        await holder.settle(short, 0.1)
        for _ in range(4):  # 0.8 s: twice the lease, renewed every 0.2 s
            await asyncio.sleep(0.2)
            assert await holder.renew() == 1
        with pytest.raises(GatewayError):  # still held: 1.0 - 0.1 spent - 0.7 reserved leaves 0.2
            await other.reserve(k, 0.3, prompt_cost=0, completion_price=0)
        assert (await other.spend(k.hash)).reserved == pytest.approx(0.7)
        await holder.settle(long_stream, 0.5)
        assert holder.open == {} and await holder.renew() == 0
        assert (await other.reserve(k, 0.4, prompt_cost=0, completion_price=0)).amount == 0.4
    finally:
        await holder.close()
        await other.close()


async def test_a_redis_that_lost_its_data_asks_for_reconciling_first(prefix) -> None:
    book = RedisCreditLedger(redis_test_url(), lease=60.0, prefix=prefix)
    try:
        k = key(1.0)
        with pytest.raises(NeedsReconcile):  # never reconciled: the figures cannot be trusted
            await book.reserve(k, 0.1, prompt_cost=0, completion_price=0)
        await book.reconcile({k.hash: {"total": 0.95}})
        with pytest.raises(GatewayError):  # the database's spend counts
            await book.reserve(k, 0.1, prompt_cost=0, completion_price=0)
        await book._redis.delete(book.marker, f"{prefix}:{k.hash}:t")  # Redis restarted empty
        with pytest.raises(NeedsReconcile):
            await book.reserve(k, 0.1, prompt_cost=0, completion_price=0)
        figures = await book.spend_of([k.hash, "unknown"])
        assert figures["unknown"].total == 0.0 and figures[k.hash].total == 0.0
    finally:
        await book.close()


async def test_concurrent_calls_share_round_trips_and_survive_a_script_flush(prefix) -> None:
    book = await ledger(prefix)
    try:
        k = key(10.0)
        sent = []
        execute = book._reserve._pipeline

        async def counting(batch):
            sent.append(len(batch))
            return await execute(batch)

        book._reserve._pipeline = counting
        results = await asyncio.gather(*(book.reserve(k, 0.5, prompt_cost=0, completion_price=0) for _ in range(40)),
                                       return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, Exception)]
        assert len(admitted) == 20 and all(isinstance(r, GatewayError) for r in results if r not in admitted)
        assert sum(sent) == 40 and len(sent) < 40  # batched: fewer round trips than calls
        await book._redis.script_flush()  # as after a Redis restart: the scripts are gone
        await asyncio.gather(*(book.settle(r, 0.25) for r in admitted))
        figures = await book.spend(k.hash)
        assert figures.total == pytest.approx(5.0) and figures.reserved == 0.0
    finally:
        await book.close()
