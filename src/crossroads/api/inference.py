"""Every inference endpoint: front format -> gate -> router -> provider adapter -> upstream, and back.

One `Call` per request. It asks the router for candidates (model x connection, in try order), passes the gate (model
allow-list, rate limits, credit reservation), then tries candidates in turn: each with bounded retries on the same
connection for retryable failures (connect error, timeout, 429, 5xx), honouring Retry-After, skipping candidates whose
circuit breaker (their endpoint's or their connection's, routing/health.py) is open or whose connection's capacity is
spent; when the breakers left nothing to attempt, the ejected candidates are tried anyway (panic routing). Fallback and
retry are possible until the first data byte reached the client; after that, a failure becomes the front format's
mid-stream error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from crossroads.accounting.exchange import NOTHING_TO_HOLD, Exchange, estimate_prompt_tokens, worst_case_cost
from crossroads.api.asgi import JSON_HEADERS, SSE_HEADERS, OpenStreams, Request, respond
from crossroads.errors import GatewayError
from crossroads.formats.chat import new_generation_id
from crossroads.formats.transforms import middle_out, wants_middle_out
from crossroads.gate.auth import allowed_for_inference, priced_for_limit
from crossroads.gate.directory import chain_limited
from crossroads.gate.ratelimit import Decision, Limit
from crossroads.observability.logs import OncePer
from crossroads.observability.metrics import count_redis_error
from crossroads.providers.base import RequestContext, Translator, UpstreamStreamError, sse_frame
from crossroads.providers.http import ResponseTooLarge, read_body
from crossroads.routing.features import (
    ONLINE_SUFFIX,
    requested_features,
    take_online_suffix,
    unhonoured,
    without,
)
from crossroads.routing.retry import is_retryable, retry_delay

if TYPE_CHECKING:
    from crossroads.api.app import Gateway
    from crossroads.formats.base import Front
    from crossroads.routing.registry import Connection
    from crossroads.routing.select import Candidate

log = logging.getLogger("crossroads.inference")
_limit_store_down = OncePer(log)
_MAX_ERROR_BODY = 64 * 1024
PROCESSING = b": PROCESSING\n\n"

# X-RateLimit-* always mean the gateway's own limits for the calling key (or its route), in OpenRouter's units (reset
# in epoch milliseconds). The upstream account's request limits, in whatever units the upstream uses ("6ms",
# an RFC 3339 time...), are passed on as X-Upstream-RateLimit-*.
# Each provider names its headers (ProviderSpec.rate_limit_headers).


class AttemptFailed(Exception):
    """An attempt failed before anything reached the client: the call may retry or fall back."""

    def __init__(self, error: GatewayError, status: int | None, retry_after: str | None = None,
                 connection_fault: bool | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.status = status  # upstream HTTP status; None for connect errors and timeouts
        self.retry_after = retry_after
        # Whether the breaker of the whole connection counts it (routing/health.py's fault_scope); None: by status.
        self.connection_fault = connection_fault


# What a translator raises on an upstream answer or event it cannot read: not JSON (ValueError), or JSON of another
# shape than the adapter expects (a missing key, a list where an object belongs, a string where a list belongs...).
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError)

# aiohttp >= 3.10 raises this (a TimeoutError) when the connect phase times out, total timeout included.
_CONNECT_TIMEOUT: Any = getattr(aiohttp, "ConnectionTimeoutError", ())


def _reached_nothing(exc: BaseException) -> bool:
    """Whether a transport error means the connection itself is broken (connect refused or timed out, reset or
    closed before any response, DNS, TLS): a connection-level fault for the breakers. A timeout waiting for the
    response once connected, or a body that broke off after the headers, is the endpoint's (a slow or stuck model)."""
    if isinstance(exc, TimeoutError):
        return isinstance(exc, _CONNECT_TIMEOUT)
    return not isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError))


