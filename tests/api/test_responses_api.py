"""End to end: OpenAI's Responses API (POST /api/v1/responses) through the official `openai` SDK -> a real Crossroads
process -> fake upstreams of each provider type.

Every test asserts what the client got and what the upstream received, in the upstream's own shape.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseErrorEvent, ResponseFailedEvent
from pydantic import BaseModel

from tests.conftest import MASTER_KEY, expected_cost
from tests.fakes.base import FakeUpstream, Fault, Reply, ToolCall
from tests.fakes.gemini_fake import FAKE_SIGNATURE as GEMINI_SIGNATURE

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
# A flat Responses function tool (not chat's nested {"function": {...}}).
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def new_key(gateway) -> str:
    resp = httpx.post(gateway.url + "/api/v1/keys", headers=AUTH, json={"name": "responses-test"}, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def generation(gateway, generation_id: str) -> dict[str, Any]:
    resp = httpx.get(gateway.url + "/api/v1/generation", headers=AUTH, params={"id": generation_id}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


# -- what the upstream received, read in each provider's own shape ---------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "".join(p.get("text", "") for p in value or () if isinstance(p, dict))


def upstream_system(fake: FakeUpstream) -> str:
    body = fake.last.json
    if fake.name == "anthropic":
        return _text(body.get("system"))
    if fake.name == "gemini":
        return _text((body.get("systemInstruction") or {}).get("parts"))
    return "\n\n".join(m["content"] for m in body["messages"] if m["role"] == "system")


def upstream_max_tokens(fake: FakeUpstream) -> int:
    body = fake.last.json
    if fake.name == "anthropic":
        return body["max_tokens"]
    if fake.name == "gemini":
        return body["generationConfig"]["maxOutputTokens"]
    # api.openai.com gets max_completion_tokens; other OpenAI-compatible servers (this fake) keep max_tokens.
    return body.get("max_completion_tokens", body.get("max_tokens"))


def upstream_turns(fake: FakeUpstream, index: int = -1) -> list[tuple[Any, ...]]:
    """The conversation (system prompt aside) as ("user"|"assistant", text), ("call", name, args, id) and
    ("result", call id or function name, payload) entries, whatever the upstream's wire format."""
    body = fake.requests[index].json
    out: list[tuple[Any, ...]] = []
    if fake.name == "anthropic":
        for message in body["messages"]:
            blocks = message["content"]
            if isinstance(blocks, str):
                blocks = [{"type": "text", "text": blocks}]
            for block in blocks:
                if block["type"] == "text":
                    out.append((message["role"], block["text"]))
                elif block["type"] == "tool_use":
                    out.append(("call", block["name"], block["input"], block["id"]))
                elif block["type"] == "tool_result":
                    out.append(("result", block["tool_use_id"], json.loads(_text(block.get("content")))))
    elif fake.name == "gemini":
        for content in body["contents"]:
            role = "assistant" if content["role"] == "model" else "user"
            for part in content["parts"]:
                if "text" in part and not part.get("thought"):
                    out.append((role, part["text"]))
                elif "functionCall" in part:
                    call = part["functionCall"]
                    out.append(("call", call["name"], call["args"], call.get("id")))
                elif "functionResponse" in part:
                    result = part["functionResponse"]
                    out.append(("result", result["name"], result["response"]))
    else:
        for message in body["messages"]:
            if message["role"] == "system":
                continue
            if message["role"] == "tool":
                out.append(("result", message["tool_call_id"], json.loads(message["content"])))
                continue
            if message.get("content"):
                out.append((message["role"], _text(message["content"])))
            for call in message.get("tool_calls") or ():
                out.append(("call", call["function"]["name"], json.loads(call["function"]["arguments"]),
                            call["id"]))
    return out


def result_key(fake: FakeUpstream, call_id: str, name: str) -> str:
    # Gemini pairs a functionResponse with its call by function name; the others by the call's id.
    return name if fake.name == "gemini" else call_id


