"""The translation table: every front format x every provider type x seven scenarios, end to end.

Each case sends one request with plain httpx to the real gateway and compares, by exact equality,
(1) the JSON body the fake upstream received with the body written below, and (2) what the client got: the whole
body, or for streams every SSE event (event name + data) in order. Only volatile values are normalised (see
`Normaliser`): the generation id's random part, wall-clock timestamps, the digest in ids the gateway makes up for
Gemini 2.5 tool calls, and the base64 of the gateway's reasoning envelopes (decoded, so their content is compared).
Costs are exact: PRICING is fixed.

The expected bodies are written out from each API's documented wire format (the fakes in tests/fakes speak what the
recorded provider traffic shows); they are the reference for how Crossroads translates:

- fronts: chat = OpenAI Chat Completions as OpenRouter extends it (`gen-` ids, `provider`, usage with `cost`),
  messages = Anthropic Messages, responses = OpenAI Responses;
- upstreams: "oai" = OpenAI Chat Completions, "ant" = Anthropic Messages, "gem" = Gemini generateContent;
- messages -> ant is a pass-through: the client's body goes up with only `model` replaced and the upstream's answer
  (body or SSE events) comes back byte-for-byte.

Scenarios: a) system + user, b) a streamed, c) forced tool call, d) c streamed, e) follow-up turn carrying the tool
call and its result, f) stop sequences + max tokens + temperature, g) a finish by length.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import MASTER_KEY
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import FakeUpstream, Reply, ToolCall
from tests.fakes.gemini_fake import FAKE_SIGNATURE as GEMINI_SIGNATURE

FRONTS = {"chat": "/api/v1/chat/completions", "messages": "/api/v1/messages", "responses": "/api/v1/responses"}
PROVIDERS = ("oai", "ant", "gem")
SCENARIOS = ("a", "b", "c", "d", "e", "f", "g")
FAKES = {"oai": "fake_openai", "ant": "fake_anthropic", "gem": "fake_gemini"}
MODEL = {"oai": "openai/gpt-4o-mini", "ant": "anthropic/claude-sonnet-4", "gem": "google/gemini-2.5-flash"}
STREAMED = {"b", "d"}

# -- the conversation ----------------------------------------------------------------------------------------------
SYSTEM = "You are a terse assistant."
HELLO = "Say hi in Portuguese."
WEATHER = "What is the weather in Lisbon?"
COUNT = "Count to three, then say END."
STORY = "Tell me a long story."
ANSWER = "It is 21 °C in Lisbon."
TOOL_RESULT = '{"temp_c": 21}'
ARGS = '{"city":"Lisbon"}'  # how every translator serialises {"city": "Lisbon"} (compact JSON)
PARAMS = {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
          "required": ["city"]}
DESCRIPTION = "Current weather for a city"

# The tool in each API's own spelling.
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "description": DESCRIPTION, "parameters": PARAMS}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": DESCRIPTION, "input_schema": PARAMS}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": DESCRIPTION, "parameters": PARAMS}
GEMINI_TOOLS = [{"functionDeclarations": [{"name": "get_weather", "description": DESCRIPTION,
                                           "parametersJsonSchema": PARAMS}]}]

# Tool-call ids as each provider makes them. Gemini 2.5 gives none: the gateway makes `tool_<n>_<name>_<digest>`
# (normalised to HASH below), and for the follow-up turn the client sends back one such id.
CALL_ID = {"oai": "call_w1Lisbon", "ant": "toolu_01Lisbon", "gem": None}
GEM_CALL = "tool_0_get_weather_HASH"
HISTORY_CALL_ID = {"oai": "call_w1Lisbon", "ant": "toolu_01Lisbon", "gem": "tool_0_get_weather_0123456789abcdef"}
CALL = "<call-id>"  # placeholder in the follow-up requests, filled with HISTORY_CALL_ID[provider]


def reply(scenario: str, provider: str) -> Reply:
    """What the fake model answers in each scenario."""
    if scenario in ("c", "d"):
        return Reply(text=None, tool_calls=[ToolCall("get_weather", {"city": "Lisbon"}, id=CALL_ID[provider])],
                     finish="tool_calls", prompt_tokens=60, completion_tokens=15)
    return {
        "a": Reply(text="Olá!", prompt_tokens=20, completion_tokens=3),
        "b": Reply(text="Olá! Tudo bem?", prompt_tokens=20, completion_tokens=6),
        "e": Reply(text=ANSWER, prompt_tokens=90, completion_tokens=10),
        "f": Reply(text="One, two, three.", prompt_tokens=25, completion_tokens=6),
        "g": Reply(text="Once upon a time", finish="length", prompt_tokens=18, completion_tokens=5),
    }[scenario]


# (prompt tokens, completion tokens, cost, prompt cost, completion cost) at PRICING (1 and 2 USD per million).
USAGE = {
    "a": (20, 3, 2.6e-05, 2e-05, 6e-06),
    "b": (20, 6, 3.2e-05, 2e-05, 1.2e-05),
    "c": (60, 15, 9e-05, 6e-05, 3e-05),
    "d": (60, 15, 9e-05, 6e-05, 3e-05),
    "e": (90, 10, 0.00011, 9e-05, 2e-05),
    "f": (25, 6, 3.7e-05, 2.5e-05, 1.2e-05),
    "g": (18, 5, 2.8e-05, 1.8e-05, 1e-05),
}

# -- client requests (without `model`, added per provider) ---------------------------------------------------------
CHAT_FOLLOW_UP = [
    {"role": "system", "content": SYSTEM}, {"role": "user", "content": WEATHER},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": CALL, "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]},
    {"role": "tool", "tool_call_id": CALL, "content": TOOL_RESULT}]
CHAT_FORCED = {"type": "function", "function": {"name": "get_weather"}}

CLIENT: dict[str, dict[str, dict[str, Any]]] = {
    "chat": {
        "a": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": HELLO}]},
        "b": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": HELLO}],
              "stream": True},
        "c": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": WEATHER}],
              "tools": [CHAT_TOOL], "tool_choice": CHAT_FORCED},
        "d": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": WEATHER}],
              "tools": [CHAT_TOOL], "tool_choice": CHAT_FORCED, "stream": True},
        "e": {"messages": CHAT_FOLLOW_UP, "tools": [CHAT_TOOL]},
        "f": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": COUNT}],
              "stop": ["END"], "max_tokens": 50, "temperature": 0.3},
        "g": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": STORY}],
              "max_tokens": 5},
    },
    "messages": {
        "a": {"max_tokens": 1024, "system": SYSTEM, "messages": [{"role": "user", "content": HELLO}]},
        "b": {"max_tokens": 1024, "system": SYSTEM, "messages": [{"role": "user", "content": HELLO}],
              "stream": True},
        "c": {"max_tokens": 1024, "system": SYSTEM, "messages": [{"role": "user", "content": WEATHER}],
              "tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "tool", "name": "get_weather"}},
        "d": {"max_tokens": 1024, "system": SYSTEM, "messages": [{"role": "user", "content": WEATHER}],
              "tools": [ANTHROPIC_TOOL], "tool_choice": {"type": "tool", "name": "get_weather"}, "stream": True},
        "e": {"max_tokens": 1024, "system": SYSTEM, "tools": [ANTHROPIC_TOOL], "messages": [
            {"role": "user", "content": WEATHER},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": CALL, "name": "get_weather", "input": {"city": "Lisbon"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": CALL, "content": TOOL_RESULT}]}]},
        "f": {"max_tokens": 50, "system": SYSTEM, "messages": [{"role": "user", "content": COUNT}],
              "stop_sequences": ["END"], "temperature": 0.3},
        "g": {"max_tokens": 5, "system": SYSTEM, "messages": [{"role": "user", "content": STORY}]},
    },
    "responses": {
        "a": {"instructions": SYSTEM, "input": HELLO},
        "b": {"instructions": SYSTEM, "input": HELLO, "stream": True},
        "c": {"instructions": SYSTEM, "input": WEATHER, "tools": [RESPONSES_TOOL],
              "tool_choice": {"type": "function", "name": "get_weather"}},
        "d": {"instructions": SYSTEM, "input": WEATHER, "tools": [RESPONSES_TOOL],
              "tool_choice": {"type": "function", "name": "get_weather"}, "stream": True},
        "e": {"instructions": SYSTEM, "tools": [RESPONSES_TOOL], "input": [
            {"role": "user", "content": WEATHER},
            {"type": "function_call", "call_id": CALL, "name": "get_weather", "arguments": ARGS},
            {"type": "function_call_output", "call_id": CALL, "output": TOOL_RESULT}]},
        # The Responses API has no stop sequences: `stop` is not part of it and is dropped (reported as such).
        "f": {"instructions": SYSTEM, "input": COUNT, "stop": ["END"], "max_output_tokens": 50, "temperature": 0.3},
        "g": {"instructions": SYSTEM, "input": STORY, "max_output_tokens": 5},
    },
}


# == what the upstream receives ====================================================================================
@dataclass(frozen=True)
class Upstream:
    path: str
    body: dict[str, Any]
    query: dict[str, str] | None = None


def openai(body: dict[str, Any]) -> Upstream:
    return Upstream("/v1/chat/completions", {"model": "gpt-4o-mini", **body})


def anthropic(body: dict[str, Any]) -> Upstream:
    return Upstream("/v1/messages", {"model": "claude-sonnet-4-20250514", **body})


def gemini(body: dict[str, Any], *, stream: bool = False) -> Upstream:
    if stream:
        return Upstream("/v1beta/models/gemini-2.5-flash:streamGenerateContent", body, {"alt": "sse"})
    return Upstream("/v1beta/models/gemini-2.5-flash:generateContent", body)


def chat_msgs(user: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def ant_user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def gem_user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "parts": [{"text": text}]}]


GEM_SYSTEM = {"parts": [{"text": SYSTEM}]}
STREAM_OPTIONS = {"include_usage": True}  # the gateway always asks OpenAI for usage: it bills from it
ANT_MAX = 64000  # Anthropic requires max_tokens: without one the model's catalog maximum is sent
ANT_FORCED = {"type": "tool", "name": "get_weather"}
GEM_FORCED = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
# The follow-up turn in each upstream's terms (ids per provider, see HISTORY_CALL_ID).
OAI_FOLLOW_UP = [
    {"role": "system", "content": SYSTEM}, {"role": "user", "content": WEATHER},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_w1Lisbon", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}]},
    {"role": "tool", "tool_call_id": "call_w1Lisbon", "content": TOOL_RESULT}]
ANT_FOLLOW_UP = [
    {"role": "user", "content": [{"type": "text", "text": WEATHER}]},
    {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_01Lisbon", "name": "get_weather", "input": {"city": "Lisbon"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01Lisbon", "content": TOOL_RESULT}]}]
# Gemini 2.5 ids are the gateway's own: they are not sent, Gemini pairs call and response by name and order.
GEM_FOLLOW_UP = [
    {"role": "user", "parts": [{"text": WEATHER}]},
    {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Lisbon"}}}]},
    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}]}]

UPSTREAM: dict[str, dict[tuple[str, str], Upstream]] = {
    "a": {
        ("chat", "oai"): openai({"messages": chat_msgs(HELLO)}),
        ("messages", "oai"): openai({"messages": chat_msgs(HELLO), "max_tokens": 1024}),
        ("responses", "oai"): openai({"messages": chat_msgs(HELLO)}),
        ("chat", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(HELLO), "max_tokens": ANT_MAX}),
        ("messages", "ant"): anthropic({"max_tokens": 1024, "system": SYSTEM,
                                        "messages": [{"role": "user", "content": HELLO}]}),
        ("responses", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(HELLO), "max_tokens": ANT_MAX}),
        ("chat", "gem"): gemini({"contents": gem_user(HELLO), "systemInstruction": GEM_SYSTEM}),
        ("messages", "gem"): gemini({"contents": gem_user(HELLO), "systemInstruction": GEM_SYSTEM,
                                     "generationConfig": {"maxOutputTokens": 1024}}),
        ("responses", "gem"): gemini({"contents": gem_user(HELLO), "systemInstruction": GEM_SYSTEM}),
    },
    "b": {
        ("chat", "oai"): openai({"messages": chat_msgs(HELLO), "stream": True, "stream_options": STREAM_OPTIONS}),
        ("messages", "oai"): openai({"messages": chat_msgs(HELLO), "max_tokens": 1024, "stream": True,
                                     "stream_options": STREAM_OPTIONS}),
        ("responses", "oai"): openai({"messages": chat_msgs(HELLO), "stream": True,
                                      "stream_options": STREAM_OPTIONS}),
        ("chat", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(HELLO), "max_tokens": ANT_MAX,
                                    "stream": True}),
        ("messages", "ant"): anthropic({"max_tokens": 1024, "system": SYSTEM,
                                        "messages": [{"role": "user", "content": HELLO}], "stream": True}),
        ("responses", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(HELLO), "max_tokens": ANT_MAX,
                                         "stream": True}),
        ("chat", "gem"): gemini({"contents": gem_user(HELLO), "systemInstruction": GEM_SYSTEM}, stream=True),
        ("messages", "gem"): gemini({"contents": gem_user(HELLO), "systemInstruction": GEM_SYSTEM,
                                     "generationConfig": {"maxOutputTokens": 1024}}, stream=True),
        ("responses", "gem"): gemini({"contents": gem_user(HELLO), "systemInstruction": GEM_SYSTEM}, stream=True),
    },
    "c": {
        ("chat", "oai"): openai({"messages": chat_msgs(WEATHER), "tools": [CHAT_TOOL], "tool_choice": CHAT_FORCED}),
        ("messages", "oai"): openai({"messages": chat_msgs(WEATHER), "max_tokens": 1024, "tools": [CHAT_TOOL],
                                     "tool_choice": CHAT_FORCED}),
        ("responses", "oai"): openai({"messages": chat_msgs(WEATHER), "tools": [CHAT_TOOL],
                                      "tool_choice": CHAT_FORCED}),
        ("chat", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(WEATHER), "tools": [ANTHROPIC_TOOL],
                                    "tool_choice": ANT_FORCED, "max_tokens": ANT_MAX}),
        ("messages", "ant"): anthropic({"max_tokens": 1024, "system": SYSTEM,
                                        "messages": [{"role": "user", "content": WEATHER}],
                                        "tools": [ANTHROPIC_TOOL], "tool_choice": ANT_FORCED}),
        ("responses", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(WEATHER),
                                         "tools": [ANTHROPIC_TOOL], "tool_choice": ANT_FORCED,
                                         "max_tokens": ANT_MAX}),
        ("chat", "gem"): gemini({"contents": gem_user(WEATHER), "systemInstruction": GEM_SYSTEM,
                                 "tools": GEMINI_TOOLS, "toolConfig": GEM_FORCED}),
        ("messages", "gem"): gemini({"contents": gem_user(WEATHER), "systemInstruction": GEM_SYSTEM,
                                     "generationConfig": {"maxOutputTokens": 1024}, "tools": GEMINI_TOOLS,
                                     "toolConfig": GEM_FORCED}),
        ("responses", "gem"): gemini({"contents": gem_user(WEATHER), "systemInstruction": GEM_SYSTEM,
                                      "tools": GEMINI_TOOLS, "toolConfig": GEM_FORCED}),
    },
    "d": {
        ("chat", "oai"): openai({"messages": chat_msgs(WEATHER), "tools": [CHAT_TOOL], "tool_choice": CHAT_FORCED,
                                 "stream": True, "stream_options": STREAM_OPTIONS}),
        ("messages", "oai"): openai({"messages": chat_msgs(WEATHER), "max_tokens": 1024, "tools": [CHAT_TOOL],
                                     "tool_choice": CHAT_FORCED, "stream": True, "stream_options": STREAM_OPTIONS}),
        ("responses", "oai"): openai({"messages": chat_msgs(WEATHER), "tools": [CHAT_TOOL],
                                      "tool_choice": CHAT_FORCED, "stream": True,
                                      "stream_options": STREAM_OPTIONS}),
        ("chat", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(WEATHER), "tools": [ANTHROPIC_TOOL],
                                    "tool_choice": ANT_FORCED, "max_tokens": ANT_MAX, "stream": True}),
        ("messages", "ant"): anthropic({"max_tokens": 1024, "system": SYSTEM,
                                        "messages": [{"role": "user", "content": WEATHER}],
                                        "tools": [ANTHROPIC_TOOL], "tool_choice": ANT_FORCED, "stream": True}),
        ("responses", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(WEATHER),
                                         "tools": [ANTHROPIC_TOOL], "tool_choice": ANT_FORCED,
                                         "max_tokens": ANT_MAX, "stream": True}),
        ("chat", "gem"): gemini({"contents": gem_user(WEATHER), "systemInstruction": GEM_SYSTEM,
                                 "tools": GEMINI_TOOLS, "toolConfig": GEM_FORCED}, stream=True),
        ("messages", "gem"): gemini({"contents": gem_user(WEATHER), "systemInstruction": GEM_SYSTEM,
                                     "generationConfig": {"maxOutputTokens": 1024}, "tools": GEMINI_TOOLS,
                                     "toolConfig": GEM_FORCED}, stream=True),
        ("responses", "gem"): gemini({"contents": gem_user(WEATHER), "systemInstruction": GEM_SYSTEM,
                                      "tools": GEMINI_TOOLS, "toolConfig": GEM_FORCED}, stream=True),
    },
    "e": {
        ("chat", "oai"): openai({"messages": OAI_FOLLOW_UP, "tools": [CHAT_TOOL]}),
        ("messages", "oai"): openai({"messages": OAI_FOLLOW_UP, "max_tokens": 1024, "tools": [CHAT_TOOL]}),
        ("responses", "oai"): openai({"messages": OAI_FOLLOW_UP, "tools": [CHAT_TOOL]}),
        ("chat", "ant"): anthropic({"system": SYSTEM, "messages": ANT_FOLLOW_UP, "tools": [ANTHROPIC_TOOL],
                                    "max_tokens": ANT_MAX}),
        ("messages", "ant"): anthropic({"max_tokens": 1024, "system": SYSTEM, "tools": [ANTHROPIC_TOOL],
                                        "messages": [
                                            {"role": "user", "content": WEATHER},
                                            {"role": "assistant", "content": [
                                                {"type": "tool_use", "id": "toolu_01Lisbon", "name": "get_weather",
                                                 "input": {"city": "Lisbon"}}]},
                                            {"role": "user", "content": [
                                                {"type": "tool_result", "tool_use_id": "toolu_01Lisbon",
                                                 "content": TOOL_RESULT}]}]}),
        ("responses", "ant"): anthropic({"system": SYSTEM, "messages": ANT_FOLLOW_UP, "tools": [ANTHROPIC_TOOL],
                                         "max_tokens": ANT_MAX}),
        ("chat", "gem"): gemini({"contents": GEM_FOLLOW_UP, "systemInstruction": GEM_SYSTEM,
                                 "tools": GEMINI_TOOLS}),
        ("messages", "gem"): gemini({"contents": GEM_FOLLOW_UP, "systemInstruction": GEM_SYSTEM,
                                     "generationConfig": {"maxOutputTokens": 1024}, "tools": GEMINI_TOOLS}),
        ("responses", "gem"): gemini({"contents": GEM_FOLLOW_UP, "systemInstruction": GEM_SYSTEM,
                                      "tools": GEMINI_TOOLS}),
    },
    "f": {
        ("chat", "oai"): openai({"messages": chat_msgs(COUNT), "stop": ["END"], "max_tokens": 50,
                                 "temperature": 0.3}),
        ("messages", "oai"): openai({"messages": chat_msgs(COUNT), "stop": ["END"], "max_tokens": 50,
                                     "temperature": 0.3}),
        ("responses", "oai"): openai({"messages": chat_msgs(COUNT), "max_tokens": 50, "temperature": 0.3}),
        ("chat", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(COUNT), "stop_sequences": ["END"],
                                    "max_tokens": 50, "temperature": 0.3}),
        ("messages", "ant"): anthropic({"max_tokens": 50, "system": SYSTEM,
                                        "messages": [{"role": "user", "content": COUNT}],
                                        "stop_sequences": ["END"], "temperature": 0.3}),
        ("responses", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(COUNT), "max_tokens": 50,
                                         "temperature": 0.3}),
        ("chat", "gem"): gemini({"contents": gem_user(COUNT), "systemInstruction": GEM_SYSTEM, "generationConfig": {
            "maxOutputTokens": 50, "temperature": 0.3, "stopSequences": ["END"]}}),
        ("messages", "gem"): gemini({"contents": gem_user(COUNT), "systemInstruction": GEM_SYSTEM,
                                     "generationConfig": {"maxOutputTokens": 50, "temperature": 0.3,
                                                          "stopSequences": ["END"]}}),
        ("responses", "gem"): gemini({"contents": gem_user(COUNT), "systemInstruction": GEM_SYSTEM,
                                      "generationConfig": {"maxOutputTokens": 50, "temperature": 0.3}}),
    },
    "g": {
        ("chat", "oai"): openai({"messages": chat_msgs(STORY), "max_tokens": 5}),
        ("messages", "oai"): openai({"messages": chat_msgs(STORY), "max_tokens": 5}),
        ("responses", "oai"): openai({"messages": chat_msgs(STORY), "max_tokens": 5}),
        ("chat", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(STORY), "max_tokens": 5}),
        ("messages", "ant"): anthropic({"max_tokens": 5, "system": SYSTEM,
                                        "messages": [{"role": "user", "content": STORY}]}),
        ("responses", "ant"): anthropic({"system": SYSTEM, "messages": ant_user(STORY), "max_tokens": 5}),
        ("chat", "gem"): gemini({"contents": gem_user(STORY), "systemInstruction": GEM_SYSTEM,
                                 "generationConfig": {"maxOutputTokens": 5}}),
        ("messages", "gem"): gemini({"contents": gem_user(STORY), "systemInstruction": GEM_SYSTEM,
                                     "generationConfig": {"maxOutputTokens": 5}}),
        ("responses", "gem"): gemini({"contents": gem_user(STORY), "systemInstruction": GEM_SYSTEM,
                                      "generationConfig": {"maxOutputTokens": 5}}),
    },
}


# == what the client gets ==========================================================================================
TS = "<ts>"  # a wall-clock timestamp (checked to be recent, then replaced)
GEN = "gen-SUFFIX"  # SUFFIX: the random part of this request's generation id, which every front's ids reuse


def chat_usage(scenario: str) -> dict[str, Any]:
    prompt, completion, cost, prompt_cost, completion_cost = USAGE[scenario]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost": cost, "is_byok": False, "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "cost_details": {"upstream_inference_cost": cost, "upstream_inference_prompt_cost": prompt_cost,
                             "upstream_inference_completions_cost": completion_cost},
            "completion_tokens_details": {"reasoning_tokens": 0}}


def completion(provider: str, scenario: str, message: dict[str, Any], finish: str, native: str) -> dict[str, Any]:
    """An OpenRouter chat completion; OpenAI's own system_fingerprint and service_tier pass through."""
    out = {"id": GEN, "object": "chat.completion", "created": TS, "model": MODEL[provider], "provider": provider,
           "system_fingerprint": "fp_fake" if provider == "oai" else None,
           "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                        "native_finish_reason": native}],
           "usage": chat_usage(scenario)}
    if provider == "oai":
        out["service_tier"] = "default"
    return out


