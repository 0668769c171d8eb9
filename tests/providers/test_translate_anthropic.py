"""The Anthropic translator, driven directly: request bodies, responses, streams, recorded traffic and the fake server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
import yaml

from crossroads.catalog import ModelSpec
from crossroads.config import ConnectionConfig
from crossroads.errors import GatewayError
from crossroads.providers.anthropic.adapter import (
    JSON_OBJECT_INSTRUCTION,
    JSON_SCHEMA_INSTRUCTION,
    AnthropicAdapter,
    AnthropicTranslator,
    sanitise_tool_id,
)
from crossroads.providers.base import RequestContext, UpstreamStreamError
from tests.conftest import RECORDED
from tests.fakes.anthropic_fake import FAKE_SIGNATURE, FakeAnthropic
from tests.fakes.base import Fault, Reply, ToolCall

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake-png-body"
PDF = b"%PDF-1.4\nfake pdf\n%%EOF"
B64_PNG = base64.b64encode(PNG).decode()
B64_PDF = base64.b64encode(PDF).decode()
FMT = "anthropic-claude-v1"


def make_translator(*, stream: bool = False, max_completion_tokens: int | None = 64000,
                    api_key: str | None = "sk-ant-test", headers: dict[str, str] | None = None) -> AnthropicTranslator:
    conn = ConnectionConfig(name="anthropic", type="anthropic", base_url="https://api.anthropic.com/v1",
                            api_key=api_key, headers=headers or {})
    model = ModelSpec(id="anthropic/claude-sonnet-4", upstream="claude-sonnet-4-20250514",
                      max_completion_tokens=max_completion_tokens, reasoning=True)
    return AnthropicAdapter(conn).translator(RequestContext(model=model, connection=conn, stream=stream))


async def build(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    translator = make_translator(**kwargs)
    return orjson.loads((await translator.request(body)).body)


def parse_sse(raw: bytes) -> list[tuple[str | None, bytes]]:
    """A tiny SSE parser: (event, data) per event, comments ignored."""
    out: list[tuple[str | None, bytes]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        event: str | None = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        if data:
            out.append((event, b"\n".join(data)))
    return out


def collect(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold canonical stream chunks into what a client would assemble."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "signatures": [], "encrypted": [], "tools": {},
                           "finish": None, "native": None, "roles": 0}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        delta = choice["delta"]
        out["roles"] += "role" in delta
        out["content"] += delta.get("content") or ""
        out["reasoning"] += delta.get("reasoning") or ""
        for detail in delta.get("reasoning_details") or ():
            assert detail["format"] == FMT
            if detail.get("signature"):
                out["signatures"].append(detail["signature"])
            if detail["type"] == "reasoning.encrypted":
                out["encrypted"].append(detail["data"])
        for call in delta.get("tool_calls") or ():
            entry = out["tools"].setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in call:
                assert entry["id"] is None, "a tool call's header is sent once"
                entry["id"], entry["name"] = call["id"], call["function"]["name"]
                assert call["type"] == "function"
            entry["arguments"] += call["function"].get("arguments") or ""
        if choice["finish_reason"] is not None:
            assert out["finish"] is None, "only one chunk ends the choice"
            out["finish"], out["native"] = choice["finish_reason"], choice["native_finish_reason"]
    return out


def feed(translator: AnthropicTranslator, events: list[tuple[str | None, bytes]]) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for event, data in events:
        chunks += translator.stream_event(event, data)
    return chunks + translator.finish()


def ev(payload: dict[str, Any]) -> tuple[str, bytes]:
    return payload["type"], orjson.dumps(payload)


# -- adapter -----------------------------------------------------------------------------------------------------


async def test_url_and_headers() -> None:
    translator = make_translator(headers={"anthropic-beta": "files-api-2025-04-14"})
    req = await translator.request({"messages": [{"role": "user", "content": "hi"}]})
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers == {"content-type": "application/json", "anthropic-version": "2023-06-01",
                           "anthropic-beta": "files-api-2025-04-14", "x-api-key": "sk-ant-test"}
    keyless = make_translator(api_key=None)
    assert "x-api-key" not in (await keyless.request({"messages": [{"role": "user", "content": "hi"}]})).headers


def test_error_message() -> None:
    adapter = AnthropicAdapter(ConnectionConfig(name="a", type="anthropic", base_url="https://x/v1"))
    raw = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}'
    assert adapter.error_message(529, raw) == "Overloaded"
    assert adapter.error_message(502, b"") == "upstream answered HTTP 502"


# -- requests ----------------------------------------------------------------------------------------------------


async def test_full_conversation_request() -> None:
    body = {
        "model": "anthropic/claude-sonnet-4",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "name": "alice", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64_PNG}", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": B64_PDF}},
                {"type": "file", "file": {"filename": "b.pdf", "file_data": f"data:application/pdf;base64,{B64_PDF}"}},
            ]},
            {"role": "user", "content": "And the weather?"},
            {"role": "assistant", "content": "Let me check.", "reasoning": "Look it up.",
             "reasoning_details": [
                 {"type": "reasoning.text", "text": "Look it up.", "signature": "sig-1", "format": FMT, "index": 0},
                 {"type": "reasoning.encrypted", "data": "opaque==", "format": FMT, "index": 1}],
             "tool_calls": [
                 {"id": "call:1/a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
                 {"id": "toolu_2", "type": "function", "function": {"name": "clock", "arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "call:1/a", "content": "20 C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "Thanks, summarise."},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "Weather for a city", "strict": True,
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                             "required": ["city"]}}},
            {"type": "function", "function": {"name": "clock"}},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "max_tokens": 2000,
        "temperature": 0.2,
        "top_k": 5,
        "stop": "END",
        "seed": 7,
        "frequency_penalty": 0.5,
        "user": "user-42",
        "response_format": {"type": "json_object"},
        "reasoning": {"effort": "high"},
        "stream": True,
    }
    sanitised = sanitise_tool_id("call:1/a")
    expected = {
        "model": "claude-sonnet-4-20250514",
        "system": "You are terse.\n\nUse metric units.\n\n" + JSON_OBJECT_INSTRUCTION,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "alice: What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64_PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": B64_PDF}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": B64_PDF}},
                {"type": "text", "text": "And the weather?"},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Look it up.", "signature": "sig-1"},
                {"type": "redacted_thinking", "data": "opaque=="},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": sanitised, "name": "weather", "input": {"city": "Rome"}},
                {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": sanitised, "content": "20 C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon"},
                {"type": "text", "text": "Thanks, summarise."},
            ]},
        ],
        "tools": [
            {"name": "weather", "description": "Weather for a city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 1600},  # 0.8 of max_tokens
        "max_tokens": 2000,
        # temperature and top_k are gone: Anthropic rejects them with thinking.
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    assert await build(body, stream=True) == expected


async def test_prefill_cache_control_and_schema_request() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {
        "messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "Long shared context.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be precise."}]},
            {"role": "user", "name": "bob", "content": "Name a colour."},
            {"role": "assistant", "name": "helper", "content": "Hmm"},
            {"role": "user", "content": [{"type": "text", "text": "As JSON.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": "{\"answer\": \"  \n"},
        ],
        "temperature": 1.6,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["\n", "", "###"],
        "response_format": {"type": "json_schema", "json_schema": {"name": "colour", "schema": schema, "strict": True}},
        "reasoning": {"effort": "low"},
    }
    expected = {
        "model": "claude-sonnet-4-20250514",
        "system": [
            {"type": "text", "text": "Long shared context.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be precise."},
            {"type": "text", "text": JSON_SCHEMA_INSTRUCTION + orjson.dumps(schema).decode()},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "bob: Name a colour."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "helper: Hmm"}]},
            {"role": "user", "content": [{"type": "text", "text": "As JSON.", "cache_control": {"type": "ephemeral"}}]},
            # The prefill goes last with its trailing whitespace stripped.
            {"role": "assistant", "content": [{"type": "text", "text": "{\"answer\": \""}]},
        ],
        # No thinking: Anthropic refuses it with a prefilled answer. Default max_tokens: nothing else says otherwise.
        "max_tokens": 4096,
        "temperature": 1.0,  # clamped to Anthropic's 0..1; top_p dropped because temperature is set
        "top_k": 40,
        "stop_sequences": ["###"],
    }
    assert await build(body, max_completion_tokens=None) == expected


@pytest.mark.parametrize(("extra", "model_max", "expected"), [
    ({"max_tokens": 100, "max_completion_tokens": 200}, 64000, 100),
    ({"max_completion_tokens": 200}, 64000, 200),
    ({}, 32000, 32000),
    ({}, None, 4096),
])
async def test_max_tokens_precedence(extra: dict[str, Any], model_max: int | None, expected: int) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    assert (await build(body, max_completion_tokens=model_max))["max_tokens"] == expected


@pytest.mark.parametrize(("reasoning", "max_tokens", "thinking", "final_max"), [
    ({"effort": "medium"}, 10000, 5000, 10000),
    ({"effort": "low"}, 10000, 2000, 10000),
    ({"effort": "minimal"}, 20000, 2000, 20000),
    ({"effort": "minimal"}, 1000, 1024, 2024),  # floor of 1024, max_tokens raised above it
    ({"max_tokens": 8000}, 4000, 8000, 12000),  # explicit budget beyond max_tokens
    ({"max_tokens": 3000, "effort": "high"}, 4000, 3000, 4000),  # explicit budget wins over effort
    ({"enabled": True}, 4000, 2000, 4000),  # enabled without effort: medium
    ({"enabled": False, "effort": "high"}, 4000, None, 4000),
    ({"effort": "none"}, 4000, None, 4000),
    ({}, 4000, None, 4000),
    ({"exclude": True}, 4000, None, 4000),
    (None, 4000, None, 4000),
])
async def test_thinking_budget(reasoning: Any, max_tokens: int, thinking: int | None, final_max: int) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
                            "temperature": 0.5, "top_p": 0.9, "top_k": 3}
    if reasoning is not None:
        body["reasoning"] = reasoning
    out = await build(body)
    assert out["max_tokens"] == final_max
    if thinking is None:
        assert "thinking" not in out
        assert out["temperature"] == 0.5 and out["top_k"] == 3
    else:
        assert out["thinking"] == {"type": "enabled", "budget_tokens": thinking}
        assert not {"temperature", "top_p", "top_k"} & out.keys()


async def test_raised_max_tokens_stays_within_the_model_limit() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000, "reasoning": {"max_tokens": 6000}}
    out = await build(body, max_completion_tokens=8000)
    assert out["thinking"]["budget_tokens"] == 6000 and out["max_tokens"] == 8000


async def test_top_p_alone_is_kept() -> None:
    out = await build({"messages": [{"role": "user", "content": "hi"}], "top_p": 0.7})
    assert out["top_p"] == 0.7 and "temperature" not in out


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", None, {"type": "none"}),
    ("none", False, {"type": "none"}),
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "weather"}}, None, {"type": "tool", "name": "weather"}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, True, None),
    (None, None, None),
])
async def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}],
                            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = await build(body)
    assert out.get("tool_choice") == expected
    assert out["tools"] == [{"name": "weather", "input_schema": {"type": "object", "properties": {}}}]


async def test_tool_choice_without_tools_is_dropped() -> None:
    out = await build({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required", "tools": []})
    assert "tool_choice" not in out and "tools" not in out


async def test_forced_tool_use_drops_thinking() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "reasoning": {"effort": "high"}, "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "weather"}}]}
    out = await build(body)
    assert "thinking" not in out and out["tool_choice"] == {"type": "any"}


async def test_tool_loop_without_echoed_thinking_drops_thinking() -> None:
    loop = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]
    assert "thinking" not in await build({"messages": loop, "reasoning": {"effort": "low"}})
    # A finished loop followed by a plain answer does not constrain the next turn.
    later = loop + [{"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "thanks"}]
    assert "thinking" in await build({"messages": later, "reasoning": {"effort": "low"}})


def test_tool_id_sanitising_is_deterministic_and_distinct() -> None:
    assert sanitise_tool_id("toolu_01ABC-def") == "toolu_01ABC-def"
    first, second = sanitise_tool_id("call.1"), sanitise_tool_id("call:1")
    assert first == sanitise_tool_id("call.1") and first != second
    for value in (first, second, sanitise_tool_id(""), sanitise_tool_id(None), sanitise_tool_id("functions.get:0"),
                  sanitise_tool_id("abc\n")):
        assert value and all(c.isascii() and (c.isalnum() or c in "_-") for c in value)


async def test_streamed_reasoning_fragments_are_merged() -> None:
    fragments = [
        {"type": "reasoning.text", "text": "Think", "format": FMT, "index": 0},
        {"type": "reasoning.text", "text": "ing.", "format": FMT, "index": 0},
        {"type": "reasoning.text", "signature": "sig", "format": FMT, "index": 0},
        {"type": "reasoning.text", "text": "unsigned", "format": FMT, "index": 1},
        {"type": "reasoning.text", "text": "gemini", "signature": "g", "format": "google-gemini-v1", "index": 2},
    ]
    body = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "Hello", "reasoning_details": fragments},
                         {"role": "user", "content": "again"}]}
    out = await build(body)
    assert out["messages"][1]["content"] == [{"type": "thinking", "thinking": "Thinking.", "signature": "sig"},
                                             {"type": "text", "text": "Hello"}]


async def test_turns_merge_and_tool_results_come_first() -> None:
    body = {"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "input_audio", "input_audio": {}}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "user", "content": "meanwhile"},
        {"role": "tool", "tool_call_id": "toolu_a", "content": ""},
        {"role": "assistant", "content": "   "},
        {"role": "assistant", "content": [{"type": "text", "text": "done"}], "cache_control": {"type": "ephemeral"}},
        {"role": "user", "content": "ok"},
    ]}
    out = await build(body)
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a"},
                                     {"type": "text", "text": "meanwhile"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "done", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [{"type": "text", "text": "ok"}]},
    ]


async def test_tool_result_keeps_cache_control() -> None:
    body = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1",
         "content": [{"type": "text", "text": "big", "cache_control": {"type": "ephemeral"}}]}]}
    out = await build(body)
    assert out["messages"][-1]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "big", "cache_control": {"type": "ephemeral"}}]


async def test_media_edge_cases() -> None:
    def user(part: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": [part]}]}

    # Untyped and percent-encoded data URLs are decoded and sniffed.
    out = await build(user({"type": "image_url", "image_url": {"url": f"data:;base64,{B64_PNG}"}}))
    assert out["messages"][0]["content"][0]["source"] == {"type": "base64", "media_type": "image/png", "data": B64_PNG}
    out = await build(user({"type": "image_url", "image_url": "data:image/jpg;base64,/9j/AA=="}))
    assert out["messages"][0]["content"][0]["source"]["media_type"] == "image/jpeg"
    out = await build(user({"type": "file", "file": {"file_data": "data:text/plain,hello%20there"}}))
    assert out["messages"][0]["content"][0] == {
        "type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello there"}}
    out = await build(user({"type": "file", "file": {"file_data": "https://example.com/doc.pdf"},
                            "cache_control": {"type": "ephemeral"}}))
    assert out["messages"][0]["content"][0] == {"type": "document", "source": {
        "type": "url", "url": "https://example.com/doc.pdf"}, "cache_control": {"type": "ephemeral"}}
    for bad in ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64"}},
                {"type": "file", "file": {"file_id": "file-123"}},
                {"type": "file", "file": {"file_data": "data:application/zip;base64,UEsDBA=="}}):
        with pytest.raises(GatewayError) as info:
            await build(user(bad))
        assert info.value.status == 400


# -- responses ---------------------------------------------------------------------------------------------------


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int) -> bytes:
    return orjson.dumps({"model": "claude-sonnet-4-20250514", "id": "msg_1", "type": "message", "role": "assistant",
                         "content": content, "stop_reason": stop_reason, "stop_sequence": None,
                         "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                                   "output_tokens": 5, **usage}})


def test_response_text() -> None:
    translator = make_translator()
    out = translator.response(message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]))
    assert out == {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                                "finish_reason": "stop", "native_finish_reason": "end_turn"}]}
    assert translator.upstream_model == "claude-sonnet-4-20250514" and translator.upstream_id == "msg_1"
    usage = translator.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.seen) == (10, 5, 0, True)


def test_response_thinking_and_tools() -> None:
    translator = make_translator()
    out = translator.response(message([
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig-A"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 3}, "caller": {"type": "direct"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ], "tool_use"))
    assert out["choices"][0] == {"index": 0, "finish_reason": "tool_calls", "native_finish_reason": "tool_use",
                                 "message": {
        "role": "assistant", "content": None, "reasoning": "Let me think.",
        "reasoning_details": [
            {"type": "reasoning.text", "text": "Let me think.", "signature": "sig-A", "format": FMT, "index": 0},
            {"type": "reasoning.encrypted", "data": "opaque", "format": FMT, "index": 1}],
        "tool_calls": [
            {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}},
            {"index": 1, "id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}]}}


async def test_response_reasoning_excluded() -> None:
    translator = make_translator()
    await translator.request({"messages": [{"role": "user", "content": "hi"}],
                              "reasoning": {"effort": "low", "exclude": True}})
    out = translator.response(message([{"type": "thinking", "thinking": "secret", "signature": "s"},
                                       {"type": "text", "text": "Hi"}]))
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}


@pytest.mark.parametrize(("native", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("model_context_window_exceeded", "length"),
])
def test_response_stop_reasons(native: str, finish: str) -> None:
    choice = make_translator().response(message([{"type": "text", "text": "x"}], native))["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == (finish, native)


def test_response_cache_usage() -> None:
    translator = make_translator()
    translator.response(message([{"type": "text", "text": "x"}], input_tokens=20, cache_read_input_tokens=1000,
                                cache_creation_input_tokens=300, output_tokens=42))
    usage = translator.usage
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.completion_tokens) == \
        (1320, 1000, 300, 42)
    assert usage.total_tokens == 1362


def test_response_rejects_non_messages() -> None:
    with pytest.raises(ValueError):
        make_translator().response(b'{"type":"error","error":{"type":"api_error","message":"x"}}')


# -- streams -----------------------------------------------------------------------------------------------------


def full_stream() -> list[tuple[str, bytes]]:
    def delta(index: int, body: dict[str, Any]) -> tuple[str, bytes]:
        return ev({"type": "content_block_delta", "index": index, "delta": body})

    def start(index: int, block: dict[str, Any]) -> tuple[str, bytes]:
        return ev({"type": "content_block_start", "index": index, "content_block": block})

    return [
        ev({"type": "message_start", "message": {
            "model": "claude-sonnet-4-20250514", "id": "msg_s", "type": "message", "role": "assistant", "content": [],
            "stop_reason": None, "usage": {"input_tokens": 30, "cache_creation_input_tokens": 5,
                                           "cache_read_input_tokens": 100, "output_tokens": 1}}}),
        start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        ("ping", b'{"type": "ping"}'),
        delta(0, {"type": "thinking_delta", "thinking": "Hmm, "}),
        delta(0, {"type": "thinking_delta", "thinking": "tools."}),
        delta(0, {"type": "thinking_delta", "thinking": ""}),
        delta(0, {"type": "signature_delta", "signature": "SIG=="}),
        ev({"type": "content_block_stop", "index": 0}),
        start(1, {"type": "text", "text": ""}),
        delta(1, {"type": "text_delta", "text": "Adding"}),
        delta(1, {"type": "text_delta", "text": " now."}),
        ev({"type": "content_block_stop", "index": 1}),
        start(2, {"type": "tool_use", "id": "toolu_A", "name": "add", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": ""}),
        delta(2, {"type": "input_json_delta", "partial_json": '{"a": 2'}),
        delta(2, {"type": "input_json_delta", "partial_json": ', "b": 3}'}),
        ev({"type": "content_block_stop", "index": 2}),
        start(3, {"type": "tool_use", "id": "toolu_B", "name": "multiply", "input": {}}),
        delta(3, {"type": "input_json_delta", "partial_json": '{"a": 2, '}),
        delta(3, {"type": "input_json_delta", "partial_json": '"b": 3}'}),
        ev({"type": "content_block_stop", "index": 3}),
        ev({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 77}}),
        ev({"type": "message_stop"}),
    ]


def test_stream_full_sequence() -> None:
    translator = make_translator(stream=True)
    chunks = feed(translator, full_stream())
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "reasoning": "Hmm, ", "reasoning_details": [
            {"type": "reasoning.text", "text": "Hmm, ", "format": FMT, "index": 0}]},
        {"reasoning": "tools.", "reasoning_details": [{"type": "reasoning.text", "text": "tools.", "format": FMT,
                                                       "index": 0}]},
        {"reasoning_details": [{"type": "reasoning.text", "signature": "SIG==", "format": FMT, "index": 0}]},
        {"content": "Adding"},
        {"content": " now."},
        {"tool_calls": [{"index": 0, "id": "toolu_A", "type": "function", "function": {"name": "add", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 2'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ', "b": 3}'}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_B", "type": "function",
                         "function": {"name": "multiply", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"a": 2, '}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '"b": 3}'}}]},
        {},
    ]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert (chunks[-1]["choices"][0]["finish_reason"], chunks[-1]["choices"][0]["native_finish_reason"]) == \
        ("tool_calls", "tool_use")
    assert translator.upstream_model == "claude-sonnet-4-20250514" and translator.upstream_id == "msg_s"
    usage = translator.usage
    assert (usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.completion_tokens) == \
        (135, 100, 5, 77)


def test_stream_message_delta_may_update_input_usage() -> None:
    translator = make_translator(stream=True)
    feed(translator, [
        ev({"type": "message_start", "message": {"model": "m", "id": "i", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        ev({"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
            "usage": {"input_tokens": 40, "cache_read_input_tokens": 2, "output_tokens": 9}}),
    ])
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens) == (42, 9)


def test_stream_redacted_thinking_and_exclusion() -> None:
    events = [ev({"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking", "data": "X"}}),
              ev({"type": "content_block_stop", "index": 0})]
    chunks = feed(make_translator(stream=True), events)
    assert chunks[0]["choices"][0]["delta"]["reasoning_details"] == [
        {"type": "reasoning.encrypted", "data": "X", "format": FMT, "index": 0}]
    translator = make_translator(stream=True)
    translator.exclude_reasoning = True
    assert collect(feed(translator, full_stream()))["reasoning"] == ""


@pytest.mark.parametrize(("error_type", "code"), [
    ("overloaded_error", 503), ("rate_limit_error", 429), ("api_error", 502)])
def test_stream_error_event(error_type: str, code: int) -> None:
    translator = make_translator(stream=True)
    chunks = feed(translator, full_stream()[:10])
    assert collect(chunks)["reasoning"] == "Hmm, tools."
    with pytest.raises(UpstreamStreamError) as info:
        translator.stream_event("error", orjson.dumps({"type": "error", "error": {"type": error_type,
                                                                                   "message": "Overloaded"}}))
    assert info.value.message == "Overloaded" and info.value.code == code


# -- recorded traffic --------------------------------------------------------------------------------------------


def recorded_interactions() -> list[Any]:
    if not RECORDED.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason="shared/reference/recorded is absent"))]
    params = []
    files = sorted(RECORDED.glob("TestAnthropic*/**/*.yaml")) + sorted(RECORDED.glob("TestImageUpload*/anthropic-*.yaml"))
    for path in files:
        for item in yaml.safe_load(path.read_text())["interactions"]:
            if item["response"]["code"] == 200:
                params.append(pytest.param(item, id=f"{path.relative_to(RECORDED)}#{item['id']}"))
    return params


def expected_from_stream(events: list[tuple[str | None, bytes]]) -> dict[str, Any]:
    """What the recording itself says was answered (read straight from Anthropic's events)."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "signatures": [], "tools": {}, "native": None, "usage": {}}
    blocks: dict[int, dict[str, Any]] = {}
    for _, data in events:
        payload = orjson.loads(data)
        kind = payload["type"]
        if kind == "message_start":
            out["usage"].update(payload["message"]["usage"])
        elif kind == "content_block_start":
            blocks[payload["index"]] = payload["content_block"]
            if payload["content_block"]["type"] == "tool_use":
                block = payload["content_block"]
                out["tools"][len(out["tools"])] = {"id": block["id"], "name": block["name"], "arguments": ""}
                block["ordinal"] = len(out["tools"]) - 1
        elif kind == "content_block_delta":
            delta = payload["delta"]
            if delta["type"] == "text_delta":
                out["content"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                out["reasoning"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                out["signatures"].append(delta["signature"])
            elif delta["type"] == "input_json_delta":
                out["tools"][blocks[payload["index"]]["ordinal"]]["arguments"] += delta["partial_json"]
        elif kind == "message_delta":
            out["native"] = payload["delta"]["stop_reason"]
            out["usage"].update(payload["usage"])
    return out


@pytest.mark.parametrize("interaction", recorded_interactions())
async def test_recorded_anthropic_traffic(interaction: dict[str, Any]) -> None:
    request = orjson.loads(interaction["request"]["body"])
    raw = interaction["response"]["body"]
    translator = make_translator(stream=bool(request.get("stream")))
    finish_map = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length", "stop_sequence": "stop"}
    if request.get("stream"):
        events = parse_sse(raw.encode())
        got = collect(feed(translator, events))
        want = expected_from_stream(events)
        assert got["content"] == want["content"]
        assert got["reasoning"] == want["reasoning"]
        assert got["signatures"] == want["signatures"]
        assert got["tools"] == want["tools"]
        for call in got["tools"].values():
            orjson.loads(call["arguments"])  # fragments reassemble into valid JSON
        assert (got["finish"], got["native"]) == (finish_map[want["native"]], want["native"])
        assert got["roles"] == 1
        usage = want["usage"]
    else:
        data = orjson.loads(raw)
        got_message = translator.response(raw.encode())["choices"][0]
        message_out = got_message["message"]
        texts = [b["text"] for b in data["content"] if b["type"] == "text"]
        assert message_out["content"] == ("".join(texts) if texts else None)
        calls = [b for b in data["content"] if b["type"] == "tool_use"]
        assert [(c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
                for c in message_out.get("tool_calls", [])] == [(b["id"], b["name"], b["input"]) for b in calls]
        thinking = [b for b in data["content"] if b["type"] == "thinking"]
        assert [(d["text"], d["signature"]) for d in message_out.get("reasoning_details", [])] == \
            [(b["thinking"], b["signature"]) for b in thinking]
        assert (got_message["finish_reason"], got_message["native_finish_reason"]) == \
            (finish_map[data["stop_reason"]], data["stop_reason"])
        assert translator.upstream_id == data["id"] and translator.upstream_model == data["model"]
        usage = data["usage"]
    assert translator.usage.prompt_tokens == usage["input_tokens"] + usage["cache_read_input_tokens"] + \
        usage["cache_creation_input_tokens"]
    assert translator.usage.completion_tokens == usage["output_tokens"]
    assert translator.usage.cached_tokens == usage["cache_read_input_tokens"]


def recorded_thinking_requests() -> list[Any]:
    path = RECORDED / "TestAnthropicThinking" / "claude-sonnet-4" / "thinking.yaml"
    if not path.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason="shared/reference/recorded is absent"))]
    return [pytest.param(yaml.safe_load(path.read_text())["interactions"][1]["request"]["body"], id="thinking#1")]


@pytest.mark.parametrize("recorded_body", recorded_thinking_requests())
async def test_echoed_reasoning_rebuilds_the_recorded_thinking_turn(recorded_body: str) -> None:
    """The canonical form of a real thinking tool loop translates to the assistant turn Anthropic accepted."""
    recorded = orjson.loads(recorded_body)
    turn = recorded["messages"][1]["content"]
    thinking, tool_use = turn
    body = {"messages": [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "What's the weather in Florence, Italy?"},
        {"role": "assistant", "content": None, "reasoning": thinking["thinking"], "reasoning_details": [
            {"type": "reasoning.text", "text": thinking["thinking"], "signature": thinking["signature"],
             "format": FMT, "index": 0}],
         "tool_calls": [{"id": tool_use["id"], "type": "function",
                         "function": {"name": "weather", "arguments": orjson.dumps(tool_use["input"]).decode()}}]},
        {"role": "tool", "tool_call_id": tool_use["id"], "content": "40 C"}],
        "tools": [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                    "parameters": t["input_schema"]}} for t in recorded["tools"]],
        "reasoning": {"max_tokens": 4000}, "max_tokens": 4096}
    out = await build(body)
    assert out["messages"][1] == {"role": "assistant", "content": turn}
    assert out["messages"][2]["content"][0]["tool_use_id"] == tool_use["id"]
    assert out["thinking"] == recorded["thinking"] and out["max_tokens"] == recorded["max_tokens"]
    assert out["tools"] == recorded["tools"]


