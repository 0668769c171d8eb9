"""OpenTelemetry traces: spans exported over OTLP/HTTP to a receiver on loopback, from a real gateway process.

The gateway continues the client's `traceparent`, makes a span per request and one per upstream attempt with the
GenAI attributes, passes the trace upstream, and never exports prompt or completion text. Without OTEL_* (or without
the [otel] extra) nothing of OpenTelemetry is imported."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from crossroads.observability import tracing
from crossroads.observability.tracing import parse_traceparent, parse_tracestate, tracer_from_environment
from crossroads.providers.registry import spec_for
from tests.conftest import MASTER_KEY, GatewayProcess
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import Fault, Reply
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.otlp import OTLPReceiver, ReceivedSpan

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
CHAT = "/api/v1/chat/completions"
PRICE = {"prompt": 1.0, "completion": 2.0}
# Text that must never reach a span: what the client asked and what the model answered.
PROMPT = "the-secret-prompt-" + secrets.token_hex(8)
COMPLETION = "the-secret-completion-" + secrets.token_hex(8)
SRC = Path(__file__).resolve().parents[2] / "src"


# -- a gateway exporting to a receiver ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    server = OTLPReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    oai, ant = FakeOpenAI().start(), FakeAnthropic().start()
    yield oai, ant
    oai.stop()
    ant.stop()


@pytest.fixture(autouse=True)
def _reset(upstreams) -> None:
    for fake in upstreams:
        fake.reset()


def otel_env(receiver: OTLPReceiver, schedule_delay_ms: int) -> dict[str, str]:
    """The standard variables, each set so that the test's own environment cannot change what it checks."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_SCHEDULE_DELAY": str(schedule_delay_ms), "OTEL_SERVICE_NAME": "crossroads-under-test"}


def traced_config(oai: FakeOpenAI, ant: FakeAnthropic, data_dir: Path) -> dict:
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir),
                   "keepalive_interval": 0.3},
        # One retry on the same endpoint, then the request's `models` fallback; a breaker that never opens.
        "routing": {"retries": 1, "max_retry_wait": 1, "breaker": {"failure_threshold": 1000000}},
        "providers": [
            {"name": "oai", "type": "openai", "base_url": oai.base_url + "/v1", "api_key": oai.api_key,
             "timeout": 5, "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini", "pricing": PRICE}]},
            {"name": "ant", "type": "anthropic", "base_url": ant.base_url + "/v1", "api_key": ant.api_key,
             "timeout": 5, "models": [{"id": "anthropic/claude-sonnet-4", "upstream": "claude-sonnet-4-20250514",
                                       "pricing": PRICE}]},
        ],
    }


@pytest.fixture(scope="module")
def gateway(receiver, upstreams, tmp_path_factory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("traced")
    proc = GatewayProcess(traced_config(*upstreams, workdir / "data"), workdir,
                          env=otel_env(receiver, schedule_delay_ms=50)).start()
    yield proc
    assert proc.stop() == 0
    # Building spans never failed (observability/hub.py would log it) and the SDK never complained about them.
    for line in proc.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            assert not entry["logger"].startswith("opentelemetry"), line
            assert not entry["message"].startswith("could not record request"), line


def traceparent_of(recorded_headers: dict[str, str]) -> str:
    values = [value for name, value in recorded_headers.items() if name.lower() == "traceparent"]
    assert len(values) == 1, recorded_headers
    return values[0]


def header_of(recorded_headers: dict[str, str], wanted: str) -> str | None:
    return next((value for name, value in recorded_headers.items() if name.lower() == wanted), None)


def spans_of(receiver: OTLPReceiver, trace_id: str, count: int) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The trace's request span and its attempt spans (in attempt order), once `count` spans in all arrived."""
    spans = receiver.wait_for(lambda: len(found := receiver.trace(trace_id)) >= count and found)
    assert len(spans) == count, [(s.name, s.kind) for s in spans]
    servers = [s for s in spans if s.kind == "server"]
    assert len(servers) == 1, [(s.name, s.kind) for s in spans]
    attempts = sorted((s for s in spans if s.kind == "client"), key=lambda s: s.attributes["crossroads.attempt"])
    return servers[0], attempts


def assert_no_text(receiver: OTLPReceiver) -> None:
    for body in receiver.bodies:
        assert PROMPT.encode() not in body and COMPLETION.encode() not in body
        assert b"the-secret-" not in body


def chat(gateway: GatewayProcess, headers: dict[str, str] | None = None, **body) -> httpx.Response:
    return httpx.post(gateway.url + CHAT, headers={**AUTH, **(headers or {})}, timeout=20,
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}],
                            **body})


