"""Capacity gate (gate/ratelimit.py): the in-process limiter, and the Redis one against a real Redis.

The Redis tests need CROSSROADS_TEST_REDIS_URL (start a throwaway server with `eval "$(scripts/ci-services.sh)"`).
Without it they skip, except under CI (the CI variable set), where a missing Redis is a failure.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from crossroads.gate.ratelimit import (
    PRIORITIZATION_GATE_DENIED,
    RESOURCE_EXHAUSTED,
    Decision,
    Limit,
    MemoryLimiter,
    RedisLimiter,
    make_limiter,
)
from tests.conftest import redis_test_url

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Long enough that no test straddles a window edge by accident (see Backend.fresh_window).
REDIS_WINDOW = 600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_030.0  # 30 s into an epoch-aligned minute

    def __call__(self) -> float:
        return self.now


class Backend:
    """Makes limiters of one kind and moves time past a window for them (fake clock or real sleep)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self.prefix = f"crossroads-test:{uuid.uuid4().hex}"  # no two runs share Redis counters
        self.made: list[MemoryLimiter | RedisLimiter] = []

    def make(self, *, shares: dict[str, float] | None = None, window: float | None = None):
        if self.kind == "memory":
            limiter = MemoryLimiter(priority_shares=shares, window=window or 60.0, clock=self.clock)
        else:
            limiter = RedisLimiter(redis_test_url(), priority_shares=shares, window=window or REDIS_WINDOW,
                                   prefix=self.prefix)
        self.made.append(limiter)
        return limiter

    async def fresh_window(self, window: float = REDIS_WINDOW, margin: float = 5.0) -> None:
        """For Redis (real time): wait out the window if its end is too near for the test to finish inside it."""
        if self.kind == "redis":
            left = window - time.time() % window
            if left < margin:
                await asyncio.sleep(left + 0.05)

    async def pass_window(self, decision: Decision) -> None:
        if self.kind == "memory":
            self.clock.now += decision.reset
        else:
            await asyncio.sleep(decision.reset + 0.05)


@pytest_asyncio.fixture(params=["memory", "redis"], loop_scope="module")
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "redis":
        redis_test_url()
    made = Backend(request.param)
    await made.fresh_window()
    yield made
    for limiter in made.made:
        await limiter.close()


def scope(name: str) -> str:
    return f"{name}:{uuid.uuid4().hex[:8]}"


async def acquire_n(limiter, limits: list[Limit], n: int, tokens: int = 0, priority: str = "normal") -> list[Decision]:
    return [await limiter.acquire(limits, tokens, priority) for _ in range(n)]


# -- counting -----------------------------------------------------------------------------------------------------------


async def test_rpm_is_exact(backend: Backend) -> None:
    limiter = backend.make()
    limits = [Limit(scope("key"), rpm=5)]
    admitted = await acquire_n(limiter, limits, 5)
    assert all(d.allowed and d.code is None for d in admitted)
    assert [d.remaining for d in admitted] == [4, 3, 2, 1, 0]
    assert all(d.kind == "rpm" and d.limit == 5 and d.scope == limits[0].scope for d in admitted)

    refused = await limiter.acquire(limits, 0)
    assert not refused.allowed
    assert (refused.code, refused.kind, refused.limit, refused.remaining) == (RESOURCE_EXHAUSTED, "rpm", 5, 0)
    assert refused.scope == limits[0].scope
    assert 0 < refused.retry_after == refused.reset <= 600.0
    assert not (await limiter.acquire(limits, 0)).allowed  # refusals count nothing, and change nothing


async def test_tpm_counts_estimated_tokens(backend: Backend) -> None:
    limiter = backend.make()
    limits = [Limit(scope("key"), tpm=100)]
    first = await limiter.acquire(limits, 60)
    assert first.allowed and (first.kind, first.remaining) == ("tpm", 40)
    too_big = await limiter.acquire(limits, 50)
    assert not too_big.allowed and (too_big.code, too_big.kind, too_big.remaining) == (RESOURCE_EXHAUSTED, "tpm", 40)
    assert (await limiter.acquire(limits, 40)).allowed  # exactly fills the window
    spent = await limiter.acquire(limits, 0)
    assert not spent.allowed and spent.kind == "tpm"  # a spent window refuses even a zero estimate


