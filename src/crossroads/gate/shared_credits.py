"""Credit limits held across every process of every instance: the reservation ledger in Redis (issue 13).

The in-process `CreditLedger` (credits.py) is exact within one process. This one keeps the same figures in Redis so
that any number of processes sharing one Redis hold a request's budgets together (its key's limit, its environment's,
member's and workspace's budgets: a chain of `Budget`s, each an account of the ledger). Each reservation is one Lua
script (one round trip) that reads the spend and open reservations of every account of the chain, decides, and
records the reservation on all of them or on none, atomically (Redis runs a script alone); settling every account is
another. Only budgets with a limit ever reach Redis. Every account of a script must live on the same Redis: a
standalone server or a primary, not a cluster.

Per account A (a key's hash, or "ws:<id>", "env:<id>", "mem:<id>": the two never collide), under `prefix`:
- `{prefix}:{A}:t` total spend (USD, a float string), and `:d:<YYYY-MM-DD>`, `:w:<YYYY-MM-DD of Monday>`,
  `:m:<YYYY-MM>` the spend of the current day, week and month (UTC). A period's key is named after the period, so
  a reset happens once, for everyone, when the date changes; old period keys expire by themselves.
- `{prefix}:{A}:res` a sorted set of open reservations (member: reservation id, score: lease end in ms, Redis'
  clock) and `{prefix}:{A}:amt` a hash of their amounts. A reservation holds the same id on every account of its
  chain. A reservation whose lease ended (its process died: SIGKILL, host loss) is dropped from an account by the
  next reservation on that account, so each budget recovers by itself within one lease.

- `{prefix}:reconciled:<fleet id>` (`marker`; the fleet is the database, see api/services.py) exists once the figures were reconciled with the database (below). A reservation finds it
  missing after Redis lost its data (a restart without persistence, a flush, a failover to an empty replica): it is
  refused with `NeedsReconcile` instead of being judged against figures that forgot the spend, and the caller
  reconciles and tries again.

A process renews the leases of the reservations it holds (`renew`, every third of a lease), so a long stream keeps
its reservation while a dead process's expire within one lease.

Spend in Redis is reconciled with the generation records (`reconcile`): each figure becomes the larger of the two,
which repairs a Redis that lost data (restarted without persistence) and never undoes spend whose record is still
waiting to be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from crossroads.errors import GatewayError
from crossroads.gate.credits import PERIODS, Budget, Spend, insufficient_credit, period_starts
from crossroads.gate.redis_client import ScriptBatch, redis_client
from crossroads.observability.logs import OncePer
from crossroads.observability.metrics import count_redis_error, count_store_error

_log = logging.getLogger("crossroads")

# Seconds the periodic reconciliation lets settlements sent before its query land in the ledger (they take
# milliseconds) before it applies the records' figures (see FleetCredits.reconcile).
SETTLE_MARGIN = 1.0

# Seconds a period's spend key outlives its period (then it expires by itself).
_PERIOD_TTL = {"daily": 2 * 86400, "weekly": 8 * 86400, "monthly": 32 * 86400}

# Open reservations of an account are a sorted set (`res`: id -> lease end), their amounts a hash (`amt`) and their
# sum a float (`rsum`), so that a reservation costs O(log n) per account whatever the number of requests of that
# account in flight. Each script that drops a reservation subtracts its amount from `rsum`; an empty `res` resets
# `rsum` to 0 (float drift).
_DROP_EXPIRED_LUA = """
local function drop_expired(res, amt, rsum, now)
  local expired = redis.call('ZRANGEBYSCORE', res, '-inf', now)
  if #expired == 0 then return end
  local gone = 0
  for _, id in ipairs(expired) do
    local amount = redis.call('HGET', amt, id)
    if amount then gone = gone + tonumber(amount) end
    redis.call('HDEL', amt, id)
  end
  redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
  redis.call('INCRBYFLOAT', rsum, tostring(-gone))
