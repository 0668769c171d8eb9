"""MediaFetcher against a real aiohttp server on 127.0.0.1.

Host names are answered by a fake getaddrinfo patched onto the running loop, so every name used here
maps to 127.0.0.1 (or a refused literal) and no traffic ever leaves 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiohttp import web

from crossroads.net.fetch import FetchError, MediaFetcher, parse_data_url

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
PDF = b"%PDF-1.7\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 10
CAP = 100_000

module_loop = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Server:
    port: int
    hosts_seen: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[Server]:
    state = Server(port=0)

    async def png(request: web.Request) -> web.Response:
        state.hosts_seen.append(request.headers.get("Host", ""))
        return web.Response(body=PNG, content_type="image/png")

    async def pdf(request: web.Request) -> web.Response:
        return web.Response(body=PDF, headers={"Content-Type": "application/pdf; qs=0.9"})

    async def untyped(request: web.Request) -> web.Response:
        # Object stores label everything octet-stream; the fetcher should sniff instead.
        return web.Response(body=PDF, headers={"Content-Type": "application/octet-stream"})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (CAP * 2), content_type="application/octet-stream")

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(32):
                await resp.write(b"y" * 16_384)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up once it passed the cap, as it should
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(body=PNG, content_type="image/png")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="nope")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = web.Application()
    app.router.add_get("/png", png)
    app.router.add_get("/pdf", pdf)
    app.router.add_get("/untyped", untyped)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/missing", missing)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop)

    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    # Bind ourselves so the random port is known without reaching into the site's internals.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    state.port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield state
    finally:
        await runner.cleanup()


Answer = list[str] | Callable[[], list[str]]


@pytest_asyncio.fixture(loop_scope="module")
async def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, Answer]:
    """A fake resolver table installed on the running loop; unknown names fail like NXDOMAIN."""
    table: dict[str, Answer] = {"localhost": ["127.0.0.1"]}
    loop = asyncio.get_running_loop()

    async def fake_getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        answer = table.get(host.rstrip(".") if isinstance(host, str) else host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addrs = answer() if callable(answer) else answer
        out = []
        for ip in addrs:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    return table


async def fetch(url: str, **kwargs) -> object:
    fetcher = MediaFetcher(**kwargs)
    try:
        return await fetcher.fetch(url)
    finally:
        await fetcher.close()


async def refused(url: str, **kwargs) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetch(url, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------------
# Address policy


@module_loop
async def test_loopback_refused_without_allow_list(server: Server) -> None:
    err = await refused(server.url("/png"))
    assert err.status == 400
    assert "not allowed" in err.message
    assert "Traceback" not in err.message


@module_loop
async def test_loopback_allowed_by_cidr(server: Server) -> None:
    media = await fetch(server.url("/png"), allow=["127.0.0.0/8"])
    assert media.data == PNG
    assert media.mime_type == "image/png"


@module_loop
async def test_pdf_mime_parameters_stripped(server: Server) -> None:
    media = await fetch(server.url("/pdf"), allow=["127.0.0.0/8"])
    assert media.data == PDF
    assert media.mime_type == "application/pdf"


@module_loop
async def test_generic_content_type_is_sniffed(server: Server) -> None:
    media = await fetch(server.url("/untyped"), allow=["127.0.0.0/8"])
    assert media.mime_type == "application/pdf"


@module_loop
async def test_host_name_resolving_to_loopback_refused(server: Server, dns: dict[str, Answer]) -> None:
    dns["media.example"] = ["127.0.0.1"]
    err = await refused(server.url("/png", host="media.example"))
    assert err.status == 400 and "not allowed" in err.message


@module_loop
async def test_any_bad_address_refuses_the_host(server: Server, dns: dict[str, Answer]) -> None:
    # Only one of the answers is internal, but the connector could pick it, so the whole host is refused.
    dns["mixed.example"] = ["127.0.0.1", "10.1.2.3"]
    err = await refused(server.url("/png", host="mixed.example"), allow=["127.0.0.0/8"])
    assert err.status == 400


@module_loop
async def test_allowed_name_keeps_host_header(server: Server, dns: dict[str, Answer]) -> None:
    dns["images.internal"] = ["127.0.0.1"]
    media = await fetch(server.url("/png", host="images.internal"), allow=["images.internal"])
    assert media.data == PNG
    assert server.hosts_seen[-1] == f"images.internal:{server.port}"


@module_loop
async def test_connects_to_the_vetted_answer(server: Server, dns: dict[str, Answer]) -> None:
    # A rebinding resolver: the first answer is allowed, any later one points somewhere that is not.
    # The fetch must connect using the answer that was checked, i.e. resolve exactly once.
    calls: list[str] = []

    def rebinding() -> list[str]:
        calls.append("q")
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    dns["rebind.example"] = rebinding
    media = await fetch(server.url("/png", host="rebind.example"), allow=["127.0.0.1/32"])
    assert media.data == PNG
    assert len(calls) == 1


@module_loop
async def test_redirect_to_loopback_refused(server: Server, dns: dict[str, Answer]) -> None:
    # "localhost" is allowed by name; the redirect target 127.0.0.1 is not covered by any entry.
    target = server.url("/png")
    start = server.url(f"/redirect?to={target}", host="localhost")
    err = await refused(start, allow=["localhost"])
    assert err.status == 400 and "not allowed" in err.message


@module_loop
async def test_redirect_followed_when_allowed(server: Server, dns: dict[str, Answer]) -> None:
    target = server.url("/png")
    start = server.url(f"/redirect?to={target}", host="localhost")
    media = await fetch(start, allow=["localhost", "127.0.0.1/32"])
    assert media.data == PNG


@module_loop
async def test_redirect_to_other_scheme_refused(server: Server) -> None:
    start = server.url("/redirect?to=file:///etc/passwd")
    err = await refused(start, allow=["127.0.0.0/8"])
    assert err.status == 400 and "scheme" in err.message


@module_loop
async def test_too_many_redirects(server: Server) -> None:
    err = await refused(server.url("/loop"), allow=["127.0.0.0/8"], max_redirects=2)
    assert err.status == 502 and "redirect" in err.message


@module_loop
@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/file.png", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)"],
)
async def test_unsupported_schemes(url: str) -> None:
    err = await refused(url, allow=["127.0.0.0/8"])
    assert err.status == 400
    assert err.message.startswith("unsupported URL scheme")


@module_loop
@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",
        "http://172.16.5.4/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/x.png",
        "http://0.0.0.0/x.png",
        "http://0.1.2.3/x.png",
        "http://224.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://[::ffff:10.0.0.1]/x.png",
        "http://[64:ff9b::7f00:1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[fd00::1]/x.png",
        "https://127.0.0.1/x.png",
    ],
)
async def test_internal_literals_refused(url: str) -> None:
    # Literals are vetted before any connection, so none of these sends a packet anywhere.
    err = await refused(url)
    assert err.status == 400
    assert "not allowed" in err.message


@module_loop
@pytest.mark.parametrize("url", ["http://2130706433/x.png", "http://127.1/x.png", "http://0177.0.0.1/x.png"])
async def test_non_canonical_ipv4_refused(url: str) -> None:
    err = await refused(url, allow=["127.0.0.0/8"])
    assert err.status == 400


@module_loop
async def test_credentials_refused() -> None:
    err = await refused("http://user:pass@127.0.0.1/x.png", allow=["127.0.0.0/8"])
    assert err.status == 400 and "credentials" in err.message


@module_loop
async def test_unresolvable_host(dns: dict[str, Answer]) -> None:
    err = await refused("http://nowhere.invalid/x.png")
    assert err.status == 400 and "resolve" in err.message


# ---------------------------------------------------------------------------------------------------
# Size, time and remote failures


@module_loop
async def test_content_length_over_cap_refused(server: Server) -> None:
    err = await refused(server.url("/big"), allow=["127.0.0.0/8"], max_bytes=CAP)
    assert err.status == 400
    assert str(CAP) in err.message


@module_loop
async def test_chunked_body_over_cap_refused(server: Server) -> None:
    err = await refused(server.url("/chunked"), allow=["127.0.0.0/8"], max_bytes=CAP)
    assert err.status == 400
    assert str(CAP) in err.message


@module_loop
async def test_chunked_body_under_cap_ok(server: Server) -> None:
    media = await fetch(server.url("/chunked"), allow=["127.0.0.0/8"], max_bytes=CAP * 10)
    assert len(media.data) == 32 * 16_384


@module_loop
async def test_timeout_is_408(server: Server) -> None:
    err = await refused(server.url("/slow"), allow=["127.0.0.0/8"], timeout=0.2)
    assert err.status == 408


@module_loop
async def test_remote_404_is_502(server: Server) -> None:
    err = await refused(server.url("/missing"), allow=["127.0.0.0/8"])
    assert err.status == 502
    assert "404" in err.message


@module_loop
async def test_session_is_pooled_and_closed(server: Server) -> None:
    fetcher = MediaFetcher(allow=["127.0.0.0/8"])
    try:
        first = await fetcher.fetch(server.url("/png"))
        second = await fetcher.fetch(server.url("/pdf"))
        assert (first.mime_type, second.mime_type) == ("image/png", "application/pdf")
    finally:
        await fetcher.close()
    await fetcher.close()  # idempotent


# ---------------------------------------------------------------------------------------------------
# data: URLs


def test_data_url_valid() -> None:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    media = parse_data_url(url)
    assert media is not None
    assert media.data == PNG and media.mime_type == "image/png"


def test_data_url_missing_padding_and_no_mime() -> None:
    encoded = base64.b64encode(PDF).decode().rstrip("=")
    media = parse_data_url("data:;base64," + encoded)
    assert media is not None
    assert media.data == PDF and media.mime_type == "application/pdf"


@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64", "data:image/png;base64,@@@not-base64@@@", "data:png;base64,AAAA"],
)
def test_data_url_malformed(url: str) -> None:
    with pytest.raises(FetchError) as info:
        parse_data_url(url)
    assert info.value.status == 400


@pytest.mark.parametrize("url", ["https://example.com/a.png", "http://x/y", "", "datax:foo"])
def test_not_a_data_url(url: str) -> None:
    assert parse_data_url(url) is None