# -- end to end -----------------------------------------------------------------------------------------------------
def test_client_trace_is_continued_and_passed_upstream(gateway, receiver, upstreams) -> None:
    oai, _ = upstreams
    oai.reply(Reply(text=COMPLETION, prompt_tokens=11, completion_tokens=7))
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    resp = chat(gateway, {"traceparent": f"00-{trace_id}-{client_span}-01", "tracestate": "vendor=abc,other=x y"})
    assert resp.status_code == 200, resp.text
    request, attempts = spans_of(receiver, trace_id, 2)

    assert request.parent_span_id == client_span
    assert request.name == "chat openai/gpt-4o-mini"
    assert request.resource["service.name"] == "crossroads-under-test"
    assert not request.error
    attributes = request.attributes
    assert {name: attributes.get(name) for name in (
        "http.request.method", "http.route", "http.response.status_code", "gen_ai.operation.name",
        "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons", "gen_ai.response.id",
        "crossroads.connection", "crossroads.request_id", "crossroads.key_name", "crossroads.stream")} == {
        "http.request.method": "POST", "http.route": CHAT, "http.response.status_code": 200,
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "openai/gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 7, "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.response.id": resp.json()["id"], "crossroads.connection": "oai",
        "crossroads.request_id": resp.headers["x-request-id"], "crossroads.key_name": "master",
        "crossroads.stream": False}
    assert attributes["crossroads.cost_usd"] == pytest.approx((11 * 1.0 + 7 * 2.0) / 1e6)

    [attempt] = attempts
    assert attempt.parent_span_id == request.span_id and attempt.trace_id == trace_id
    assert attempt.name == "chat gpt-4o-mini" and not attempt.error
    assert {name: attempt.attributes.get(name) for name in (
        "crossroads.attempt", "crossroads.connection", "gen_ai.provider.name", "gen_ai.request.model",
        "gen_ai.usage.output_tokens", "http.response.status_code", "server.address", "server.port")} == {
        "crossroads.attempt": 1, "crossroads.connection": "oai", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.output_tokens": 7, "http.response.status_code": 200,
        "server.address": "127.0.0.1", "server.port": oai.port}
    assert request.start_ns <= attempt.start_ns < attempt.end_ns <= request.end_ns

    # The upstream request's parent is the attempt's span, in the client's trace, with the client's tracestate.
    assert traceparent_of(oai.last.headers) == f"00-{trace_id}-{attempt.span_id}-01"
    assert header_of(oai.last.headers, "tracestate") == "vendor=abc,other=x y"
    assert_no_text(receiver)


def test_a_stream_starts_a_new_trace_and_its_attempt_lasts_until_the_last_event(gateway, receiver,
                                                                                upstreams) -> None:
    oai, _ = upstreams
    oai.reply(Reply(text=COMPLETION + " and four more words", chunks=5))
    oai.fault(Fault(chunk_delay=0.06))  # the events come 60 ms apart: 0.3 s after the response's headers
    invalid = f"00-{'0' * 32}-{'1' * 16}-01"  # an all-zero trace id: ignored, the request starts a new trace
    with httpx.stream("POST", gateway.url + CHAT, headers={**AUTH, "traceparent": invalid},
                      json={"model": "openai/gpt-4o-mini", "stream": True,
                            "messages": [{"role": "user", "content": PROMPT}]}, timeout=20) as resp:
        assert resp.status_code == 200
        assert "data: [DONE]" in resp.read().decode()
    sent = traceparent_of(oai.last.headers)
    version, trace_id, parent, flags = sent.split("-")
    assert version == "00" and trace_id != "0" * 32 and int(flags, 16) & 1
    request, [attempt] = spans_of(receiver, trace_id, 2)

    assert request.parent_span_id == "" and attempt.parent_span_id == request.span_id
    assert attempt.span_id == parent
    assert request.attributes["crossroads.stream"] is True and request.attributes["gen_ai.usage.output_tokens"] > 0
    assert request.attributes["crossroads.ttft_ms"] > 0
    assert attempt.end_ns - attempt.start_ns >= 0.25e9  # the stream's end, not the moment its status was known
    assert request.start_ns <= attempt.start_ns < attempt.end_ns <= request.end_ns
    assert_no_text(receiver)