end
local function reserved_now(res, rsum)
  if redis.call('ZCARD', res) == 0 then
    redis.call('DEL', rsum)
    return 0
  end
  return math.max(0, tonumber(redis.call('GET', rsum) or '0'))
end
"""

# KEYS: [1] the reconciled marker, then per account of the chain (in the chain's order) 4 keys: the spend key its
# limit applies to (total or the current period's), res, amt, rsum. ARGV: [1] lease ms, [2] amount, [3] reservation
# id, then per account its limit.
# Every account's expired reservations are dropped and every limit checked before anything is reserved: the
# reservation is added to every account or to none. Returns {1, '0', 0} when reserved, {0, left, i} when the i-th
# account (1-based) refused (the first in the chain's order), {-1, '0', 0} when the figures need reconciling first
# (numbers as strings: Lua floats would be truncated).
_RESERVE_LUA = _DROP_EXPIRED_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, '0', 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local amount = tonumber(ARGV[2])
local accounts = (#KEYS - 1) / 4
local refused, refused_left = 0, 0
for i = 1, accounts do
  local k = 1 + 4 * (i - 1)
  drop_expired(KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], now)
  local reserved = reserved_now(KEYS[k + 2], KEYS[k + 4])
  local used = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
  local left = tonumber(ARGV[3 + i]) - used - reserved
  if refused == 0 and amount > left then refused, refused_left = i, left end
end
if refused > 0 then return {0, tostring(refused_left), refused} end
local lease = tonumber(ARGV[1])
for i = 1, accounts do
  local k = 1 + 4 * (i - 1)
  redis.call('ZADD', KEYS[k + 2], now + lease, ARGV[3])
  redis.call('HSET', KEYS[k + 3], ARGV[3], ARGV[2])
  redis.call('INCRBYFLOAT', KEYS[k + 4], ARGV[2])
  for j = 2, 4 do redis.call('PEXPIRE', KEYS[k + j], 2 * lease) end
end
return {1, '0', 0}
"""

# KEYS: per account of the reservation 7 keys: total, day, week, month, res, amt, rsum. ARGV: [1] reservation id,
# [2] cost, [3..5] the day, week and month keys' lifetimes in seconds. An account whose copy of the reservation
# expired and was dropped meanwhile only gets the cost.
# A period's key is named for its period and lives a period and a margin from its first spend: its lifetime is set
# when the increment created it (the sum is then the cost itself), not again on every settle (three commands fewer).
_SETTLE_LUA = """
local cost = tonumber(ARGV[2])
for k = 0, #KEYS - 7, 7 do
  if redis.call('ZREM', KEYS[k + 5], ARGV[1]) == 1 then
    local amount = redis.call('HGET', KEYS[k + 6], ARGV[1])
    redis.call('HDEL', KEYS[k + 6], ARGV[1])
    if amount then redis.call('INCRBYFLOAT', KEYS[k + 7], '-' .. amount) end
  end
  if cost > 0 then
    redis.call('INCRBYFLOAT', KEYS[k + 1], ARGV[2])
    for i = 2, 4 do
      if tonumber(redis.call('INCRBYFLOAT', KEYS[k + i], ARGV[2])) == cost then
        redis.call('EXPIRE', KEYS[k + i], ARGV[i + 1])
      end
    end
  end
end
return 1
"""

