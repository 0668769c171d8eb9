"""End to end: the official `anthropic` SDK -> POST /api/v1/messages on a real Crossroads -> fake upstreams.

Every test is run against the three provider types and asserts both what the client got and what the upstream
received. Requests to the anthropic connection are passed through (body up untouched but `model`, answer back
untouched); the others go through the canonical chat shape and back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import MASTER_KEY, PRICING
from tests.fakes.base import FakeUpstream, Fault, Reply, ToolCall

try:  # recent SDKs run on the httpx2 fork and refuse httpx clients
    import httpx2 as sdk_httpx
except ImportError:  # pragma: no cover - older SDKs
    import httpx as sdk_httpx  # type: ignore[no-redef]

PROVIDERS = {
    "openai": ("openai/gpt-4o-mini", "gpt-4o-mini", "fake_openai"),
    "anthropic": ("anthropic/claude-sonnet-4", "claude-sonnet-4-20250514", "fake_anthropic"),
    "gemini": ("google/gemini-2.5-flash", "gemini-2.5-flash", "fake_gemini"),
}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAIAQMAAAD+wSzIAAAABlBMVEX///+/v7+jQ3Y5AAAADklEQVQI12P4AIX8EAgALgAD/aNpbtEAAAAASUVORK5CYII=")
PNG_B64 = base64.b64encode(PNG).decode()
WEATHER_TOOL = {"name": "get_weather", "description": "Current weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
HI = [{"role": "user", "content": "Say hi"}]


class Target:
    """One provider under test: the gateway's model id, the upstream's model name and its fake server."""

    def __init__(self, model: str, upstream: str, fake: FakeUpstream) -> None:
        self.model = model
        self.upstream = upstream
        self.fake = fake

    @property
    def kind(self) -> str:
        return self.fake.name

    @property
    def body(self) -> dict[str, Any]:
        return self.fake.last.json


class Capture:
    """The requests the SDK actually put on the wire (headers and body), via an httpx event hook."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def hook(self, request: Any) -> None:
        request.read()
        self.requests.append(request)

    @property
    def last_body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)

    @property
    def last_headers(self) -> Any:
        return self.requests[-1].headers


def make_client(base_url: str, capture: Capture | None = None, **auth: Any) -> anthropic.Anthropic:
    http_client = sdk_httpx.Client(event_hooks={"request": [capture.hook]} if capture else None, timeout=20)
    credentials = auth or {"api_key": MASTER_KEY}
    return anthropic.Anthropic(base_url=base_url, max_retries=0, timeout=20, http_client=http_client, **credentials)


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def client(gateway, capture: Capture) -> Iterator[anthropic.Anthropic]:
    sdk = make_client(gateway.url + "/api", capture)
    yield sdk
    sdk.close()


@pytest.fixture(params=list(PROVIDERS))
def target(request: pytest.FixtureRequest, gateway) -> Target:
    model, upstream, fake_name = PROVIDERS[request.param]
    fake = request.getfixturevalue(fake_name)
    fake.reset()
    return Target(model, upstream, fake)


def expected_cost(prompt: int, completion: int, cached: int = 0, written: int = 0) -> float:
    uncached = prompt - cached - written
    return round((uncached * PRICING["prompt"] + cached * PRICING["input_cache_read"]
                  + written * PRICING["input_cache_write"] + completion * PRICING["completion"]) / 1e6, 12)