def test_retried_and_fallen_back_attempts_are_spans_of_the_request(gateway, receiver, upstreams) -> None:
    oai, ant = upstreams
    oai.fault(Fault(status=500, message=PROMPT), Fault(status=503))  # the first fails, and its one retry
    ant.reply(Reply(text=COMPLETION, prompt_tokens=5, completion_tokens=3))
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    resp = chat(gateway, {"traceparent": f"00-{trace_id}-{client_span}-01"}, models=["anthropic/claude-sonnet-4"])
    assert resp.status_code == 200, resp.text
    request, attempts = spans_of(receiver, trace_id, 4)

    assert request.parent_span_id == client_span and not request.error
    assert request.attributes["gen_ai.provider.name"] == "anthropic"
    assert request.attributes["crossroads.connection"] == "ant"
    assert request.attributes["gen_ai.usage.output_tokens"] == 3
    assert [(a.attributes["crossroads.attempt"], a.attributes["crossroads.connection"],
             a.attributes["gen_ai.provider.name"], a.attributes["gen_ai.request.model"],
             a.attributes["http.response.status_code"], a.attributes.get("error.type"), a.error) for a in attempts] == [
        (1, "oai", "openai", "gpt-4o-mini", 500, "500", True),
        (2, "oai", "openai", "gpt-4o-mini", 503, "503", True),
        (3, "ant", "anthropic", "claude-sonnet-4-20250514", 200, None, False)]
    assert all(a.parent_span_id == request.span_id for a in attempts)
    assert "gen_ai.usage.output_tokens" not in attempts[0].attributes
    assert attempts[2].attributes["gen_ai.usage.output_tokens"] == 3
    # In order, one after the other, within the request.
    assert request.start_ns <= attempts[0].start_ns
    for earlier, later in zip(attempts, attempts[1:], strict=False):
        assert earlier.end_ns <= later.start_ns
    assert attempts[-1].end_ns <= request.end_ns
    # Each upstream request carried its own attempt's span as parent.
    sent = [traceparent_of(r.headers) for r in (*oai.requests, *ant.requests)]
    assert sent == [f"00-{trace_id}-{a.span_id}-01" for a in attempts]
    assert_no_text(receiver)  # the upstream's error message quoted the prompt: not exported either