# KEYS: [1] res, [2] amt, [3] rsum. ARGV: [1] lease ms, [2..] reservation ids. Moves the lease end of each
# reservation still open (ZADD XX: one settled or expired meanwhile is not brought back).
_RENEW_LUA = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], 2 * tonumber(ARGV[1])) end
return 1
"""

# KEYS: [1] res, [2] amt, [3] rsum. Returns the sum of the account's live reservations (dropping expired ones first).
_RESERVED_LUA = _DROP_EXPIRED_LUA + """
local t = redis.call('TIME')
drop_expired(KEYS[1], KEYS[2], KEYS[3], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return tostring(reserved_now(KEYS[1], KEYS[3]))
"""

# KEYS: [1] total, [2] day, [3] week, [4] month. ARGV: [1..4] the database's figures ("" leaves that figure as it
# is), [5..7] the period lifetimes.
_RECONCILE_LUA = """
for i = 1, 4 do
  if ARGV[i] ~= '' then
    local current = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tonumber(ARGV[i]) > current then redis.call('SET', KEYS[i], ARGV[i]) end
    if i > 1 then redis.call('EXPIRE', KEYS[i], ARGV[i + 3]) end
  end
end
return 1
"""


class NeedsReconcile(Exception):
    """Redis has no reconciled figures (it lost its data): reconcile from the database, then reserve again."""


@dataclass(slots=True)
class SharedReservation:
    accounts: tuple[str, ...]  # the accounts holding it: the chain's budgets with a limit, in the chain's order
    amount: float
    id: str = ""
    settled: bool = False


class HeldBudget(NamedTuple):
    """A budget a shared ledger holds."""
    account: str
    limit: float
    reset: str  # the figure its limit applies to: "total", "daily", "weekly" or "monthly"
    budget: Budget


class OpenReservations(dict[str, set[str]]):
    """The reservations a process holds and has not settled, per account: what its lease renewal extends."""

    def hold(self, accounts: Sequence[str], reservation_id: str) -> None:
        for account in accounts:
            self.setdefault(account, set()).add(reservation_id)

    def release(self, accounts: Sequence[str], reservation_id: str) -> None:
        for account in accounts:
            held = self.get(account)
            if held is not None:
                held.discard(reservation_id)
                if not held:
                    del self[account]


def held_budgets(chain: Sequence[Budget]) -> list[HeldBudget]:
    """The budgets of `chain` a shared ledger holds, in the chain's order: those with a limit (the master key has
    none), each account once (the first of its budgets counts: an account appearing twice would hold the
    reservation twice)."""
    held: list[HeldBudget] = []
    for budget in chain:
        if budget.limit is None or budget.account is None:
            continue
        if all(other.account != budget.account for other in held):
            reset = budget.limit_reset if budget.limit_reset in PERIODS else "total"
            held.append(HeldBudget(budget.account, float(budget.limit), reset or "total", budget))
    return held


def period_names(now: datetime) -> dict[str, str]:
    """The current UTC period of each kind, as it appears in a spend key's name."""
    starts = period_starts(now)
    return {"daily": starts["daily"].strftime("%Y-%m-%d"), "weekly": starts["weekly"].strftime("%Y-%m-%d"),
            "monthly": starts["monthly"].strftime("%Y-%m")}