def generation(gateway, generation_id: str) -> dict[str, Any]:
    resp = httpx.get(gateway.url + "/api/v1/generation", params={"id": generation_id},
                     headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def texts(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def upstream_text(target: Target) -> str:
    """Everything the upstream received, as text, for loose 'did it arrive' checks."""
    return json.dumps(target.body, ensure_ascii=False)


# -- create and stream: both base URLs, each way to authenticate ---------------------------------------------------

BASES = {"api": "/api", "root": ""}
# `api_key=` is sent as x-api-key by older SDKs and as a bearer token by this one; the other two pin each header.
AUTHS = {"api_key": {"api_key": MASTER_KEY},
         # The key in x-api-key only: the SDK's Authorization header is left out.
         "x-api-key": {"api_key": MASTER_KEY, "default_headers": {"x-api-key": MASTER_KEY,
                                                                 "Authorization": anthropic.Omit()}},
         "auth_token": {"auth_token": MASTER_KEY}}


def assert_auth_header(capture: Capture, auth: str) -> None:
    headers = capture.last_headers
    if auth == "auth_token":
        assert headers["authorization"] == f"Bearer {MASTER_KEY}" and "x-api-key" not in headers
    elif auth == "x-api-key":
        assert headers["x-api-key"] == MASTER_KEY and "authorization" not in headers
    else:
        assert MASTER_KEY in (headers.get("x-api-key"), headers.get("authorization", "").removeprefix("Bearer "))


@pytest.mark.parametrize("auth", list(AUTHS))
@pytest.mark.parametrize("base", list(BASES))
def test_create(gateway, target: Target, capture: Capture, base: str, auth: str) -> None:
    target.fake.reply(Reply(text="Olá! Tudo bem?", prompt_tokens=21, completion_tokens=5))
    with make_client(gateway.url + BASES[base], capture, **AUTHS[auth]) as sdk:
        raw = sdk.messages.with_raw_response.create(model=target.model, max_tokens=64, messages=HI)
    message = raw.parse()
    assert_auth_header(capture, auth)
    assert capture.requests[-1].url.path == ("/api/v1/messages" if base == "api" else "/v1/messages")
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert texts(message) == "Olá! Tudo bem?"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 5)
    assert raw.headers["x-crossroads-connection"] == {"openai": "oai", "anthropic": "ant", "gemini": "gem"}[
        target.kind]
    # A passed-through answer names the upstream's model, as Anthropic does; a rendered one the gateway's id.
    assert message.model == (target.upstream if target.kind == "anthropic" else target.model)
    assert "Say hi" in upstream_text(target)


@pytest.mark.parametrize("auth", list(AUTHS))
@pytest.mark.parametrize("base", list(BASES))
def test_stream(gateway, target: Target, capture: Capture, base: str, auth: str) -> None:
    target.fake.reply(Reply(text="one two three four five", prompt_tokens=9, completion_tokens=5))
    with make_client(gateway.url + BASES[base], capture, **AUTHS[auth]) as sdk, \
            sdk.messages.stream(model=target.model, max_tokens=64, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert_auth_header(capture, auth)
    assert "".join(pieces) == "one two three four five"
    assert len(pieces) > 1, "the answer should arrive in several text deltas"
    assert texts(final) == "one two three four five"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 5)
    assert target.body.get("stream") is True or target.kind == "gemini"
    if target.kind == "gemini":
        assert target.fake.last.path.endswith(":streamGenerateContent")


# -- request parameters ---------------------------------------------------------------------------------------------

SYSTEMS = {"string": "Be brief.",
           "blocks": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in Portuguese."}]}


def same_system(got: list[str], wanted: list[str]) -> bool:
    """The system blocks arrived as separate parts, or as one text that keeps them apart."""
    if got == wanted:
        return True
    return len(got) == 1 and got[0] in {sep.join(wanted) for sep in ("\n", "\n\n", " ")}


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_system_prompt(client: anthropic.Anthropic, target: Target, system: str) -> None:
    client.messages.create(model=target.model, max_tokens=64, system=SYSTEMS[system], messages=HI)
    body = target.body
    wanted = ["Be brief."] if system == "string" else ["Be brief.", "Answer in Portuguese."]
    if target.kind == "openai":
        first = body["messages"][0]
        assert first["role"] == "system"
        content = first["content"]
        got = [content] if isinstance(content, str) else [part["text"] for part in content]
        assert same_system(got, wanted)
        assert body["messages"][1:] == [{"role": "user", "content": "Say hi"}]
    elif target.kind == "gemini":
        assert same_system([part["text"] for part in body["systemInstruction"]["parts"]], wanted)
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Say hi"}]}]
    else:
        assert body["system"] == SYSTEMS[system]


def test_multi_turn(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text="Lisbon, then."))
    conversation = [{"role": "user", "content": "Pick a city."}, {"role": "assistant", "content": "Porto."},
                    {"role": "user", "content": [{"type": "text", "text": "Another one?"}]}]
    message = client.messages.create(model=target.model, max_tokens=64, messages=conversation)
    assert texts(message) == "Lisbon, then."
    body = target.body
    if target.kind == "openai":
        turns = [(m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
                 for m in body["messages"]]
        assert turns == [("user", "Pick a city."), ("assistant", "Porto."), ("user", "Another one?")]
    elif target.kind == "gemini":
        turns = [(c["role"], c["parts"][0]["text"]) for c in body["contents"]]
        assert turns == [("user", "Pick a city."), ("model", "Porto."), ("user", "Another one?")]
    else:
        assert body["messages"] == conversation


def test_stop_sequences_temperature_and_max_tokens(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text="cut sho", finish="length", completion_tokens=3))
    # This SDK's create() has no temperature argument any more; the API still takes it.
    message = client.messages.create(model=target.model, max_tokens=3, stop_sequences=["END", "STOP"], messages=HI,
                                     extra_body={"temperature": 0.25})
    assert message.stop_reason == "max_tokens"
    assert texts(message) == "cut sho"
    body = target.body
    if target.kind == "openai":
        assert body.get("max_completion_tokens", body.get("max_tokens")) == 3
        assert body["stop"] == ["END", "STOP"] and body["temperature"] == 0.25
    elif target.kind == "gemini":
        config = body["generationConfig"]
        assert config["maxOutputTokens"] == 3
        assert config["stopSequences"] == ["END", "STOP"] and config["temperature"] == 0.25
    else:
        assert body["max_tokens"] == 3
        assert body["stop_sequences"] == ["END", "STOP"] and body["temperature"] == 0.25


def test_max_tokens_stop_reason_streamed(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text="cut short here", finish="length"))
    with client.messages.stream(model=target.model, max_tokens=3, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "max_tokens"
    assert texts(final) == "cut short here"


# -- tools ----------------------------------------------------------------------------------------------------------

def assert_tool_result_upstream(target: Target, call_id: str) -> None:
    """The second turn reached the upstream with the tool call and its result in the upstream's own shape."""
    body = target.body
    if target.kind == "openai":
        assistant = next(m for m in body["messages"] if m["role"] == "assistant")
        call = assistant["tool_calls"][0]
        assert call["id"] == call_id and call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Lisbon"}
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 21}'}
    elif target.kind == "gemini":
        parts = [p for c in body["contents"] for p in c["parts"]]
        call = next(p["functionCall"] for p in parts if "functionCall" in p)
        assert call["name"] == "get_weather" and call["args"] == {"city": "Lisbon"}
        assert body["contents"][-1]["role"] == "user"
        response = body["contents"][-1]["parts"][0]["functionResponse"]
        assert response["name"] == "get_weather" and response["response"] == {"temp_c": 21}
    else:
        use = body["messages"][1]["content"][0]
        assert use["type"] == "tool_use" and use["id"] == call_id and use["input"] == {"city": "Lisbon"}
        assert body["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": call_id, "content": '{"temp_c": 21}'}]