# -- the fake server ---------------------------------------------------------------------------------------------


REPLIES = [
    Reply(),
    Reply(text="Hello there, world", chunks=3, finish="length", prompt_tokens=1200, cached_tokens=1000,
          cache_write_tokens=100, completion_tokens=9),
    Reply(text="Let me add.", reasoning="I should call add twice.", reasoning_signature="SIG123",
          tool_calls=[ToolCall("add", {"a": 2, "b": 3}), ToolCall("add", {"a": 4, "b": 5}, id="toolu_custom")],
          finish="tool_calls"),
    Reply(text=None, reasoning="Only thinking.", tool_calls=[ToolCall("lookup", {"q": "x" * 40})], finish="tool_calls"),
    Reply(text="I can't help with that.", finish="content_filter"),
]


@pytest.mark.parametrize("reply", REPLIES)
def test_fake_stream_translates_back_to_its_reply(reply: Reply) -> None:
    fake = FakeAnthropic()
    translator = make_translator(stream=True)
    got = collect(feed(translator, parse_sse(b"".join(fake.events(reply, "claude-fake")))))
    assert got["content"] == (reply.text or "")
    assert got["reasoning"] == (reply.reasoning or "")
    assert got["signatures"] == ([reply.reasoning_signature or FAKE_SIGNATURE] if reply.reasoning else [])
    assert [(c["name"], orjson.loads(c["arguments"])) for c in got["tools"].values()] == \
        [(tc.name, tc.arguments) for tc in reply.tool_calls]
    assert all(c["id"] for c in got["tools"].values())
    assert got["finish"] == reply.finish and got["roles"] == 1
    _check_usage(translator, reply)
    assert translator.upstream_model == "claude-fake"


