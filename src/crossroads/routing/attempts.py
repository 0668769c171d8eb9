"""The attempt loop: one request's candidates tried in turn, with retries, fallbacks, breakers and panic routing.

Each candidate (model x connection, in the router's order) gets up to 1 + `retries` attempts on its endpoint for
retryable failures (connect error, timeout, 429, 5xx: retry.py), waiting a jittered backoff that honours Retry-After;
then the next candidate. A candidate whose circuit breaker (its endpoint's or its connection's, health.py) is open, or
whose connection's own rate limit is spent (`Capacity`), is put aside. When the breakers left nothing to attempt, the
ejected candidates are tried anyway (panic routing). What an attempt is (transport, translation, answering the client)
is the caller's: the loop only sees `AttemptFailed` (providers/transport.py), which it may retry or fall back on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from crossroads.errors import GatewayError
from crossroads.providers.transport import AttemptFailed
from crossroads.routing.retry import is_retryable, retry_delay

if TYPE_CHECKING:
    from crossroads.accounting.exchange import Exchange
    from crossroads.routing.health import HealthBoard
    from crossroads.routing.select import Candidate

# The request path's logger, as before the loop was split out of api/inference.py: operators filter on its name.
log = logging.getLogger("crossroads.inference")


class Capacity(Protocol):
    """A connection's own capacity (its rate limits: gate/admission.py `Counts`), taken before attempts on it."""

    def needs(self, connection: str) -> bool:
        """Whether `connection` has a capacity to take (a dict lookup: most have none)."""
        ...

    async def take(self, connection: str) -> GatewayError | None:
        """Take the request's share of `connection`'s capacity; the refusal (a 429) when it is spent."""
        ...

    @property
    def holding(self) -> bool:
        """Whether capacity taken for an attempt is still held (not yet settled by the answer)."""
        ...

    async def give_back(self) -> None:
        """Give back what was taken: the connection served nothing."""
        ...


async def try_candidates(candidates: list[Candidate], attempt: Callable[[Candidate], Awaitable[None]], *,
                         exchange: Exchange, health: HealthBoard, capacity: Capacity, retries: int,
                         max_retry_wait: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
                         ) -> GatewayError | None:
    """Attempt `candidates` in turn until `attempt` returns (None: the request was answered), or return the error
    the client gets: the last upstream failure, else a capacity refusal, else 503. Retries, fallbacks and skipped
    candidates are noted in `exchange.attempts`. `sleep` waits out a retry's backoff (tests give a fake clock's).

    One loop, not a helper per level: every coroutine frame here is passed through on each resumption of the
    request's task.

    A candidate whose breaker refuses is put aside. When no candidate could be attempted at all, those put aside are
    tried anyway, ejected longest ago first (panic routing, as Envoy does when too few hosts are healthy), under the
    same retry and fallback rules: a request never fails on breakers alone, and the client's error is the last real
    upstream failure. Otherwise they are skipped, and the generation record lists them as such."""
    last: GatewayError | None = None
    refused: GatewayError | None = None
    queue = candidates
    index = 0
    tried = False  # whether an attempt went upstream
    ejected: list[Candidate] | None = None  # put aside by their breaker while nothing was tried yet
    panic = False
    while True:
        if index == len(queue):
            if tried or not ejected:
                break
            # Panic: the breakers refused every candidate that capacity allowed. Try them anyway.
            ejected.sort(key=lambda c: health.ejected_since(c.connection, c.deployment.model.upstream))
            queue, ejected, index, panic = ejected, None, 0, True
        candidate = queue[index]
        index += 1
        name = candidate.deployment.connection.name
        model = candidate.deployment.model.upstream
        if not health.acquire(name, model, force=panic):
            if tried:
                skipped(exchange, candidate)
            elif ejected is None:
                ejected = [candidate]
            else:
                ejected.append(candidate)
            continue
        if capacity.needs(name):
            refusal = await capacity.take(name)
            if refusal is not None:
                health.record_cancelled(name, model)  # frees a half-open probe: nothing was tried
                exchange.attempts.append({"provider_name": name, "model_permaslug": candidate.deployment.model.id,
                                          "status": 429, "latency": None,
                                          "error": f"capacity: {(refusal.metadata or {}).get('code')}"})
                refused = refusal
                continue
        if not tried:
            tried = True
            if ejected:  # an attempt goes: no panic for this request, those stay skipped
                for put_aside in ejected:
                    skipped(exchange, put_aside)
                ejected = None
        number = 0
        try:
            while True:
                number += 1
                try:
                    await attempt(candidate)
                    return None
                except AttemptFailed as failed:
                    health.record_failure(name, model, status=failed.status, connection_fault=failed.connection_fault,
                                          retry_after=failed.retry_after)
                    delay = None
                    if number <= retries and is_retryable(failed.status):
                        delay = retry_delay(number, retry_after=failed.retry_after, max_wait=max_retry_wait)
                        if delay is not None and health.ejected(name, model):
                            delay = None
                    _warn_attempt_failed(failed, name, model, number, delay, more=index < len(queue) or bool(ejected))
                    if delay is None:
                        raise
                    await sleep(delay)
                    if not health.acquire(name, model, force=panic):
                        raise
        except AttemptFailed as failed:
            # Any upstream failure (context too long included) moves on to the next candidate.
            last = failed.error
        except asyncio.CancelledError:
            health.record_cancelled(name, model)
            raise
        finally:
            if capacity.holding:  # not settled: this connection served nothing
                await capacity.give_back()
    error = last or refused or GatewayError(503, "No upstream could serve the request")
    if last is not None and refused is not None and last.status == 503:
        error = refused
    return error


def skipped(exchange: Exchange, candidate: Candidate) -> None:
    exchange.attempts.append({"provider_name": candidate.connection, "model_permaslug": candidate.deployment.model.id,
                              "status": None, "latency": None, "error": "skipped: circuit breaker open"})


def _warn_attempt_failed(failed: AttemptFailed, connection: str, model: str, attempt: int, retry_in: float | None,
                         *, more: bool) -> None:
    """One warning per failed upstream attempt: what failed (status, a short excerpt of the upstream's answer, secrets
    already removed by the connection) and what happens next."""
    status = f"HTTP {failed.status}" if failed.status is not None else "no response"
    if retry_in is not None:
        then = f"retrying in {retry_in:.2f} s"
    else:
        then = "falling back to the next candidate" if more else "no candidate left"
    log.warning("upstream %s model %s failed (attempt %d, %s): %s; %s", connection, model, attempt, status,
                failed.error.message[:300], then)