def upstream_error(connection: Connection, status: int, raw: bytes, headers: Any = None) -> GatewayError:
    """Map an upstream's HTTP error to the status the client sees, keeping its body (secrets removed). `status` is
    what the adapter classified the error as (Adapter.error_status)."""
    message = connection.redact(connection.adapter.error_message(status, raw))
    metadata = {"provider_name": connection.name, "raw": _raw_excerpt(connection, raw)}
    if status == 429:
        extra = {}
        retry_after = headers.get("Retry-After") if headers is not None else None
        if retry_after:
            extra["Retry-After"] = retry_after
        return GatewayError(429, f"Rate limited by upstream {connection.name}: {message}", metadata=metadata,
                            headers=extra)
    if status == 408:
        return GatewayError(408, f"Upstream {connection.name} timed out: {message}", metadata=metadata)
    if status in (400, 413, 422):
        # The upstream refused the request itself (context too long, bad parameter): the client can fix it.
        return GatewayError(400, f"Upstream {connection.name} rejected the request: {message}", metadata=metadata)
    if status in (401, 403):
        # The connection's credentials are wrong: the gateway's fault, not the client's key.
        return GatewayError(502, f"Upstream {connection.name} refused the gateway's credentials (HTTP {status}): "
                                 f"{message}", metadata=metadata)
    return GatewayError(502, f"Upstream {connection.name} failed (HTTP {status}): {message}", metadata=metadata)


def _raw_excerpt(connection: Connection, raw: bytes) -> str:
    return connection.redact(raw[:_MAX_ERROR_BODY].decode("utf-8", "replace"))


def transport_error(connection: Connection, exc: BaseException) -> GatewayError:
    metadata = {"provider_name": connection.name, "raw": None}
    if isinstance(exc, _CONNECT_TIMEOUT):  # nothing answered: as unreachable as a refused connection
        return GatewayError(502, f"Could not reach upstream {connection.name}: no connection within "
                                 f"{connection.client.connect_timeout:g} s", metadata=metadata)
    if isinstance(exc, TimeoutError):
        return GatewayError(408, f"Upstream {connection.name} timed out after {connection.config.timeout:g} s",
                            metadata=metadata)
    detail = connection.redact(str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientPayloadError):  # it answered, then its body broke off
        return GatewayError(502, f"Upstream {connection.name} broke off its response: {detail}", metadata=metadata)
    return GatewayError(502, f"Could not reach upstream {connection.name}: {detail}", metadata=metadata)


def too_large_error(connection: Connection, exc: ResponseTooLarge) -> GatewayError:
    return GatewayError(502, f"Upstream {connection.name} sent more than its max_response_bytes "
                             f"({exc.limit} bytes)", metadata={"provider_name": connection.name, "raw": None})


def serve(gateway: Gateway, front: Front) -> Callable[[Request], Awaitable[None]]:
    """The endpoint handler of a front. A plain function that returns the call's coroutine: no wrapper frame that every
    resumption of the request's task would pass through."""

    def handler(request: Request) -> Awaitable[None]:
        return Call(gateway, request, front).run()

    return handler


