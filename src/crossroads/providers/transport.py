"""Sending an `UpstreamRequest` and reading the answer, for any provider: the transport half of one attempt.

`post` sends a non-stream request and reads its whole answer; `open_stream` starts a stream request. Whatever goes
wrong before the answer is in hand (no connection, a timeout, an answer too large, any status but 200) is noted on the
request's `Exchange` as that attempt's outcome and raised as `AttemptFailed`, which the attempt loop
(routing/attempts.py) retries or falls back on; `upstream_error` and `transport_error` say what the client sees.
Nothing here names a provider type: what differs per upstream (error classification and wording) is the adapter's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from crossroads.errors import GatewayError
from crossroads.providers.http import ResponseTooLarge

if TYPE_CHECKING:
    from crossroads.accounting.exchange import Exchange
    from crossroads.providers.base import UpstreamRequest
    from crossroads.routing.registry import Connection

MAX_ERROR_BODY = 64 * 1024  # bytes of an upstream's error answer read and quoted (the rest is not worth holding)

# What a translator raises on an upstream answer or event it cannot read: not JSON (ValueError), or JSON of another
# shape than the adapter expects (a missing key, a list where an object belongs, a string where a list belongs...).
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError)

# aiohttp >= 3.10 raises this (a TimeoutError) when the connect phase times out, total timeout included.
_CONNECT_TIMEOUT: Any = getattr(aiohttp, "ConnectionTimeoutError", ())


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


async def post(connection: Connection, upstream: UpstreamRequest,
               exchange: Exchange) -> tuple[bytes, Mapping[str, str]]:
    """Send a non-stream request; return the answer's body and headers. The body is refused past the connection's
    max_response_bytes (as decompressed): a declared, uncompressed length is checked before anything is read and the
    body then read as aiohttp does, otherwise the reads are counted as they come. Sets `exchange.upstream_ended` once
    the body is read.

    The capped read is inline rather than a helper coroutine: every frame here is passed through on each resumption
    of the request's task, and this one replaces the reader's."""
    client = connection.client
    limit = client.max_response_bytes
    try:
        async with client.session.post(upstream.url, data=upstream.body, headers=upstream.headers,
                                       timeout=client.unary_timeout) as resp:
            length = resp.content_length
            if length is not None and not resp.headers.get("Content-Encoding"):
                if length > limit:
                    raise ResponseTooLarge(limit)
                raw = await resp.read()
            else:
                parts: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise ResponseTooLarge(limit)
                    parts.append(chunk)
                raw = b"".join(parts)
            exchange.upstream_ended = time.monotonic()
            if resp.status != 200:
                raise failed_status(connection, resp.status, raw, resp.headers, exchange)
            return raw, resp.headers
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise failed_transport(connection, exc, exchange) from None
    except ResponseTooLarge as exc:  # an upstream fault like an unreadable answer: retried, falls back
        error = too_large_error(connection, exc)
        exchange.attempt(200, error.message)
        raise AttemptFailed(error, 502) from None


def open_stream(connection: Connection, upstream: UpstreamRequest) -> asyncio.Future[aiohttp.ClientResponse]:
    """Start a stream request in a task of its own, so that the caller can wait for its headers for a while and keep
    its client's stream alive meanwhile. Connecting and each read are bounded, not the total (UpstreamClient)."""
    client = connection.client
    return asyncio.ensure_future(client.session.post(upstream.url, data=upstream.body, headers=upstream.headers,
                                                     timeout=client.stream_timeout))


async def read_error_body(resp: aiohttp.ClientResponse) -> bytes:
    """The start of an error answer (MAX_ERROR_BODY), or nothing when even that cannot be read."""
    try:
        return await resp.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        return b""


def failed_status(connection: Connection, status: int, raw: bytes, headers: Mapping[str, str] | None,
            exchange: Exchange) -> AttemptFailed:
    """An answer with another status than 200, as the adapter classifies it, noted as the attempt's outcome."""
    status = connection.adapter.error_status(status, raw)
    error = upstream_error(connection, status, raw, headers)
    exchange.attempt(status, error.message)
    return AttemptFailed(error, status, headers.get("Retry-After") if headers is not None else None)