async def test_rpm_and_tpm_on_one_scope(backend: Backend) -> None:
    limiter = backend.make()
    limits = [Limit(scope("key"), rpm=3, tpm=1000)]
    first = await limiter.acquire(limits, 100)
    # The tightest share left is reported: rpm has 2/3 left, tpm 900/1000.
    assert first.allowed and (first.kind, first.limit, first.remaining) == ("rpm", 3, 2)
    second = await limiter.acquire(limits, 850)
    assert second.allowed and (second.kind, second.remaining) == ("tpm", 50)
    refused = await limiter.acquire(limits, 100)
    assert not refused.allowed and refused.kind == "tpm"
    assert (await limiter.acquire(limits, 50)).allowed
    refused = await limiter.acquire(limits, 0)
    assert not refused.allowed and refused.kind == "rpm"


async def test_all_or_nothing_across_scopes(backend: Backend) -> None:
    limiter = backend.make()
    key = Limit(scope("key"), rpm=10, tpm=1000)
    connection = Limit(scope("connection"), rpm=1)
    assert (await limiter.acquire([key, connection], 100)).allowed
    refused = await limiter.acquire([key, connection], 100)
    assert not refused.allowed and refused.scope == connection.scope
    # The refused request left no trace on the key: 9 requests and 900 tokens are still there.
    admitted = await limiter.acquire([key], 100)
    assert admitted.allowed and admitted.kind == "rpm" and admitted.remaining == 8
    assert (await limiter.acquire([key], 800)).allowed
    assert not (await limiter.acquire([key], 1)).allowed


async def test_window_reset(backend: Backend) -> None:
    window = 60.0 if backend.kind == "memory" else 1.0
    limiter = backend.make(window=window)
    limits = [Limit(scope("key"), rpm=2, tpm=50)]
    await backend.fresh_window(window, margin=0.3)
    assert all(d.allowed for d in await acquire_n(limiter, limits, 2, tokens=10))
    refused = await limiter.acquire(limits, 10)
    assert not refused.allowed and 0 < refused.reset <= window
    await backend.pass_window(refused)
    again = await limiter.acquire(limits, 50)
    assert again.allowed and again.remaining == 0 and again.kind == "tpm"


async def test_memory_windows_are_epoch_aligned() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    limits = [Limit("key", rpm=1)]
    decision = await limiter.acquire(limits, 0)
    assert decision.reset == 50.0 and decision.reset_at == 1_000_080.0
    clock.now = 1_000_079.9
    assert not (await limiter.acquire(limits, 0)).allowed
    clock.now = 1_000_080.0
    assert (await limiter.acquire(limits, 0)).allowed


async def test_adjust_replaces_the_estimate(backend: Backend) -> None:
    limiter = backend.make()
    key = Limit(scope("key"), rpm=100, tpm=100)
    connection = Limit(scope("connection"), rpm=100, tpm=100)
    route = Limit(scope("route"), rpm=100)  # no tpm: nothing to adjust
    assert (await limiter.acquire([key, connection, route], 10)).allowed
    await limiter.adjust([key, connection, route], 80)  # the request really used 90 tokens
    for limits in ([key], [connection]):
        assert not (await limiter.acquire(limits, 20)).allowed
        last = await limiter.acquire(limits, 10)
        assert last.allowed and last.remaining == 0
    await limiter.adjust([key], -1000)  # a refund never goes below zero
    assert (await limiter.acquire([key], 100)).allowed
    assert not (await limiter.acquire([key], 1)).allowed


async def test_usage_reads_the_current_window_without_counting(backend: Backend) -> None:
    window = 60.0 if backend.kind == "memory" else 2.0
    limiter = backend.make(window=window)
    await backend.fresh_window(window, margin=0.5)
    connection, idle = Limit(scope("connection"), rpm=10, tpm=1000), scope("idle")
    admitted = [await limiter.acquire([connection], 30) for _ in range(3)]
    await limiter.adjust([connection], 5)
    expected = {(connection.scope, "rpm"): 3, (connection.scope, "tpm"): 95, (idle, "rpm"): 0, (idle, "tpm"): 0}
    assert await limiter.usage([connection.scope, idle]) == expected
    assert await limiter.usage([connection.scope, idle]) == expected  # reading counts nothing
    assert await limiter.usage([]) == {}
    await backend.pass_window(admitted[-1])
    assert await limiter.usage([connection.scope]) == {(connection.scope, "rpm"): 0, (connection.scope, "tpm"): 0}


