"""Circuit breaker, windowed endpoint figures (routing/health.py) and retry backoff (routing/retry.py)."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from crossroads.routing.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATUS_EJECTED,
    STATUS_OK,
    STATUS_PROBING,
    BreakerPolicy,
    HealthBoard,
    counts_as_failure,
)
from crossroads.routing.retry import is_retryable, parse_retry_after, retry_delay


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def board(threshold: int = 3, cooldown: float = 10.0, **kwargs) -> tuple[HealthBoard, FakeClock]:
    clock = FakeClock()
    return HealthBoard(BreakerPolicy(failure_threshold=threshold, cooldown=cooldown), clock=clock, **kwargs), clock


# -- breaker ----------------------------------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_then_probes_and_closes() -> None:
    health, clock = board(threshold=3, cooldown=10.0)
    for _ in range(2):
        health.record_failure("c", "m", status=503)
    assert health.state("c") == CLOSED and health.acquire("c") and health.available("c")

    health.record_failure("c", "m", status=None)  # third in a row: ejected
    assert health.state("c") == OPEN
    assert not health.available("c") and not health.acquire("c")
    assert health.status("c") == STATUS_EJECTED

    clock.advance(9.9)
    assert not health.available("c") and not health.acquire("c")

    clock.advance(0.1)  # cooled
    assert health.available("c") and health.available("c")
    assert health.state("c") == OPEN  # available() changed nothing
    assert health.status("c") == STATUS_PROBING
    assert health.acquire("c")  # the one probe
    assert health.state("c") == HALF_OPEN
    assert not health.acquire("c") and not health.acquire("c")  # nobody else while it is out
    assert health.available("c")  # not "open and cooling"

    health.record_success("c", "m", ttft=0.2, output_tokens=10, duration=1.0)
    assert health.state("c") == CLOSED and health.status("c") == STATUS_OK
    assert all(health.acquire("c") for _ in range(5))
    # The count started over: two more failures do not open it.
    health.record_failure("c", "m", status=500)
    health.record_failure("c", "m", status=500)
    assert health.state("c") == CLOSED


def test_failed_probe_reopens_with_a_fresh_cooldown() -> None:
    health, clock = board(threshold=1, cooldown=10.0)
    health.record_failure("c", "m", status=502)
    clock.advance(10.0)
    assert health.acquire("c")
    clock.advance(3.0)  # the probe took 3 s to fail
    health.record_failure("c", "m", status=502)
    assert health.state("c") == OPEN
    clock.advance(9.9)
    assert not health.available("c") and not health.acquire("c")
    clock.advance(0.1)
    assert health.acquire("c")


def test_success_breaks_the_run_of_failures() -> None:
    health, _ = board(threshold=3)
    for _ in range(5):
        health.record_failure("c", "m", status=500)
        health.record_failure("c", "m", status=500)
        health.record_success("c", "m", ttft=None, output_tokens=0, duration=0.1)
    assert health.state("c") == CLOSED


def test_cancelled_never_opens_and_frees_the_probe() -> None:
    health, clock = board(threshold=2, cooldown=5.0)
    for _ in range(50):
        health.record_cancelled("c")
    assert health.state("c") == CLOSED and health.acquire("c")

    health.record_failure("c", "m", status=500)
    health.record_cancelled("c")
    health.record_failure("c", "m", status=500)  # consecutive: the cancel in between counted nothing
    assert health.state("c") == OPEN

    clock.advance(5.0)
    assert health.acquire("c")  # probe out
    health.record_cancelled("c")  # its client went away: no verdict
    assert health.state("c") == HALF_OPEN
    assert health.acquire("c")  # the next attempt may probe
    assert not health.acquire("c")
    health.record_success("c", "m", ttft=0.1, output_tokens=1, duration=0.2)
    assert health.state("c") == CLOSED
    assert health.endpoint_stats("c", "m")["uptime_last_30m"] == pytest.approx(100 * 1 / 3, abs=0.01)


def test_lost_probe_frees_the_slot_after_probe_timeout() -> None:
    clock = FakeClock()
    health = HealthBoard(BreakerPolicy(failure_threshold=1, cooldown=1.0, probe_timeout=60.0), clock=clock)
    health.record_failure("c", "m", status=500)
    clock.advance(1.0)
    assert health.acquire("c")
    clock.advance(59.0)
    assert not health.acquire("c")
    clock.advance(1.0)
    assert health.acquire("c")


def test_stragglers_while_open_neither_extend_nor_cut_the_cooldown() -> None:
    health, clock = board(threshold=1, cooldown=10.0)
    health.record_failure("c", "m", status=500)
    clock.advance(8.0)
    health.record_failure("c", "m", status=500)  # started before the breaker opened
    health.record_success("c", "m", ttft=0.1, output_tokens=5, duration=0.5)
    assert health.state("c") == OPEN and not health.acquire("c")
    clock.advance(2.0)
    assert health.acquire("c")


def test_which_statuses_count_against_the_connection() -> None:
    for status in (None, 500, 502, 503, 504, 401, 402, 403, 408, 429):
        assert counts_as_failure(status), status
    for status in (400, 404, 409, 413, 422):
        assert not counts_as_failure(status), status

    health, _ = board(threshold=2)
    for _ in range(10):
        health.record_failure("c", "m", status=400)  # the request's fault
    assert health.state("c") == CLOSED
    assert health.endpoint_stats("c", "m")["uptime_last_30m"] is None  # excluded from uptime too

    health.record_failure("c", "m", status=429)
    health.record_failure("c", "m", status=429)
    assert health.state("c") == OPEN  # an upstream that keeps refusing is ejected...
    assert health.endpoint_stats("c", "m")["uptime_last_30m"] is None  # ...but rate limits are not downtime


def test_caller_fault_in_half_open_closes_the_breaker() -> None:
    health, clock = board(threshold=1, cooldown=1.0)
    health.record_failure("c", "m", status=500)
    clock.advance(1.0)
    assert health.acquire("c")
    health.record_failure("c", "m", status=400)  # the upstream answered: it is up
    assert health.state("c") == CLOSED


def test_breakers_are_per_connection() -> None:
    health, _ = board(threshold=1)
    health.record_failure("a", "m", status=500)
    assert not health.acquire("a")
    assert health.acquire("b") and health.available("b")


# -- figures ----------------------------------------------------------------------------------------------------------


def test_latency_percentiles_in_milliseconds() -> None:
    health, clock = board()
    for i in range(1, 11):  # TTFT 0.1 .. 1.0 s
        health.record_success("c", "m", ttft=i / 10, output_tokens=0, duration=2.0)
        clock.advance(1.0)
    assert health.latency("c", "m") == pytest.approx(0.55)
    latency = health.endpoint_stats("c", "m")["latency_last_30m"]
    assert latency == pytest.approx({"p50": 550.0, "p75": 775.0, "p90": 910.0, "p99": 991.0})
    assert health.latency("c", "other-model") is None


def test_throughput_is_generation_rate_and_its_percentiles_are_the_slow_tail() -> None:
    health, _ = board()
    # 100 tokens generated in 2 s after a 1 s first token: 50 tok/s (latency is not generation time).
    health.record_success("c", "m", ttft=1.0, output_tokens=100, duration=3.0)
    assert health.throughput("c", "m") == pytest.approx(50.0)
    # Not streamed: no TTFT, the whole duration counts.
    health.record_success("c", "m", ttft=None, output_tokens=100, duration=4.0)
    for rate in (10.0, 20.0, 30.0):
        health.record_success("c", "m", ttft=None, output_tokens=int(rate * 10), duration=10.0)
    # Rates now 10, 20, 25, 30, 50.
    assert health.throughput("c", "m") == pytest.approx(25.0)
    throughput = health.endpoint_stats("c", "m")["throughput_last_30m"]
    assert throughput["p50"] == pytest.approx(25.0)
    assert throughput["p75"] == pytest.approx(20.0)
    assert throughput["p90"] == pytest.approx(14.0)
    assert throughput["p99"] == pytest.approx(10.4)
    assert throughput["p50"] > throughput["p75"] > throughput["p90"] > throughput["p99"]
    # Nothing generated, or no time to measure: no sample.
    health.record_success("c", "zero", ttft=0.5, output_tokens=0, duration=1.0)
    health.record_success("c", "zero", ttft=0.5, output_tokens=10, duration=0.0)
    assert health.throughput("c", "zero") is None


def test_uptime_excludes_rate_limits_and_caller_faults() -> None:
    health, _ = board(threshold=100)
    for _ in range(3):
        health.record_success("c", "m", ttft=0.1, output_tokens=1, duration=0.2)
    health.record_failure("c", "m", status=500)
    health.record_failure("c", "m", status=429)
    health.record_failure("c", "m", status=400)
    stats = health.endpoint_stats("c", "m")
    assert stats["uptime_last_30m"] == 75.0
    assert stats["uptime_last_5m"] == 75.0
    assert stats["uptime_last_1d"] == 75.0


def test_figures_expire_with_the_window() -> None:
    health, clock = board(threshold=100)
    clock.now = 6000.0  # a minute boundary, so bucket edges are easy to reason about
    health.record_failure("c", "m", status=503)
    health.record_success("c", "m", ttft=2.0, output_tokens=100, duration=4.0)
    clock.advance(600.0)
    health.record_success("c", "m", ttft=1.0, output_tokens=100, duration=2.0)
    stats = health.endpoint_stats("c", "m")
    assert stats["uptime_last_5m"] == 100.0  # only the recent success
    assert stats["uptime_last_30m"] == pytest.approx(66.67)
    assert health.latency("c", "m") == pytest.approx(1.5)

    clock.now = 6000.0 + 1799.0  # the first records are still inside the 30-minute window
    assert health.endpoint_stats("c", "m")["uptime_last_30m"] == pytest.approx(66.67)
    assert health.latency("c", "m") == pytest.approx(1.5)

    clock.now = 6000.0 + 1800.0  # ...and now they are out
    stats = health.endpoint_stats("c", "m")
    assert stats["uptime_last_30m"] == 100.0
    assert health.latency("c", "m") == pytest.approx(1.0)
    assert stats["throughput_last_30m"]["p50"] == pytest.approx(100.0)
    assert stats["uptime_last_1d"] == pytest.approx(66.67)  # the day remembers longer

    clock.now = 6000.0 + 600.0 + 1800.0
    stats = health.endpoint_stats("c", "m")
    assert stats["uptime_last_5m"] is None and stats["uptime_last_30m"] is None
    assert stats["latency_last_30m"] is None and stats["throughput_last_30m"] is None
    assert health.latency("c", "m") is None and health.throughput("c", "m") is None
    assert stats["uptime_last_1d"] == pytest.approx(66.67)

    clock.now = 6000.0 + 86400.0 + 900.0
    assert health.endpoint_stats("c", "m")["uptime_last_1d"] is None


def test_samples_are_capped() -> None:
    health, clock = board(max_samples=4)
    for ttft in (9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0):
        health.record_success("c", "m", ttft=ttft, output_tokens=0, duration=10.0)
        clock.advance(1.0)
    assert health.latency("c", "m") == pytest.approx(2.5)  # only the last four


def test_endpoint_stats_for_an_unknown_endpoint() -> None:
    health, _ = board()
    assert health.endpoint_stats("c", "m") == {
        "status": 0, "uptime_last_5m": None, "uptime_last_30m": None, "uptime_last_1d": None,
        "latency_last_30m": None, "throughput_last_30m": None}


def test_default_policy() -> None:
    health = HealthBoard()
    for _ in range(4):
        health.record_failure("c", "m", status=500)
    assert health.acquire("c")
    health.record_failure("c", "m", status=500)
    assert not health.acquire("c")
    assert health.policy.cooldown == 30.0 and health.window == 1800.0


# -- retry --------------------------------------------------------------------------------------------------------------


class TopRandom(random.Random):
    """Always draws the top of the range, to pin the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_is_retryable() -> None:
    for status in (None, 408, 429, 500, 502, 503, 504, 599):
        assert is_retryable(status), status
    for status in (200, 400, 401, 403, 404, 413, 422):
        assert not is_retryable(status), status


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    top = TopRandom()
    expected = {1: 0.25, 2: 0.5, 3: 1.0, 4: 2.0, 5: 4.0, 6: 8.0, 7: 8.0, 30: 8.0, 10_000: 8.0}
    for attempt, ceiling in expected.items():
        assert retry_delay(attempt, rng=top) == ceiling
    assert retry_delay(3, base=1.0, cap=3.0, rng=top) == 3.0