def assert_forced_tool_upstream(target: Target) -> None:
    body = target.body
    if target.kind == "openai":
        assert body["tools"][0]["function"]["name"] == "get_weather"
        assert body["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    elif target.kind == "gemini":
        declaration = body["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == "get_weather"
        config = body["toolConfig"]["functionCallingConfig"]
        assert config["mode"] == "ANY" and config["allowedFunctionNames"] == ["get_weather"]
    else:
        assert body["tools"] == [WEATHER_TOOL]
        assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}


def answer_tool_use(assistant_content: Any, tool_use_id: str) -> list[dict[str, Any]]:
    """The next two turns of a tool round trip: the assistant's tool_use as it came, and the user's tool_result."""
    return [{"role": "assistant", "content": assistant_content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use_id,
                                          "content": '{"temp_c": 21}'}]}]


def test_tool_use_round_trip(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text=None, tool_calls=[ToolCall("get_weather", {"city": "Lisbon"}, id="call_w1")],
                            finish="tool_calls"))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Lisbon?"}]
    first = client.messages.create(model=target.model, max_tokens=256, messages=messages, tools=[WEATHER_TOOL],
                                   tool_choice={"type": "tool", "name": "get_weather"})
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather" and use.input == {"city": "Lisbon"} and use.id
    assert_forced_tool_upstream(target)

    target.fake.reply(Reply(text="It is 21 °C in Lisbon."))
    messages += answer_tool_use(first.content, use.id)
    second = client.messages.create(model=target.model, max_tokens=256, messages=messages, tools=[WEATHER_TOOL])
    assert texts(second) == "It is 21 °C in Lisbon."
    assert second.stop_reason == "end_turn"
    assert_tool_result_upstream(target, use.id)