async def test_no_limits_admits_without_headers(backend: Backend) -> None:
    limiter = backend.make()
    decision = await limiter.acquire([Limit(scope("route"))], 123)
    assert decision.allowed and decision.limit is None and decision.headers() == {}
    assert (await limiter.acquire([], 0)).allowed


async def test_bad_arguments(backend: Backend) -> None:
    limiter = backend.make()
    with pytest.raises(ValueError):
        await limiter.acquire([Limit("same", rpm=1), Limit("same", rpm=2)], 0)
    with pytest.raises(ValueError):
        await limiter.acquire([Limit(scope("key"), tpm=10)], -1)
    with pytest.raises(ValueError):
        MemoryLimiter(priority_shares={"low": 1.5})


# -- headers ----------------------------------------------------------------------------------------------------------


async def test_headers(backend: Backend) -> None:
    limiter = backend.make()
    limits = [Limit(scope("key"), rpm=2)]
    admitted = await limiter.acquire(limits, 0)
    headers = admitted.headers()
    assert set(headers) == {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert int(headers["X-RateLimit-Reset"]) == math.ceil(admitted.reset_at * 1000)  # epoch milliseconds
    await limiter.acquire(limits, 0)
    refused = await limiter.acquire(limits, 0)
    headers = refused.headers()
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("2", "0")
    assert int(headers["Retry-After"]) == max(1, math.ceil(refused.retry_after))
    if backend.kind == "redis":  # real time: the reset is a moment in the coming window
        now_ms = time.time() * 1000
        assert now_ms < int(headers["X-RateLimit-Reset"]) <= now_ms + REDIS_WINDOW * 1000 + 1000


async def test_headers_round_up() -> None:
    refused = Decision(allowed=False, scope="k", kind="rpm", limit=3, remaining=0, reset=0.2, retry_after=0.2,
                       code=RESOURCE_EXHAUSTED, reset_at=1_000_000.0002)
    assert refused.headers() == {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0",
                                 "X-RateLimit-Reset": "1000000001", "Retry-After": "1"}


# -- priority -----------------------------------------------------------------------------------------------------------


async def test_priority_gate_refuses_low_before_normal_before_high(backend: Backend) -> None:
    limiter = backend.make()
    connection = Limit(scope("connection"), rpm=10, priority_shares=True)
    # low may bring usage to 7 (0.7 * 10), normal to 9, high to the full 10.
    low = await acquire_n(limiter, [connection], 7, priority="low")
    assert all(d.allowed for d in low) and low[-1].limit == 7 and low[-1].remaining == 0
    denied_low = await limiter.acquire([connection], 0, "low")
    assert not denied_low.allowed and denied_low.code == PRIORITIZATION_GATE_DENIED
    assert (denied_low.limit, denied_low.remaining) == (7, 0)

    normal = await acquire_n(limiter, [connection], 2, priority="normal")
    assert all(d.allowed for d in normal)
    denied_normal = await limiter.acquire([connection], 0, "normal")
    assert not denied_normal.allowed and denied_normal.code == PRIORITIZATION_GATE_DENIED
    assert not (await limiter.acquire([connection], 0, "low")).allowed

    assert (await limiter.acquire([connection], 0, "high")).allowed
    exhausted = await limiter.acquire([connection], 0, "high")
    assert not exhausted.allowed and exhausted.code == RESOURCE_EXHAUSTED
    assert (await limiter.acquire([connection], 0, "low")).code == RESOURCE_EXHAUSTED  # full: everyone is told so


async def test_priority_gate_on_tokens_and_only_where_enabled(backend: Backend) -> None:
    limiter = backend.make()
    key = Limit(scope("key"), tpm=1000)  # not a connection: the whole limit is everyone's
    connection = Limit(scope("connection"), tpm=1000, priority_shares=True)
    assert (await limiter.acquire([key], 1000, "low")).allowed
    assert (await limiter.acquire([connection], 700, "low")).allowed
    denied = await limiter.acquire([connection], 1, "low")
    assert not denied.allowed and denied.code == PRIORITIZATION_GATE_DENIED and denied.kind == "tpm"
    assert (await limiter.acquire([connection], 200, "normal")).allowed
    assert (await limiter.acquire([connection], 100, "high")).allowed


async def test_custom_shares_and_unknown_priority(backend: Backend) -> None:
    limiter = backend.make(shares={"normal": 0.5, "low": 0.2})
    connection = Limit(scope("connection"), rpm=10, priority_shares=True)
    assert [d.allowed for d in await acquire_n(limiter, [connection], 3, priority="low")] == [True, True, False]
    assert [d.allowed for d in await acquire_n(limiter, [connection], 4, priority="urgent")] == [
        True, True, True, False]  # unknown priorities are treated as normal
    assert [d.allowed for d in await acquire_n(limiter, [connection], 6, priority="high")] == [True] * 5 + [False]


# -- concurrency ------------------------------------------------------------------------------------------------------


async def test_memory_concurrent_acquires_grant_exactly_the_limit() -> None:
    limiter = make_limiter(None)
    assert isinstance(limiter, MemoryLimiter)
    limits = [Limit("key", rpm=50, tpm=10_000), Limit("connection", rpm=1000)]
    decisions = await asyncio.gather(*(limiter.acquire(limits, 10) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert all(d.code == RESOURCE_EXHAUSTED and d.scope == "key" for d in decisions if not d.allowed)
    # The connection was charged only for the 50 admitted.
    assert (await limiter.acquire([Limit("connection", rpm=1000)], 0)).remaining == 1000 - 51
    await limiter.close()


async def test_redis_two_processes_grant_exactly_the_limit() -> None:
    url = redis_test_url()
    backend = Backend("redis")
    await backend.fresh_window(margin=10.0)
    # Two limiters, two connection pools: what two gateway processes would have.
    first = make_limiter(url)
    second = make_limiter(url)
    assert isinstance(first, RedisLimiter) and isinstance(second, RedisLimiter)
    limits = [Limit(scope("key"), rpm=50, tpm=1_000_000), Limit(scope("connection"), rpm=5000)]
    try:
        decisions = await asyncio.gather(
            *((first if i % 2 else second).acquire(limits, 10) for i in range(200)))
        assert sum(d.allowed for d in decisions) == 50
        assert {d.code for d in decisions if not d.allowed} == {RESOURCE_EXHAUSTED}
        # A third process sees the same counts.
        third = make_limiter(url)
        try:
            refused = await third.acquire(limits, 10)
            assert not refused.allowed and refused.remaining == 0
            connection_only = await third.acquire(limits[1:], 0)
            assert connection_only.allowed and connection_only.remaining == 5000 - 51
        finally:
            await third.close()
    finally:
        await first.close()
        await second.close()


# -- Redis specifics --------------------------------------------------------------------------------------------------


async def _raw_redis() -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(redis_test_url())


async def test_redis_counters_expire_after_their_window() -> None:
    backend = Backend("redis")
    limiter = backend.make(window=2.0)
    raw = await _raw_redis()
    try:
        limits = [Limit(scope("key"), rpm=5, tpm=100)]
        await limiter.acquire(limits, 10)
        keys = [key async for key in raw.scan_iter(match=f"{backend.prefix}:*")]
        assert len(keys) == 2  # rpm and tpm
        for key in keys:
            assert 0 < await raw.pttl(key) <= 3000  # the rest of the window plus a second
    finally:
        await limiter.close()
        await raw.aclose()


async def test_redis_survives_a_script_cache_flush() -> None:
    backend = Backend("redis")
    await backend.fresh_window()
    limiter = backend.make()
    raw = await _raw_redis()
    try:
        limits = [Limit(scope("key"), rpm=3, tpm=100)]
        assert (await limiter.acquire(limits, 1)).allowed
        await limiter.adjust(limits, 5)
        await raw.script_flush()  # e.g. Redis restarted: EVALSHA answers NOSCRIPT, the script is loaded again
        second = await limiter.acquire(limits, 1)
        assert second.allowed and second.remaining == 1
        await raw.script_flush()
        await limiter.adjust(limits, 90)
        refused = await limiter.acquire(limits, 4)
        assert not refused.allowed and refused.kind == "tpm" and refused.remaining == 3
    finally:
        await limiter.close()
        await raw.aclose()
