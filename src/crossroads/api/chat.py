"""POST /api/v1/chat/completions: front format -> gate -> router -> provider adapter -> upstream, and back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from crossroads.accounting.exchange import Exchange, estimate_prompt_tokens, worst_case_output
from crossroads.api.asgi import JSON_HEADERS, SSE_HEADERS, Request, respond
from crossroads.errors import GatewayError, redact
from crossroads.formats.chat import ChatRenderer, new_generation_id, parse_chat_request, wants_reasoning
from crossroads.gate.auth import require_inference
from crossroads.providers.base import RequestContext, UpstreamStreamError
from crossroads.providers.http import iter_sse

if TYPE_CHECKING:
    from crossroads.api.app import Gateway
    from crossroads.routing.registry import Connection

_MAX_ERROR_BODY = 64 * 1024
PROCESSING = b": PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"


def upstream_error(connection: Connection, status: int, raw: bytes, headers: Any = None) -> GatewayError:
    """Map an upstream's HTTP error to the status the client sees, keeping its body (secrets removed)."""
    message = connection.adapter.error_message(status, raw)
    secrets = [connection.config.api_key, *connection.config.headers.values()]
    metadata = {"provider_name": connection.name, "raw": redact(raw[:_MAX_ERROR_BODY].decode("utf-8", "replace"),
                                                                secrets)}
    message = redact(message, secrets)
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
    return GatewayError(502, f"Upstream {connection.name} failed (HTTP {status}): {message}", metadata=metadata)


def transport_error(connection: Connection, exc: BaseException) -> GatewayError:
    metadata = {"provider_name": connection.name, "raw": None}
    if isinstance(exc, asyncio.TimeoutError):
        return GatewayError(408, f"Upstream {connection.name} timed out after {connection.config.timeout:g} s",
                            metadata=metadata)
    detail = redact(str(exc) or type(exc).__name__, [connection.config.api_key])
    return GatewayError(502, f"Could not reach upstream {connection.name}: {detail}", metadata=metadata)


async def chat_completions(gateway: Gateway, request: Request) -> None:
    body = parse_chat_request(request.body)
    deployment = gateway.registry.resolve(body["model"])
    require_inference(request.principal, deployment.model.id)
    connection = deployment.connection
    model = deployment.model
    stream = bool(body.get("stream"))
    user = body.get("user") if isinstance(body.get("user"), str) else None
    exchange = Exchange(new_generation_id(), request.principal, model, connection, stream=stream,
                        headers=request.headers, user=user, prompt_estimate=estimate_prompt_tokens(body))
    pricing = model.pricing
    prompt_cost = exchange.prompt_estimate * pricing.prompt + pricing.request
    worst_case = prompt_cost + worst_case_output(body, model) * pricing.completion
    exchange.reservation = gateway.ledger.reserve(request.principal.key, worst_case, prompt_cost=prompt_cost,
                                                  completion_price=pricing.completion)
    try:
        await _exchange(gateway, request, body, exchange)
    except GatewayError as error:
        exchange.status, exchange.error = error.status, error.message
        raise
    except asyncio.CancelledError:
        exchange.cancelled = True
        exchange.status = 499  # the client went away
        raise
    except Exception as exc:
        exchange.status, exchange.error = 500, type(exc).__name__
        raise
    finally:
        await gateway.finish(exchange)


