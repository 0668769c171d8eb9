"""What the gateway tells operators (issue 12): the access log, warnings, X-Request-Id, no secret in any log line,
and the liveness/readiness checks. Metrics: tests/observability/test_metrics.py; traces: tests/observability/test_tracing.py."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayProcess, GatewayServer, gateway_config, redis_test_url
from tests.fakes.base import Fault
from tests.fakes.tcpproxy import TcpProxy

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MODEL = "openai/gpt-4o-mini"


def chat(gateway: GatewayProcess, *, key: str = MASTER_KEY, stream: bool = False, model: str = MODEL,
         headers: dict[str, str] | None = None, content: str = "hi") -> httpx.Response:
    return httpx.post(gateway.url + "/api/v1/chat/completions",
                      headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      json={"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]},
                      timeout=15)


def json_lines(gateway: GatewayProcess) -> list[dict]:
    """Every log line the gateway wrote (the CLI's start-up prints are plain text and skipped); each must parse."""
    return [json.loads(line) for line in gateway.log().splitlines() if line.startswith("{")]


def access_line(gateway: GatewayProcess, request_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in json_lines(gateway)
                 if line["logger"] == "crossroads.access" and line.get("request_id") == request_id]
        if found:
            assert len(found) == 1, found  # one line per request
            return found[0]
        assert time.monotonic() < deadline, f"no access line for {request_id}:\n{gateway.log()[-3000:]}"
        time.sleep(0.05)


def ready_again(gateway: GatewayProcess, timeout: float = 15.0) -> None:
    """Wait until /health/ready is 200 again (after an outage ended)."""
    deadline = time.monotonic() + timeout
    while (ready := httpx.get(gateway.url + "/health/ready", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.2)


@pytest.fixture
def observed(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path) -> GatewayProcess:
    """A gateway logging JSON with retries, a breaker that opens after two failures, and a route with a fallback. A
    process: what these tests read is its log output as an operator gets it (the access lines through the batched
    writer of observability/logs.py, which only a configured process uses)."""
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data")
    config["routing"] = {"retries": 1, "breaker": {"failure_threshold": 2, "cooldown": 60}}
    config["routes"] = [{"name": "with-fallback", "targets": [{"connection": "oai", "model": "gpt-4o-mini"}],
                         "fallback": ["anthropic/claude-sonnet-4"]}]
    proc = GatewayProcess(config, tmp_path, args=["--log-format", "json"]).start()
    yield proc
    proc.stop()


def test_one_access_line_per_request_with_its_fields(observed, fake_openai) -> None:
    resp = chat(observed, headers={"X-Request-Id": "client-id.1", "X-Title": "Log test app"})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "client-id.1"
    assert {k.lower(): v for k, v in fake_openai.last.headers.items()}["x-request-id"] == "client-id.1"  # sent upstream
    line = access_line(observed, "client-id.1")
    assert line["level"] == "INFO" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert (line["method"], line["path"], line["status"]) == ("POST", "/api/v1/chat/completions", 200)
    assert line["generation_id"] == resp.json()["id"] == resp.headers["x-generation-id"]
    assert (line["model"], line["served_model"], line["connection"], line["attempts"]) == (MODEL, MODEL, "oai", 1)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (11, 7) and line["cost"] > 0
    assert line["key_name"] == "master" and line["app"] == "Log test app" and line["latency_ms"] > 0

    stream = chat(observed, stream=True)
    streamed = access_line(observed, stream.headers["x-request-id"])
    assert streamed["stream"] is True and streamed["ttft_ms"] is not None and streamed["status"] == 200

    for insane in ("has spaces", "x" * 200, "new\\nline"):
        resp = httpx.get(observed.url + "/api/v1/models", headers={**AUTH, "X-Request-Id": insane})
        assert re.fullmatch(r"req-[0-9A-Za-z]{16}[0-9a-f]{8,}", resp.headers["x-request-id"]), insane
    # Every response carries one: errors, unknown paths, the dashboard.
    for resp in (httpx.get(observed.url + "/nope"), httpx.get(observed.url + "/signin"),
                 httpx.post(observed.url + "/api/v1/chat/completions", json={})):
        assert resp.headers["x-request-id"].startswith("req-")
        line = access_line(observed, resp.headers["x-request-id"])
        assert line["status"] == resp.status_code and line["path"] == resp.request.url.path


def test_records_are_observed_in_batches_and_a_stop_observes_the_last(fake_openai, fake_anthropic, fake_gemini,
                                                                      fake_local, tmp_path, caplog) -> None:
    # Access lines and counts are made for the requests of each BATCH_EVERY together, shortly after their answers;
    # stopping makes the batch still waiting first.
    from crossroads.api.app import Gateway
    from crossroads.config import load_config
    from crossroads.observability.hub import BATCH_EVERY
    from crossroads.observability.record import RequestInfo

    config_path = tmp_path / "crossroads.yaml"
    config_path.write_text(json.dumps(gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local,
                                                          tmp_path / "data")))
    observability = Gateway(load_config(str(config_path))).observability
    caplog.set_level(logging.INFO, logger="crossroads.access")

    def record(request_id: str) -> RequestInfo:
        return RequestInfo(request_id=request_id, method="GET", path="/nope", endpoint="unmatched", status=404,
                           started=time.time(), started_mono=time.monotonic(), duration=0.001, key_name=None,
                           key_label=None, exchange=None)

    def logged() -> list[str]:
        return [r.fields["request_id"] for r in caplog.records if r.name == "crossroads.access"]

    async def scenario() -> None:
        observability.end(record("first"), None)
        assert logged() == []
        await asyncio.sleep(BATCH_EVERY * 3)
        assert logged() == ["first"]
        observability.end(record("second"), None)
        observability.end(record("third"), None)
        await observability.stop()
        assert logged() == ["first", "second", "third"]

    asyncio.run(scenario())


def test_warnings_say_what_failed(observed, fake_openai, fake_anthropic) -> None:
    fake_openai.fault(Fault(status=500, message="model overloaded"), Fault(status=500, message="model overloaded"))
    resp = chat(observed, model="with-fallback")
    assert resp.status_code == 200 and resp.headers["x-crossroads-connection"] == "ant"
    request_id = resp.headers["x-request-id"]
    line = access_line(observed, request_id)
    assert line["attempts"] == 3 and line["connection"] == "ant"
    warnings = [w for w in json_lines(observed) if w["level"] == "WARNING" and w.get("request_id") == request_id]
    messages = [w["message"] for w in warnings]
    assert any(re.search(r"upstream oai model gpt-4o-mini failed \(attempt 1, HTTP 500\): .*model overloaded.*"
                         r"retrying in", m) for m in messages), messages
    assert any("(attempt 2, HTTP 500)" in m and "falling back to the next candidate" in m for m in messages), messages
    assert any("circuit breaker of endpoint oai model gpt-4o-mini opened after 2 consecutive failures" in m
               for m in messages), messages

    # Auth failures: the first in full (key prefix only), the rest summarised in one line.
    wrong = "sk-cr-v1-" + secrets.token_hex(32)
    for _ in range(5):
        assert chat(observed, key=wrong).status_code == 401
    # A key's own rpm limit.
    created = httpx.post(observed.url + "/api/v1/keys", headers=AUTH, json={"name": "tight", "rpm": 1}).json()
    assert chat(observed, key=created["key"]).status_code == 200
    assert chat(observed, key=created["key"]).status_code == 429
    observed.stop()  # shutdown flushes the summaries
    log = observed.log()
    failures = [w["message"] for w in json_lines(observed) if w["logger"] == "crossroads.gate"]
    assert any(m.startswith(f"authentication failed for key {wrong[:12]}… on /api/v1/chat/completions") for m in failures)
    assert any(m.startswith("authentication failed 4 more time(s) in the last 60 s") for m in failures), failures
    assert any(m.startswith("rate limit reached for key tight (sk-") for m in failures), failures
    assert wrong[12:20] not in log


def test_no_secret_reaches_the_log(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path) -> None:
    """Every kind of secret used once, at DEBUG, with failures that tempt a log line to quote them."""
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data")
    proc = GatewayProcess(config, tmp_path, args=["--log-format", "text", "--log-level", "debug"]).start()
    secrets_used = [MASTER_KEY, fake_openai.api_key, fake_anthropic.api_key, fake_gemini.api_key]
    try:
        created = httpx.post(proc.url + "/api/v1/keys", headers=AUTH, json={"name": "user", "limit": 5}).json()
        management = httpx.post(proc.url + "/api/v1/keys", headers=AUTH,
                                json={"name": "ops", "management": True}).json()
        secrets_used += [created["key"], management["key"]]
        for key in (created["key"], management["key"]):
            assert chat(proc, key=key).status_code in (200, 403)
        assert chat(proc, key=created["key"], model="anthropic/claude-sonnet-4").status_code == 200
        assert chat(proc, key=created["key"], model="google/gemini-2.5-flash", stream=True).status_code == 200
        # An upstream that quotes the gateway's credential back in its error body.
        fake_openai.fault(Fault(status=401, message=f"Incorrect API key provided: {fake_openai.api_key}"))
        assert chat(proc).status_code == 502
        assert chat(proc, key=MASTER_KEY[:-1] + "x").status_code == 401  # a near-miss of the master key
        # OAuth PKCE: the code and the key it becomes.
        verifier = secrets.token_urlsafe(48)
        with httpx.Client(base_url=proc.url, timeout=15) as client:
            assert client.post("/signin", data={"key": MASTER_KEY}).status_code == 303
            consent = client.get("/auth", params={"callback_url": "http://localhost:3999/cb",
                                                  "code_challenge": verifier, "code_challenge_method": "plain"})
            csrf = re.search(r'name="csrf" value="([^"]+)"', consent.text).group(1)
            approved = client.post("/auth", data={"csrf": csrf, "limit": "", "decision": "approve",
                                                  "callback_url": "http://localhost:3999/cb",
                                                  "code_challenge": verifier, "code_challenge_method": "plain"})
        code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
        exchanged = httpx.post(proc.url + "/api/v1/auth/keys", json={"code": code, "code_verifier": verifier,
                                                                     "code_challenge_method": "plain"})
        assert exchanged.status_code == 200
        secrets_used += [code, verifier, exchanged.json()["key"]]
        assert httpx.post(proc.url + "/signin", data={"key": created["key"]}).status_code == 401
    finally:
        proc.stop()
    log = proc.log()
    assert "crossroads.access" in log and "status=502" in log and "DEBUG" in log  # the run really logged
    for secret in secrets_used:
        assert secret not in log, f"a secret ({secret[:6]}...) is in the log"


def test_health_live_and_ready(gateway) -> None:
    assert httpx.get(gateway.url + "/health/live").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/health/ready")
    body = ready.json()
    assert ready.status_code == 200 and body["status"] == "ready", body
    assert {name for name, check in body["checks"].items() if check["ok"]} == {"database", "accounting",
                                                                                 "connections"}
    assert body["checks"]["connections"]["serving"] == 5 and body["checks"]["accounting"]["pending_records"] >= 0
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}  # unchanged


