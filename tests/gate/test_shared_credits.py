"""The shared credit ledger (gate/shared_credits.py) against a real Redis: limits held by several ledgers at once
(as several processes would), chains of budgets reserved all or nothing, leases that release a dead process's
reservations, periods, reconciliation.

Needs CROSSROADS_TEST_REDIS_URL (`eval "$(scripts/ci-services.sh)"`); skips without it, except under CI."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from crossroads.errors import GatewayError
from crossroads.gate.credits import Budget
from crossroads.gate.shared_credits import FleetCredits, NeedsReconcile, RedisCreditLedger
from crossroads.store.rows import KeyRow
from tests.conftest import count_admitted, key_chain, redis_test_url, results_of_processes

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def ledger(prefix: str, *, lease: float = 60.0, now: datetime | None = None) -> RedisCreditLedger:
    book = RedisCreditLedger(redis_test_url(), lease=lease, prefix=prefix,
                             clock=(lambda: now) if now is not None else None)
    await book.reconcile({})  # as a gateway does at start: nothing in the database yet
    return book


def key(limit: float | None, reset: str | None = None) -> KeyRow:
    return KeyRow(hash=uuid.uuid4().hex, name="k", label="sk-…", limit=limit, limit_reset=reset)


def chain(k: KeyRow) -> list[Budget]:
    return key_chain(k)


def workspace(limit: float | None, reset: str | None = None) -> Budget:
    ident = uuid.uuid4().hex[:12]
    return Budget("workspace", f"ws:{ident}", limit, reset, f"team {ident}")


@pytest.fixture
def prefix() -> str:
    return f"crossroads-test:credit:{uuid.uuid4().hex}"


async def test_reserve_settle_and_refuse(prefix) -> None:
    book = await ledger(prefix)
    try:
        k = key(1.0)
        held = await book.reserve(chain(k), 0.6, prompt_cost=0.1, completion_price=0.001)
        assert held.amount == 0.6 and held.id
        with pytest.raises(GatewayError) as refused:
            await book.reserve(chain(k), 0.5, prompt_cost=0.1, completion_price=0.001)
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
        assert (await book.reserve(chain(k), 0.75, prompt_cost=0, completion_price=0)).amount == 0.75  # exactly fits
        # Budgets without a limit never reach Redis.
        free = await book.reserve([*chain(key(None)), workspace(None), Budget("key", None, None, None)], 100.0,
                                  prompt_cost=0, completion_price=0)
        assert free.id == "" and free.amount == 0.0 and free.accounts == ()
    finally:
        await book.close()


def _reserve_many(url: str, prefix: str, key_hash: str | None, workspace_account: str | None, count: int,
                  results: multiprocessing.Queue) -> None:
    """`count` reservations of $1 with a $10 key limit (`key_hash`, or a key of this process's own), under a $10
    workspace budget when `workspace_account` is given."""
    async def run() -> int:
        book = RedisCreditLedger(url, lease=60.0, prefix=prefix)
        try:
            await book.reconcile({})
            budgets = [Budget("key", key_hash or uuid.uuid4().hex, 10.0, None)]
            if workspace_account is not None:
                budgets.append(Budget("workspace", workspace_account, 10.0, None, "shared"))
            return await count_admitted(book, budgets, count)
        finally:
            await book.close()
    results.put(asyncio.run(run()))


async def test_processes_together_never_exceed_the_limit(prefix) -> None:
    admitted = await results_of_processes(_reserve_many, (redis_test_url(), prefix, uuid.uuid4().hex, None, 25))
    assert sum(admitted) == 10, admitted  # 100 requests of $1 against a $10 limit, from 4 processes


async def test_processes_with_their_own_keys_never_exceed_their_shared_workspace_budget(prefix) -> None:
    account = f"ws:{uuid.uuid4().hex}"
    admitted = await results_of_processes(_reserve_many, (redis_test_url(), prefix, None, account, 25))
    assert sum(admitted) == 10, admitted  # 4 keys of $10 each, 100 requests of $1 against the workspace's $10
    book = await ledger(prefix)
    try:
        assert (await book.spend(account)).reserved == pytest.approx(10.0)
    finally:
        await book.close()


async def test_a_dead_process_reservations_are_released_after_the_lease(prefix) -> None:
    dying, survivor = await ledger(prefix, lease=0.5), await ledger(prefix, lease=0.5)
    try:
        k = key(1.0)
        await dying.reserve(chain(k), 1.0, prompt_cost=0, completion_price=0)  # the process "dies": never settled
        with pytest.raises(GatewayError):
            await survivor.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0)
        await asyncio.sleep(0.6)
        assert (await survivor.reserve(chain(k), 1.0, prompt_cost=0, completion_price=0)).amount == 1.0
    finally:
        await dying.close()
        await survivor.close()


async def test_a_late_settle_still_counts_its_cost(prefix) -> None:
    book = await ledger(prefix, lease=0.2)
    try:
        k = key(1.0)
        held = await book.reserve(chain(k), 0.5, prompt_cost=0, completion_price=0)
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
        await today.settle(await today.reserve(chain(k), 0.9, prompt_cost=0, completion_price=0), 0.9)
        with pytest.raises(GatewayError):
            await today.reserve(chain(k), 0.2, prompt_cost=0, completion_price=0)
        # After midnight UTC the day's spend starts again; the week's and the total keep it.
        assert (await tomorrow.reserve(chain(k), 0.95, prompt_cost=0, completion_price=0)).amount == 0.95
        figures = await tomorrow.spend(k.hash)
        assert (figures.daily, figures.weekly, figures.total) == (0.0, pytest.approx(0.9), pytest.approx(0.9))
        weekly = key(1.0, "weekly")
        await today.settle(await today.reserve(chain(weekly), 0.9, prompt_cost=0, completion_price=0), 0.9)
        with pytest.raises(GatewayError):  # the same week
            await tomorrow.reserve(chain(weekly), 0.2, prompt_cost=0, completion_price=0)
    finally:
        await today.close()
        await tomorrow.close()


async def test_period_keys_live_a_period_from_their_first_spend(prefix) -> None:
    # A period's key gets its lifetime when the first settle creates it; later settles only add (no EXPIRE each);
    # the total never expires.
    import redis.asyncio as aioredis

    book = await ledger(prefix)
    direct = aioredis.Redis.from_url(redis_test_url())
    try:
        k = key(5.0, "daily")
        names = book._keys(k.hash)
        await book.settle(await book.reserve(chain(k), 0.5, prompt_cost=0, completion_price=0), 0.5)
        lifetimes = {period: await direct.ttl(names[period]) for period in ("daily", "weekly", "monthly")}
        assert 2 * 86400 - 5 <= lifetimes["daily"] <= 2 * 86400, lifetimes
        assert 8 * 86400 - 5 <= lifetimes["weekly"] <= 8 * 86400, lifetimes
        assert 32 * 86400 - 5 <= lifetimes["monthly"] <= 32 * 86400, lifetimes
        assert await direct.ttl(names["total"]) == -1
        await direct.expire(names["daily"], 1000)  # as if the key were older: a later settle leaves its lifetime
        await book.settle(await book.reserve(chain(k), 0.25, prompt_cost=0, completion_price=0), 0.25)
        assert 990 <= await direct.ttl(names["daily"]) <= 1000
        figures = await book.spend(k.hash)
        assert (figures.total, figures.daily, figures.monthly) == (0.75, 0.75, 0.75)
    finally:
        await direct.aclose()
        await book.close()


async def test_reconcile_repairs_lost_spend_and_never_lowers_it(prefix) -> None:
    book = await ledger(prefix)
    try:
        lost, ahead = key(5.0), key(5.0)
        await book.settle(await book.reserve(chain(ahead), 2.0, prompt_cost=0, completion_price=0), 2.0)
        # The database knows of $3 for `lost` (Redis was emptied) and of $1 for `ahead` (a record still unwritten).
        await book.reconcile({lost.hash: {"total": 3.0, "daily": 3.0, "weekly": 3.0, "monthly": 3.0},
                              ahead.hash: {"total": 1.0, "daily": 1.0, "weekly": 1.0, "monthly": 1.0},
                              None: {"total": 50.0}})
        assert (await book.spend(lost.hash)).total == pytest.approx(3.0)
        assert (await book.spend(ahead.hash)).total == pytest.approx(2.0)
        with pytest.raises(GatewayError):
            await book.reserve(chain(lost), 2.5, prompt_cost=0, completion_price=0)
    finally:
        await book.close()


async def test_renewed_leases_outlive_the_lease_and_settled_ones_are_not_renewed(prefix) -> None:
    holder, other = await ledger(prefix, lease=0.4), await ledger(prefix, lease=0.4)
    try:
        k = key(1.0)
        long_stream = await holder.reserve(chain(k), 0.7, prompt_cost=0, completion_price=0)
        short = await holder.reserve(chain(k), 0.2, prompt_cost=0, completion_price=0)
        await holder.settle(short, 0.1)
        for _ in range(4):  # 0.8 s: twice the lease, renewed every 0.2 s
            await asyncio.sleep(0.2)
            assert await holder.renew() == 1
        with pytest.raises(GatewayError):  # still held: 1.0 - 0.1 spent - 0.7 reserved leaves 0.2
            await other.reserve(chain(k), 0.3, prompt_cost=0, completion_price=0)
        assert (await other.spend(k.hash)).reserved == pytest.approx(0.7)
        await holder.settle(long_stream, 0.5)
        assert holder.open == {} and await holder.renew() == 0
        assert (await other.reserve(chain(k), 0.4, prompt_cost=0, completion_price=0)).amount == 0.4
    finally:
        await holder.close()
        await other.close()


async def test_a_redis_that_lost_its_data_asks_for_reconciling_first(prefix) -> None:
    book = RedisCreditLedger(redis_test_url(), lease=60.0, prefix=prefix)
    try:
        k = key(1.0)
        with pytest.raises(NeedsReconcile):  # never reconciled: the figures cannot be trusted
            await book.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0)
        await book.reconcile({k.hash: {"total": 0.95}})
        with pytest.raises(GatewayError):  # the database's spend counts
            await book.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0)
        await book._redis.delete(book.marker, f"{prefix}:{k.hash}:t")  # Redis restarted empty
        with pytest.raises(NeedsReconcile):
            await book.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0)
        figures = await book.spend_of([k.hash, "unknown"])
        assert figures["unknown"].total == 0.0 and figures[k.hash].total == 0.0
    finally:
        await book.close()


async def test_concurrent_calls_share_round_trips_and_survive_a_script_flush(prefix) -> None:
    book = await ledger(prefix)
    try:
        k = key(10.0)
        sent = []
        execute = book._reserve._run

        async def counting(calls):
            sent.append(len(calls))
            return await execute(calls)

        book._reserve._run = counting
        results = await asyncio.gather(*(book.reserve(chain(k), 0.5, prompt_cost=0, completion_price=0)
                                         for _ in range(40)), return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, Exception)]
        assert len(admitted) == 20 and all(isinstance(r, GatewayError) for r in results if r not in admitted)
        assert sum(sent) == 40 and len(sent) < 40  # batched: fewer round trips than calls
        await book._redis.script_flush()  # as after a Redis restart: the scripts are gone
        await asyncio.gather(*(book.settle(r, 0.25) for r in admitted))
        figures = await book.spend(k.hash)
        assert figures.total == pytest.approx(5.0) and figures.reserved == 0.0
    finally:
        await book.close()


async def test_a_chain_stops_at_the_workspace_budget_and_the_402_names_it(prefix) -> None:
    book = await ledger(prefix)
    try:
        k, team = key(10.0), workspace(2.5)  # amounts a float holds exactly: no rounding at the limit
        budgets = [*chain(k), team]
        results = await asyncio.gather(*(book.reserve(budgets, 0.25, prompt_cost=0, completion_price=0.0001)
                                         for _ in range(40)), return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refusals = [r for r in results if isinstance(r, BaseException)]
        assert len(admitted) == 10 and all(isinstance(r, GatewayError) and r.status == 402 for r in refusals)
        error = refusals[0]
        assert error.metadata["level"] == "workspace" and error.metadata["budget"] == team.name
        assert error.metadata["limit"] == 2.5 and error.metadata["limit_remaining"] == 0.0
        assert f"but the workspace {team.name!r} budget has $0.00 of its $2.50 limit left." in error.message
        assert admitted[0].accounts == (k.hash, team.account)
        figures = await book.spend_of([k.hash, team.account])
        assert figures[k.hash].reserved == 2.5 and figures[team.account].reserved == 2.5
        # The key refuses first when both would: the 402 names the first budget of the chain that does not fit.
        with pytest.raises(GatewayError) as refused:
            await book.reserve([*chain(key(0.125)), team], 0.25, prompt_cost=0, completion_price=0)
        assert refused.value.metadata["level"] == "key" and "budget" not in refused.value.metadata
    finally:
        await book.close()


async def test_two_keys_sharing_a_workspace_budget_never_exceed_it(prefix) -> None:
    books = [await ledger(prefix), await ledger(prefix)]  # as two processes
    try:
        team = workspace(10.0, "monthly")
        first, second = [*chain(key(100.0)), team], [*chain(key(100.0)), team]
        admitted = await asyncio.gather(*(count_admitted(book, budgets, 25) for book in books
                                          for budgets in (first, second)))
        assert sum(admitted) == 10, admitted
        figures = await books[0].spend_of([first[0].account, second[0].account, team.account])
        assert figures[team.account].reserved == pytest.approx(10.0)
        assert figures[first[0].account].reserved + figures[second[0].account].reserved == pytest.approx(10.0)
    finally:
        for book in books:
            await book.close()


async def test_a_refusal_leaves_no_trace_on_any_account(prefix) -> None:
    book = await ledger(prefix)
    try:
        k, env, team = key(10.0), Budget("environment", f"env:{uuid.uuid4().hex}", 5.0, "daily", "prod"), workspace(1.0)
        await book.reconcile({team.account: {"total": 0.5}}, complete=False)
        held = await book.reserve([*chain(k), env, team], 0.25, prompt_cost=0, completion_price=0)
        accounts = [k.hash, env.account, team.account]
        before = await book.spend_of(accounts)
        with pytest.raises(GatewayError) as refused:  # the key and the environment fit, the workspace does not
            await book.reserve([*chain(k), env, team], 0.5, prompt_cost=0, completion_price=0)
        assert refused.value.metadata["level"] == "workspace"
        assert refused.value.metadata["limit_remaining"] == pytest.approx(0.25)
        assert await book.spend_of(accounts) == before
        assert book.open == {account: {held.id} for account in accounts}
    finally:
        await book.close()


async def test_settle_moves_reserved_to_spend_on_every_account(prefix) -> None:
    book = await ledger(prefix)
    try:
        k, member, team = key(10.0, "weekly"), Budget("member", f"mem:{uuid.uuid4().hex}", 5.0, None, "ann"), \
            workspace(2.0, "monthly")
        budgets = [*chain(k), member, team, Budget("environment", "env:unlimited", None, None)]
        held = await book.reserve(budgets, 1.5, prompt_cost=0, completion_price=0)
        assert held.accounts == (k.hash, member.account, team.account)  # the unlimited one is not held here
        await book.settle(held, 0.5)
        await book.settle(held, 0.5)  # exactly once
        assert book.open == {}
        for account, figures in (await book.spend_of(list(held.accounts))).items():
            assert (figures.total, figures.daily, figures.weekly, figures.monthly, figures.reserved) == (
                pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5), 0.0), account
        assert (await book.reserve(budgets, 1.5, prompt_cost=0, completion_price=0)).amount == 1.5  # 2 - 0.5
    finally:
        await book.close()


async def test_expired_leases_are_released_on_every_account(prefix) -> None:
    dying, survivor = await ledger(prefix, lease=0.3), await ledger(prefix, lease=0.3)
    try:
        k, team = key(1.0), workspace(1.0)
        held = await dying.reserve([*chain(k), team], 1.0, prompt_cost=0, completion_price=0)  # never settled
        for budgets in ([*chain(k), team], chain(k), [team]):
            with pytest.raises(GatewayError):
                await survivor.reserve(budgets, 0.5, prompt_cost=0, completion_price=0)
        await asyncio.sleep(0.4)
        figures = await survivor.spend_of([k.hash, team.account])
        assert figures[k.hash].reserved == 0.0 and figures[team.account].reserved == 0.0
        assert (await survivor.reserve(chain(k), 1.0, prompt_cost=0, completion_price=0)).amount == 1.0
        assert (await survivor.reserve([team], 1.0, prompt_cost=0, completion_price=0)).amount == 1.0
        await dying.settle(held, 0.0)  # late: releases nothing of the others'
        figures = await survivor.spend_of([k.hash, team.account])
        assert figures[k.hash].reserved == 1.0 and figures[team.account].reserved == 1.0
    finally:
        await dying.close()
        await survivor.close()


async def test_renew_keeps_every_account_of_a_reservation(prefix) -> None:
    holder, other = await ledger(prefix, lease=0.4), await ledger(prefix, lease=0.4)
    try:
        k, team = key(1.0), workspace(1.0)
        held = await holder.reserve([*chain(k), team], 0.7, prompt_cost=0, completion_price=0)
        for _ in range(4):
            await asyncio.sleep(0.2)
            assert await holder.renew() == 1  # one reservation, on two accounts
        for budgets in (chain(k), [team]):
            with pytest.raises(GatewayError):
                await other.reserve(budgets, 0.5, prompt_cost=0, completion_price=0)
        await holder.settle(held, 0.1)
        assert holder.open == {} and await holder.renew() == 0
    finally:
        await holder.close()
        await other.close()


async def test_fleet_credits_reconciles_an_account_first_used() -> None:
    prefix = f"crossroads-test:credit:{uuid.uuid4().hex}"
    book = await ledger(prefix)
    k, team = key(10.0), workspace(1.0)
    asked: list[list[str]] = []

    async def database_spend(accounts: list[str]) -> dict:
        asked.append(sorted(accounts))
        return {account: {"total": 0.75 if account == team.account else 0.0} for account in accounts}

    fleet = FleetCredits(book, database_spend=database_spend, limited=lambda: [k.hash, team.account],
                         reconcile_interval=60.0)
    try:
        budgets = [*chain(k), Budget("environment", "env:free", None, None), team]
        # The workspace's past spend (the records') counts from its first reservation on.
        with pytest.raises(GatewayError) as refused:
            await fleet.reserve(budgets, 0.5, prompt_cost=0, completion_price=0)
        assert refused.value.status == 402 and refused.value.metadata["level"] == "workspace"
        assert asked == [sorted([k.hash, team.account])]
        held = await fleet.reserve(budgets, 0.25, prompt_cost=0, completion_price=0)
        assert asked == [sorted([k.hash, team.account])]  # once per process
        fleet.settle_later(held, 0.05)
        await asyncio.sleep(0.05)
        assert (await fleet.figures([team.account]))[team.account].total == pytest.approx(0.8)
    finally:
        await fleet.stop()
