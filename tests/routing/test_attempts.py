"""routing/attempts.py's decisions with a fake attempt function: retries, fallbacks, breakers, panic routing, a
connection's capacity and Retry-After, without a server or an upstream (the end-to-end behaviour: test_routing.py,
test_faults.py, test_breaker_scope.py)."""

from __future__ import annotations

import pytest

from crossroads.accounting.exchange import Exchange
from crossroads.catalog import ModelSpec, Pricing
from crossroads.config import ConnectionConfig
from crossroads.errors import GatewayError
from crossroads.gate.auth import Principal
from crossroads.providers.http import UpstreamClient
from crossroads.providers.registry import make_adapter
from crossroads.providers.transport import AttemptFailed
from crossroads.routing.attempts import try_candidates
from crossroads.routing.health import BreakerPolicy, HealthBoard
from crossroads.routing.registry import Connection, Deployment
from crossroads.routing.select import Candidate


def candidate(name: str) -> Candidate:
    config = ConnectionConfig(name=name, type="openai", base_url="http://127.0.0.1:9/v1")
    model = ModelSpec(id=f"{name}/m", upstream="m", pricing=Pricing(prompt=1e-6, completion=1e-6))
    return Candidate(Deployment(model, Connection(config, make_adapter(config), UpstreamClient(5.0))), f"{name}/m")


def failure(status: int | None, retry_after: str | None = None, *, connection_fault: bool | None = None
            ) -> AttemptFailed:
    return AttemptFailed(GatewayError(502 if status is None else status, f"failed {status}"), status, retry_after,
                         connection_fault)


class Run:
    """One request's loop: the candidates, what each attempt on them does (in turn), and what happened."""

    def __init__(self, *names: str, retries: int = 2, max_retry_wait: float = 30.0, capacity: Capacity | None = None,
                 health: HealthBoard | None = None) -> None:
        self.candidates = [candidate(name) for name in names]
        self.outcomes: dict[str, list[AttemptFailed | None]] = {}
        self.tried: list[str] = []
        self.slept: list[float] = []
        self.now = 1000.0
        self.health = health or HealthBoard(BreakerPolicy(failure_threshold=2, cooldown=30.0), clock=lambda: self.now)
        self.capacity = capacity or Capacity()
        self.exchange = Exchange("gen-1", Principal(kind="master"), self.candidates[0].deployment.model,
                                 self.candidates[0].deployment.connection, stream=False, headers={}, user=None,
                                 prompt_estimate=10)
        self.retries, self.max_retry_wait = retries, max_retry_wait

    def answers(self, name: str, *outcomes: AttemptFailed | None) -> Run:
        self.outcomes[name] = list(outcomes)
        return self

    async def attempt(self, chosen: Candidate) -> None:
        self.tried.append(chosen.connection)
        outcomes = self.outcomes.get(chosen.connection) or [None]
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if outcome is not None:
            raise outcome

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def __call__(self) -> GatewayError | None:
        return await try_candidates(self.candidates, self.attempt, exchange=self.exchange, health=self.health,
                                    capacity=self.capacity, retries=self.retries,
                                    max_retry_wait=self.max_retry_wait, sleep=self.sleep)


class Capacity:
    """A connection's rate limit as the loop sees it: `limited` connections refuse once `room` is spent."""

    def __init__(self, room: dict[str, int] | None = None) -> None:
        self.room = room or {}
        self.held: str | None = None
        self.given_back: list[str] = []

    def needs(self, connection: str) -> bool:
        return connection in self.room

    async def take(self, connection: str) -> GatewayError | None:
        if self.room[connection] <= 0:
            return GatewayError(429, f"Rate limit of connection {connection} exceeded",
                                metadata={"code": "resource_exhausted"})
        self.room[connection] -= 1
        self.held = connection
        return None

    @property
    def holding(self) -> bool:
        return self.held is not None

    async def give_back(self) -> None:
        assert self.held is not None
        self.given_back.append(self.held)
        self.held = None