def test_tool_use_round_trip_streamed(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text=None, tool_calls=[ToolCall("get_weather", {"city": "Lisbon"}, id="call_w2")],
                            finish="tool_calls"))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Lisbon?"}]
    partial = ""
    with client.messages.stream(model=target.model, max_tokens=256, messages=messages, tools=[WEATHER_TOOL],
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        for event in stream:
            if event.type == "input_json":
                partial += event.partial_json
        first = stream.get_final_message()
    assert json.loads(partial) == {"city": "Lisbon"}
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Lisbon"} and use.id
    assert_forced_tool_upstream(target)

    target.fake.reply(Reply(text="It is 21 °C in Lisbon."))
    messages += answer_tool_use(first.content, use.id)
    with client.messages.stream(model=target.model, max_tokens=256, messages=messages,
                                tools=[WEATHER_TOOL]) as stream:
        second = stream.get_final_message()
    assert texts(second) == "It is 21 °C in Lisbon."
    assert_tool_result_upstream(target, use.id)


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_text_before_tool_use(client: anthropic.Anthropic, target: Target, stream: bool) -> None:
    target.fake.reply(Reply(text="Let me check.", finish="tool_calls",
                            tool_calls=[ToolCall("get_weather", {"city": "Braga"}, id="call_t1")]))
    request = {"model": target.model, "max_tokens": 256, "tools": [WEATHER_TOOL],
               "messages": [{"role": "user", "content": "Braga?"}]}
    if stream:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**request)
    # Gemini signs its function calls even unasked: that signature may come along as a redacted_thinking block.
    blocks = [b for b in message.content if b.type not in ("thinking", "redacted_thinking")]
    assert [b.type for b in blocks] == ["text", "tool_use"]
    assert texts(message) == "Let me check."
    assert blocks[1].input == {"city": "Braga"} and blocks[1].name == "get_weather"
    assert message.stop_reason == "tool_use"


def test_parallel_tool_results(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text=None, finish="tool_calls", tool_calls=[
        ToolCall("get_weather", {"city": "Porto"}, id="call_a"), ToolCall("get_weather", {"city": "Faro"}, id="call_b")]))
    question = {"role": "user", "content": "Porto and Faro?"}
    first = client.messages.create(model=target.model, max_tokens=256, messages=[question], tools=[WEATHER_TOOL])
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Porto"}, {"city": "Faro"}]
    assert len({u.id for u in uses}) == 2
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f'{{"temp_c": {t}}}'}
               for u, t in zip(uses, (18, 25), strict=True)]
    client.messages.create(model=target.model, max_tokens=256, tools=[WEATHER_TOOL], messages=[
        question, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}])
    body = target.body
    if target.kind == "openai":
        assert body["messages"][-2:] == [
            {"role": "tool", "tool_call_id": uses[0].id, "content": '{"temp_c": 18}'},
            {"role": "tool", "tool_call_id": uses[1].id, "content": '{"temp_c": 25}'}]
    elif target.kind == "gemini":
        calls = [p["functionCall"]["args"] for p in body["contents"][1]["parts"] if "functionCall" in p]
        assert calls == [{"city": "Porto"}, {"city": "Faro"}]
        responses = [p["functionResponse"] for p in body["contents"][-1]["parts"]]
        assert [(r["name"], r["response"]) for r in responses] == [("get_weather", {"temp_c": 18}),
                                                                    ("get_weather", {"temp_c": 25})]
    else:
        assert body["messages"][-1]["content"] == results


# -- thinking -------------------------------------------------------------------------------------------------------

THINKING = {"type": "enabled", "budget_tokens": 2000}
SIGNATURE = "c2lnLWZha2UtdGhpbmtpbmctc2lnbmF0dXJl"


def assert_thinking_requested(target: Target) -> None:
    body = target.body
    if target.kind == "gemini":
        thinking = body["generationConfig"]["thinkingConfig"]
        assert thinking["includeThoughts"] is True and thinking["thinkingBudget"] == 2000
    elif target.kind == "anthropic":
        assert body["thinking"] == THINKING
    else:
        # gpt-4o-mini takes no reasoning parameters; Anthropic's own field must not leak to an OpenAI server.
        assert "thinking" not in body and body.get("max_completion_tokens", body.get("max_tokens")) == 4000


def assert_signature_delivered(target: Target, message: Any) -> None:
    """The upstream's reasoning signature reached the client inside the message's thinking content.

    Anthropic's arrives as the thinking block's own signature. Gemini's thought signature is an opaque blob in
    OpenRouter's shape (reasoning.encrypted), which the Messages front hands out as a redacted_thinking block
    (wrapped with its format, so that it is restored when echoed back); a signed thinking block is accepted too.
    """
    signed = [b.signature for b in message.content if b.type == "thinking" and b.signature]
    if target.kind == "anthropic":
        assert signed == [SIGNATURE]
    elif target.kind == "gemini":
        blobs = signed + [b.data for b in message.content if b.type == "redacted_thinking"]
        assert len(blobs) == 1 and blobs[0]


def assert_signature_round_trip(target: Target) -> None:
    """The echoed thinking reached the upstream in its own shape, with the signature it made."""
    body = target.body
    if target.kind == "anthropic":
        assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "Let me think.",
                                                     "signature": SIGNATURE}
    elif target.kind == "gemini":
        model_turn = body["contents"][1]
        assert model_turn["role"] == "model"
        assert [p.get("thoughtSignature") for p in model_turn["parts"] if "thoughtSignature" in p] == [SIGNATURE]
        assert "42" in json.dumps(model_turn)
    else:
        assert any(m["role"] == "assistant" and "42" in json.dumps(m) for m in body["messages"])
    assert body_last_user_text(target) == "And now?"


