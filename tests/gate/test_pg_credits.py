"""The credit ledger on PostgreSQL without Redis (gate/pg_credits.py) against a real PostgreSQL: limits held by several
processes at once, chains of budgets reserved all or nothing, leases that release a dead process's reservations,
periods, reconciliation.

Needs CROSSROADS_TEST_POSTGRES_URL (`eval "$(scripts/ci-services.sh)"`); skips without it, except under CI."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from crossroads.errors import GatewayError
from crossroads.gate.credits import Budget
from crossroads.gate.pg_credits import PostgresCreditLedger
from crossroads.gate.shared_credits import period_names
from crossroads.store import Store, migrate
from crossroads.store.rows import KeyRow
from tests.conftest import count_admitted, key_chain, results_of_processes

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture
def url(postgres_database: str) -> str:
    migrate(postgres_database)
    return postgres_database


def ledger(store: Store, *, lease: float = 60.0, now: datetime | None = None) -> PostgresCreditLedger:
    return PostgresCreditLedger(store, lease=lease, clock=(lambda: now) if now is not None else None)


def key(limit: float | None, reset: str | None = None) -> KeyRow:
    return KeyRow(hash=uuid.uuid4().hex, name="k", label="sk-…", limit=limit, limit_reset=reset)


def chain(k: KeyRow) -> list[Budget]:
    return key_chain(k)


def workspace(limit: float | None, reset: str | None = None) -> Budget:
    ident = uuid.uuid4().hex[:12]
    return Budget("workspace", f"ws:{ident}", limit, reset, f"team {ident}")


async def count(store: Store, table: str) -> int:
    rows = await store._fetch(sa.text(f"SELECT count(*) FROM {table}"))
    return int(rows[0][0])


async def test_reserve_settle_and_refuse(store) -> None:
    book = ledger(store)
    k = key(1.0)
    held = await book.reserve(chain(k), 0.6, prompt_cost=0.1, completion_price=0.001)
    assert held.amount == 0.6 and held.id and book.open == {k.hash: {held.id}} and held.accounts == (k.hash,)
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
    assert figures.weekly == pytest.approx(0.25) and figures.monthly == pytest.approx(0.25)
    assert figures.reserved == 0.0 and book.open == {}
    assert (await book.reserve(chain(k), 0.75, prompt_cost=0, completion_price=0)).amount == 0.75  # exactly fits
    with pytest.raises(GatewayError) as refused:
        await book.reserve(chain(k), 1e-6, prompt_cost=0, completion_price=0)
    assert refused.value.metadata["limit_remaining"] == 0.0
    # Budgets without a limit never reach the database.
    free = key(None)
    nothing = await book.reserve([*chain(free), workspace(None), Budget("key", None, None, None)], 100.0,
                                 prompt_cost=0, completion_price=0)
    assert nothing.id == "" and nothing.amount == 0.0 and nothing.accounts == ()
    await book.settle(nothing, 0.0)
    assert (await book.spend_of([free.hash]))[free.hash].total == 0.0
    assert await count(store, "credit_accounts") == 1
    await book.close()
    await store.ping()  # closing the ledger leaves the gateway's store open


async def test_a_refusal_writes_nothing(store) -> None:
    book = ledger(store)
    k = key(1.0)
    await book.reserve(chain(k), 0.9, prompt_cost=0, completion_price=0)
    query = sa.text("SELECT xmin::text FROM credit_accounts WHERE key_hash = :h").bindparams(h=k.hash)
    version = await store._fetch(query)
    for _ in range(3):  # a client that keeps asking past its limit costs reads, not commits
        with pytest.raises(GatewayError):
            await book.reserve(chain(k), 0.2, prompt_cost=0, completion_price=0)
    assert await store._fetch(query) == version


async def test_a_daily_limit_counts_only_the_day(store) -> None:
    book = ledger(store)
    daily, total = key(1.0, "daily"), key(1.0)
    # Spend from before today (the records say so) counts against the total limit, not against the daily one.
    await book.reconcile({daily.hash: {"total": 5.0}, total.hash: {"total": 0.5}})
    assert (await book.reserve(chain(daily), 1.0, prompt_cost=0, completion_price=0)).amount == 1.0
    with pytest.raises(GatewayError):
        await book.reserve(chain(total), 0.6, prompt_cost=0, completion_price=0)


async def test_concurrent_tasks_never_exceed_the_limit(store) -> None:
    book = ledger(store)
    k = key(10.0, "monthly")

    async def one() -> int:
        try:
            held = await book.reserve(chain(k), 0.3, prompt_cost=0, completion_price=0)
        except GatewayError:
            return 0
        await book.settle(held, 0.1)
        return 1

    admitted = sum(await asyncio.gather(*(one() for _ in range(200))))
    figures = await book.spend(k.hash)
    assert figures.monthly == pytest.approx(admitted * 0.1) and figures.reserved == 0.0
    assert figures.monthly <= 10.0 and admitted >= 33  # at least what the worst cases allow without settling


def _reserve_many(url: str, key_hash: str, count: int, results: multiprocessing.Queue) -> None:
    async def run() -> int:
        store = await Store.open(url)
        try:
            row = KeyRow(hash=key_hash, name="k", label="x", limit=10.0)
            return await count_admitted(PostgresCreditLedger(store, lease=60.0), key_chain(row), count)
        finally:
            await store.close()
    results.put(asyncio.run(run()))


async def test_processes_together_never_exceed_the_limit(url, store) -> None:
    key_hash = uuid.uuid4().hex
    admitted = await results_of_processes(_reserve_many, (url, key_hash, 25))
    assert sum(admitted) == 10, admitted  # 100 requests of $1 against a $10 limit, from 4 processes
    assert (await ledger(store).spend(key_hash)).reserved == pytest.approx(10.0)
    assert await count(store, "credit_reservations") == 10


def _reserve_and_die(url: str, key_hash: str) -> None:
    async def run() -> None:
        store = await Store.open(url)
        book = PostgresCreditLedger(store, lease=1.5)
        await book.reserve([Budget("key", key_hash, 1.0, None)], 1.0, prompt_cost=0, completion_price=0)
        os.kill(os.getpid(), signal.SIGKILL)  # mid-request: never settled, never renewed
    asyncio.run(run())


async def test_a_dead_process_reservations_are_released_by_sweep_after_the_lease(url, store) -> None:
    k = key(1.0)
    dying = multiprocessing.get_context("spawn").Process(target=_reserve_and_die, args=(url, k.hash))
    dying.start()
    await asyncio.to_thread(dying.join, 30)
    assert dying.exitcode == -signal.SIGKILL and await count(store, "credit_reservations") == 1
    survivor = ledger(store)
    with pytest.raises(GatewayError):
        await survivor.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0)
    assert await survivor.sweep() == 0  # the lease (1.5 s) still runs
    await asyncio.sleep(1.6)
    assert await survivor.sweep() == 1
    assert await survivor.sweep() == 0
    figures = await survivor.spend(k.hash)
    assert (figures.reserved, figures.total) == (0.0, 0.0)
    assert (await survivor.reserve(chain(k), 1.0, prompt_cost=0, completion_price=0)).amount == 1.0


async def test_a_refused_reservation_releases_the_key_expired_ones_itself(store) -> None:
    dying, survivor = ledger(store, lease=0.6), ledger(store)
    k, other = key(1.0), key(1.0)
    await dying.reserve(chain(k), 0.8, prompt_cost=0, completion_price=0)
    await dying.reserve(chain(other), 0.8, prompt_cost=0, completion_price=0)
    with pytest.raises(GatewayError):
        await survivor.reserve(chain(k), 0.5, prompt_cost=0, completion_price=0)
    await asyncio.sleep(0.7)
    # No sweep ran: the reservation finds the expired one of its key and releases it (as the Redis script does).
    assert (await survivor.reserve(chain(k), 0.5, prompt_cost=0, completion_price=0)).amount == 0.5
    assert (await survivor.spend(k.hash)).reserved == pytest.approx(0.5)
    assert (await survivor.spend(other.hash)).reserved == pytest.approx(0.8)  # another key's: left to the sweep
    assert await survivor.sweep() == 1


async def test_a_late_settle_still_counts_its_cost(store) -> None:
    book = ledger(store, lease=0.2)
    k = key(1.0)
    late = await book.reserve(chain(k), 0.5, prompt_cost=0, completion_price=0)
    swept = await book.reserve(chain(k), 0.3, prompt_cost=0, completion_price=0)
    await asyncio.sleep(0.3)  # the leases ran out while the requests were still going
    await book.settle(late, 0.4)  # not swept yet: releases its own reservation
    assert await book.sweep() == 1  # `swept`'s
    held = await book.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0)
    await book.settle(swept, 0.2)  # released already: only its cost counts, `held` stays held
    figures = await book.spend(k.hash)
    assert figures.total == pytest.approx(0.6) and figures.reserved == pytest.approx(0.1)
    await book.settle(held, 0.0)
    assert (await book.spend(k.hash)).reserved == 0.0


async def test_periods_reset_once_for_everyone(store) -> None:
    monday = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)
    today, tomorrow = ledger(store, now=monday), ledger(store, now=monday + timedelta(hours=2))
    k = key(1.0, "daily")
    await today.settle(await today.reserve(chain(k), 0.9, prompt_cost=0, completion_price=0), 0.9)
    with pytest.raises(GatewayError):
        await today.reserve(chain(k), 0.2, prompt_cost=0, completion_price=0)
    # After midnight UTC the day's spend starts again; the week's and the total keep it.
    held = await tomorrow.reserve(chain(k), 0.95, prompt_cost=0, completion_price=0)
    figures = await tomorrow.spend(k.hash)
    assert (figures.daily, figures.weekly, figures.total) == (0.0, pytest.approx(0.9), pytest.approx(0.9))
    await tomorrow.settle(held, 0.05)
    # The new day is stored: a process whose clock still says Monday counts Tuesday's spend (never undoes it)...
    assert (await today.spend(k.hash)).daily == pytest.approx(0.05)
    await today.settle(await today.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0), 0.1)
    figures = await tomorrow.spend(k.hash)
    assert figures.daily == pytest.approx(0.15) and figures.total == pytest.approx(1.05)
    # ...and the next day resets it once more.
    later = ledger(store, now=monday + timedelta(days=1, hours=2))
    assert (await later.spend(k.hash)).daily == 0.0
    weekly = key(1.0, "weekly")
    await today.settle(await today.reserve(chain(weekly), 0.9, prompt_cost=0, completion_price=0), 0.9)
    with pytest.raises(GatewayError):  # the same week
        await tomorrow.reserve(chain(weekly), 0.2, prompt_cost=0, completion_price=0)
    next_week = ledger(store, now=monday + timedelta(days=7))
    assert (await next_week.reserve(chain(weekly), 0.9, prompt_cost=0, completion_price=0)).amount == 0.9
    monthly = key(1.0, "monthly")
    end_of_month = ledger(store, now=datetime(2026, 11, 30, 23, 0, tzinfo=UTC))  # a Monday too
    await end_of_month.settle(await end_of_month.reserve(chain(monthly), 0.9, prompt_cost=0, completion_price=0), 0.9)
    next_month = ledger(store, now=datetime(2026, 12, 1, 1, 0, tzinfo=UTC))  # the same week
    figures = await next_month.spend(monthly.hash)
    assert (figures.monthly, figures.weekly, figures.total) == (0.0, pytest.approx(0.9), pytest.approx(0.9))


async def test_the_database_clock_names_the_periods_as_period_names_does(store) -> None:
    by_database, by_host = ledger(store), ledger(store, now=datetime.now(UTC))
    k = key(1.0, "weekly")
    await by_database.settle(await by_database.reserve(chain(k), 0.5, prompt_cost=0, completion_price=0), 0.5)
    rows = await store._fetch(sa.text("SELECT day, week, month, statement_timestamp() FROM credit_accounts "
                                      "WHERE key_hash = :h").bindparams(h=k.hash))
    day, week, month, db_now = rows[0]
    assert period_names(db_now) == {"daily": day, "weekly": week, "monthly": month}
    assert (await by_host.spend(k.hash)).weekly == pytest.approx(0.5)


async def test_reconcile_repairs_lost_spend_and_never_lowers_it(store) -> None:
    book = ledger(store)
    lost, ahead = key(5.0), key(5.0, "daily")
    await book.settle(await book.reserve(chain(ahead), 2.0, prompt_cost=0, completion_price=0), 2.0)
    # The records know of $3 for `lost` (never seen by the ledger) and of $1 for `ahead` (a record still unwritten).
    await book.reconcile({lost.hash: {"total": 3.0, "daily": 3.0, "weekly": 3.0, "monthly": 3.0},
                          ahead.hash: {"total": 1.0, "daily": 1.0, "weekly": 2.5, "monthly": 1.0},
                          None: {"total": 50.0}})
    assert (await book.spend(lost.hash)).total == pytest.approx(3.0)
    figures = await book.spend(ahead.hash)
    assert (figures.total, figures.daily, figures.weekly, figures.monthly) == (
        pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.5), pytest.approx(2.0))
    with pytest.raises(GatewayError):
        await book.reserve(chain(lost), 2.5, prompt_cost=0, completion_price=0)
    # Figures of a period gone by are replaced by the records' figures of the current one.
    tomorrow = ledger(store, now=datetime.now(UTC) + timedelta(days=1))
    await tomorrow.reconcile({ahead.hash: {"total": 2.0, "daily": 0.25}})
    figures = await tomorrow.spend(ahead.hash)
    assert (figures.total, figures.daily) == (pytest.approx(2.0), 0.25)
    await book.reconcile({})  # nothing to do


async def test_one_process_of_the_fleet_claims_each_periodic_reconciliation(store) -> None:
    books = [ledger(store) for _ in range(3)]
    claims = await asyncio.gather(*(book.claim_reconcile(0.5) for book in books for _ in range(3)))
    assert sum(claims) == 1
    assert not await books[0].claim_reconcile(0.5)
    await asyncio.sleep(0.6)
    assert await books[1].claim_reconcile(0.5) and not await books[2].claim_reconcile(0.5)


async def test_renewed_leases_outlive_the_lease_and_settled_ones_are_not_renewed(store) -> None:
    holder, other = ledger(store, lease=0.6), ledger(store, lease=0.6)
    k = key(1.0)
    long_stream = await holder.reserve(chain(k), 0.7, prompt_cost=0, completion_price=0)
    short = await holder.reserve(chain(k), 0.2, prompt_cost=0, completion_price=0)
    await holder.settle(short, 0.1)
    for _ in range(6):  # 1.2 s: twice the lease, renewed every 0.2 s, swept as often
        await asyncio.sleep(0.2)
        assert await holder.renew() == 1
        assert await other.sweep() == 0
    with pytest.raises(GatewayError):  # still held: 1.0 - 0.1 spent - 0.7 reserved leaves 0.2
        await other.reserve(chain(k), 0.3, prompt_cost=0, completion_price=0)
    assert (await other.spend(k.hash)).reserved == pytest.approx(0.7)
    await holder.settle(long_stream, 0.5)
    assert holder.open == {} and await holder.renew() == 0
    assert (await other.reserve(chain(k), 0.4, prompt_cost=0, completion_price=0)).amount == 0.4


async def test_released_reservations_leave_nothing_reserved(store) -> None:
    book = ledger(store)
    k = key(100.0)
    held = [await book.reserve(chain(k), amount, prompt_cost=0, completion_price=0)
            for amount in (0.1, 0.2, 0.3, 1e-7)]
    for reservation in held:
        await book.settle(reservation, 0.0)
    assert (await book.spend(k.hash)).reserved == 0.0  # not 5.5e-17


async def test_sweeps_and_reconciliations_of_many_keys_run_together(store) -> None:
    """Several processes sweep and reconcile the same keys at once: account rows are locked in one order, so none
    deadlocks (PostgreSQL would abort one after a second)."""
    books = [ledger(store, lease=0.2) for _ in range(4)]
    keys = [key(1.0) for _ in range(40)]
    for index, k in enumerate(keys):
        await books[index % 4].reserve(chain(k), 0.5, prompt_cost=0, completion_price=0)
    await asyncio.sleep(0.3)
    figures = {k.hash: {"total": 0.1} for k in keys}
    results = await asyncio.gather(*(book.sweep() for book in books), *(book.reconcile(figures) for book in books))
    assert sum(results[:4]) == 40
    spend = await books[0].spend_of([k.hash for k in keys])
    assert all(s.reserved == 0.0 and s.total == pytest.approx(0.1) for s in spend.values())


async def test_a_chain_stops_at_the_workspace_budget_and_the_402_names_it(store) -> None:
    book = ledger(store)
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
    assert await count(store, "credit_reservations") == 20  # a row per reservation and account
    # The key refuses first when both would: the 402 names the first budget of the chain that does not fit.
    with pytest.raises(GatewayError) as refused:
        await book.reserve([*chain(key(0.125)), team], 0.25, prompt_cost=0, completion_price=0)
    assert refused.value.metadata["level"] == "key" and "budget" not in refused.value.metadata


async def test_two_keys_sharing_a_workspace_budget_never_exceed_it(store) -> None:
    books = [ledger(store), ledger(store)]
    team = workspace(10.0, "monthly")
    first, second = [*chain(key(100.0)), team], [*chain(key(100.0)), team]
    admitted = await asyncio.gather(*(count_admitted(book, budgets, 25) for book in books
                                      for budgets in (first, second)))
    assert sum(admitted) == 10, admitted  # 100 reservations of $1 against the workspace's $10
    figures = await books[0].spend_of([first[0].account, second[0].account, team.account])
    assert figures[team.account].reserved == 10.0
    assert figures[first[0].account].reserved + figures[second[0].account].reserved == 10.0


def _reserve_under_workspace(url: str, account: str, count: int, results: multiprocessing.Queue) -> None:
    async def run() -> int:
        store = await Store.open(url)
        try:
            budgets = [Budget("key", uuid.uuid4().hex, 10.0, None), Budget("workspace", account, 10.0, None, "shared")]
            return await count_admitted(PostgresCreditLedger(store, lease=60.0), budgets, count)
        finally:
            await store.close()
    results.put(asyncio.run(run()))


async def test_processes_with_their_own_keys_never_exceed_their_shared_workspace_budget(url, store) -> None:
    account = f"ws:{uuid.uuid4().hex}"
    admitted = await results_of_processes(_reserve_under_workspace, (url, account, 25))
    assert sum(admitted) == 10, admitted  # 4 keys of $10 each, 100 requests of $1 against the workspace's $10
    assert (await ledger(store).spend(account)).reserved == 10.0


async def test_a_refusal_leaves_no_trace_on_any_account(store) -> None:
    book = ledger(store)
    k, env, team = key(10.0), Budget("environment", f"env:{uuid.uuid4().hex}", 5.0, "daily", "prod"), workspace(1.0)
    await book.reconcile({team.account: {"total": 0.5}})
    held = await book.reserve([*chain(k), env, team], 0.25, prompt_cost=0, completion_price=0)
    accounts = [k.hash, env.account, team.account]
    before = await book.spend_of(accounts)
    query = sa.text("SELECT key_hash, xmin::text FROM credit_accounts WHERE key_hash = ANY(:a) ORDER BY key_hash"
                    ).bindparams(a=accounts)
    versions = await store._fetch(query)
    for _ in range(3):  # the key and the environment fit, the workspace does not
        with pytest.raises(GatewayError) as refused:
            await book.reserve([*chain(k), env, team], 0.5, prompt_cost=0, completion_price=0)
        assert refused.value.metadata["level"] == "workspace"
        assert refused.value.metadata["limit_remaining"] == pytest.approx(0.25)
    assert await book.spend_of(accounts) == before
    assert await store._fetch(query) == versions  # not a row written
    assert await count(store, "credit_reservations") == 3
    assert book.open == {account: {held.id} for account in accounts}


async def test_settle_moves_reserved_to_spend_on_every_account(store) -> None:
    book = ledger(store)
    k, member, team = key(10.0, "weekly"), Budget("member", f"mem:{uuid.uuid4().hex}", 5.0, None, "ann"), \
        workspace(2.0, "monthly")
    budgets = [*chain(k), member, team, Budget("environment", "env:unlimited", None, None)]
    held = await book.reserve(budgets, 1.5, prompt_cost=0, completion_price=0)
    assert held.accounts == (k.hash, member.account, team.account)  # the unlimited one is not held here
    await book.settle(held, 0.5)
    await book.settle(held, 0.5)  # exactly once
    assert book.open == {} and await count(store, "credit_reservations") == 0
    for account, figures in (await book.spend_of(list(held.accounts))).items():
        assert (figures.total, figures.daily, figures.weekly, figures.monthly, figures.reserved) == (
            0.5, 0.5, 0.5, 0.5, 0.0), account
    assert (await book.reserve(budgets, 1.5, prompt_cost=0, completion_price=0)).amount == 1.5  # 2 - 0.5
    assert await count(store, "credit_accounts") == 3


async def test_expired_leases_are_released_on_every_account(store) -> None:
    dying, survivor = ledger(store, lease=0.3), ledger(store)
    k, team = key(1.0), workspace(1.0)
    swept = await dying.reserve([*chain(k), team], 1.0, prompt_cost=0, completion_price=0)  # never settled
    for budgets in ([*chain(k), team], chain(k), [team]):
        with pytest.raises(GatewayError):
            await survivor.reserve(budgets, 0.5, prompt_cost=0, completion_price=0)
    await asyncio.sleep(0.4)
    assert await survivor.sweep() == 1  # one reservation, on two accounts
    figures = await survivor.spend_of([k.hash, team.account])
    assert figures[k.hash].reserved == 0.0 and figures[team.account].reserved == 0.0
    assert await count(store, "credit_reservations") == 0
    # Without a sweep, a chain's refused reservation releases its accounts' expired ones itself.
    rechecked = await dying.reserve([*chain(k), team], 1.0, prompt_cost=0, completion_price=0)
    await asyncio.sleep(0.4)
    held = await survivor.reserve([*chain(k), team], 1.0, prompt_cost=0, completion_price=0)
    figures = await survivor.spend_of([k.hash, team.account])
    assert figures[k.hash].reserved == 1.0 and figures[team.account].reserved == 1.0
    for late in (swept, rechecked):  # late settlements only add their cost, releasing nothing of `held`
        await dying.settle(late, 0.0)
    figures = await survivor.spend_of([k.hash, team.account])
    assert figures[k.hash].reserved == 1.0 and figures[team.account].reserved == 1.0
    await survivor.settle(held, 0.0)
    assert (await survivor.spend(team.account)).reserved == 0.0


async def test_renew_keeps_every_account_of_a_reservation(store) -> None:
    holder, other = ledger(store, lease=0.6), ledger(store)
    k, team = key(1.0), workspace(1.0)
    held = await holder.reserve([*chain(k), team], 0.7, prompt_cost=0, completion_price=0)
    alone = await holder.reserve(chain(k), 0.1, prompt_cost=0, completion_price=0)
    for _ in range(6):  # 1.2 s: twice the lease, renewed every 0.2 s, swept as often
        await asyncio.sleep(0.2)
        assert await holder.renew() == 2  # two reservations, on three rows
        assert await other.sweep() == 0
    for budgets in (chain(k), [team]):
        with pytest.raises(GatewayError):
            await other.reserve(budgets, 0.5, prompt_cost=0, completion_price=0)
    await holder.settle(held, 0.1)
    assert holder.open == {k.hash: {alone.id}} and await holder.renew() == 1


async def test_chains_sharing_accounts_in_any_order_never_deadlock(store) -> None:
    """Chains naming the same accounts in opposite orders, reserving, settling, renewing and sweeping at once: rows
    are locked in one order, so none deadlocks (PostgreSQL would abort one after a second)."""
    books = [ledger(store, lease=0.3) for _ in range(4)]
    accounts = [Budget("key", uuid.uuid4().hex, 1000.0, None), Budget("environment", "env:e", 1000.0, None),
                Budget("member", "mem:m", 1000.0, None), workspace(1000.0)]
    chains = [accounts, accounts[::-1], [accounts[2], accounts[0], accounts[3], accounts[1]]]

    async def one(index: int) -> None:
        book = books[index % 4]
        held = await book.reserve(chains[index % 3], 1.0, prompt_cost=0, completion_price=0)
        await asyncio.sleep(0)
        await book.settle(held, 0.5)

    async def upkeep() -> None:
        for _ in range(5):
            for book in books:
                await book.renew()
                await book.sweep()
            await asyncio.sleep(0.01)

    await asyncio.gather(*(one(index) for index in range(120)), upkeep())
    figures = await books[0].spend_of([budget.account for budget in accounts])
    assert all(f.total == 60.0 and f.reserved == 0.0 for f in figures.values()), figures


async def test_needs_postgresql(tmp_path) -> None:
    sqlite = await Store.open(f"sqlite:///{tmp_path / 'crossroads.db'}")
    try:
        with pytest.raises(ValueError, match="PostgreSQL"):
            PostgresCreditLedger(sqlite, lease=30.0)
    finally:
        await sqlite.close()