def assert_openai_error(err: openai.APIStatusError, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}, which the SDK reads into the
    exception (a string `type`, `code` a string or null, never OpenRouter's numeric code)."""
    assert err.status_code == status
    body = err.body
    assert isinstance(body, dict), body
    assert {"message", "type", "param", "code"} <= set(body), body
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(err.type, str) and err.type
    assert err.code is None or isinstance(err.code, str), body
    if param is not None:
        assert err.param == param, body
    return body


# -- create, non-stream and stream ---------------------------------------------------------------------------------


def test_create(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="Olá! Tudo bem?", prompt_tokens=21, completion_tokens=5))
    raw = client.responses.with_raw_response.create(model=model, input="Say hi")
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert raw.headers["x-generation-id"] == "gen-" + response.id.removeprefix("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == model
    assert response.error is None and response.incomplete_details is None
    assert response.output_text == "Olá! Tudo bem?"
    assert [item.type for item in response.output] == ["message"]
    message = response.output[0]
    assert message.role == "assistant" and message.status == "completed"
    assert [(part.type, part.text) for part in message.content] == [("output_text", "Olá! Tudo bem?")]
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (21, 5, 26)
    assert response.store is True  # OpenAI's default, echoed
    assert upstream_turns(fake) == [("user", "Say hi")]
    assert fake.last.json.get("stream") in (None, False) and "streamGenerateContent" not in fake.last.path


def test_stream_events(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="one two three four", prompt_tokens=9, completion_tokens=4))
    events = list(client.responses.create(model=model, input="count", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.completed") == 1
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    # One message item, opened and closed around its text deltas, in OpenAI's order.
    middle = [k for k in kinds[2:-1] if k != "response.output_text.delta"]
    assert middle == ["response.output_item.added", "response.content_part.added", "response.output_text.done",
                      "response.content_part.done", "response.output_item.done"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "one two three four"
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "one two three four"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "one two three four"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 4)
    if fake.name == "gemini":
        assert fake.last.path.endswith(":streamGenerateContent") and fake.last.query.get("alt") == "sse"
    else:
        assert fake.last.json["stream"] is True


def test_stream_helper_final_response(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="Streaming through the helper.", prompt_tokens=6, completion_tokens=4))
    with client.responses.stream(model=model, input="go", instructions="Be brief.") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == "Streaming through the helper."
    assert final.status == "completed"
    assert final.output_text == "Streaming through the helper."
    assert final.instructions == "Be brief."
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 4)
    assert upstream_system(fake) == "Be brief."


# -- instructions, roles and the token limit ------------------------------------------------------------------------