def test_backoff_is_full_jitter_within_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(1, 9):
        ceiling = min(8.0, 0.25 * 2 ** (attempt - 1))
        draws = [retry_delay(attempt, rng=rng) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert min(draws) < 0.1 * ceiling and max(draws) > 0.9 * ceiling  # spread over the whole range


def test_retry_after_seconds_is_a_lower_bound() -> None:
    top = TopRandom()
    assert retry_delay(1, retry_after="3", rng=top) == 3.0  # backoff 0.25 < 3
    assert retry_delay(6, retry_after="3", rng=top) == 8.0  # backoff already longer
    assert retry_delay(1, retry_after="1.5", rng=top) == 1.5
    assert retry_delay(1, retry_after="30", rng=top) == 30.0  # exactly max_wait is still waited
    assert retry_delay(1, retry_after="31", rng=top) is None  # fall back instead
    assert retry_delay(1, retry_after="31", max_wait=60.0, rng=top) == 31.0


def test_retry_after_http_date() -> None:
    now = 1_750_000_000.0
    in_ten = formatdate(now + 10, usegmt=True)  # e.g. "Sun, 15 Jun 2025 15:06:50 GMT"
    assert parse_retry_after(in_ten, now=now) == pytest.approx(10.0)
    assert retry_delay(1, retry_after=in_ten, rng=TopRandom(), now=now) == pytest.approx(10.0)
    assert retry_delay(1, retry_after=formatdate(now + 45, usegmt=True), now=now) is None
    past = formatdate(now - 100, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    assert retry_delay(2, retry_after=past, rng=TopRandom(), now=now) == 0.5
    assert parse_retry_after(formatdate(now + 5), now=now) == pytest.approx(5.0)  # "-0000" / numeric zone


def test_unusable_retry_after_is_ignored() -> None:
    for value in ("", "soon", "-5", "nan", "inf", "Mon, 99 Foo 2025"):
        assert parse_retry_after(value) is None, value
        assert retry_delay(2, retry_after=value, rng=TopRandom()) == 0.5, value
    assert parse_retry_after(None) is None


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError):
        retry_delay(0)
