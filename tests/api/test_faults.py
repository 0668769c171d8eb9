"""Upstream faults x the three fronts: what the client sees, whether the gateway retried or fell back, which breaker
the fault counts on and what the generation record says. docs/faults.md is the table these tests hold the gateway to.

Every fault has its own connection: a `FaultyProxy` in front of a fake upstream for what happens on the wire, the fake
itself for what it can do (cut a stream, pace it, answer raw bytes); a queued fault has a fake per front, so a case's
requests all run at once. Three gateways: `gw` retries once and never opens a breaker (each fault's outcome, without
and with a fallback), `breakers` never retries and opens a breaker at the first failure (which breaker a fault opens),
`late` commits a stream before a connect can time out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import MASTER_KEY, GatewayServer
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import Fault, Reply, sse
from tests.fakes.faulty_proxy import FaultyProxy, Mode
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]
PRICE = {"prompt": 1.0, "completion": 2.0}
FRONTS = ("chat", "messages", "responses")
PATHS = {"chat": "/api/v1/chat/completions", "messages": "/api/v1/messages", "responses": "/api/v1/responses"}
ANSWER = "Hello from the fake upstream."
CAP = 8192  # max_response_bytes of the f-capped connections
BIG = "Hi " + "x" * 20000  # streamed as "Hi", then one event past CAP; whole, a body past CAP
SILENCE_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.2
TRICKLE_TIMEOUT = 0.45  # above the trickle's gaps (0.15 s), below its whole (5 x 0.15 s)
LATE = 0.8  # the late gateway's connect_timeout, past its keepalive_interval

# The connections whose fault is the proxy's: name -> (its mode, the connection's settings).
PROXIED: dict[str, tuple[Mode, dict[str, Any]]] = {
    "f-refused": ("refuse", {}),
    "f-blackhole": ("blackhole", {"connect_timeout": CONNECT_TIMEOUT}),
    "f-reset": ("reset", {}),
    "f-silence": ("silence", {"timeout": SILENCE_TIMEOUT}),
    "f-cut": ("cut", {}),
    "f-trickle": ("trickle", {"timeout": TRICKLE_TIMEOUT}),
    "f-slowclose": ("slow_close", {"timeout": 1}),
}
# The connections straight to a fake (one per front: f-direct-chat, ...), whose faults are queued on it.
DIRECT: dict[str, dict[str, Any]] = {"f-direct": {}, "f-capped": {"max_response_bytes": CAP},
                                     "f-tiny": {"max_response_bytes": 64}}


class Env:
    """The fakes and proxies behind both gateways."""

    def __init__(self) -> None:
        self.upstreams = {front: FakeOpenAI(api_key="sk-faulty-upstream").start() for front in FRONTS}
        self.breaker_upstream = FakeOpenAI(api_key="sk-faulty-upstream").start()  # the breaker gateway's
        self.healthy = FakeOpenAI(api_key="sk-healthy-upstream").start()
        self.ant = FakeAnthropic().start()
        self.gem = FakeGemini().start()
        target = ("127.0.0.1", self.upstreams["chat"].port)
        self.proxies = {name: FaultyProxy(mode, target, cut_after=40, interval=0.15, trickle_bytes=5, hold=10)
                        for name, (mode, _) in PROXIED.items()}

    @property
    def fakes(self) -> list[Any]:
        return [*self.upstreams.values(), self.breaker_upstream, self.healthy, self.ant, self.gem]

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        for fake in self.fakes:
            fake.stop()


def connection(env: Env, name: str, kind: str, model_ids: list[str], front: str | None = None) -> dict:
    """A connection of `kind` (a PROXIED or DIRECT key, or f-ant / f-gem) named `name`, serving `model_ids`."""
    models = [{"id": model_id, "upstream": f"m-{kind[2:]}" + (f"-{i}" if i else ""), "pricing": PRICE}
              for i, model_id in enumerate(model_ids)]
    if kind == "f-ant":
        return {"name": name, "type": "anthropic", "base_url": env.ant.base_url + "/v1",
                "api_key": env.ant.api_key, "timeout": 5, "models": models}
    if kind == "f-gem":
        return {"name": name, "type": "gemini", "base_url": env.gem.base_url + "/v1beta",
                "api_key": env.gem.api_key, "timeout": 5, "models": models}
    if kind in PROXIED:
        base, extra = env.proxies[kind].base_url, PROXIED[kind][1]
    else:
        fake = env.upstreams[front] if front is not None else env.breaker_upstream
        base, extra = fake.base_url, DIRECT[kind]
    return {"name": name, "type": "openai", "base_url": base + "/v1", "api_key": "sk-faulty-upstream",
            "timeout": 5, "models": models, **extra}


def server(data_dir: Path) -> dict:
    # keepalive_interval: longer than any failure before an upstream's headers takes here (those keep their status)
    return {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir), "keepalive_interval": 1.5}


def outcome_config(env: Env, data_dir: Path) -> dict:
    """Connection f-<x> serves fault/<x>; route fallback-<x> tries f-<x>, then the healthy upstream."""
    named: list[tuple[str, str, str | None]] = [(name, name, None) for name in [*PROXIED, "f-ant", "f-gem"]]
    named += [(f"{kind}-{front}", kind, front) for kind in DIRECT for front in FRONTS]
    providers = [connection(env, name, kind, [f"fault/{name[2:]}"], front) for name, kind, front in named]
    providers.append({"name": "healthy", "type": "openai", "base_url": env.healthy.base_url + "/v1",
                      "api_key": env.healthy.api_key, "timeout": 5,
                      "models": [{"id": "test/healthy", "upstream": "gpt-4o-mini", "pricing": PRICE}]})
    routes = [{"name": f"fallback-{name[2:]}", "targets": [{"connection": name, "model": f"m-{kind[2:]}"}],
               "fallback": ["test/healthy"]} for name, kind, _ in named]
    return {"server": server(data_dir), "providers": providers, "routes": routes,
            "routing": {"retries": 1, "max_retry_wait": 1, "breaker": {"failure_threshold": 1000000}}}


def late_config(env: Env, data_dir: Path) -> dict:
    """A keep-alive interval shorter than the connect timeout: a stream is committed before the connect fails."""
    blackhole = {**connection(env, "f-blackhole", "f-blackhole", ["fault/blackhole"]), "connect_timeout": LATE}
    return {"server": {**server(data_dir), "keepalive_interval": 0.2}, "providers": [blackhole],
            "routing": {"retries": 0}}


def breaker_config(env: Env, data_dir: Path) -> dict:
    """Per case a connection of its own, b<n>, serving breaker/<n> and breaker/<n>-sibling (another upstream model,
    ejected too only when the connection's breaker opens); the first failure opens a breaker, for good."""
    providers = [connection(env, f"b{n}", case.kind, [f"breaker/{n}", f"breaker/{n}-sibling"])
                 for n, case in enumerate(CASES)]
    return {"server": server(data_dir), "providers": providers,
            "routing": {"retries": 0, "breaker": {"failure_threshold": 1, "cooldown": 600}}}


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    made = Env()
    yield made
    made.close()


@pytest.fixture(autouse=True)
def _clean(env: Env) -> None:
    for fake in env.fakes:
        fake.reset()


@pytest.fixture(scope="module")
def gateways(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayServer]]:
    made = {}
    try:
        for name, make in (("outcomes", outcome_config), ("breakers", breaker_config), ("late", late_config)):
            workdir = tmp_path_factory.mktemp(f"faults-{name}")
            made[name] = GatewayServer(make(env, workdir / "data"), workdir).start()
        yield made
    finally:
        for proc in made.values():
            proc.stop()