def test_not_ready_when_every_connection_is_ejected(fake_openai, tmp_path: Path) -> None:
    config = {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(tmp_path / "data")},
              "routing": {"retries": 0, "breaker": {"failure_threshold": 1, "cooldown": 60}},
              "providers": [{"name": "only", "type": "openai", "base_url": fake_openai.base_url + "/v1",
                             "api_key": fake_openai.api_key, "models": [{"id": MODEL, "upstream": "gpt-4o-mini"}]}]}
    proc = GatewayServer(config, tmp_path).start()
    try:
        assert httpx.get(proc.url + "/health/ready").status_code == 200
        fake_openai.fault(Fault(status=500))
        assert chat(proc).status_code == 502
        ready = httpx.get(proc.url + "/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        connections = ready.json()["checks"]["connections"]
        assert connections["ok"] is False and "ejected" in connections["error"]
        assert httpx.get(proc.url + "/health/live").status_code == 200
    finally:
        proc.stop()


def test_readiness_follows_postgres(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path,
                                    postgres_database) -> None:
    host_port = postgres_database.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    via_proxy = postgres_database.replace(host_port, f"127.0.0.1:{proxy.port}")
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data")
    proc = GatewayServer(config, tmp_path, env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        assert httpx.get(proc.url + "/health/ready").status_code == 200
        proxy.down()
        ready = httpx.get(proc.url + "/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False, ready.text
        assert "@" not in ready.text and str(proxy.port) not in ready.text  # no URL, no password
        assert httpx.get(proc.url + "/health/live").status_code == 200
        proxy.up()
        ready_again(proc)
    finally:
        proc.stop()
        proxy.close()


def test_readiness_follows_redis(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path) -> None:
    redis_url = redis_test_url()
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname, parts.port)
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path / "data")
    proc = GatewayServer(config, tmp_path, env={
        "CROSSROADS_REDIS_URL": redis_url.replace(parts.netloc, f"127.0.0.1:{proxy.port}")}).start()
    try:
        ready = httpx.get(proc.url + "/health/ready").json()
        assert ready["status"] == "ready" and ready["checks"]["redis"] == {"ok": True}
        proxy.down()
        ready = httpx.get(proc.url + "/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["redis"]["ok"] is False, ready.text
        proxy.up()
        ready_again(proc)
    finally:
        proc.stop()
        proxy.close()


def test_the_grafana_dashboard_names_only_metrics_the_gateway_serves(gateway) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    named = {re.sub(r"_(bucket|count|sum)$", "", name) for expr in expressions
             for name in re.findall(r"\bcrossroads_\w+", expr)}
    scrape = httpx.get(gateway.url + "/metrics")
    assert scrape.status_code == 200
    served = set()
    for family in text_string_to_metric_families(scrape.text):
        served.add(family.name)
        served.add(family.name + "_total")  # the parser names counters without their _total suffix
    assert named and named <= served, named - served
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for subject in ("request rate", "error rate", "latency", "first token", "tokens", "spend", "breaker"):
        assert subject in titles, subject
