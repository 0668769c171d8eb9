"""End to end: the official `openai` SDK -> a real Crossroads process -> fake upstream servers of each provider type.

Every test asserts both what the client got and what the upstream received.
"""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, assert_ends_with_done, expected_cost
from tests.fakes.base import FakeUpstream, Reply, ToolCall

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAIAQMAAAD+wSzIAAAABlBMVEX///+/v7+jQ3Y5AAAADklEQVQI12P4AIX8EAgALgAD/aNpbtEAAAAASUVORK5CYII=")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_plain_completion(client: openai.OpenAI, target) -> None:
    model, connection, fake = target
    fake.reply(Reply(text="Olá! Tudo bem?", prompt_tokens=21, completion_tokens=5))
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}])
    completion = raw.parse()
    assert completion.id.startswith("gen-")
    assert raw.headers["x-generation-id"] == completion.id
    assert completion.model == model
    assert completion.model_extra["provider"] == connection
    choice = completion.choices[0]
    assert choice.message.content == "Olá! Tudo bem?"
    assert choice.finish_reason == "stop"
    assert choice.model_extra["native_finish_reason"] is not None
    assert completion.usage.prompt_tokens == 21
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 26
    assert completion.usage.model_extra["cost"] == pytest.approx(expected_cost(21, 5))
    assert fake.requests, "the upstream was not called"
    assert "Be brief." in json.dumps(fake.last.json)


def test_stream(client: openai.OpenAI, target) -> None:
    model, connection, fake = target
    fake.reply(Reply(text="one two three four five", prompt_tokens=9, completion_tokens=5))
    chunks = list(client.chat.completions.create(model=model, stream=True,
                                                 messages=[{"role": "user", "content": "count"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four five"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("gen-")
    assert all(c.model == model and c.model_extra["provider"] == connection for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 5)
    assert last.usage.model_extra["cost"] == pytest.approx(expected_cost(9, 5))


def test_stream_raw_framing_ends_with_done(gateway, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="a b"))
    assert_ends_with_done(gateway, "/v1/chat/completions",
                          {"model": model, "stream": True, "messages": [{"role": "user", "content": "x"}]})


def test_tool_call_round_trip(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text=None, tool_calls=[ToolCall("get_weather", {"city": "Lisbon"}, id="call_w1")],
                     finish="tool_calls"))
    messages = [{"role": "user", "content": "Weather in Lisbon?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Lisbon"}
    assert call.id
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    fake.reply(Reply(text="It is 21 °C in Lisbon."))
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "It is 21 °C in Lisbon."
    sent = json.dumps(fake.last.json)
    assert '"get_weather"' in sent and "temp_c" in sent
    body = fake.last.json
    if fake.name == "anthropic":
        blocks = [b for m in body["messages"] for b in (m["content"] if isinstance(m["content"], list) else [])]
        use = next(b for b in blocks if b["type"] == "tool_use")
        result = next(b for b in blocks if b["type"] == "tool_result")
        assert use["input"] == {"city": "Lisbon"} and result["tool_use_id"] == use["id"]
    elif fake.name == "gemini":
        parts = [p for c in body["contents"] for p in c["parts"]]
        assert any(p.get("functionCall", {}).get("name") == "get_weather" for p in parts)
        assert any(p.get("functionResponse", {}).get("name") == "get_weather" for p in parts)
    else:
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}


def test_streamed_tool_calls_have_stable_indexes(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text=None, finish="tool_calls", tool_calls=[
        ToolCall("get_weather", {"city": "Porto"}, id="call_a"), ToolCall("get_weather", {"city": "Faro"}, id="call_b")]))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(model=model, stream=True, tools=[WEATHER_TOOL],
                                                messages=[{"role": "user", "content": "two cities"}]):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"name": "", "arguments": "", "id": ""})
                if tc.id:
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    assert sorted(calls) == [0, 1]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Porto"}, {"city": "Faro"}]
    assert all(calls[i]["name"] == "get_weather" and calls[i]["id"] for i in (0, 1))
    assert finish == "tool_calls"


def test_image_data_url(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    body = fake.last.json
    encoded = base64.b64encode(PNG).decode()
    if fake.name == "anthropic":
        image = body["messages"][0]["content"][1]
        assert image == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": encoded}}
    elif fake.name == "gemini":
        assert {"inlineData": {"mimeType": "image/png", "data": encoded}} in body["contents"][0]["parts"]
    else:
        assert body["messages"][0]["content"][1]["image_url"]["url"] == url


def test_pdf_file_part(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    pdf = base64.b64encode(b"%PDF-1.4\n%fake\n").decode()
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}},
        {"type": "text", "text": "Summarise"}]}])
    sent = json.dumps(fake.last.json)
    assert pdf in sent
    if fake.name == "anthropic":
        assert fake.last.json["messages"][0]["content"][0]["type"] == "document"
    elif fake.name == "gemini":
        assert fake.last.json["contents"][0]["parts"][0]["inlineData"]["mimeType"] == "application/pdf"