@pytest.mark.parametrize("reply", REPLIES)
def test_fake_message_translates_back_to_its_reply(reply: Reply) -> None:
    translator = make_translator()
    choice = translator.response(orjson.dumps(FakeAnthropic().message(reply, "claude-fake")))["choices"][0]
    message_out = choice["message"]
    assert message_out["content"] == (reply.text or None)
    assert message_out.get("reasoning") == reply.reasoning
    assert [(c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for c in message_out.get("tool_calls", [])] == [(tc.name, tc.arguments) for tc in reply.tool_calls]
    assert choice["finish_reason"] == reply.finish
    _check_usage(translator, reply)


def _check_usage(translator: AnthropicTranslator, reply: Reply) -> None:
    usage = translator.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens) == \
        (reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens, reply.cache_write_tokens)


@pytest.fixture(scope="module")
def fake() -> Any:
    server = FakeAnthropic().start()
    yield server
    server.stop()


def sdk(fake: FakeAnthropic, key: str = "sk-ant-fake-secret") -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=fake.base_url, max_retries=0)


def test_fake_speaks_to_the_official_sdk(fake: FakeAnthropic) -> None:
    """The official SDK parses the fake's answers: its shapes are Anthropic's."""
    fake.reset()
    client = sdk(fake)
    fake.reply(Reply(text="Hi!", reasoning="Greet.", tool_calls=[ToolCall("wave", {"times": 2})], finish="tool_calls"))
    msg = client.messages.create(model="claude-fake-1", max_tokens=64,
                                 messages=[{"role": "user", "content": "hello"}])
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.stop_reason == "tool_use" and msg.content[2].input == {"times": 2}
    fake.reply(Reply(text="Streamed reply here", reasoning="Think.", tool_calls=[ToolCall("wave", {"times": 3})]))
    with client.messages.stream(model="claude-fake-1", max_tokens=64,
                                messages=[{"role": "user", "content": "hello"}]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].signature == FAKE_SIGNATURE and final.content[1].text == "Streamed reply here"
    assert final.content[2].input == {"times": 3} and final.stop_reason == "end_turn"
    assert fake.last.json["stream"] is True
    assert client.messages.count_tokens(model="claude-fake-1",
                                        messages=[{"role": "user", "content": "hello"}]).input_tokens > 0