async def _exchange(gateway: Gateway, request: Request, body: dict[str, Any], exchange: Exchange) -> None:
    connection = exchange.connection
    ctx = RequestContext(model=exchange.model, connection=connection.config, stream=exchange.stream,
                         media=gateway.media if connection.config.type != "openai" else None)
    translator = connection.adapter.translator(ctx)
    upstream = await translator.request(body)
    renderer = ChatRenderer(exchange.generation_id, exchange.model.id, connection.name,
                            include_reasoning=wants_reasoning(body))
    extra_headers = [(b"x-generation-id", renderer.generation_id.encode())]
    client = connection.client
    exchange.upstream_started = time.monotonic()
    if not exchange.stream:
        try:
            async with client.session.post(upstream.url, data=upstream.body, headers=upstream.headers,
                                           timeout=client.unary_timeout) as resp:
                raw = await resp.read()
                exchange.upstream_ended = time.monotonic()
                if resp.status != 200:
                    error = upstream_error(connection, resp.status, raw, resp.headers)
                    exchange.attempt(resp.status, error.message)
                    raise error
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = transport_error(connection, exc)
            exchange.attempt(None, error.message)
            raise error from None
        exchange.attempt(200)
        try:
            result = translator.response(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise GatewayError(502, f"Upstream {connection.name} sent a response the gateway cannot read: {exc}",
                               metadata={"provider_name": connection.name,
                                         "raw": redact(raw[:_MAX_ERROR_BODY].decode("utf-8", "replace"),
                                                       [connection.config.api_key])}) from None
        _note_result(exchange, translator, result.get("choices") or ())
        payload = renderer.completion(result, translator.usage, exchange.model.pricing)
        await gateway.finish(exchange)
        await respond(request.send, 200, payload, extra_headers, JSON_HEADERS)
        return
    await _stream(gateway, request, connection, upstream, translator, renderer, exchange, extra_headers)


def _note_result(exchange: Exchange, translator: Any, choices: Any) -> None:
    exchange.usage = translator.usage
    exchange.upstream_model = translator.upstream_model
    exchange.upstream_id = translator.upstream_id
    for choice in choices:
        exchange.finish_reason = choice.get("finish_reason")
        exchange.native_finish_reason = choice.get("native_finish_reason")
        break


class _SSEWriter:
    """Sends the SSE response, starting it lazily, and keeps the connection alive while the upstream is silent."""

    __slots__ = ("send", "headers", "started", "last_write", "interval", "_heartbeat", "before_end")

    def __init__(self, send: Any, headers: list[tuple[bytes, bytes]], interval: float,
                 before_end: Callable[[], Awaitable[None]]) -> None:
        self.send = send
        self.before_end = before_end  # runs before the final (empty) body message completes the response
        self.headers = headers
        self.started = False
        self.last_write = time.monotonic()
        self.interval = interval
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *self.headers]})
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def write(self, data: bytes) -> None:
        self.last_write = time.monotonic()
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def _beat(self) -> None:
        # A comment line every `interval` of upstream silence, as OpenRouter does, so proxies and clients
        # don't time the connection out while a model thinks.
        while True:
            idle = time.monotonic() - self.last_write
            if idle >= self.interval:
                await self.write(PROCESSING)
                idle = 0.0
            await asyncio.sleep(self.interval - idle)

    async def end(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.before_end()
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()


async def _stream(gateway: Gateway, request: Request, connection: Connection, upstream: Any, translator: Any,
                  renderer: ChatRenderer, exchange: Exchange, extra_headers: list[tuple[bytes, bytes]]) -> None:
    client = connection.client
    writer = _SSEWriter(request.send, extra_headers, gateway.config.server.keepalive_interval,
                        lambda: gateway.finish(exchange))
    pending = asyncio.ensure_future(client.session.post(upstream.url, data=upstream.body, headers=upstream.headers,
                                                        timeout=client.stream_timeout))
    resp: aiohttp.ClientResponse | None = None
    try:
        # Wait for the upstream's headers; past the keep-alive interval, commit to a 200 stream and keep it alive.
        try:
            done, _ = await asyncio.wait((pending,), timeout=writer.interval)
            if not done:
                await writer.start()
                await writer.write(PROCESSING)
                await pending
            resp = pending.result()
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = transport_error(connection, exc)
            exchange.attempt(None, error.message)
            if not writer.started:
                raise error from None
            await _fail_stream(writer, renderer, exchange, error.code, error.message, error.metadata)
            return
        if resp.status != 200:
            raw = await _read_capped(resp)
            error = upstream_error(connection, resp.status, raw, resp.headers)
            exchange.attempt(resp.status, error.message)
            if not writer.started:
                raise error
            await _fail_stream(writer, renderer, exchange, error.code, error.message, error.metadata)
            return
        exchange.attempt(200)
        await writer.start()
        try:
            finished = await _pump(resp, translator, renderer, writer, exchange)
        except UpstreamStreamError as exc:
            await _fail_stream(writer, renderer, exchange, exc.code,
                               redact(exc.message, [connection.config.api_key]), {"provider_name": connection.name})
            return
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = transport_error(connection, exc)
            await _fail_stream(writer, renderer, exchange, error.code, f"Upstream stream broke off: {error.message}",
                               error.metadata)
            return
        except (ValueError, KeyError, TypeError) as exc:
            await _fail_stream(writer, renderer, exchange, 502,
                               f"Upstream {connection.name} sent an unreadable stream event: {exc}",
                               {"provider_name": connection.name})
            return
        if not finished:
            await _fail_stream(writer, renderer, exchange, 502,
                               f"Upstream {connection.name} ended the stream before it finished",
                               {"provider_name": connection.name})
            return
        writer.stop_heartbeat()
        await writer.write(renderer.usage_chunk(exchange.usage, exchange.model.pricing))
        await writer.write(DONE)
        await writer.end()
    finally:
        writer.stop_heartbeat()
        if resp is not None:
            resp.close()  # closes the upstream connection when we stopped early (client gone, error)
        elif not pending.done():
            pending.cancel()


async def _pump(resp: aiohttp.ClientResponse, translator: Any, renderer: ChatRenderer, writer: _SSEWriter,
                exchange: Exchange) -> bool:
    """Forward the upstream's events as chat chunks; return whether a choice finished."""
    finished = False
    try:
        async for events in iter_sse(resp):
            out: list[bytes] = []
            for event, data in events:
                for chunk in translator.stream_event(event, data):
                    finished = _observe(exchange, chunk) or finished
                    out.append(renderer.chunk(chunk))
            if out:
                # Everything one network read delivered goes out in one write.
                await writer.write(out[0] if len(out) == 1 else b"".join(out))
        for chunk in translator.finish():
            finished = _observe(exchange, chunk) or finished
            await writer.write(renderer.chunk(chunk))
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


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    try:
        return await resp.content.read(_MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        return b""


async def _fail_stream(writer: _SSEWriter, renderer: ChatRenderer, exchange: Exchange, code: int | str,
                       message: str, metadata: dict[str, Any] | None) -> None:
    """OpenRouter's mid-stream error: one chunk with `error` and finish_reason "error", then the stream ends."""
    exchange.error = message
    exchange.status = code if isinstance(code, int) else 502
    exchange.finish_reason = exchange.native_finish_reason = "error"
    writer.stop_heartbeat()
    await writer.write(renderer.error_chunk(code, message, metadata))
    await writer.end()