def body_last_user_text(target: Target) -> str:
    body = target.body
    if target.kind == "gemini":
        return body["contents"][-1]["parts"][-1]["text"]
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else content[-1]["text"]


def test_thinking_round_trip(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text="42", reasoning="Let me think.", reasoning_signature=SIGNATURE,
                            reasoning_tokens=3, completion_tokens=6))
    question = {"role": "user", "content": "Answer?"}
    first = client.messages.create(model=target.model, max_tokens=4000, thinking=THINKING, messages=[question])
    assert_thinking_requested(target)
    assert texts(first) == "42"
    thinking = [b for b in first.content if b.type == "thinking"]
    assert [b.thinking for b in thinking] == ["Let me think."]
    assert_signature_delivered(target, first)

    target.fake.reply(Reply(text="Still 42."))
    second = client.messages.create(model=target.model, max_tokens=4000, thinking=THINKING, messages=[
        question, {"role": "assistant", "content": first.content}, {"role": "user", "content": "And now?"}])
    assert texts(second) == "Still 42."
    assert_signature_round_trip(target)


def test_thinking_round_trip_streamed(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text="42", reasoning="Let me think.", reasoning_signature=SIGNATURE))
    question = {"role": "user", "content": "Answer?"}
    thought = ""
    with client.messages.stream(model=target.model, max_tokens=4000, thinking=THINKING,
                                messages=[question]) as stream:
        for event in stream:
            if event.type == "thinking":
                thought += event.thinking
        first = stream.get_final_message()
    assert thought == "Let me think."
    assert texts(first) == "42"
    assert_signature_delivered(target, first)

    target.fake.reply(Reply(text="Still 42."))
    with client.messages.stream(model=target.model, max_tokens=4000, thinking=THINKING, messages=[
            question, {"role": "assistant", "content": first.content},
            {"role": "user", "content": "And now?"}]) as stream:
        second = stream.get_final_message()
    assert texts(second) == "Still 42."
    assert_signature_round_trip(target)


def test_thinking_with_tool_use_round_trip(client: anthropic.Anthropic, target: Target) -> None:
    """Gemini signs the function call it makes after thinking; the signature must come back on that call."""
    target.fake.reply(Reply(text=None, reasoning="Need the weather.", reasoning_signature=SIGNATURE,
                            tool_calls=[ToolCall("get_weather", {"city": "Lisbon"})], finish="tool_calls"))
    question = {"role": "user", "content": "Weather in Lisbon?"}
    with client.messages.stream(model=target.model, max_tokens=4000, thinking=THINKING, tools=[WEATHER_TOOL],
                                messages=[question]) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    assert_signature_delivered(target, first)
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.input == {"city": "Lisbon"}

    target.fake.reply(Reply(text="21 °C."))
    second = client.messages.create(model=target.model, max_tokens=4000, thinking=THINKING, tools=[WEATHER_TOOL],
                                    messages=[question, {"role": "assistant", "content": first.content},
                                              {"role": "user", "content": [{"type": "tool_result",
                                                                            "tool_use_id": use.id,
                                                                            "content": '{"temp_c": 21}'}]}])
    assert texts(second) == "21 °C."
    body = target.body
    if target.kind == "gemini":
        call_part = next(p for c in body["contents"] for p in c["parts"] if "functionCall" in p)
        assert call_part["functionCall"]["name"] == "get_weather"
        assert call_part["thoughtSignature"] == SIGNATURE
        assert body["contents"][-1]["parts"][0]["functionResponse"]["response"] == {"temp_c": 21}
    elif target.kind == "anthropic":
        assert [b["type"] for b in body["messages"][1]["content"]] == ["thinking", "tool_use"]
        assert body["messages"][1]["content"][0]["signature"] == SIGNATURE
    else:
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": use.id, "content": '{"temp_c": 21}'}


# -- images ---------------------------------------------------------------------------------------------------------