def test_failures_and_other_requests(gateway, receiver, upstreams) -> None:
    oai, _ = upstreams
    oai.fault(Fault(status=500), Fault(status=500))
    trace_id = secrets.token_hex(16)
    resp = chat(gateway, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert resp.status_code >= 500
    request, attempts = spans_of(receiver, trace_id, 3)
    assert request.error and request.attributes["error.type"] == str(resp.status_code)
    assert request.attributes["http.response.status_code"] == resp.status_code
    assert [a.error for a in attempts] == [True, True]

    # Health probes are not traced; a refused request is (no exchange: an HTTP span only, not an error: the
    # client's mistake).
    assert httpx.get(gateway.url + "/health").status_code == 200
    trace_id = secrets.token_hex(16)
    refused = httpx.post(gateway.url + CHAT, headers={"Authorization": "Bearer sk-wrong",
                                                      "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
                         json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 401
    request, attempts = spans_of(receiver, trace_id, 1)
    assert request.name == f"POST {CHAT}" and not request.error and not attempts
    assert request.attributes["http.response.status_code"] == 401
    assert "gen_ai.operation.name" not in request.attributes
    assert not [s for s in receiver.spans if s.attributes.get("url.path", "").startswith("/health")]
    assert all(path == "/v1/traces" for path in receiver.paths)


def test_shutdown_exports_what_is_still_queued(receiver, upstreams, tmp_path) -> None:
    """A batch delay of a minute: only the flush at shutdown can have sent the spans."""
    proc = GatewayProcess(traced_config(*upstreams, tmp_path / "data"), tmp_path,
                          env=otel_env(receiver, schedule_delay_ms=60_000)).start()
    trace_id = secrets.token_hex(16)
    try:
        assert chat(proc, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}).status_code == 200
    finally:
        assert proc.stop() == 0
    assert len(receiver.trace(trace_id)) == 2


def test_a_collector_that_does_not_answer_costs_the_clients_nothing(upstreams, tmp_path) -> None:
    """Exports wait for an answer that never comes: requests are served as usual and the shutdown gives up on the
    spans after SHUTDOWN_WAIT."""
    with socket.socket() as silent:  # accepts connections (the kernel does) and never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = {**otel_env(SimpleNamespace(endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}"), 50),
               "OTEL_EXPORTER_OTLP_TIMEOUT": "60"}
        proc = GatewayProcess(traced_config(*upstreams, tmp_path / "data"), tmp_path, env=env).start()
        try:
            for _ in range(3):
                started = time.monotonic()
                assert chat(proc).status_code == 200
                assert time.monotonic() - started < 1
                time.sleep(0.1)  # a batch goes (and hangs) meanwhile
        finally:
            stopping = time.monotonic()
            assert proc.stop() == 0
        assert time.monotonic() - stopping < tracing.SHUTDOWN_WAIT + 3
    assert "traces not exported within" in proc.log()


# -- configuration --------------------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_tracing_is_on_only_when_the_environment_configures_an_exporter(clean_env) -> None:
    assert tracer_from_environment() is None
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    for name, value in (("OTEL_SDK_DISABLED", "TRUE"), ("OTEL_TRACES_EXPORTER", "none")):
        clean_env.setenv(name, value)
        assert tracer_from_environment() is None
        clean_env.delenv(name)
    tracer = tracer_from_environment()
    assert isinstance(tracer, tracing.Tracer)
    assert tracer.provider.resource.attributes["service.name"] == "crossroads"
    tracer.shutdown()
    clean_env.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    clean_env.setenv("OTEL_SERVICE_NAME", "edge-gateway")
    tracer = tracer_from_environment()
    assert tracer is not None and tracer.provider.resource.attributes["service.name"] == "edge-gateway"
    tracer.shutdown()


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                          env={**base, "PYTHONPATH": str(SRC), **env})


def test_nothing_of_opentelemetry_is_imported_without_configuration() -> None:
    done = run_python("""
        import sys
        from crossroads.api.app import Gateway  # noqa: F401 - what a gateway process imports
        from crossroads.observability.tracing import tracer_from_environment
        assert tracer_from_environment() is None
        loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
        assert not loaded, loaded
        print("clean")
        """, {})
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr


