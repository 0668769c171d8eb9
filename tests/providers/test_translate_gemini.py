"""The Gemini translator, driven directly: request bodies, responses, streams, recorded traffic and the fake server."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from crossroads.catalog import ModelSpec
from crossroads.config import ConnectionConfig
from crossroads.errors import GatewayError
from crossroads.net.fetch import MediaFetcher
from crossroads.providers.base import RequestContext, UpstreamStreamError
from crossroads.providers.gemini.adapter import (
    GeminiAdapter,
    GeminiTranslator,
    generated_tool_call_id,
    sanitise_schema,
)
from crossroads.providers.http import iter_sse
from tests.conftest import RECORDED
from tests.fakes.base import Fault, Reply, ToolCall
from tests.fakes.gemini_fake import FAKE_SIGNATURE, FakeGemini
from tests.fakes.serve import serving

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00fake-png-body"
PDF = b"%PDF-1.4\nfake pdf\n%%EOF"
B64_PNG = base64.b64encode(PNG).decode()
B64_PDF = base64.b64encode(PDF).decode()


def make_translator(upstream: str = "gemini-2.5-flash", *, stream: bool = False, media: MediaFetcher | None = None,
                    base_url: str = "https://gemini.example/v1beta", api_key: str | None = "secret-key",
                    reasoning: bool = True) -> GeminiTranslator:
    conn = ConnectionConfig(name="gem", type="gemini", base_url=base_url, api_key=api_key,
                            headers={"x-extra": "yes"})
    model = ModelSpec(id=f"google/{upstream}", upstream=upstream, reasoning=reasoning)
    return GeminiAdapter(conn).translator(RequestContext(model=model, connection=conn, stream=stream, media=media))


async def request_body(translator: GeminiTranslator, body: dict[str, Any]) -> dict[str, Any]:
    req = await translator.request(body)
    return orjson.loads(req.body)


@asynccontextmanager
async def media_server() -> AsyncIterator[str]:
    async def cat(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def blob(_: web.Request) -> web.Response:
        # Object stores label everything octet-stream; the fetcher sniffs the PDF.
        return web.Response(body=PDF, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/cat.png", cat)
    app.router.add_get("/doc", blob)
    async with serving(app) as url:
        yield url


def candidate_response(parts: list[dict[str, Any]], finish: str | None = "STOP", **extra: Any) -> bytes:
    cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return orjson.dumps({"candidates": [cand], "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5,
                                                                 "totalTokenCount": 15},
                         "modelVersion": "gemini-2.5-flash", "responseId": "resp-1", **extra})


# == request ===========================================================================================================

async def test_full_conversation_request_body() -> None:
    async with media_server() as origin:
        fetcher = MediaFetcher(allow=["127.0.0.0/8"])
        try:
            translator = make_translator(media=fetcher)
            generated = generated_tool_call_id("earlier-response", 0, "weather")
            body = {
                "model": "google/gemini-2.5-flash",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                    {"role": "user", "name": "alice", "content": [
                        {"type": "text", "text": "Look at these"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64_PNG}"}},
                        {"type": "image_url", "image_url": {"url": f"{origin}/cat.png", "detail": "high"}},
                        {"type": "file", "file": {"filename": "a.pdf", "file_data": B64_PDF}},
                        {"type": "file", "file": {"filename": "b.pdf",
                                                  "file_data": f"data:application/pdf;base64,{B64_PDF}"}},
                        {"type": "file", "file": {"filename": "c.pdf", "file_data": f"{origin}/doc"}},
                    ]},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": generated, "type": "function",
                         "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
                        {"id": "v3abcdef", "type": "function",
                         "function": {"name": "time", "arguments": '{"tz":"CET"}'}},
                    ], "reasoning_details": [
                        {"type": "reasoning.text", "text": "hmm", "format": "google-gemini-v1", "index": 0},
                        {"type": "reasoning.encrypted", "data": "SIG-CALL", "id": generated,
                         "format": "google-gemini-v1", "index": 1},
                        {"type": "reasoning.encrypted", "data": "ANTHROPIC", "id": "v3abcdef",
                         "format": "anthropic-claude-v1", "index": 2},
                    ]},
                    {"role": "tool", "tool_call_id": generated, "content": '{"temp": 20, "sky": "clear"}'},
                    {"role": "tool", "tool_call_id": "v3abcdef", "content": "14:00"},
                    {"role": "user", "content": "Thanks."},
                    {"role": "user", "content": "And tomorrow?"},
                    {"role": "assistant", "name": "bot", "content": "Tomorrow it will be"},
                ],
                "max_tokens": 1000, "temperature": 0.2, "top_p": 0.9, "top_k": 40.0, "stop": "END", "seed": 7,
                "reasoning": {"effort": "medium"},
                "response_format": {"type": "json_schema", "json_schema": {"name": "forecast", "strict": True, "schema": {
                    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                    "properties": {"sky": {"type": "string", "pattern": "^[a-z]+$", "enum": ["clear", "rain"]},
                                   "temp": {"type": ["number", "null"], "exclusiveMinimum": -100},
                                   "unit": {"const": "C"}},
                    "required": ["sky", "temp", "ghost"], "additionalProperties": False}}},
                "tools": [{"type": "function", "function": {
                    "name": "weather", "description": "Weather for a city", "strict": True,
                    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                                   "properties": {"city": {"type": "string", "minLength": 1, "default": "Rome"}},
                                   "required": ["city"], "additionalProperties": False}}},
                    {"type": "function", "function": {"name": "time"}}],
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
                "parallel_tool_calls": False, "user": "u-1", "frequency_penalty": 0.5, "logprobs": True,
                "stream": False,
            }
            req = await translator.request(body)
        finally:
            await fetcher.close()
    assert req.url == "https://gemini.example/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.headers == {"Content-Type": "application/json", "x-extra": "yes", "x-goog-api-key": "secret-key"}
    assert orjson.loads(req.body) == {
        "contents": [
            {"role": "user", "parts": [
                {"text": "alice: Look at these"},
                {"inlineData": {"mimeType": "image/png", "data": B64_PNG}},
                {"inlineData": {"mimeType": "image/png", "data": B64_PNG}},
                {"inlineData": {"mimeType": "application/pdf", "data": B64_PDF}},
                {"inlineData": {"mimeType": "application/pdf", "data": B64_PDF}},
                {"inlineData": {"mimeType": "application/pdf", "data": B64_PDF}},
            ]},
            {"role": "model", "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "weather", "args": {"city": "Rome"}}, "thoughtSignature": "SIG-CALL"},
                {"functionCall": {"name": "time", "args": {"tz": "CET"}, "id": "v3abcdef"}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": 20, "sky": "clear"}}},
                {"functionResponse": {"name": "time", "response": {"content": "14:00"}, "id": "v3abcdef"}},
                {"text": "Thanks."},
                {"text": "And tomorrow?"},
            ]},
            {"role": "model", "parts": [{"text": "bot: Tomorrow it will be"}]},
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Answer in English."}]},
        "generationConfig": {
            "maxOutputTokens": 1000, "temperature": 0.2, "topP": 0.9, "topK": 40, "seed": 7,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {
                "type": "object",
                "properties": {"sky": {"type": "string", "enum": ["clear", "rain"]},
                               "temp": {"type": ["number", "null"]},
                               "unit": {"enum": ["C"]}},
                "required": ["sky", "temp"], "additionalProperties": False},
            # medium is 8192 tokens, more than max_tokens allows: half of the output allowance instead.
            "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 500},
        },
        "tools": [{"functionDeclarations": [
            {"name": "weather", "description": "Weather for a city",
             "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"], "additionalProperties": False}},
            {"name": "time"},
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}},
    }


async def test_stream_url_and_no_key() -> None:
    translator = make_translator("models/gemini-2.5-pro", stream=True, api_key=None)
    req = await translator.request({"messages": [{"role": "user", "content": "hi"}]})
    assert req.url == "https://gemini.example/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert "x-goog-api-key" not in req.headers
    assert orjson.loads(req.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}),
    ("none", {"mode": "NONE"}),
    ("required", {"mode": "ANY"}),
    ({"type": "function", "function": {"name": "f"}}, {"mode": "ANY", "allowedFunctionNames": ["f"]}),
])
async def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    body = await request_body(make_translator(), {
        "messages": [{"role": "user", "content": "x"}], "tool_choice": choice,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]})
    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "f", "parametersJsonSchema": {"type": "object", "properties": {}}}]}]


@pytest.mark.parametrize(("upstream", "reasoning", "max_tokens", "expected"), [
    ("gemini-2.5-flash", {"effort": "high"}, None, {"includeThoughts": True, "thinkingBudget": 24576}),
    ("gemini-2.5-flash", {"effort": "low"}, None, {"includeThoughts": True, "thinkingBudget": 1024}),
    ("gemini-2.5-flash", {"effort": "minimal", "exclude": True}, None,
     {"includeThoughts": False, "thinkingBudget": 512}),
    ("gemini-2.5-flash", {"max_tokens": 99999}, None, {"includeThoughts": True, "thinkingBudget": 24576}),
    ("gemini-2.5-flash", {"enabled": False}, None, {"includeThoughts": False, "thinkingBudget": 0}),
    ("gemini-2.5-pro", {"enabled": False}, None, {"includeThoughts": False, "thinkingBudget": 128}),
    ("gemini-2.5-pro", {"effort": "high"}, 4000, {"includeThoughts": True, "thinkingBudget": 3200}),
    ("gemini-2.5-flash-lite", {"max_tokens": 100}, None, {"includeThoughts": True, "thinkingBudget": 512}),
    ("gemini-2.5-flash", {}, None, {"includeThoughts": True}),
    ("gemini-3-pro-preview", {"effort": "medium"}, None, {"includeThoughts": True, "thinkingLevel": "HIGH"}),
    ("gemini-3-flash-preview", {"effort": "medium"}, None, {"includeThoughts": True, "thinkingLevel": "MEDIUM"}),
    ("gemini-3-flash-preview", {"effort": "minimal"}, None, {"includeThoughts": True, "thinkingLevel": "LOW"}),
    ("gemini-3-pro-preview", {"max_tokens": 2048}, None, {"includeThoughts": True, "thinkingBudget": 2048}),
])
async def test_thinking_config(upstream: str, reasoning: dict[str, Any], max_tokens: int | None,
                               expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "reasoning": reasoning}
    if max_tokens:
        body["max_completion_tokens"] = max_tokens
    out = await request_body(make_translator(upstream), body)
    assert out["generationConfig"]["thinkingConfig"] == expected


async def test_thinking_dropped_for_non_thinking_models_and_json_object() -> None:
    out = await request_body(make_translator("gemini-2.0-flash", reasoning=False), {
        "messages": [{"role": "user", "content": "x"}], "reasoning": {"effort": "high"},
        "response_format": {"type": "json_object"}, "stop": ["a", "b", "c", "d", "e", "f"]})
    assert out["generationConfig"] == {"responseMimeType": "application/json",
                                       "stopSequences": ["a", "b", "c", "d", "e"]}


async def test_media_errors_become_gateway_errors() -> None:
    fetcher = MediaFetcher()  # no allow-list: loopback is refused by the SSRF guard
    try:
        translator = make_translator(media=fetcher)
        with pytest.raises(GatewayError) as info:
            await translator.request({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]})
        assert info.value.status == 400 and type(info.value) is GatewayError
    finally:
        await fetcher.close()
    with pytest.raises(GatewayError) as info:
        await make_translator().request({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]}]})
    assert info.value.status == 400
    with pytest.raises(GatewayError):
        await make_translator().request({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://example.com/x.png"}}]}]})


async def test_unknown_tool_result_is_a_client_error() -> None:
    with pytest.raises(GatewayError) as info:
        await make_translator().request({"messages": [
            {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_nope", "content": "1"}]})
    assert info.value.status == 400


async def test_generated_id_names_the_function_without_history() -> None:
    call_id = generated_tool_call_id("r", 3, "get_user_name")
    body = await request_body(make_translator(), {"messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": call_id, "content": "[1, 2]"}]})
    assert body["contents"][-1]["parts"][-1] == {
        "functionResponse": {"name": "get_user_name", "response": {"content": "[1, 2]"}}}


def test_schema_sanitiser_handles_refs_and_allof() -> None:
    schema = {"type": "object", "definitions": {"Pet": {"type": "object", "title": "Pet",
                                                        "properties": {"kind": {"type": "string"}}}},
              "properties": {"pet": {"allOf": [{"$ref": "#/definitions/Pet"}], "description": "the pet"},
                             "tags": {"type": "array", "items": {"type": "string", "maxLength": 3},
                                      "uniqueItems": True, "maxItems": 4}}}
    assert sanitise_schema(schema) == {
        "type": "object", "$defs": {"Pet": {"type": "object", "title": "Pet",
                                            "properties": {"kind": {"type": "string"}}}},
        "properties": {"pet": {"$ref": "#/$defs/Pet"},
                       "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}}}


# == thought signatures ================================================================================================

async def test_thought_signature_round_trip_gemini_25() -> None:
    first = make_translator()
    out = first.response(candidate_response([
        {"text": "Let me check.", "thought": True},
        {"functionCall": {"name": "add", "args": {"a": 2, "b": 3}}, "thoughtSignature": "SIG-A"},
        {"functionCall": {"name": "mul", "args": {"a": 2, "b": 3}}},
    ]))
    message = out["choices"][0]["message"]
    add_id, mul_id = (c["id"] for c in message["tool_calls"])
    assert add_id == generated_tool_call_id("resp-1", 0, "add") and add_id.startswith("tool_0_add_")
    assert mul_id == generated_tool_call_id("resp-1", 1, "mul")
    assert message["reasoning_details"] == [
        {"type": "reasoning.text", "text": "Let me check.", "format": "google-gemini-v1", "index": 0},
        {"type": "reasoning.encrypted", "data": "SIG-A", "id": add_id, "format": "google-gemini-v1", "index": 1},
    ]
    # The same response translated twice gives the same ids: clients can rely on them across retries.
    assert make_translator().response(candidate_response([
        {"functionCall": {"name": "add", "args": {}}}]))["choices"][0]["message"]["tool_calls"][0]["id"] == \
        generated_tool_call_id("resp-1", 0, "add")

    second = make_translator("gemini-2.5-flash")
    body = await request_body(second, {"messages": [
        {"role": "user", "content": "Add and multiply 2 and 3"},
        message,
        {"role": "tool", "tool_call_id": add_id, "content": "5"},
        {"role": "tool", "tool_call_id": mul_id, "content": "6"},
    ]})
    assert body["contents"][1:] == [
        {"role": "model", "parts": [
            {"functionCall": {"name": "add", "args": {"a": 2, "b": 3}}, "thoughtSignature": "SIG-A"},
            {"functionCall": {"name": "mul", "args": {"a": 2, "b": 3}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "add", "response": {"content": "5"}}},
            {"functionResponse": {"name": "mul", "response": {"content": "6"}}}]},
    ]


async def test_thought_signature_round_trip_gemini_3_ids_and_text_signature() -> None:
    out = make_translator("gemini-3-pro-preview").response(candidate_response([
        {"functionCall": {"name": "weather", "args": {"location": "Florence"}, "id": "v3yybtcf"},
         "thoughtSignature": "SIG-3"}]))
    message = out["choices"][0]["message"]
    assert message["tool_calls"][0]["id"] == "v3yybtcf"
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    answer = make_translator("gemini-3-pro-preview").response(candidate_response([
        {"text": "It is 40C.", "thoughtSignature": "SIG-TEXT"}]))["choices"][0]["message"]
    assert answer["reasoning_details"] == [
        {"type": "reasoning.encrypted", "data": "SIG-TEXT", "id": None, "format": "google-gemini-v1", "index": 0}]
    body = await request_body(make_translator("gemini-3-pro-preview"), {"messages": [
        {"role": "user", "content": "Weather in Florence?"},
        message,
        {"role": "tool", "tool_call_id": "v3yybtcf", "content": '{"result": "40 C"}'},
        answer,
        {"role": "user", "content": "Thanks"},
    ]})
    assert body["contents"][1:4] == [
        {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"location": "Florence"},
                                                      "id": "v3yybtcf"}, "thoughtSignature": "SIG-3"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"result": "40 C"},
                                                         "id": "v3yybtcf"}}]},
        {"role": "model", "parts": [{"text": "It is 40C.", "thoughtSignature": "SIG-TEXT"}]},
    ]


async def test_gemini_3_current_turn_without_signature_gets_the_documented_sentinel() -> None:
    history = [
        {"role": "user", "content": "old question"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1"},
        {"role": "assistant", "content": "done"},
        {"role": "user", "content": "new question"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_3", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "2"},
        {"role": "tool", "tool_call_id": "call_3", "content": "3"},
    ]
    body = await request_body(make_translator("gemini-3-pro-preview"), {"messages": history})
    old_turn, current = body["contents"][1], body["contents"][5]
    assert "thoughtSignature" not in old_turn["parts"][0]
    assert current["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert "thoughtSignature" not in current["parts"][1]
    body = await request_body(make_translator("gemini-2.5-flash"), {"messages": history})
    assert "thoughtSignature" not in body["contents"][5]["parts"][0]


# == response ==========================================================================================================

def test_response_text_thoughts_usage() -> None:
    translator = make_translator()
    out = translator.response(orjson.dumps({
        "candidates": [{"content": {"parts": [{"text": "Thinking...", "thought": True}, {"text": " more", "thought": True},
                                              {"text": "Olá"}, {"text": "!"}], "role": "model"},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 2, "totalTokenCount": 126,
                          "thoughtsTokenCount": 24, "cachedContentTokenCount": 60},
        "modelVersion": "gemini-2.5-flash-001", "responseId": "abc"}))
    assert out == {"choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "STOP", "message": {
        "role": "assistant", "content": "Olá!", "reasoning": "Thinking... more",
        "reasoning_details": [{"type": "reasoning.text", "text": "Thinking... more", "format": "google-gemini-v1",
                               "index": 0}]}}]}
    usage = translator.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens, usage.cached_tokens,
            usage.seen) == (100, 26, 24, 60, True)
    assert translator.upstream_model == "gemini-2.5-flash-001" and translator.upstream_id == "abc"


def test_response_function_calls() -> None:
    out = make_translator().response(candidate_response([
        {"text": "Calling."}, {"functionCall": {"name": "add", "args": {"b": 3, "a": 2}}}]))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["native_finish_reason"] == "STOP"
    assert choice["message"]["content"] == "Calling."
    assert choice["message"]["tool_calls"] == [{"id": generated_tool_call_id("resp-1", 0, "add"), "type": "function",
                                                "function": {"name": "add", "arguments": '{"b":3,"a":2}'}}]
    only_call = make_translator().response(candidate_response([{"functionCall": {"name": "f"}}]))
    assert only_call["choices"][0]["message"]["content"] is None
    assert only_call["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(("native", "expected"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("MALFORMED_FUNCTION_CALL", "error"), ("OTHER", "error"),
])
def test_finish_reasons(native: str, expected: str) -> None:
    out = make_translator().response(candidate_response([{"text": "x"}], native))
    assert (out["choices"][0]["finish_reason"], out["choices"][0]["native_finish_reason"]) == (expected, native)


def test_blocked_prompt() -> None:
    out = make_translator().response(orjson.dumps({
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}, "modelVersion": "m", "responseId": "r"}))
    assert out["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": ""},
                                 "finish_reason": "content_filter", "native_finish_reason": "PROHIBITED_CONTENT"}


def test_error_message() -> None:
    adapter = GeminiAdapter(ConnectionConfig(name="g", type="gemini", base_url="https://x/v1beta"))
    body = orjson.dumps({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}})
    assert adapter.error_message(429, body) == "Resource has been exhausted"
    assert adapter.error_message(400, b"[" + body + b"]") == "Resource has been exhausted"
    assert adapter.error_message(502, b"") == "upstream answered HTTP 502"


# == stream ============================================================================================================

def event(parts: list[dict[str, Any]] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
    cand: dict[str, Any] = {"index": 0}
    if parts is not None:
        cand["content"] = {"parts": parts, "role": "model"}
    if finish:
        cand["finishReason"] = finish
    data: dict[str, Any] = {"candidates": [cand], "modelVersion": "gemini-2.5-pro", "responseId": "sr-1"}
    if usage:
        data["usageMetadata"] = usage
    return orjson.dumps(data)


def test_stream_translation() -> None:
    translator = make_translator(stream=True)
    chunks = []
    chunks += translator.stream_event(None, event([{"text": "Plan", "thought": True}],
                                                  usage={"promptTokenCount": 5, "thoughtsTokenCount": 9}))
    chunks += translator.stream_event(None, event([{"text": " more", "thought": True}]))
    chunks += translator.stream_event(None, event([{"text": "Hi"}]))
    chunks += translator.stream_event(None, event([
        {"functionCall": {"name": "weather", "args": {"city": "Rome"}}, "thoughtSignature": "S1"},
        {"functionCall": {"name": "time", "args": {}}}], "STOP",
        usage={"promptTokenCount": 5, "candidatesTokenCount": 4, "thoughtsTokenCount": 9}))
    chunks += translator.stream_event(None, event([{"text": "late"}]))  # after the finish: ignored
    chunks += translator.finish()
    deltas = [c["choices"][0]["delta"] for c in chunks]
    weather_id = generated_tool_call_id("sr-1", 0, "weather")
    assert deltas == [
        {"role": "assistant", "reasoning": "Plan", "reasoning_details": [
            {"type": "reasoning.text", "text": "Plan", "format": "google-gemini-v1", "index": 0}]},
        {"reasoning": " more", "reasoning_details": [
            {"type": "reasoning.text", "text": " more", "format": "google-gemini-v1", "index": 0}]},
        {"content": "Hi"},
        {"reasoning_details": [{"type": "reasoning.encrypted", "data": "S1", "id": weather_id,
                                "format": "google-gemini-v1", "index": 1}]},
        {"tool_calls": [{"index": 0, "id": weather_id, "type": "function",
                         "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"tool_calls": [{"index": 1, "id": generated_tool_call_id("sr-1", 1, "time"), "type": "function",
                         "function": {"name": "time", "arguments": "{}"}}]},
        {},
    ]
    assert [(c["choices"][0]["finish_reason"], c["choices"][0]["native_finish_reason"]) for c in chunks][-2:] == [
        (None, None), ("tool_calls", "STOP")]
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens,
            translator.usage.reasoning_tokens) == (5, 13, 9)
    assert translator.upstream_model == "gemini-2.5-pro" and translator.upstream_id == "sr-1"


def test_stream_error_and_block() -> None:
    translator = make_translator(stream=True)
    assert translator.stream_event(None, event([{"text": "a"}]))[0]["choices"][0]["delta"] == {
        "role": "assistant", "content": "a"}
    with pytest.raises(UpstreamStreamError) as info:
        translator.stream_event(None, b'{"error": {"code": 503, "message": "The model is overloaded.", '
                                      b'"status": "UNAVAILABLE"}}')
    assert info.value.message == "The model is overloaded." and info.value.code == 503
    blocked = make_translator(stream=True).stream_event(None, b'{"promptFeedback": {"blockReason": "SAFETY"}}')
    assert blocked[0]["choices"][0]["finish_reason"] == "content_filter"
    assert blocked[0]["choices"][0]["native_finish_reason"] == "SAFETY"
    length = make_translator(stream=True).stream_event(None, event([{"text": "cut"}], "MAX_TOKENS"))
    assert [c["choices"][0]["finish_reason"] for c in length] == [None, "length"]


# == recorded traffic ==================================================================================================

def recorded_interactions() -> list[Any]:
    if not RECORDED.is_dir():
        return []
    out = []
    for path in sorted(RECORDED.glob("TestGoogle*/**/*.yaml")):
        data = yaml.safe_load(path.read_text())
        for item in data.get("interactions") or []:
            out.append(pytest.param(item, id=f"{path.relative_to(RECORDED)}#{item['id']}"))
    return out


def sse_data(body: str) -> list[bytes]:
    events = body.replace("\r\n", "\n").split("\n\n")
    return [e[len("data: "):].encode() for e in events if e.startswith("data: ")]


@pytest.mark.parametrize("item", recorded_interactions() or [pytest.param({}, marks=pytest.mark.skip(
    reason="recorded reference traffic not available"))])
def test_recorded_gemini_responses(item: dict[str, Any]) -> None:
    url = item["request"]["url"]
    body = item["response"]["body"]
    streaming = ":streamGenerateContent" in url
    translator = make_translator(stream=streaming)
    if streaming:
        chunks = [c for data in sse_data(body) for c in translator.stream_event(None, data)]
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        reasoning = "".join(c["choices"][0]["delta"].get("reasoning") or "" for c in chunks)
        calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or ()]
        finish = chunks[-1]["choices"][0]["finish_reason"]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert sum(c["choices"][0]["finish_reason"] is not None for c in chunks) == 1
    else:
        message = translator.response(body.encode())["choices"][0]
        finish = message["finish_reason"]
        content = message["message"]["content"] or ""
        reasoning = message["message"].get("reasoning") or ""
        calls = message["message"].get("tool_calls") or []
    raw = [orjson.loads(d) for d in sse_data(body)] if streaming else [orjson.loads(body)]
    parts = [p for r in raw for p in r["candidates"][0]["content"]["parts"]]
    assert content == "".join(p["text"] for p in parts if "text" in p and not p.get("thought"))
    assert reasoning == "".join(p["text"] for p in parts if p.get("thought"))
    assert [(c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls] == [
        (p["functionCall"]["name"], p["functionCall"]["args"]) for p in parts if "functionCall" in p]
    assert finish == ("tool_calls" if calls else "stop")
    meta = raw[-1]["usageMetadata"]
    assert translator.usage.prompt_tokens == meta["promptTokenCount"]
    assert translator.usage.completion_tokens == meta.get("candidatesTokenCount", 0) + meta.get(
        "thoughtsTokenCount", 0)
    assert translator.upstream_id == raw[-1]["responseId"]
    assert translator.upstream_model == raw[-1]["modelVersion"]


# == the fake server ===================================================================================================

@pytest.fixture(scope="module")
def fake() -> Any:
    server = FakeGemini().start()
    yield server
    server.stop()


async def run_fake(fake: FakeGemini, reply: Reply, *, stream: bool, api_key: str | None = "fake-gemini-secret",
                   fault: Fault | None = None) -> tuple[GeminiTranslator, int, list[dict[str, Any]], bytes]:
    fake.reset()
    fake.reply(reply)
    if fault:
        fake.fault(fault)
    translator = make_translator(stream=stream, base_url=fake.base_url + "/v1beta", api_key=api_key)
    req = await translator.request({"messages": [{"role": "user", "content": "hello"}],
                                    "reasoning": {"effort": "low"}})
    chunks: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session, session.post(req.url, data=req.body,
                                                                headers=req.headers) as resp:
        if resp.status != 200 or not stream:
            return translator, resp.status, chunks, await resp.read()
        async for events in iter_sse(resp):
            for name, data in events:
                chunks += translator.stream_event(name, data)
        chunks += translator.finish()
    return translator, 200, chunks, b""


REPLY = Reply(text="The answer is 42.", reasoning="Let me think about it.", reasoning_tokens=6,
              completion_tokens=14, prompt_tokens=21, cached_tokens=4,
              tool_calls=[ToolCall("lookup", {"q": "answer", "n": [1, 2]}), ToolCall("log", {}, id="gem3id")],
              finish="tool_calls", model="gemini-2.5-flash-002")


async def test_fake_stream_translates_back_to_its_reply(fake: FakeGemini) -> None:
    translator, status, chunks, _ = await run_fake(fake, REPLY, stream=True)
    assert status == 200
    assert fake.last.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert fake.last.query == {"alt": "sse"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == REPLY.text
    assert "".join(d.get("reasoning") or "" for d in deltas) == REPLY.reasoning
    calls = [tc for d in deltas for tc in d.get("tool_calls") or ()]
    assert [(c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls] == [
        (tc.name, tc.arguments) for tc in REPLY.tool_calls]
    assert [c["index"] for c in calls] == [0, 1] and calls[1]["id"] == "gem3id"
    signatures = [d for delta in deltas for d in delta.get("reasoning_details") or ()
                  if d["type"] == "reasoning.encrypted"]
    assert signatures == [{"type": "reasoning.encrypted", "data": FAKE_SIGNATURE, "id": calls[0]["id"],
                           "format": "google-gemini-v1", "index": 1}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    usage = translator.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens, usage.cached_tokens) == (
        REPLY.prompt_tokens, REPLY.completion_tokens, REPLY.reasoning_tokens, REPLY.cached_tokens)
    assert translator.upstream_model == "gemini-2.5-flash-002"
    sent = fake.last.json
    assert fake.last.headers["x-goog-api-key"] == "fake-gemini-secret"
    assert sent["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 1024}


async def test_fake_non_stream_matches_stream(fake: FakeGemini) -> None:
    translator, status, _, body = await run_fake(fake, REPLY, stream=False)
    assert status == 200 and fake.last.path.endswith(":generateContent")
    message = translator.response(body)["choices"][0]
    assert message["finish_reason"] == "tool_calls" and message["native_finish_reason"] == "STOP"
    assert message["message"]["content"] == REPLY.text
    assert message["message"]["reasoning"] == REPLY.reasoning
    assert [c["function"]["name"] for c in message["message"]["tool_calls"]] == ["lookup", "log"]
    # streamGenerateContent without alt=sse answers a JSON array of the stream's responses.
    async with aiohttp.ClientSession() as session, session.post(
            fake.base_url + "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            data=orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
            headers={"x-goog-api-key": "fake-gemini-secret"}) as resp:
        array = await resp.read()
    assert array.lstrip().startswith(b"[")
    assert make_translator().response(array)["choices"][0]["message"]["content"] == Reply().text
    for finish, native in (("stop", "STOP"), ("length", "MAX_TOKENS"), ("content_filter", "SAFETY")):
        translator, _, _, body = await run_fake(fake, Reply(text=None if finish == "content_filter" else "x",
                                                            finish=finish), stream=False)
        choice = translator.response(body)["choices"][0]
        assert (choice["finish_reason"], choice["native_finish_reason"]) == (finish, native)


async def test_fake_errors(fake: FakeGemini) -> None:
    adapter = GeminiAdapter(ConnectionConfig(name="g", type="gemini", base_url="https://x/v1beta"))
    _, status, _, body = await run_fake(fake, Reply(), stream=False, api_key="wrong")
    assert status == 400 and orjson.loads(body)["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    _, status, _, body = await run_fake(fake, Reply(), stream=False, api_key=None)
    assert status == 403 and orjson.loads(body)["error"]["status"] == "PERMISSION_DENIED"
    _, status, _, body = await run_fake(fake, Reply(), stream=True, fault=Fault(status=429, message="slow down"))
    assert status == 429 and orjson.loads(body)["error"] == {"code": 429, "message": "slow down",
                                                             "status": "RESOURCE_EXHAUSTED"}
    assert adapter.error_message(429, body) == "slow down"
    with pytest.raises(UpstreamStreamError) as info:
        await run_fake(fake, Reply(text="one two three"), stream=True,
                       fault=Fault(error_event_after=1, message="stream broke"))
    assert info.value.message == "stream broke" and info.value.code == 500
