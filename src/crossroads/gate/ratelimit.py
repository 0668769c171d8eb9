"""Capacity gate: requests-per-minute and tokens-per-minute limits on keys, routes and connections.

One call to ``acquire`` checks every limit that applies to a request and then counts it in all of them, or in none:
a request refused by its connection's limit has not used up any of its key's allowance.

Window: a **fixed 60-second window aligned to the epoch minute** (as OpenRouter's own per-minute limits are), in both
backends. It keeps one integer per (scope, kind), so a check is O(1) and exact, and the Redis version is the same
arithmetic done by one Lua script, so the two backends agree to the request. The price is the usual fixed-window
edge: a client can spend a full limit at the end of one minute and another at the start of the next. A sliding log
would avoid that at the cost of one stored entry per request (and a scan to sum tokens), which is not worth it for a
gate whose job is to protect capacity over minutes.

Priority: keys carry ``high`` / ``normal`` / ``low``. On a limit with ``priority_shares=True`` (connection scopes) a
request of priority p may only bring usage up to ``floor(share[p] * limit)``; past that it is refused with code
``prioritization_gate_denied`` while higher priorities still use the rest, up to the full limit. Past the full limit
everyone is refused with ``resource_exhausted``.

Token counts are estimates at admission (``tokens``); ``adjust`` later replaces the estimate with the real count by
adding the difference to the current window (never below zero). A request is admitted while its estimate fits:
``used + max(tokens, 1) <= allowance``, so a window whose tokens are all spent refuses even a zero estimate.

Backends: ``MemoryLimiter`` is exact within one process (the check and the count happen with no ``await`` between
them). ``RedisLimiter`` is exact across processes sharing one Redis: a single Lua script (run with EVALSHA) reads
every counter, decides, and increments them all atomically, timed by the Redis server's clock so processes with
skewed clocks still share windows; counters expire shortly after their window. Redis errors propagate (the caller
chooses between failing open and failing closed). Scopes within one call must be distinct.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from crossroads.gate.redis_client import ScriptBatch, redis_client

RESOURCE_EXHAUSTED = "resource_exhausted"
PRIORITIZATION_GATE_DENIED = "prioritization_gate_denied"
DEFAULT_PRIORITY_SHARES: dict[str, float] = {"high": 1.0, "normal": 0.9, "low": 0.7}
WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # e.g. "key:<id>", "route:<model>", "connection:<name>"; one counter set per scope
    rpm: int | None = None
    tpm: int | None = None
    priority_shares: bool = False  # True for connection scopes: the priority gate applies there


@dataclass(slots=True)
class Decision:
    allowed: bool
    scope: str | None  # the limit reported: the one refusing, or the tightest one when allowed
    kind: str | None  # "rpm" | "tpm"
    limit: int | None  # the allowance in force for this caller (its priority's share on a gated limit)
    remaining: int | None  # what is left of that allowance in this window (after this request, when allowed)
    reset: float  # seconds until the window resets
    retry_after: float  # seconds to wait before trying again (0 when allowed)
    code: str | None  # "resource_exhausted" | "prioritization_gate_denied" | None when allowed
    reset_at: float = 0.0  # epoch seconds at which the window resets

    def headers(self) -> dict[str, str]:
        """X-RateLimit-Limit/Remaining/Reset (Reset in epoch milliseconds, as OpenRouter sends it), plus
        Retry-After in whole seconds when refused. Empty when no limit applied."""
        if self.limit is None:
            return {}
        reset_at = self.reset_at or time.time() + self.reset
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining or 0),
                   "X-RateLimit-Reset": str(math.ceil(reset_at * 1000))}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class RateLimiter(Protocol):
    async def acquire(self, limits: list[Limit], tokens: int, priority: str = "normal") -> Decision:
        """Count one request and ``tokens`` (estimated) against every limit, or nothing if any refuses."""
        ...

    async def adjust(self, limits: list[Limit], delta_tokens: int) -> None:
        """Correct the token counts by ``delta_tokens`` (real minus estimated) in the current window."""
        ...

    async def usage(self, scopes: list[str]) -> dict[tuple[str, str], int]:
        """What each scope has used in the current window: {(scope, "rpm" | "tpm"): units}. Read only."""
        ...

    async def ping(self) -> None:
        """Raise unless the counters' store answers (always answers in process)."""
        ...

    async def close(self) -> None: ...


# -- planning and deciding, shared by both backends -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Check:
    scope: str
    kind: str  # "rpm" | "tpm"
    limit: int
    allowance: int  # limit, or floor(share * limit) for this priority on a gated limit
    amount: int  # what this request adds: 1 for rpm, the token estimate for tpm


def _shares(priority_shares: Mapping[str, float] | None) -> dict[str, float]:
    shares = dict(DEFAULT_PRIORITY_SHARES)
    for priority, share in (priority_shares or {}).items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"priority share for {priority!r} must be within [0, 1], got {share}")
        shares[priority] = share
    return shares


