"""uvicorn's httptools protocol with a deadline for a request's head, so slow clients (slowloris) cannot hold
connections open: uvicorn itself has no timeout while it reads a request's head.

One timer per connection at most, armed only while something is awaited from the client:

- a new connection has `server.header_timeout` seconds to send its first request's complete head;
- on a kept-alive connection, the wait for the next request is uvicorn's `timeout_keep_alive` (closed silently,
  as before); the head's clock starts when the chunk holding its first bytes arrives without completing it (a
  head that arrives in one chunk, as nearly all do, arms nothing);
- a request the application answered before reading its whole body (an auth failure, an oversized body) has
  `server.body_timeout` seconds to finish sending that body, which is read and thrown away.

A client that sent part of a head when its time is up gets 408 in OpenRouter's error shape and the connection is
closed; one that sent nothing is closed without an answer (it is not waiting for one, and an unrequested 408 on an
idle connection could be read as the answer to the request it sends next). The body of a request the application
reads has its own idle timeout there (api/app.py), where the 408 can take the endpoint's error shape.

A head (request line and headers) larger than MAX_HEAD_BYTES is answered 431 and the connection closed, whether it is
complete (measured when its headers are) or still arriving (counted per chunk read): httptools joins a header's pieces
by copying them, so a head of many megabytes would otherwise cost seconds of the event loop and its size in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("crossroads.server")
CUT_OFF_WINDOW = 60.0  # seconds over which repeated cut-offs of one kind are summarised in one line
MAX_HEAD_BYTES = 64 * 1024  # a request line and headers larger than this get 431 (real clients send a few KB)


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over MAX_HEAD_BYTES (uvicorn then answers the request
    through `send_400_response`)."""


