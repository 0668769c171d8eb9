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

Spend in Redis is reconciled with the generation records (`reconcile`): each figure becomes the larger of the two,
which repairs a Redis that lost data (restarted without persistence) and never undoes spend whose record is still
waiting to be written.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crossroads.gate.credits import PERIODS, Spend, insufficient_credit, period_starts

if TYPE_CHECKING:
    from crossroads.store.rows import KeyRow

# Seconds a period's spend key outlives its period (then it expires by itself).
_PERIOD_TTL = {"daily": 2 * 86400, "weekly": 8 * 86400, "monthly": 32 * 86400}

# KEYS: [1] the spend key the limit applies to (total or the current period's), [2] res, [3] amt.
# ARGV: [1] lease ms, [2] limit, [3] amount, [4] reservation id.
# Returns {1, left_after} when reserved, {0, left} when refused (numbers as strings: Lua floats would be truncated).
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[3], id) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
local reserved = 0
for _, value in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(value) end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = tonumber(ARGV[2]) - used - reserved
local amount = tonumber(ARGV[3])
if amount > left then return {0, tostring(left)} end
local lease = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now + lease, ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[2], 2 * lease)
redis.call('PEXPIRE', KEYS[3], 2 * lease)
return {1, tostring(left - amount)}
"""

# KEYS: [1] total, [2] day, [3] week, [4] month, [5] res, [6] amt. ARGV: [1] reservation id, [2] cost,
# [3..5] the day, week and month keys' lifetimes in seconds.
_SETTLE_LUA = """
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
  for i = 2, 4 do
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[2])
    redis.call('EXPIRE', KEYS[i], ARGV[i + 1])
  end
end
return 1
"""

# KEYS: [1] total, [2] day, [3] week, [4] month. ARGV: [1..4] the database's figures, [5..7] the period lifetimes.
_RECONCILE_LUA = """
for i = 1, 4 do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tonumber(ARGV[i]) > current then redis.call('SET', KEYS[i], ARGV[i]) end
  if i > 1 then redis.call('EXPIRE', KEYS[i], ARGV[i + 3]) end
end
return 1
"""


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

    def __init__(self, url: str, *, lease: float, prefix: str = "crossroads:credit",
                 clock: Any = None) -> None:
        import redis.asyncio as aioredis  # imported here so the memory-only setup never needs the client

        self.lease_ms = max(1, round(lease * 1000))
        self.prefix = prefix
        self._clock = clock or (lambda: datetime.now(UTC))
        self._redis: Any = aioredis.Redis.from_url(url)
        self._reserve = self._redis.register_script(_RESERVE_LUA)
        self._settle = self._redis.register_script(_SETTLE_LUA)
        self._reconcile = self._redis.register_script(_RECONCILE_LUA)

    def _keys(self, key_hash: str) -> dict[str, str]:
        base = f"{self.prefix}:{key_hash}"
        periods = period_names(self._clock())
        return {"total": f"{base}:t", "daily": f"{base}:d:{periods['daily']}",
                "weekly": f"{base}:w:{periods['weekly']}", "monthly": f"{base}:m:{periods['monthly']}",
                "res": f"{base}:res", "amt": f"{base}:amt"}

    async def reserve(self, key: KeyRow | None, amount: float, *, prompt_cost: float,
                      completion_price: float) -> SharedReservation:
        """Reserve `amount` USD for a request of `key` (nothing to hold without a limit), or raise 402 saying how
        many max_tokens would fit."""
        if key is None or key.limit is None:
            return SharedReservation(None if key is None else key.hash, 0.0)
        keys = self._keys(key.hash)
        spend_key = keys[key.limit_reset] if key.limit_reset in PERIODS else keys["total"]
        reservation_id = secrets.token_hex(8)
        admitted, left_text = await self._reserve(keys=[spend_key, keys["res"], keys["amt"]],
                                                  args=[self.lease_ms, repr(float(key.limit)), repr(float(amount)),
                                                        reservation_id])
        left = float(left_text)
        if not int(admitted):
            raise insufficient_credit(key.limit, left, amount, prompt_cost, completion_price)
        return SharedReservation(key.hash, amount, reservation_id)

    async def settle(self, reservation: SharedReservation, cost: float) -> None:
        """Replace the reservation with the real cost (exactly once; a reservation whose lease ran out only adds
        its cost)."""
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.key_hash is None or not reservation.id and cost <= 0:
            return
        keys = self._keys(reservation.key_hash)
        await self._settle(keys=[keys["total"], keys["daily"], keys["weekly"], keys["monthly"], keys["res"],
                                 keys["amt"]],
                           args=[reservation.id or "-", repr(float(cost)), *(_PERIOD_TTL[p] for p in PERIODS)])

    async def spend(self, key_hash: str) -> Spend:
        """The key's figures (spend per period and what open reservations hold), read in one round trip."""
        keys = self._keys(key_hash)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.mget(keys["total"], keys["daily"], keys["weekly"], keys["monthly"])
            pipe.hvals(keys["amt"])
            values, amounts = await pipe.execute()
        total, daily, weekly, monthly = (float(v) if v is not None else 0.0 for v in values)
        return Spend(total=total, daily=daily, weekly=weekly, monthly=monthly,
                     reserved=sum(float(a) for a in amounts))

    async def reconcile(self, spend_by_key: dict[str | None, dict[str, float]]) -> None:
        """Raise each figure in Redis to the database's when it is lower (see the module docstring)."""
        for key_hash, figures in spend_by_key.items():
            if key_hash is None:
                continue  # the master key has no limit
            keys = self._keys(key_hash)
            await self._reconcile(
                keys=[keys["total"], keys["daily"], keys["weekly"], keys["monthly"]],
                args=[repr(float(figures.get(name, 0.0))) for name in ("total", *PERIODS)]
                + [_PERIOD_TTL[p] for p in PERIODS])

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        closer = getattr(self._redis, "aclose", None) or self._redis.close
        await closer()