def test_json_schema(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text='{"name": "Ada"}'))
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
              "additionalProperties": False}
    result = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a scientist"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    assert json.loads(result.choices[0].message.content) == {"name": "Ada"}
    body = fake.last.json
    if fake.name == "gemini":
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert (config.get("responseJsonSchema") or config.get("responseSchema"))["properties"]["name"]
    elif fake.name == "anthropic":
        system = body["system"] if isinstance(body["system"], str) else " ".join(b["text"] for b in body["system"])
        assert '"name"' in system and "JSON" in system
    else:
        assert body["response_format"]["json_schema"]["schema"] == schema


def test_prefill(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text=" a happy dog."))
    client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": "Describe it"}, {"role": "assistant", "content": "It is"}])
    body = fake.last.json
    if fake.name == "anthropic":
        assert body["messages"][-1]["role"] == "assistant"
        assert "It is" in json.dumps(body["messages"][-1]["content"])
    elif fake.name == "gemini":
        assert body["contents"][-1]["role"] == "model"
        assert body["contents"][-1]["parts"][0]["text"] == "It is"
    else:
        assert body["messages"][-1] == {"role": "assistant", "content": "It is"}


def test_name_prefixed_for_non_openai(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    client.chat.completions.create(model=model, messages=[{"role": "user", "name": "alice", "content": "hello"}])
    sent = json.dumps(fake.last.json)
    if fake.name == "openai":
        assert fake.last.json["messages"][0]["name"] == "alice"
    else:
        assert "alice: hello" in sent


def test_reasoning_returned_and_excluded(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="42", reasoning="Let me think about it.", reasoning_signature="sig-abc", reasoning_tokens=4,
                     completion_tokens=9))
    result = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Answer?"}],
                                            extra_body={"reasoning": {"effort": "high"}}, max_tokens=4000)
    message = result.choices[0].message
    assert message.content == "42"
    assert message.model_extra["reasoning"] == "Let me think about it."
    body = fake.last.json
    if fake.name == "anthropic":
        assert body["thinking"]["type"] == "enabled" and body["thinking"]["budget_tokens"] >= 1024
    elif fake.name == "gemini":
        assert body["generationConfig"]["thinkingConfig"]["includeThoughts"] is True
    else:
        assert body["reasoning_effort"] == "high" and "reasoning" not in body
    fake.reply(Reply(text="42", reasoning="hidden"))
    excluded = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Answer?"}],
                                              extra_body={"reasoning": {"effort": "low", "exclude": True}})
    assert excluded.choices[0].message.model_extra.get("reasoning") is None


def test_unsupported_parameters_dropped(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], temperature=0.5,
                                   logit_bias={"50256": -100}, stop=["END"], seed=7, user="u-1",
                                   extra_body={"top_k": 5, "repetition_penalty": 1.1})
    body = fake.last.json
    if fake.name == "anthropic":
        assert body["stop_sequences"] == ["END"] and body["top_k"] == 5 and body["temperature"] == 0.5
        assert not {"logit_bias", "seed", "repetition_penalty", "frequency_penalty"} & set(body)
        assert body["metadata"] == {"user_id": "u-1"}
    elif fake.name == "gemini":
        config = body["generationConfig"]
        assert config["stopSequences"] == ["END"] and config["topK"] == 5 and config["seed"] == 7
        assert "logit_bias" not in json.dumps(body)
    else:
        assert body["stop"] == ["END"] and body["seed"] == 7


def test_http_image_fetched_for_gemini(client: openai.OpenAI, fake_gemini, fake_openai) -> None:
    # The fake OpenAI server doubles as an image host on loopback (allowed by the test config's media allow-list).
    from aiohttp import web

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    host = _ImageHost(image).start()
    try:
        client.chat.completions.create(model="google/gemini-2.5-flash", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": host.base_url + "/cat.png"}}]}])
        parts = fake_gemini.last.json["contents"][0]["parts"]
        assert parts[0]["inlineData"] == {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}
    finally:
        host.stop()


def test_image_url_to_private_address_refused(client: openai.OpenAI, fake_gemini) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="google/gemini-2.5-flash", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://10.1.2.3/secret.png"}}]}])
    assert err.value.status_code == 400
    assert not fake_gemini.requests


class _ImageHost(FakeUpstream):
    name = "images"

    def __init__(self, handler) -> None:
        super().__init__()
        self.handler = handler

    def routes(self, app) -> None:
        app.router.add_get("/cat.png", self.handler)


def test_prompt_instead_of_messages(gateway, target) -> None:
    model, _, fake = target
    resp = httpx.post(gateway.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      json={"model": model, "prompt": "Once upon a time"}, timeout=20)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream."
    assert "Once upon a time" in json.dumps(fake.last.json)


def test_reasoning_effort_flat_spelling(client: openai.OpenAI, fake_anthropic) -> None:
    client.chat.completions.create(model="anthropic/claude-sonnet-4", messages=[{"role": "user", "content": "x"}],
                                   reasoning_effort="medium", max_tokens=8000)
    assert fake_anthropic.last.json["thinking"]["budget_tokens"] == 4000