class RedisCreditLedger:
    """Exact across every process sharing one Redis (standalone or primary). Redis errors propagate: the caller
    refuses the request (fail closed) rather than serve a limited budget it cannot count."""

    name = "Redis"  # what logs and errors call the ledger's store

    def __init__(self, url: str, *, lease: float, prefix: str = "crossroads:credit",
                 clock: Any = None) -> None:
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self.prefix = prefix
        self.marker = f"{prefix}:reconciled"
        self._clock = clock or (lambda: datetime.now(UTC))
        self._cached_clock = clock is None  # a test's clock is read every time
        self._names: dict[str, str] = {}
        self._names_until = -math.inf
        self._redis: Any = redis_client(url)
        self._reserve = ScriptBatch(self._redis, _RESERVE_LUA)
        self._settle = ScriptBatch(self._redis, _SETTLE_LUA)
        self._renew = self._redis.register_script(_RENEW_LUA)
        self._reserved = self._redis.register_script(_RESERVED_LUA)
        self._reconcile = self._redis.register_script(_RECONCILE_LUA)
        # The reservations this process holds and has not settled: account -> reservation ids (for `renew`).
        self.open = OpenReservations()
        # Reservation ids: drawn at random once per ledger (per process), then counted: unique across the fleet
        # without a draw from the system's random source per request.
        self._id_prefix = secrets.token_hex(6) + "-"
        self._ids = itertools.count(1)

    def _period_names(self) -> dict[str, str]:
        # Read per request: the names change at midnight UTC only, so they are worked out once a second (a request
        # in the first second of a day may still count on the day before).
        now = time.monotonic()
        if now >= self._names_until:
            self._names, self._names_until = period_names(self._clock()), now + 1.0
        return self._names

    def _keys(self, account: str) -> dict[str, str]:
        base = f"{self.prefix}:{account}"
        periods = self._period_names() if self._cached_clock else period_names(self._clock())
        return {"total": f"{base}:t", "daily": f"{base}:d:{periods['daily']}",
                "weekly": f"{base}:w:{periods['weekly']}", "monthly": f"{base}:m:{periods['monthly']}",
                "res": f"{base}:res", "amt": f"{base}:amt", "rsum": f"{base}:rsum"}

    async def reserve(self, chain: Sequence[Budget], amount: float, *, prompt_cost: float,
                      completion_price: float) -> SharedReservation:
        """Reserve `amount` USD for a request on every budget of `chain` that has a limit, all or nothing (nothing to
        hold without one), or raise 402 naming the first budget it does not fit and saying how many max_tokens
        would, or NeedsReconcile."""
        budgets = held_budgets(chain)
        if not budgets:
            return SharedReservation((), 0.0)
        reservation_id = f"{self._id_prefix}{next(self._ids):x}"
        keys = [self.marker]
        args: list[Any] = [self.lease_ms, repr(float(amount)), reservation_id]
        for held in budgets:
            names = self._keys(held.account)
            keys += [names[held.reset], names["res"], names["amt"], names["rsum"]]
            args.append(repr(held.limit))
        admitted, left_text, refused = await self._reserve(keys, args)
        admitted = int(admitted)
        if admitted < 0:
            raise NeedsReconcile
        if not admitted:
            raise insufficient_credit(budgets[int(refused) - 1].budget, float(left_text), amount, prompt_cost,
                                      completion_price)
        accounts = tuple(held.account for held in budgets)
        self.open.hold(accounts, reservation_id)
        return SharedReservation(accounts, amount, reservation_id)

    async def settle(self, reservation: SharedReservation, cost: float) -> None:
        """Replace the reservation with the real cost on every account (exactly once; an account whose copy of the
        reservation ran out of lease only adds its cost)."""
        sent = self.settle_soon(reservation, cost)
        if sent is not None:
            await sent

    def settle_soon(self, reservation: SharedReservation, cost: float) -> asyncio.Future[Any] | None:
        """`settle` without waiting: the settlement goes in this turn's batch; returns what completes when Redis
        has it (None when there was nothing to send)."""
        if reservation.settled:
            return None
        reservation.settled = True
        if not reservation.accounts or not reservation.id and cost <= 0:
            return None
        self.open.release(reservation.accounts, reservation.id)
        keys: list[str] = []
        for account in reservation.accounts:
            names = self._keys(account)
            keys += [names["total"], names["daily"], names["weekly"], names["monthly"], names["res"], names["amt"],
                     names["rsum"]]
        return self._settle(keys, [reservation.id or "-", repr(float(cost)), *(_PERIOD_TTL[p] for p in PERIODS)])

    async def renew(self) -> int:
        """Extend the lease of every reservation this process holds (on each of its accounts), in one round trip;
        returns how many reservations."""
        if not self.open:
            return 0
        renewed: set[str] = set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for account, ids in list(self.open.items()):
                keys = self._keys(account)
                await self._renew(keys=[keys["res"], keys["amt"], keys["rsum"]], args=[self.lease_ms, *ids],
                                  client=pipe)
                renewed.update(ids)
            await pipe.execute()
        return len(renewed)

    async def spend(self, account: str) -> Spend:
        """The account's figures (spend per period and what open reservations hold), read in one round trip."""
        return (await self.spend_of([account]))[account]

    async def spend_of(self, accounts: list[str]) -> dict[str, Spend]:
        """`spend` of several accounts, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for account in accounts:
                keys = self._keys(account)
                pipe.mget(keys["total"], keys["daily"], keys["weekly"], keys["monthly"])
                await self._reserved(keys=[keys["res"], keys["amt"], keys["rsum"]], client=pipe)
            replies = await pipe.execute()
        figures: dict[str, Spend] = {}
        for index, account in enumerate(accounts):
            values, reserved = replies[2 * index], replies[2 * index + 1]
            total, daily, weekly, monthly = (float(v) if v is not None else 0.0 for v in values)
            figures[account] = Spend(total=total, daily=daily, weekly=weekly, monthly=monthly,
                                     reserved=float(reserved))
        return figures

    async def reconcile(self, spend_by_account: dict[str | None, dict[str, float]], *,
                        complete: bool = True) -> None:
        """Raise each figure in Redis to the database's when it is lower (see the module docstring), in one round
        trip; when `complete` (every limited account is in `spend_by_account`), mark the figures reconciled."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for account, figures in spend_by_account.items():
                if account is None:
                    continue  # the master key has no limit
                keys = self._keys(account)
                await self._reconcile(
                    keys=[keys["total"], keys["daily"], keys["weekly"], keys["monthly"]],
                    args=[repr(float(figures[name])) if name in figures else "" for name in ("total", *PERIODS)]
                    + [_PERIOD_TTL[p] for p in PERIODS], client=pipe)
            if complete:
                pipe.set(self.marker, 1)
            await pipe.execute()

    async def claim_reconcile(self, interval: float) -> bool:
        """Whether this process is the one of the fleet to run this interval's periodic reconciliation."""
        return bool(await self._redis.set(f"{self.marker}:periodic", 1, nx=True, px=max(1, round(interval * 1000))))

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        closer = getattr(self._redis, "aclose", None) or self._redis.close
        await closer()