@pytest.mark.parametrize(("status", "exc", "error_type"), [
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (529, anthropic.APIStatusError, "overloaded_error"),
    (503, anthropic.APIStatusError, "overloaded_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (400, anthropic.BadRequestError, "invalid_request_error"),
])
def test_fake_errors_in_anthropic_shape(fake: FakeAnthropic, status: int, exc: type[Exception], error_type: str) -> None:
    fake.reset()
    fake.fault(Fault(status=status, message="nope", headers={"retry-after": "1"}))
    with pytest.raises(exc) as info:
        sdk(fake).messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert info.value.body == {"type": "error", "error": {"type": error_type, "message": "nope"},  # type: ignore[attr-defined]
                               "request_id": "req_fake0123456789"}
    assert info.value.response.headers["retry-after"] == "1"  # type: ignore[attr-defined]


def test_fake_rejects_a_wrong_key(fake: FakeAnthropic) -> None:
    fake.reset()
    with pytest.raises(anthropic.AuthenticationError):
        sdk(fake, "sk-ant-wrong").messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}])


def test_fake_error_event_mid_stream(fake: FakeAnthropic) -> None:
    fake.reset()
    fake.fault(Fault(error_event_after=4, message="Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as info:
        with sdk(fake).messages.stream(model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]) as stream:
            stream.get_final_message()
    assert "Overloaded" in str(info.value)


def skeleton(events: list[tuple[str | None, bytes]]) -> list[tuple[Any, ...]]:
    """An event sequence's shape: names, block/delta types and key sets, with repeated deltas collapsed."""
    out: list[tuple[Any, ...]] = []
    for name, data in events:
        payload = orjson.loads(data)
        nested = payload.get("message") or payload.get("content_block") or payload.get("delta") or {}
        usage = nested.get("usage") or payload.get("usage") or {}
        shape = (name, payload["type"], nested.get("type"), tuple(sorted(payload)), tuple(sorted(nested)),
                 tuple(sorted(usage)))
        if not out or out[-1] != shape:
            out.append(shape)
    return out


def recorded_streams() -> list[Any]:
    cases = [("TestAnthropicThinking/claude-sonnet-4/thinking-streaming.yaml", 0,
              Reply(text=None, reasoning="Thinking it over.", tool_calls=[ToolCall("weather", {"location": "Rome"})],
                    finish="tool_calls")),
             ("TestAnthropicCommon/claude-sonnet-4/multi_tool_streaming.yaml", 0,
              Reply(text="I'll do both.", tool_calls=[ToolCall("add", {"a": 2, "b": 3}),
                                                      ToolCall("multiply", {"a": 2, "b": 3})], finish="tool_calls")),
             ("TestAnthropicCommon/claude-sonnet-4/simple_streaming.yaml", 0, Reply(text="Olá! Tudo bem?"))]
    if not RECORDED.is_dir():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason="shared/reference/recorded is absent"))]
    return [pytest.param(RECORDED / path, n, reply, id=path.split("/")[-1]) for path, n, reply in cases]