def test_base64_image(client: anthropic.Anthropic, target: Target) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    client.messages.create(model=target.model, max_tokens=64, messages=[{"role": "user", "content": [
        image, {"type": "text", "text": "What is this?"}]}])
    body = target.body
    if target.kind == "openai":
        parts = body["messages"][0]["content"]
        assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}
        assert parts[1] == {"type": "text", "text": "What is this?"}
    elif target.kind == "gemini":
        assert body["contents"][0]["parts"] == [{"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
                                                {"text": "What is this?"}]
    else:
        assert body["messages"][0]["content"][0] == image


# -- usage and the generation record ----------------------------------------------------------------------------------

def cache_reply(target: Target) -> tuple[Reply, int]:
    """A reply with cache reads (and cache writes where the provider reports them) and the written count."""
    written = 20 if target.kind == "anthropic" else 0
    return Reply(text="cached", prompt_tokens=100, cached_tokens=40, cache_write_tokens=written,
                 completion_tokens=10), written


def test_usage_and_generation_record(gateway, client: anthropic.Anthropic, target: Target) -> None:
    reply, written = cache_reply(target)
    target.fake.reply(reply)
    raw = client.messages.with_raw_response.create(model=target.model, max_tokens=64, messages=HI)
    message = raw.parse()
    usage = message.usage
    assert usage.input_tokens == 100 - 40 - written
    assert usage.output_tokens == 10
    assert usage.cache_read_input_tokens == 40
    assert (usage.cache_creation_input_tokens or 0) == written
    record = generation(gateway, raw.headers["x-generation-id"])
    assert record["endpoint"] == "messages"
    assert record["tokens_prompt"] == 100 and record["tokens_completion"] == 10
    assert record["native_tokens_cached"] == 40
    assert record["total_cost"] == pytest.approx(expected_cost(100, 10, 40, written))
    assert record["streamed"] is False


def test_streamed_usage_and_generation_record(gateway, client: anthropic.Anthropic, target: Target) -> None:
    reply, written = cache_reply(target)
    target.fake.reply(reply)
    with client.messages.with_streaming_response.create(model=target.model, max_tokens=64, messages=HI,
                                                        stream=True) as resp:
        generation_id = resp.headers["x-generation-id"]
        events = list(resp.parse())
    final = next(e for e in reversed(events) if e.type == "message_delta")
    assert final.usage.output_tokens == 10
    start = next(e for e in events if e.type == "message_start")
    # Input counts may come with message_start (Anthropic) or only at the end (the others); the last word counts.
    input_tokens = final.usage.input_tokens if final.usage.input_tokens is not None \
        else start.message.usage.input_tokens
    cache_read = final.usage.cache_read_input_tokens if final.usage.cache_read_input_tokens is not None \
        else start.message.usage.cache_read_input_tokens
    assert (input_tokens, cache_read) == (100 - 40 - written, 40)
    record = generation(gateway, generation_id)
    assert record["endpoint"] == "messages" and record["streamed"] is True
    assert record["tokens_prompt"] == 100 and record["tokens_completion"] == 10
    assert record["total_cost"] == pytest.approx(expected_cost(100, 10, 40, written))


# -- errors in Anthropic's shape --------------------------------------------------------------------------------------

def assert_anthropic_error(err: anthropic.APIStatusError, status: int, error_type: str) -> None:
    assert err.status_code == status
    body = err.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type and isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


def test_bad_key(gateway, target: Target) -> None:
    with make_client(gateway.url + "/api", api_key="sk-or-v1-" + "0" * 64) as sdk, \
            pytest.raises(anthropic.AuthenticationError) as err:
        sdk.messages.create(model=target.model, max_tokens=64, messages=HI)
    assert_anthropic_error(err.value, 401, "authentication_error")
    assert not target.fake.requests


def test_the_sdk_reads_the_gateways_request_id(client: anthropic.Anthropic, target: Target) -> None:
    """The anthropic SDK takes `_request_id` (and its errors' `request_id`) from Request-Id, as Anthropic sends it;
    the gateway sends its own id there as well as in X-Request-Id, on whole answers, streams and errors."""
    raw = client.messages.with_raw_response.create(model=target.model, max_tokens=64, messages=HI)
    message = raw.parse()
    assert message._request_id and message._request_id.startswith("req-")
    assert message._request_id == raw.headers["x-request-id"]
    with client.messages.stream(model=target.model, max_tokens=64, messages=HI) as streamed:
        final = streamed.get_final_message()
        assert streamed.response.headers["request-id"] == streamed.response.headers["x-request-id"]
        assert streamed.response.headers["request-id"] not in ("", message._request_id)
    assert final.content
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model=target.model + "-does-not-exist", max_tokens=64, messages=HI)
    assert err.value.request_id == err.value.response.headers["x-request-id"]
    assert err.value.request_id and err.value.request_id.startswith("req-")


def test_unknown_model(client: anthropic.Anthropic, target: Target) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model=target.model + "-does-not-exist", max_tokens=64, messages=HI)
    assert_anthropic_error(err.value, 404, "not_found_error")
    assert not target.fake.requests