class SlowClientProtocol(HttpToolsProtocol):
    """uvicorn.Config(http=functools.partial(SlowClientProtocol, header_timeout=..., body_timeout=...)): a partial
    of this module-level class pickles, so it reaches the worker processes of `--workers N` too."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.deadline: asyncio.TimerHandle | None = None
        self.reading_head = False  # part of a request's head has arrived, not all of it
        self.reading_message = False  # a request has begun and its body has not all arrived
        self.head_bytes = 0  # bytes read while the current head was incomplete
        self.chunk_bytes = 0  # bytes of the chunk being parsed
        self.head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline = self.loop.call_later(self.header_timeout, self.time_is_up)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.chunk_bytes = len(data)
        super().data_received(data)
        if self.reading_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.refuse_head()
                return
        # Checked once per chunk read from the socket, after the parser has seen it: a head that is still incomplete
        # starts its clock now (unless it has one: a new connection's, which started at connect).
        if self.reading_head and self.deadline is None and not self.transport.is_closing():
            self.deadline = self.loop.call_later(self.header_timeout, self.time_is_up)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = self.reading_message = True
        self.head_bytes = 0

    def on_headers_complete(self) -> None:
        self.reading_head = False
        if self.deadline is not None:
            self.stop_clock()
        # A head is no larger than the bytes read for it (its earlier chunks, and this one): only a head that may be
        # over the bound is measured, so the common request pays one comparison.
        if self.head_bytes + self.chunk_bytes > MAX_HEAD_BYTES and \
                len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > MAX_HEAD_BYTES:
            self.head_too_large = True
            raise HeadTooLarge
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.reading_message = False
        self.stop_clock()  # the clock of an answered request's remaining body, if it had one
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before its body was all read: uvicorn reads and discards the rest, which must not take forever.
        # (Not when a pipelined request has started since: its body is the application's to read and time.)
        if (self.reading_message and self.cycle.response_complete and self.deadline is None
                and not self.transport.is_closing()):
            self.deadline = self.loop.call_later(self.body_timeout, self.time_is_up)

    def send_400_response(self, msg: str) -> None:
        # What uvicorn answers a request its parser refuses (a NUL or CR in a header, a malformed request line): the
        # same 400 and close, with a JSON error body instead of plain text.
        # The path is known when the fault is in a header, so the Messages API's clients get Anthropic's shape.
        if self.head_too_large:
            self.refuse_head()
            return
        self.stop_clock()
        self.transport.write(closing_error(400, b"Bad Request", "Invalid HTTP request: the request could not be "
                                                                "parsed", anthropic=self.for_messages_api()))
        self.transport.close()

    def for_messages_api(self) -> bool:
        """Whether the request's path, when it is known (the fault is past the request line), is the Messages API's:
        its clients read Anthropic's error shape."""
        return b"/messages" in getattr(self, "url", b"")[:4096].split(b"?", 1)[0]

    def refuse_head(self) -> None:
        self.stop_clock()
        log.debug("refused a request head of over %d bytes from %s", MAX_HEAD_BYTES,
                  self.client[0] if self.client else "unknown")
        self.transport.write(closing_error(431, b"Request Header Fields Too Large", "Request header fields too large: "
                                           f"the request line and headers are over {MAX_HEAD_BYTES} bytes",
                                           anthropic=self.for_messages_api()))
        self.transport.close()

    def stop_clock(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def time_is_up(self) -> None:
        self.deadline = None
        transport = self.transport
        if transport.is_closing():
            return
        host = self.client[0] if self.client else "unknown"
        if not self.reading_head:
            if self.reading_message:
                log.debug("closed the connection of %s: the rest of an answered request's body did not arrive "
                          "within %g s", host, self.body_timeout)
            else:
                log.debug("closed a connection from %s that sent nothing for %g s", host, self.header_timeout)
            transport.close()
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's head is late while an earlier answer is still being written: a 408 now would cut
            # into that answer, so the connection closes once it is complete instead.
            self.cycle.keep_alive = False
            return
        CUT_OFF.record("head", host, f"request head not complete within {self.header_timeout:g} s")
        transport.write(timeout_response(f"Request timeout: the request head did not arrive within "
                                         f"{self.header_timeout:g} s"))
        transport.close()


def timeout_response(message: str) -> bytes:
    """A whole `408 Request Timeout` that closes the connection, its body in OpenRouter's error shape."""
    return closing_error(408, b"Request Timeout", message)


def closing_error(status: int, reason: bytes, message: str, *, anthropic: bool = False) -> bytes:
    """A whole error answer that closes the connection, its body in OpenRouter's error shape (`anthropic`: in
    Anthropic's, for the Messages API)."""
    body = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": message}}
                        if anthropic else {"error": {"code": status, "message": message}})
    return b"".join((b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: " % (status, reason),
                     str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body))


class CutOffLog:
    """WARNING lines for slow clients cut off, flood-proof like the gate's denials (observability/hub.DenialLog): the
    first cut-off of a kind in a window is logged in full, the rest of that window are counted and summarised in one
    line when it ends. Clients are named by address only. Per process."""

    def __init__(self, window: float = CUT_OFF_WINDOW) -> None:
        self.window = window
        self._windows: dict[str, _CutOffWindow] = {}

    def record(self, kind: str, client: str, detail: str) -> None:
        now = time.monotonic()
        current = self._windows.get(kind)
        if current is None or now >= current.ends:
            if current is not None:
                current.flush()
            self._windows[kind] = _CutOffWindow(kind, now + self.window, self.window)
            log.warning("slow client %s cut off with 408: %s", client, detail)
            return
        current.add(client)

    def flush(self) -> None:
        for current in self._windows.values():
            current.flush()
        self._windows.clear()


class _CutOffWindow:
    __slots__ = ("kind", "ends", "length", "count", "clients", "timer")

    def __init__(self, kind: str, ends: float, length: float) -> None:
        self.kind, self.ends, self.length = kind, ends, length
        self.count = 0
        self.clients: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, client: str) -> None:
        self.count += 1
        if len(self.clients) < 5:
            self.clients.add(client)
        if self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self.timer = loop.call_later(max(0.0, self.ends - time.monotonic()), self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.count:
            log.warning("slow clients cut off with 408 (request %s too slow) %d more time(s) in the last %g s "
                        "(clients: %s)", self.kind, self.count, self.length, ", ".join(sorted(self.clients)))
            self.count = 0
            self.clients.clear()


CUT_OFF = CutOffLog()