def chunk(provider: str, delta: dict[str, Any], finish: str | None = None,
          native: str | None = None) -> tuple[None, dict[str, Any]]:
    """One chat stream chunk. An OpenAI upstream's chunk keeps its own extra fields (logprobs, service_tier...)."""
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": native}
    data: dict[str, Any] = {"id": GEN, "object": "chat.completion.chunk", "created": TS, "model": MODEL[provider],
                            "provider": provider, "choices": [choice]}
    if provider == "oai":
        choice["logprobs"] = None
        data.update(service_tier="default", system_fingerprint="fp_fake")
    return None, data


def chat_end(provider: str, scenario: str) -> list[tuple[None, Any]]:
    """OpenRouter's usage chunk (no choices) and the terminator."""
    return [(None, {"id": GEN, "object": "chat.completion.chunk", "created": TS, "model": MODEL[provider],
                    "provider": provider, "choices": [], "usage": chat_usage(scenario)}),
            (None, "[DONE]")]


def ant_usage(scenario: str) -> dict[str, int]:
    prompt, completion = USAGE[scenario][:2]
    return {"input_tokens": prompt, "output_tokens": completion, "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0}


def message(provider: str, scenario: str, content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    """An Anthropic message object made by the gateway (the upstream is not Anthropic)."""
    return {"id": "msg_SUFFIX", "type": "message", "role": "assistant", "model": MODEL[provider],
            "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": ant_usage(scenario)}


def fake_anthropic_usage(scenario: str, **override: int) -> dict[str, Any]:
    prompt, completion = USAGE[scenario][:2]
    return {"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": completion, "service_tier": "standard", "inference_geo": "not_available", **override}


def native_message(scenario: str, content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    """Anthropic's own message, as the fake upstream sent it (messages -> ant is a pass-through)."""
    return {"model": "claude-sonnet-4-20250514", "id": "msg_01FakeMessage0123456789", "type": "message",
            "role": "assistant", "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": fake_anthropic_usage(scenario)}


def ev(name: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    """An Anthropic SSE event: the event name repeated as the data's type."""
    return name, {"type": name, **fields}


def messages_start(provider: str, scenario: str, output_tokens: int = 0) -> tuple[str, dict[str, Any]]:
    # message_start reports the usage known when the first event arrives: Gemini sends its prompt count with every
    # chunk, an OpenAI upstream only at the end (zeros here; message_delta carries the totals).
    input_tokens = USAGE[scenario][0] if provider == "gem" else 0
    return ev("message_start", message={
        "id": "msg_SUFFIX", "type": "message", "role": "assistant", "model": MODEL[provider], "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0}})


def messages_end(scenario: str, stop_reason: str, index: int) -> list[tuple[str, dict[str, Any]]]:
    return [ev("content_block_stop", index=index),
            ev("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": None},
               usage=ant_usage(scenario)),
            ev("message_stop")]


def native_start(scenario: str) -> tuple[str, dict[str, Any]]:
    return ev("message_start", message={
        "model": "claude-sonnet-4-20250514", "id": "msg_01FakeMessage0123456789", "type": "message",
        "role": "assistant", "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": fake_anthropic_usage(scenario, output_tokens=1)})


def native_end(scenario: str, stop_reason: str) -> list[tuple[str, dict[str, Any]]]:
    prompt, completion = USAGE[scenario][:2]
    return [ev("content_block_stop", index=0),
            ev("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": None},
               usage={"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": completion}),
            ev("message_stop")]


# The Response fields echoed from the request (OpenAI's defaults where the request left them out).
RESPONSE_ECHO = {"instructions": SYSTEM, "max_output_tokens": None, "max_tool_calls": None,
                 "parallel_tool_calls": True, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                 "previous_response_id": None,
                 "reasoning": {"effort": None, "summary": None}, "safety_identifier": None, "store": True,
                 "temperature": None, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
                 "top_p": None, "truncation": "disabled", "user": None, "metadata": {}}
RESPONSES_FORCED = {"type": "function", "name": "get_weather"}
ECHO_OVERRIDES = {
    "a": {}, "b": {},
    "c": {"tools": [RESPONSES_TOOL], "tool_choice": RESPONSES_FORCED},
    "d": {"tools": [RESPONSES_TOOL], "tool_choice": RESPONSES_FORCED},
    "e": {"tools": [RESPONSES_TOOL]},
    "f": {"max_output_tokens": 50, "temperature": 0.3},
    "g": {"max_output_tokens": 5},
}


def resp_usage(scenario: str) -> dict[str, Any]:
    prompt, completion = USAGE[scenario][:2]
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def response(provider: str, scenario: str, output: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    """A Response object; `in_progress` is the snapshot the stream opens with (no output, no usage yet)."""
    return {"id": "resp_SUFFIX", "object": "response", "created_at": TS, "status": status, "background": False,
            "completed_at": TS if status == "completed" else None, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            **RESPONSE_ECHO, **ECHO_OVERRIDES[scenario], "model": MODEL[provider], "output": output,
            "usage": None if status == "in_progress" else resp_usage(scenario)}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def msg_item(text: str, status: str = "completed", index: int = 0) -> dict[str, Any]:
    return {"id": f"msg_SUFFIX_{index}", "type": "message", "status": status, "content": [output_text(text)],
            "role": "assistant"}


def call_item(call_id: str, arguments: str, status: str = "completed", index: int = 0) -> dict[str, Any]:
    return {"id": f"fc_SUFFIX_{index}", "type": "function_call", "status": status, "arguments": arguments,
            "call_id": call_id, "name": "get_weather"}


def numbered(*events: tuple[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Responses SSE events: the name repeated as `type`, then the stream's running sequence_number."""
    return [(name, {"type": name, **fields, "sequence_number": n}) for n, (name, fields) in enumerate(events)]


def opened(provider: str, scenario: str) -> list[tuple[str, dict[str, Any]]]:
    snapshot = response(provider, scenario, [], "in_progress")
    return [("response.created", {"response": snapshot}), ("response.in_progress", {"response": snapshot})]


def text_events(provider: str, scenario: str, pieces: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """A streamed Response holding one message, in OpenAI's event order."""
    text = "".join(pieces)
    where = {"item_id": "msg_SUFFIX_0", "output_index": 0}
    return numbered(
        *opened(provider, scenario),
        ("response.output_item.added", {"output_index": 0, "item": {
            "id": "msg_SUFFIX_0", "type": "message", "status": "in_progress", "content": [], "role": "assistant"}}),
        ("response.content_part.added", {**where, "content_index": 0, "part": output_text("")}),
        *[("response.output_text.delta", {**where, "content_index": 0, "delta": p, "logprobs": []}) for p in pieces],
        ("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []}),
        ("response.content_part.done", {**where, "content_index": 0, "part": output_text(text)}),
        ("response.output_item.done", {"output_index": 0, "item": msg_item(text)}),
        ("response.completed", {"response": response(provider, scenario, [msg_item(text)])}))


# The Gemini thought signature that came with the call, as OpenRouter's reasoning_details entry; the Messages and
# Responses fronts carry it in the gateway's envelope (shown decoded) so a client can send it back.
GEM_DETAIL = {"type": "reasoning.encrypted", "data": GEMINI_SIGNATURE, "id": GEM_CALL, "format": "google-gemini-v1",
              "index": 0}
GEM_REDACTED = {"type": "redacted_thinking",
                "data": {"crossroads.v1": {"format": "google-gemini-v1", "id": GEM_CALL, "data": GEMINI_SIGNATURE}}}
GEM_REASONING_ITEM = {"id": "rs_SUFFIX_0", "type": "reasoning", "summary": [],
                      "encrypted_content": {"crossroads.v1": [GEM_DETAIL]}}
ARG_PIECES = ['{"cit', 'y":"L', 'isbon', '"}']  # how the OpenAI and Anthropic fakes stream ARGS


def oai_text(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "refusal": None, "annotations": [], "reasoning": None}


def text_msg(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "refusal": None, "reasoning": None}


OAI_CALL_MESSAGE = {"role": "assistant", "content": None, "refusal": None, "annotations": [], "reasoning": None,
                    "tool_calls": [{"id": "call_w1Lisbon", "type": "function",
                                    "function": {"name": "get_weather", "arguments": ARGS}}]}
ANT_CALL_MESSAGE = {"role": "assistant", "content": None, "refusal": None, "reasoning": None,
                    "tool_calls": [{"index": 0, "id": "toolu_01Lisbon", "type": "function",
                                    "function": {"name": "get_weather", "arguments": ARGS}}]}
GEM_CALL_MESSAGE = {"role": "assistant", "content": None, "refusal": None, "reasoning": None,
                    "tool_calls": [{"id": GEM_CALL, "type": "function",
                                    "function": {"name": "get_weather", "arguments": ARGS}}],
                    "reasoning_details": [GEM_DETAIL]}
TOOL_USE = {"type": "tool_use", "name": "get_weather", "input": {"city": "Lisbon"}}
NATIVE_TOOL_USE = {"type": "tool_use", "id": "toolu_01Lisbon", "name": "get_weather", "input": {"city": "Lisbon"},
                   "caller": {"type": "direct"}}


def text_case(scenario: str, text: str, finish: str = "stop") -> dict[tuple[str, str], Any]:
    """The nine non-stream answers of a scenario whose reply is plain text."""
    length = finish == "length"
    native = {"oai": finish, "ant": "max_tokens" if length else "end_turn", "gem": "MAX_TOKENS" if length else "STOP"}
    stop_reason = "max_tokens" if length else "end_turn"
    status = "incomplete" if length else "completed"
    return {
        ("chat", "oai"): completion("oai", scenario, oai_text(text), finish, native["oai"]),
        ("chat", "ant"): completion("ant", scenario, text_msg(text), finish, native["ant"]),
        ("chat", "gem"): completion("gem", scenario, text_msg(text), finish, native["gem"]),
        ("messages", "oai"): message("oai", scenario, [{"type": "text", "text": text}], stop_reason),
        ("messages", "ant"): native_message(scenario, [{"type": "text", "text": text}], stop_reason),
        ("messages", "gem"): message("gem", scenario, [{"type": "text", "text": text}], stop_reason),
        **{("responses", p): response(p, scenario, [msg_item(text, status)], status) for p in PROVIDERS},
    }


HI_PIECES = ["Olá!", " Tudo", " bem?"]

RESPONSE: dict[str, dict[tuple[str, str], Any]] = {
    "a": text_case("a", "Olá!"),
    "b": {
        ("chat", "oai"): [chunk("oai", {"role": "assistant", "content": "", "refusal": None}),
                          *[chunk("oai", {"content": p}) for p in HI_PIECES],
                          chunk("oai", {}, "stop", "stop"), *chat_end("oai", "b")],
        ("chat", "ant"): [chunk("ant", {"role": "assistant", "content": "Olá!"}),
                          chunk("ant", {"content": " Tudo"}), chunk("ant", {"content": " bem?"}),
                          chunk("ant", {}, "stop", "end_turn"), *chat_end("ant", "b")],
        ("chat", "gem"): [chunk("gem", {"role": "assistant", "content": "Olá!"}),
                          chunk("gem", {"content": " Tudo"}), chunk("gem", {"content": " bem?"}),
                          chunk("gem", {}, "stop", "STOP"), *chat_end("gem", "b")],
        **{("messages", p): [messages_start(p, "b"),
                             ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
                             *[ev("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
                               for piece in HI_PIECES],
                             *messages_end("b", "end_turn", 0)] for p in ("oai", "gem")},
        ("messages", "ant"): [native_start("b"),
                              ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
                              ev("ping"),
                              *[ev("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
                                for piece in HI_PIECES],
                              *native_end("b", "end_turn")],
        **{("responses", p): text_events(p, "b", HI_PIECES) for p in PROVIDERS},
    },
    "c": {
        ("chat", "oai"): completion("oai", "c", OAI_CALL_MESSAGE, "tool_calls", "tool_calls"),
        ("chat", "ant"): completion("ant", "c", ANT_CALL_MESSAGE, "tool_calls", "tool_use"),
        ("chat", "gem"): completion("gem", "c", GEM_CALL_MESSAGE, "tool_calls", "STOP"),
        ("messages", "oai"): message("oai", "c", [{**TOOL_USE, "id": "call_w1Lisbon"}], "tool_use"),
        ("messages", "ant"): native_message("c", [NATIVE_TOOL_USE], "tool_use"),
        ("messages", "gem"): message("gem", "c", [GEM_REDACTED, {**TOOL_USE, "id": GEM_CALL}], "tool_use"),
        ("responses", "oai"): response("oai", "c", [call_item("call_w1Lisbon", ARGS)]),
        ("responses", "ant"): response("ant", "c", [call_item("toolu_01Lisbon", ARGS)]),
        ("responses", "gem"): response("gem", "c", [GEM_REASONING_ITEM, call_item(GEM_CALL, ARGS, index=1)]),
    },
    "d": {
        ("chat", "oai"): [
            chunk("oai", {"role": "assistant", "content": "", "refusal": None}),
            chunk("oai", {"tool_calls": [{"index": 0, "id": "call_w1Lisbon", "type": "function",
                                          "function": {"name": "get_weather", "arguments": ""}}]}),
            *[chunk("oai", {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in ARG_PIECES],
            chunk("oai", {}, "tool_calls", "tool_calls"), *chat_end("oai", "d")],
        ("chat", "ant"): [
            chunk("ant", {"role": "assistant", "tool_calls": [{"index": 0, "id": "toolu_01Lisbon", "type": "function",
                                                               "function": {"name": "get_weather",
                                                                            "arguments": ""}}]}),
            *[chunk("ant", {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in ARG_PIECES],
            chunk("ant", {}, "tool_calls", "tool_use"), *chat_end("ant", "d")],
        ("chat", "gem"): [
            # Gemini sends the whole call in one part, its thought signature first.
            chunk("gem", {"role": "assistant", "reasoning_details": [GEM_DETAIL]}),
            chunk("gem", {"tool_calls": [{"index": 0, "id": GEM_CALL, "type": "function",
                                          "function": {"name": "get_weather", "arguments": ARGS}}]}),
            chunk("gem", {}, "tool_calls", "STOP"), *chat_end("gem", "d")],
        ("messages", "oai"): [
            messages_start("oai", "d"),
            ev("content_block_start", index=0, content_block={**TOOL_USE, "id": "call_w1Lisbon", "input": {}}),
            *[ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": p})
              for p in ARG_PIECES],
            *messages_end("d", "tool_use", 0)],
        ("messages", "ant"): [
            native_start("d"),
            ev("content_block_start", index=0, content_block={**NATIVE_TOOL_USE, "input": {}}),
            ev("ping"),
            *[ev("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": p})
              for p in ["", *ARG_PIECES]],
            *native_end("d", "tool_use")],
        ("messages", "gem"): [
            messages_start("gem", "d", output_tokens=15),  # the one chunk carried the whole call and its usage
            ev("content_block_start", index=0, content_block=GEM_REDACTED),
            ev("content_block_stop", index=0),
            ev("content_block_start", index=1, content_block={**TOOL_USE, "id": GEM_CALL, "input": {}}),
            ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ARGS}),
            *messages_end("d", "tool_use", 1)],
        **{("responses", p): numbered(
            *opened(p, "d"),
            ("response.output_item.added", {"output_index": 0, "item": call_item(call_id, "", "in_progress")}),
            *[("response.function_call_arguments.delta", {"item_id": "fc_SUFFIX_0", "output_index": 0, "delta": piece})
              for piece in ARG_PIECES],
            ("response.function_call_arguments.done", {"item_id": "fc_SUFFIX_0", "output_index": 0,
                                                       "name": "get_weather", "arguments": ARGS}),
            ("response.output_item.done", {"output_index": 0, "item": call_item(call_id, ARGS)}),
            ("response.completed", {"response": response(p, "d", [call_item(call_id, ARGS)])}),
        ) for p, call_id in (("oai", "call_w1Lisbon"), ("ant", "toolu_01Lisbon"))},
        ("responses", "gem"): numbered(
            *opened("gem", "d"),
            # The signature becomes a reasoning item of its own, finished before the call is added.
            ("response.output_item.added", {"output_index": 0, "item": {"id": "rs_SUFFIX_0", "type": "reasoning",
                                                                         "summary": []}}),
            ("response.output_item.done", {"output_index": 0, "item": GEM_REASONING_ITEM}),
            ("response.output_item.added", {"output_index": 1,
                                            "item": call_item(GEM_CALL, "", "in_progress", index=1)}),
            ("response.function_call_arguments.delta", {"item_id": "fc_SUFFIX_1", "output_index": 1,
                                                        "delta": ARGS}),
            ("response.function_call_arguments.done", {"item_id": "fc_SUFFIX_1", "output_index": 1,
                                                       "name": "get_weather", "arguments": ARGS}),
            ("response.output_item.done", {"output_index": 1, "item": call_item(GEM_CALL, ARGS, index=1)}),
            ("response.completed", {"response": response(
                "gem", "d", [GEM_REASONING_ITEM, call_item(GEM_CALL, ARGS, index=1)])})),
    },
    "e": text_case("e", ANSWER),
    "f": text_case("f", "One, two, three."),
    "g": text_case("g", "Once upon a time", finish="length"),
}


# == running a case ================================================================================================
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
ENVELOPE = "crossroads.v1."
TIMESTAMP_KEYS = frozenset({"created", "created_at", "completed_at"})
# The id the gateway makes for a Gemini 2.5 call: tool_<position>_<name>_<16 hex of the upstream response id>.
_GEMINI_CALL_ID = re.compile(r"\btool_(\d+)_([A-Za-z0-9_-]+?)_([0-9a-f]{16})\b")


class Normaliser:
    """Replaces the volatile parts of one case's bodies (see the module docstring); everything else stays.

    Each distinct Gemini call-id digest gets its own placeholder (HASH, HASH2, ...), so two places that should name
    the same call still have to agree.
    """

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.now = time.time()
        self.digests: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key in TIMESTAMP_KEYS and isinstance(item, int) and not isinstance(item, bool):
                    assert abs(item - self.now) < 300, f"{key}={item} is not a current Unix timestamp"
                    out[key] = TS
                else:
                    out[key] = self(item)
            return out
        if isinstance(value, list | tuple):
            return type(value)(self(item) for item in value)
        if isinstance(value, str):
            if value.startswith(ENVELOPE):
                # Reasoning state packed for the client: compare what it holds, not its base64.
                return {"crossroads.v1": self(orjson.loads(base64.urlsafe_b64decode(value[len(ENVELOPE):])))}
            return _GEMINI_CALL_ID.sub(self._call_id, value.replace(self.suffix, "SUFFIX"))
        return value

    def _call_id(self, match: re.Match[str]) -> str:
        digest = match.group(3)
        if digest not in self.digests:
            self.digests[digest] = "HASH" if not self.digests else f"HASH{len(self.digests) + 1}"
        return f"tool_{match.group(1)}_{match.group(2)}_{self.digests[digest]}"


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    """(event name or None, parsed data) for each event; keep-alive comments are skipped."""
    events: list[tuple[str | None, Any]] = []
    for block in text.split("\n\n"):
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            else:
                raise AssertionError(f"not an SSE line: {line!r}")
        if not data:
            assert name is None, f"event {name!r} without data"
            continue
        payload = "\n".join(data)
        events.append((name, payload if payload == "[DONE]" else orjson.loads(payload)))
    return events


def fill(template: Any, call_id: str) -> Any:
    """The client request with the follow-up turn's tool-call id put in."""
    if isinstance(template, dict):
        return {key: fill(value, call_id) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, call_id) for value in template]
    return call_id if template == CALL else template


def native_bytes(fake: FakeAnthropic, scenario: str) -> bytes:
    """Exactly what the Anthropic fake sent for this scenario (it renders deterministically)."""
    model = "claude-sonnet-4-20250514"
    if scenario in STREAMED:
        return b"".join(fake.events(reply(scenario, "ant"), model))
    return json.dumps(fake.message(reply(scenario, "ant"), model)).encode()  # aiohttp's json_response encoding


CASES = [(scenario, front, provider) for scenario in SCENARIOS for front in FRONTS for provider in PROVIDERS]


@pytest.mark.parametrize(("scenario", "front", "provider"), CASES, ids=["-".join(case) for case in CASES])
def test_translation(scenario: str, front: str, provider: str, gateway, request: pytest.FixtureRequest) -> None:
    fake: FakeUpstream = request.getfixturevalue(FAKES[provider])
    fake.reset()
    fake.reply(reply(scenario, provider))
    body = {"model": MODEL[provider], **fill(CLIENT[front][scenario], HISTORY_CALL_ID[provider])}

    resp = httpx.post(gateway.url + FRONTS[front], json=body, headers=AUTH, timeout=10)
    assert resp.status_code == 200, resp.text
    normalise = Normaliser(resp.headers["x-generation-id"].removeprefix("gen-"))

    expected_upstream = UPSTREAM[scenario][front, provider]
    assert len(fake.requests) == 1
    sent = fake.last
    assert (sent.path, sent.query) == (expected_upstream.path, expected_upstream.query or {})
    assert normalise(sent.json) == expected_upstream.body

    if scenario in STREAMED:
        assert resp.headers["content-type"].startswith("text/event-stream")
        received: Any = normalise(sse_events(resp.text))
    else:
        assert resp.headers["content-type"].startswith("application/json")
        received = normalise(resp.json())
    assert received == RESPONSE[scenario][front, provider]
    if (front, provider) == ("messages", "ant"):
        # The pass-through hands back the upstream's bytes, event for event (keep-alive comments aside).
        assert isinstance(fake, FakeAnthropic)
        assert resp.content.replace(b": PROCESSING\n\n", b"") == native_bytes(fake, scenario)