def failed_transport(connection: Connection, exc: BaseException, exchange: Exchange) -> AttemptFailed:
    """A transport error before the answer was in hand (no connection, a timeout, a body that broke off), noted as
    the attempt's outcome; the connection's breaker counts it when nothing was reached at all."""
    error = transport_error(connection, exc)
    exchange.attempt(None, error.message)
    return AttemptFailed(error, None, connection_fault=reached_nothing(exc))


def failed_unreadable(connection: Connection, exc: Exception, raw: bytes, exchange: Exchange) -> AttemptFailed:
    """A 200 whose body the translator cannot read: an upstream fault (502), retried and fallen back on."""
    error = GatewayError(502, f"Upstream {connection.name} sent a response the gateway cannot read: "
                              f"{connection.redact(str(exc))}",
                         metadata={"provider_name": connection.name, "raw": raw_excerpt(connection, raw)})
    exchange.attempt(200, error.message)
    return AttemptFailed(error, 502)


def reached_nothing(exc: BaseException) -> bool:
    """Whether a transport error means the connection itself is broken (connect refused or timed out, reset or
    closed before any response, DNS, TLS): a connection-level fault for the breakers. A timeout waiting for the
    response once connected, or a body that broke off after the headers, is the endpoint's (a slow or stuck model)."""
    if isinstance(exc, TimeoutError):
        return isinstance(exc, _CONNECT_TIMEOUT)
    return not isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientResponseError))


def upstream_error(connection: Connection, status: int, raw: bytes,
                   headers: Mapping[str, str] | None = None) -> GatewayError:
    """Map an upstream's HTTP error to the status the client sees, keeping its body (secrets removed). `status` is
    what the adapter classified the error as (Adapter.error_status)."""
    message = connection.redact(connection.adapter.error_message(status, raw))
    metadata = {"provider_name": connection.name, "raw": raw_excerpt(connection, raw)}
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


def raw_excerpt(connection: Connection, raw: bytes) -> str:
    return connection.redact(raw[:MAX_ERROR_BODY].decode("utf-8", "replace"))


def transport_error(connection: Connection, exc: BaseException) -> GatewayError:
    metadata = {"provider_name": connection.name, "raw": None}
    if isinstance(exc, _CONNECT_TIMEOUT):  # nothing answered: as unreachable as a refused connection
        return GatewayError(502, f"Could not reach upstream {connection.name}: no connection within "
                                 f"{connection.client.connect_timeout:g} s", metadata=metadata)
    if isinstance(exc, TimeoutError):
        return GatewayError(408, f"Upstream {connection.name} timed out after {connection.config.timeout:g} s",
                            metadata=metadata)
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ClientSSLError):
        # aiohttp's own wording names its default TLS setting ("ssl:default") even for a plain-http upstream.
        cause = exc.os_error
        # A refusal's own text repeats the address ("Connect call failed ('127.0.0.1', 9)"): the errno's says it.
        reason = os.strerror(cause.errno) if isinstance(cause.errno, int) and cause.errno > 0 else \
            cause.strerror or str(cause) or type(cause).__name__
        detail = connection.redact(f"cannot connect to {exc.host}:{exc.port} ({reason})")
    else:
        detail = connection.redact(str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientPayloadError):  # it answered, then its body broke off
        return GatewayError(502, f"Upstream {connection.name} broke off its response: {detail}", metadata=metadata)
    return GatewayError(502, f"Could not reach upstream {connection.name}: {detail}", metadata=metadata)


def too_large_error(connection: Connection, exc: ResponseTooLarge) -> GatewayError:
    return GatewayError(502, f"Upstream {connection.name} sent more than its max_response_bytes "
                             f"({exc.limit} bytes)", metadata={"provider_name": connection.name, "raw": None})
