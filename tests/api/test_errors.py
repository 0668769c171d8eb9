"""Every error a client can see: the right status, OpenRouter's error shape, never a traceback or a hang."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY
from tests.fakes.base import Fault, Reply

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == resp.status_code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in resp.text
    return body["error"]


@pytest.mark.parametrize(("body", "field"), [
    (b'{"model": "openai/gpt-4o-mini", "messages": [', None),
    (b"[1, 2]", None),
    (b"", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "openai/gpt-4o-mini"}', "messages"),
    (b'{"model": "openai/gpt-4o-mini", "messages": "hi"}', "messages"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
     "temperature"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
     "max_tokens"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    # a boolean is not an integer (or a number), although Python's bool is an int
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": true}',
     "max_tokens"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": false}',
     "temperature"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "tool_choice": 3}',
     "tool_choice"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "tool", "content": "x"}]}', "messages[0].tool_call_id"),
    (b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
     "tools[0].function.name"),
])
def test_400_names_the_field(gateway, fake_openai, body: bytes, field: str | None) -> None:
    resp = httpx.post(gateway.url + CHAT, content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400
    error = error_of(resp)
    if field is not None:
        assert f"'{field}'" in error["message"]
        assert error["metadata"]["field"] == field
    assert not fake_openai.requests


def test_401_missing_and_wrong_key(gateway) -> None:
    missing = httpx.post(gateway.url + CHAT, json={"model": "openai/gpt-4o-mini", "messages": HELLO})
    assert missing.status_code == 401 and "Missing" in error_of(missing)["message"]
    wrong = httpx.get(gateway.url + "/v1/models", headers={"Authorization": "Bearer sk-or-v1-nope"})
    assert wrong.status_code == 401 and error_of(wrong)
    via_x_api_key = httpx.get(gateway.url + "/v1/models", headers={"x-api-key": MASTER_KEY})
    assert via_x_api_key.status_code == 200


def test_401_through_sdk(gateway) -> None:
    bad = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
    assert err.value.status_code == 401


def test_404_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nobody/nothing", messages=HELLO)
    assert "nobody/nothing" in err.value.message


def test_404_unknown_path_and_405(gateway) -> None:
    assert error_of(httpx.get(gateway.url + "/api/v1/nope", headers=AUTH))
    resp = httpx.get(gateway.url + CHAT, headers=AUTH)
    assert resp.status_code == 405 and error_of(resp)


def test_413_body_over_limit(gateway, fake_openai) -> None:
    big = "x" * (3 * 1024 * 1024)  # the test config's limit is 2 MiB
    resp = httpx.post(gateway.url + CHAT, headers=AUTH,
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": big}]})
    assert resp.status_code == 413 and "limit" in error_of(resp)["message"]
    assert not fake_openai.requests


def test_408_upstream_timeout(client: openai.OpenAI, fake_openai) -> None:
    fake_openai.fault(Fault(delay=2.5))  # the "slow" connection's timeout is 1 s
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="test/slow", messages=HELLO)
    assert err.value.status_code == 408
    assert time.monotonic() - started < 2.5
    assert err.value.body["metadata"]["provider_name"] == "slow"


@pytest.mark.parametrize("fake_name", ["fake_openai", "fake_anthropic", "fake_gemini"])
def test_429_passes_retry_after(gateway, request: pytest.FixtureRequest, fake_name: str) -> None:
    fake = request.getfixturevalue(fake_name)
    model = {"fake_openai": "openai/gpt-4o-mini", "fake_anthropic": "anthropic/claude-sonnet-4",
             "fake_gemini": "google/gemini-2.5-flash"}[fake_name]
    fake.fault(Fault(status=429, message="slow down", headers={"Retry-After": "17"}))
    resp = httpx.post(gateway.url + CHAT, headers=AUTH, json={"model": model, "messages": HELLO})
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "17"
    error = error_of(resp)
    assert "slow down" in error["message"]
    assert error["metadata"]["provider_name"]


@pytest.mark.parametrize("fake_name", ["fake_openai", "fake_anthropic", "fake_gemini"])
def test_502_upstream_failure_keeps_raw_without_secrets(gateway, request: pytest.FixtureRequest,
                                                        fake_name: str) -> None:
    fake = request.getfixturevalue(fake_name)
    model = {"fake_openai": "openai/gpt-4o-mini", "fake_anthropic": "anthropic/claude-sonnet-4",
             "fake_gemini": "google/gemini-2.5-flash"}[fake_name]
    leaked = f'{{"error": {{"message": "bad key {fake.api_key} and {MASTER_KEY}"}}}}'.encode()
    fake.fault(Fault(status=500, body=leaked))
    resp = httpx.post(gateway.url + CHAT, headers=AUTH, json={"model": model, "messages": HELLO})
    assert resp.status_code == 502
    error = error_of(resp)
    assert error["metadata"]["provider_name"] in {"oai", "ant", "gem"}
    assert "bad key" in error["metadata"]["raw"]
    assert fake.api_key not in resp.text and MASTER_KEY not in resp.text
    assert fake.api_key not in gateway.log() and MASTER_KEY not in gateway.log()


def test_upstream_400_is_a_client_error(gateway, fake_anthropic) -> None:
    fake_anthropic.fault(Fault(status=400, message="prompt is too long: 300000 tokens > 200000 maximum"))
    resp = httpx.post(gateway.url + CHAT, headers=AUTH, json={"model": "anthropic/claude-sonnet-4", "messages": HELLO})
    assert resp.status_code == 400
    assert "prompt is too long" in error_of(resp)["message"]


@pytest.mark.parametrize("model,fake_name", [("openai/gpt-4o-mini", "fake_openai"),
                                             ("anthropic/claude-sonnet-4", "fake_anthropic"),
                                             ("google/gemini-2.5-flash", "fake_gemini")])
def test_mid_stream_error_becomes_error_chunk(client: openai.OpenAI, gateway, request: pytest.FixtureRequest,
                                              model: str, fake_name: str) -> None:
    fake = request.getfixturevalue(fake_name)
    fake.reply(Reply(text="one two three four five six"))
    fake.fault(Fault(error_event_after=3))
    with httpx.stream("POST", gateway.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": model, "stream": True, "messages": HELLO}) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    import json

    last = json.loads(events[-1])
    assert last["error"]["message"] and last["error"]["code"]
    assert last["choices"][0]["finish_reason"] == "error"
    assert "[DONE]" not in events
    # The SDK surfaces it as an error rather than a silently short answer.
    fake.reply(Reply(text="one two three four five six"))
    fake.fault(Fault(error_event_after=3))
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model=model, stream=True, messages=HELLO):
            pass


@pytest.mark.parametrize("model,fake_name", [("openai/gpt-4o-mini", "fake_openai"),
                                             ("anthropic/claude-sonnet-4", "fake_anthropic"),
                                             ("google/gemini-2.5-flash", "fake_gemini")])
def test_stream_cut_midway(gateway, request: pytest.FixtureRequest, model: str, fake_name: str) -> None:
    fake = request.getfixturevalue(fake_name)
    fake.reply(Reply(text="one two three four five six"))
    fake.fault(Fault(cut_after=3))
    with httpx.stream("POST", gateway.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": model, "stream": True, "messages": HELLO}) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    import json

    last = json.loads(events[-1])
    assert last["choices"][0]["finish_reason"] == "error"
    assert last["error"]["code"] == 502


def test_stream_error_before_first_byte_keeps_status(gateway, fake_openai) -> None:
    fake_openai.fault(Fault(status=503, message="overloaded"))
    resp = httpx.post(gateway.url + CHAT, headers=AUTH,
                      json={"model": "openai/gpt-4o-mini", "stream": True, "messages": HELLO})
    assert resp.status_code == 502
    assert "overloaded" in error_of(resp)["message"]


def test_processing_comments_while_upstream_is_slow(gateway, fake_openai) -> None:
    fake_openai.fault(Fault(delay=1.0))  # keepalive_interval is 0.3 s in the test config
    with httpx.stream("POST", gateway.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": "openai/gpt-4o-mini", "stream": True, "messages": HELLO}) as resp:
        lines = list(resp.iter_lines())
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 2 and all(c == ": PROCESSING" for c in comments)
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert lines.index(comments[0]) < first_data


def test_client_disconnect_closes_upstream(gateway, fake_openai) -> None:
    fake_openai.reply(Reply(text=" ".join(f"w{i}" for i in range(60))))
    fake_openai.fault(Fault(chunk_delay=0.1))
    with httpx.stream("POST", gateway.url + CHAT, headers=AUTH, timeout=20,
                      json={"model": "openai/gpt-4o-mini", "stream": True, "messages": HELLO}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break
        closed_at = time.monotonic()
    assert_upstream_closed(gateway, fake_openai.stream_closed_at, closed_at)


def assert_upstream_closed(gateway, closed: list[float], client_left_at: float) -> None:
    """The fake saw the gateway close its upstream request within a second of the client leaving, and the gateway
    is unharmed (no traceback logged for the disconnect)."""
    deadline = client_left_at + 1.0
    while time.monotonic() < deadline and not closed:
        time.sleep(0.02)
    assert closed, "the upstream request was still open a second after the client left"
    assert closed[0] - client_left_at < 1.0
    assert httpx.get(gateway.url + "/health").status_code == 200
    assert "Traceback" not in gateway.log()


@pytest.mark.parametrize("upstream", ["fake_openai", "fake_anthropic"])
def test_client_disconnect_closes_a_waiting_upstream_request(gateway, upstream, request) -> None:
    fake = request.getfixturevalue(upstream)
    fake.fault(Fault(delay=5))
    model = "openai/gpt-4o-mini" if upstream == "fake_openai" else "anthropic/claude-sonnet-4"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + CHAT, headers=AUTH, timeout=httpx.Timeout(5, read=0.5),
                   json={"model": model, "messages": HELLO})
    assert_upstream_closed(gateway, fake.request_closed_at, time.monotonic())
