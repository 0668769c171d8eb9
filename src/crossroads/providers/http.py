"""Pooled upstream HTTP: one aiohttp session per connection and a size-capped SSE reader for upstream streams (the
whole-body reader is `transport.post`'s)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024

# Events after which an upstream stream has nothing more to say: OpenAI's `[DONE]` (a data line), the last event of an
# Anthropic message and of an OpenAI Response. Gemini's streams have none: they end with the connection's body.
_FINAL_EVENTS = frozenset({"message_stop", "response.completed", "response.incomplete", "response.failed"})
_END_GRACE = 1.0  # seconds the end of a stream's body may take after its final event


class ResponseTooLarge(Exception):
    """The upstream's answer passed the connection's max_response_bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upstream's answer is larger than max_response_bytes ({limit} bytes)")
        self.limit = limit


class UpstreamClient:
    """One pooled aiohttp session per connection, created inside the worker's event loop on first use."""

    def __init__(self, timeout: float, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        # Non-stream: the whole exchange is bounded. Stream: connecting and each read are bounded, not the total,
        # since a long generation may legitimately stream for many minutes (max_response_bytes bounds its size).
        # Connecting has its own, shorter bound either way: an upstream that never accepts is known broken fast.
        self.unary_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=self.connect_timeout)
        self.stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=timeout)

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            # auto_decompress stays on; cookies would leak state between clients, so none are kept.
            session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                            skip_auto_headers=("User-Agent",))
            self._session = session
        return session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


async def iter_sse(response: aiohttp.ClientResponse,
                   limit: int | None = None) -> AsyncIterator[list[tuple[str | None, bytes]]]:
    """Yield, per network read, the complete server-sent events it finished: [(event name, data), ...].

    Working per read rather than per line keeps the Python work per event small, and lets the caller forward all
    events of one read in one write. Comments, ids and retry fields are skipped. Past `limit` bytes in all,
    ResponseTooLarge.

    The stream's final event (`[DONE]`, `_FINAL_EVENTS`) ends it: the answer is whole, and an upstream slow to end
    its body (to close the connection, when only that delimits the body) cannot hold it, nor turn it into an error.
    """
    buffer = b""
    size = 0
    content = response.content
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        if limit is not None:
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(limit)
        buffer += chunk
        if b"\r" in buffer:
            # On the whole buffer, so a CRLF split across two reads is still seen.
            buffer = buffer.replace(b"\r\n", b"\n")
        if b"\n\n" not in buffer:
            continue
        *blocks, buffer = buffer.split(b"\n\n")
        events = [parsed for block in blocks if (parsed := _parse_block(block)) is not None]
        if events:
            yield events
            name, data = events[-1]
            if data == b"[DONE]" or name in _FINAL_EVENTS:
                await _drain(response)
                return
    if buffer.strip():
        parsed = _parse_block(buffer)
        if parsed is not None:
            yield [parsed]


async def _drain(response: aiohttp.ClientResponse) -> None:
    """After a stream's final event: read to the body's end (most often already read: a chunked body's last chunk
    comes with the final event), so that the connection goes back to the pool, for at most `_END_GRACE` seconds.
    A body only the connection's close ends is not waited for: that connection cannot be reused anyway."""
    content = response.content
    if content.is_eof():
        return
    if response.content_length is None and "chunked" not in response.headers.get("Transfer-Encoding", "").lower():
        return
    try:
        async with asyncio.timeout(_END_GRACE):
            while await content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass  # the caller closes the response, and with it the connection


def _parse_block(block: bytes) -> tuple[str | None, bytes] | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return None, block[6:]  # the common case: one data line, no event name
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode("utf-8", "replace")
    if not data:
        return None
    return event, data[0] if len(data) == 1 else b"\n".join(data)
