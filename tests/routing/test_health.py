"""Circuit breakers per endpoint and per connection, windowed endpoint figures (routing/health.py) and retry backoff
(routing/retry.py)."""

from __future__ import annotations

import math
import random
from email.utils import formatdate

import pytest

from crossroads.routing.health import (
    CAPACITY,
    CLOSED,
    CONNECTION,
    ENDPOINT,
    HALF_OPEN,
    NONE,
    OPEN,
    STATUS_EJECTED,
    STATUS_OK,
    STATUS_PROBING,
    BreakerPolicy,
    HealthBoard,
    counts_as_failure,
    fault_scope,
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


# -- breaker (one endpoint) -------------------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_then_probes_and_closes() -> None:
    health, clock = board(threshold=3, cooldown=10.0)
    for _ in range(2):
        health.record_failure("c", "m", status=503)
    assert health.state("c", "m") == CLOSED and health.acquire("c", "m") and health.available("c", "m")

    health.record_failure("c", "m", status=None, connection_fault=False)  # third in a row (a response timeout)
    assert health.state("c", "m") == OPEN
    assert health.connection_state("c") == CLOSED  # none of them said the connection is broken
    assert not health.available("c", "m") and not health.acquire("c", "m") and health.ejected("c", "m")
    assert health.status("c", "m") == STATUS_EJECTED

    clock.advance(9.9)
    assert not health.available("c", "m") and not health.acquire("c", "m")

    clock.advance(0.1)  # cooled
    assert health.available("c", "m") and health.available("c", "m") and not health.ejected("c", "m")
    assert health.state("c", "m") == OPEN  # available() changed nothing
    assert health.status("c", "m") == STATUS_PROBING
    assert health.acquire("c", "m")  # the one probe
    assert health.state("c", "m") == HALF_OPEN
    assert not health.acquire("c", "m") and not health.acquire("c", "m")  # nobody else while it is out
    assert health.available("c", "m")  # not "open and cooling"

    health.record_success("c", "m", ttft=0.2, output_tokens=10, duration=1.0)
    assert health.state("c", "m") == CLOSED and health.status("c", "m") == STATUS_OK
    assert all(health.acquire("c", "m") for _ in range(5))
    # The count started over: two more failures do not open it.
    health.record_failure("c", "m", status=500)
    health.record_failure("c", "m", status=500)
    assert health.state("c", "m") == CLOSED


def test_failed_probe_reopens_with_a_fresh_cooldown() -> None:
    health, clock = board(threshold=1, cooldown=10.0)
    health.record_failure("c", "m", status=502)
    clock.advance(10.0)
    assert health.acquire("c", "m")
    clock.advance(3.0)  # the probe took 3 s to fail
    health.record_failure("c", "m", status=502)
    assert health.state("c", "m") == OPEN
    clock.advance(9.9)
    assert not health.available("c", "m") and not health.acquire("c", "m")
    clock.advance(0.1)
    assert health.acquire("c", "m")


def test_success_breaks_the_run_of_failures() -> None:
    health, _ = board(threshold=3)
    for _ in range(5):
        health.record_failure("c", "m", status=500)
        health.record_failure("c", "m", status=500)
        health.record_success("c", "m", ttft=None, output_tokens=0, duration=0.1)
    assert health.state("c", "m") == CLOSED


def test_cancelled_never_opens_and_frees_the_probe() -> None:
    health, clock = board(threshold=2, cooldown=5.0)
    for _ in range(50):
        health.record_cancelled("c", "m")
    assert health.state("c", "m") == CLOSED and health.acquire("c", "m")

    health.record_failure("c", "m", status=500)
    health.record_cancelled("c", "m")
    health.record_failure("c", "m", status=500)  # consecutive: the cancel in between counted nothing
    assert health.state("c", "m") == OPEN

    clock.advance(5.0)
    assert health.acquire("c", "m")  # probe out
    health.record_cancelled("c", "m")  # its client went away: no verdict
    assert health.state("c", "m") == HALF_OPEN
    assert health.acquire("c", "m")  # the next attempt may probe
    assert not health.acquire("c", "m")
    health.record_success("c", "m", ttft=0.1, output_tokens=1, duration=0.2)
    assert health.state("c", "m") == CLOSED
    assert health.endpoint_stats("c", "m")["uptime_last_30m"] == pytest.approx(100 * 1 / 3, abs=0.01)


def test_lost_probe_frees_the_slot_after_probe_timeout() -> None:
    clock = FakeClock()
    health = HealthBoard(BreakerPolicy(failure_threshold=1, cooldown=1.0, probe_timeout=60.0), clock=clock)
    health.record_failure("c", "m", status=500)
    clock.advance(1.0)
    assert health.acquire("c", "m")
    clock.advance(59.0)
    assert not health.acquire("c", "m")
    clock.advance(1.0)
    assert health.acquire("c", "m")


def test_stragglers_while_open_neither_extend_nor_cut_the_cooldown() -> None:
    health, clock = board(threshold=1, cooldown=10.0)
    health.record_failure("c", "m", status=500)
    clock.advance(8.0)
    health.record_failure("c", "m", status=500)  # started before the breaker opened
    health.record_success("c", "m", ttft=0.1, output_tokens=5, duration=0.5)
    assert health.state("c", "m") == OPEN and not health.acquire("c", "m")
    clock.advance(2.0)
    assert health.acquire("c", "m")


def test_fault_scopes() -> None:
    for status in (401, 402, 403, None):
        assert fault_scope(status) == CONNECTION, status
    assert fault_scope(None, connection_fault=True) == CONNECTION
    for status in (500, 502, 503, 504, 408):
        assert fault_scope(status) == ENDPOINT, status
    assert fault_scope(None, connection_fault=False) == ENDPOINT  # a response timeout, a stream that broke off
    assert fault_scope(403, connection_fault=False) == ENDPOINT  # an in-stream error of one model
    assert fault_scope(429) == fault_scope(429, connection_fault=True) == CAPACITY
    for status in (400, 404, 409, 413, 422):
        assert fault_scope(status) == NONE, status
    for status in (None, 500, 502, 503, 504, 401, 402, 403, 408):
        assert counts_as_failure(status), status
    for status in (400, 404, 409, 413, 422, 429):
        assert not counts_as_failure(status), status


def test_caller_faults_never_count() -> None:
    health, _ = board(threshold=2)
    for _ in range(10):
        health.record_failure("c", "m", status=400)  # the request's fault
    assert health.state("c", "m") == CLOSED and health.connection_state("c") == CLOSED
    assert health.endpoint_stats("c", "m")["uptime_last_30m"] is None  # excluded from uptime too


def test_caller_fault_in_half_open_closes_the_breaker() -> None:
    health, clock = board(threshold=1, cooldown=1.0)
    health.record_failure("c", "m", status=500)
    clock.advance(1.0)
    assert health.acquire("c", "m")
    health.record_failure("c", "m", status=400)  # the upstream answered: it is up
    assert health.state("c", "m") == CLOSED


# -- breaker granularity: endpoint, connection, capacity ---------------------------------------------------------------


def test_one_failing_model_does_not_eject_the_other_models_of_its_connection() -> None:
    health, _ = board(threshold=2)
    for status in (500, 503, 500, 500):
        health.record_failure("c", "gpt-x", status=status)
    assert health.state("c", "gpt-x") == OPEN and health.status("c", "gpt-x") == STATUS_EJECTED
    assert not health.acquire("c", "gpt-x") and not health.available("c", "gpt-x")
    assert health.connection_state("c") == CLOSED
    for model in ("gpt-y", "never-seen"):
        assert health.acquire(model=model, connection="c") and health.available("c", model)
        assert health.status("c", model) == STATUS_OK and not health.ejected("c", model)
        assert health.endpoint_stats("c", model)["status"] == STATUS_OK
    assert health.acquire("other", "gpt-x")  # nor the same model on another connection


@pytest.mark.parametrize("status", [None, 401, 402, 403])
def test_connection_faults_eject_every_model_of_the_connection(status: int | None) -> None:
    health, clock = board(threshold=3, cooldown=10.0)
    # Consecutive across models: the connection is what failed.
    for model in ("a", "b", "a"):
        health.record_failure("c", model, status=status)
    assert health.connection_state("c") == OPEN
    for model in ("a", "b", "never-seen"):
        assert health.state("c", model) == CLOSED  # the endpoints' own breakers are untouched...
        assert not health.acquire("c", model) and not health.available("c", model) and health.ejected("c", model)
        assert health.status("c", model) == STATUS_EJECTED  # ...but the connection holds them all back
        assert health.endpoint_stats("c", model)["status"] == STATUS_EJECTED
    assert health.acquire("other", "a")
    assert health.endpoint_stats("c", "a")["uptime_last_30m"] == 0.0  # downtime for the endpoints that saw it

    clock.advance(10.0)  # one probe for the whole connection
    assert health.status("c", "b") == STATUS_PROBING
    assert health.acquire("c", "b")
    assert health.connection_state("c") == HALF_OPEN
    assert not health.acquire("c", "a") and not health.acquire("c", "b")
    health.record_failure("c", "b", status=500)  # an answer: the connection works; that model failed once
    assert health.connection_state("c") == CLOSED and health.state("c", "b") == CLOSED
    assert health.acquire("c", "a") and health.acquire("c", "b")


def test_connection_fault_run_is_broken_by_any_answer() -> None:
    health, _ = board(threshold=2)
    for _ in range(5):
        health.record_failure("c", "a", status=None)
        health.record_failure("c", "b", status=500)  # the upstream answered: the connection is reachable
    assert health.connection_state("c") == CLOSED
    health.record_failure("c", "a", status=None, connection_fault=True)
    health.record_failure("c", "a", status=401)
    assert health.connection_state("c") == OPEN


def test_failed_connection_probe_reopens_the_connection() -> None:
    health, clock = board(threshold=1, cooldown=5.0)
    health.record_failure("c", "a", status=None)
    clock.advance(5.0)
    assert health.acquire("c", "a")
    health.record_failure("c", "a", status=None)
    assert health.connection_state("c") == OPEN and not health.acquire("c", "b")
    clock.advance(5.0)
    assert health.acquire("c", "b")
    health.record_success("c", "b", ttft=0.1, output_tokens=1, duration=0.2)
    assert health.connection_state("c") == CLOSED and health.acquire("c", "a")


def test_connection_fault_on_an_endpoint_probe_is_no_verdict_for_the_endpoint() -> None:
    health, clock = board(threshold=1, cooldown=5.0)
    health.record_failure("c", "a", status=500)
    clock.advance(5.0)
    assert health.acquire("c", "a")  # the endpoint's probe
    health.record_failure("c", "a", status=None, connection_fault=True)  # connection refused
    assert health.state("c", "a") == HALF_OPEN  # the model's own verdict is still open
    assert health.connection_state("c") == OPEN
    clock.advance(5.0)
    assert health.acquire("c", "a")  # probes both
    health.record_success("c", "a", ttft=None, output_tokens=1, duration=0.1)
    assert health.state("c", "a") == CLOSED and health.connection_state("c") == CLOSED


def test_rate_limits_never_open_a_breaker() -> None:
    health, _ = board(threshold=2)
    for _ in range(20):
        health.record_failure("c", "m", status=429)
        health.record_failure("c", "m", status=429, retry_after="0")
    assert health.state("c", "m") == CLOSED and health.connection_state("c") == CLOSED
    assert health.acquire("c", "m") and health.available("c", "m")
    assert health.endpoint_stats("c", "m")["uptime_last_30m"] is None  # not downtime either
    # Nor do they break a run of real failures: they say nothing either way.
    health.record_failure("c", "m", status=500)
    health.record_failure("c", "m", status=429)
    health.record_failure("c", "m", status=500)
    assert health.state("c", "m") == OPEN


def test_retry_after_makes_the_endpoint_cool_not_ejected() -> None:
    health, clock = board(threshold=1)
    health.record_failure("c", "m", status=429, retry_after="30")
    assert not health.available("c", "m")  # ordered after the other candidates...
    assert health.acquire("c", "m") and not health.ejected("c", "m")  # ...but never refused
    assert health.state("c", "m") == CLOSED and health.status("c", "m") == STATUS_OK
    assert health.available("c", "other")
    clock.advance(10.0)
    health.record_failure("c", "m", status=429, retry_after="5")  # a shorter ask does not shorten the spell
    clock.advance(19.9)
    assert not health.available("c", "m")
    clock.advance(0.1)
    assert health.available("c", "m")
    health.record_failure("c", "m", status=429, retry_after="30")
    health.record_success("c", "m", ttft=None, output_tokens=1, duration=0.1)  # served: the spell is over
    assert health.available("c", "m")


def test_rate_limit_on_a_probe_frees_the_slot() -> None:
    health, clock = board(threshold=1, cooldown=5.0)
    health.record_failure("c", "m", status=500)
    clock.advance(5.0)
    assert health.acquire("c", "m")
    health.record_failure("c", "m", status=429)
    assert health.state("c", "m") == HALF_OPEN
    assert health.acquire("c", "m")  # the next attempt probes


def test_forced_attempts_for_panic_routing() -> None:
    health, clock = board(threshold=1, cooldown=10.0)
    health.record_failure("c", "old", status=500)
    clock.advance(3.0)
    health.record_failure("c", "new", status=500)
    clock.advance(1.0)
    health.record_failure("d", "m", status=None)  # the whole connection d
    assert not health.acquire("c", "old") and health.acquire("c", "old", force=True)
    assert health.state("c", "old") == OPEN  # still cooling: the forced attempt is no probe
    health.record_failure("c", "old", status=500)  # does not extend the cool-down...
    clock.advance(6.0)
    assert health.acquire("c", "old") and health.state("c", "old") == HALF_OPEN  # ...10 s after it opened
    # Ejected longest ago first; -inf for what is not refused.
    assert health.ejected_since("c", "new") < health.ejected_since("d", "m")
    assert health.ejected_since("c", "fine") == -math.inf
    assert health.acquire("c", "new", force=True) and health.acquire("d", "m", force=True)
    health.record_success("c", "new", ttft=None, output_tokens=1, duration=0.1)  # nor cuts it short
    assert health.state("c", "new") == OPEN and not health.acquire("c", "new")
    clock.advance(3.0)
    assert health.acquire("c", "new")  # now the probe, and it closes the breaker
    health.record_success("c", "new", ttft=None, output_tokens=1, duration=0.1)
    assert health.state("c", "new") == CLOSED
    assert health.acquire("c", "fine", force=True)


def test_lookups_keep_nothing() -> None:
    # acquire/available on the request path only read: no entry is made for a model nobody recorded.
    import tracemalloc

    health, _ = board()
    health.record_success("c", "m", ttft=0.1, output_tokens=1, duration=0.2)
    health.record_failure("c", "n", status=500)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(1000):
            health.acquire("c", "m")
            health.available("c", "m")
            health.acquire("c", "n")
            health.available("c", "unknown")
            health.acquire("other", "m")
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = [d for d in after.compare_to(before, "filename") if d.size_diff > 0
             and d.traceback[0].filename.endswith("routing/health.py")]
    assert not grown, grown


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
    assert health.acquire("c", "m")
    health.record_failure("c", "m", status=500)
    assert not health.acquire("c", "m")
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