def _plan(limits: list[Limit], tokens: int, priority: str, shares: dict[str, float]) -> list[_Check]:
    if tokens < 0:
        raise ValueError(f"tokens must not be negative, got {tokens}")
    # An unknown priority is treated as normal rather than failing the request.
    share = shares.get(priority, shares["normal"])
    checks: list[_Check] = []
    seen: set[str] = set()
    for limit in limits:
        if limit.scope in seen:
            raise ValueError(f"scope {limit.scope!r} given twice")
        seen.add(limit.scope)
        for kind, value, amount in (("rpm", limit.rpm, 1), ("tpm", limit.tpm, tokens)):
            if value is None:
                continue
            # The epsilon keeps 0.7 * 10 from flooring to 6 through float rounding.
            allowance = math.floor(share * value + 1e-9) if limit.priority_shares else value
            checks.append(_Check(limit.scope, kind, value, allowance, amount))
    return checks


def _refusal(check: _Check, used: int, reset: float, reset_at: float) -> Decision | None:
    """The decision refusing ``check`` at ``used``, or None when it fits."""
    need = used + max(check.amount, 1)
    if need > check.limit:
        code = RESOURCE_EXHAUSTED
    elif need > check.allowance:
        code = PRIORITIZATION_GATE_DENIED
    else:
        return None
    return Decision(allowed=False, scope=check.scope, kind=check.kind, limit=check.allowance,
                    remaining=max(0, check.allowance - used), reset=reset, retry_after=reset, code=code,
                    reset_at=reset_at)


def _admitted(checks: list[_Check], used_before: list[int], reset: float, reset_at: float) -> Decision:
    """The decision for an admitted request, reporting the limit with the smallest share left."""
    if not checks:
        return Decision(allowed=True, scope=None, kind=None, limit=None, remaining=None, reset=0.0,
                        retry_after=0.0, code=None, reset_at=0.0)
    best: tuple[float, _Check, int] | None = None
    for check, used in zip(checks, used_before, strict=True):
        remaining = max(0, check.allowance - used - check.amount)
        fraction = remaining / check.allowance if check.allowance else 0.0
        if best is None or fraction < best[0]:
            best = (fraction, check, remaining)
    assert best is not None
    _, check, remaining = best
    return Decision(allowed=True, scope=check.scope, kind=check.kind, limit=check.allowance, remaining=remaining,
                    reset=reset, retry_after=0.0, code=None, reset_at=reset_at)


# -- in-process backend -------------------------------------------------------------------------------------------------


class MemoryLimiter:
    """Exact within one process: fixed epoch-aligned windows, one [window, used] pair per (scope, kind)."""

    def __init__(self, *, priority_shares: Mapping[str, float] | None = None, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._shares = _shares(priority_shares)
        self._window = window
        self._clock = clock  # epoch seconds, so windows line up with wall-clock minutes
        self._counters: dict[tuple[str, str], list[int]] = {}  # (scope, kind) -> [window index, used]

    def _used(self, key: tuple[str, str], index: int) -> int:
        counter = self._counters.get(key)
        return counter[1] if counter is not None and counter[0] == index else 0

    async def acquire(self, limits: list[Limit], tokens: int, priority: str = "normal") -> Decision:
        checks = _plan(limits, tokens, priority, self._shares)
        now = self._clock()
        index = math.floor(now / self._window)
        reset_at = (index + 1) * self._window
        reset = reset_at - now
        used = [self._used((check.scope, check.kind), index) for check in checks]
        for check, current in zip(checks, used, strict=True):
            refused = _refusal(check, current, reset, reset_at)
            if refused is not None:
                return refused
        # No await since the reads above: nothing else ran in between, so counting now is exact.
        for check, current in zip(checks, used, strict=True):
            self._counters[(check.scope, check.kind)] = [index, current + check.amount]
        return _admitted(checks, used, reset, reset_at)

    async def adjust(self, limits: list[Limit], delta_tokens: int) -> None:
        if not delta_tokens:
            return
        index = math.floor(self._clock() / self._window)
        for limit in limits:
            if limit.tpm is not None:
                key = (limit.scope, "tpm")
                self._counters[key] = [index, max(0, self._used(key, index) + delta_tokens)]

    async def usage(self, scopes: list[str]) -> dict[tuple[str, str], int]:
        index = math.floor(self._clock() / self._window)
        return {(scope, kind): self._used((scope, kind), index) for scope in scopes for kind in ("rpm", "tpm")}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._counters.clear()


# -- Redis backend --------------------------------------------------------------------------------------------------------

# Both scripts start from the Redis server's clock (ARGV[1]: window length in ms): the current window index w, the ms
# until it resets, and used_in_window(key), what a counter hash (w: its window index, n: units used) holds for w.
_WINDOW_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local w = math.floor(now_ms / window)
local reset_ms = (w + 1) * window - now_ms
local function used_in_window(key)
  local state = redis.call('HMGET', key, 'w', 'n')
  if tonumber(state[1]) == w then return tonumber(state[2]) or 0 end
  return 0
end
"""

# KEYS[i]: one hash per (scope, kind) holding w (window index) and n (units used in window w).
# ARGV[1]: window length in ms; then, per key, three values: limit, allowance, amount.
# Returns {1, 0, 0, reset_ms, 0, used...} when admitted (used = counts before this request), or
# {0, i, used_i, reset_ms, reason} when the i-th check refuses (reason 1: limit, 2: priority allowance).
_ACQUIRE_LUA = _WINDOW_LUA + """local used = {}
for i, key in ipairs(KEYS) do
  local u = used_in_window(key)
  used[i] = u
  local base = 1 + (i - 1) * 3
  local need = u + math.max(tonumber(ARGV[base + 3]), 1)
  if need > tonumber(ARGV[base + 1]) then return {0, i, u, reset_ms, 1} end
  if need > tonumber(ARGV[base + 2]) then return {0, i, u, reset_ms, 2} end
end
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'w', w, 'n', used[i] + tonumber(ARGV[1 + (i - 1) * 3 + 3]))
  redis.call('PEXPIRE', key, reset_ms + 1000)