def test_instructions_and_input_roles(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="Estou bem."))
    response = client.responses.create(
        model=model, instructions="Be brief.", max_output_tokens=321,
        input=[{"role": "developer", "content": "Answer in Portuguese."},
               {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "No emoji."}]},
               {"role": "user", "content": "Hi"},
               {"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "Olá", "annotations": []}]},
               {"role": "user", "content": [{"type": "input_text", "text": "How are you?"}]}])
    assert response.output_text == "Estou bem."
    assert response.max_output_tokens == 321 and response.instructions == "Be brief."
    # Both system-side texts in the upstream's own system slot, never as a conversation turn.
    system = upstream_system(fake)
    assert "Be brief." in system and "Answer in Portuguese." in system and "No emoji." in system
    assert system.index("Be brief.") < system.index("Answer in Portuguese.") < system.index("No emoji.")
    assert upstream_turns(fake) == [("user", "Hi"), ("assistant", "Olá"), ("user", "How are you?")]
    assert upstream_max_tokens(fake) == 321


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_max_output_tokens_incomplete(client: openai.OpenAI, target, stream: bool) -> None:
    model, _, fake = target
    fake.reply(Reply(text="This answer is cut", finish="length", prompt_tokens=5, completion_tokens=16))
    if stream:
        events = list(client.responses.create(model=model, input="Tell a long story", max_output_tokens=16,
                                              stream=True))
        assert events[-1].type == "response.incomplete"
        assert not any(e.type == "response.completed" for e in events)
        response = events[-1].response
    else:
        response = client.responses.create(model=model, input="Tell a long story", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "This answer is cut"
    assert response.output[-1].status == "incomplete"
    assert response.usage.output_tokens == 16
    assert upstream_max_tokens(fake) == 16


# -- function calling ---------------------------------------------------------------------------------------------


def test_function_call_round_trip(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text=None, finish="tool_calls",
                     tool_calls=[ToolCall("get_weather", {"city": "Lisbon"}, id="call_w1")]))
    question = {"role": "user", "content": "Weather in Lisbon?"}
    first = client.responses.create(model=model, input=[question], tools=[WEATHER_TOOL], tool_choice="auto",
                                    store=False)
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Lisbon"}
    assert first.output_text == ""
    assert [t.name for t in first.tools] == ["get_weather"]
    # The flat Responses tool reached the upstream as a tool definition in its own shape.
    body = fake.last.json
    if fake.name == "anthropic":
        assert body["tools"][0]["name"] == "get_weather"
        assert body["tools"][0]["input_schema"]["properties"]["city"] == {"type": "string"}
    elif fake.name == "gemini":
        declaration = body["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == "get_weather"
    else:
        assert body["tools"][0]["function"]["name"] == "get_weather"
        assert body["tools"][0]["function"]["parameters"] == WEATHER_TOOL["parameters"]

    fake.reply(Reply(text="It is 21 °C in Lisbon."))
    second = client.responses.create(
        model=model, tools=[WEATHER_TOOL], store=False,
        input=[question, *[item.model_dump(exclude_none=True) for item in first.output],
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}])
    assert second.output_text == "It is 21 °C in Lisbon."
    turns = upstream_turns(fake)
    assert turns[0] == ("user", "Weather in Lisbon?")
    assert turns[1][:3] == ("call", "get_weather", {"city": "Lisbon"})
    assert turns[2] == ("result", result_key(fake, turns[1][3], "get_weather"), {"temp_c": 21})
    if fake.name != "gemini":
        assert turns[1][3] == turns[2][1]  # the result names its call
    assert len(turns) == 3
    if fake.name == "gemini":
        # The call's thought signature went to the client inside a reasoning item and came back on the call.
        assert any(item.type == "reasoning" and item.encrypted_content for item in first.output)
        parts = [p for c in fake.last.json["contents"] for p in c["parts"] if "functionCall" in p]
        assert parts[0]["thoughtSignature"] == GEMINI_SIGNATURE


