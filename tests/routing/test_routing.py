"""Routing, fallbacks, retries, the circuit breaker and capacity limits, end to end against fake upstreams. The
module's gateway runs in this process on a fake clock (tests/harness.py FakeClock): cool-downs pass when a test
advances it, and retry backoffs are waited on it (at once, in real time)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, FakeClock, GatewayProcess, GatewayServer
from tests.fakes.base import Fault, Reply
from tests.fakes.openai_fake import FakeOpenAI
from tests.routing.conftest import connection

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "hi"}]
PRICE = {"prompt": 1.0, "completion": 2.0}
FAKES = ("alpha", "beta", "flaky", "capped")  # tests/routing/conftest.py starts one fake upstream each
REDIS_URL = os.environ.get("CROSSROADS_TEST_REDIS_URL")


def routing_config(fakes: dict[str, FakeOpenAI], data_dir: Path, **routing) -> dict:
    tools_params = ["temperature", "max_tokens", "tools", "tool_choice"]
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir),
                   "keepalive_interval": 0.3},
        "routing": {"retries": 2, "max_retry_wait": 3,
                    "breaker": {"failure_threshold": 3, "cooldown": 1},
                    "priority_shares": {"high": 1.0, "normal": 0.8, "low": 0.5}, **routing},
        "providers": [
            connection("alpha", fakes["alpha"], [
                {"id": "test/shared", "upstream": "m", "pricing": PRICE, "supported_parameters": tools_params,
                 "context_length": 200000},
                {"id": "test/first", "upstream": "first", "pricing": PRICE},
                {"id": "test/timed", "upstream": "t", "pricing": PRICE}]),
            connection("beta", fakes["beta"], [
                {"id": "test/shared", "upstream": "m", "pricing": PRICE,
                 "supported_parameters": ["temperature", "max_tokens"]},
                {"id": "test/second", "upstream": "second", "pricing": PRICE},
                {"id": "test/timed", "upstream": "t", "pricing": PRICE},
                {"id": "test/tiny", "upstream": "tiny", "pricing": PRICE, "context_length": 1000}],
                       data_collection="deny"),
            connection("flaky", fakes["flaky"], [{"id": "test/flaky", "upstream": "f", "pricing": PRICE}]),
            connection("capped", fakes["capped"], [{"id": "test/capped", "upstream": "c", "pricing": PRICE}],
                       rpm=10),
        ],
        "routes": [{
            "name": "limited-route", "rpm": 2,
            "targets": [{"connection": "beta", "model": "second"}],
        }, {
            "name": "support-bot", "display_name": "Support bot",
            "targets": [{"connection": "alpha", "model": "first", "params": {"temperature": 0.1}}],
            "fallback": ["test/second"],
            "conditions": [
                {"when": {"header": {"x-team": "blocked"}}, "action": "block", "message": "team not allowed"},
                {"when": {"metadata": {"tier": "beta"}}, "target": "alpha/first"},
            ],
        }],
    }


@pytest.fixture(scope="module")
def gw(fakes, tmp_path_factory) -> Iterator[GatewayServer]:
    workdir = tmp_path_factory.mktemp("routing")
    proc = GatewayServer(routing_config(fakes, workdir / "data"), workdir, clock=FakeClock()).start()
    yield proc
    proc.stop()


def post(gw: GatewayServer, body: dict, headers: dict | None = None, key: str = MASTER_KEY) -> httpx.Response:
    return httpx.post(gw.url + CHAT, json={"messages": HELLO, **body}, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})})


def generation(gw: GatewayServer, generation_id: str) -> dict:
    return httpx.get(gw.url + "/api/v1/generation", params={"id": generation_id}, headers=AUTH).json()["data"]


def heal(gw: GatewayServer, model: str, connection: str) -> None:
    """After a test opened a breaker on purpose: wait out the cool-down and close it with a good probe."""
    gw.fake_clock.advance(1.1)
    resp = post(gw, {"model": model, "provider": {"only": [connection]}})
    assert resp.status_code == 200, resp.text


def create_key(gw: GatewayServer, **fields) -> str:
    resp = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "routing", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


# -- fallbacks and provider preferences ---------------------------------------------------------------------------
def test_models_fallback_list(gw, fakes) -> None:
    fakes["flaky"].fault(*[Fault(status=500)] * 3)
    resp = post(gw, {"model": "test/flaky", "models": ["test/second"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "test/second"
    assert resp.headers["x-crossroads-model"] == "test/second"
    assert resp.headers["x-crossroads-connection"] == "beta"
    attempts = generation(gw, resp.json()["id"])["provider_responses"]
    assert [(a["provider_name"], a["status"]) for a in attempts] == [("flaky", 500)] * 3 + [("beta", 200)]
    heal(gw, "test/flaky", "flaky")  # three failures opened its breaker (threshold 3)


@pytest.mark.parametrize("provider,served", [
    ({"order": ["beta", "alpha"]}, "beta"),
    ({"order": ["alpha", "beta"]}, "alpha"),
    ({"only": ["alpha"]}, "alpha"),
    ({"ignore": ["alpha"]}, "beta"),
    ({"data_collection": "deny"}, "beta"),
])
def test_provider_preferences(gw, fakes, provider, served) -> None:
    resp = post(gw, {"model": "test/shared", "provider": provider})
    assert resp.status_code == 200, resp.text
    assert resp.json()["provider"] == served
    assert len(fakes[served].requests) == 1


def test_order_with_fallback_and_without(gw, fakes) -> None:
    fakes["beta"].fault(*[Fault(status=503)] * 3)
    resp = post(gw, {"model": "test/shared", "provider": {"order": ["beta"]}})
    assert resp.status_code == 200 and resp.json()["provider"] == "alpha"
    heal(gw, "test/shared", "beta")

    fakes["alpha"].reset()
    fakes["beta"].fault(*[Fault(status=503)] * 3)
    resp = post(gw, {"model": "test/shared", "provider": {"order": ["beta"], "allow_fallbacks": False}})
    assert resp.status_code == 502
    assert not fakes["alpha"].requests
    heal(gw, "test/shared", "beta")


def test_require_parameters(gw, fakes) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for _ in range(5):
        resp = post(gw, {"model": "test/shared", "tools": tools, "provider": {"require_parameters": True}})
        assert resp.json()["provider"] == "alpha"
    assert not fakes["beta"].requests
    resp = post(gw, {"model": "test/shared", "tools": tools,
                     "provider": {"require_parameters": True, "only": ["beta"]}})
    assert resp.status_code == 404
    assert "require_parameters" in resp.json()["error"]["message"]


def test_vendor_header_pins_the_connection(gw, fakes) -> None:
    for _ in range(3):
        assert post(gw, {"model": "test/shared"}, headers={"vendor": "beta"}).json()["provider"] == "beta"
    assert not fakes["alpha"].requests


def test_sort_by_live_latency(gw, fakes) -> None:
    # Teach the gateway that alpha is slow and beta fast, then ask for the lowest latency.
    fakes["alpha"].fault(*[Fault(delay=0.4)] * 3)
    for name in ("alpha", "beta"):
        for _ in range(3):
            assert post(gw, {"model": "test/timed", "provider": {"only": [name]}}).status_code == 200
    for _ in range(4):
        assert post(gw, {"model": "test/timed", "provider": {"sort": "latency"}}).json()["provider"] == "beta"
    endpoints = httpx.get(gw.url + "/api/v1/models/test/timed/endpoints", headers=AUTH).json()["data"]["endpoints"]
    latency = {e["provider_name"]: e["latency_last_30m"]["p50"] for e in endpoints}
    assert latency["alpha"] > 300 > latency["beta"]
    assert all(e["uptime_last_30m"] == 100 for e in endpoints)


# -- retries and the breaker ---------------------------------------------------------------------------------------
def test_retry_then_success(gw, fakes) -> None:
    fakes["flaky"].fault(Fault(status=503), Fault(status=502))
    resp = post(gw, {"model": "test/flaky"})
    assert resp.status_code == 200
    assert len(fakes["flaky"].requests) == 3
    statuses = [a["status"] for a in generation(gw, resp.json()["id"])["provider_responses"]]
    assert statuses == [503, 502, 200]


def test_retry_honours_retry_after(gw, fakes) -> None:
    fakes["flaky"].fault(Fault(status=429, headers={"Retry-After": "1"}))
    started = gw.fake_clock.now()
    resp = post(gw, {"model": "test/flaky"})
    assert resp.status_code == 200
    assert gw.fake_clock.now() - started >= 1.0  # waited on the gateway's clock
    # A Retry-After beyond routing.max_retry_wait is not waited for: the 429 reaches the client at once.
    fakes["flaky"].fault(Fault(status=429, headers={"Retry-After": "30"}))
    started, real_start = gw.fake_clock.now(), time.monotonic()
    resp = post(gw, {"model": "test/flaky"})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "30"
    assert gw.fake_clock.now() - started < 2 and time.monotonic() - real_start < 2


def test_breaker_opens_and_closes(gw, fakes) -> None:
    flaky = fakes["flaky"]
    assert post(gw, {"model": "test/flaky"}).status_code == 200  # a success resets the run of failures
    flaky.fault(*[Fault(status=500)] * 4)  # threshold 3: one request with its two retries opens it
    assert post(gw, {"model": "test/flaky"}).status_code == 502
    assert len(flaky.requests) == 4
    endpoints = httpx.get(gw.url + "/api/v1/models/test/flaky/endpoints", headers=AUTH).json()["data"]["endpoints"]
    assert endpoints[0]["status"] == -10
    # Ejected, but the only candidate: attempted anyway (panic routing), once (no retry on an ejected endpoint),
    # and the client sees the upstream's failure rather than the breaker.
    resp = post(gw, {"model": "test/flaky"})
    assert resp.status_code == 502 and "Upstream flaky failed (HTTP 500)" in resp.json()["error"]["message"]
    assert len(flaky.requests) == 5
    gw.fake_clock.advance(1.1)  # the cool-down: one probe goes through, succeeds, and closes the breaker
    assert post(gw, {"model": "test/flaky"}).status_code == 200
    assert post(gw, {"model": "test/flaky"}).status_code == 200
    assert len(flaky.requests) == 7
    endpoints = httpx.get(gw.url + "/api/v1/models/test/flaky/endpoints", headers=AUTH).json()["data"]["endpoints"]
    assert endpoints[0]["status"] == 0


def test_client_disconnect_is_not_a_failure(gw, fakes) -> None:
    flaky = fakes["flaky"]
    for _ in range(4):
        flaky.fault(Fault(delay=1.0))
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + CHAT, json={"model": "test/flaky", "messages": HELLO}, headers=AUTH, timeout=0.3)
    # Four abandoned requests would have opened the breaker (threshold 3) had they counted as failures.
    assert post(gw, {"model": "test/flaky"}).status_code == 200
    assert [e["status"] for e in httpx.get(gw.url + "/api/v1/models/test/flaky/endpoints",
                                            headers=AUTH).json()["data"]["endpoints"]] == [0]
    time.sleep(1.0)  # the fake's abandoned handlers finish their delays before the next test queues replies


def test_no_retry_after_the_first_streamed_byte(gw, fakes) -> None:
    fakes["flaky"].reply(Reply(text="one two three four five six"))
    fakes["flaky"].fault(Fault(cut_after=3, chunk_delay=0.05))  # the first events reach the client before the cut
    with httpx.stream("POST", gw.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": "test/flaky", "stream": True, "messages": HELLO}) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert "\"finish_reason\":\"error\"" in lines[-1], (lines, fakes["flaky"].requests)
    assert len(fakes["flaky"].requests) == 1


def test_stream_retries_before_the_first_byte(gw, fakes) -> None:
    fakes["flaky"].fault(Fault(status=503))
    client = openai.OpenAI(base_url=gw.url + "/api/v1", api_key=MASTER_KEY)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="test/flaky", stream=True, messages=HELLO) if c.choices)
    assert text == "Hello from the fake upstream."
    assert len(fakes["flaky"].requests) == 2


# -- named routes ------------------------------------------------------------------------------------------------
def test_named_route(gw, fakes) -> None:
    models = httpx.get(gw.url + "/api/v1/models", headers=AUTH).json()["data"]
    assert "support-bot" in {m["id"] for m in models}
    resp = post(gw, {"model": "support-bot"})
    assert resp.status_code == 200 and resp.json()["model"] == "test/first"
    assert fakes["alpha"].last.json["temperature"] == 0.1  # the target's parameter override
    fakes["alpha"].fault(*[Fault(status=500)] * 3)
    resp = post(gw, {"model": "support-bot"})
    assert resp.json()["model"] == "test/second"  # the route's fallback chain
    heal(gw, "test/first", "alpha")


def test_route_block_condition(gw, fakes) -> None:
    resp = post(gw, {"model": "support-bot"}, headers={"X-Team": "blocked"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["metadata"]["code"] == "blocked_by_routing_condition"
    assert "team not allowed" in error["message"]
    assert not fakes["alpha"].requests and not fakes["beta"].requests


# -- response headers ----------------------------------------------------------------------------------------------
def test_response_headers(gw) -> None:
    resp = post(gw, {"model": "test/second", "metadata": {"Team": "search\r\nX-Evil: 1", "run": 7}})
    headers = resp.headers
    assert headers["x-generation-id"] == resp.json()["id"]
    assert headers["x-crossroads-model"] == "test/second"
    assert headers["x-crossroads-provider"] == "openai" and headers["x-crossroads-connection"] == "beta"
    assert float(headers["x-crossroads-gate-ms"]) >= 0 and float(headers["x-crossroads-routing-ms"]) >= 0
    assert headers["x-crossroads-metadata-team"] == "searchX-Evil: 1"
    assert headers["x-crossroads-metadata-run"] == "7"
    assert "x-evil" not in headers


# -- capacity ------------------------------------------------------------------------------------------------------
def test_key_rpm_429_with_headers(gw) -> None:
    key = create_key(gw, rpm=3)
    time.sleep(1.2)  # the key cache picks the new key up
    answers = [post(gw, {"model": "test/second"}, key=key) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[2].headers["x-ratelimit-limit"] == "3" and answers[2].headers["x-ratelimit-remaining"] == "0"
    refused = answers[3]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit"] == "3" and refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) > time.time() * 1000
    assert refused.json()["error"]["metadata"]["code"] == "resource_exhausted"


def test_key_tpm_429(gw) -> None:
    key = create_key(gw, tpm=100)
    time.sleep(1.2)
    long_prompt = [{"role": "user", "content": "x" * 600}]  # ~150 tokens estimated: more than the minute allows
    resp = httpx.post(gw.url + CHAT, json={"model": "test/second", "messages": long_prompt}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 429
    assert resp.json()["error"]["metadata"]["kind"] == "tpm"


def test_priority_shedding(gw, fakes) -> None:
    low = create_key(gw, priority="low")
    high = create_key(gw, priority="high")
    time.sleep(1.2)
    # The connection takes 10 requests a minute; low priority may use half of that.
    low_answers = [post(gw, {"model": "test/capped"}, key=low) for _ in range(6)]
    assert [a.status_code for a in low_answers] == [200] * 5 + [429]
    assert low_answers[-1].json()["error"]["metadata"]["code"] == "prioritization_gate_denied"
    high_answers = [post(gw, {"model": "test/capped"}, key=high) for _ in range(6)]
    assert [a.status_code for a in high_answers] == [200] * 5 + [429]
    assert high_answers[-1].json()["error"]["metadata"]["code"] == "resource_exhausted"
    assert len(fakes["capped"].requests) == 10


def test_limits_hold_across_two_processes_with_redis(fakes, tmp_path) -> None:
    if not REDIS_URL:
        if os.environ.get("CI"):
            pytest.fail("CROSSROADS_TEST_REDIS_URL is not set in CI")
        pytest.skip('CROSSROADS_TEST_REDIS_URL not set (run: eval "$(scripts/ci-services.sh)")')
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    gateways = []
    try:
        for index in range(2):
            workdir = tmp_path / f"gw{index}"
            workdir.mkdir()
            config = routing_config(fakes, tmp_path / "shared-data")
            gateways.append(GatewayProcess(config, workdir, env={"CROSSROADS_REDIS_URL": REDIS_URL}).start())
        statuses = [post(gateways[i % 2], {"model": "test/capped"}).status_code for i in range(16)]
        assert statuses.count(200) == 8  # the master key is "normal": 0.8 x 10 requests a minute, across both
        assert statuses.count(429) == 8
        assert len(fakes["capped"].requests) == 8
    finally:
        for proc in gateways:
            proc.stop()


def test_auto_router_and_suffixes(gw, fakes) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for model in ("openrouter/auto", "crossroads/auto"):
        resp = post(gw, {"model": model, "tools": tools, "max_tokens": 50000})
        assert resp.status_code == 200, resp.text
        # Only test/shared on alpha declares a context long enough for 50k output tokens, and tool support.
        assert resp.json()["model"] == "test/shared" and resp.json()["provider"] == "alpha"
    for suffix in (":floor", ":nitro"):
        resp = post(gw, {"model": "test/second" + suffix})
        assert resp.status_code == 200 and resp.json()["model"] == "test/second"


def test_middle_out_on_small_contexts(gw, fakes) -> None:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "x" * 400} for i in range(12)]
    messages = [{"role": "system", "content": "Be brief."}, *turns, {"role": "user", "content": "last question"}]
    resp = post(gw, {"model": "test/tiny", "messages": messages, "max_tokens": 100})
    assert resp.status_code == 200, resp.text
    sent = fakes["beta"].last.json["messages"]
    assert sent[0]["content"] == "Be brief." and sent[-1]["content"] == "last question"
    assert 2 < len(sent) < len(messages)
    assert sum(len(m["content"]) for m in sent) // 4 + 100 <= 1000
    events = generation(gw, resp.json()["id"])["events"]
    assert any(e["type"] == "transform" and e["name"] == "middle-out" for e in events)
    # transforms: [] turns it off: everything goes up (and the upstream would report the overflow).
    resp = post(gw, {"model": "test/tiny", "messages": messages, "max_tokens": 100, "transforms": []})
    assert len(fakes["beta"].last.json["messages"]) == len(messages)
    assert "transforms" not in fakes["beta"].last.json


def test_limits_refuse_when_their_store_is_down(fakes, tmp_path) -> None:
    from tests.conftest import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proc = GatewayServer(routing_config(fakes, tmp_path / "data"), tmp_path,
                         env={"CROSSROADS_REDIS_URL": dead}).start()
    try:
        resp = post(proc, {"model": "test/capped"})
        assert resp.status_code == 503
        assert resp.json()["error"]["metadata"]["code"] == "rate_limit_store_unavailable"
        assert not fakes["capped"].requests
        assert post(proc, {"model": "test/second"}).status_code == 200  # no limit involved: unaffected
    finally:
        proc.stop()


def test_upstream_rate_limit_headers_are_normalised(gw, fakes) -> None:
    fakes["beta"].fault(Fault(headers={"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
                                       "x-ratelimit-reset-requests": "12ms", "x-request-id": "req_abc123"}))
    with httpx.stream("POST", gw.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": "test/second", "stream": True, "messages": HELLO}) as resp:
        resp.read()
    # The upstream account's limits, in its units, under their own prefix: X-RateLimit-* is only ever the gateway's.
    assert resp.headers["x-upstream-ratelimit-limit"] == "5000"
    assert resp.headers["x-upstream-ratelimit-remaining"] == "4999"
    assert resp.headers["x-upstream-ratelimit-reset"] == "12ms"
    assert "x-ratelimit-limit" not in resp.headers and "x-ratelimit-reset" not in resp.headers
    assert resp.headers["x-upstream-request-id"] == "req_abc123"
    assert resp.headers["x-request-id"].startswith("req-")  # the gateway's own


def test_ratelimit_headers_mean_the_calling_keys_limit(gw, fakes) -> None:
    import time as clock

    made = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "rpm-headers", "rpm": 50})
    key = made.json()["key"]
    clock.sleep(1.2)  # the key cache picks it up
    fakes["beta"].fault(Fault(headers={"x-ratelimit-limit-requests": "5000", "x-ratelimit-reset-requests": "6ms"}))
    resp = httpx.post(gw.url + CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=20,
                      json={"model": "test/second", "messages": HELLO})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-ratelimit-limit"] == "50" and resp.headers["x-ratelimit-remaining"] == "49"
    reset = int(resp.headers["x-ratelimit-reset"])  # epoch milliseconds, as OpenRouter sends it
    assert clock.time() * 1000 < reset <= (clock.time() + 61) * 1000
    assert resp.headers["x-upstream-ratelimit-limit"] == "5000" and resp.headers["x-upstream-ratelimit-reset"] == "6ms"


def test_dropped_fields_are_recorded(gw) -> None:
    # A Messages request with a server tool: the OpenAI-compatible upstream cannot express it, so it is dropped,
    # and the generation record says so.
    resp = httpx.post(gw.url + "/api/v1/messages", headers={"x-api-key": MASTER_KEY}, timeout=20, json={
        "model": "test/second", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]})
    assert resp.status_code == 200, resp.text
    events = generation(gw, resp.headers["x-generation-id"])["events"]
    assert {"type": "dropped_field", "field": "tools[0]"} in events or any(
        e["type"] == "dropped_field" and e["field"].startswith("tools") for e in events), events


def test_route_rpm(gw) -> None:
    answers = [post(gw, {"model": "limited-route"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    error = answers[2].json()["error"]
    assert error["metadata"]["code"] == "resource_exhausted" and "route" in error["message"]
    assert answers[2].headers["x-ratelimit-limit"] == "2"