end
return {1, 0, 0, reset_ms, 0, unpack(used)}
"""

# KEYS: the tpm hashes to correct. ARGV[1]: window length in ms, ARGV[2]: delta (may be negative).
_ADJUST_LUA = _WINDOW_LUA + """local delta = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('HSET', key, 'w', w, 'n', math.max(0, used_in_window(key) + delta))
  redis.call('PEXPIRE', key, reset_ms + 1000)
end
return 1
"""

# KEYS: counter hashes to read. ARGV[1]: window length in ms. Returns what each holds for the current window.
_USAGE_LUA = _WINDOW_LUA + """local out = {}
for i, key in ipairs(KEYS) do out[i] = used_in_window(key) end
return out
"""


class RedisLimiter:
    """Exact across processes sharing one Redis (standalone or primary; not Redis Cluster, since one script touches
    the counters of several scopes). Each instance has its own connection pool."""

    def __init__(self, url: str, *, priority_shares: Mapping[str, float] | None = None,
                 window: float = WINDOW_SECONDS, prefix: str = "crossroads:rl") -> None:
        self._shares = _shares(priority_shares)
        self._window_ms = max(1, round(window * 1000))
        self._prefix = prefix
        self._redis: Any = redis_client(url)
        # The request path's scripts: each turn's calls in one write (redis_client.ScriptBatch). The usage reads
        # (dashboard, /key) through register_script, which loads the script on the server's first NOSCRIPT.
        self._acquire_script = ScriptBatch(self._redis, _ACQUIRE_LUA)
        self._adjust_script = ScriptBatch(self._redis, _ADJUST_LUA)
        self._usage_script = self._redis.register_script(_USAGE_LUA)

    def _key(self, scope: str, kind: str) -> str:
        # The window length is part of the key so limiters configured differently never share counters.
        return f"{self._prefix}:{self._window_ms}:{kind}:{scope}"

    async def acquire(self, limits: list[Limit], tokens: int, priority: str = "normal") -> Decision:
        checks = _plan(limits, tokens, priority, self._shares)
        if not checks:
            return _admitted(checks, [], 0.0, 0.0)
        args: list[int] = [self._window_ms]
        for check in checks:
            args += [check.limit, check.allowance, check.amount]
        reply = await self._acquire_script([self._key(c.scope, c.kind) for c in checks], args)
        admitted, index, used, reset_ms = (int(value) for value in reply[:4])
        reset = reset_ms / 1000.0
        reset_at = time.time() + reset
        if admitted:
            return _admitted(checks, [int(value) for value in reply[5:]], reset, reset_at)
        refused = _refusal(checks[index - 1], used, reset, reset_at)
        assert refused is not None, "the script refused a check that fits"
        return refused

    async def adjust(self, limits: list[Limit], delta_tokens: int) -> None:
        keys = [self._key(limit.scope, "tpm") for limit in limits if limit.tpm is not None]
        if keys and delta_tokens:
            await self._adjust_script(keys, [self._window_ms, delta_tokens])

    async def usage(self, scopes: list[str]) -> dict[tuple[str, str], int]:
        pairs = [(scope, kind) for scope in scopes for kind in ("rpm", "tpm")]
        if not pairs:
            return {}
        reply = await self._usage_script(keys=[self._key(scope, kind) for scope, kind in pairs],
                                         args=[self._window_ms])
        return {pair: int(value) for pair, value in zip(pairs, reply, strict=True)}

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        # aclose() arrived in redis-py 5.0.1; close() is its older, now deprecated, name.
        closer = getattr(self._redis, "aclose", None) or self._redis.close
        await closer()


def make_limiter(redis_url: str | None, *, priority_shares: dict[str, float] | None = None) -> RateLimiter:
    """A Redis-backed limiter when ``redis_url`` (CROSSROADS_REDIS_URL) is set, else the in-process one."""
    if redis_url:
        return RedisLimiter(redis_url, priority_shares=priority_shares)
    return MemoryLimiter(priority_shares=priority_shares)