def test_without_the_extra_one_warning_says_how_to_install_it() -> None:
    done = run_python("""
        import importlib.abc, logging, sys

        class NoOpenTelemetry(importlib.abc.MetaPathFinder):  # as if the [otel] extra were not installed
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(name)

        sys.meta_path.insert(0, NoOpenTelemetry())
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
        from crossroads.observability.tracing import tracer_from_environment
        assert tracer_from_environment() is None
        """, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("WARNING crossroads.observability OTEL_EXPORTER_OTLP_ENDPOINT is set")
    assert "traces are off" in lines[0] and "pip install 'crossroads[otel]'" in lines[0]


# -- W3C Trace Context ----------------------------------------------------------------------------------------------
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(("value", "expected"), [
    (f"00-{TRACE}-{PARENT}-01", (int(TRACE, 16), int(PARENT, 16), 1)),
    (f"00-{TRACE}-{PARENT}-00", (int(TRACE, 16), int(PARENT, 16), 0)),
    (f"01-{TRACE}-{PARENT}-03-what-comes-later", (int(TRACE, 16), int(PARENT, 16), 3)),  # a later version
    (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 has exactly four fields
    (f"ff-{TRACE}-{PARENT}-01", None),
    (f"00-{TRACE.upper()}-{PARENT}-01", None),
    (f"00-{'0' * 32}-{PARENT}-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"00-{TRACE}-{PARENT}-1", None),
    (f"00-{TRACE}-{PARENT}-01\n", None),
    ("", None),
])
def test_traceparent(value: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_traceparent(value.encode()) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("vendor=abc, other=x y,,t@sys=1", [("vendor", "abc"), ("other", "x y"), ("t@sys", "1")]),
    ("vendor=abc,vendor=def", []),  # a duplicate key: all dropped
    ("Vendor=abc", []),
    ("vendor=a,b", []),
    ("vendor=é", []),
    (",".join(f"k{n}=v" for n in range(33)), []),  # more than 32 members
])
def test_tracestate(value: str, expected: list[tuple[str, str]]) -> None:
    assert parse_tracestate(value.encode()) == expected


# -- spans made in process (what a live request cannot easily show) -------------------------------------------------
@pytest.fixture
def in_memory() -> Iterator[tuple[tracing.Tracer, object]]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer = tracing.Tracer(SimpleSpanProcessor(exporter))
    yield tracer, exporter
    tracer.shutdown()


def fake_request(path: str = CHAT, **headers: str) -> SimpleNamespace:
    return SimpleNamespace(method="POST", path=path,
                           headers={name.encode(): value.encode() for name, value in headers.items()})


def fake_info(exchange: object, *, status: int = 200, duration: float = 2.0) -> SimpleNamespace:
    return SimpleNamespace(request_id="req-1", method="POST", path=CHAT, endpoint=CHAT, status=status,
                           started=1_700_000_000.0, started_mono=100.0, duration=duration,
                           key_name="ops", key_label=None, exchange=exchange, error=None)


def fake_exchange(**fields: object) -> SimpleNamespace:
    from crossroads.canonical import Usage

    connection = SimpleNamespace(name="oai", config=SimpleNamespace(type="openai", base_url="https://u:pw@api.x/v1"),
                                 spec=spec_for("openai"))
    model = SimpleNamespace(id="openai/gpt-4o-mini", upstream="gpt-4o-mini")
    values = dict(api_type="chat", requested_model="openai/gpt-4o-mini", model_id=model.id, upstream_model=None,
                  upstream_id=None, generation_id="gen-1", connection=connection, model=model, stream=False,
                  started=100.0, first_token=None, status=200, cancelled=False, usage=Usage(), streamed_chars=0,
                  finish_reason=None, attempts=[], sent_attempts=[], upstream_started=None, upstream_ended=None,
                  billed_usage=Usage, cost=lambda: 0.0)
    values.update(fields)
    return SimpleNamespace(**values)


def test_an_attempt_in_flight_when_the_client_left_is_a_cancelled_span(in_memory) -> None:
    tracer, exporter = in_memory
    trace = tracer.start(fake_request())
    first, second = trace.upstream_headers(), trace.upstream_headers()
    connection = fake_exchange().connection
    exchange = fake_exchange(
        status=499, upstream_started=101.0,
        attempts=[{"status": 429, "error": "Upstream oai failed (HTTP 429)"}],
        sent_attempts=[(100.5, 100.75, connection, fake_exchange().model)])
    trace.end(fake_info(exchange, status=499))
    spans = {span.name + str(span.attributes.get("crossroads.attempt", "")): span
             for span in exporter.get_finished_spans()}
    assert set(spans) == {"chat openai/gpt-4o-mini", "chat gpt-4o-mini1", "chat gpt-4o-mini2"}
    request, failed, left = spans["chat openai/gpt-4o-mini"], spans["chat gpt-4o-mini1"], spans["chat gpt-4o-mini2"]
    assert request.status.status_code.name == "UNSET"  # 499: the client left, not the gateway's failure
    assert failed.status.status_code.name == "ERROR" and failed.attributes["error.type"] == "429"
    assert (failed.start_time, failed.end_time) == (1_700_000_000_500_000_000, 1_700_000_000_750_000_000)
    assert left.attributes["crossroads.cancelled"] is True and left.status.status_code.name == "UNSET"
    assert (left.start_time, left.end_time) == (1_700_000_001_000_000_000, 1_700_000_002_000_000_000)
    assert [f"{span.context.span_id:016x}" for span in (failed, left)] == [
        headers["traceparent"].split("-")[2] for headers in (first, second)]
    # The upstream's host, never its URL (which holds a password here).
    assert failed.attributes["server.address"] == "api.x" and failed.attributes["server.port"] == 443
    assert not any("pw" in str(value) for span in spans.values() for value in span.attributes.values())


def test_an_unsampled_client_trace_stays_unsampled(in_memory) -> None:
    tracer, exporter = in_memory
    trace = tracer.start(fake_request(traceparent=f"00-{TRACE}-{PARENT}-00"))
    assert trace.upstream_headers()["traceparent"].endswith("-00")
    trace.end(fake_info(fake_exchange()))
    assert exporter.get_finished_spans() == ()
    assert tracer.start(fake_request(path="/health")) is None