def test_streamed_function_call_arguments(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text=None, finish="tool_calls", tool_calls=[
        ToolCall("get_weather", {"city": "Porto", "unit": "celsius"}), ToolCall("get_weather", {"city": "Faro"})]))
    with client.responses.stream(model=model, input="two cities", tools=[WEATHER_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    added = {e.output_index: e.item for e in events
             if e.type == "response.output_item.added" and e.item.type == "function_call"}
    assert len(added) == 2
    if fake.name == "gemini":
        # Gemini signs the first call: that state comes as a reasoning item of its own, ahead of the calls.
        items = [e.item for e in events if e.type == "response.output_item.done"]
        assert items[0].type == "reasoning" and items[0].encrypted_content
    pieces: dict[int, str] = {}
    for event in events:
        if event.type == "response.function_call_arguments.delta":
            pieces[event.output_index] = pieces.get(event.output_index, "") + event.delta
            assert event.snapshot == pieces[event.output_index]  # the SDK's own accumulation agrees
    done = {e.output_index: e.arguments for e in events if e.type == "response.function_call_arguments.done"}
    assert pieces == done
    assert [json.loads(done[i]) for i in sorted(done)] == [{"city": "Porto", "unit": "celsius"}, {"city": "Faro"}]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Porto", "unit": "celsius"}, {"city": "Faro"}]
    assert all(c.name == "get_weather" and c.call_id for c in calls)
    assert len({c.call_id for c in calls}) == 2
    assert [c.call_id for c in calls] == [added[i].call_id for i in sorted(added)]


# -- previous_response_id ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream_first", [False, True], ids=["whole", "streamed"])
def test_previous_response_id_sends_whole_history(client: openai.OpenAI, target, stream_first: bool) -> None:
    model, _, fake = target
    fake.reply(Reply(text="Nice to meet you, Ada."), Reply(text="Your name is Ada."))
    if stream_first:
        with client.responses.stream(model=model, input="My name is Ada.") as stream:
            first = stream.get_final_response()
    else:
        first = client.responses.create(model=model, input="My name is Ada.")
    second = client.responses.create(model=model, previous_response_id=first.id, input="What is my name?")
    assert second.output_text == "Your name is Ada."
    assert second.previous_response_id == first.id
    assert second.id != first.id
    assert upstream_turns(fake) == [("user", "My name is Ada."), ("assistant", "Nice to meet you, Ada."),
                                    ("user", "What is my name?")]


def test_instructions_are_not_carried_over(client: openai.OpenAI, target) -> None:
    # OpenAI: "the instructions from a previous response will not be carried over to the next response".
    model, _, fake = target
    first = client.responses.create(model=model, instructions="Talk like a pirate.", input="Hi")
    client.responses.create(model=model, previous_response_id=first.id, instructions="Talk like a poet.",
                            input="Again")
    system = upstream_system(fake)
    assert "Talk like a poet." in system and "pirate" not in system
    assert upstream_turns(fake) == [("user", "Hi"), ("assistant", "Hello from the fake upstream."),
                                    ("user", "Again")]


def test_chain_across_providers(client: openai.OpenAI, fake_openai, fake_anthropic, fake_gemini) -> None:
    # One conversation, each turn served by another provider type: every upstream gets the history in its shape.
    fake_openai.reply(Reply(text=None, finish="tool_calls",
                            tool_calls=[ToolCall("get_weather", {"city": "Lisbon"}, id="call_x1")]))
    first = client.responses.create(model="openai/gpt-4o-mini", input="Weather in Lisbon?", tools=[WEATHER_TOOL])
    call = next(item for item in first.output if item.type == "function_call")
    fake_anthropic.reply(Reply(text="It is 21 °C.", reasoning="The tool said 21."))
    second = client.responses.create(
        model="anthropic/claude-sonnet-4", previous_response_id=first.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}])
    assert second.output_text == "It is 21 °C."
    turns = upstream_turns(fake_anthropic)
    assert turns[0] == ("user", "Weather in Lisbon?")
    assert turns[1][:3] == ("call", "get_weather", {"city": "Lisbon"})
    assert turns[2] == ("result", turns[1][3], {"temp_c": 21})
    fake_gemini.reply(Reply(text="Sunny tomorrow."))
    third = client.responses.create(model="google/gemini-2.5-flash", previous_response_id=second.id,
                                    tools=[WEATHER_TOOL], input="And tomorrow?")
    assert third.output_text == "Sunny tomorrow."
    gemini_turns = [t[:3] for t in upstream_turns(fake_gemini)]  # (a call's id aside)
    assert gemini_turns == [
        ("user", "Weather in Lisbon?"), ("call", "get_weather", {"city": "Lisbon"}),
        ("result", "get_weather", {"temp_c": 21}), ("assistant", "It is 21 °C."), ("user", "And tomorrow?")]
    # Anthropic's thinking signature means nothing to Gemini and must not reach it.
    assert "thoughtSignature" not in json.dumps(fake_gemini.last.json)