def test_missing_max_tokens(client: anthropic.Anthropic, target: Target) -> None:
    # The SDK insists on max_tokens; NOT_GIVEN satisfies its check and leaves the field out of the body.
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=target.model, max_tokens=anthropic.NOT_GIVEN, messages=HI)
    assert_anthropic_error(err.value, 400, "invalid_request_error")
    assert "max_tokens" in err.value.response.json()["error"]["message"]
    assert not target.fake.requests


UPSTREAM_FAILURES = {
    500: (anthropic.InternalServerError, "api_error"),
    429: (anthropic.RateLimitError, "rate_limit_error"),
    400: (anthropic.BadRequestError, "invalid_request_error"),
}


@pytest.mark.parametrize("status", list(UPSTREAM_FAILURES))
def test_upstream_failure(client: anthropic.Anthropic, target: Target, status: int) -> None:
    exception, error_type = UPSTREAM_FAILURES[status]
    target.fake.fault(Fault(status=status, message="the fake upstream broke"))
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(model=target.model, max_tokens=64, messages=HI)
    assert isinstance(err.value, exception)
    body = err.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert "the fake upstream broke" in body["error"]["message"]
    assert len(target.fake.requests) == 1


def test_upstream_500_streamed(client: anthropic.Anthropic, target: Target) -> None:
    target.fake.fault(Fault(status=500, message="the fake upstream broke"))
    with pytest.raises(anthropic.InternalServerError) as err, \
            client.messages.stream(model=target.model, max_tokens=64, messages=HI) as stream:
        stream.get_final_message()
    assert err.value.response.json()["type"] == "error"


def test_mid_stream_error(gateway, client: anthropic.Anthropic, target: Target) -> None:
    target.fake.reply(Reply(text="one two three four five six seven eight", chunks=0))
    target.fake.fault(Fault(error_event_after=2, message="went away mid-stream"))
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as err:
        with client.messages.stream(model=target.model, max_tokens=64, messages=HI) as stream:
            for event in stream:
                received.append(event.type)
    assert received and received[0] == "message_start"
    assert "message_stop" not in received
    assert err.value.body["type"] == "error"
    # Anthropic's own in-stream error keeps its type; the others' become api_error. The message survives.
    wanted = "overloaded_error" if target.kind == "anthropic" else "api_error"
    assert err.value.body["error"]["type"] == wanted
    assert "went away mid-stream" in err.value.body["error"]["message"]
    # The same stream, read raw: an `event: error` ends it.
    target.fake.reply(Reply(text="one two three four five six seven eight", chunks=0))
    target.fake.fault(Fault(error_event_after=2, message="went away mid-stream"))
    events = raw_stream(gateway, {"model": target.model, "max_tokens": 64, "messages": HI, "stream": True})
    assert events[-1][0] == "error"
    assert json.loads(events[-1][1])["type"] == "error"
    assert "message_stop" not in [name for name, _ in events]


