"""Every inference endpoint: one request's way through the gateway and back, whatever the client's format.

One `Call` per request orchestrates it: the front parses the client's body (formats/), the router plans candidates
(model x connection, in try order: routing/select.py), the gate admits the request (gate/admission.py: allow-lists,
rate limits, credit), the attempt loop tries the candidates with retries, fallbacks and breakers
(routing/attempts.py), and each attempt translates the request for its connection, sends it (providers/transport.py)
and answers the client: the whole response, or the upstream's stream pumped to the client in its format (`_pump`).
Fallback and retry are possible until the first data byte reached the client; after that, a failure becomes the front
format's mid-stream error. Settlement (credit, the generation record, rate-limit counts: `Call._settle`) happens once,
before the answer's last byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from crossroads.accounting.exchange import Exchange, estimate_prompt_tokens
from crossroads.api.asgi import JSON_HEADERS, SSE_HEADERS, OpenStreams, Request, request_id_headers, respond
from crossroads.errors import GatewayError
from crossroads.formats.chat import new_generation_id
from crossroads.formats.transforms import middle_out, wants_middle_out
from crossroads.gate.admission import Counts, admissible, reserve_credit
from crossroads.gate.credits import Reservation
from crossroads.providers.base import RequestContext, Translator, UpstreamStreamError, sse_frame
from crossroads.providers.http import ResponseTooLarge
from crossroads.providers.transport import (
    UNREADABLE,
    AttemptFailed,
    failed_status,
    failed_transport,
    failed_unreadable,
    open_stream,
    post,
    read_error_body,
    too_large_error,
    transport_error,
)
from crossroads.routing.attempts import try_candidates
from crossroads.routing.features import (
    ONLINE_SUFFIX,
    requested_features,
    take_online_suffix,
    unhonoured,
    without,
)
from crossroads.routing.select import plan

if TYPE_CHECKING:
    from crossroads.api.app import Gateway
    from crossroads.api.services import Services
    from crossroads.catalog import ModelSpec
    from crossroads.formats.base import Front
    from crossroads.providers.base import UpstreamRequest
    from crossroads.routing.select import Candidate

log = logging.getLogger("crossroads.inference")
PROCESSING = b": PROCESSING\n\n"


def serve(gateway: Gateway, front: Front) -> Callable[[Request], Awaitable[None]]:
    """The endpoint handler of a front. A plain function that returns the call's coroutine: no wrapper frame that every
    resumption of the request's task would pass through."""
    services = gateway.services

    def handler(request: Request) -> Awaitable[None]:
        return Call(services, request, front).run()

    return handler