@pytest.fixture(scope="module")
def gw(gateways: dict[str, GatewayServer]) -> GatewayServer:
    return gateways["outcomes"]


@pytest.fixture(scope="module")
def late(gateways: dict[str, GatewayServer]) -> GatewayServer:
    return gateways["late"]


@pytest.fixture(scope="module")
def breakers(gateways: dict[str, GatewayServer]) -> GatewayServer:
    return gateways["breakers"]


# -- talking to the fronts ----------------------------------------------------------------------------------------
def body_for(front: str, model: str, stream: bool) -> dict:
    if front == "chat":
        return {"model": model, "messages": HELLO, "stream": stream}
    if front == "messages":
        return {"model": model, "max_tokens": 64, "messages": HELLO, "stream": stream}
    return {"model": model, "input": "hi", "stream": stream}


@dataclass
class Outcome:
    status: int
    headers: httpx.Headers
    body: Any = None  # a whole answer's JSON
    events: list[tuple[str | None, Any]] | None = None  # a stream's events: (name, JSON or raw text)
    comments: int = 0  # a stream's comment lines (`: PROCESSING`)


def send(gateway: GatewayServer, front: str, model: str, stream: bool) -> Outcome:
    with httpx.stream("POST", gateway.url + PATHS[front], headers=AUTH, json=body_for(front, model, stream),
                      timeout=30) as resp:
        raw = resp.read()
    if not resp.headers.get("content-type", "").startswith("text/event-stream"):
        return Outcome(resp.status_code, resp.headers, body=orjson.loads(raw))
    events: list[tuple[str | None, Any]] = []
    blocks = raw.decode().replace("\r\n", "\n").split("\n\n")
    for block in blocks:
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            text = "\n".join(data)
            events.append((name, text if text == "[DONE]" else orjson.loads(text)))
    comments = sum(block.startswith(":") for block in blocks)
    return Outcome(resp.status_code, resp.headers, events=events, comments=comments)


