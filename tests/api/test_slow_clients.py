"""Slow clients (slowloris) are cut off: a request head or body that trickles in gets 408 and the connection closes
(server.header_timeout, server.body_timeout), while normal and kept-alive clients are served as before."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from crossroads.config import ConfigError, load_config
from tests.conftest import MASTER_KEY, GatewayProcess
from tests.fakes.openai_fake import FakeOpenAI

TIMEOUT = 1  # header_timeout and body_timeout of the gateways here (seconds)
GIVE_UP = 8.0  # seconds a slow client goes on before the test calls it kept open
CHAT = "/api/v1/chat/completions"
# Long enough that it cannot be complete before GIVE_UP at the rates sent below.
SLOW_HEAD = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n"
             + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 20) for i in range(10)) + b"\r\n")


def slow_config(fake: FakeOpenAI, data_dir: Path) -> dict:
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir),
                   "header_timeout": TIMEOUT, "body_timeout": TIMEOUT},
        "providers": [{"name": "oai", "type": "openai", "base_url": fake.base_url + "/v1", "api_key": fake.api_key,
                       "timeout": 20, "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini"}]}],
    }


@pytest.fixture(scope="module")
def slow_gateway(fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("slow")
    gw = GatewayProcess(slow_config(fake_openai, workdir / "data"), workdir).start()
    yield gw
    gw.stop()


def chat_body() -> bytes:
    return json.dumps({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}).encode()


def post_head(path: str, length: int, key: str | None = MASTER_KEY) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {length}"]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode()


class Answer:
    """What a raw client received: the status, headers and body of the first response, and whether the server
    closed the connection (EOF or reset) before the client gave up."""

    def __init__(self, raw: bytes, closed: bool) -> None:
        self.raw, self.closed = raw, closed
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") else 0
        self.headers = {name.strip().lower(): value.strip()
                        for name, _, value in (line.partition(":") for line in lines[1:])}

    def json(self) -> dict:
        return json.loads(self.body)


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    """One whole response with a Content-Length, read from `sock`."""
    sock.settimeout(timeout)
    received = b""
    while True:
        head, sep, body = received.partition(b"\r\n\r\n")
        if sep and len(body) >= int(Answer(received, False).headers.get("content-length", "0")):
            return received
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def trickle(port: int, prefix: bytes, slow: Iterable[int], interval: float, *, give_up: float = GIVE_UP,
            after_answer: bool = False) -> Answer:
    """On a new connection, send `prefix` at once, then trickle `slow` (`trickle_on`)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(prefix)
        return trickle_on(sock, slow, interval, give_up=give_up, after_answer=after_answer)


def trickle_on(sock: socket.socket, slow: Iterable[int], interval: float, *, give_up: float = GIVE_UP,
               after_answer: bool = False) -> Answer:
    """Send `slow` one byte every `interval` seconds, reading all the while; stop sending once an answer begins
    (unless `after_answer`: the rest of a body that a client refused early still sends). Returns what arrived until
    the server closed the connection, or until `give_up`."""
    received = b""
    deadline = time.monotonic() + give_up
    sending = iter(slow)
    while time.monotonic() < deadline:
        if after_answer or not received:
            byte = next(sending, None)
            if byte is not None:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server closed: the read below says so
        sock.settimeout(interval)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            # A byte sent after the gateway closed makes its kernel answer with a reset: closed too.
            return Answer(received, closed=True)
        if not chunk:
            return Answer(received, closed=True)
        received += chunk
    return Answer(received, closed=False)


def assert_cut_off(answer: Answer) -> dict:
    """A 408 with Connection: close whose body is an error object, and the connection closed."""
    assert answer.status == 408, answer.raw[:300]
    assert answer.headers.get("connection") == "close"
    assert answer.headers.get("content-type") == "application/json"
    assert answer.closed, "the slow client was kept connected"
    return answer.json()


# -- the request head ---------------------------------------------------------------------------------------------

def test_a_head_sent_one_byte_at_a_time_gets_408_and_is_closed(slow_gateway: GatewayProcess) -> None:
    answer = trickle(slow_gateway.port, b"", SLOW_HEAD, 0.2)
    error = assert_cut_off(answer)["error"]
    assert error["code"] == 408
    assert "head" in error["message"]
    log = slow_gateway.log()
    assert "slow client 127.0.0.1 cut off with 408" in log
    assert "filler" not in log.lower()  # nothing the client sent is repeated


