"""The Responses front format: request -> canonical chat, canonical results -> Response objects and SSE events.

Every rendered stream is parsed frame by frame, each event validated by the official `openai` SDK's event models and
replayed through the SDK's own stream accumulator; final Responses are validated with `Response.model_validate`.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
import yaml
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from crossroads.errors import GatewayError
from crossroads.formats.responses import (
    ResponsesRenderer,
    input_items,
    items_for_history,
    responses_error_body,
    responses_to_chat,
)
from crossroads.providers.base import Usage, choice_chunk
from tests.conftest import RECORDED

EVENTS = TypeAdapter(ResponseStreamEvent)
CREATED = 1_760_000_000
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "strict": True}
WEATHER_CHAT = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True}}


# ------------------------------------------------------------------------------------------- request mapping

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("string input and instructions",
     {"model": "openai/gpt-4o", "instructions": "Be brief.", "input": "Hi"},
     {"model": "openai/gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hi"}]},
     []),
    ("message roles and text parts",
     {"model": "m", "input": [
         {"role": "developer", "content": "Rules."},
         {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "More "},
                                                           {"type": "input_text", "text": "rules."}]},
         {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
         {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
          "content": [{"type": "output_text", "text": "Hi ", "annotations": []},
                      {"type": "output_text", "text": "there", "annotations": []}]},
         {"role": "user", "content": "Bye"}]},
     {"model": "m", "messages": [
         {"role": "system", "content": "Rules."},
         {"role": "system", "content": "More rules."},
         {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
         {"role": "assistant", "content": "Hi there"},
         {"role": "user", "content": "Bye"}]},
     []),
    ("image, file and audio parts; uploaded-file ids are dropped",
     {"model": "m", "input": [{"role": "user", "content": [
         {"type": "input_text", "text": "Look"},
         {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
         {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "original"},
         {"type": "input_image", "file_id": "file-123", "detail": "auto"},
         {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
         {"type": "input_file", "file_url": "https://example.com/b.pdf"},
         {"type": "input_file", "file_id": "file-456"},
         {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}]}]},
     {"model": "m", "messages": [{"role": "user", "content": [
         {"type": "text", "text": "Look"},
         {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
         {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
         {"type": "file", "file": {"file_data": "https://example.com/b.pdf"}},
         {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}]}]},
     ["input[0].content[3].file_id", "input[0].content[6].file_id"]),
    ("consecutive function calls merge into one assistant message; outputs become tool messages",
     {"model": "m", "input": [
         {"role": "user", "content": "Add and multiply 2 and 3"},
         {"type": "function_call", "call_id": "call_a", "name": "add", "arguments": "{\"a\":2,\"b\":3}",
          "id": "fc_1", "status": "completed"},
         {"type": "function_call", "call_id": "call_m", "name": "multiply", "arguments": "{\"a\":2,\"b\":3}"},
         {"type": "function_call_output", "call_id": "call_a", "output": "5"},
         {"type": "function_call_output", "call_id": "call_m",
          "output": [{"type": "input_text", "text": "6"}]}]},
     {"model": "m", "messages": [
         {"role": "user", "content": "Add and multiply 2 and 3"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_a", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":3}"}},
             {"id": "call_m", "type": "function", "function": {"name": "multiply",
                                                               "arguments": "{\"a\":2,\"b\":3}"}}]},
         {"role": "tool", "tool_call_id": "call_a", "content": "5"},
         {"role": "tool", "tool_call_id": "call_m", "content": [{"type": "text", "text": "6"}]}]},
     []),
    ("reasoning, text and a call of one turn share an assistant message",
     {"model": "m", "input": [
         {"role": "user", "content": "Weather?"},
         {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Need a tool."}],
          "encrypted_content": "gAAAAB-opaque"},
         {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
         {"type": "function_call", "call_id": "call_w", "name": "get_weather", "arguments": "{}"},
         {"type": "function_call_output", "call_id": "call_w", "output": "Sunny"}]},
     {"model": "m", "messages": [
         {"role": "user", "content": "Weather?"},
         {"role": "assistant", "content": "Checking.",
          "reasoning_details": [{"type": "reasoning.summary", "summary": "Need a tool."},
                                {"type": "reasoning.encrypted", "data": "gAAAAB-opaque", "id": "rs_1"}],
          "tool_calls": [{"id": "call_w", "type": "function",
                          "function": {"name": "get_weather", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "call_w", "content": "Sunny"}]},
     []),
    ("reasoning after text: kept with a following call, or starts the next assistant message",
     {"model": "m", "input": [
         {"role": "assistant", "content": "One."},
         {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "a"}]},
         {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
         {"type": "function_call_output", "call_id": "c1", "output": "ok"},
         {"role": "assistant", "content": "Two."},
         {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "b"}]},
         {"role": "assistant", "content": "Three."},
         {"type": "reasoning", "id": "rs_3", "summary": [{"type": "summary_text", "text": "c"}]},
         {"role": "user", "content": "Next"}]},
     {"model": "m", "messages": [
         {"role": "assistant", "content": "One.", "reasoning_details": [{"type": "reasoning.summary", "summary": "a"}],
          "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "ok"},
         {"role": "assistant", "content": "Two."},
         {"role": "assistant", "content": "Three.", "reasoning_details": [
             {"type": "reasoning.summary", "summary": "b"}, {"type": "reasoning.summary", "summary": "c"}]},
         {"role": "user", "content": "Next"}]},
     []),
    ("reasoning with nothing after it is no message of its own",
     {"model": "m", "input": [{"type": "reasoning", "id": "rs_1", "summary": []},
                              {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "x"}]},
                              {"role": "user", "content": "Hi"}]},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
     []),
    ("function tools kept, built-in tools dropped, tool_choice and parallel_tool_calls",
     {"model": "m", "input": "Hi", "tools": [WEATHER, {"type": "web_search"}, {"type": "file_search",
                                                                             "vector_store_ids": ["vs_1"]}],
      "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": False},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER_CHAT],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False},
     ["tools.web_search", "tools.file_search"]),
    ("tool_choice strings; a minimal function tool",
     {"model": "m", "input": "Hi", "tools": [{"type": "function", "name": "noop"}], "tool_choice": "required"},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}],
      "tools": [{"type": "function", "function": {"name": "noop"}}], "tool_choice": "required"},
     []),
    ("only built-in tools: no tools, no tool_choice reach the chat request",
     {"model": "m", "input": "Hi", "tools": [{"type": "web_search_preview"}],
      "tool_choice": {"type": "web_search_preview"}, "parallel_tool_calls": True},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
     ["tools.web_search_preview", "tool_choice"]),
    ("sampling, limits, identity, stream",
     {"model": "m", "input": "Hi", "max_output_tokens": 300, "temperature": 0.2, "top_p": 0.9, "stream": True,
      "safety_identifier": "user-hash", "metadata": {"trace": "t1"}, "store": True,
      "previous_response_id": "resp_prev", "include": ["reasoning.encrypted_content"],
      "stream_options": {"include_obfuscation": False}, "truncation": "disabled", "background": False},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 300,
      "temperature": 0.2, "top_p": 0.9, "user": "user-hash"},
     []),
    ("user wins over safety_identifier",
     {"model": "m", "input": "Hi", "user": "u1", "safety_identifier": "s1"},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "user": "u1"},
     []),
    ("json_schema output and verbosity",
     {"model": "m", "input": "Hi", "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                                                       "schema": {"type": "object"}}, "verbosity": "low"}},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "verbosity": "low",
      "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"},
                                                                 "strict": True}}},
     []),
    ("json_object output; plain text format adds nothing",
     {"model": "m", "input": "Hi", "text": {"format": {"type": "json_object"}}},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"}},
     []),
    ("text format", {"model": "m", "input": "Hi", "text": {"format": {"type": "text"}}},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, []),
    ("reasoning effort kept, summary consumed",
     {"model": "m", "input": "Hi", "reasoning": {"effort": "high", "summary": "auto"}},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "reasoning": {"effort": "high"}},
     []),
    ("OpenRouter extras pass through; unknown and unhonoured fields are reported",
     {"model": "m", "input": "Hi", "provider": {"order": ["oai"]}, "seed": 7, "models": ["m", "n"],
      "truncation": "auto", "background": True, "top_logprobs": 3, "max_tool_calls": 2, "frobnicate": 1,
      "include": ["reasoning.encrypted_content", "message.output_text.logprobs"]},
     {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "provider": {"order": ["oai"]}, "seed": 7,
      "models": ["m", "n"]},
     ["truncation", "background", "top_logprobs", "max_tool_calls", "frobnicate",
      "include.message.output_text.logprobs"]),
    ("model from OpenRouter's models list",
     {"models": ["a/b", "c/d"], "input": "Hi"},
     {"model": "a/b", "messages": [{"role": "user", "content": "Hi"}], "models": ["a/b", "c/d"]},
     []),
]


@pytest.mark.parametrize(("body", "expected", "dropped"), [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS])
def test_request_mapping(body: dict[str, Any], expected: dict[str, Any], dropped: list[str]) -> None:
    chat, got_dropped = responses_to_chat(body)
    assert chat == expected
    assert got_dropped == dropped


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("no model", {"input": "Hi"}, "model"),
    ("empty model", {"model": "", "input": "Hi"}, "model"),
    ("no input", {"model": "m"}, "input"),
    ("input a number", {"model": "m", "input": 3}, "input"),
    ("empty input", {"model": "m", "input": []}, "input"),
    ("input item not an object", {"model": "m", "input": ["hi"]}, "input[0]"),
    ("unknown item type", {"model": "m", "input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ("item reference", {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ("bad role", {"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ("content not text", {"model": "m", "input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ("unknown part", {"model": "m", "input": [{"role": "user", "content": [{"type": "input_video"}]}]},
     "input[0].content[0].type"),
    ("image in a system message", {"model": "m", "input": [
        {"role": "system", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input[0].content[0].type"),
    ("image without url or file", {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_image", "detail": "auto"}]}]}, "input[0].content[0].image_url"),
    ("file without data", {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_file", "filename": "a.pdf"}]}]},
     "input[0].content[0].file_data"),
    ("function call without call_id", {"model": "m", "input": [
        {"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ("function call without name", {"model": "m", "input": [
        {"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input[0].name"),
    ("function call arguments an object", {"model": "m", "input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
    ("function output missing", {"model": "m", "input": [
        {"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ("tampered reasoning envelope", {"model": "m", "input": [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "crossroads.v1.!!!"}]},
     "input[0].encrypted_content"),
    ("envelope not a list", {"model": "m", "input": [
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "encrypted_content": "crossroads.v1." + base64.urlsafe_b64encode(b'{"a":1}').decode()}]},
     "input[0].encrypted_content"),
    ("instructions not a string", {"model": "m", "input": "Hi", "instructions": ["x"]}, "instructions"),
    ("max_output_tokens zero", {"model": "m", "input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
    ("max_output_tokens a boolean", {"model": "m", "input": "Hi", "max_output_tokens": True}, "max_output_tokens"),
    ("temperature a string", {"model": "m", "input": "Hi", "temperature": "hot"}, "temperature"),
    ("tool without a name", {"model": "m", "input": "Hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ("tool without a type", {"model": "m", "input": "Hi", "tools": [{"name": "f"}]}, "tools[0].type"),
    ("unknown tool_choice", {"model": "m", "input": "Hi", "tool_choice": "sometimes"}, "tool_choice"),
    ("unknown text format", {"model": "m", "input": "Hi", "text": {"format": {"type": "yaml"}}},
     "text.format.type"),
    ("json_schema without schema", {"model": "m", "input": "Hi",
                                    "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ("metadata value not a string", {"model": "m", "input": "Hi", "metadata": {"n": 1}}, "metadata.n"),
    ("conversation", {"model": "m", "input": "Hi", "conversation": "conv_1"}, "conversation"),
    ("stored prompt", {"model": "m", "input": "Hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        responses_to_chat(body)
    assert caught.value.status == 400
    assert caught.value.metadata == {"field": field}
    assert f"'{field}'" in caught.value.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(GatewayError) as caught:
        responses_to_chat(["not", "an", "object"])  # type: ignore[arg-type]
    assert caught.value.status == 400


def test_input_items_normalises() -> None:
    assert input_items({"input": "Hi"}) == [{"type": "message", "role": "user", "content": "Hi"}]
    given = [{"role": "user", "content": "a"}, {"type": "function_call_output", "call_id": "c", "output": "x"}]
    assert input_items({"input": given}) == [{"type": "message", "role": "user", "content": "a"},
                                             {"type": "function_call_output", "call_id": "c", "output": "x"}]
    assert "type" not in given[0]  # the caller's body is not modified


def test_history_comes_after_instructions_and_before_input() -> None:
    history = [{"type": "message", "role": "user", "content": "First"},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "One"}]}]
    chat, _ = responses_to_chat({"model": "m", "instructions": "Sys", "input": "Second"}, history)
    assert chat["messages"] == [{"role": "system", "content": "Sys"}, {"role": "user", "content": "First"},
                                {"role": "assistant", "content": "One"}, {"role": "user", "content": "Second"}]


def test_errors_in_history_name_the_stored_items() -> None:
    with pytest.raises(GatewayError) as caught:
        responses_to_chat({"model": "m", "input": "Hi"}, [{"type": "bogus"}])
    assert caught.value.metadata == {"field": "previous_response.items[0].type"}


# ---------------------------------------------------------------------------------------- whole responses


def renderer(request: dict[str, Any] | None = None) -> ResponsesRenderer:
    return ResponsesRenderer("resp_abc", "openai/gpt-4o", request or {"model": "openai/gpt-4o", "input": "Hi"},
                             CREATED)


ECHO_DEFAULTS = {
    "instructions": None, "max_output_tokens": None, "max_tool_calls": None, "parallel_tool_calls": True,
    "presence_penalty": 0.0, "frequency_penalty": 0.0, "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
    "store": True, "temperature": None, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
    "top_p": None, "truncation": "disabled", "user": None, "metadata": {},
}


def usage_dict(prompt: int, completion: int, reasoning: int = 0, cached: int = 0) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def test_plain_text_response() -> None:
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Olá!"},
                               "finish_reason": "stop", "native_finish_reason": "stop"}]}
    out = renderer().response(completion, Usage(prompt_tokens=20, completion_tokens=3, cached_tokens=4, seen=True))
    completed_at = out.pop("completed_at")
    assert isinstance(completed_at, int) and completed_at >= CREATED
    assert out == {
        "id": "resp_abc", "object": "response", "created_at": CREATED, "status": "completed", "background": False,
        "error": None, "incomplete_details": None, **ECHO_DEFAULTS, "model": "openai/gpt-4o",
        "output": [{"id": "msg_abc_0", "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Olá!", "annotations": [], "logprobs": []}]}],
        "usage": usage_dict(20, 3, cached=4),
    }
    assert Response.model_validate({**out, "completed_at": completed_at}).output_text == "Olá!"


def test_response_with_reasoning_text_and_tool_calls() -> None:
    details = [{"type": "reasoning.text", "text": "Need weather.", "signature": "sig-1",
                "format": "anthropic-claude-v1", "index": 0}]
    completion = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me check.", "reasoning": "Need weather.", "reasoning_details": details,
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
        ]}}]}
    request = {"model": "m", "input": "Weather?", "tools": [WEATHER, {"type": "web_search"}],
               "tool_choice": "required", "reasoning": {"effort": "low", "summary": "auto"},
               "max_output_tokens": 500, "instructions": "Be brief.", "metadata": {"k": "v"}, "store": False}
    out = renderer(request).response(completion, Usage(30, 40, reasoning_tokens=12))
    reasoning, message, call_1, call_2 = out["output"]
    assert reasoning == {"id": "rs_abc_0", "type": "reasoning",
                         "summary": [{"type": "summary_text", "text": "Need weather."}],
                         "encrypted_content": reasoning["encrypted_content"]}
    assert reasoning["encrypted_content"].startswith("crossroads.v1.")
    assert message["id"] == "msg_abc_1" and message["content"][0]["text"] == "Let me check."
    assert call_1 == {"id": "fc_abc_2", "type": "function_call", "status": "completed", "call_id": "toolu_1",
                      "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}
    assert call_2["id"] == "fc_abc_3" and call_2["call_id"] == "toolu_2"
    assert out["usage"] == usage_dict(30, 40, reasoning=12)
    # Echoed: only the honoured function tool, the request's choices.
    assert out["tools"] == [WEATHER]
    assert (out["tool_choice"], out["max_output_tokens"], out["instructions"], out["metadata"], out["store"]) == (
        "required", 500, "Be brief.", {"k": "v"}, False)
    assert out["reasoning"] == {"effort": "low", "summary": "auto"}
    parsed = Response.model_validate(out)
    assert parsed.output_text == "Let me check."
    # The reasoning state comes back intact when the client sends the items back.
    chat, _ = responses_to_chat({"model": "m", "input": items_for_history([], out)})
    assert chat["messages"][0]["reasoning_details"] == details


def test_response_cut_by_length_is_incomplete() -> None:
    completion = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Once upon a"},
                               "finish_reason": "length"}]}
    out = renderer().response(completion, Usage(5, 16))
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["completed_at"] is None
    assert out["output"][0]["status"] == "incomplete"
    Response.model_validate(out)


def test_response_without_output() -> None:
    out = renderer().response({"choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                            "finish_reason": "stop"}]}, Usage())
    assert out["output"] == [] and out["status"] == "completed"
    Response.model_validate(out)


# ------------------------------------------------------------------------------------------------- streams


def parse_stream(data: bytes) -> list[dict[str, Any]]:
    """Every frame `event: <type>\\ndata: <json>`, the type repeated inside, sequence numbers 0, 1, 2, ..."""
    assert data.endswith(b"\n\n")
    events = []
    for frame in data.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        payload = orjson.loads(data_line[len("data: "):])
        assert payload["type"] == event_line[len("event: "):]
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def replay(events: list[dict[str, Any]], request: dict[str, Any]) -> Response:
    """Validate each event with the SDK's models and run them through the SDK's own stream accumulator."""
    state = ResponseStreamState(input_tools=request.get("tools") or [], text_format=omit)  # type: ignore[arg-type]
    for payload in events:
        state.handle_event(EVENTS.validate_python(payload))
    final = Response.model_validate(events[-1]["response"])
    return final


def stream(chunks: list[dict[str, Any]], usage: Usage, finish_reason: str | None = None,
           request: dict[str, Any] | None = None) -> tuple[ResponsesRenderer, list[dict[str, Any]]]:
    r = renderer(request)
    data = b"".join(r.chunk(c) for c in chunks) + r.finish(usage, finish_reason)
    return r, parse_stream(data)


def test_stream_plain_text() -> None:
    chunks = [choice_chunk({"role": "assistant", "content": ""}), choice_chunk({"content": "Hel"}),
              choice_chunk({"content": "lo"}), choice_chunk({}, "stop", "end_turn"), {"choices": []}]
    r, events = stream(chunks, Usage(7, 2))
    item = {"item_id": "msg_abc_0", "output_index": 0}
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[2]["item"] == {"id": "msg_abc_0", "type": "message", "status": "in_progress", "content": [],
                                 "role": "assistant"}
    assert events[4] == {"type": "response.output_text.delta", **item, "content_index": 0, "delta": "Hel",
                         "logprobs": [], "sequence_number": 4}
    assert events[6] == {"type": "response.output_text.done", **item, "content_index": 0, "text": "Hello",
                         "logprobs": [], "sequence_number": 6}
    assert events[8]["item"]["status"] == "completed"
    final = replay(events, {})
    assert final.status == "completed" and final.output_text == "Hello"
    assert final.usage is not None and final.usage.total_tokens == 9
    assert r.last_response == events[-1]["response"]


def test_stream_reasoning_summary_then_text() -> None:
    def thinking(text: str) -> dict[str, Any]:
        return choice_chunk({"reasoning": text, "reasoning_details": [
            {"type": "reasoning.text", "text": text, "format": "anthropic-claude-v1", "index": 0}]})

    chunks = [thinking("Let me "), thinking("think."),
              choice_chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "sig-9",
                                                   "format": "anthropic-claude-v1", "index": 0}]}),
              choice_chunk({"content": "Answer."}), choice_chunk({}, "stop", "end_turn")]
    _, events = stream(chunks, Usage(10, 20, reasoning_tokens=15))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    where = {"item_id": "rs_abc_0", "output_index": 0, "summary_index": 0}
    assert events[4] == {"type": "response.reasoning_summary_text.delta", **where, "delta": "Let me ",
                         "sequence_number": 4}
    assert events[6] == {"type": "response.reasoning_summary_text.done", **where, "text": "Let me think.",
                         "sequence_number": 6}
    done = events[8]["item"]
    assert done["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert events[9]["item"]["id"] == "msg_abc_1" and events[9]["output_index"] == 1
    final = replay(events, {})
    assert final.output_text == "Answer."
    assert final.output[0].type == "reasoning" and final.output[0].encrypted_content == done["encrypted_content"]
    # Fragments were joined into one entry carrying the whole text and the signature.
    chat, _ = responses_to_chat({"model": "m", "input": items_for_history([], events[-1]["response"])})
    assert chat["messages"] == [{"role": "assistant", "content": "Answer.", "reasoning_details": [
        {"type": "reasoning.text", "text": "Let me think.", "format": "anthropic-claude-v1", "index": 0,
         "signature": "sig-9"}]}]


def call_fragments(index: int, call_id: str, name: str, pieces: list[str]) -> list[dict[str, Any]]:
    first = choice_chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]})
    return [first] + [choice_chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
                      for p in pieces]


def test_stream_function_call_in_fragments() -> None:
    request = {"model": "m", "input": "Weather in Rome?", "tools": [WEATHER]}
    chunks = [choice_chunk({"role": "assistant"}),
              *call_fragments(0, "call_1", "get_weather", ["{\"ci", "ty\": \"Ro", "me\"}"]),
              choice_chunk({}, "tool_calls", "tool_calls")]
    _, events = stream(chunks, Usage(50, 15), request=request)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert events[2]["item"] == {"id": "fc_abc_0", "type": "function_call", "status": "in_progress",
                                 "arguments": "", "call_id": "call_1", "name": "get_weather"}
    assert events[3] == {"type": "response.function_call_arguments.delta", "item_id": "fc_abc_0", "output_index": 0,
                         "delta": "{\"ci", "sequence_number": 3}
    assert events[6]["arguments"] == "{\"city\": \"Rome\"}"
    assert events[7]["item"] == {"id": "fc_abc_0", "type": "function_call", "status": "completed",
                                 "arguments": "{\"city\": \"Rome\"}", "call_id": "call_1", "name": "get_weather"}
    final = replay(events, request)
    assert final.output[0].type == "function_call" and final.output[0].arguments == "{\"city\": \"Rome\"}"
    assert final.tools[0].name == "get_weather"


def test_stream_two_parallel_function_calls() -> None:
    chunks = [*call_fragments(0, "call_a", "add", ["{\"a\":2,", "\"b\":3}"]),
              *call_fragments(1, "call_m", "multiply", ["{\"a\":2,\"b\":3}"]),
              choice_chunk({}, "tool_calls", "tool_calls")]
    _, events = stream(chunks, Usage(60, 30))
    assert [(e["type"], e.get("output_index")) for e in events] == [
        ("response.created", None), ("response.in_progress", None),
        ("response.output_item.added", 0), ("response.function_call_arguments.delta", 0),
        ("response.function_call_arguments.delta", 0), ("response.function_call_arguments.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1), ("response.function_call_arguments.delta", 1),
        ("response.function_call_arguments.done", 1), ("response.output_item.done", 1),
        ("response.completed", None)]
    final = replay(events, {})
    assert [(o.id, o.call_id, o.name, o.arguments) for o in final.output] == [  # type: ignore[union-attr]
        ("fc_abc_0", "call_a", "add", "{\"a\":2,\"b\":3}"), ("fc_abc_1", "call_m", "multiply", "{\"a\":2,\"b\":3}")]


def test_stream_late_fragment_still_reaches_the_final_response() -> None:
    # An upstream interleaving two calls: the first one's tail arrives after the second started.
    chunks = [*call_fragments(0, "call_a", "add", ["{\"a\":"]), *call_fragments(1, "call_m", "mul", ["{}"]),
              choice_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]})]
    _, events = stream(chunks, Usage(1, 1), "tool_calls")
    assert events[-1]["response"]["output"][0]["arguments"] == "{\"a\":1}"


def test_stream_gemini_signature_gets_its_own_reasoning_item() -> None:
    signature = {"type": "reasoning.encrypted", "data": "c2ln", "id": "call_g", "format": "google-gemini-v1",
                 "index": 0}
    chunks = [choice_chunk({"content": "Checking."}), choice_chunk({"reasoning_details": [signature]}),
              *call_fragments(0, "call_g", "get_weather", ["{\"city\":\"Rome\"}"]),
              choice_chunk({}, "tool_calls", "STOP")]
    _, events = stream(chunks, Usage(5, 5))
    final = replay(events, {})
    assert [o.type for o in final.output] == ["message", "reasoning", "function_call"]
    assert final.output[1].summary == []  # type: ignore[union-attr]
    chat, _ = responses_to_chat({"model": "m", "input": items_for_history([], events[-1]["response"])})
    assert chat["messages"] == [{"role": "assistant", "content": "Checking.", "reasoning_details": [signature],
                                 "tool_calls": [{"id": "call_g", "type": "function", "function": {
                                     "name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]}]


def test_stream_incomplete_by_length() -> None:
    chunks = [choice_chunk({"content": "Once upon"}), choice_chunk({}, "length", "max_tokens")]
    r, events = stream(chunks, Usage(4, 2), request={"model": "m", "input": "Story", "max_output_tokens": 2})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-2]["type"] == "response.output_item.done" and events[-2]["item"]["status"] == "incomplete"
    response = events[-1]["response"]
    assert (response["status"], response["incomplete_details"], response["max_output_tokens"]) == (
        "incomplete", {"reason": "max_output_tokens"}, 2)
    final = replay(events, {})
    assert final.status == "incomplete" and final.output_text == "Once upon"
    assert r.last_response == response


def test_finish_reason_argument_overrides_the_chunks() -> None:
    _, events = stream([choice_chunk({"content": "x"}, "stop", "stop")], Usage(1, 1), "length")
    assert events[-1]["type"] == "response.incomplete"


def test_stream_error_mid_stream() -> None:
    r = renderer()
    data = r.chunk(choice_chunk({"content": "Partial"})) + r.error_event(502, "Upstream oai failed")
    events = parse_stream(data)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "error", "response.failed"]
    assert events[5] == {"type": "error", "code": "server_error", "message": "Upstream oai failed", "param": None,
                         "sequence_number": 5}
    failed = events[6]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "Upstream oai failed"}
    assert failed["output"][0]["status"] == "incomplete"
    assert failed["output"][0]["content"][0]["text"] == "Partial"
    for payload in events:
        EVENTS.validate_python(payload)
    Response.model_validate(failed)
    assert r.last_response == failed


def test_stream_error_before_any_output() -> None:
    events = parse_stream(renderer().error_event(429, "Rate limited"))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert events[2]["code"] == "rate_limit_exceeded"
    assert events[3]["response"]["error"]["code"] == "rate_limit_exceeded"
    for payload in events:
        EVENTS.validate_python(payload)


def test_stream_error_finish_reason_fails_the_response() -> None:
    _, events = stream([choice_chunk({"content": "x"}), choice_chunk({}, "error", "error")], Usage(1, 1))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    replay(events, {})


def test_stream_without_chunks() -> None:
    _, events = stream([], Usage())
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
    replay(events, {})


# ------------------------------------------------------------------------------------------------ round trip


def test_history_round_trip_tool_call_result_and_follow_up() -> None:
    tools = [WEATHER]
    first = {"model": "m", "instructions": "Be brief.", "input": "Weather in Rome?", "tools": tools}
    chat_1, _ = responses_to_chat(first)
    assert chat_1["messages"] == [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Weather in Rome?"}]
    r1 = ResponsesRenderer("resp_one", "m", first, CREATED)
    r1.response({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "reasoning": "Use the tool.",
        "tool_calls": [{"id": "call_r", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]}}]}, Usage(9, 9))
    stored_1 = items_for_history(input_items(first), r1.last_response or {})
    assert [i["type"] for i in stored_1] == ["message", "reasoning", "function_call"]

    second = {"model": "m", "instructions": "Be brief.", "previous_response_id": "resp_one", "tools": tools,
              "input": [{"type": "function_call_output", "call_id": "call_r", "output": "{\"temp\": 31}"}]}
    chat_2, dropped = responses_to_chat(second, stored_1)
    assert dropped == []
    assert chat_2["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None,
         "reasoning_details": [{"type": "reasoning.summary", "summary": "Use the tool."}],
         "tool_calls": [{"id": "call_r", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_r", "content": "{\"temp\": 31}"}]

    r2 = ResponsesRenderer("resp_two", "m", second, CREATED)
    data = r2.chunk(choice_chunk({"content": "31 °C in Rome."})) + r2.finish(Usage(30, 8), "stop")
    parse_stream(data)
    stored_2 = items_for_history(stored_1 + input_items(second), r2.last_response or {})

    third = {"model": "m", "previous_response_id": "resp_two", "input": "And tomorrow?"}
    chat_3, _ = responses_to_chat(third, stored_2)
    # Instructions are not carried over (as with OpenAI); the whole exchange is.
    assert chat_3["messages"] == [*chat_2["messages"][1:],
                                  {"role": "assistant", "content": "31 °C in Rome."},
                                  {"role": "user", "content": "And tomorrow?"}]


# ---------------------------------------------------------------------------------------------- error bodies

@pytest.mark.parametrize(("status", "metadata", "expected"), [
    (400, {"field": "input"}, {"code": 400, "message": "bad", "metadata": {"field": "input"},
                               "type": "invalid_request_error", "param": "input"}),
    (401, None, {"code": 401, "message": "bad", "type": "authentication_error", "param": None}),
    (402, None, {"code": 402, "message": "bad", "type": "insufficient_quota", "param": None}),
    (404, {"code": "model_not_found"}, {"code": 404, "message": "bad", "metadata": {"code": "model_not_found"},
                                        "type": "invalid_request_error", "param": None}),
    (429, None, {"code": 429, "message": "bad", "type": "rate_limit_error", "param": None}),
    (502, None, {"code": 502, "message": "bad", "type": "server_error", "param": None}),
])
def test_responses_error_body(status: int, metadata: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """OpenRouter's shape (the HTTP status as error.code, the cause in metadata), with OpenAI's type and param."""
    assert responses_error_body(GatewayError(status, "bad", metadata=metadata)) == {"error": expected}


# --------------------------------------------------------------------- the same streams OpenAI itself sent

# Real OpenAI traffic, when the shared reference folder sits next to the repository (read, never copied).


def recorded_events(path: str) -> list[dict[str, Any]]:
    file = RECORDED / path
    if not file.exists():
        pytest.skip("shared reference recordings are not available")
    body = yaml.safe_load(file.read_text())["interactions"][0]["response"]["body"]
    return [orjson.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]


def canonical_from_recording(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a translator would have produced for the content OpenAI streamed."""
    chunks = []
    calls: dict[str, int] = {}
    for e in events:
        if e["type"] == "response.reasoning_summary_text.delta":
            chunks.append(choice_chunk({"reasoning": e["delta"]}))
        elif e["type"] == "response.output_text.delta":
            chunks.append(choice_chunk({"content": e["delta"]}))
        elif e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call":
            calls[e["item"]["id"]] = len(calls)
            chunks.append(choice_chunk({"tool_calls": [{"index": calls[e["item"]["id"]], "id": e["item"]["call_id"],
                                                        "type": "function", "function": {
                                                            "name": e["item"]["name"], "arguments": ""}}]}))
        elif e["type"] == "response.function_call_arguments.delta":
            chunks.append(choice_chunk({"tool_calls": [{"index": calls[e["item_id"]],
                                                        "function": {"arguments": e["delta"]}}]}))
    return chunks


@pytest.mark.parametrize("path", [
    "TestOpenAIResponsesCommon/openai-gpt-4o-mini/simple_streaming.yaml",
    "TestOpenAIResponsesCommon/openai-gpt-4o/multi_tool_streaming.yaml",
    "TestOpenAIResponsesWithSummaryThinking/openai-gpt-5/thinking-streaming.yaml",
])
def test_event_order_matches_openai(path: str) -> None:
    recorded = recorded_events(path)
    _, ours = stream(canonical_from_recording(recorded), Usage(10, 10))
    assert [e["type"] for e in ours] == [e["type"] for e in recorded]
    theirs = recorded[-1]["response"]["output"]
    mine = ours[-1]["response"]["output"]
    assert [o["type"] for o in mine] == [o["type"] for o in theirs]
    for a, b in zip(mine, theirs, strict=True):
        if a["type"] == "message":
            assert a["content"][0]["text"] == b["content"][0]["text"]
        elif a["type"] == "function_call":
            assert (a["call_id"], a["name"], a["arguments"]) == (b["call_id"], b["name"], b["arguments"])
        else:
            assert a["summary"] == b["summary"]
    replay(ours, {})