def error_body(front: str, outcome: Outcome) -> tuple[int | str, str]:
    """The front's own error envelope, checked for shape: (the status or type it names, the message)."""
    body = outcome.body
    if front == "chat":  # OpenRouter's: error.code is the HTTP status
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
        assert body["error"]["code"] == outcome.status and body["error"]["metadata"]["provider_name"]
        return body["error"]["code"], body["error"]["message"]
    if front == "messages":  # Anthropic's
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
        return body["error"]["type"], body["error"]["message"]
    # OpenRouter's Responses shape: error.code the HTTP status, OpenAI's type and param beside it for the openai SDKs.
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    assert body["error"]["param"] is None and body["error"]["code"] == outcome.status
    return body["error"]["type"], body["error"]["message"]


def stream_error(front: str, outcome: Outcome) -> tuple[int | str, str]:
    """The front's mid-stream error, which must end the stream: (its code or type, its message)."""
    events = outcome.events
    assert outcome.status == 200 and events, outcome
    name, data = events[-1]
    if front == "chat":  # OpenRouter's error chunk, no [DONE] after it
        assert data["choices"][0]["finish_reason"] == "error", events[-1]
        return data["error"]["code"], data["error"]["message"]
    if front == "messages":  # Anthropic's error event
        assert name == "error" and data["type"] == "error", events[-1]
        return data["error"]["type"], data["error"]["message"]
    failed = events[-2]  # OpenAI Responses: `error`, then `response.failed`
    assert name == "response.failed" and data["response"]["status"] == "failed", events[-1]
    assert failed[0] == "error", failed
    return failed[1]["code"], failed[1]["message"]


def streamed_text(front: str, outcome: Outcome) -> str:
    assert outcome.events is not None
    out = []
    for name, data in outcome.events:
        if front == "chat" and isinstance(data, dict) and data.get("choices"):
            out.append(data["choices"][0].get("delta", {}).get("content") or "")
        elif front == "messages" and name == "content_block_delta":
            out.append(data["delta"].get("text") or "")
        elif front == "responses" and name == "response.output_text.delta":
            out.append(data["delta"])
    return "".join(out)