def raw_stream(gateway, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE answer exactly as the gateway framed them, comments left out."""
    with httpx.stream("POST", gateway.url + "/api/v1/messages", json=body, timeout=20,
                      headers={"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    return parse_sse(text)


def parse_sse(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for frame in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "", []
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        if data:
            out.append((name, "\n".join(data)))
    return out


# -- pass-through to the anthropic connection -------------------------------------------------------------------------

PASSTHROUGH_SIGNATURE = "EqQBCkYIBxgCKkBwYXNzLXRocm91Z2gtc2lnbmF0dXJl"


def passthrough_request() -> dict[str, Any]:
    """A request full of things only Anthropic understands, the kind a translation would lose or reshape."""
    cache = {"type": "ephemeral", "ttl": "5m"}
    return {
        "model": "anthropic/claude-sonnet-4",
        "max_tokens": 3000,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": cache}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Think about 6*7.", "cache_control": cache}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "6*7 is 42.", "signature": PASSTHROUGH_SIGNATURE},
                {"type": "text", "text": "42"}]},
            {"role": "user", "content": "And 6*8?"},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "service_tier": "standard_only",
        "metadata": {"user_id": "user-123"},
    }


# top_k is no longer an argument of this SDK's create(): it goes in extra_body with the unknown future field.
FUTURE_FIELD = {"top_k": 7, "context_management": {"edits": [
    {"type": "clear_tool_uses_20250919", "keep": {"type": "tool_uses", "value": 3}}]}}


def sdk_kwargs(request: dict[str, Any]) -> dict[str, Any]:
    return {**request, "extra_body": FUTURE_FIELD}


def test_passthrough_request_and_response(client: anthropic.Anthropic, capture: Capture, fake_anthropic) -> None:
    reply = Reply(text="48", reasoning="6*8 is 48.", reasoning_signature="sig-pass", prompt_tokens=50,
                  cached_tokens=30, cache_write_tokens=5, completion_tokens=12)
    fake_anthropic.reply(reply)
    beta = "context-management-2025-06-27"
    raw = client.messages.with_raw_response.create(**sdk_kwargs(passthrough_request()),
                                                   extra_headers={"anthropic-beta": beta})
    sent = capture.last_body
    assert fake_anthropic.last.headers["anthropic-beta"] == beta  # the beta the client opted into goes along
    # The test means something only if the client really sent all of it.
    assert sent["context_management"] == FUTURE_FIELD["context_management"]
    assert sent["service_tier"] == "standard_only" and sent["top_k"] == 7
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "5m"}
    assert fake_anthropic.last.json == {**sent, "model": "claude-sonnet-4-20250514"}
    # The answer comes back as the fake sent it, not re-rendered.
    assert raw.http_response.json() == fake_anthropic.message(reply, "claude-sonnet-4-20250514")
    message = raw.parse()
    assert message.content[0].type == "thinking" and message.content[0].signature == "sig-pass"


def test_passthrough_stream(client: anthropic.Anthropic, capture: Capture, fake_anthropic) -> None:
    reply = Reply(text="forty eight", reasoning="6*8 is 48.", reasoning_signature="sig-pass",
                  tool_calls=[ToolCall("get_weather", {"city": "Lisbon"})], finish="tool_calls")
    fake_anthropic.reply(reply)
    with client.messages.with_streaming_response.create(**sdk_kwargs(passthrough_request()), stream=True) as resp:
        got = parse_sse(resp.read().decode())
    sent = capture.last_body
    assert sent["stream"] is True and sent["context_management"] == FUTURE_FIELD["context_management"]
    assert fake_anthropic.last.json == {**sent, "model": "claude-sonnet-4-20250514"}
    expected = parse_sse(b"".join(fake_anthropic.events(reply, "claude-sonnet-4-20250514")).decode())
    # Event names and data strings, byte for byte (the fake's ping keeps Anthropic's own spacing).
    assert got == expected


def test_passthrough_stream_with_sdk(client: anthropic.Anthropic, fake_anthropic) -> None:
    fake_anthropic.reply(Reply(text="forty eight", reasoning="6*8 is 48.", reasoning_signature="sig-pass"))
    with client.messages.stream(**sdk_kwargs(passthrough_request())) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].signature == "sig-pass" and texts(final) == "forty eight"
    assert final.model == "claude-sonnet-4-20250514"


# -- count_tokens -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("base", list(BASES))
def test_count_tokens(gateway, target: Target, base: str) -> None:
    with make_client(gateway.url + BASES[base]) as sdk:
        short = sdk.messages.count_tokens(model=target.model, messages=HI)
        longer = sdk.messages.count_tokens(model=target.model, system="Be brief. " * 50, messages=HI,
                                           tools=[WEATHER_TOOL])
    assert short.input_tokens > 0
    assert longer.input_tokens > short.input_tokens


def test_count_tokens_errors_in_anthropic_shape(gateway) -> None:
    with make_client(gateway.url + "/api", api_key="sk-or-v1-" + "0" * 64) as sdk, \
            pytest.raises(anthropic.AuthenticationError) as err:
        sdk.messages.count_tokens(model="anthropic/claude-sonnet-4", messages=HI)
    assert_anthropic_error(err.value, 401, "authentication_error")
    with make_client(gateway.url + "/api") as sdk, pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.count_tokens(model="anthropic/claude-sonnet-4", messages=[])
    assert_anthropic_error(bad.value, 400, "invalid_request_error")


def test_pdf_document(client: anthropic.Anthropic, target: Target) -> None:
    pdf = base64.b64encode(b"%PDF-1.4\n%fake\n").decode()
    client.messages.create(model=target.model, max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": pdf}},
        {"type": "text", "text": "Summarise"}]}])
    sent = target.fake.last.json
    if target.fake.name == "anthropic":  # pass-through: the block itself
        assert sent["messages"][0]["content"][0]["source"]["data"] == pdf
    elif target.fake.name == "gemini":
        assert sent["contents"][0]["parts"][0]["inlineData"] == {"mimeType": "application/pdf", "data": pdf}
    else:
        part = sent["messages"][0]["content"][0]
        assert part["type"] == "file" and part["file"]["file_data"] == f"data:application/pdf;base64,{pdf}"
