"""Credit limits held across every process of every instance: the reservation ledger in Redis (issue 13).

The in-process `CreditLedger` (credits.py) is exact within one process. This one keeps the same figures in Redis so
that any number of processes sharing one Redis hold a key's limit together: each reservation is one Lua script (one
round trip) that reads the key's spend and open reservations, decides, and records the reservation atomically;
settling is another. Only keys with a credit limit ever reach Redis.

Per API key hash H, under `prefix`:
- `{prefix}:{H}:t` total spend (USD, a float string), and `:d:<YYYY-MM-DD>`, `:w:<YYYY-MM-DD of Monday>`,
  `:m:<YYYY-MM>` the spend of the current day, week and month (UTC). A period's key is named after the period, so
  a reset happens once, for everyone, when the date changes; old period keys expire by themselves.
- `{prefix}:{H}:res` a sorted set of open reservations (member: reservation id, score: lease end in ms, Redis'
  clock) and `{prefix}:{H}:amt` a hash of their amounts. A reservation whose lease ended (its process died: SIGKILL,
  host loss) is dropped by the next reservation of that key, so the key's credit recovers by itself within one lease.

- `{prefix}:reconciled:<fleet id>` (`marker`; the fleet is the database, see api/app.py) exists once the figures were reconciled with the database (below). A reservation finds it
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
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crossroads.errors import GatewayError
from crossroads.gate.credits import PERIODS, Spend, insufficient_credit, period_starts
from crossroads.gate.redis_client import redis_client
from crossroads.observability.logs import OncePer
from crossroads.observability.metrics import count_redis_error, count_store_error

if TYPE_CHECKING:
    from crossroads.store.rows import KeyRow

_log = logging.getLogger("crossroads")

# Seconds the periodic reconciliation lets settlements sent before its query land in the ledger (they take
# milliseconds) before it applies the records' figures (see FleetCredits.reconcile).
SETTLE_MARGIN = 1.0

# Seconds a period's spend key outlives its period (then it expires by itself).
_PERIOD_TTL = {"daily": 2 * 86400, "weekly": 8 * 86400, "monthly": 32 * 86400}

# Open reservations of a key are a sorted set (`res`: id -> lease end), their amounts a hash (`amt`) and their sum a
# float (`rsum`), so that a reservation costs O(log n) whatever the number of requests of that key in flight. Each
# script that drops a reservation subtracts its amount from `rsum`; an empty `res` resets `rsum` to 0 (float drift).
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

# KEYS: [1] the spend key the limit applies to (total or the current period's), [2] res, [3] amt, [4] rsum, [5] the
# reconciled marker. ARGV: [1] lease ms, [2] limit, [3] amount, [4] reservation id.
# Returns {1, left_after} when reserved, {0, left} when refused, {-1, "0"} when the figures need reconciling first
# (numbers as strings: Lua floats would be truncated).
_RESERVE_LUA = _DROP_EXPIRED_LUA + """
if redis.call('EXISTS', KEYS[5]) == 0 then return {-1, '0'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
drop_expired(KEYS[2], KEYS[3], KEYS[4], now)
local reserved = reserved_now(KEYS[2], KEYS[4])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = tonumber(ARGV[2]) - used - reserved
local amount = tonumber(ARGV[3])
if amount > left then return {0, tostring(left)} end
local lease = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[3])
redis.call('INCRBYFLOAT', KEYS[4], ARGV[3])
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], 2 * lease) end
return {1, tostring(left - amount)}
"""

# KEYS: [1] total, [2] day, [3] week, [4] month, [5] res, [6] amt, [7] rsum. ARGV: [1] reservation id, [2] cost,
# [3..5] the day, week and month keys' lifetimes in seconds.
_SETTLE_LUA = """
if redis.call('ZREM', KEYS[5], ARGV[1]) == 1 then
  local amount = redis.call('HGET', KEYS[6], ARGV[1])
  redis.call('HDEL', KEYS[6], ARGV[1])
  if amount then redis.call('INCRBYFLOAT', KEYS[7], '-' .. amount) end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
  for i = 2, 4 do
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[2])
    redis.call('EXPIRE', KEYS[i], ARGV[i + 1])
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

