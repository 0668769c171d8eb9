"""The Anthropic Messages front format: request conversion, responses and streams, checked with the SDK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
import yaml
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from crossroads.catalog import ModelSpec
from crossroads.config import ConnectionConfig
from crossroads.errors import GatewayError
from crossroads.formats.messages import (
    MessagesRenderer,
    anthropic_error_body,
    anthropic_usage,
    messages_to_chat,
    stop_reason,
)
from crossroads.providers.anthropic.adapter import AnthropicAdapter, AnthropicTranslator
from crossroads.providers.base import RequestContext, Usage, choice_chunk
from tests.conftest import RECORDED

try:  # recent SDKs run on the httpx2 fork and refuse httpx clients
    import httpx2 as sdk_httpx
except ImportError:  # pragma: no cover - older SDKs
    import httpx as sdk_httpx  # type: ignore[no-redef]

FMT = "anthropic-claude-v1"
GEMINI_FMT = "google-gemini-v1"
EVENTS = TypeAdapter(RawMessageStreamEvent)
BASE = {"model": "anthropic/claude-sonnet-4", "max_tokens": 100}
HI = [{"role": "user", "content": "hi"}]
CC = {"type": "ephemeral"}
SHOT = "https://example.com/s.png"


def convert(**fields: Any) -> tuple[dict[str, Any], list[str]]:
    return messages_to_chat({**BASE, "messages": HI, **fields})


# -- request mapping -----------------------------------------------------------------------------------------

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("minimal", {}, {"messages": [{"role": "user", "content": "hi"}]}, []),
    ("system string", {"system": "be brief"},
     {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}, []),
    ("system blocks keep cache_control",
     {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": CC}]},
     {"messages": [{"role": "system", "content": [{"type": "text", "text": "a"},
                                                  {"type": "text", "text": "b", "cache_control": CC}]},
                   {"role": "user", "content": "hi"}]}, []),
    ("user text and images",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "look", "cache_control": CC},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0"}},
         {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "look", "cache_control": CC},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
         {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}]}, []),
    ("documents",
     {"messages": [{"role": "user", "content": [
         {"type": "document", "title": "report.pdf",
          "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}},
         {"type": "document", "source": {"type": "url", "url": "https://example.com/x.pdf"},
          "cache_control": CC},
         {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
         {"type": "document", "context": "ctx", "source": {"type": "content", "content": [
             {"type": "text", "text": "inner"}]}}]}]},
     {"messages": [{"role": "user", "content": [
         {"type": "file",
          "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0"}},
         {"type": "file", "file": {"filename": "document.pdf", "file_data": "https://example.com/x.pdf"},
          "cache_control": CC},
         {"type": "text", "text": "plain words"},
         {"type": "text", "text": "inner"}]}]},
     ["messages[0].content[3].context"]),
    ("tool loop",
     {"messages": [
         {"role": "user", "content": "add 2 and 3"},
         {"role": "assistant", "content": [
             {"type": "text", "text": "Adding."},
             {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 3}},
             {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}}]},
         {"role": "user", "content": [
             {"type": "text", "text": "and then?"},
             {"type": "tool_result", "tool_use_id": "toolu_1", "content": "5"},
             {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "cache_control": CC,
              "content": [{"type": "text", "text": "failed"},
                          {"type": "image", "source": {"type": "url", "url": SHOT}}]}]}]},
     {"messages": [
         {"role": "user", "content": "add 2 and 3"},
         {"role": "assistant", "content": [{"type": "text", "text": "Adding."}], "tool_calls": [
             {"id": "toolu_1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}},
             {"id": "toolu_2", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "toolu_1", "content": "5"},
         {"role": "tool", "tool_call_id": "toolu_2",
          "content": [{"type": "text", "text": "failed", "cache_control": CC}]},
         {"role": "user", "content": [{"type": "image_url", "image_url": {"url": SHOT}},
                                      {"type": "text", "text": "and then?"}]}]},
     ["messages[2].content[2].is_error"]),
    ("assistant thinking",
     {"messages": [
         {"role": "user", "content": "q"},
         {"role": "assistant", "content": [
             {"type": "thinking", "thinking": "first ", "signature": "sig1"},
             {"type": "redacted_thinking", "data": "opaque"},
             {"type": "thinking", "thinking": "second", "signature": "sig2"},
             {"type": "tool_use", "id": "toolu_9", "name": "look", "input": {"q": "x"}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}]},
     {"messages": [
         {"role": "user", "content": "q"},
         {"role": "assistant", "content": None, "reasoning": "first second",
          "tool_calls": [{"id": "toolu_9", "type": "function", "function": {"name": "look",
                                                                           "arguments": '{"q":"x"}'}}],
          "reasoning_details": [
              {"type": "reasoning.text", "text": "first ", "signature": "sig1", "format": FMT, "index": 0},
              {"type": "reasoning.encrypted", "data": "opaque", "format": FMT, "index": 1},
              {"type": "reasoning.text", "text": "second", "signature": "sig2", "format": FMT, "index": 2}]},
         {"role": "tool", "tool_call_id": "toolu_9", "content": ""}]}, []),
    ("tools and tool_choice any",
     {"tools": [{"name": "add", "description": "Add", "input_schema": {"type": "object"},
                 "cache_control": CC},
                {"type": "custom", "name": "sub", "input_schema": {"type": "object"}, "strict": True},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
      "tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
     {"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "add", "description": "Add",
                                                  "parameters": {"type": "object"}}, "cache_control": CC},
                {"type": "function",
                 "function": {"name": "sub", "parameters": {"type": "object"}, "strict": True}}],
      "tool_choice": "required", "parallel_tool_calls": False},
     ["tools[2] (web_search_20250305)"]),
    ("tool_choice tool",
     {"tools": [{"name": "add", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "add"}},
     {"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "add", "parameters": {}}}],
      "tool_choice": {"type": "function", "function": {"name": "add"}}}, []),
    ("tool_choice auto and none",
     {"tools": [{"name": "add", "input_schema": {}}], "tool_choice": {"type": "none"}},
     {"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "add", "parameters": {}}}],
      "tool_choice": "none"}, []),
    ("tool_choice without usable tools",
     {"tools": [{"type": "bash_20250124", "name": "bash"}], "tool_choice": {"type": "auto"}},
     {"messages": [{"role": "user", "content": "hi"}]}, ["tools[0] (bash_20250124)", "tool_choice"]),
    ("sampling and metadata",
     {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop_sequences": ["END"], "stream": True,
      "metadata": {"user_id": "user-7"}},
     {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "top_p": 0.9, "top_k": 40,
      "stop": ["END"], "stream": True, "user": "user-7"}, []),
    ("thinking enabled", {"thinking": {"type": "enabled", "budget_tokens": 2048}},
     {"messages": [{"role": "user", "content": "hi"}], "reasoning": {"max_tokens": 2048}}, []),
    ("thinking disabled", {"thinking": {"type": "disabled"}},
     {"messages": [{"role": "user", "content": "hi"}], "reasoning": {"enabled": False}}, []),
    ("thinking adaptive with effort", {"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}},
     {"messages": [{"role": "user", "content": "hi"}],
      "reasoning": {"enabled": True, "effort": "xhigh"}}, []),
    ("output_config format",
     {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     {"messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema",
                          "json_schema": {"name": "response", "schema": {"type": "object"}}}},
     []),
    ("output_format beta spelling", {"output_format": {"type": "json_schema", "schema": {"type": "array"}}},
     {"messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema",
                          "json_schema": {"name": "response", "schema": {"type": "array"}}}},
     []),
    ("unexpressible top-level fields",
     {"service_tier": "auto", "container": "c1", "mcp_servers": [{"url": "x"}], "speed": "fast",
      "metadata": {"user_id": "u", "trace": "t"}},
     {"messages": [{"role": "user", "content": "hi"}], "user": "u"},
     ["metadata.trace", "service_tier", "container", "mcp_servers", "speed"]),
    ("top-level cache_control marks the last part", {"cache_control": CC},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": CC}]}]}, []),
    ("server blocks in history are dropped",
     {"messages": [{"role": "user", "content": "find"},
                   {"role": "assistant", "content": [
                       {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
                       {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                       {"type": "text", "text": "found"}]},
                   {"role": "assistant", "content": []}]},
     {"messages": [{"role": "user", "content": "find"},
                   {"role": "assistant", "content": [{"type": "text", "text": "found"}]}]},
     ["messages[1].content[0] (server_tool_use)", "messages[1].content[1] (web_search_tool_result)"]),
    ("search result becomes text",
     {"messages": [{"role": "user", "content": [
         {"type": "search_result", "source": "https://s", "title": "T",
          "content": [{"type": "text", "text": "body"}]}]}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "T\nhttps://s\n\nbody"}]}]}, []),
]


@pytest.mark.parametrize(("fields", "expected", "dropped"), [c[1:] for c in REQUEST_CASES],
                         ids=[c[0] for c in REQUEST_CASES])
def test_request_mapping(fields: dict[str, Any], expected: dict[str, Any], dropped: list[str]) -> None:
    out, got_dropped = convert(**fields)
    assert out == {"model": BASE["model"], "max_tokens": 100, **expected}
    assert got_dropped == dropped


INVALID_CASES: list[tuple[dict[str, Any], str]] = [
    ({"model": "", "max_tokens": 5, "messages": HI}, "'model'"),
    ({"max_tokens": 5, "messages": HI}, "'model'"),
    ({"model": "m", "messages": HI}, "'max_tokens'"),
    ({"model": "m", "max_tokens": 0, "messages": HI}, "'max_tokens'"),
    ({"model": "m", "max_tokens": True, "messages": HI}, "'max_tokens'"),
    ({"model": "m", "max_tokens": 5.5, "messages": HI}, "'max_tokens'"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "'messages'"),
    ({"model": "m", "max_tokens": 5, "messages": "hi"}, "'messages'"),
    ({**BASE, "messages": [{"role": "system", "content": "x"}]}, "'messages[0].role'"),
    ({**BASE, "messages": ["hi"]}, "'messages[0]'"),
    ({**BASE, "messages": [{"role": "user", "content": 3}]}, "'messages[0].content'"),
    ({**BASE, "messages": [{"role": "user", "content": []}]}, "'messages[0].content'"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "mystery"}]}]},
     "'messages[0].content[0].type'"),
    ({**BASE, "messages": [{"role": "user", "content": [{"text": "no type"}]}]},
     "'messages[0].content[0].type'"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "'messages[0].content[0].text'"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file",
                                                                                      "file_id": "f"}}]}]},
     "'messages[0].content[0].source.type'"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n"}]}]},
     "'messages[0].content[0].type'"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
     "'messages[0].content[0].tool_use_id'"),
    ({**BASE, "messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]}]},
     "'messages[0].content[0].signature'"),
    ({**BASE, "messages": HI, "system": [{"type": "image"}]}, "'system[0].type'"),
    ({**BASE, "messages": HI, "temperature": "hot"}, "'temperature'"),
    ({**BASE, "messages": HI, "stop_sequences": "END"}, "'stop_sequences'"),
    ({**BASE, "messages": HI, "tools": [{"name": "t"}]}, "'tools[0].input_schema'"),
    ({**BASE, "messages": HI, "tools": [{"name": "t", "input_schema": {}}], "tool_choice": {"type": "some"}},
     "'tool_choice.type'"),
    ({**BASE, "messages": HI, "thinking": {"type": "enabled"}}, "'thinking.budget_tokens'"),
    ({**BASE, "messages": HI, "thinking": {"type": "sometimes"}}, "'thinking.type'"),
    ({**BASE, "messages": HI, "output_config": {"format": {"type": "json_object"}}},
     "'output_config.format'"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_CASES)
def test_invalid_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(GatewayError) as info:
        messages_to_chat(body)
    assert info.value.status == 400
    assert field in info.value.message


# -- small mappings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("finish", "native", "expected"), [
    ("stop", "stop", "end_turn"),
    ("stop", None, "end_turn"),
    ("stop", "STOP", "end_turn"),
    ("stop", "stop_sequence", "stop_sequence"),
    ("stop", "end_turn", "end_turn"),
    ("length", "length", "max_tokens"),
    ("length", "MAX_TOKENS", "max_tokens"),
    ("length", "model_context_window_exceeded", "model_context_window_exceeded"),
    ("tool_calls", "tool_calls", "tool_use"),
    ("content_filter", "content_filter", "refusal"),
    ("content_filter", "SAFETY", "refusal"),
    ("stop", "pause_turn", "pause_turn"),
    ("error", "error", None),
    (None, None, None),
])
def test_stop_reason(finish: str | None, native: str | None, expected: str | None) -> None:
    assert stop_reason(finish, native) == expected


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (408, "timeout_error"), (413, "request_too_large"),
    (422, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
    (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error"),
])
def test_error_body(status: int, kind: str) -> None:
    expected = {"type": "error", "error": {"type": kind, "message": "boom"}}
    assert anthropic_error_body(status, "boom") == expected


def test_usage_splits_cache_out_of_input() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=50, reasoning_tokens=10, cached_tokens=600,
                  cache_write_tokens=300, seen=True)
    assert anthropic_usage(usage) == {"input_tokens": 100, "output_tokens": 50,
                                      "cache_read_input_tokens": 600, "cache_creation_input_tokens": 300}


# -- whole responses -----------------------------------------------------------------------------------------

USAGE = Usage(prompt_tokens=20, completion_tokens=7, seen=True)
USAGE_OUT = {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0}


def completion(message: dict[str, Any], finish: str | None = "stop",
               native: str | None = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish,
                         "native_finish_reason": native}]}


RESPONSE_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], str | None]] = [
    ("text", completion({"content": "Hello"}), [{"type": "text", "text": "Hello"}], "end_turn"),
    ("empty", completion({"content": None}, "length", "length"), [], "max_tokens"),
    ("thinking with signature",
     completion({"content": "Answer", "reasoning": "Think.", "reasoning_details": [
         {"type": "reasoning.text", "text": "Think.", "signature": "sig", "format": FMT, "index": 0},
         {"type": "reasoning.encrypted", "data": "blob", "format": FMT, "index": 1}]}, "stop", "end_turn"),
     [{"type": "thinking", "thinking": "Think.", "signature": "sig"},
      {"type": "redacted_thinking", "data": "blob"}, {"type": "text", "text": "Answer"}], "end_turn"),
    ("reasoning text only", completion({"content": "A", "reasoning": "hmm"}),
     [{"type": "thinking", "thinking": "hmm", "signature": ""}, {"type": "text", "text": "A"}], "end_turn"),
    ("accumulated fragments merge",
     completion({"content": "A", "reasoning": "ab", "reasoning_details": [
         {"type": "reasoning.text", "text": "a", "format": FMT, "index": 0},
         {"type": "reasoning.text", "text": "b", "format": FMT, "index": 0},
         {"type": "reasoning.text", "signature": "s", "format": FMT, "index": 0}]}),
     [{"type": "thinking", "thinking": "ab", "signature": "s"}, {"type": "text", "text": "A"}], "end_turn"),
    ("tool calls, one with broken JSON",
     completion({"content": "Calling", "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}},
         {"id": "call_2", "type": "function", "function": {"name": "oops", "arguments": '{"a": '}},
         {"type": "function", "function": {"name": "bare", "arguments": ""}}]}, "tool_calls", "tool_calls"),
     [{"type": "text", "text": "Calling"},
      {"type": "tool_use", "id": "call_1", "name": "add", "input": {"a": 1}},
      {"type": "tool_use", "id": "call_2", "name": "oops", "input": {}},
      {"type": "tool_use", "id": "toolu_test_2", "name": "bare", "input": {}}], "tool_use"),
    ("tool calls with a stop finish", completion({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "stop", "STOP"),
     [{"type": "tool_use", "id": "c", "name": "f", "input": {}}], "tool_use"),
    ("refusal", completion({"content": None, "refusal": "No."}, "content_filter", "refusal"),
     [{"type": "text", "text": "No."}], "refusal"),
]


@pytest.mark.parametrize(("result", "content", "reason"), [c[1:] for c in RESPONSE_CASES],
                         ids=[c[0] for c in RESPONSE_CASES])
def test_response(result: dict[str, Any], content: list[dict[str, Any]], reason: str | None) -> None:
    out = MessagesRenderer("msg_test", "anthropic/claude-sonnet-4").response(result, USAGE)
    assert out == {"id": "msg_test", "type": "message", "role": "assistant",
                   "model": "anthropic/claude-sonnet-4", "content": content, "stop_reason": reason,
                   "stop_sequence": None, "usage": USAGE_OUT}
    Message.model_validate(out)


def test_foreign_signatures_round_trip() -> None:
    """Gemini's thought signatures go out wrapped and come back with their own format and id."""
    details = [{"type": "reasoning.text", "text": "plan", "format": GEMINI_FMT, "index": 0},
               {"type": "reasoning.encrypted", "data": "gem-sig", "id": "call_7", "format": GEMINI_FMT,
                "index": 1}]
    call = {"id": "call_7", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    result = completion({"content": None, "reasoning": "plan", "reasoning_details": details,
                         "tool_calls": [call]}, "tool_calls", "STOP")
    message = Message.model_validate(MessagesRenderer("msg_x", "m").response(result, USAGE))
    assert message.content[1].type == "redacted_thinking" and message.content[1].data != "gem-sig"
    assistant = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]}
    echoed = {**BASE, "messages": [*HI, assistant, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_7", "content": "ok"}]}]}
    chat, _ = messages_to_chat(echoed)
    assert chat["messages"][1]["reasoning_details"] == [
        {"type": "reasoning.text", "text": "plan", "signature": "", "format": FMT, "index": 0},
        {"type": "reasoning.encrypted", "data": "gem-sig", "format": GEMINI_FMT, "index": 1, "id": "call_7"}]


# -- streams -------------------------------------------------------------------------------------------------


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split rendered SSE into (event, data) pairs, checking the framing and each event with the SDK types."""
    assert raw.endswith(b"\n\n")
    out = []
    for block in raw[:-2].split(b"\n\n"):
        event_line, data_line = block.split(b"\n")
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        event = event_line[7:].decode()
        data = orjson.loads(data_line[6:])
        assert data["type"] == event
        if event not in ("error", "ping"):  # the SDK skips both before parsing events
            EVENTS.validate_python(data)
        out.append((event, data))
    return out


def shape(raw: bytes) -> list[str]:
    """A compact view of an event sequence: event names, block types on starts, delta types on deltas."""
    out = []
    for event, data in frames(raw):
        if event == "ping":
            continue
        if event == "content_block_start":
            out.append(f"start:{data['index']}:{data['content_block']['type']}")
        elif event == "content_block_delta":
            out.append(f"delta:{data['index']}:{data['delta']['type']}")
        elif event == "content_block_stop":
            out.append(f"stop:{data['index']}")
        else:
            out.append(event)
    return out


def sdk_message(raw: bytes) -> anthropic.types.Message:
    """What the official SDK's MessageStream accumulates from the rendered stream."""
    def handler(request: sdk_httpx.Request) -> sdk_httpx.Response:
        return sdk_httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)

    client = anthropic.Anthropic(api_key="test", base_url="http://gateway.test", max_retries=0,
                                 http_client=sdk_httpx.Client(transport=sdk_httpx.MockTransport(handler)))
    with client.messages.stream(model="m", max_tokens=10, messages=HI) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


def render(chunks: list[dict[str, Any]], finish: str | None, native: str | None,
           usage: Usage = USAGE) -> bytes:
    renderer = MessagesRenderer("msg_stream", "served/model", usage=Usage(prompt_tokens=20, seen=True))
    return b"".join(renderer.chunk(c) for c in chunks) + renderer.finish(usage, finish, native)


def test_stream_plain_text() -> None:
    raw = render([choice_chunk({"role": "assistant", "content": ""}), choice_chunk({"content": "Hel"}),
                  choice_chunk({}), choice_chunk({"content": "lo"}), choice_chunk({}, "stop", "stop")],
                 None, None)
    assert shape(raw) == ["message_start", "start:0:text", "delta:0:text_delta", "delta:0:text_delta",
                          "stop:0", "message_delta", "message_stop"]
    events = frames(raw)
    assert events[0][1]["message"]["usage"] == {**USAGE_OUT, "output_tokens": 0}
    assert events[-2][1] == {"type": "message_delta", "usage": USAGE_OUT,
                             "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
    message = sdk_message(raw)
    assert message.id == "msg_stream" and message.model == "served/model"
    assert [b.model_dump() for b in message.content] == [{"type": "text", "text": "Hello", "citations": None}]
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 7


def test_stream_thinking_then_text_with_signature() -> None:
    chunks = [
        choice_chunk({"role": "assistant", "reasoning": "Let me ", "reasoning_details": [
            {"type": "reasoning.text", "text": "Let me ", "format": FMT, "index": 0}]}),
        choice_chunk({"reasoning": "think.", "reasoning_details": [
            {"type": "reasoning.text", "text": "think.", "format": FMT, "index": 0}]}),
        choice_chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "SIG", "format": FMT,
                                             "index": 0}]}),
        choice_chunk({"content": "Done."}),
        choice_chunk({}, "stop", "end_turn"),
    ]
    raw = render(chunks, "stop", "end_turn")
    assert shape(raw) == ["message_start", "start:0:thinking", "delta:0:thinking_delta",
                          "delta:0:thinking_delta", "delta:0:signature_delta", "stop:0", "start:1:text",
                          "delta:1:text_delta", "stop:1", "message_delta", "message_stop"]
    message = sdk_message(raw)
    assert [b.model_dump(exclude_none=True) for b in message.content] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "SIG"},
        {"type": "text", "text": "Done."}]