@pytest.mark.parametrize(("path", "n", "reply"), recorded_streams())
def test_fake_stream_has_the_recorded_shape(path: Path, n: int, reply: Reply) -> None:
    body = yaml.safe_load(path.read_text())["interactions"][n]["response"]["body"]
    assert skeleton(parse_sse(b"".join(FakeAnthropic().events(reply, "m")))) == skeleton(parse_sse(body.encode()))


def recorded_messages() -> list[Any]:
    if not RECORDED.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason="shared/reference/recorded is absent"))]
    body = yaml.safe_load((RECORDED / "TestAnthropicThinking/claude-sonnet-4/thinking.yaml").read_text())
    return [pytest.param(orjson.loads(body["interactions"][0]["response"]["body"]), id="thinking#0")]


@pytest.mark.parametrize("recorded", recorded_messages())
def test_fake_message_has_the_recorded_shape(recorded: dict[str, Any]) -> None:
    reply = Reply(text=None, reasoning="Hmm.", tool_calls=[ToolCall("weather", {"location": "Rome"})], finish="tool_calls")
    mine = FakeAnthropic().message(reply, "m")
    assert sorted(mine) == sorted(recorded) and sorted(mine["usage"]) == sorted(recorded["usage"])
    assert [sorted(b) for b in mine["content"]] == [sorted(b) for b in recorded["content"]]