def test_three_turn_chain_with_tool_call(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text=None, finish="tool_calls", tool_calls=[ToolCall("get_weather", {"city": "Lisbon"})]),
               Reply(text="It is 21 °C."), Reply(text="Tomorrow looks sunny."))
    first = client.responses.create(model=model, input="Weather in Lisbon?", tools=[WEATHER_TOOL])
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(model=model, previous_response_id=first.id, tools=[WEATHER_TOOL], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}])
    assert second.output_text == "It is 21 °C."
    third = client.responses.create(model=model, previous_response_id=second.id, tools=[WEATHER_TOOL],
                                    input="And tomorrow?")
    assert third.output_text == "Tomorrow looks sunny."
    assert len(fake.requests) == 3
    second_turns = upstream_turns(fake, 1)
    assert [t[0] for t in second_turns] == ["user", "call", "result"]
    assert second_turns[1][1:3] == ("get_weather", {"city": "Lisbon"})
    key = result_key(fake, second_turns[1][3], "get_weather")
    assert second_turns[2] == ("result", key, {"temp_c": 21})
    assert upstream_turns(fake, 2) == [*second_turns, ("assistant", "It is 21 °C."), ("user", "And tomorrow?")]


def test_store_false_cannot_be_continued(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    first = client.responses.create(model=model, input="Remember nothing.", store=False)
    assert first.store is False
    calls = len(fake.requests)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model=model, previous_response_id=first.id, input="Go on")
    assert_openai_error(err.value, 404, param="previous_response_id")
    assert first.id in err.value.message
    assert len(fake.requests) == calls  # refused before any upstream call
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_retrieve_and_delete(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="Stored answer.", prompt_tokens=8, completion_tokens=2))
    created = client.responses.create(model=model, input="Keep this", metadata={"topic": "storage"})
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id
    assert fetched.status == "completed"
    assert fetched.output_text == "Stored answer."
    assert fetched.metadata == {"topic": "storage"}
    assert fetched.usage.input_tokens == 8
    assert fetched.model_dump() == created.model_dump()
    requests_before = len(fake.requests)
    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.retrieve(created.id)
    assert_openai_error(err.value, 404)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model, previous_response_id=created.id, input="more")
    assert len(fake.requests) == requests_before  # none of it reached the upstream


def test_streamed_response_is_stored(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="Streamed and kept."))
    with client.responses.stream(model=model, input="keep") as stream:
        final = stream.get_final_response()
    fetched = client.responses.retrieve(final.id)
    assert fetched.status == "completed" and fetched.output_text == "Streamed and kept."


def test_another_key_cannot_see_a_response(gateway, fake_openai) -> None:
    owner = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key=new_key(gateway), max_retries=0, timeout=20)
    other = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key=new_key(gateway), max_retries=0, timeout=20)
    fake_openai.reply(Reply(text="Mine."))
    created = owner.responses.create(model="openai/gpt-4o-mini", input="private")
    assert owner.responses.retrieve(created.id).output_text == "Mine."
    calls = len(fake_openai.requests)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.retrieve(created.id)
    assert_openai_error(err.value, 404)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.create(model="openai/gpt-4o-mini", previous_response_id=created.id, input="peek")
    assert_openai_error(err.value, 404, param="previous_response_id")
    assert len(fake_openai.requests) == calls
    # The other key's attempts changed nothing: the owner still has it.
    assert owner.responses.retrieve(created.id).id == created.id


# -- structured output ------------------------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    born: int


def test_parse_structured_output(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text='{"name": "Ada Lovelace", "born": 1815}'))
    parsed = client.responses.parse(model=model, input="A scientist, please", text_format=Person)
    assert parsed.output_parsed == Person(name="Ada Lovelace", born=1815)
    body = fake.last.json
    if fake.name == "gemini":
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        assert set(schema["properties"]) == {"name", "born"}
    elif fake.name == "anthropic":
        assert '"born"' in upstream_system(fake) and "JSON" in upstream_system(fake)
    else:
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["name"] == "Person"
        assert set(body["response_format"]["json_schema"]["schema"]["properties"]) == {"name", "born"}


# -- reasoning -------------------------------------------------------------------------------------------------