def test_stream_reasoning_without_details_then_signature_only() -> None:
    """An upstream sending plain `reasoning` text, then a details entry holding just the signature."""
    chunks = [choice_chunk({"reasoning": "abc"}),
              choice_chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "S", "format": FMT,
                                                   "index": 0}]}),
              choice_chunk({"reasoning_details": [{"type": "reasoning.encrypted", "data": "D", "format": FMT,
                                                   "index": 1}]}),
              choice_chunk({"content": "x"})]
    raw = render(chunks, "stop", "stop")
    assert shape(raw) == ["message_start", "start:0:thinking", "delta:0:thinking_delta",
                          "delta:0:signature_delta", "stop:0", "start:1:redacted_thinking", "stop:1",
                          "start:2:text", "delta:2:text_delta", "stop:2", "message_delta", "message_stop"]
    assert [b.model_dump(exclude_none=True) for b in sdk_message(raw).content] == [
        {"type": "thinking", "thinking": "abc", "signature": "S"}, {"type": "redacted_thinking", "data": "D"},
        {"type": "text", "text": "x"}]


def test_stream_one_tool_call_in_fragments() -> None:
    chunks = [
        choice_chunk({"role": "assistant", "content": "Checking."}),
        choice_chunk({"tool_calls": [{"index": 0, "id": "call_w", "type": "function",
                                      "function": {"name": "weather", "arguments": ""}}]}),
        choice_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loca'}}]}),
        choice_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'tion": "Flor'}}]}),
        choice_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ence"}'}}]}),
        choice_chunk({}, "tool_calls", "tool_calls"),
    ]
    raw = render(chunks, "tool_calls", "tool_calls")
    assert shape(raw) == ["message_start", "start:0:text", "delta:0:text_delta", "stop:0", "start:1:tool_use",
                          "delta:1:input_json_delta", "delta:1:input_json_delta", "delta:1:input_json_delta",
                          "stop:1", "message_delta", "message_stop"]
    assert frames(raw)[4][1]["content_block"] == {"type": "tool_use", "id": "call_w", "name": "weather",
                                                  "input": {}}
    message = sdk_message(raw)
    assert message.stop_reason == "tool_use"
    tool = message.content[1]
    assert (tool.type, tool.id, tool.name) == ("tool_use", "call_w", "weather")
    assert tool.input == {"location": "Florence"}