# KEYS: [1] res, [2] amt, [3] rsum. Returns the sum of the key's live reservations (dropping expired ones first).
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


class _ScriptBatch:
    """Calls of one Lua script made during one turn of the event loop, sent to Redis as one pipeline (one round trip
    and one pooled connection for all of them): under load, each request then pays a future instead of a round
    trip of its own. A call whose batch fails gets the batch's exception."""

    def __init__(self, redis: Any, script: str) -> None:
        self._redis = redis
        self._script = redis.register_script(script)
        self._pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if not self._pending:  # the first call of this turn sends the batch once the turn's other calls are in
            asyncio.get_running_loop().call_soon(self._send)
        self._pending.append(([len(keys), *keys, *args], future))
        return future

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[tuple[list[Any], asyncio.Future[Any]]]) -> None:
        from redis.exceptions import NoScriptError

        try:
            replies = await self._pipeline(batch)
            if any(isinstance(reply, NoScriptError) for reply in replies):  # Redis restarted: load it, once
                await self._redis.script_load(self._script.script)
                replies = await self._pipeline(batch)
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, batch: list[tuple[list[Any], asyncio.Future[Any]]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for arguments, _ in batch:
                pipe.evalsha(self._script.sha, *arguments)
            return await pipe.execute(raise_on_error=False)


class NeedsReconcile(Exception):
    """Redis has no reconciled figures (it lost its data): reconcile from the database, then reserve again."""


@dataclass(slots=True)
class SharedReservation:
    key_hash: str | None
    amount: float
    id: str = ""
    settled: bool = False


def period_names(now: datetime) -> dict[str, str]:
    """The current UTC period of each kind, as it appears in a spend key's name."""
    starts = period_starts(now)
    return {"daily": starts["daily"].strftime("%Y-%m-%d"), "weekly": starts["weekly"].strftime("%Y-%m-%d"),
            "monthly": starts["monthly"].strftime("%Y-%m")}


class RedisCreditLedger:
    """Exact across every process sharing one Redis (standalone or primary). Redis errors propagate: the caller
    refuses the request (fail closed) rather than serve a limited key it cannot count."""

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
        self._reserve = _ScriptBatch(self._redis, _RESERVE_LUA)
        self._settle = _ScriptBatch(self._redis, _SETTLE_LUA)
        self._renew = self._redis.register_script(_RENEW_LUA)
        self._reserved = self._redis.register_script(_RESERVED_LUA)
        self._reconcile = self._redis.register_script(_RECONCILE_LUA)
        # The reservations this process holds and has not settled: key hash -> reservation ids (for `renew`).
        self.open: dict[str, set[str]] = {}

    def _period_names(self) -> dict[str, str]:
        # Read per request: the names change at midnight UTC only, so they are worked out once a second (a request
        # in the first second of a day may still count on the day before).
        now = time.monotonic()
        if now >= self._names_until:
            self._names, self._names_until = period_names(self._clock()), now + 1.0
        return self._names

    def _keys(self, key_hash: str) -> dict[str, str]:
        base = f"{self.prefix}:{key_hash}"
        periods = self._period_names() if self._cached_clock else period_names(self._clock())
        return {"total": f"{base}:t", "daily": f"{base}:d:{periods['daily']}",
                "weekly": f"{base}:w:{periods['weekly']}", "monthly": f"{base}:m:{periods['monthly']}",
                "res": f"{base}:res", "amt": f"{base}:amt", "rsum": f"{base}:rsum"}

    async def reserve(self, key: KeyRow | None, amount: float, *, prompt_cost: float,
                      completion_price: float) -> SharedReservation:
        """Reserve `amount` USD for a request of `key` (nothing to hold without a limit), or raise 402 saying how
        many max_tokens would fit, or NeedsReconcile."""
        if key is None or key.limit is None:
            return SharedReservation(None if key is None else key.hash, 0.0)
        keys = self._keys(key.hash)
        spend_key = keys[key.limit_reset] if key.limit_reset in PERIODS else keys["total"]
        reservation_id = secrets.token_hex(8)
        admitted, left_text = await self._reserve([spend_key, keys["res"], keys["amt"], keys["rsum"], self.marker],
                                                  [self.lease_ms, repr(float(key.limit)), repr(float(amount)),
                                                   reservation_id])
        admitted = int(admitted)
        if admitted < 0:
            raise NeedsReconcile
        left = float(left_text)
        if not admitted:
            raise insufficient_credit(key.limit, left, amount, prompt_cost, completion_price)
        self.open.setdefault(key.hash, set()).add(reservation_id)
        return SharedReservation(key.hash, amount, reservation_id)

    async def settle(self, reservation: SharedReservation, cost: float) -> None:
        """Replace the reservation with the real cost (exactly once; a reservation whose lease ran out only adds
        its cost)."""
        sent = self.settle_soon(reservation, cost)
        if sent is not None:
            await sent

    def settle_soon(self, reservation: SharedReservation, cost: float) -> asyncio.Future[Any] | None:
        """`settle` without waiting: the settlement goes in this turn's batch; returns what completes when Redis
        has it (None when there was nothing to send)."""
        if reservation.settled:
            return None
        reservation.settled = True
        if reservation.key_hash is None or not reservation.id and cost <= 0:
            return None
        held = self.open.get(reservation.key_hash)
        if held is not None:
            held.discard(reservation.id)
            if not held:
                del self.open[reservation.key_hash]
        keys = self._keys(reservation.key_hash)
        return self._settle([keys["total"], keys["daily"], keys["weekly"], keys["monthly"], keys["res"], keys["amt"],
                             keys["rsum"]],
                            [reservation.id or "-", repr(float(cost)), *(_PERIOD_TTL[p] for p in PERIODS)])

    async def renew(self) -> int:
        """Extend the lease of every reservation this process holds, in one round trip; returns how many."""
        if not self.open:
            return 0
        count = 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_hash, ids in list(self.open.items()):
                keys = self._keys(key_hash)
                await self._renew(keys=[keys["res"], keys["amt"], keys["rsum"]], args=[self.lease_ms, *ids],
                                  client=pipe)
                count += len(ids)
            await pipe.execute()
        return count

    async def spend(self, key_hash: str) -> Spend:
        """The key's figures (spend per period and what open reservations hold), read in one round trip."""
        return (await self.spend_of([key_hash]))[key_hash]

    async def spend_of(self, key_hashes: list[str]) -> dict[str, Spend]:
        """`spend` of several keys, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_hash in key_hashes:
                keys = self._keys(key_hash)
                pipe.mget(keys["total"], keys["daily"], keys["weekly"], keys["monthly"])
                await self._reserved(keys=[keys["res"], keys["amt"], keys["rsum"]], client=pipe)
            replies = await pipe.execute()
        figures: dict[str, Spend] = {}
        for index, key_hash in enumerate(key_hashes):
            values, reserved = replies[2 * index], replies[2 * index + 1]
            total, daily, weekly, monthly = (float(v) if v is not None else 0.0 for v in values)
            figures[key_hash] = Spend(total=total, daily=daily, weekly=weekly, monthly=monthly,
                                      reserved=float(reserved))
        return figures

    async def reconcile(self, spend_by_key: dict[str | None, dict[str, float]], *, complete: bool = True) -> None:
        """Raise each figure in Redis to the database's when it is lower (see the module docstring), in one round
        trip; when `complete` (every limited key is in `spend_by_key`), mark the figures reconciled."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_hash, figures in spend_by_key.items():
                if key_hash is None:
                    continue  # the master key has no limit
                keys = self._keys(key_hash)
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

    `database_spend(key_hashes)` returns the records' figures of those keys ({"total", "daily", ...}); `limited()`
    the hashes of the keys that have a credit limit (the only ones a shared ledger holds)."""

    def __init__(self, ledger: Any, *, database_spend: Callable[[list[str]], Awaitable[dict]],
                 limited: Callable[[], list[str]], reconcile_interval: float) -> None:
        self.ledger = ledger
        self._database_spend = database_spend
        self._limited = limited
        self.reconcile_interval = reconcile_interval
        self.reconcile_due = True
        self._last_reconcile = -math.inf
        self._known: set[str] = set()  # keys whose figures this process has reconciled
        self._settling: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._down = OncePer(_log)
        self._sweep = getattr(ledger, "sweep", None)
        self._count_error = count_redis_error if ledger.name == "Redis" else count_store_error

    async def reserve(self, key: KeyRow, amount: float, *, prompt_cost: float,
                      completion_price: float) -> SharedReservation:
        """Reserve in the shared ledger; 402 when the key's limit has no room, 503 when the ledger cannot be reached
        (fail closed)."""
        try:
            if key.hash not in self._known:
                # A key this process has not reconciled yet (its limit was just set: Redis has none of its past
                # spend): bring its figures from the records first, once per process.
                await self.reconcile([key.hash])
            try:
                return await self.ledger.reserve(key, amount, prompt_cost=prompt_cost,
                                                 completion_price=completion_price)
            except NeedsReconcile:
                await self.reconcile()
                return await self.ledger.reserve(key, amount, prompt_cost=prompt_cost,
                                                 completion_price=completion_price)
        except GatewayError:
            raise
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; all mean "cannot count"
            self._count_error()
            self._down.warning("credit ledger (%s) unavailable, requests of keys with a credit limit refused with "
                               "503: %s", self.ledger.name, type(exc).__name__)
            raise GatewayError(503, "This key's credit limit cannot be checked right now (the shared credit ledger "
                                    "is unavailable); retry shortly",
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
        self._down.warning("could not settle a reservation in the credit ledger (%s): %s; the key's spend is "
                           "corrected from the generation records within %.0f s", self.ledger.name,
                           type(pending.exception()).__name__, self.reconcile_interval)

    async def reconcile(self, key_hashes: list[str] | None = None, *, settle_margin: float = 0.0) -> None:
        """Raise the ledger's figures of every limited key (or of `key_hashes`) to the generation records' (one
        query, one round trip). With `settle_margin`, the records' figures wait that long before they are applied:
        a record can reach the database before its settlement reaches the ledger (settlements are sent off the
        request path), and raising the ledger to a figure that already holds a settlement still on its way would
        count that request twice."""
        hashes = self._limited() if key_hashes is None else key_hashes
        figures = await self._database_spend(hashes)
        if settle_margin:
            await asyncio.sleep(settle_margin)
        await self.ledger.reconcile(figures, complete=key_hashes is None)
        self._known.update(hashes)
        if key_hashes is None:
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
                    # record of the limited keys); the others skip it.
                    self._last_reconcile = now
                    if await self.ledger.claim_reconcile(self.reconcile_interval):
                        await self.reconcile(settle_margin=SETTLE_MARGIN)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database or Redis outage: try again on the next tick
                self.reconcile_due = True
                self._down.warning("credit ledger maintenance failed (lease renewal or reconciliation): %s: %s",
                                   type(exc).__name__, exc)

    async def figures(self, key_hashes: list[str]) -> dict[str, Spend]:
        return await self.ledger.spend_of(key_hashes)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._settling:  # bounded: a Redis that went away must not hold the shutdown
            await asyncio.wait(set(self._settling), timeout=2.0)
        await self.ledger.close()
