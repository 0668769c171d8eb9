"""Attacks, each refused with the right status before it reaches anything: SSRF through media URLs, hostile and
stale credentials, keys reaching past their scope, clients steering the upstream, keys stored in plain text.

The SSRF cases run end to end: a chat request with an image URL goes to a Gemini connection (Gemini needs the bytes,
so the gateway fetches them), and a listening socket on loopback counts connections to prove none arrives. The
media fetcher's own unit tests (tests/net/test_fetch.py) cover the policy case by case; here the whole request path is
the subject. The whole suite's responses and logs are watched for secrets by tests/secret_watch.py; the first tests
here prove that watch can fail.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import httpx
import orjson
import pytest

from tests import secret_watch
from tests.api.test_fuzz import error_shape_problem
from tests.conftest import MASTER_KEY, PRICING, GatewayServer, free_port
from tests.fakes.base import Reply
from tests.fakes.gemini_fake import FakeGemini
from tests.harness import read_database_files

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def shape_problem(path: str, resp: httpx.Response) -> str | None:
    """What is wrong with an error answer's shape for the endpoint at `path` (tests/api/test_fuzz.py's check)."""
    endpoint = path.split("?")[0].rsplit("/", 1)[-1]
    try:
        payload = resp.json()
    except ValueError:
        return f"not JSON: {resp.text[:200]!r}"
    return error_shape_problem(endpoint, resp.status_code, payload)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")  # a PNG signature and header


# -- the secret watch itself ------------------------------------------------------------------------------------------

def _read_body(method: str, status: int, body: bytes, content_type: str = "application/json") -> None:
    response = httpx.Response(status, headers={"content-type": content_type},
                              request=httpx.Request(method, "http://gateway.test/api/v1/x"), stream=httpx.ByteStream(body))
    response.read()


def test_the_secret_watch_fails_on_a_configured_secret_in_a_body() -> None:
    before = len(secret_watch.leaks)
    with pytest.raises(AssertionError, match="secret leaked"):
        _read_body("GET", 401, b'{"error": {"message": "bad key ' + MASTER_KEY.encode() + b'"}}')
    del secret_watch.leaks[before:]  # provoked on purpose: not a leak of the run


def test_the_secret_watch_allows_a_key_once_where_it_is_created() -> None:
    key = b"sk-or-v1-" + b"ab" * 32
    before = len(secret_watch.leaks)
    _read_body("POST", 201, b'{"key": "' + key + b'"}')  # creation: allowed
    with pytest.raises(AssertionError, match="shown again"):
        _read_body("GET", 200, b'{"data": "' + key + b'"}')
    with pytest.raises(AssertionError, match="creates no key"):
        _read_body("GET", 200, b'{"data": "sk-or-v1-' + b"cd" * 32 + b'"}')
    with pytest.raises(AssertionError, match="in the log"):
        secret_watch.check_log("INFO key=sk-or-v1-" + "ef" * 32, "a test log")
    secret_watch.check_log("crossroads: generated a master key (stored in /x/master_key):\n\n    sk-or-v1-" + "0" * 64,
                           "a first start")
    del secret_watch.leaks[before:]


# -- SSRF through media URLs ------------------------------------------------------------------------------------------

class ConnectionCounter:
    """A listening socket on 127.0.0.1 that counts the connections it is offered and answers none."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class ImageHost(BaseHTTPRequestHandler):
    """An allowed media host (127.0.0.2): /image.png is a PNG, /redirect?to=URL is a 302 to URL."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", unquote(self.path.split("=", 1)[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def media_gateway(fake_gemini: FakeGemini, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    # Only 127.0.0.2 is allowed as a media host: every other loopback notation must be refused.
    workdir = tmp_path_factory.mktemp("attacks")
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data"),
                   "media": {"allow": ["127.0.0.2/32"], "timeout": 3}},
        "routing": {"retries": 0},
        "providers": [{"name": "gem", "type": "gemini", "base_url": fake_gemini.base_url + "/v1beta",
                       "api_key": fake_gemini.api_key, "timeout": 5,
                       "models": [{"id": "google/gemini-2.5-flash", "upstream": "gemini-2.5-flash",
                                   "pricing": PRICING}]}],
    }
    gw = GatewayServer(config, workdir).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def counter() -> Iterator[ConnectionCounter]:
    c = ConnectionCounter()
    yield c
    c.close()


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    try:
        server = ThreadingHTTPServer(("127.0.0.2", free_port()), ImageHost)
    except OSError:
        pytest.skip("127.0.0.2 is not a loopback address here")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def ask_with_image(gw: GatewayServer, url: str) -> httpx.Response:
    body = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}
    return httpx.post(gw.url + "/api/v1/chat/completions", headers=AUTH, json=body, timeout=15)


LOOPBACK_NOTATIONS = [
    "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f000001", "0x7f.0.0.1", "0x7f.0x0.0x0.0x1", "0177.0.0.1",
    "017700000001", "0177.1", "0", "0.0.0.0", "127.0.0.1.", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]", "[::1]", "[::]", "[64:ff9b::127.0.0.1]", "localhost", "localhost.", "LOCALHOST",
    "LocalHost.", "127.0.0.1%2e", "%31%32%37.0.0.1",
]


def test_media_from_an_allowed_host_is_fetched(media_gateway, fake_gemini, image_host) -> None:
    # The control: the path the refusals below stop on really fetches, so their "no connection" means something.
    fake_gemini.reply(Reply(text="a pixel"))
    resp = ask_with_image(media_gateway, image_host + "/image.png")
    assert resp.status_code == 200, resp.text
    parts = fake_gemini.requests[-1].json["contents"][0]["parts"]
    assert any(p.get("inlineData", {}).get("mimeType") == "image/png" for p in parts)


@pytest.mark.parametrize("host", LOOPBACK_NOTATIONS)
def test_loopback_in_any_notation_is_refused_before_connecting(media_gateway, fake_gemini, counter, host) -> None:
    before = counter.count
    resp = ask_with_image(media_gateway, f"http://{host}:{counter.port}/x.png")
    assert resp.status_code == 400, (host, resp.status_code, resp.text)
    assert shape_problem("/api/v1/chat/completions", resp) is None
    assert counter.count == before, f"{host}: a connection reached the loopback listener"
    assert fake_gemini.requests == []


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # cloud metadata
    "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
    "http://metadata.google.internal./computeMetadata/v1/",
    "http://10.0.0.1/x.png", "http://172.16.0.1/x.png", "http://192.168.1.1/x.png", "http://100.64.0.1/x.png",
    "http://[fe80::1]/x.png", "http://[fc00::1]/x.png", "http://[::ffff:169.254.169.254]/x.png",
    "http://0xa9fea9fe/x.png", "http://2852039166/x.png",  # 169.254.169.254 as one hex or decimal number
    "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://127.0.0.1/x.png",
    "http://user:pw@127.0.0.2/x.png",
])
def test_private_metadata_and_odd_scheme_urls_are_refused(media_gateway, fake_gemini, url) -> None:
    resp = ask_with_image(media_gateway, url)
    assert resp.status_code == 400, (url, resp.status_code, resp.text)
    assert shape_problem("/api/v1/chat/completions", resp) is None
    assert fake_gemini.requests == []


@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]"])
def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(media_gateway, fake_gemini, counter, image_host,
                                                                 target) -> None:
    before = counter.count
    resp = ask_with_image(media_gateway, f"{image_host}/redirect?to=http://{target}:{counter.port}/x.png")
    assert resp.status_code == 400, (target, resp.status_code, resp.text)
    assert counter.count == before, f"the redirect to {target} reached the loopback listener"
    assert fake_gemini.requests == []


# -- credentials --------------------------------------------------------------------------------------------------------

ENDPOINTS = [("POST", "/api/v1/chat/completions"), ("POST", "/api/v1/messages"), ("POST", "/api/v1/responses"),
             ("POST", "/api/v1/embeddings"), ("GET", "/api/v1/key"), ("GET", "/api/v1/keys"),
             ("GET", "/api/v1/activity"), ("GET", "/api/v1/generation?id=gen-x"), ("GET", "/api/v1/credits")]

HOSTILE_AUTHORIZATION = [
    "", "Bearer", "Basic " + MASTER_KEY, "Token " + MASTER_KEY, MASTER_KEY,
    "Bearer " + MASTER_KEY[:-1], "Bearer " + MASTER_KEY + "0", "Bearer " + MASTER_KEY.upper(),
    "Bearer  " + MASTER_KEY + " x", "Bearer sk-or-v1-" + "0" * 64, "Bearer ' OR '1'='1", "Bearer \" OR 1=1 --",
    "Bearer sk-or-v1-'; DROP TABLE api_keys; --", "Bearer %0d%0aX-Injected: 1", "Bearer \\r\\nSet-Cookie: a=b",
    "Bearer " + "A" * 8000, "Bearer sk-or-v1-" + "g" * 64, "Bearer null", "Bearer undefined",
]
# Values httpx will not send: sent over a raw socket. A CR/LF ends the header line, so the rest is another header.
RAW_AUTHORIZATION = [b"Bearer ", b"Bearer    ", b"Bearer\t" + MASTER_KEY.encode() + b"x",
                     b"Bearer x\r\nX-Injected: 1", b"Bearer \xff\xfe" + MASTER_KEY.encode(),
                     b"Bearer " + MASTER_KEY.encode() + b"\x00"]


BODY = {"model": "openai/gpt-4o-mini", "input": "hi", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def raw_request(gateway: GatewayServer, method: str, path: str, authorization: bytes) -> httpx.Response:
    """One request written byte by byte: httpx refuses header values such as `Bearer ` (trailing space) or CR/LF."""
    body = orjson.dumps(BODY) if method == "POST" else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n").encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + b"Authorization: " + authorization + b"\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    raw_headers, _, content = rest.partition(b"\r\n\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in raw_headers.split(b"\r\n")]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=content,
                          request=httpx.Request(method, gateway.url + path))


@pytest.mark.parametrize("authorization", HOSTILE_AUTHORIZATION + RAW_AUTHORIZATION)
def test_hostile_and_malformed_bearer_tokens_are_refused(gateway, fake_openai, authorization) -> None:
    for method, path in ENDPOINTS:
        if isinstance(authorization, bytes):
            resp = raw_request(gateway, method, path, authorization)
        else:
            headers = {"Authorization": authorization} if authorization else {}
            resp = httpx.request(method, gateway.url + path, headers=headers, timeout=10,
                                 json=BODY if method == "POST" else None)
        # A NUL byte is not HTTP: the server's parser refuses the request (400) before any route sees it.
        expected = 400 if isinstance(authorization, bytes) and b"\x00" in authorization else 401
        assert resp.status_code == expected, (authorization[:40], path, resp.status_code, resp.text)
        assert shape_problem(path, resp) is None, (path, resp.text)
        assert "x-injected" not in resp.headers and "set-cookie" not in resp.headers
    assert fake_openai.requests == []


def test_a_hostile_x_api_key_on_messages_is_refused(gateway, fake_anthropic) -> None:
    for value in ("", "' OR 1=1 --", "sk-or-v1-" + "0" * 64, MASTER_KEY[:-1]):
        resp = httpx.post(gateway.url + "/api/v1/messages", headers={"x-api-key": value, "anthropic-version": "2023-06-01"},
                          json={"model": "anthropic/claude-sonnet-4", "max_tokens": 5,
                                "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 401, (value, resp.text)
        assert resp.json()["type"] == "error"
    assert fake_anthropic.requests == []


def new_key(gateway: GatewayServer, **fields: object) -> tuple[str, str]:
    resp = httpx.post(gateway.url + "/api/v1/keys", headers=AUTH, json={"name": "attacks", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["key"], resp.json()["data"]["hash"]


def chat_with(gateway: GatewayServer, key: str) -> httpx.Response:
    return httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize("state", ["deleted", "disabled", "expired"])
def test_keys_that_are_deleted_disabled_or_expired_are_refused(gateway, fake_openai, state) -> None:
    key, key_hash = new_key(gateway, **({"expires_at": "2020-01-01T00:00:00Z"} if state == "expired" else {}))
    if state == "deleted":
        assert httpx.delete(gateway.url + f"/api/v1/keys/{key_hash}", headers=AUTH).status_code == 200
    elif state == "disabled":
        assert httpx.patch(gateway.url + f"/api/v1/keys/{key_hash}", headers=AUTH,
                           json={"disabled": True}).status_code == 200
    resp = chat_with(gateway, key)  # key changes reach the request path within a second (the key cache)
    for _ in range(20):
        if resp.status_code == 401:
            break
        threading.Event().wait(0.1)
        resp = chat_with(gateway, key)
    assert resp.status_code == 401, (state, resp.text)
    assert shape_problem("/api/v1/chat/completions", resp) is None
    if state != "deleted":
        assert state in resp.json()["error"]["message"]


MANAGEMENT = [("GET", "/api/v1/keys", None), ("POST", "/api/v1/keys", {"name": "escalate"}),
              ("PATCH", "/api/v1/keys/{hash}", {"limit": 1000}), ("DELETE", "/api/v1/keys/{hash}", None),
              ("GET", "/api/v1/keys/{hash}", None), ("GET", "/api/v1/workspaces", None),
              ("POST", "/api/v1/workspaces", {"name": "mine"}), ("GET", "/api/v1/credits", None)]


def test_a_normal_key_cannot_use_the_management_api(gateway) -> None:
    key, key_hash = new_key(gateway)
    _, other_hash = new_key(gateway)
    for method, path, body in MANAGEMENT:
        for target in (key_hash, other_hash):
            url = gateway.url + path.format(hash=target)
            resp = httpx.request(method, url, headers={"Authorization": f"Bearer {key}"}, json=body)
            assert resp.status_code in (401, 403), (method, path, resp.status_code, resp.text)
            assert shape_problem("/api/v1/keys", resp) is None
    assert httpx.get(gateway.url + f"/api/v1/keys/{other_hash}", headers=AUTH).json()["data"]["disabled"] is False


def test_one_key_cannot_read_another_keys_records(gateway, fake_openai) -> None:
    owner, _ = new_key(gateway)
    stranger, _ = new_key(gateway)
    fake_openai.reply(Reply(text="private"))
    answer = chat_with(gateway, owner)
    assert answer.status_code == 200
    generation_id = answer.json()["id"]
    own = None
    for _ in range(40):  # records are written off the request path
        own = httpx.get(gateway.url + f"/api/v1/generation?id={generation_id}",
                        headers={"Authorization": f"Bearer {owner}"})
        if own.status_code == 200:
            break
        threading.Event().wait(0.1)
    assert own is not None and own.status_code == 200, own.text if own else None
    other = httpx.get(gateway.url + f"/api/v1/generation?id={generation_id}",
                      headers={"Authorization": f"Bearer {stranger}"})
    assert other.status_code == 404, other.text  # not 403: it does not say the id exists
    activity = httpx.get(gateway.url + "/api/v1/activity", headers={"Authorization": f"Bearer {stranger}"})
    assert activity.status_code in (200, 401, 403)
    assert generation_id not in activity.text


# -- a client never chooses where the gateway's credentials go -------------------------------------------------------------

STEERING_HEADERS = {"X-Api-Key": "attacker-key", "x-goog-api-key": "attacker-key", "api-key": "attacker-key",
                    "X-Forwarded-Host": "evil.test", "X-Upstream-Url": "http://evil.test/v1",
                    "X-Original-URL": "/v1/evil", "X-Rewrite-URL": "/v1/evil", "Forwarded": "host=evil.test"}


@pytest.mark.parametrize("fake_name,model", [("fake_openai", "openai/gpt-4o-mini"),
                                             ("fake_anthropic", "anthropic/claude-sonnet-4"),
                                             ("fake_gemini", "google/gemini-2.5-flash")])
def test_a_client_cannot_choose_the_upstream_url_or_key(gateway, request, fake_name, model) -> None:
    fake = request.getfixturevalue(fake_name)
    fake.reply(Reply(text="ok"))
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "api_key": "attacker-key", "base_url": "http://evil.test/v1", "api_base": "http://evil.test/v1"}
    resp = httpx.post(gateway.url + "/api/v1/chat/completions", headers={**AUTH, **STEERING_HEADERS}, json=body,
                      timeout=10)
    assert resp.status_code in (200, 400), resp.text
    if resp.status_code == 400:
        assert fake.requests == []
        return
    assert len(fake.requests) == 1
    sent = fake.requests[0]
    # Body fields the gateway does not know may travel on to an OpenAI-compatible upstream as fields (vLLM's extra
    # sampling parameters do); they never become the URL called or the credential sent.
    assert "attacker-key" not in str(sent.headers) and "evil" not in str(sent.headers)
    assert "evil" not in sent.path and "evil" not in str(sent.query) and "attacker" not in str(sent.query)
    assert fake.api_key in str(sent.headers) + str(sent.query)  # its own configured key, nothing else


# -- keys at rest ----------------------------------------------------------------------------------------------------------

def test_the_database_holds_no_plaintext_key(gateway, fake_openai) -> None:
    key, key_hash = new_key(gateway)
    fake_openai.reply(Reply(text="stored"))
    assert chat_with(gateway, key).status_code == 200
    data_dir = Path(gateway.workdir) / "data"
    database = data_dir / "crossroads.db"
    with sqlite3.connect(database) as db:  # a checkpoint puts the WAL's pages into the file too
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    stored = read_database_files(data_dir)
    assert key_hash.encode() in stored  # the file read is the one holding the keys
    assert key.encode() not in stored and key.removeprefix("sk-or-v1-").encode() not in stored
    assert MASTER_KEY.encode() not in stored