def test_stream_two_parallel_tool_calls() -> None:
    chunks = [
        choice_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                      "function": {"name": "add", "arguments": '{"a":'}}]}),
        choice_chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 2}"}}]}),
        choice_chunk({"tool_calls": [{"index": 1, "id": "call_m", "type": "function",
                                      "function": {"name": "mul", "arguments": ""}}]}),
        choice_chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"b": 3}'}}]}),
        # A late fragment for the first call still lands on its block.
        choice_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ""}}]}),
    ]
    raw = render(chunks, None, None)
    assert shape(raw) == ["message_start", "start:0:tool_use", "delta:0:input_json_delta",
                          "delta:0:input_json_delta", "stop:0", "start:1:tool_use",
                          "delta:1:input_json_delta", "stop:1", "message_delta", "message_stop"]
    message = sdk_message(raw)
    assert [(b.id, b.name, b.input) for b in message.content] == [("call_a", "add", {"a": 2}),
                                                                  ("call_m", "mul", {"b": 3})]
    assert message.stop_reason == "tool_use"  # no finish reason seen, but tools were called


def test_stream_stop_by_length_uses_finish_seen_in_chunks() -> None:
    renderer = MessagesRenderer("msg_len", "m")
    raw = renderer.chunk(choice_chunk({"content": "trunc"})) + renderer.chunk(
        choice_chunk({}, "length", "MAX_TOKENS")) + renderer.finish(USAGE, None, None)
    assert shape(raw)[-2:] == ["message_delta", "message_stop"]
    assert frames(raw)[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert sdk_message(raw).stop_reason == "max_tokens"
    assert renderer.finish(USAGE, None, None) == b""


def test_stream_finish_without_chunks_still_starts() -> None:
    raw = MessagesRenderer("msg_empty", "m").finish(USAGE, "stop", "stop")
    assert shape(raw) == ["message_start", "message_delta", "message_stop"]
    assert sdk_message(raw).content == []


def test_stream_error_event() -> None:
    renderer = MessagesRenderer("msg_err", "m")
    raw = renderer.chunk(choice_chunk({"content": "part"})) + renderer.error_event(429, "slow down")
    assert frames(raw)[-1] == ("error", {"type": "error", "error": {"type": "rate_limit_error",
                                                                    "message": "slow down"}})
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk_message(raw)
    assert info.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


def test_ping_is_a_valid_event() -> None:
    assert frames(MessagesRenderer("msg_p", "m").ping()) == [("ping", {"type": "ping"})]


# -- recorded Anthropic traffic: through the Anthropic translator and back ---------------------------------

needs_recordings = pytest.mark.skipif(not RECORDED.is_dir(), reason="reference recordings not available")


def recordings(pattern: str) -> list[Path]:
    return sorted(RECORDED.glob(pattern)) if RECORDED.is_dir() else []


def interactions(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["interactions"]


def translator(stream: bool) -> AnthropicTranslator:
    conn = ConnectionConfig(name="anthropic", type="anthropic", base_url="https://api.anthropic.com/v1",
                            api_key="sk-ant-test")
    model = ModelSpec(id="anthropic/claude-sonnet-4", upstream="claude-sonnet-4-20250514",
                      max_completion_tokens=64000, reasoning=True)
    return AnthropicAdapter(conn).translator(RequestContext(model=model, connection=conn, stream=stream))


def sse_events(body: str) -> list[tuple[str, bytes]]:
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.strip().split("\n"))
        out.append((lines["event"], lines["data"].encode()))
    return out


def comparable(message: anthropic.types.Message) -> list[dict[str, Any]]:
    # `caller` is Anthropic-only bookkeeping on tool_use blocks; the canonical shape does not carry it.
    return [b.model_dump(exclude_none=True, exclude={"caller"}) for b in message.content]


@needs_recordings
@pytest.mark.parametrize("path", recordings("TestAnthropic*/*/*streaming.yaml"),
                         ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_recorded_streams_render_the_same_sequence(path: Path) -> None:
    for interaction in interactions(path):
        upstream = interaction["response"]["body"]
        events = sse_events(upstream)
        t = translator(stream=True)
        renderer = MessagesRenderer("msg_replay", "claude-sonnet-4-20250514", usage=t.usage)
        out = []
        for event, data in events:
            out.extend(renderer.chunk(chunk) for chunk in t.stream_event(event, data))
        out.append(renderer.finish(t.usage, None, None))
        ours = b"".join(out)
        theirs = upstream.encode()
        # Anthropic starts each block with an empty input_json_delta / thinking_delta that carries nothing.
        pairs = zip(shape_of_recorded(theirs), recorded_payloads(theirs), strict=True)
        expected = [s for s, (_, data) in pairs if not _empty_delta(data)]
        assert shape(ours) == expected
        assert comparable(sdk_message(ours)) == comparable(sdk_message(theirs))
        assert sdk_message(ours).stop_reason == sdk_message(theirs).stop_reason
        ours_usage, theirs_usage = sdk_message(ours).usage, sdk_message(theirs).usage
        assert anthropic_usage_of(ours_usage) == anthropic_usage_of(theirs_usage)


def anthropic_usage_of(usage: anthropic.types.Usage) -> tuple[int | None, ...]:
    return (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens)


def recorded_payloads(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(event, orjson.loads(data)) for event, data in sse_events(raw.decode()) if event != "ping"]


def shape_of_recorded(raw: bytes) -> list[str]:
    # The recordings pad their JSON with spaces, so they go through the same parser as ours after re-encoding.
    rebuilt = b"".join(b"event: " + e.encode() + b"\ndata: " + orjson.dumps(d) + b"\n\n"
                       for e, d in recorded_payloads(raw))
    return shape(rebuilt)


def _empty_delta(data: dict[str, Any]) -> bool:
    delta = data.get("delta") or {}
    return data["type"] == "content_block_delta" \
        and delta.get("type") in ("input_json_delta", "thinking_delta") \
        and not (delta.get("partial_json") or delta.get("thinking"))


@needs_recordings
@pytest.mark.parametrize("path", [p for p in recordings("TestAnthropic*/*/*.yaml")
                                  if "streaming" not in p.stem],
                         ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_recorded_responses_render_the_same_message(path: Path) -> None:
    for interaction in interactions(path):
        upstream = interaction["response"]["body"]
        t = translator(stream=False)
        result = t.response(upstream.encode())
        ours = Message.model_validate(MessagesRenderer("msg_replay", "m").response(result, t.usage))
        theirs = Message.model_validate_json(upstream)
        assert comparable(ours) == comparable(theirs)
        assert ours.stop_reason == theirs.stop_reason
        assert ours.usage.input_tokens == theirs.usage.input_tokens
        assert ours.usage.output_tokens == theirs.usage.output_tokens


def _normalised(request: dict[str, Any]) -> dict[str, Any]:
    """What the Anthropic translator is documented to produce for an equivalent request: system text without
    cache markers as one string, text-only tool results as a string, no `disable_parallel_tool_use: false`,
    message-level cache markers on the last text block."""
    out = dict(request)
    system = out.get("system")
    if isinstance(system, list) and not any("cache_control" in b for b in system):
        out["system"] = "\n\n".join(b["text"] for b in system)
    choice = out.get("tool_choice")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is False:
        out["tool_choice"] = {k: v for k, v in choice.items() if k != "disable_parallel_tool_use"}
    for message in out["messages"]:
        blocks = message["content"] if isinstance(message["content"], list) else []
        texts = [b for b in blocks if b["type"] == "text"]
        if message["role"] == "assistant" and blocks and blocks[-1]["type"] == "tool_use" \
                and "cache_control" in blocks[-1] and texts:
            # A tool call's marker travels as the message's, which the translator puts on the last text.
            texts[-1]["cache_control"] = blocks[-1].pop("cache_control")
        for block in blocks:
            inner = block.get("content")
            if block["type"] == "tool_result" and isinstance(inner, list) \
                    and all(b["type"] == "text" and "cache_control" not in b for b in inner):
                block["content"] = "".join(b["text"] for b in inner)
    return out


@needs_recordings
@pytest.mark.parametrize("path", recordings("TestAnthropic*/*/*.yaml"),
                         ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_recorded_requests_survive_the_round_trip(path: Path) -> None:
    """A real Messages request -> canonical -> the Anthropic translator gives the same request back."""
    for interaction in interactions(path):
        original = orjson.loads(interaction["request"]["body"])
        chat, dropped = messages_to_chat(original)
        assert dropped == []
        rebuilt = translator(stream=bool(original.get("stream"))).build(chat)
        assert rebuilt == _normalised(original)