async def test_the_first_answer_ends_the_loop() -> None:
    run = Run("a", "b")
    assert await run() is None
    assert run.tried == ["a"] and run.slept == []


async def test_retryable_failures_are_retried_then_fall_back() -> None:
    run = Run("a", "b", retries=2).answers("a", failure(503), failure(None), failure(500))
    assert await run() is None
    assert run.tried == ["a", "a", "a", "b"]  # 1 + 2 retries on a, then b
    assert len(run.slept) == 2 and all(0 <= s <= 8 for s in run.slept)


async def test_a_failure_the_client_caused_is_not_retried_and_the_last_error_is_returned() -> None:
    run = Run("a", "b").answers("a", failure(400)).answers("b", failure(422))
    error = await run()
    assert error is not None and (error.status, error.message) == (422, "failed 422")
    assert run.tried == ["a", "b"] and run.slept == []


async def test_retry_after_longer_than_the_wait_allowed_falls_back_at_once() -> None:
    run = Run("a", "b", max_retry_wait=5.0).answers("a", failure(429, "60"))
    assert await run() is None
    assert run.tried == ["a", "b"] and run.slept == []
    run = Run("a", "b", max_retry_wait=5.0).answers("a", failure(429, "3"), None)
    assert await run() is None
    assert run.tried == ["a", "a"] and run.slept[0] >= 3  # Retry-After is a lower bound on the backoff


async def test_an_ejected_candidate_is_skipped_while_another_serves() -> None:
    run = Run("a", "b")
    for _ in range(2):  # failure_threshold: a's breaker opens
        run.health.record_failure("a", "m", status=500)
    assert await run() is None
    assert run.tried == ["b"]
    assert [(a["provider_name"], a["error"]) for a in run.exchange.attempts] == [
        ("a", "skipped: circuit breaker open")]


async def test_panic_routing_tries_the_ejected_when_nothing_else_is_left() -> None:
    run = Run("a", "b")
    for name in ("b", "a"):  # b ejected first: longest ago, so tried first
        for _ in range(2):
            run.health.record_failure(name, "m", status=500)
        run.now += 1
    assert await run() is None
    assert run.tried == ["b"]
    assert run.exchange.attempts == []  # nothing was skipped: panic tried them


async def test_a_connection_without_capacity_is_passed_over_and_what_it_took_is_given_back() -> None:
    capacity = Capacity({"a": 0, "b": 1})
    run = Run("a", "b", "c", capacity=capacity).answers("b", failure(400))
    assert await run() is None
    assert run.tried == ["b", "c"]
    assert capacity.given_back == ["b"]  # b's attempt failed: its count is given back; c has no limit
    assert [(a["provider_name"], a["status"], a["error"]) for a in run.exchange.attempts] == [
        ("a", 429, "capacity: resource_exhausted")]


@pytest.mark.parametrize(("last", "expected"), [(503, 429), (502, 502)])
async def test_a_capacity_refusal_is_the_answer_only_when_it_says_more(last: int, expected: int) -> None:
    run = Run("a", "b", retries=0, capacity=Capacity({"b": 0})).answers("a", failure(last))
    error = await run()
    assert error is not None and error.status == expected


async def test_nothing_to_try_is_a_503() -> None:
    run = Run("a", capacity=Capacity({"a": 0}))
    error = await run()
    assert error is not None and error.status == 429
    run = Run("a")
    run.candidates = []
    error = await run()
    assert error is not None and (error.status, error.message) == (503, "No upstream could serve the request")


async def test_a_breaker_that_opens_during_retries_stops_them() -> None:
    run = Run("a", "b", retries=5).answers("a", failure(500), failure(500), failure(500))
    assert await run() is None
    assert run.tried == ["a", "a", "b"]  # the second failure opened a's breaker (threshold 2): no third try
    assert len(run.slept) == 1
