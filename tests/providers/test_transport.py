"""providers/transport.py without a gateway: how upstream answers and transport errors become the client's error and
the attempt's record, and `post` against a small local server (sizes, statuses, a refused connection)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from crossroads.accounting.exchange import Exchange
from crossroads.catalog import ModelSpec, Pricing
from crossroads.config import ConnectionConfig
from crossroads.gate.auth import Principal
from crossroads.providers.base import UpstreamRequest
from crossroads.providers.http import ResponseTooLarge, UpstreamClient
from crossroads.providers.registry import make_adapter
from crossroads.providers.transport import (
    MAX_ERROR_BODY,
    AttemptFailed,
    failed_status,
    failed_transport,
    failed_unreadable,
    post,
    too_large_error,
    transport_error,
    upstream_error,
)
from crossroads.routing.registry import Connection

SECRET = "sk-upstream-" + "s" * 40


def connection(base_url: str = "http://127.0.0.1:9/v1", max_response_bytes: int = 1024) -> Connection:
    config = ConnectionConfig(name="up", type="openai", base_url=base_url, api_key=SECRET, timeout=5.0)
    return Connection(config, make_adapter(config), UpstreamClient(5.0, 1.0, max_response_bytes))


def exchange(conn: Connection) -> Exchange:
    model = ModelSpec(id="vendor/model", upstream="model", pricing=Pricing(prompt=1e-6, completion=2e-6))
    return Exchange("gen-1", Principal(kind="master"), model, conn, stream=False, headers={}, user=None,
                    prompt_estimate=10)


@pytest.mark.parametrize(("upstream", "client", "says"), [
    (429, 429, "Rate limited by upstream up"),
    (408, 408, "Upstream up timed out"),
    (400, 400, "Upstream up rejected the request"),
    (413, 400, "Upstream up rejected the request"),
    (422, 400, "Upstream up rejected the request"),
    (401, 502, "refused the gateway's credentials (HTTP 401)"),
    (403, 502, "refused the gateway's credentials (HTTP 403)"),
    (500, 502, "Upstream up failed (HTTP 500)"),
    (503, 502, "Upstream up failed (HTTP 503)"),
    (404, 502, "Upstream up failed (HTTP 404)"),
])
def test_upstream_statuses_map_to_what_the_client_sees(upstream: int, client: int, says: str) -> None:
    error = upstream_error(connection(), upstream, b'{"error": {"message": "nope"}}')
    assert error.status == client
    assert says in error.message and "nope" in error.message
    assert error.metadata is not None and error.metadata["provider_name"] == "up"


def test_a_429_passes_retry_after_on_and_secrets_never_leave() -> None:
    raw = f'{{"error": {{"message": "slow down, {SECRET}"}}}}'.encode() + b"x" * (2 * MAX_ERROR_BODY)
    error = upstream_error(connection(), 429, raw, {"Retry-After": "7"})
    assert error.headers == {"Retry-After": "7"}
    assert SECRET not in error.message
    assert error.metadata is not None
    assert SECRET not in error.metadata["raw"] and len(error.metadata["raw"]) <= MAX_ERROR_BODY
    assert upstream_error(connection(), 429, b"{}").headers == {}


def test_transport_errors_say_what_happened() -> None:
    conn = connection()
    refused = transport_error(conn, aiohttp.ClientOSError(111, "Connection refused"))
    assert (refused.status, refused.message) == (502, "Could not reach upstream up: [Errno 111] Connection refused")
    connect = transport_error(conn, aiohttp.ConnectionTimeoutError("connect"))
    assert (connect.status, connect.message) == (502, "Could not reach upstream up: no connection within 1 s")
    slow = transport_error(conn, TimeoutError())
    assert (slow.status, slow.message) == (408, "Upstream up timed out after 5 s")
    cut = transport_error(conn, aiohttp.ClientPayloadError("cut"))
    assert (cut.status, cut.message) == (502, "Upstream up broke off its response: cut")
    large = too_large_error(conn, ResponseTooLarge(1024))
    assert (large.status, large.message) == (502, "Upstream up sent more than its max_response_bytes (1024 bytes)")


async def test_connection_failures_name_the_address_and_the_reason() -> None:
    # Real failures from aiohttp: a refused port and a name that does not resolve. Its own wording says
    # "ssl:default" for a plain-http upstream; the gateway's says what failed.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        async with aiohttp.ClientSession() as session:
            for url, expected in ((f"http://127.0.0.1:{port}/v1",
                                   f"cannot connect to 127.0.0.1:{port} (Connection refused)"),
                                  ("http://upstream.invalid:8000/v1", "cannot connect to upstream.invalid:8000 (")):
                with pytest.raises(aiohttp.ClientConnectorError) as raised:
                    await session.get(url)
                error = transport_error(connection(), raised.value)
                assert error.status == 502 and error.message.startswith(f"Could not reach upstream up: {expected}"), \
                    error.message
                assert "ssl:default" not in error.message


def test_failures_are_recorded_as_the_attempts_outcome() -> None:
    conn = connection()
    ex = exchange(conn)
    failed = failed_status(conn, 429, b'{"error": {"message": "busy"}}', {"Retry-After": "2"}, ex)
    assert (failed.status, failed.retry_after, failed.connection_fault, failed.error.status) == (429, "2", None, 429)
    unreached = failed_transport(conn, aiohttp.ServerDisconnectedError(), ex)
    assert (unreached.status, unreached.connection_fault) == (None, True)
    slow = failed_transport(conn, TimeoutError(), ex)
    assert (slow.status, slow.connection_fault) == (None, False)  # connected, then slow: the endpoint's fault
    unreadable = failed_unreadable(conn, ValueError("not JSON"), b"<html>", ex)
    assert (unreadable.status, unreadable.error.status) == (502, 502)
    assert [(a["status"], a["error"][:30]) for a in ex.attempts] == [
        (429, "Rate limited by upstream up: b"), (None, "Could not reach upstream up: S"),
        (None, "Upstream up timed out after 5 "), (200, "Upstream up sent a response th")]


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[str]:
    """A local upstream on this test's event loop: /ok, /big (a declared length past the cap), /chunked (no length,
    past the cap), anything else a 503 with Retry-After."""
    async def answer(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        if kind == "ok":
            return web.json_response({"choices": []}, headers={"x-request-id": "up-1"})
        if kind == "big":
            return web.Response(body=b"x" * 4096)
        if kind == "chunked":  # no declared length: counted as it is read
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(8):
                await resp.write(b"y" * 512)
            await resp.write_eof()
            return resp
        return web.json_response({"error": {"message": "overloaded"}}, status=503, headers={"Retry-After": "1"})

    app = web.Application()
    app.router.add_post("/v1/{kind}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_post_reads_the_answer_and_refuses_what_it_must() -> None:
    async with serving() as upstream:
        await _post_cases(upstream)


async def _post_cases(upstream: str) -> None:
    conn = connection(upstream)
    try:
        ex = exchange(conn)
        ex.upstream_started = ex.started
        raw, headers = await post(conn, UpstreamRequest(f"{upstream}/ok", b"{}"), ex)
        assert raw == b'{"choices": []}' and headers["x-request-id"] == "up-1"
        assert ex.upstream_ended is not None and ex.attempts == []  # success is the caller's to record
        for kind, status, fault in (("big", 502, None), ("chunked", 502, None), ("busy", 503, None)):
            with pytest.raises(AttemptFailed) as raised:
                await post(conn, UpstreamRequest(f"{upstream}/{kind}", b"{}"), ex)
            assert (raised.value.status, raised.value.connection_fault) == (status, fault), kind
        assert raised.value.retry_after == "1"
        assert [a["status"] for a in ex.attempts] == [200, 200, 503]  # too large: an unusable 200
    finally:
        await conn.client.close()


async def test_post_to_nothing_is_a_connection_fault() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = connection(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(AttemptFailed) as raised:
            await post(conn, UpstreamRequest(f"http://127.0.0.1:{port}/v1/ok", b"{}"), exchange(conn))
        assert (raised.value.status, raised.value.connection_fault) == (None, True)
        assert raised.value.error.message.startswith("Could not reach upstream up")
    finally:
        await conn.client.close()
