"""When to retry a failed upstream attempt, and how long to wait first.

Retries happen only before the first byte reached the client, on the same connection, a bounded number of times; the
caller then falls back to the next candidate. The wait is "full jitter" exponential backoff (a uniform draw between 0
and ``min(cap, base * 2**(attempt-1))``): spreading retries uniformly stops many requests that failed together from
hammering the upstream again in lock-step. An upstream's ``Retry-After`` is a lower bound on the wait; when it asks
for longer than the caller is willing to hold a client, ``retry_delay`` says so (None) and the caller falls back
instead of sleeping.

Time is read, and retry waits are made, through a `Clock`: the real one unless a test gives the gateway another.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

# 2**62 already dwarfs any cap; clamping the exponent keeps the float arithmetic finite for absurd attempt numbers.
_MAX_EXPONENT = 62


class Clock:
    """Where routing reads the time and waits: ``now()``, monotonic seconds (the breakers' cool-downs, probe timeouts
    and rolling windows: routing/health.py), and ``await sleep(seconds)`` (the backoff before a retry). Plain
    attributes holding the functions, called directly (no layer of its own on the hot path); the default is
    time.monotonic and asyncio.sleep. Tests give a gateway one they move forward by hand instead of sleeping through
    cool-downs and backoffs (tests/harness.py FakeClock)."""

    __slots__ = ("now", "sleep")

    def __init__(self, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.now = now
        self.sleep = sleep


REAL_CLOCK = Clock()


def is_retryable(status: int | None) -> bool:
    """Whether an attempt that ended with this upstream status is worth retrying.

    None stands for "no HTTP status at all" (connect error, reset, timeout). 408 and 429 are transient by definition
    and every 5xx is the upstream's own failure; any other 4xx would fail the same way again.
    """
    if status is None:
        return True
    return status in (408, 429) or 500 <= status <= 599


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header (delta-seconds or HTTP-date), or None if unusable.

    Fractional seconds are accepted (some upstreams send them); a date in the past means "now" (0).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses zone-less; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(attempt: int, *, base: float = 0.25, cap: float = 8.0, retry_after: str | None = None,
                max_wait: float = 30.0, rng: random.Random | None = None, now: float | None = None) -> float | None:
    """Seconds to sleep before retry number ``attempt`` (1 for the first retry), or None to fall back instead.

    The jittered backoff lies in ``[0, min(cap, base * 2**(attempt-1))]``. A parseable ``Retry-After`` raises the
    wait to at least what it asks for; if it asks for more than ``max_wait`` the answer is None. ``now`` (epoch
    seconds) only matters for an HTTP-date ``Retry-After`` and exists for tests.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    delay = (rng or random).uniform(0.0, max(0.0, ceiling))
    asked = parse_retry_after(retry_after, now=now)
    if asked is not None:
        if asked > max_wait:
            return None
        delay = max(delay, asked)
    return delay
