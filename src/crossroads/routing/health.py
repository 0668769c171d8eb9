"""Per-connection circuit breakers and the live figures the router and the endpoints API read.

Breaker (per connection, the unit that fails together: one base URL, one account):

- closed: every attempt may go. ``failure_threshold`` consecutive upstream failures open it.
- open: attempts are refused (``acquire`` is False) for ``cooldown`` seconds.
- half-open: after the cool-down exactly one attempt (the probe) may go. Its success closes the breaker, its failure
  opens it again for a fresh cool-down. A probe whose client went away (``record_cancelled``) frees the slot for the
  next attempt; a probe that never reports back frees it after ``probe_timeout``.

What counts as a failure: no response at all (``status=None``: connect error, reset, timeout), any 5xx, 408, 429 and
the statuses that mean the connection itself is unusable (401, 402, 403). Any other 4xx is the caller's doing (a bad
request); the upstream answered sanely, so for the breaker it counts like a success and it is left out of uptime.
A client disconnect never counts (``record_cancelled``).

Figures, per (connection, model), in OpenRouter's endpoint shapes and units:

- ``uptime_last_5m|30m|1d``: percentage of successful attempts among successes and failures, rate-limited (429) and
  caller-caused failures excluded, None without traffic. Kept as per-minute (and, for the day, 15-minute) counters.
- ``latency_last_30m``: time to first token in **milliseconds**, ``{p50, p75, p90, p99}``, None without samples.
- ``throughput_last_30m``: output tokens per second of generation, ``{p50, p75, p90, p99}``. As on OpenRouter, a
  higher percentile is a worse tail: pXX is the rate that XX% of requests reached or beat (p99 is the slowest).
- ``status``: 0 when the breaker is closed, ``STATUS_PROBING`` (-5) while half-open or cooled and awaiting its probe,
  ``STATUS_EJECTED`` (-10) while open and cooling (OpenRouter's status values are 0 and negative integers).

Samples live in capped deques with their timestamps (expired on write and read, so memory stays bounded and each
record is O(1) amortised); percentiles are computed on read and cached until a sample arrives or expires. Under very
heavy traffic the cap makes the figures cover the most recent ``max_samples`` requests rather than the whole window.
Everything runs on the event loop thread: no locks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATUS_OK, STATUS_PROBING, STATUS_EJECTED = 0, -5, -10

# Statuses that say the connection (not the request) is broken, besides 5xx and "no response".
_CONNECTION_FAULTS = frozenset({401, 402, 403, 408, 429})
_PERCENTILES = (50, 75, 90, 99)


@dataclass
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open the breaker
    cooldown: float = 30.0  # seconds an open breaker refuses attempts before one probe may go
    probe_timeout: float = 600.0  # seconds after which an unanswered probe no longer blocks the next one


def counts_as_failure(status: int | None) -> bool:
    """Whether an attempt that ended with ``status`` is the connection's fault (breaker and uptime)."""
    return status is None or status >= 500 or status in _CONNECTION_FAULTS


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Linear-interpolated quantile of an ascending, non-empty list (``fraction`` in [0, 1])."""
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


class _Samples:
    """Timestamped values over a sliding window, capped in count, with the sorted values cached."""

    __slots__ = ("_items", "_window", "_sorted")

    def __init__(self, window: float, max_samples: int) -> None:
        self._items: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._window = window
        self._sorted: list[float] | None = None

    def add(self, now: float, value: float) -> None:
        items = self._items
        if items and items[0][0] <= now - self._window:
            self._expire(now)
        items.append((now, value))
        self._sorted = None

    def sorted_values(self, now: float) -> list[float]:
        self._expire(now)
        if self._sorted is None:
            self._sorted = sorted(value for _, value in self._items)
        return self._sorted

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        items = self._items
        while items and items[0][0] <= horizon:
            items.popleft()
            self._sorted = None


class _Tally:
    """Success/failure counts in fixed-width time buckets, kept for ``span`` seconds."""

    __slots__ = ("_buckets", "_width", "_keep")

    def __init__(self, width: float, span: float) -> None:
        self._buckets: deque[list[int]] = deque()  # [bucket index, successes, failures], oldest first
        self._width = width
        self._keep = max(1, math.ceil(span / width))

    def add(self, now: float, ok: bool) -> None:
        index = int(now // self._width)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != index:  # a new bucket (rare): drop the ones that fell out first
            self._expire(index)
            buckets.append([index, 0, 0])
        buckets[-1][1 if ok else 2] += 1

    def uptime(self, now: float, span: float) -> float | None:
        """Percentage of successes over the buckets covering the last ``span`` seconds (current bucket included)."""
        index = int(now // self._width)
        self._expire(index)
        first = index - max(1, math.ceil(span / self._width)) + 1
        ok = failed = 0
        for bucket, successes, failures in self._buckets:
            if bucket >= first:
                ok += successes
                failed += failures
        total = ok + failed
        return None if total == 0 else round(100.0 * ok / total, 2)

    def _expire(self, index: int) -> None:
        while self._buckets and self._buckets[0][0] <= index - self._keep:
            self._buckets.popleft()


class _Breaker:
    __slots__ = ("state", "failures", "opened_at", "probe_started")

    def __init__(self) -> None:
        self.state = CLOSED
        self.failures = 0  # consecutive, while closed
        self.opened_at = 0.0
        self.probe_started: float | None = None  # set while a half-open probe is out


class _EndpointStats:
    __slots__ = ("ttft", "tps", "minutes", "quarters")

    def __init__(self, window: float, max_samples: int) -> None:
        self.ttft = _Samples(window, max_samples)  # seconds
        self.tps = _Samples(window, max_samples)  # tokens/s
        self.minutes = _Tally(60.0, max(window, 300.0))  # uptime over 5 min and the window
        self.quarters = _Tally(900.0, 86400.0)  # uptime over a day at 15-minute resolution


class HealthBoard:
    """Breakers per connection and windowed figures per (connection, model); see the module docstring."""

    def __init__(self, policy: BreakerPolicy | None = None, *, window: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic, max_samples: int = 2048) -> None:
        self.policy = policy or BreakerPolicy()
        self.window = window
        self._clock = clock
        self._max_samples = max_samples
        self._breakers: dict[str, _Breaker] = {}
        self._stats: dict[tuple[str, str], _EndpointStats] = {}

    # -- breaker ---------------------------------------------------------------------------------------------------

    def state(self, connection: str) -> str:
        """The breaker state as last recorded: closed, open or half_open (an open breaker stays "open" until an
        attempt takes the probe)."""
        breaker = self._breakers.get(connection)
        return CLOSED if breaker is None else breaker.state

    def available(self, connection: str) -> bool:
        """False only while the breaker is open and still cooling; no side effects (for ranking candidates)."""
        breaker = self._breakers.get(connection)
        if breaker is None or breaker.state != OPEN:
            return True
        return self._clock() - breaker.opened_at >= self.policy.cooldown

    def acquire(self, connection: str) -> bool:
        """Call right before an attempt: True when it may go. An open breaker past its cool-down turns half-open and
        lets exactly this one attempt through as the probe."""
        breaker = self._breakers.get(connection)
        if breaker is None or breaker.state == CLOSED:
            return True
        now = self._clock()
        if breaker.state == OPEN:
            if now - breaker.opened_at < self.policy.cooldown:
                return False
            breaker.state = HALF_OPEN
            breaker.probe_started = now
            return True
        # Half-open: one probe at a time, unless the last one was lost.
        if breaker.probe_started is not None and now - breaker.probe_started < self.policy.probe_timeout:
            return False
        breaker.probe_started = now
        return True

    def record_success(self, connection: str, model: str, *, ttft: float | None, output_tokens: int,
                       duration: float) -> None:
        """An attempt succeeded. ``ttft``: seconds from sending to the first token (None when unknown, e.g. not
        streamed); ``duration``: seconds from sending to the last byte; ``output_tokens``: completion tokens."""
        now = self._clock()
        self._close(connection)
        stats = self._endpoint(connection, model)
        stats.minutes.add(now, True)
        stats.quarters.add(now, True)
        if ttft is not None and ttft >= 0:
            stats.ttft.add(now, ttft)
        # Throughput is the generation rate: time to first token is latency, not generation.
        generating = duration - ttft if ttft is not None and duration > ttft else duration
        if output_tokens > 0 and generating > 0:
            stats.tps.add(now, output_tokens / generating)

    def record_failure(self, connection: str, model: str, *, status: int | None) -> None:
        """An attempt failed with this upstream status (None: no response at all)."""
        if not counts_as_failure(status):
            self._close(connection)  # the upstream answered, so it is up; the request was at fault
            return
        now = self._clock()
        if status != 429:  # rate limits say nothing about uptime (OpenRouter excludes them too)
            stats = self._endpoint(connection, model)
            stats.minutes.add(now, False)
            stats.quarters.add(now, False)
        breaker = self._breakers.setdefault(connection, _Breaker())
        if breaker.state == HALF_OPEN:
            self._open(breaker, now)
        elif breaker.state == CLOSED:
            breaker.failures += 1
            if breaker.failures >= self.policy.failure_threshold:
                self._open(breaker, now)
        # Open: a straggler that started before the breaker opened; it must not extend the cool-down.

    def record_cancelled(self, connection: str) -> None:
        """The client went away mid-attempt: counts nothing, but frees a half-open probe slot."""
        breaker = self._breakers.get(connection)
        if breaker is not None and breaker.state == HALF_OPEN:
            breaker.probe_started = None

    def _open(self, breaker: _Breaker, now: float) -> None:
        breaker.state = OPEN
        breaker.opened_at = now
        breaker.failures = 0
        breaker.probe_started = None

    def _close(self, connection: str) -> None:
        breaker = self._breakers.get(connection)
        if breaker is None:
            return
        if breaker.state == HALF_OPEN:
            breaker.state = CLOSED
            breaker.probe_started = None
        if breaker.state == CLOSED:
            breaker.failures = 0
        # Open: a straggler's success does not cut the cool-down short; the probe decides.

    # -- figures ---------------------------------------------------------------------------------------------------

    def _endpoint(self, connection: str, model: str) -> _EndpointStats:
        stats = self._stats.get((connection, model))
        if stats is None:
            stats = self._stats[(connection, model)] = _EndpointStats(self.window, self._max_samples)
        return stats

    def latency(self, connection: str, model: str) -> float | None:
        """Median time to first token in seconds over the window, or None without samples (for routing)."""
        stats = self._stats.get((connection, model))
        values = stats.ttft.sorted_values(self._clock()) if stats else []
        return percentile(values, 0.5) if values else None

    def throughput(self, connection: str, model: str) -> float | None:
        """Median generation rate in tokens/s over the window, or None without samples (for routing)."""
        stats = self._stats.get((connection, model))
        values = stats.tps.sorted_values(self._clock()) if stats else []
        return percentile(values, 0.5) if values else None

    def status(self, connection: str) -> int:
        """OpenRouter-style endpoint status: 0 healthy, -5 probing, -10 ejected."""
        breaker = self._breakers.get(connection)
        if breaker is None or breaker.state == CLOSED:
            return STATUS_OK
        if breaker.state == OPEN and self._clock() - breaker.opened_at < self.policy.cooldown:
            return STATUS_EJECTED
        return STATUS_PROBING

    def endpoint_stats(self, connection: str, model: str) -> dict:
        """The live fields of one entry of ``GET /api/v1/models/{author}/{slug}/endpoints``."""
        now = self._clock()
        stats = self._stats.get((connection, model))
        result: dict = {"status": self.status(connection), "uptime_last_5m": None, "uptime_last_30m": None,
                        "uptime_last_1d": None, "latency_last_30m": None, "throughput_last_30m": None}
        if stats is None:
            return result
        result["uptime_last_5m"] = stats.minutes.uptime(now, 300.0)
        result["uptime_last_30m"] = stats.minutes.uptime(now, self.window)
        result["uptime_last_1d"] = stats.quarters.uptime(now, 86400.0)
        ttft = stats.ttft.sorted_values(now)
        if ttft:
            result["latency_last_30m"] = {f"p{p}": round(percentile(ttft, p / 100) * 1000.0, 2) for p in _PERCENTILES}
        tps = stats.tps.sorted_values(now)
        if tps:
            # Lower tail: pXX is the rate XX% of requests reached, so p99 is the slowest.
            result["throughput_last_30m"] = {f"p{p}": round(percentile(tps, 1 - p / 100), 2) for p in _PERCENTILES}
        return result
