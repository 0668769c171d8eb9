"""Fake upstream servers: real HTTP servers on loopback, each speaking one provider's wire format.

A test queues `Reply` objects (what the "model" says) and `Fault`s (how the server misbehaves) and afterwards reads
`requests` to assert what the gateway sent upstream. Each server runs its own event loop in a background thread so
that the synchronous official SDKs can be used as clients in the tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass
class Reply:
    """What the fake model answers. Rendered into each provider's native shape by the fake server."""

    text: str | None = "Hello from the fake upstream."
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: str | None = None
    reasoning_signature: str | None = None
    finish: str = "stop"  # stop | length | tool_calls | content_filter (the fake maps it to its native reason)
    prompt_tokens: int = 11
    completion_tokens: int = 7
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    chunks: int = 0  # 0 = split text into words; N = split text into N pieces
    model: str | None = None  # the model name the upstream reports (default: the one requested)


@dataclass
class Fault:
    """How the next request is mishandled."""

    status: int = 200  # non-200: answer with this status and an error body in the provider's shape
    message: str = "fake failure"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response headers
    chunk_delay: float = 0.0  # seconds between stream events
    cut_after: int | None = None  # drop the connection after this many stream events
    error_event_after: int | None = None  # send the provider's in-stream error event after this many events
    body: bytes | None = None  # raw body instead of the rendered error (with status 200: instead of the answer)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class FakeUpstream:
    """Base class: subclasses add routes in `routes()` and render replies."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: deque[Reply] = deque()
        self.faults: deque[Fault] = deque()
        self.stream_closed_at: list[float] = []  # when the gateway closed a stream we were still writing
        self.request_closed_at: list[float] = []  # when the gateway hung up while we delayed the answer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- test-facing API ---------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def fault(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def reset(self) -> None:
        self.requests.clear()
        self.replies.clear()
        self.faults.clear()
        self.stream_closed_at.clear()
        self.request_closed_at.clear()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 * 1024 * 1024)
            self.routes(app)
            self._runner = web.AppRunner(app, handle_signals=False)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # -- helpers for subclasses --------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def record(self, request: web.Request) -> Recorded:
        body = await request.read()
        rec = Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        self.requests.append(rec)
        return rec

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else Reply()

    def next_fault(self) -> Fault | None:
        return self.faults.popleft() if self.faults else None

    async def before_response(self, request: web.Request, fault: Fault | None) -> None:
        """Wait out the fault's delay, noticing (in `request_closed_at`) a gateway that hangs up meanwhile."""
        if not (fault and fault.delay):
            return
        deadline = time.monotonic() + fault.delay
        while (left := deadline - time.monotonic()) > 0:
            transport = request.transport
            if transport is None or transport.is_closing():
                self.request_closed_at.append(time.monotonic())
                raise asyncio.CancelledError  # nobody to answer
            await asyncio.sleep(min(left, 0.02))

    def error_response(self, fault: Fault, body: bytes) -> web.Response:
        return web.Response(status=fault.status, body=fault.body if fault.body is not None else body,
                            headers={"Content-Type": "application/json", **fault.headers})

    async def write_sse(self, request: web.Request, events: list[bytes], fault: Fault | None,
                        error_event: bytes | None = None) -> web.StreamResponse:
        """Write pre-framed SSE events, honouring the fault's pacing, cut and in-stream error."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **(fault.headers if fault else {})})
        await resp.prepare(request)
        try:
            for n, event in enumerate(events):
                if fault and fault.cut_after is not None and n >= fault.cut_after:
                    # An abrupt end: the transport goes away without the stream's terminator.
                    request.transport.close()  # type: ignore[union-attr]
                    return resp
                if fault and fault.error_event_after is not None and n >= fault.error_event_after:
                    await resp.write(error_event or b"")
                    await resp.write_eof()
                    return resp
                if fault and fault.chunk_delay:
                    await asyncio.sleep(fault.chunk_delay)
                await resp.write(event)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.stream_closed_at.append(time.monotonic())
            raise
        return resp


def split_text(text: str, pieces: int) -> list[str]:
    """Split text into stream pieces: words (keeping spaces) or `pieces` roughly equal parts."""
    if not text:
        return []
    if pieces <= 0:
        out: list[str] = []
        for i, word in enumerate(text.split(" ")):
            out.append(word if i == 0 else " " + word)
        return [p for p in out if p]
    size = max(1, -(-len(text) // pieces))
    return [text[i:i + size] for i in range(0, len(text), size)]


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


# -- embeddings ---------------------------------------------------------------------------------------------------------
EMBEDDING_DIMENSIONS = 8  # the fakes' default vector size (a real model's is 768 to 3072: the shape is what matters)


def fake_vector(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit-ish vector for `text`: the same text always embeds the same, different texts differ."""
    import hashlib

    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128, 6) for i in range(dimensions)]


def fake_token_count(text: str) -> int:
    """What the fakes bill an input: one token per whitespace-separated word (a real tokenizer is close for English)."""
    return max(len(text.split()), 1)
