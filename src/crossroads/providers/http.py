"""Pooled upstream HTTP: one aiohttp session per connection, and an SSE reader for upstream streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp


class UpstreamClient:
    """One pooled aiohttp session per connection, created inside the worker's event loop on first use."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        # Non-stream: the whole exchange is bounded. Stream: connecting and each read are bounded, not the total,
        # since a long generation may legitimately stream for many minutes.
        self.unary_timeout = aiohttp.ClientTimeout(total=timeout)
        self.stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)

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


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[list[tuple[str | None, bytes]]]:
    """Yield, per network read, the complete server-sent events it finished: [(event name, data), ...].

    Working per read rather than per line keeps the Python work per event small, and lets the caller forward all
    events of one read in one write. Comments, ids and retry fields are skipped.
    """
    buffer = b""
    async for chunk in response.content.iter_any():
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
    if buffer.strip():
        parsed = _parse_block(buffer)
        if parsed is not None:
            yield [parsed]


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
