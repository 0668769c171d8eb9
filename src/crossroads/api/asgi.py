"""A minimal ASGI toolkit: the gateway's hot path needs a request's headers and body and a way to answer, nothing more
(no middleware stack, no dependency injection, no per-request object graph)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from crossroads.errors import GatewayError
from crossroads.formats.json_input import loads_bounded

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


class OpenStreams:
    """Streamed answers under way in this process (a metrics gauge): counted up when a stream starts
    (inference.SSEWriter), down when its request ends (api/app.py)."""

    count = 0


class Request:
    __slots__ = ("scope", "receive", "send", "headers", "path_params", "body", "principal", "watcher", "gone", "done",
                 "started", "request_id", "status", "exchange", "trace")

    def __init__(self, scope: Scope, receive: Receive, send: Send, path_params: dict[str, str] | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        # ASGI servers give lower-case header names; the last value of a repeated header wins.
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.path_params = path_params or {}
        self.body = b""
        self.principal: Any = None  # set by authentication (crossroads.gate.auth.Principal)
        self.watcher: Any = None  # the task waiting for the client's disconnect, while a handler runs
        self.gone = False  # the client disconnected before its answer was complete
        self.done = False  # the handler has finished
        self.started = False  # a streamed answer has begun: an error can no longer get its own response
        self.request_id = ""  # X-Request-Id: the client's when sane, else generated (observability/record.py)
        self.status = 0  # the status sent to the client, once sent
        self.exchange: Any = None  # an inference request's Exchange, once it reached the router
        self.trace: Any = None  # the request's trace handle when tracing is on (observability/tracing.py)

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.encode())
        return value.decode("latin-1") if value is not None else None

    def json(self) -> Any:
        """The body as JSON (management endpoints; the inference path has its own checks)."""
        if not self.body:
            return {}
        return loads_bounded(self.body)

    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))

    async def read_body(self, limit: int, progress: list[Any] | None = None) -> bytes:
        """The whole body, 413 past `limit` bytes. `progress`, when given, is kept at [when the last part came
        (the loop's clock), bytes so far] for a pace check (api/app.read_paced_body)."""
        length = self.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise GatewayError(413, f"Request body too large: {int(length)} bytes, the limit is {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise GatewayError(413, f"Request body too large: over {limit} bytes")
                chunks.append(chunk)
                if progress is not None:
                    progress[0] = asyncio.get_running_loop().time()
                    progress[1] = size
            if not message.get("more_body"):
                break
        self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.body


class ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


def _header_list(headers: dict[str, str] | Iterable[tuple[bytes, bytes]] | None) -> list[tuple[bytes, bytes]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return list(headers)


def request_id_headers(request: Request) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """The request's id under the name each SDK reads it from: X-Request-Id (OpenAI's, OpenRouter's; the
    `_request_id` of an openai response) and Request-Id (Anthropic's; the anthropic SDK's `_request_id` and its
    errors' `request_id`)."""
    value = request.request_id.encode()
    return (b"x-request-id", value), (b"request-id", value)


async def respond(request: Request, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                  content_type: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    """The whole answer at once, with the request's id; notes the status for the request's log line."""
    request.status = status
    send = request.send
    await send({"type": "http.response.start", "status": status,
                "headers": [*content_type, (b"content-length", str(len(body)).encode()),
                            *request_id_headers(request), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def respond_json(request: Request, status: int, payload: Any,
                       headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await respond(request, status, orjson.dumps(payload), headers)


async def respond_error(request: Request, error: GatewayError, body: bytes | None = None) -> None:
    """The error in OpenAI's shape, or `body` (an endpoint's own error shape)."""
    await respond(request, error.status, error.body() if body is None else body, _header_list(error.headers))