def assert_effort_high_sent(fake: FakeUpstream) -> None:
    body = fake.last.json
    if fake.name == "anthropic":
        assert body["thinking"]["type"] == "enabled" and body["thinking"]["budget_tokens"] >= 1024
        assert body["max_tokens"] > body["thinking"]["budget_tokens"]
    elif fake.name == "gemini":
        thinking = body["generationConfig"]["thinkingConfig"]
        assert thinking["includeThoughts"] is True and thinking["thinkingBudget"] > 1024
    else:
        assert body["reasoning_effort"] == "high" and "reasoning" not in body


def test_reasoning_effort_and_summary(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="42", reasoning="Let me think about it.", reasoning_tokens=4, completion_tokens=9))
    response = client.responses.create(model=model, input="Answer?", reasoning={"effort": "high"},
                                       max_output_tokens=4000)
    assert_effort_high_sent(fake)
    assert response.reasoning.effort == "high"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert [(s.type, s.text) for s in reasoning.summary] == [("summary_text", "Let me think about it.")]
    assert response.output_text == "42"
    assert response.usage.output_tokens == 9
    if fake.name != "anthropic":  # Anthropic's usage does not count thinking tokens apart
        assert response.usage.output_tokens_details.reasoning_tokens == 4


def test_reasoning_streamed(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="42", reasoning="First think, then answer."))
    events = list(client.responses.create(model=model, input="Answer?", reasoning={"effort": "high"},
                                          max_output_tokens=4000, stream=True))
    assert_effort_high_sent(fake)
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == "First think, then answer."
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added[0] == "reasoning" and "message" in added
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output[0].type == "reasoning"
    assert final.response.output[0].summary[0].text == "First think, then answer."
    assert final.response.output_text == "42"


def test_anthropic_thinking_signature_round_trip(client: openai.OpenAI, fake_anthropic) -> None:
    # Mid tool loop Anthropic needs the calling turn to start with its signed thinking: the reasoning item the client
    # got (encrypted_content) must come back to Anthropic as that thinking block, signature intact.
    fake_anthropic.reply(Reply(text=None, finish="tool_calls", reasoning="I should call the tool.",
                               reasoning_signature="sig-ant-123",
                               tool_calls=[ToolCall("get_weather", {"city": "Lisbon"})]),
                         Reply(text="It is 21 °C."))
    with client.responses.stream(model="anthropic/claude-sonnet-4", input="Weather in Lisbon?",
                                 tools=[WEATHER_TOOL], reasoning={"effort": "medium"}, max_output_tokens=2000,
                                 store=False) as stream:
        first = stream.get_final_response()
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    assert first.output[0].summary[0].text == "I should call the tool." and first.output[0].encrypted_content
    call = first.output[1]
    client.responses.create(
        model="anthropic/claude-sonnet-4", tools=[WEATHER_TOOL], reasoning={"effort": "medium"},
        max_output_tokens=2000, store=False,
        input=[{"role": "user", "content": "Weather in Lisbon?"},
               *[item.model_dump(exclude_none=True) for item in first.output],
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}])
    body = fake_anthropic.last.json
    assistant = next(m for m in body["messages"] if m["role"] == "assistant")
    assert [b["type"] for b in assistant["content"]] == ["thinking", "tool_use"]
    assert assistant["content"][0]["thinking"] == "I should call the tool."
    assert assistant["content"][0]["signature"] == "sig-ant-123"
    assert body["thinking"]["type"] == "enabled"


def test_no_reasoning_item_without_reasoning(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="Plain."))
    response = client.responses.create(model=model, input="Answer?")
    assert [item.type for item in response.output] == ["message"]
    body = json.dumps(fake.last.json)
    assert "thinking" not in body.replace("thinkingConfig", "") and "reasoning_effort" not in body