class Call:
    __slots__ = ("services", "request", "front", "parsed", "body", "exchange", "renderer", "writer", "stream",
                 "gate_ms", "routing_ms", "counts", "passthrough", "features")

    def __init__(self, services: Services, request: Request, front: Front) -> None:
        self.services = services
        self.request = request
        self.front = front
        self.writer: SSEWriter | None = None
        self.passthrough = False

    async def run(self) -> None:
        """Parse, plan, admit, attempt; settle on the way out."""
        services, request = self.services, self.request
        self.parsed = await self.front.parse(request, services.store)
        body = self.body = self.parsed.body
        model = body.get("model")
        if (isinstance(model, str) and model.endswith(ONLINE_SUFFIX)) or body.get("models"):
            take_online_suffix(body, services.is_known_model)
        self.features = requested_features(body)  # optional features some upstreams cannot honour; mostly ()
        self.stream = bool(body.get("stream"))
        principal = request.principal
        key = principal.key
        prompt_tokens = estimate_prompt_tokens(body)

        routing_started = time.perf_counter()
        candidates = plan(services.registry, services.route_table, body, headers=request.headers, key=key,
                          stats=services.health, prompt_tokens=prompt_tokens).candidates
        self.routing_ms = (time.perf_counter() - routing_started) * 1000

        gate_started = time.perf_counter()
        candidates, chain, limited = admissible(principal, candidates, services.keys.directory,
                                                scoped=services.scoped_resources, route_owner=services.route_owner,
                                                asked=model if isinstance(model, str) else None)
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
        counts = self.counts = Counts(services.limiter, services.limits, priority=key.priority if key else "normal",
                                      estimate=prompt_tokens)
        # Request-level capacity (key, route): all or nothing, before anything else is spent.
        limits = services.limits.for_request(key, first.route)
        if limits:
            await counts.count_request(limits)
        try:
            services.check_recordable()  # strict durability: 503 while records cannot be written (an attribute read)
            held = reserve_credit(services.ledger, services.fleet_credits, chain, limited, body, candidates)
            exchange.reservation = held if isinstance(held, Reservation) else await held  # no await when unlimited
        except GatewayError:
            if counts.request:  # refused before anything was tried: give the estimate back
                await counts.refund()
            raise
        self.gate_ms = (time.perf_counter() - gate_started) * 1000
        try:
            routing = services.config.routing
            error = await try_candidates(candidates, self._attempt, exchange=exchange, health=services.health,
                                         capacity=counts, retries=routing.retries,
                                         max_retry_wait=routing.max_retry_wait, sleep=services.sleep)
            if error is not None:
                if self.writer is not None and self.writer.started:
                    await self._fail_stream(error.status, error.message, error.metadata)
                else:
                    raise error
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
        waiting = self.services.finish(exchange)
        if waiting is not None:
            await waiting
        counts = self.counts
        if counts.request or counts.connection:
            await counts.settle(exchange.billed_usage().total_tokens)

    # -- one attempt ---------------------------------------------------------------------------------------------------
    async def _attempt(self, candidate: Candidate) -> None:
        """Send the request to `candidate` and answer the client; AttemptFailed (for the attempt loop) when it failed
        before anything reached the client."""
        exchange = self.exchange
        connection = candidate.deployment.connection
        model = exchange.model = candidate.deployment.model
        exchange.connection = connection
        exchange.model_id = candidate.model_id
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
        translator = self._translator(candidate)
        upstream = await translator.request(body)
        # A copy: translators may hand out their adapter's shared headers, and this request's id and trace context
        # must not reach another request's upstream call.
        headers = {**upstream.headers, "X-Request-Id": self.request.request_id}
        if self.request.trace is not None:
            headers.update(self.request.trace.upstream_headers())
        upstream.headers = headers
        if connection.adapter.sign is not None:
            await connection.adapter.sign(upstream)
        renderer = self.renderer = self.front.renderer(generation_id=exchange.generation_id,
                                                       model_id=candidate.model_id, provider=connection.name,
                                                       parsed=self.parsed, usage=translator.usage)
        exchange.upstream_started = time.monotonic()
        exchange.upstream_ended = None
        if self.stream:
            await self._stream(candidate, upstream, translator)
            return
        raw, upstream_headers = await post(connection, upstream, exchange)
        try:
            result = translator.response(raw)
        except UNREADABLE as exc:
            raise failed_unreadable(connection, exc, raw, exchange) from None
        exchange.attempt(200)
        exchange.usage = translator.usage
        exchange.upstream_model = translator.upstream_model
        exchange.upstream_id = translator.upstream_id
        for choice in result.get("choices") or ():
            exchange.finish_reason = choice.get("finish_reason")
            exchange.native_finish_reason = choice.get("native_finish_reason")
            break
        assert exchange.upstream_ended is not None  # set by `post` once the body was read
        self._record_success(candidate, ttft=exchange.upstream_ended - exchange.upstream_started)
        payload = raw if self.passthrough else renderer.completion(result, translator.usage, model.pricing)
        # The front's own step once the answer is whole (the Responses API stores it for previous_response_id).
        # Looked up here rather than in a helper coroutine: most fronts have none, and then nothing is awaited.
        on_complete = getattr(renderer, "on_complete", None)
        if on_complete is not None:
            await on_complete(self.services.store, self.request.principal, translator)
        await self._settle()
        await respond(self.request, 200, payload, self._headers(upstream_headers), JSON_HEADERS)

    def _translator(self, candidate: Candidate) -> Translator:
        """The request's translator for this connection. The front passes the client's own body through when the
        connection speaks its API (a route's parameter overrides can only be applied to the canonical body)."""
        connection = candidate.deployment.connection
        ctx = RequestContext(model=candidate.deployment.model, connection=connection.config, stream=self.stream,
                             media=self.services.media if connection.spec.fetches_media else None)
        front = self.front
        translator: Translator | None
        if front.native_only:  # embeddings: the front's own translator for every connection, its renderer answers
            translator = front.native_translator(connection, ctx, self.parsed)
            if translator is None:
                raise GatewayError(400, f"Connection {connection.name!r} cannot serve this endpoint")
            self.passthrough = False
            return translator
        translator = None if candidate.overrides else front.native_translator(connection, ctx, self.parsed)
        self.passthrough = translator is not None
        return translator if translator is not None else connection.adapter.translator(ctx)

    def _middle_out(self, body: dict[str, Any], model: ModelSpec, max_messages: int | None) -> dict[str, Any]:
        """OpenRouter's middle-out: drop or shorten messages from the middle until the prompt fits the context."""
        assert model.context_length  # the caller checked
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

    def _record_success(self, candidate: Candidate, *, ttft: float | None) -> None:
        exchange = self.exchange
        end = exchange.upstream_ended or time.monotonic()
        self.services.health.record_success(
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
            # X-Request-Id and Request-Id are the gateway's own (asgi.request_id_headers); the upstream's is kept.
            request_id = upstream_headers.get("x-request-id") or upstream_headers.get("request-id")
            if request_id:
                out.append((b"x-upstream-request-id", _header_value(request_id)))
        if exchange.dropped:
            out.append((b"x-crossroads-dropped", _header_value(", ".join(exchange.dropped))))
        limit_headers = self.counts.headers  # X-RateLimit-*: the gateway's own limits (gate/admission.py)
        if limit_headers:
            out.extend((k.lower().encode(), v.encode()) for k, v in limit_headers.items())
        if upstream_headers is not None:
            # The upstream account's limits, in the upstream's own units, under names each provider declares.
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

    # -- streams -------------------------------------------------------------------------------------------------------
    async def _stream(self, candidate: Candidate, upstream: UpstreamRequest, translator: Translator) -> None:
        exchange = self.exchange
        connection = candidate.deployment.connection
        if self.writer is None:
            self.writer = SSEWriter(self.request, self.services.config.server.keepalive_interval, self._settle)
        writer = self.writer
        pending = open_stream(connection, upstream)
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
                raise failed_transport(connection, exc, exchange) from None
            if resp.status != 200:
                raise failed_status(connection, resp.status, await read_error_body(resp), resp.headers, exchange)
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
                waiting = self.services.finish(exchange)
                if waiting is not None:
                    await waiting
            except GatewayError as error:  # strict, not committed in time: the stream ends in error instead
                await self._fail_stream(error.status, error.message, error.metadata)
                return
            if not self.passthrough:  # a passed-through stream already carried its own ending
                await writer.write(self.renderer.end(exchange.usage, exchange.model.pricing,
                                                     exchange.finish_reason, exchange.native_finish_reason))
            on_complete = getattr(self.renderer, "on_complete", None)  # as for a whole answer (_attempt)
            if on_complete is not None:
                await on_complete(self.services.store, self.request.principal, translator)
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
        self.services.health.record_failure(candidate.deployment.connection.name,
                                            candidate.deployment.model.upstream, status=status,
                                            connection_fault=False)
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


_HEADER_UNSAFE = dict.fromkeys([*range(0x20), 0x7F], None)  # control characters: invalid in an HTTP header value


def _header_value(value: str) -> bytes:
    return value.translate(_HEADER_UNSAFE).encode("latin-1", "replace")[:256]


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
                             "headers": [*SSE_HEADERS, *request_id_headers(self.request), *headers]})
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