class Call:
    __slots__ = ("gateway", "request", "front", "parsed", "body", "exchange", "renderer", "writer", "stream",
                 "gate_ms", "routing_ms", "limits", "conn_limits", "limit_headers", "passthrough", "features")

    def __init__(self, gateway: Gateway, request: Request, front: Front) -> None:
        self.gateway = gateway
        self.request = request
        self.front = front
        self.writer: SSEWriter | None = None
        self.limits: list[Limit] = []  # request-level limits (key, route) counted for this call
        self.conn_limits: list[Limit] = []  # the serving connection's limits counted for this call
        self.limit_headers: dict[str, str] = {}
        self.passthrough = False

    async def run(self) -> None:
        gateway, request = self.gateway, self.request
        self.parsed = await self.front.parse(request, gateway.store)
        body = self.body = self.parsed.body
        model = body.get("model")
        if (isinstance(model, str) and model.endswith(ONLINE_SUFFIX)) or body.get("models"):
            take_online_suffix(body, gateway.is_known_model)
        self.features = requested_features(body)  # optional features some upstreams cannot honour; mostly ()
        self.stream = bool(body.get("stream"))
        principal = request.principal
        prompt_tokens = estimate_prompt_tokens(body)

        routing_started = time.perf_counter()
        plan = gateway.plan(body, request.headers, principal.key, prompt_tokens)
        self.routing_ms = (time.perf_counter() - routing_started) * 1000

        gate_started = time.perf_counter()
        key = principal.key
        candidates = plan.candidates
        if gateway.scoped_resources and (key is not None or principal.workspace_id is not None):
            candidates = gateway.visible_candidates(
                candidates, key.workspace_id if key is not None else principal.workspace_id,
                model if isinstance(model, str) else candidates[0].model_id)
        candidates = allowed_for_inference(principal, candidates, _names_of)
        # Every budget the request must fit: the key's limit, its environment's, member's and workspace's.
        chain = gateway.keys.directory.chain(key, principal.workspace_id, principal.environment_id)
        limited = chain_limited(chain)
        candidates = priced_for_limit(limited, candidates, _model_of)
        first = candidates[0]
        user = body.get("user") if isinstance(body.get("user"), str) else None
        exchange = self.exchange = Exchange(
            new_generation_id(), principal, first.deployment.model, first.deployment.connection, stream=self.stream,
            headers=request.headers, user=user, prompt_estimate=prompt_tokens)
        exchange.api_type = self.front.api_type
        exchange.requested_model = model if isinstance(model, str) else None
        request.exchange = exchange
        exchange.model_id = first.model_id
        exchange.dropped = self.parsed.dropped
        exchange.chain = chain
        # Request-level capacity (key, route): all or nothing, before anything else is spent.
        limits = gateway.request_limits(key, first.route)
        if limits:
            decision = await _acquire(gateway, limits, prompt_tokens, key.priority if key else "normal")
            self.limit_headers = decision.headers()
            if not decision.allowed:  # nothing was counted
                raise _limit_error(decision, "this API key" if (decision.scope or "").startswith("key:")
                                   else "this route")
            if decision is not UNCOUNTED:
                self.limits = limits
        # Credit: the worst case over every candidate that may serve (only a chain with a limit has to hold it).
        worst = worst_case_cost(body, [(c.deployment.model, c.overrides) for c in candidates]) \
            if limited else NOTHING_TO_HOLD
        try:
            gateway.check_recordable()  # strict durability: 503 while records cannot be written (an attribute read)
            if limited:
                exchange.reservation = await gateway.reserve_credit(chain, worst.total, prompt_cost=worst.prompt,
                                                                    completion_price=worst.completion_price)
            else:  # nothing to hold: no await on the common path
                exchange.reservation = gateway.ledger.reserve(chain, worst.total, prompt_cost=worst.prompt,
                                                              completion_price=worst.completion_price)
        except GatewayError:
            if self.limits:  # refused before anything was tried: give the estimate back
                limits, self.limits = self.limits, []
                await _adjust(gateway, limits, -prompt_tokens)
            raise
        self.gate_ms = (time.perf_counter() - gate_started) * 1000
        try:
            await self._try_candidates(candidates)
        except GatewayError as error:
            exchange.status, exchange.error = error.status, error.message
            # The failed request has a record too: the client can quote its id.
            error.headers.setdefault("X-Generation-Id", exchange.generation_id)
            raise
        except asyncio.CancelledError:
            exchange.cancelled = True
            exchange.status = 499  # the client went away
            raise
        except Exception as exc:
            exchange.status, exchange.error = 500, type(exc).__name__
            raise
        finally:
            if self.writer is not None:
                self.writer.stop_heartbeat()
            try:
                await self._settle()
            finally:
                # The stream writer holds this call (its before_end is Call._settle): breaking the cycle lets
                # reference counting free a stream's objects at once instead of the cycle collector, whose passes
                # over thousands of them were the stream workload's p99 at low concurrency.
                self.writer = None

    async def _settle(self) -> None:
        """Settle the credit reservation, hand the record to the writer and correct the rate-limit counters with the
        real token count: once, just before the response's last byte goes out (or when the call ends without one).
        Nothing of this may wait until after the last byte: from then on the client may be gone, and the request's
        task cancelled with it."""
        exchange = self.exchange
        waiting = self.gateway.finish(exchange)
        if waiting is not None:
            await waiting
        held = self.limits + self.conn_limits
        if held:
            self.limits, self.conn_limits = [], []
            await _adjust(self.gateway, held, exchange.billed_usage().total_tokens - exchange.prompt_estimate)

    # -- the attempt loop ---------------------------------------------------------------------------------------------
    async def _try_candidates(self, candidates: list[Candidate]) -> None:
        """Each candidate in turn, each with up to 1 + retries attempts on its endpoint (one loop, not a helper
        per level: every coroutine frame here is passed through on each resumption of the request's task).

        A candidate whose breaker (its endpoint's or its connection's) refuses is put aside. When no candidate could
        be attempted at all, those put aside are tried anyway, ejected longest ago first (panic routing, as Envoy does
        when too few hosts are healthy), under the same retry and fallback rules: a request never fails on breakers
        alone, and the client's error is the last real upstream failure. Otherwise they are skipped, and the
        generation record lists them as such."""
        gateway = self.gateway
        health = gateway.health
        retries = gateway.config.routing.retries
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
            connection = candidate.deployment.connection
            name = connection.name
            model = candidate.deployment.model.upstream
            if not health.acquire(name, model, force=panic):
                if tried:
                    self._skipped(candidate)
                elif ejected is None:
                    ejected = [candidate]
                else:
                    ejected.append(candidate)
                continue
            conn_limits = gateway.connection_limits(name)
            if conn_limits:
                key = self.request.principal.key
                decision = await _acquire(gateway, conn_limits, self.exchange.prompt_estimate,
                                          key.priority if key else "normal")
                if not decision.allowed:
                    health.record_cancelled(name, model)  # frees a half-open probe: nothing was tried
                    self.exchange.attempts.append({"provider_name": name,
                                                   "model_permaslug": candidate.deployment.model.id, "status": 429,
                                                   "latency": None, "error": f"capacity: {decision.code}"})
                    refused = _limit_error(decision, f"connection {name}")
                    continue
                if decision is not UNCOUNTED:
                    self.conn_limits = conn_limits
            if not tried:
                tried = True
                if ejected:  # an attempt goes: no panic for this request, those stay skipped
                    for skipped in ejected:
                        self._skipped(skipped)
                    ejected = None
            attempt = 0
            try:
                while True:
                    attempt += 1
                    try:
                        await self._attempt(candidate)
                        return
                    except AttemptFailed as failed:
                        health.record_failure(name, model, status=failed.status,
                                              connection_fault=failed.connection_fault, retry_after=failed.retry_after)
                        delay = None
                        if attempt <= retries and is_retryable(failed.status):
                            delay = retry_delay(attempt, retry_after=failed.retry_after,
                                                max_wait=gateway.config.routing.max_retry_wait)
                            if delay is not None and health.ejected(name, model):
                                delay = None
                        _warn_attempt_failed(failed, name, model, attempt, delay,
                                             more=index < len(queue) or bool(ejected))
                        if delay is None:
                            raise
                        await gateway.clock.sleep(delay)
                        if not health.acquire(name, model, force=panic):
                            raise
            except AttemptFailed as failed:
                # Any upstream failure (context too long included) moves on to the next candidate.
                last = failed.error
            except asyncio.CancelledError:
                health.record_cancelled(name, model)
                raise
            finally:
                if self.conn_limits:  # not settled: this connection served nothing
                    limits, self.conn_limits = self.conn_limits, []
                    await _adjust(gateway, limits, -self.exchange.prompt_estimate)
        error = last or refused or GatewayError(503, "No upstream could serve the request")
        if last is not None and refused is not None and last.status == 503:
            error = refused
        if self.writer is not None and self.writer.started:
            await self._fail_stream(error.status, error.message, error.metadata)
            return
        raise error

    def _skipped(self, candidate: Candidate) -> None:
        self.exchange.attempts.append({"provider_name": candidate.connection,
                                       "model_permaslug": candidate.deployment.model.id, "status": None,
                                       "latency": None, "error": "skipped: circuit breaker open"})

    def _switch_to(self, candidate: Candidate) -> None:
        exchange = self.exchange
        exchange.model = candidate.deployment.model
        exchange.connection = candidate.deployment.connection
        exchange.model_id = candidate.model_id

    async def _attempt(self, candidate: Candidate) -> None:
        self._switch_to(candidate)
        exchange = self.exchange
        connection = candidate.deployment.connection
        model = candidate.deployment.model
        body = self.body if not candidate.overrides else {**self.body, **candidate.overrides}
        if self.features:
            # Never dropped silently: what this upstream cannot honour is left out and named in the response's
            # X-Crossroads-Dropped header and the record's events (provider.require_parameters excludes it instead).
            cannot = unhonoured(self.features, candidate.deployment)
            exchange.dropped = [*self.parsed.dropped, *cannot]
            if cannot:
                body = without(body, cannot)
        if model.context_length and not self.front.native_only and wants_middle_out(body, model.context_length):
            body = self._middle_out(body, model, connection.spec.max_messages)
        ctx = RequestContext(model=model, connection=connection.config, stream=self.stream,
                             media=self.gateway.media if connection.spec.fetches_media else None)
        # The front passes the client's own body through when the connection speaks its API (a route's parameter
        # overrides can only be applied to the canonical body).
        front = self.front
        translator: Translator | None
        if front.native_only:  # embeddings: the front's own translator for every connection, its renderer answers
            translator = front.native_translator(connection, ctx, self.parsed)
            if translator is None:
                raise GatewayError(400, f"Connection {connection.name!r} cannot serve this endpoint")
            self.passthrough = False
        else:
            translator = None if candidate.overrides else front.native_translator(connection, ctx, self.parsed)
            self.passthrough = translator is not None
            if translator is None:
                translator = connection.adapter.translator(ctx)
        upstream = await translator.request(body)
        # A copy: translators may hand out their adapter's shared headers, and this request's id and trace context
        # must not reach another request's upstream call.
        headers = {**upstream.headers, "X-Request-Id": self.request.request_id}
        if self.request.trace is not None:
            headers.update(self.request.trace.upstream_headers())
        upstream.headers = headers
        if connection.adapter.sign is not None:
            await connection.adapter.sign(upstream)
        self.renderer = self.front.renderer(generation_id=exchange.generation_id, model_id=candidate.model_id,
                                            provider=connection.name, parsed=self.parsed, usage=translator.usage)
        exchange.upstream_started = time.monotonic()
        exchange.upstream_ended = None
        client = connection.client
        if not self.stream:
            try:
                async with client.session.post(upstream.url, data=upstream.body, headers=upstream.headers,
                                               timeout=client.unary_timeout) as resp:
                    raw = await read_body(resp, client.max_response_bytes)
                    exchange.upstream_ended = time.monotonic()
                    if resp.status != 200:
                        self._fail_attempt(connection, resp.status, raw, resp.headers)
                    upstream_headers = resp.headers
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = transport_error(connection, exc)
                exchange.attempt(None, error.message)
                raise AttemptFailed(error, None, connection_fault=_reached_nothing(exc)) from None
            except ResponseTooLarge as exc:  # an upstream fault like an unreadable answer: retried, falls back
                error = too_large_error(connection, exc)
                exchange.attempt(200, error.message)
                raise AttemptFailed(error, 502) from None
            try:
                result = translator.response(raw)
            except UNREADABLE as exc:
                error = GatewayError(502, f"Upstream {connection.name} sent a response the gateway cannot read: "
                                          f"{connection.redact(str(exc))}",
                                     metadata={"provider_name": connection.name,
                                               "raw": _raw_excerpt(connection, raw)})
                exchange.attempt(200, error.message)
                raise AttemptFailed(error, 502) from None
            exchange.attempt(200)
            exchange.usage = translator.usage
            exchange.upstream_model = translator.upstream_model
            exchange.upstream_id = translator.upstream_id
            for choice in result.get("choices") or ():
                exchange.finish_reason = choice.get("finish_reason")
                exchange.native_finish_reason = choice.get("native_finish_reason")
                break
            self._record_success(candidate, ttft=exchange.upstream_ended - exchange.upstream_started)
            payload = raw if self.passthrough else self.renderer.completion(result, translator.usage, model.pricing)
            await self._on_complete(translator)
            await self._settle()
            await respond(self.request, 200, payload, self._headers(upstream_headers), JSON_HEADERS)
            return
        await self._stream(candidate, upstream, translator)

    def _middle_out(self, body: dict[str, Any], model: Any, max_messages: int | None) -> dict[str, Any]:
        """OpenRouter's middle-out: drop or shorten messages from the middle until the prompt fits the context."""
        requested = body.get("max_tokens") or body.get("max_completion_tokens")
        # Without max_tokens, room for a modest answer (the model's whole max output would crowd out the prompt).
        max_output = requested if isinstance(requested, int) else min(model.max_completion_tokens or 1024,
                                                                      model.context_length // 4)
        new_body, changed = middle_out(body, model.context_length, max_output=max_output,
                                       estimate=estimate_prompt_tokens,
                                       max_messages=max_messages)
        if changed:
            self.exchange.events.append({"type": "transform", "name": "middle-out", "messages": changed,
                                         "connection": self.exchange.connection.name})
        return new_body

    async def _on_complete(self, translator: Any) -> None:
        """The front's own step once the answer is whole (the Responses API stores it for previous_response_id)."""
        hook = getattr(self.renderer, "on_complete", None)
        if hook is not None:
            await hook(self.gateway.store, self.request.principal, translator)

    def _fail_attempt(self, connection: Connection, status: int, raw: bytes, headers: Any) -> None:
        status = connection.adapter.error_status(status, raw)
        error = upstream_error(connection, status, raw, headers)
        self.exchange.attempt(status, error.message)
        raise AttemptFailed(error, status, headers.get("Retry-After") if headers is not None else None)

    def _record_success(self, candidate: Candidate, *, ttft: float | None) -> None:
        exchange = self.exchange
        end = exchange.upstream_ended or time.monotonic()
        self.gateway.health.record_success(
            candidate.deployment.connection.name, candidate.deployment.model.upstream, ttft=ttft,
            output_tokens=exchange.billed_usage().completion_tokens,
            duration=end - (exchange.upstream_started or end))

    def _headers(self, upstream_headers: Any) -> list[tuple[bytes, bytes]]:
        """X-Generation-Id, what served, how long the gate and the router took, limits, metadata echoes."""
        exchange = self.exchange
        connection = exchange.connection
        out = [(b"x-generation-id", exchange.generation_id.encode()),
               (b"x-crossroads-model", _header_value(exchange.model_id)),
               (b"x-crossroads-provider", connection.config.type.encode()),
               (b"x-crossroads-connection", connection.name.encode()),
               (b"x-crossroads-gate-ms", f"{self.gate_ms:.2f}".encode()),
               (b"x-crossroads-routing-ms", f"{self.routing_ms:.2f}".encode())]
        if upstream_headers is not None:
            # X-Request-Id is the gateway's own (asgi.respond and SSEWriter.start add it); the upstream's is kept.
            request_id = upstream_headers.get("x-request-id") or upstream_headers.get("request-id")
            if request_id:
                out.append((b"x-upstream-request-id", _header_value(request_id)))
        if exchange.dropped:
            out.append((b"x-crossroads-dropped", _header_value(", ".join(exchange.dropped))))
        if self.limit_headers:
            out.extend((k.lower().encode(), v.encode()) for k, v in self.limit_headers.items())
        if upstream_headers is not None:
            names = connection.spec.rate_limit_headers
            for name, sources in ((b"x-upstream-ratelimit-limit", names.limit),
                                  (b"x-upstream-ratelimit-remaining", names.remaining),
                                  (b"x-upstream-ratelimit-reset", names.reset)):
                for source in sources:
                    value = upstream_headers.get(source)
                    if value:
                        out.append((name, _header_value(value)))
                        break
        metadata = self.body.get("metadata")
        if isinstance(metadata, dict):
            for key, value in list(metadata.items())[:16]:
                if isinstance(key, str) and isinstance(value, str | int | float | bool):
                    label = "".join(c for c in key.lower() if c.isalnum() or c in "-_")[:64]
                    if label:
                        out.append((b"x-crossroads-metadata-" + label.encode(), _header_value(str(value))))
        return out

    # -- streams --------------------------------------------------------------------------------------------------
    async def _stream(self, candidate: Candidate, upstream: Any, translator: Any) -> None:
        exchange = self.exchange
        connection = candidate.deployment.connection
        client = connection.client
        if self.writer is None:
            self.writer = SSEWriter(self.request, self.gateway.config.server.keepalive_interval, self._settle)
        writer = self.writer
        pending = asyncio.ensure_future(client.session.post(upstream.url, data=upstream.body,
                                                            headers=upstream.headers, timeout=client.stream_timeout))
        resp: aiohttp.ClientResponse | None = None
        try:
            # Wait for the upstream's headers; past the keep-alive interval, commit to a 200 stream and keep it
            # alive with comments (a later failure before any data can still retry or fall back).
            try:
                done, _ = await asyncio.wait((pending,), timeout=writer.interval)
                if not done:
                    await writer.start(self._headers(None))
                    await writer.write(PROCESSING)
                    await pending
                resp = pending.result()
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = transport_error(connection, exc)
                exchange.attempt(None, error.message)
                raise AttemptFailed(error, None, connection_fault=_reached_nothing(exc)) from None
            if resp.status != 200:
                raw = await _read_capped(resp)
                self._fail_attempt(connection, resp.status, raw, resp.headers)
            exchange.attempt(200)
            await writer.start(self._headers(resp.headers))
            try:
                finished = await self._pump(resp, translator, writer)
            except UpstreamStreamError as exc:
                await self._after_data_failure(candidate, exc.code, connection.redact(exc.message),
                                               {"provider_name": connection.name}, exc.code)
                return
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = transport_error(connection, exc)
                message = error.message if isinstance(exc, aiohttp.ClientPayloadError) \
                    else f"Upstream stream broke off: {error.message}"
                await self._after_data_failure(candidate, error.status, message, error.metadata, None)
                return
            except ResponseTooLarge as exc:
                error = too_large_error(connection, exc)
                await self._after_data_failure(candidate, 502, error.message, error.metadata, 502)
                return
            except UNREADABLE as exc:
                await self._after_data_failure(candidate, 502,
                                               f"Upstream {connection.name} sent an unreadable stream event: "
                                               f"{connection.redact(str(exc))}",
                                               {"provider_name": connection.name}, 502)
                return
            if not finished:
                await self._after_data_failure(candidate, 502,
                                               f"Upstream {connection.name} ended the stream before it finished",
                                               {"provider_name": connection.name}, 502)
                return
            self._record_success(candidate, ttft=(exchange.first_token or time.monotonic())
                                 - (exchange.upstream_started or 0.0))
            writer.stop_heartbeat()
            try:  # the record is handed over (with strict durability: committed) before the stream's end goes out
                waiting = self.gateway.finish(exchange)
                if waiting is not None:
                    await waiting
            except GatewayError as error:  # strict, not committed in time: the stream ends in error instead
                await self._fail_stream(error.status, error.message, error.metadata)
                return
            if not self.passthrough:  # a passed-through stream already carried its own ending
                await writer.write(self.renderer.end(exchange.usage, exchange.model.pricing,
                                                     exchange.finish_reason, exchange.native_finish_reason))
            await self._on_complete(translator)
            await writer.end()
        finally:
            if resp is not None:
                resp.close()  # closes the upstream connection when we stopped early (client gone, error)
            elif not pending.done():
                pending.cancel()

    async def _after_data_failure(self, candidate: Candidate, code: Any, message: str,
                                  metadata: dict[str, Any] | None, status: int | None) -> None:
        """A stream failed after it began. Before any data reached the client it is an ordinary failed attempt;
        after, OpenRouter's rule applies: no retry, the format's error chunk ends the stream."""
        if not self.writer or not self.writer.data_sent:
            error = GatewayError(code if isinstance(code, int) else 502, message, metadata=metadata)
            self.exchange.attempts[-1]["error"] = message
            raise AttemptFailed(error, status, connection_fault=False)  # the stream began: the connection works
        self.gateway.health.record_failure(candidate.deployment.connection.name, candidate.deployment.model.upstream,
                                           status=status, connection_fault=False)
        log.warning("upstream %s model %s failed mid-stream, after data reached the client (no retry): %s",
                    candidate.deployment.connection.name, candidate.deployment.model.upstream, message[:300])
        await self._fail_stream(code, message, metadata)

    async def _fail_stream(self, code: Any, message: str, metadata: dict[str, Any] | None) -> None:
        exchange = self.exchange
        exchange.error = message
        exchange.status = code if isinstance(code, int) else 502
        exchange.finish_reason = exchange.native_finish_reason = "error"
        writer = self.writer
        assert writer is not None
        writer.stop_heartbeat()
        await writer.write(self.renderer.error_chunk(exchange.status, message, metadata))
        await writer.end()

    async def _pump(self, resp: aiohttp.ClientResponse, translator: Any, writer: SSEWriter) -> bool:
        """Forward the upstream's events in the client's format; return whether a choice finished."""
        exchange = self.exchange
        renderer = self.renderer
        passthrough = self.passthrough
        finished = False
        try:
            connection = exchange.connection
            async for events in connection.adapter.events(resp, connection.client.max_response_bytes):
                out: list[bytes] = []
                try:
                    for event, data in events:
                        chunks = translator.stream_event(event, data)
                        if passthrough:
                            out.append(sse_frame(event, data))
                        for chunk in chunks:
                            finished = _observe(exchange, chunk) or finished
                            if not passthrough:
                                out.append(renderer.chunk(chunk))
                finally:
                    # Everything one network read delivered goes out in one write, even when a later event of the
                    # same read is an error: what came before it is part of the answer.
                    data_out = b"".join(out)
                    if data_out:
                        await writer.write(data_out, data=True)
            tail = b""
            for chunk in translator.finish():
                finished = _observe(exchange, chunk) or finished
                if not passthrough:
                    tail += renderer.chunk(chunk)
            if tail:
                await writer.write(tail, data=True)
        finally:
            # Whatever happened (end, error, client gone), what the upstream said so far is what gets billed.
            exchange.upstream_ended = time.monotonic()
            exchange.usage = translator.usage
            exchange.upstream_model = translator.upstream_model
            exchange.upstream_id = translator.upstream_id
        return finished


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


def _names_of(candidate: Candidate) -> tuple[str, ...]:
    """What a key's allowed_models may name to allow a candidate: the route asked for, or the model itself."""
    return (candidate.route, candidate.model_id) if candidate.route else (candidate.model_id,)


def _model_of(candidate: Candidate) -> Any:
    return candidate.deployment.model


def _observe(exchange: Exchange, chunk: dict[str, Any]) -> bool:
    """Track time to first token, how much was generated (the bill when no usage comes) and the finish reason."""
    finished = False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta:
            size = len(delta.get("content") or "") + len(delta.get("reasoning") or "")
            for call in delta.get("tool_calls") or ():
                size += len((call.get("function") or {}).get("arguments") or "")
            if size:
                if exchange.first_token is None:
                    exchange.first_token = time.monotonic()
                exchange.streamed_chars += size
        if choice.get("finish_reason"):
            finished = True
            exchange.finish_reason = choice["finish_reason"]
            exchange.native_finish_reason = choice.get("native_finish_reason")
    return finished


# What a request gets while the rate-limit store is down and routing.rate_limits_fail_open is set: allowed, counted
# nowhere (so nothing to correct afterwards), no rate-limit headers.
UNCOUNTED = Decision(allowed=True, scope=None, kind=None, limit=None, remaining=None, reset=0.0, retry_after=0.0,
                     code=None)


async def _acquire(gateway: Gateway, limits: list[Limit], tokens: int, priority: str) -> Any:
    """Count a request against its limits. When the shared counter store (Redis) is down the request is refused:
    a limit that silently stopped counting would no longer be a limit."""
    try:
        return await gateway.limiter.acquire(limits, tokens, priority)
    except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; all mean "cannot count"
        count_redis_error()
        if gateway.config.routing.rate_limits_fail_open:
            _limit_store_down.warning("rate-limit store unavailable, requests served WITHOUT rate limits "
                                      "(routing.rate_limits_fail_open): %s", type(exc).__name__)
            return UNCOUNTED
        _limit_store_down.warning("rate-limit store unavailable, requests refused with 503: %s", type(exc).__name__)
        raise GatewayError(503, "Rate limits cannot be checked right now (their store is unavailable); retry shortly",
                           metadata={"code": "rate_limit_store_unavailable"}) from None


async def _adjust(gateway: Gateway, limits: list[Limit], delta_tokens: int) -> None:
    """Replace the token estimate with the real count; best effort (the request has been answered)."""
    try:
        await gateway.limiter.adjust(limits, delta_tokens)
    except Exception as exc:  # noqa: BLE001
        count_redis_error()
        _limit_store_down.warning("could not correct token counts in the rate-limit store: %s", type(exc).__name__)


def _limit_error(decision: Any, what: str) -> GatewayError:
    code = decision.code or "resource_exhausted"
    if code == "prioritization_gate_denied":
        message = (f"Capacity of {what} is reserved for higher-priority keys right now; retry in "
                   f"{decision.retry_after:.0f} s")
    else:
        unit = "requests" if decision.kind == "rpm" else "tokens"
        message = f"Rate limit of {what} exceeded: {decision.limit} {unit} per minute; retry in " \
                  f"{decision.retry_after:.0f} s"
    return GatewayError(429, message, metadata={"code": code, "scope": decision.scope, "kind": decision.kind},
                        headers=decision.headers())


_HEADER_UNSAFE = dict.fromkeys([*range(0x20), 0x7F], None)  # control characters: invalid in an HTTP header value


def _header_value(value: str) -> bytes:
    return value.translate(_HEADER_UNSAFE).encode("latin-1", "replace")[:256]


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.content.read(_MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        return b""


class SSEWriter:
    """Sends the SSE response, starting it lazily, and keeps the connection alive while the upstream is silent."""

    __slots__ = ("request", "send", "started", "data_sent", "last_write", "interval", "_heartbeat", "before_end")

    def __init__(self, request: Request, interval: float, before_end: Callable[[], Awaitable[None]]) -> None:
        self.request = request
        self.send = request.send
        self.before_end = before_end  # runs before the final (empty) body message completes the response
        self.started = False
        self.data_sent = False  # whether anything but keep-alive comments went out (no retry after that)
        self.last_write = time.monotonic()
        self.interval = interval
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.started:
            self.started = self.request.started = True
            OpenStreams.count += 1
            self.request.status = 200
            await self.send({"type": "http.response.start", "status": 200,
                             "headers": [*SSE_HEADERS, (b"x-request-id", self.request.request_id.encode()), *headers]})
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def write(self, payload: bytes, *, data: bool = False) -> None:
        if data:
            self.data_sent = True
        await self._send(payload)

    async def end(self) -> None:
        self.stop_heartbeat()
        await self.before_end()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def _beat(self) -> None:
        # A comment line every `interval` of upstream silence, as OpenRouter does, so proxies and clients don't time
        # the connection out while a model thinks.
        while True:
            idle = time.monotonic() - self.last_write
            if idle >= self.interval:
                await self._send(PROCESSING)
                idle = 0.0
            await asyncio.sleep(self.interval - idle)

    async def _send(self, payload: bytes) -> None:
        self.last_write = time.monotonic()
        await self.send({"type": "http.response.body", "body": payload, "more_body": True})