# -- usage and the generation record -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_usage_and_generation_record(client: openai.OpenAI, gateway, target, stream: bool) -> None:
    model, connection, fake = target
    fake.reply(Reply(text="Counted.", prompt_tokens=120, completion_tokens=30))
    raw = client.responses.with_raw_response.create(model=model, input="bill me", stream=stream)
    generation_id = raw.headers["x-generation-id"]
    if stream:
        response = [e for e in raw.parse() if e.type == "response.completed"][0].response
    else:
        response = raw.parse()
    assert response.id == "resp_" + generation_id.removeprefix("gen-")
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (120, 30, 150)
    record = generation(gateway, generation_id)
    assert record["endpoint"] == "responses"
    assert record["model"] == model and record["provider_name"] == connection
    assert (record["tokens_prompt"], record["tokens_completion"]) == (120, 30)
    assert record["total_cost"] == pytest.approx(expected_cost(120, 30))
    assert record["streamed"] is stream
    assert record["finish_reason"] == "stop"


# -- errors -------------------------------------------------------------------------------------------------------


def test_bad_key_is_401(gateway, fake_openai) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key="sk-or-v1-" + "0" * 64, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.responses.create(model="openai/gpt-4o-mini", input="hi")
    assert_openai_error(err.value, 401)
    assert not fake_openai.requests


def test_unknown_model_is_404(client: openai.OpenAI, fake_openai) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="nobody/no-such-model", input="hi")
    assert_openai_error(err.value, 404)
    assert "nobody/no-such-model" in err.value.message
    assert not fake_openai.requests


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "openai/gpt-4o-mini"}, "input"),
    ({"model": "openai/gpt-4o-mini", "input": 42}, "input"),
    ({"model": "openai/gpt-4o-mini", "input": [{"role": "robot", "content": "beep"}]}, "input[0].role"),
    ({"model": "openai/gpt-4o-mini", "input": [{"type": "function_call_output", "output": "x"}]},
     "input[0].call_id"),
    ({"model": "openai/gpt-4o-mini", "input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
    ({"model": "openai/gpt-4o-mini", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "hi"}, "model"),
], ids=["missing-input", "input-number", "bad-role", "output-without-call-id", "max-tokens-string",
        "tool-without-name", "missing-model"])
def test_bad_input_is_400_naming_the_field(client: openai.OpenAI, fake_openai, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/responses", cast_to=httpx.Response, body=body)
    assert_openai_error(err.value, 400, param=param)
    assert f"'{param}'" in err.value.message
    assert not fake_openai.requests


def test_invalid_json_is_400(gateway, fake_openai) -> None:
    resp = httpx.post(gateway.url + "/api/v1/responses", content=b"{not json",
                      headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert isinstance(error.get("type"), str) and error["message"]
    assert not fake_openai.requests


def test_mid_stream_error_ends_with_response_failed(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="alpha beta gamma delta epsilon zeta", chunks=6))
    fake.fault(Fault(error_event_after=2, message="upstream overloaded"))
    events = list(client.responses.create(model=model, input="go", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-2:] == ["error", "response.failed"]
    assert "response.completed" not in kinds
    error, failed = events[-2], events[-1]
    assert isinstance(error, ResponseErrorEvent) and isinstance(failed, ResponseFailedEvent)
    assert "upstream overloaded" in error.message
    assert failed.response.status == "failed"
    assert failed.response.error is not None and "upstream overloaded" in failed.response.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # What the client had already seen is kept, cut short.
    seen = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "alpha beta gamma delta epsilon zeta".startswith(seen)
    if fake.name == "anthropic":
        assert seen == ""  # Anthropic's error came before its first text delta
    else:
        assert seen
        assert failed.response.output[-1].type == "message"
        assert failed.response.output[-1].status == "incomplete"
        assert failed.response.output[-1].content[0].text == seen
    # The stream helper surfaces the failure too: no final response.
    fake.reply(Reply(text="alpha beta gamma delta epsilon zeta", chunks=6))
    fake.fault(Fault(error_event_after=2, message="upstream overloaded"))
    with client.responses.stream(model=model, input="go") as stream:
        helper_events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    assert helper_events[-1].type == "response.failed"
    # A failed response is not kept for previous_response_id.
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed.response.id)