@pytest.mark.parametrize("stream", [False, True])
async def test_translator_round_trip_through_the_fake(fake: FakeAnthropic, stream: bool) -> None:
    """The translator's own request is accepted by the fake and its answer translates back."""
    import httpx

    fake.reset()
    fake.reply(Reply(text="Done.", reasoning="Plan.", tool_calls=[ToolCall("add", {"a": 1})], finish="tool_calls",
                     prompt_tokens=50, cached_tokens=20))
    conn = ConnectionConfig(name="anthropic", type="anthropic", base_url=fake.base_url + "/v1",
                            api_key="sk-ant-fake-secret")
    model = ModelSpec(id="anthropic/claude-sonnet-4", upstream="claude-sonnet-4-20250514")
    translator = AnthropicAdapter(conn).translator(RequestContext(model=model, connection=conn, stream=stream))
    req = await translator.request({"messages": [{"role": "user", "content": "add"}], "reasoning": {"effort": "low"},
                                    "tools": [{"type": "function", "function": {"name": "add"}}]})
    async with httpx.AsyncClient() as client:
        resp = await client.post(req.url, content=req.body, headers=req.headers)
    assert resp.status_code == 200
    assert fake.last.headers["x-api-key"] == "sk-ant-fake-secret"
    assert fake.last.headers["anthropic-version"] == "2023-06-01"
    if stream:
        got = collect(feed(translator, parse_sse(resp.content)))
        assert (got["content"], got["reasoning"], got["finish"]) == ("Done.", "Plan.", "tool_calls")
        assert [orjson.loads(c["arguments"]) for c in got["tools"].values()] == [{"a": 1}]
    else:
        message_out = translator.response(resp.content)["choices"][0]["message"]
        assert (message_out["content"], message_out["reasoning"]) == ("Done.", "Plan.")
    assert (translator.usage.prompt_tokens, translator.usage.cached_tokens) == (50, 20)