def completed(front: str, outcome: Outcome) -> bool:
    """Whether a stream ended the front's normal way."""
    name, data = outcome.events[-1] if outcome.events else (None, None)
    if front == "chat":
        return data == "[DONE]"
    if front == "messages":
        return name == "message_stop"
    return name == "response.completed"


def answer_text(front: str, body: dict) -> str:
    if front == "chat":
        return body["choices"][0]["message"]["content"]
    if front == "messages":
        return "".join(block.get("text", "") for block in body["content"])
    return "".join(part["text"] for item in body["output"] if item["type"] == "message" for part in item["content"])


ERROR_TYPES = {  # what each front names an HTTP status in its envelope
    "chat": {408: 408, 502: 502},
    "messages": {408: "timeout_error", 502: "api_error"},
    "responses": {408: "timeout_error", 502: "server_error"},
}
STREAM_CODES = {"chat": {408: 408, 502: 502}, "messages": ERROR_TYPES["messages"],
                "responses": {408: "server_error", 502: "server_error"}}


def record(gateway: GatewayServer, outcome: Outcome) -> dict:
    generation_id = outcome.headers["x-generation-id"]
    resp = httpx.get(gateway.url + "/api/v1/generation", params={"id": generation_id}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def attempts(data: dict) -> list[tuple[str, int | None]]:
    return [(a["provider_name"], a["status"]) for a in data["provider_responses"]]


# -- the faults ---------------------------------------------------------------------------------------------------
SSE_HEADERS = {"Content-Type": "text/event-stream"}


def openai_events(reply: Reply, upto: int) -> bytes:
    return b"".join(sse(chunk) for chunk in FakeOpenAI().chunks(reply, "m-direct", include_usage=True)[:upto])


Arm = Callable[[FakeOpenAI], None]


def queue(fault: Fault, reply: Reply | None = None, times: int = 2) -> Arm:
    """Queue the fault (and the reply it mangles) for `times` requests: 2 = the attempt and its retry."""
    def arm(fake: FakeOpenAI) -> None:
        fake.fault(*[fault] * times)
        if reply is not None:
            fake.reply(*[reply] * times)
    return arm


@dataclass(frozen=True)
class Case:
    """One fault as one request meets it; the expectations are docs/faults.md's row."""

    fault: str
    kind: str  # the connection: a PROXIED key, or a DIRECT one (one connection per front)
    stream: bool
    status: int  # the HTTP status the client gets (200 for a stream, which then ends with its error event)
    error: str | None  # the client's error message and the record's error contain it ({conn}: the connection)
    error_status: int | None = None  # the error's own status (a stream's error event; the record's status)
    tries: int = 1  # attempts on the faulty connection: 2 = retried once
    attempt: int | None = 200  # each failed attempt's status in the record (None: no HTTP answer at all)
    data_first: bool = False  # a stream: answer data reached the client before the error
    arm: Arm | None = None  # what to queue on the fake (DIRECT kinds)
    breaker: str = "none"  # what one failure opens: "connection", "endpoint" or "none"

    @property
    def id(self) -> str:
        return f"{self.fault}-{'stream' if self.stream else 'whole'}"

    def connection(self, front: str) -> str:
        return self.kind if self.kind in PROXIED else f"{self.kind}-{front}"

    def message(self, front: str) -> str:
        assert self.error is not None
        return self.error.format(conn=self.connection(front))


UNREACHED = "Could not reach upstream {conn}"
BROKE_OFF = "Upstream {conn} broke off its response"
TOO_LARGE = "Upstream {conn} sent more than its max_response_bytes"
UNREADABLE = "Upstream {conn} sent a response the gateway cannot read"
UNREADABLE_EVENT = "Upstream {conn} sent an unreadable stream event"
CUT_LATE = queue(Fault(cut_after=3, chunk_delay=0.05), Reply(text="one two three four five six"), times=1)
MALFORMED_LATE = queue(Fault(body=openai_events(Reply(), 3) + b"data: {oops\n\n", headers=SSE_HEADERS), times=1)
WRONG_SHAPE_EVENT = b'data: {"id": "chatcmpl-1", "choices": [1]}\n\n'

CASES = [
    *[Case("connect-refused", "f-refused", stream, 502, UNREACHED, 502, tries=2, attempt=None,
           breaker="connection") for stream in (False, True)],
    *[Case("connect-timeout", "f-blackhole", stream, 502,
           UNREACHED + f": no connection within {CONNECT_TIMEOUT:g} s", 502, tries=2, attempt=None,
           breaker="connection") for stream in (False, True)],
    *[Case("reset-before-first-byte", "f-reset", stream, 502, UNREACHED, 502, tries=2, attempt=None,
           breaker="connection") for stream in (False, True)],
    Case("headers-then-silence", "f-silence", False, 408, f"Upstream {{conn}} timed out after {SILENCE_TIMEOUT:g} s",
         408, tries=2, attempt=None, breaker="endpoint"),
    Case("headers-then-silence", "f-silence", True, 200, f"Upstream {{conn}} timed out after {SILENCE_TIMEOUT:g} s",
         408, tries=2, breaker="endpoint"),
    Case("cut-mid-way", "f-cut", False, 502, BROKE_OFF, 502, tries=2, attempt=None, breaker="endpoint"),
    Case("cut-before-data", "f-direct", True, 200, BROKE_OFF, 502, tries=2, arm=queue(Fault(cut_after=0)),
         breaker="endpoint"),
    Case("cut-mid-way", "f-direct", True, 200, BROKE_OFF, 502, data_first=True, arm=CUT_LATE, breaker="endpoint"),
    Case("slow-stream", "f-trickle", False, 408, f"Upstream {{conn}} timed out after {TRICKLE_TIMEOUT:g} s", 408,
         tries=2, attempt=None, breaker="endpoint"),
    Case("slow-stream", "f-trickle", True, 200, None),
    *[Case("slow-close", "f-slowclose", stream, 200, None) for stream in (False, True)],
    Case("too-large", "f-capped", False, 502, TOO_LARGE + f" ({CAP} bytes)", 502, tries=2,
         arm=queue(Fault(), Reply(text=BIG)), breaker="endpoint"),
    Case("too-large-first-read", "f-tiny", True, 200, TOO_LARGE + " (64 bytes)", 502, tries=2, breaker="endpoint"),
    Case("too-large", "f-capped", True, 200, TOO_LARGE + f" ({CAP} bytes)", 502, data_first=True,
         arm=queue(Fault(chunk_delay=0.05), Reply(text=BIG), times=1), breaker="endpoint"),
    Case("invalid-json", "f-direct", False, 502, UNREADABLE, 502, tries=2,
         arm=queue(Fault(body=b'{"id": "chatcmpl-1", "choices": [')), breaker="endpoint"),
    Case("json-of-the-wrong-shape", "f-direct", False, 502, UNREADABLE, 502, tries=2,
         arm=queue(Fault(body=b'{"id": "chatcmpl-1", "choices": [1, "two"]}')), breaker="endpoint"),
    Case("malformed-sse-first-event", "f-direct", True, 200, UNREADABLE_EVENT, 502, tries=2,
         arm=queue(Fault(body=b"data: {oops\n\n", headers=SSE_HEADERS)), breaker="endpoint"),
    Case("sse-event-of-the-wrong-shape", "f-direct", True, 200, UNREADABLE_EVENT, 502, tries=2,
         arm=queue(Fault(body=WRONG_SHAPE_EVENT, headers=SSE_HEADERS)), breaker="endpoint"),
    Case("malformed-sse-mid-stream", "f-direct", True, 200, UNREADABLE_EVENT, 502, data_first=True,
         arm=MALFORMED_LATE, breaker="endpoint"),
]


def at_once(checks: dict[str, Callable[[], None]]) -> None:
    """Run the checks concurrently (their requests cannot meet: each has its own connection, and a queued fault its
    own fake); the first failure, named, is the test's."""
    with ThreadPoolExecutor(len(checks)) as pool:
        futures = {name: pool.submit(check) for name, check in checks.items()}
    for name, future in futures.items():
        if (failure := future.exception()) is not None:
            raise AssertionError(f"{name}: {failure}") from failure


def check_outcome(gateway: GatewayServer, front: str, case: Case) -> None:
    """Without a fallback: the client's answer and the generation record, as the case's row says."""
    outcome = send(gateway, front, f"fault/{case.connection(front)[2:]}", case.stream)
    assert outcome.status == case.status, (outcome.status, outcome.body or outcome.events)
    data = record(gateway, outcome)
    connection = case.connection(front)
    if case.error is None:
        if case.stream:
            assert completed(front, outcome), outcome.events
            assert streamed_text(front, outcome) == ANSWER
        else:
            assert answer_text(front, outcome.body) == ANSWER
        assert (data["status"], data["error"]) == (200, None)
        assert attempts(data) == [(connection, 200)]
        return
    if case.stream and case.status == 200:  # the stream had begun: its error event ends it
        code, message = stream_error(front, outcome)
        assert code == STREAM_CODES[front][case.error_status], code
        answered = streamed_text(front, outcome)
        assert bool(answered) == case.data_first, answered
        assert data["finish_reason"] == "error"
    else:
        code, message = error_body(front, outcome)
        assert code == ERROR_TYPES[front][case.status]
    assert case.message(front) in message, message
    assert "sk-faulty-upstream" not in message
    assert data["status"] == case.error_status and case.message(front) in data["error"], data
    # Retried (on the same connection) only before any answer data reached the client.
    assert attempts(data) == [(connection, case.attempt)] * case.tries, attempts(data)


def check_fallback(gateway: GatewayServer, front: str, case: Case) -> None:
    """Through a route whose fallback is a healthy upstream: served by it, unless answer data had gone out."""
    connection = case.connection(front)
    outcome = send(gateway, front, f"fallback-{connection[2:]}", case.stream)
    data = record(gateway, outcome)
    if case.data_first:  # no fallback once the client has part of an answer
        stream_error(front, outcome)
        assert attempts(data) == [(connection, case.attempt)]
        return
    assert outcome.status == 200, outcome
    if case.stream:
        assert completed(front, outcome) and streamed_text(front, outcome) == ANSWER
    else:
        assert answer_text(front, outcome.body) == ANSWER
    assert attempts(data) == [(connection, case.attempt)] * case.tries + [("healthy", 200)]
    assert data["status"] == 200 and data["provider_name"] == "healthy"


def endpoint_status(gateway: GatewayServer, model_id: str) -> int:
    """The live status of a model's one endpoint: 0 ok, -10 ejected by a breaker."""
    resp = httpx.get(f"{gateway.url}/api/v1/models/{model_id}/endpoints", headers=AUTH)
    (endpoint,) = resp.json()["data"]["endpoints"]
    return endpoint["status"]


def check_breaker(gateway: GatewayServer, case: Case) -> None:
    """One attempt, threshold 1: a connection fault ejects every model of its connection, an endpoint fault only
    the model asked for, a served request neither."""
    n = CASES.index(case)
    assert send(gateway, "chat", f"breaker/{n}", case.stream).status == case.status
    ejected = (endpoint_status(gateway, f"breaker/{n}"), endpoint_status(gateway, f"breaker/{n}-sibling"))
    assert ejected == {"connection": (-10, -10), "endpoint": (-10, 0), "none": (0, 0)}[case.breaker]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fault(gw: GatewayServer, breakers: GatewayServer, env: Env, case: Case) -> None:
    """Each fault, for the three fronts: without a fallback (`check_outcome`), with one (`check_fallback`, when it
    fails), and which breaker it opens (`check_breaker`). A fault queued on a fake is queued anew for the fallback
    round, after the first."""
    outcomes = {f"{front}": lambda front=front: check_outcome(gw, front, case) for front in FRONTS}
    outcomes["breaker"] = lambda: check_breaker(breakers, case)
    fallbacks = {f"{front} with a fallback": lambda front=front: check_fallback(gw, front, case)
                 for front in FRONTS} if case.error is not None else {}
    if case.arm is None:
        at_once({**outcomes, **fallbacks})
    else:
        for fake in [*env.upstreams.values(), env.breaker_upstream]:
            case.arm(fake)
        at_once(outcomes)
        if fallbacks:
            for fake in env.upstreams.values():
                case.arm(fake)
            at_once(fallbacks)
    assert len(env.healthy.requests) == (len(FRONTS) if fallbacks and not case.data_first else 0)


def test_a_stream_failing_after_keepalive_interval_ends_with_its_error_event(late: GatewayServer,
                                                                          env: Env) -> None:
    """Past keepalive_interval without the upstream's headers, the stream is committed (200, keep-alive comments):
    a connect that times out later ends it with the front's error event; a whole answer keeps its 502."""
    def check(front: str) -> None:
        outcome = send(late, front, "fault/blackhole", True)
        code, message = stream_error(front, outcome)
        assert code == STREAM_CODES[front][502] and f"no connection within {LATE:g} s" in message
        assert outcome.comments >= 1 and not streamed_text(front, outcome)
        assert record(late, outcome)["status"] == 502
        assert send(late, front, "fault/blackhole", False).status == 502

    at_once({front: lambda front=front: check(front) for front in FRONTS})


def test_connection_limits_are_configured_and_checked(tmp_path: Path) -> None:
    from crossroads.config import ConfigError, load_config

    def load(**connection_keys: Any) -> Any:
        path = tmp_path / "crossroads.yaml"
        conn = {"name": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1", **connection_keys}
        path.write_text(orjson.dumps({"server": {"data_dir": str(tmp_path)}, "providers": [conn]}).decode())
        return load_config(str(path)).providers[0]

    defaults = load()
    assert (defaults.connect_timeout, defaults.max_response_bytes) == (10.0, 64 * 1024 * 1024)
    chosen = load(connect_timeout=0.5, max_response_bytes=1000)
    assert (chosen.connect_timeout, chosen.max_response_bytes) == (0.5, 1000)
    for key, value, problem in (("connect_timeout", 0, "must be positive"), ("max_response_bytes", -1, "positive"),
                                ("connect_timeout", "soon", "must be a number"),
                                ("max_response_bytes", 1.5, "must be an integer")):
        with pytest.raises(ConfigError, match=problem) as raised:
            load(**{key: value})
        assert raised.value.key.endswith(key)
    path = tmp_path / "crossroads.yaml"
    path.write_text(f"providers: [{{name: up, type: openai, base_url: 'http://127.0.0.1:9/v1', "
                    f"connect_timeout: .nan}}]\nserver: {{data_dir: '{tmp_path}'}}\n")
    with pytest.raises(ConfigError, match="finite"):
        load_config(str(path))


# -- the other adapters' wire formats -------------------------------------------------------------------------------
def anthropic_events(upto: int) -> bytes:
    return b"".join(FakeAnthropic().events(Reply(), "m-ant")[:upto])


def gemini_events(upto: int) -> bytes:
    events = FakeGemini().events(Reply(chunks=4), "m-gem", "r1")
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events[:upto])


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("upstream", ["ant", "gem"])
def test_malformed_bodies_of_other_upstreams(gw: GatewayServer, env: Env, front: str, upstream: str) -> None:
    """Each adapter parses its own wire format: an unreadable whole answer is a 502 in the front's envelope after a
    retry; an unreadable event after answer data is the front's error event, without one."""
    fake = env.ant if upstream == "ant" else env.gem
    model, connection = f"fault/{upstream}", f"f-{upstream}"
    fake.fault(*[Fault(body=b'{"type": "message", "content": [')] * 2)
    outcome = send(gw, front, model, False)
    assert outcome.status == 502
    _, message = error_body(front, outcome)
    assert f"Upstream {connection} sent a response the gateway cannot read" in message
    assert attempts(record(gw, outcome)) == [(connection, 200)] * 2

    # Anthropic: message_start, content_block_start, ping, the first text delta; Gemini: two text events.
    good = anthropic_events(4) if upstream == "ant" else gemini_events(2)
    fake.fault(Fault(body=good + b"event: content_block_delta\ndata: {oops\n\n", headers=SSE_HEADERS))
    outcome = send(gw, front, model, True)
    _, message = stream_error(front, outcome)
    assert f"Upstream {connection} sent an unreadable stream event" in message
    assert streamed_text(front, outcome)
    data = record(gw, outcome)
    assert attempts(data) == [(connection, 200)] and data["status"] == 502


# -- the official SDKs ----------------------------------------------------------------------------------------------
def sdk_clients(gw: GatewayServer) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return (openai.OpenAI(base_url=gw.url + "/api/v1", api_key=MASTER_KEY, max_retries=0, timeout=20),
            anthropic.Anthropic(base_url=gw.url + "/api", api_key=MASTER_KEY, max_retries=0, timeout=20))


def test_sdks_see_each_fronts_error(gw: GatewayServer, env: Env) -> None:
    """An unreachable upstream reaches each SDK as its typed 502; a stream cut after data as each SDK's stream error."""
    chat, claude = sdk_clients(gw)
    with pytest.raises(openai.InternalServerError) as raised:
        chat.chat.completions.create(model="fault/refused", messages=HELLO)
    assert raised.value.status_code == 502 and "Could not reach upstream f-refused" in str(raised.value)
    with pytest.raises(openai.InternalServerError) as raised:
        chat.responses.create(model="fault/blackhole", input="hi")
    assert raised.value.status_code == 502 and "no connection within" in str(raised.value)
    with pytest.raises(anthropic.InternalServerError) as raised_a:
        claude.messages.create(model="fault/reset", max_tokens=64, messages=HELLO)
    assert raised_a.value.status_code == 502 and raised_a.value.body["error"]["type"] == "api_error"

    for front in FRONTS:
        CUT_LATE(env.upstreams[front])
    with pytest.raises(openai.APIError, match="broke off"):
        for _ in chat.chat.completions.create(model="fault/direct-chat", messages=HELLO, stream=True):
            pass
    with pytest.raises(anthropic.APIStatusError, match="broke off"), \
            claude.messages.stream(model="fault/direct-messages", max_tokens=64, messages=HELLO) as stream:
        for _ in stream.text_stream:
            pass
    # The Responses API reports a failed stream in events (as OpenAI does): `error`, then `response.failed`.
    events = list(chat.responses.create(model="fault/direct-responses", input="hi", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert "broke off" in events[-2].message and events[-1].response.status == "failed"


def test_sdks_are_served_by_the_fallback(gw: GatewayServer, env: Env) -> None:
    chat, claude = sdk_clients(gw)
    text = "".join(c.choices[0].delta.content or "" for c in chat.chat.completions.create(
        model="fallback-reset", messages=HELLO, stream=True) if c.choices)
    assert text == ANSWER
    assert chat.responses.create(model="fallback-refused", input="hi").output_text == ANSWER
    assert claude.messages.create(model="fallback-silence", max_tokens=64, messages=HELLO).content[0].text == ANSWER
    assert len(env.healthy.requests) == 3
