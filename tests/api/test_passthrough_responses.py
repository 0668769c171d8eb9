"""The Responses API passed through to an upstream that serves it itself (`responses_api: true`), untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, GatewayServer
from tests.fakes.base import Reply, ToolCall
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
PRICE = {"prompt": 1.0, "completion": 2.0}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory) -> Iterator[GatewayServer]:
    workdir = tmp_path_factory.mktemp("responses-passthrough")
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
        "providers": [
            {"name": "native", "type": "openai", "base_url": upstream.base_url + "/v1", "api_key": upstream.api_key,
             "responses_api": True, "models": [{"id": "openai/gpt-native", "upstream": "gpt-x", "pricing": PRICE}]},
            {"name": "compat", "type": "openai", "base_url": upstream.base_url + "/v1", "api_key": upstream.api_key,
             "models": [{"id": "local/compat", "upstream": "gpt-y", "pricing": PRICE}]},
        ],
    }
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _clean(upstream) -> None:
    upstream.reset()


def client(gw: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/api/v1", api_key=MASTER_KEY, max_retries=0)


BODY = {
    "model": "openai/gpt-native",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    "instructions": "Be brief.",
    "include": ["reasoning.encrypted_content"],
    "text": {"format": {"type": "text"}, "verbosity": "low"},
    "reasoning": {"effort": "minimal", "summary": "auto"},
    "prompt_cache_key": "k-1",
    "a_future_field": {"nested": [1, 2, 3]},
}


def test_body_and_answer_pass_untouched(gw, upstream) -> None:
    upstream.reply(Reply(text="Hello there", prompt_tokens=30, completion_tokens=4))
    resp = httpx.post(gw.url + "/api/v1/responses", headers=AUTH, json=BODY, timeout=20)
    assert resp.status_code == 200, resp.text
    sent = upstream.last
    assert sent.path == "/v1/responses"
    assert sent.json == {**BODY, "model": "gpt-x"}
    answer = resp.json()
    assert answer["id"].startswith("resp_fake") and answer["model"] == "gpt-x"
    assert answer == upstream.response_object(Reply(text="Hello there", prompt_tokens=30, completion_tokens=4),
                                              "gpt-x", sent.json) | {"id": answer["id"],
                                                                     "created_at": answer["created_at"]}
    record = httpx.get(gw.url + "/api/v1/generation", params={"id": resp.headers["x-generation-id"]},
                       headers=AUTH).json()["data"]
    assert record["tokens_prompt"] == 30 and record["tokens_completion"] == 4
    assert record["total_cost"] == pytest.approx((30 * 1.0 + 4 * 2.0) / 1e6)
    assert record["endpoint"] == "responses"


def test_stream_passes_event_by_event(gw, upstream) -> None:
    upstream.reply(Reply(text="one two three", tool_calls=[ToolCall("lookup", {"q": "x"})]))
    with httpx.stream("POST", gw.url + "/api/v1/responses", headers=AUTH, json={**BODY, "stream": True},
                      timeout=20) as resp:
        frames = [block for block in resp.read().decode().split("\n\n") if block.startswith("event:")]
    received = [(f.split("\n")[0][7:], json.loads(f.split("\n")[1][6:])) for f in frames]
    sent = upstream.last.json
    response = upstream.response_object(Reply(text="one two three", tool_calls=[ToolCall("lookup", {"q": "x"})]),
                                        "gpt-x", sent)
    expected = upstream.response_events(Reply(text="one two three"), response)
    assert [name for name, _ in received] == [name for name, _ in expected]
    final = received[-1][1]["response"]
    assert final["output"][1]["name"] == "lookup" and final["status"] == "completed"
    # The SDK reads the same stream.
    upstream.reply(Reply(text="streamed"))
    events = list(client(gw).responses.create(model="openai/gpt-native", input="hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "streamed"


def test_stored_and_continued(gw, upstream) -> None:
    upstream.reply(Reply(text="First answer"))
    first = client(gw).responses.create(model="openai/gpt-native", input="first question")
    assert client(gw).responses.retrieve(first.id).output_text == "First answer"
    # previous_response_id names a response kept by the gateway: this turn is translated, history included.
    upstream.reply(Reply(text="Second answer"))
    second = client(gw).responses.create(model="openai/gpt-native", input="second question",
                                         previous_response_id=first.id)
    assert second.output_text == "Second answer"
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert [(m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
            for m in sent.json["messages"]] == [
        ("user", "first question"), ("assistant", "First answer"), ("user", "second question")]


def test_connection_without_responses_api_is_translated(gw, upstream) -> None:
    upstream.reply(Reply(text="translated"))
    answer = client(gw).responses.create(model="local/compat", input="hi")
    assert answer.output_text == "translated"
    assert upstream.last.path == "/v1/chat/completions"