@pytest.mark.alone  # the deadline's timing, measured
def test_a_slow_head_on_a_kept_alive_connection_gets_408(slow_gateway: GatewayProcess) -> None:
    """The first request is served; the next one's head trickles in on the same connection."""
    with socket.create_connection(("127.0.0.1", slow_gateway.port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert Answer(read_response(sock), False).status == 200
        answer = trickle_on(sock, SLOW_HEAD, 0.2)
    assert_cut_off(answer)


def test_a_connection_that_sends_nothing_is_closed(slow_gateway: GatewayProcess) -> None:
    """No request was started, so nothing is answered (an unrequested 408 could be taken for the answer to the
    request a client sends next): the connection is just closed."""
    with socket.create_connection(("127.0.0.1", slow_gateway.port)) as sock:
        sock.settimeout(GIVE_UP)
        assert sock.recv(65536) == b""


# -- the request body ---------------------------------------------------------------------------------------------

def test_a_body_sent_one_byte_at_a_time_gets_408_in_the_endpoint_shape(slow_gateway: GatewayProcess) -> None:
    """A byte every 0.5 s never pauses for body_timeout, but falls behind the minimum rate once it has had that long:
    a slowloris all the same."""
    answer = trickle(slow_gateway.port, post_head(CHAT, 1000), b"{" + b" " * 999, 0.5)
    error = assert_cut_off(answer)["error"]
    assert error == {"code": 408, "message": "Request timeout: the request body arrived slower than 500 bytes a "
                                             "second"}
    # The Anthropic Messages endpoint answers in Anthropic's error shape.
    answer = trickle(slow_gateway.port, post_head("/api/v1/messages", 1000), b"{" + b" " * 999, 0.5)
    body = assert_cut_off(answer)
    assert body["type"] == "error" and body["error"]["type"] == "timeout_error", body
    assert "slow client 127.0.0.1 cut off with 408: the request body arrived slower" in slow_gateway.log()


def test_a_body_that_stops_gets_408(slow_gateway: GatewayProcess) -> None:
    """A large first part (far ahead of the minimum rate), then nothing: the pause alone is enough."""
    first = b"{" + b" " * 99_999
    answer = trickle(slow_gateway.port, post_head(CHAT, len(first) + 1000) + first, b"", 0.2)
    error = assert_cut_off(answer)["error"]
    assert error == {"code": 408, "message": f"Request timeout: no part of the request body arrived for {TIMEOUT} s"}


def test_a_slow_but_steady_body_is_accepted(slow_gateway: GatewayProcess) -> None:
    """A part every 0.3 s: never a pause of body_timeout, though the whole body takes longer than that."""
    body = json.dumps({"model": "openai/gpt-4o-mini",
                       "messages": [{"role": "user", "content": "Hi" + " there" * 400}]}).encode()
    parts = [body[i:i + 256] for i in range(0, len(body), 256)]
    assert len(parts) * 0.3 > 2 * TIMEOUT
    with socket.create_connection(("127.0.0.1", slow_gateway.port)) as sock:
        sock.sendall(post_head(CHAT, len(body)))
        for part in parts:
            time.sleep(0.3)
            sock.sendall(part)
        received = read_response(sock)
    answer = Answer(received, False)
    assert answer.status == 200, received[:300]
    assert answer.json()["choices"][0]["message"]["role"] == "assistant"


def test_the_rest_of_a_body_answered_early_cannot_keep_the_connection(slow_gateway: GatewayProcess) -> None:
    """Refused before its body is read (no key: 401); the rest of the body, trickling in, would be read and thrown
    away for ever: it is given body_timeout, then the connection closes."""
    answer = trickle(slow_gateway.port, post_head(CHAT, 1000, key=None), itertools.repeat(ord(" ")), 0.3,
                     after_answer=True)
    assert answer.status == 401
    assert answer.closed, "the rest of an answered body kept the connection open"


# -- under attack ---------------------------------------------------------------------------------------------------

async def slowloris(port: int, interval: float) -> Answer:
    """One slow client (asyncio): the head of SLOW_HEAD one byte per `interval`, until answered or GIVE_UP."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received, closed = b"", False
    deadline = asyncio.get_running_loop().time() + GIVE_UP
    try:
        for byte in SLOW_HEAD:
            if received or asyncio.get_running_loop().time() > deadline:
                break
            writer.write(bytes([byte]))
            try:
                chunk = await asyncio.wait_for(reader.read(65536), interval)
            except TimeoutError:
                continue
            if not chunk:
                closed = True
                break
            received += chunk
        while received and not closed:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            closed = not chunk
            received += chunk
    except TimeoutError:
        pass  # answered but kept open: `closed` stays False
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    finally:
        writer.close()
    return Answer(received, closed)


async def attack(port: int, connections: int, stop: asyncio.Event) -> list[Answer]:
    """`connections` slow clients at once, each replaced by a new one when cut off, until `stop` is set."""

    async def slot() -> list[Answer]:
        answers = [await slowloris(port, 0.2)]
        while not stop.is_set() and answers[-1].closed:
            answers.append(await slowloris(port, 0.2))
        return answers

    per_slot = await asyncio.gather(*(slot() for _ in range(connections)))
    return [answer for answers in per_slot for answer in answers]


@pytest.mark.alone  # 200 trickling clients and a deadline, measured
def test_200_slowloris_connections_do_not_stop_normal_requests(slow_gateway: GatewayProcess) -> None:
    async def scenario() -> tuple[list[Answer], list[int]]:
        stop = asyncio.Event()
        attacking = asyncio.create_task(attack(slow_gateway.port, 200, stop))
        await asyncio.sleep(0.5)  # the slow clients are connected and trickling
        statuses = []
        async with httpx.AsyncClient(base_url=slow_gateway.url, timeout=10) as client:
            for _ in range(3):
                statuses.append((await client.get("/health")).status_code)
                resp = await client.post(CHAT, headers={"Authorization": f"Bearer {MASTER_KEY}"},
                                         content=chat_body())
                statuses.append(resp.status_code)
                await asyncio.sleep(0.4)
        stop.set()
        return await attacking, statuses

    answers, statuses = asyncio.run(scenario())
    assert statuses == [200] * 6
    assert len(answers) >= 200
    kept = [answer for answer in answers if not answer.closed]
    assert not kept, f"{len(kept)} slow connection(s) kept open"
    assert all(answer.status == 408 for answer in answers), {answer.status for answer in answers}
    # Flood-proof logging: one line in full, the rest summarised (after CUT_OFF_WINDOW) rather than one per client.
    assert slow_gateway.log().count("slow client 127.0.0.1 cut off with 408") <= 3


# -- keep-alive -----------------------------------------------------------------------------------------------------

def test_a_kept_alive_connection_serves_several_requests(slow_gateway: GatewayProcess) -> None:
    """Several requests on one connection, with pauses longer than header_timeout between them: the wait for the
    next request is uvicorn's keep-alive timeout (5 s), which the head deadline does not shorten."""
    conn = http.client.HTTPConnection("127.0.0.1", slow_gateway.port, timeout=10)
    try:
        conn.connect()
        local = conn.sock.getsockname()
        for pause in (0, 1.5 * TIMEOUT, 0.1, 1.5 * TIMEOUT):
            time.sleep(pause)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
            conn.request("POST", CHAT, body=chat_body(),
                         headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["object"] == "chat.completion"
            assert conn.sock is not None and conn.sock.getsockname() == local  # still the first connection
    finally:
        conn.close()


# -- several workers ------------------------------------------------------------------------------------------------

def test_the_head_deadline_holds_with_several_workers(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(slow_config(fake_openai, tmp_path / "data"), tmp_path, args=["--workers", "2"]).start()
    try:
        async def several() -> list[Answer]:
            return await asyncio.gather(*(slowloris(gw.port, 0.2) for _ in range(8)))

        for answer in asyncio.run(several()):  # new connections: the kernel spreads them over both workers
            assert_cut_off(answer)
        assert httpx.get(gw.url + "/health", timeout=5).status_code == 200
    finally:
        gw.stop()


# -- configuration ----------------------------------------------------------------------------------------------------

def test_the_timeouts_default_to_10_and_30_seconds(tmp_path: Path) -> None:
    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump({"server": {"data_dir": str(tmp_path)}}))
    server = load_config(str(path)).server
    assert (server.header_timeout, server.body_timeout) == (10.0, 30.0)
    path.write_text(yaml.safe_dump({"server": {"header_timeout": 2, "body_timeout": 0.5}}))
    server = load_config(str(path)).server
    assert (server.header_timeout, server.body_timeout) == (2.0, 0.5)


@pytest.mark.parametrize("key", ["header_timeout", "body_timeout"])
@pytest.mark.parametrize(("value", "problem"), [
    ("0", "must be positive"), ("-3", "must be positive"), (".nan", "must be a finite number"),
    (".inf", "must be a finite number"), ("soon", "must be a number"), ("true", "must be a number"),
])
def test_a_bad_timeout_is_a_clear_error(tmp_path: Path, key: str, value: str, problem: str) -> None:
    path = tmp_path / "crossroads.yaml"
    path.write_text(f"server:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert f"server.{key}: {problem}" in str(info.value)