class FleetCredits:
    """The gateway's use of a shared ledger (Redis, or PostgreSQL's `PostgresCreditLedger` of gate/pg_credits.py
    without Redis): reservations that fail closed, settlements off the request path, lease renewal (and release of
    expired leases where the ledger needs a sweep) and reconciliation with the generation records, in one background
    task per process.

    `database_spend(accounts)` returns the records' figures of those accounts ({account: {"total", "daily", ...}});
    `limited()` every account (key hash, "ws:<id>", "env:<id>", "mem:<id>") whose budget has a limit (the only ones
    a shared ledger holds)."""

    def __init__(self, ledger: Any, *, database_spend: Callable[[list[str]], Awaitable[dict]],
                 limited: Callable[[], list[str]], reconcile_interval: float) -> None:
        self.ledger = ledger
        self._database_spend = database_spend
        self._limited = limited
        self.reconcile_interval = reconcile_interval
        self.reconcile_due = True
        self._last_reconcile = -math.inf
        self._known: set[str] = set()  # accounts whose figures this process has reconciled
        self._settling: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._down = OncePer(_log)
        self._sweep = getattr(ledger, "sweep", None)
        self._count_error = count_redis_error if ledger.name == "Redis" else count_store_error

    async def reserve(self, chain: Sequence[Budget], amount: float, *, prompt_cost: float,
                      completion_price: float) -> SharedReservation:
        """Reserve on every budget of `chain` that has a limit, in the shared ledger; 402 when one of them has no
        room, 503 when the ledger cannot be reached (fail closed)."""
        try:
            unknown = [budget.account for budget in chain if budget.limit is not None and budget.account is not None
                       and budget.account not in self._known]
            if unknown:
                # Accounts this process has not reconciled yet (a limit was just set: the ledger has none of their
                # past spend): bring their figures from the records first, once per process.
                await self.reconcile(unknown)
            try:
                return await self.ledger.reserve(chain, amount, prompt_cost=prompt_cost,
                                                 completion_price=completion_price)
            except NeedsReconcile:
                await self.reconcile()
                return await self.ledger.reserve(chain, amount, prompt_cost=prompt_cost,
                                                 completion_price=completion_price)
        except GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; all mean "cannot count"
            self._count_error()
            self._down.warning("credit ledger (%s) unavailable, requests with a credit limit or budget refused "
                               "with 503: %s", self.ledger.name, type(exc).__name__)
            raise GatewayError(503, "This request's credit limits cannot be checked right now (the shared credit "
                                    "ledger is unavailable); retry shortly",
                               metadata={"code": "credit_ledger_unavailable"}, headers={"Retry-After": "1"}) from None

    def settle_later(self, reservation: SharedReservation, cost: float) -> None:
        """Settle off the request path. Until it lands, the reservation still holds its (larger) worst case: a
        stricter limit for a moment, never a looser one."""
        soon = getattr(self.ledger, "settle_soon", None)
        pending: asyncio.Future[Any] | None
        if soon is not None:  # batched by the ledger: no task of its own
            pending = soon(reservation, cost)
        else:
            pending = asyncio.get_running_loop().create_task(self.ledger.settle(reservation, cost))
        if pending is not None:
            self._settling.add(pending)
            pending.add_done_callback(self._settled)

    def _settled(self, pending: asyncio.Future[Any]) -> None:
        self._settling.discard(pending)
        if pending.cancelled() or pending.exception() is None:
            return
        # The lease releases the reservation; the cost comes back from the records at the next reconciliation.
        self._count_error()
        self.reconcile_due = True
        self._down.warning("could not settle a reservation in the credit ledger (%s): %s; the spend is "
                           "corrected from the generation records within %.0f s", self.ledger.name,
                           type(pending.exception()).__name__, self.reconcile_interval)

    async def reconcile(self, accounts: list[str] | None = None, *, settle_margin: float = 0.0) -> None:
        """Raise the ledger's figures of every limited account (or of `accounts`) to the generation records' (one
        query, one round trip). With `settle_margin`, the records' figures wait that long before they are applied:
        a record can reach the database before its settlement reaches the ledger (settlements are sent off the
        request path), and raising the ledger to a figure that already holds a settlement still on its way would
        count that request twice."""
        wanted = self._limited() if accounts is None else accounts
        figures = await self._database_spend(wanted)
        if settle_margin:
            await asyncio.sleep(settle_margin)
        await self.ledger.reconcile(figures, complete=accounts is None)
        self._known.update(wanted)
        if accounts is None:
            self.reconcile_due = False
            self._last_reconcile = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._maintain(), name="crossroads-credit-ledger")

    async def _maintain(self) -> None:
        """Renew this process's leases every third of a lease; reconcile every `reconcile_interval` (sooner after a
        failure)."""
        tick = min(self.ledger.lease / 3, 1.0)
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            try:
                if now - renewed >= self.ledger.lease / 3:
                    renewed = now
                    await self.ledger.renew()
                    if self._sweep is not None:  # a ledger whose expired leases are released by its users
                        await self._sweep()
                if self.reconcile_due:  # after a failure in this process
                    await self.reconcile(settle_margin=SETTLE_MARGIN)
                elif now - self._last_reconcile >= self.reconcile_interval:
                    # One process of the fleet per interval runs the periodic reconciliation (a query over every
                    # record of the limited accounts); the others skip it.
                    self._last_reconcile = now
                    if await self.ledger.claim_reconcile(self.reconcile_interval):
                        await self.reconcile(settle_margin=SETTLE_MARGIN)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database or Redis outage: try again on the next tick
                self.reconcile_due = True
                self._down.warning("credit ledger maintenance failed (lease renewal or reconciliation): %s: %s",
                                   type(exc).__name__, exc)

    async def figures(self, accounts: list[str]) -> dict[str, Spend]:
        return await self.ledger.spend_of(accounts)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._settling:  # bounded: a Redis that went away must not hold the shutdown
            await asyncio.wait(set(self._settling), timeout=2.0)
        await self.ledger.close()
