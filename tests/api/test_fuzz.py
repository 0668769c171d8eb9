"""Hostile input never gets a 5xx, a hang or a connection closed without an answer: a bounded, seeded fuzz run.

10,000 requests by default, sent 12 at a time to a gateway of this module's own (the shared one's body limit is 2 MiB;
this one has the default 32 MiB, so a 10 MB string fits and a 33 MB body does not):
- inference: valid bodies of every front (chat completions, messages, count_tokens, responses, completions) mutated
  at random paths (values of other types, huge numbers, control characters, deep nesting, missing required keys,
  unknown keys, content parts of the wrong shape), and raw garbage bodies (invalid JSON and UTF-8, NUL bytes, JSON
  scalars, truncated JSON, 1e999, duplicate keys, huge arrays);
- accounts and keys: every route of the management API (keys, key, credits, activity, generation, models and their
  endpoints, providers, stored responses, workspaces with their environments, members and budgets, the OAuth code
  exchange, embeddings), with mutated and garbage bodies, hostile query strings (huge, negative, non-numeric and
  repeated values, NUL, very long, malformed percent-escapes) and path segments (percent-encoded garbage, `..`, very
  long), by the master key, a workspace's management key, a plain key or a garbled Authorization header;
- headers, over sockets of their own (httpx refuses to send most of these): CR/LF (raw, percent-encoded and as an
  obs-fold), lone CR or LF, NUL and other control bytes, invalid UTF-8 and non-ASCII bytes in X-Title, HTTP-Referer,
  X-Request-Id, traceparent, Anthropic-Version/-Beta, X-Crossroads-*, Authorization..., a 100 KB header (431), 500
  headers, bad header names, contradictory framing (two Content-Lengths, Content-Length with chunked) and bad request
  lines;
- bodies at the edges: 10,000 levels of nesting (400), 10 MB strings (below the limit: never 413), a body above
  server.max_body_bytes (413, by Content-Length or chunked).

Every answer must be below 500, in its endpoint's error shape when it is an error (JSON, or SSE that did not fail,
when it is not), with response headers free of CR/LF/NUL and of anything injected, an X-Request-Id that is a plain
token, and no secret in it. Where the HTTP server itself refuses a request (api/protocol.py) the connection is closed
after the answer, as HTTP requires when where the message ends is unknown: 400 for what its parser cannot read (a
control byte, a bare CR or LF, an obs-fold, a bad header name or request line, contradictory framing; RFC 9112 says
such a message must be rejected) and 431 for a head over 64 KiB (the 100 KB header). No request goes without any
answer. A 200 to a request with a hostile X-Title/Referer is followed by a GET /generation of it, which must stay
valid JSON. After the run the gateway is healthy, its log has no ERROR line or traceback, and its memory and open
files have stayed bounded.

The run is deterministic in what it sends: `CROSSROADS_FUZZ_SEED` and `CROSSROADS_FUZZ_COUNT` run another or a longer
one by hand, e.g. `CROSSROADS_FUZZ_SEED=7 CROSSROADS_FUZZ_COUNT=50000 .venv/bin/python -m pytest tests/api/test_fuzz.py -q`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayProcess, gateway_config

SEED = int(os.environ.get("CROSSROADS_FUZZ_SEED") or 20240117)
COUNT = int(os.environ.get("CROSSROADS_FUZZ_COUNT") or 10_000)
IN_FLIGHT = 12  # requests sent at once: enough to keep the gateway's one process busy, few enough for two cores
WARM_UP = min(1000, COUNT // 5)  # the requests sent before the gateway's memory and open files are first measured
# Not a speed target: a run that has not ended by then is stuck (each request also has its own timeout).
HANG_BUDGET = 600.0 * max(1.0, COUNT / 10_000)
REQUEST_TIMEOUT = 30.0  # seconds one request may take before it counts as a hang
# The gateway's resident memory may grow this much from after the warm-up to the end. What legitimately stays: the
# keys, workspaces and members the run creates (their caches), SQLite's page cache, and holes left in Python's
# small-object arenas; bodies of 10 MB are mapped and unmapped whole (see `fuzz_gateway`). Measured: 0 to 31 MB after
# 9,000 requests, -2 to +16 MB after 29,000 (no trend with the count). A leak of 7 KB a request would cross it.
RSS_GROWTH_BOUND = 64 * 1024 * 1024
FD_GROWTH_BOUND = 8  # open files: a few more upstream or database connections, never one per request
MAX_BODY_BYTES = 32 * 1024 * 1024  # crossroads.config.ServerConfig.max_body_bytes, the default the gateway runs with
HUGE_STRING = 10 * 1000 * 1000  # characters: a 10 MB string, below MAX_BODY_BYTES
HUGE_EVERY, OVER_LIMIT_EVERY = 400, 2500  # one 10 MB body in every HUGE_EVERY requests, one above the limit in ...

AUTH = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
PATHS = {"chat": "/api/v1/chat/completions", "messages": "/api/v1/messages",
         "count_tokens": "/api/v1/messages/count_tokens", "responses": "/api/v1/responses",
         "completions": "/api/v1/completions"}
# endpoint -> share of the mutated requests
WEIGHTS = {"chat": 35, "messages": 20, "count_tokens": 8, "responses": 25, "completions": 12}
# request kind -> share of the run
KINDS = {"inference": 52, "account": 33, "header": 12, "deep": 3}
MODELS = ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash")
EMBEDDING_MODEL = "openai/text-embedding-3-small"

PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAIAQMAAAD+wSzIAAAABlBMVEX///+/v7+jQ3Y5AAAADklEQVQI12P4AIX8EAgALgAD/aNp"
           "btEAAAAASUVORK5CYII=")
PNG_URL = f"data:image/png;base64,{PNG_B64}"
PDF_B64 = base64.b64encode(b"%PDF-1.4\n%fuzz\n").decode()
PDF_URL = f"data:application/pdf;base64,{PDF_B64}"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
          "required": ["city"]}


class Raw:
    """Text spliced into the JSON as it is: nesting deeper than any JSON encoder here would write, NaN, 1e999."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}...)"


def encode(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


# -- valid bodies ------------------------------------------------------------------------------------------------


def chat_bodies(model: str) -> list[dict[str, Any]]:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA}}
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    return [
        {"model": model, "max_tokens": 20, "temperature": 0.5, "metadata": {"trace": "abc"}, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": PDF_URL}}]}]},
        {"model": model, "stream": True, "stream_options": {"include_usage": True}, "tools": [tool],
         "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"effort": "low"}, "stop": ["END"],
         "messages": [{"role": "user", "content": "Weather in Oslo?"},
                      {"role": "assistant", "content": None, "tool_calls": [call],
                       "reasoning_details": [{"type": "reasoning.text", "text": "hm", "signature": "sig",
                                              "format": "anthropic-claude-v1", "index": 0}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
        {"model": model, "models": [model, "openai/gpt-4o-mini"], "provider": {"order": ["oai"], "sort": "price"},
         "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
         "messages": [{"role": "developer", "content": [{"type": "text", "text": "JSON only"}]},
                      {"role": "user", "content": "Weather?"}], "seed": 3, "top_p": 0.9, "user": "u1"},
        {"model": model, "prompt": "Say hi", "max_completion_tokens": 8, "include_reasoning": False},
    ]


def messages_bodies(model: str, *, count: bool = False) -> list[dict[str, Any]]:
    tool = {"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}
    bodies: list[dict[str, Any]] = [
        {"model": model, "max_tokens": 64, "system": [{"type": "text", "text": "Be brief.",
                                                      "cache_control": {"type": "ephemeral"}}],
         "messages": [{"role": "user", "content": [
             {"type": "text", "text": "What is this?"},
             {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
             {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
              "title": "a.pdf"}]}],
         "temperature": 0.3, "metadata": {"user_id": "u1"}, "stop_sequences": ["END"]},
        {"model": model, "max_tokens": 2048, "stream": True, "tools": [tool], "tool_choice": {"type": "auto"},
         "thinking": {"type": "enabled", "budget_tokens": 1024},
         "messages": [{"role": "user", "content": "Weather in Oslo?"},
                      {"role": "assistant", "content": [
                          {"type": "thinking", "thinking": "hm", "signature": "sig"},
                          {"type": "text", "text": "Checking."},
                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                      {"role": "user", "content": [
                          {"type": "tool_result", "tool_use_id": "toolu_1",
                           "content": [{"type": "text", "text": "sunny"}]}]}]},
        {"model": model, "max_tokens": 16, "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}],
         "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}}},
    ]
    if count:
        for body in bodies:
            body.pop("max_tokens")
            body.pop("stream", None)
    return bodies


def responses_bodies(model: str) -> list[dict[str, Any]]:
    return [
        {"model": model, "input": "Say hi", "store": False, "max_output_tokens": 32},
        {"model": model, "store": False, "instructions": "Be brief.", "stream": True,
         "tools": [{"type": "function", "name": "get_weather", "parameters": SCHEMA},
                   {"type": "web_search"}],
         "tool_choice": "auto", "reasoning": {"effort": "low", "summary": "auto"},
         "input": [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                                {"type": "input_image", "image_url": PNG_URL, "detail": "low"},
                                                {"type": "input_file", "filename": "a.pdf", "file_data": PDF_URL}]},
                   {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]},
                   {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                    "arguments": '{"city": "Oslo"}'},
                   {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                   {"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": "It is sunny."}]},
                   {"role": "user", "content": "Thanks"}]},
        {"model": model, "store": False, "metadata": {"k": "v"}, "temperature": 0.2, "user": "u1",
         "text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}, "verbosity": "low"},
         "input": [{"type": "message", "role": "developer", "content": "JSON only"},
                   {"type": "message", "role": "user", "content": "Weather?"}]},
    ]


def completions_bodies(model: str) -> list[dict[str, Any]]:
    return [
        {"model": model, "prompt": "Say hi", "max_tokens": 8, "temperature": 0.2, "stop": ["\n"]},
        {"model": model, "prompt": ["Say hi"], "stream": True, "echo": False, "logprobs": None, "n": 1},
    ]


def valid_body(rng: random.Random, endpoint: str) -> dict[str, Any]:
    model = rng.choice(MODELS)
    if endpoint == "chat":
        return rng.choice(chat_bodies(model))
    if endpoint == "messages":
        return rng.choice(messages_bodies(model))
    if endpoint == "count_tokens":
        return rng.choice(messages_bodies(model, count=True))
    if endpoint == "responses":
        return rng.choice(responses_bodies(model))
    return rng.choice(completions_bodies(model))


# -- hostile values ----------------------------------------------------------------------------------------------

CONTROL_STRINGS = ["a\x00b", "a\r\nb", "\r\n\r\nHTTP/1.1 200 OK\r\n", "\x1b[31mred", "tab\there", "\x7f\x85\x9f",
                   "line\u2028sep", "\ufeffbom", "nul\x00", "\x01\x02\x03", "é漢字🙂", "\ud800"]
WRONG_PARTS = [
    {"type": "text", "text": 5}, {"type": "text", "text": None}, {"type": "text"}, {"type": "text", "text": {}},
    {"type": "image_url", "image_url": 5}, {"type": "image_url", "image_url": {"url": 5}},
    {"type": "image_url", "image_url": []}, {"type": "image_url", "image_url": "not a url"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64"}}, {"type": "image_url"},
    {"type": "file", "file": "x"}, {"type": "file", "file": {"file_data": 5}}, {"type": "file"},
    {"type": "input_audio", "input_audio": []}, {"type": "input_audio", "input_audio": {"data": 5}},
    {"type": "image", "source": {"type": "base64", "data": 5}}, {"type": "image", "source": []},
    {"type": "image", "source": {"type": "url", "url": {}}}, {"type": "document", "source": {"type": 5}},
    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": 1}]}},
    {"type": "tool_use", "id": 5, "name": "f", "input": []}, {"type": "tool_use", "id": "t", "name": {}, "input": {}},
    {"type": "tool_result", "tool_use_id": "t", "content": 5}, {"type": "tool_result", "tool_use_id": []},
    {"type": "thinking", "thinking": 5, "signature": None}, {"type": "redacted_thinking", "data": {}},
    {"type": "search_result", "content": [{"text": 5}]}, {"type": "search_result", "content": 5},
    {"type": "input_text", "text": []}, {"type": "input_image", "image_url": {}},
    {"type": "input_image", "detail": {}, "image_url": PNG_URL}, {"type": "input_file", "file_data": 7},
    {"type": "output_text", "text": 1}, {"type": "refusal", "refusal": 2},
    {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}},
    {"type": "function_call_output", "call_id": "c", "output": {}},
    {"type": "reasoning", "summary": "x"}, {"type": "reasoning", "encrypted_content": "crossroads.v1.!!!"},
    {"type": "reasoning", "encrypted_content": "crossroads.v1." + base64.urlsafe_b64encode(b"[[[1]]]").decode()},
    {"type": "message", "role": {}, "content": "x"}, {"type": "message", "role": "user", "content": 5},
    {"role": {}, "content": "x"}, {"role": ["user"], "content": "x"}, {"role": "user", "content": {}},
    {"role": "assistant", "tool_calls": {}}, {"role": "assistant", "tool_calls": [5]},
    {"role": "assistant", "tool_calls": [{"id": "c", "function": "f"}]},
    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": 5, "arguments": []}}]},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * 400 + "]" * 400}}]},
    {"role": "assistant", "content": "x", "reasoning_details": {}},
    {"role": "assistant", "content": "x", "reasoning_details": [{"type": "reasoning.text", "text": 5, "index": {}}]},
    {"role": "tool", "tool_call_id": {}, "content": "x"}, {"role": "user", "content": "x", "name": 5},
    {"role": "user", "content": [5]}, {"role": "user", "content": [{"type": {}}]},
    {"type": "function", "function": {"name": "f", "parameters": 5}}, {"type": "function", "function": []},
    {"type": "function", "name": {}}, {"name": "f", "input_schema": 5}, {"name": 5},
    {"effort": {}}, {"effort": ["high"]}, {"effort": "high", "max_tokens": "x", "enabled": "yes"},
    {"type": "json_schema", "json_schema": {"schema": 5}}, {"type": "json_schema", "name": 5, "schema": []},
    {"type": {}}, {"type": []}, {"type": None},
]


def deep(rng: random.Random, levels: int | None = None) -> Raw:
    n = levels or rng.choice((130, 253, 254, 255, 300, 600, 1000, 1030))
    kind = rng.randrange(4)
    if kind == 0:
        return Raw("[" * n + "]" * n)
    if kind == 1:
        return Raw('{"a":' * n + "1" + "}" * n)
    if kind == 2:
        return Raw('[{"type":"text","text":' * n + '"x"' + "}]" * n)
    return Raw('{"properties":{"x":' * (n // 2) + "{}" + "}}" * (n // 2))


# Values the account endpoints read: dates a datetime cannot shift into UTC, offsets, roles, intervals, emails.
ACCOUNT_VALUES = [
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01", "9999-12-31T23:59:59.999999",
    "2024-02-30T00:00:00Z", "2024-13-01", "2030-01-01T00:00:00+25:00", "2030-01-01T00:00:00Z", "now", "1e10",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", 0, -1, -0.0, 0.001, 1e14, 1e15, 1e308, 2**31 - 1, 2**31,
    2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**400, "5", "daily", "weekly", "monthly",
    "lifetime", "yearly", "owner", "admin", "member", "viewer", "root", "high", "normal", "low", "S256", "plain",
    "a@b.test", "@", "a@" + "b" * 400, "A@B.TEST ", "default", "fuzz-ws", "staging", "a/b", ".", "..", "\u0000",
]


def hostile(rng: random.Random) -> Any:
    pick = rng.randrange(24)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**30, -(10**30), 2**64])
    if pick == 2:
        return rng.choice([0.0, -0.0, 0.5, -1.5, 1e308, -1e308, 5e-324, 1e-300])
    if pick == 3:
        return rng.choice(["", " ", "x" * rng.choice((300, 5000, 200_000)), "null", "0", "true", "auto"])
    if pick in (4, 5):
        return rng.choice(CONTROL_STRINGS)
    if pick == 6:
        return rng.choice([{}, [], [[]], {"": {}}, [{}], [None], {"type": None}, [[[[]]]]])
    if pick in (7, 8, 9):
        return deep(rng)
    if pick == 10:
        item = rng.choice([0, "x", None, {}])  # a fresh {} each: a later mutation of one must not grow them all
        return [{} if isinstance(item, dict) else item for _ in range(rng.choice((1000, 20_000)))]
    if pick == 11:
        return {f"k{i}": i for i in range(rng.choice((100, 5000)))}
    if pick == 12:
        return Raw(rng.choice(["1e999", "-1e999", "123456789012345678901234567890", "1E400", "-0", "0.0e0"]))
    if pick in (13, 14, 15, 16):
        return json.loads(json.dumps(rng.choice(WRONG_PARTS)))
    if pick == 17:
        return [json.loads(json.dumps(rng.choice(WRONG_PARTS)))]
    if pick == 18:
        return rng.choice(MODELS) + rng.choice(CONTROL_STRINGS)
    if pick == 19:
        return rng.choice(["x" * 257, "oai/" + "x" * 300, "local/a\x00b", "oai/gpt-4o-mini\r\nX-Evil: 1",
                           "openai/gpt-4o-mini:nitro", "openrouter/auto", "crossroads/auto", "oai/../x", "oai/",
                           "/", "a" * 1_000_000])
    if pick == 20:
        return {"only": rng.choice([["nope"], [], [5], "oai"]), "order": rng.choice([["nope"], {}, None]),
                "sort": rng.choice(["price", {"by": {}}, 5, "nope"]), "max_price": rng.choice([{"prompt": -1}, 5, {}])}
    if pick in (22, 23):
        return rng.choice(ACCOUNT_VALUES)
    return rng.choice([{"type": "ephemeral"}, {"effort": "high"}, {"include_usage": "yes"}, {"exclude": 1}])


# -- mutations ---------------------------------------------------------------------------------------------------


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """The paths a mutation may pick; a huge container (an earlier mutation's) offers only its first few members,
    so a shared object repeated 20,000 times does not make the walk explode."""
    out = []
    if isinstance(value, dict):
        for key, item in list(value.items())[:20]:
            out.append((*prefix, key))
            out.extend(paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value[:20]):
            out.append((*prefix, index))
            out.extend(paths(item, (*prefix, index)))
    return out


def container(body: Any, path: tuple) -> Any:
    for key in path[:-1]:
        body = body[key]
    return body


def mutate(rng: random.Random, body: dict[str, Any]) -> None:
    found = paths(body)
    path = rng.choice(found) if found and rng.random() < 0.9 else ("model",)
    parent = container(body, path)
    key = path[-1]
    action = rng.randrange(10)
    if action < 5 or (isinstance(parent, dict) and key not in parent):
        parent[key] = hostile(rng)
    elif action < 7:
        del parent[key]  # a required key missing, a list shorter
    elif action == 7:
        target = parent[key]
        if isinstance(target, dict):
            target[rng.choice(["zzz_unknown", "type", "role", "text", "content", "", "\x00"])] = hostile(rng)
        elif isinstance(target, list):
            target.append(hostile(rng))
        else:
            parent[key] = [target]
    elif action == 8:
        parent[key] = {"wrapped": parent[key]} if rng.random() < 0.5 else [parent[key]]
    else:
        body[rng.choice(["model", "models", "messages", "input", "tools", "stream", "provider", "system",
                         "max_tokens", "prompt", "metadata", "reasoning", "text", "tool_choice", "thinking",
                         "previous_response_id", "response_format", "stop", "instructions",
                         # the account endpoints' fields
                         "name", "limit", "limit_reset", "expires_at", "allowed_models", "disabled", "rpm", "tpm",
                         "priority", "management", "workspace", "environment", "member", "budget", "email", "role",
                         "password", "user_ids", "limit_usd", "code", "code_verifier", "code_challenge_method",
                         "input", "dimensions", "encoding_format"])] = hostile(rng)


# -- raw garbage -------------------------------------------------------------------------------------------------


def garbage_of(rng: random.Random, valid: bytes, *, huge_array_key: str = "messages") -> bytes:
    """`valid` (a JSON body) broken: truncated, bytes flipped, a duplicate key, a BOM, invalid UTF-8, or junk."""
    pick = rng.randrange(20)
    if pick == 0:
        return valid[: rng.randrange(1, max(2, len(valid)))]  # truncated
    if pick == 1:
        flipped = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if pick == 2:
        first = valid[1:valid.find(b":")] if valid.startswith(b'{"') else b'"model"'
        return valid.replace(first, first + b':"x",' + first, 1)  # a duplicate key
    if pick == 3:
        return b"\xef\xbb\xbf" + valid  # a byte-order mark
    if pick == 4 and valid.endswith(b"}"):
        return valid[:-1] + f',"{huge_array_key}":['.encode() + b"1," * 200_000 + b"1]}"  # a huge array
    if pick == 5:
        return rng.choice([b"[" * 5000, b'{"a":' * 3000, b"[" * 1100 + b"]" * 1100, b"[" * 255 + b"]" * 255])
    if pick == 6:
        at = valid.find(b'":"') + 3 if b'":"' in valid else 0
        return valid[:at] + rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00"]) + valid[at:]
    if pick == 7:
        return valid.replace(b'":', b'":\x00', 1)
    return rng.choice([
        b"", b" ", b"\n", b"\x00", b"{", b"}", b"{}", b"[]", b"null", b"true", b"1", b"-1", b'"model"', b"1e999",
        b'{"model": 1e999}', b'{"model": NaN}', b"Infinity", b'{"a":1,"a":2}', b"// c\n{}", b"{'model': 'x'}",
        b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":1e999}',
        b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"openai/gpt-4o-mini\\u0000","messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}garbage',
        b'{"name":"x","limit":-0,"rpm":18446744073709551616}', b'{"name":"\\u0000","limit":1e999}',
        b'{"name":"a","name":"b","name":5}', b"\xc3\x28", b"\xed\xa0\x80", b'{"\xff": 1}', b"\x00" * 64,
    ])


def garbage(rng: random.Random, endpoint: str) -> bytes:
    return garbage_of(rng, encode(valid_body(rng, endpoint)).encode())


# -- what is sent, and what setup made ---------------------------------------------------------------------------


@dataclass
class Setup:
    """What the run's requests refer to: made at the start so that some requests reach real rows."""

    user_key: str  # a plain API key of the default workspace
    admin_key: str  # a management key of workspace "fuzz-ws"
    victims: list[str]  # hashes of keys the run may change and delete
    generation_id: str
    response_id: str
    member_email: str = "fuzz-member@example.test"


@dataclass
class Case:
    index: int
    shape: str  # whose error shape an error must have: a key of PATHS (each front's) or "account" (OpenRouter's)
    note: str
    method: str
    target: bytes  # the path and query, as sent
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    raw: bool = False  # over a socket of its own: what httpx would refuse to send or would rewrite
    head: bytes | None = None  # raw: the whole request head as sent (a bad request line, contradictory framing)
    expect: int | None = None  # the one status this case must get
    chunked: bool = False  # raw: the body is sent with Transfer-Encoding: chunked
    follow_generation: bool = False  # a 200 is followed by GET /generation of its generation id
    kind: str = ""  # which maker made it (a key of KINDS, "huge" or "over limit")

    def describe(self) -> str:
        headers = [(name, value[:60] + (b"..." if len(value) > 60 else b"")) for name, value in self.headers[:6]]
        return (f"#{self.index} {self.method} {self.target[:160]!r} ({self.note}; headers {headers!r}"
                f"{' and more' if len(self.headers) > 6 else ''}) body {self.body[:200]!r}")


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


def json_type() -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json")]


# Authorization values that get no further than the gate (401); the ones with control bytes only over a raw socket.
HOSTILE_AUTH = [
    b"", b"Bearer", b"Bearer ", b"Bearer  ", b"Basic dXNlcjpwYXNz", b"Token abc", b"Bearer sk-or-v1-" + b"0" * 64,
    b"Bearer sk-or-v1-" + b"g" * 64, b"Bearer " + MASTER_KEY[:-1].encode(), b"Bearer " + MASTER_KEY.encode() + b"0",
    b"Bearer " + MASTER_KEY.encode() + b" extra", b"Bearer " + MASTER_KEY.upper().encode(), b"Bearer \xff\xfe",
    b"Bearer \xc3\xa9", b"Bearer " + b"x" * 20_000, b"Bearer null", b"Bearer undefined", b"bearer", b"Bearer\t",
    b"Bearer ,", b'Bearer "' + MASTER_KEY.encode() + b'"', b"Bearer =", b"Bearer sk-or-v1-",
]
HOSTILE_AUTH_RAW = [b"Bearer \x00", b"Bearer " + MASTER_KEY.encode() + b"\x00", b"Bearer a\rb", b"Bearer a\nb",
                    b"Bearer a\r\n X-Evil: 1", b"Bearer \x7f", b"Bearer \x01\x02"]


def auth_for(rng: random.Random, setup: Setup, usual: str, *, raw: bool = False) -> tuple[list[tuple[bytes, bytes]],
                                                                                           str]:
    """The credentials of a request: mostly `usual` ("master" or "user"), sometimes another key or a garbled one."""
    pick = rng.random()
    if pick < 0.06:
        values = HOSTILE_AUTH + (HOSTILE_AUTH_RAW if raw else [])
        name = rng.choice([b"authorization", b"authorization", b"x-api-key"])
        value = rng.choice(values)
        if name == b"x-api-key":
            value = value.removeprefix(b"Bearer ")
        return [(name, value)], "garbled auth"
    if pick < 0.08:
        return [], "no auth"
    if pick < 0.10:
        return [(b"x-api-key", rng.choice([MASTER_KEY, setup.user_key]).encode())], "x-api-key"
    if pick < 0.14:
        return bearer(setup.admin_key), "management key"
    if pick < 0.22:
        return bearer(setup.user_key if usual == "master" else MASTER_KEY), "other key"
    return bearer(MASTER_KEY if usual == "master" else setup.user_key), usual


# -- inference ---------------------------------------------------------------------------------------------------


def inference_case(rng: random.Random, index: int, setup: Setup) -> Case:
    endpoint = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
    auth, who = auth_for(rng, setup, rng.choice(("master", "master", "user")))
    headers = [*auth, *json_type()]
    if rng.random() < 0.04:
        headers.append((b"vendor", rng.choice(["nope", "oai", "OAI", "anthropic", "google", "auto", "", "x" * 2000,
                                               "gem", "openai", "é", "local"]).encode()))
    path = PATHS[endpoint]
    if rng.random() < 0.05:  # VM-X's workspace paths: the default workspace and environment are the plain key's
        place = rng.choice(["default/default", "default/nope", "fuzz-ws/default", "%00/%ff", "x" * 300 + "/default"])
        path = f"/v1/completion/{place}/" + {"chat": "chat/completions", "messages": "anthropic/messages",
                                             "count_tokens": "anthropic/v1/messages", "responses": "responses",
                                             "completions": "chat/completions"}[endpoint]
        endpoint = {"count_tokens": "messages", "completions": "chat"}.get(endpoint, endpoint)
    if rng.random() < 0.12:
        return Case(index, endpoint, f"garbage, {who}", "POST", path.encode(), garbage(rng, endpoint), headers)
    body = valid_body(rng, endpoint)
    mutations = rng.choice((1, 1, 1, 2, 3))
    for _ in range(mutations):
        mutate(rng, body)
    return Case(index, endpoint, f"{mutations} mutation(s), {who}", "POST", path.encode(),
                encode(body).encode("utf-8", "surrogatepass"), headers)


# -- accounts, keys and the rest of the management API -----------------------------------------------------------

# (share, method, path under /api/v1, body kind or None, whose key it usually takes)
ACCOUNT_ROUTES: list[tuple[int, str, str, str | None, str]] = [
    (6, "GET", "/keys", None, "master"), (6, "POST", "/keys", "key", "master"),
    (4, "GET", "/keys/{hash}", None, "master"), (5, "PATCH", "/keys/{hash}", "key_update", "master"),
    (2, "DELETE", "/keys/{hash}", None, "master"),
    (4, "GET", "/key", None, "user"), (2, "GET", "/auth/key", None, "user"),
    (3, "GET", "/credits", None, "user"), (4, "GET", "/activity", None, "master"),
    (4, "GET", "/generation", None, "user"),
    (4, "GET", "/models", None, "user"), (2, "GET", "/models/count", None, "user"),
    (3, "GET", "/models/{author}/{slug}/endpoints", None, "user"),
    (2, "GET", "/providers", None, "user"),
    (3, "GET", "/responses/{id}", None, "master"), (1, "DELETE", "/responses/{id}", None, "master"),
    (3, "GET", "/workspaces", None, "master"), (3, "POST", "/workspaces", "workspace", "master"),
    (3, "GET", "/workspaces/{workspace}", None, "master"),
    (3, "PATCH", "/workspaces/{workspace}", "workspace", "master"),
    (1, "DELETE", "/workspaces/{workspace}", None, "master"),
    (2, "GET", "/workspaces/{workspace}/environments", None, "master"),
    (2, "POST", "/workspaces/{workspace}/environments", "environment", "master"),
    (2, "PATCH", "/workspaces/{workspace}/environments/{environment}", "environment", "master"),
    (1, "DELETE", "/workspaces/{workspace}/environments/{environment}", None, "master"),
    (2, "GET", "/workspaces/{workspace}/members", None, "master"),
    (2, "POST", "/workspaces/{workspace}/members", "member", "master"),
    (2, "PATCH", "/workspaces/{workspace}/members/{member}", "member", "master"),
    (1, "DELETE", "/workspaces/{workspace}/members/{member}", None, "master"),
    (1, "POST", "/workspaces/{workspace}/members/add", "user_ids", "master"),
    (1, "POST", "/workspaces/{workspace}/members/remove", "user_ids", "master"),
    (1, "GET", "/workspaces/{workspace}/budgets", None, "master"),
    (1, "GET", "/workspaces/{workspace}/budgets/{interval}", None, "master"),
    (1, "PUT", "/workspaces/{workspace}/budgets/{interval}", "budget", "master"),
    (1, "DELETE", "/workspaces/{workspace}/budgets/{interval}", None, "master"),
    (3, "POST", "/auth/keys", "auth_code", "none"), (4, "POST", "/embeddings", "embeddings", "user"),
    (1, "GET", "/openapi.json", None, "none"),
    (2, "*", "*", None, "master"),  # a known path with a method it does not take, or an unknown path
]
MODEL_QUERY = ["output_modalities", "category", "supported_parameters", "input_modalities", "providers", "offset",
               "limit", "sort", "q", "arch", "zdr", "context", "min_age_days", "max_age_days", "min_price",
               "max_output_price", "model_authors"]
QUERIES = {
    "/keys": ["include_disabled", "offset", "workspace"], "/activity": ["date", "date_from", "date_to",
                                                                          "api_key_hash", "key_hash"],
    "/generation": ["id"], "/models": MODEL_QUERY, "/models/count": MODEL_QUERY,
    "/workspaces": ["offset", "limit"], "/workspaces/{workspace}/members": ["offset", "limit"],
}
QUERY_VALUES = [
    "", "0", "-1", "1", "2", "500", "501", "2147483647", "2147483648", "1e999", "NaN", "inf", "-0", "0x10", "1_000",
    "%201", "+1", "%EF%BC%91%EF%BC%92", "%D9%A3", "99999999999999999999999999", "9" * 5000, "abc", "null", "true",
    "false", "FALSE", "all", "text,embeddings", "image", ",,,", "%00", "%ff%fe", "%0d%0aX-Evil:%201", "%", "%zz",
    "%%", "0001-01-01", "0001-01-29", "9999-12-31", "0000-00-00", "2024-02-30", "2024-13-01", "2024-01-01T00:00:00Z",
    "newest", "pricing-low-to-high", "latency-low-to-high", "tools,temperature", "openai", "2024-01-01xyz",
    "1969-12-31", "1970-01-01", "9999-12-30", "x" * 100_000, "%5B%5D", "%7B%7D", "a+b", "%C3%A9", "../../etc/passwd",
]
SEGMENTS = [
    "..", ".", "%2e%2e", "%2E%2E%2F%2E%2E", "%00", "%0d%0aX-Evil:%201", "%ff%fe", "%c3%28", "%", "%zz", "%25",
    "%2f", "a%2Fb", "x" * 300, "x" * 20_000, "%20", "+", "null", "0", "-1", "99999999999999999999999999", "%C3%A9",
    "<script>", "'", "%22", "%7B%7D", "~", ";", "a;b=c", "*", "default", "",
]
RAW_SEGMENTS = [b"\xc3\xa9", b"\xff", b"a b", b"\t", b"\x00", b"\x7f", b"#frag", b"?"]


def hostile_segment(rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return rng.choice(RAW_SEGMENTS)
    return rng.choice(SEGMENTS).encode()


def fill(rng: random.Random, template: str, setup: Setup, method: str) -> bytes:
    """The path of `template` with each {parameter} a real value (an existing key, workspace, member...) half the time,
    else a hostile segment."""
    real = {
        "hash": rng.choice(setup.victims), "workspace": "fuzz-ws" if method != "GET" else rng.choice(("fuzz-ws",
                                                                                                       "default")),
        "environment": rng.choice(("staging", "default")), "member": setup.member_email,
        "interval": rng.choice(("daily", "weekly", "monthly", "lifetime")), "id": setup.response_id,
        "author": rng.choice(("openai", "anthropic", "google")), "slug": rng.choice(("gpt-4o-mini", "claude-sonnet-4",
                                                                                      "gemini-2.5-flash")),
    }
    out = b""
    for part in re.split(r"(\{[a-z]+\})", template):
        if part.startswith("{"):
            name = part[1:-1]
            out += real[name].encode() if rng.random() < 0.5 else hostile_segment(rng)
            if name == "slug" and rng.random() < 0.2:
                out += b"/" + hostile_segment(rng)  # a model id with more slashes
        else:
            out += part.encode()
    return out


def query_for(rng: random.Random, template: str, setup: Setup) -> bytes:
    if rng.random() < 0.08:
        return rng.choice([b"?", b"?&&&", b"?=x", b"?a==b", b"?a=%", b"?%zz=1", b"?" + b"a=1&" * 2000, b"?x=\xff",
                           b"?x=\x00", b"?x=a b"])
    names = QUERIES.get(template, [])
    if not names or rng.random() < 0.15:
        return b""
    pairs = []
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        name = rng.choice([*names, *names, "zzz_unknown"])
        value = rng.choice([*QUERY_VALUES, setup.generation_id, rng.choice(setup.victims)])
        pairs.append(f"{name}={value}")
        if rng.random() < 0.1:
            pairs.append(f"{name}={rng.choice(QUERY_VALUES)}")  # the same parameter twice
    return ("?" + "&".join(pairs)).encode()


def account_body(rng: random.Random, kind: str, index: int, setup: Setup) -> dict[str, Any]:
    """A valid body of `kind` (fields picked at random from what the endpoint takes)."""
    if kind in ("key", "key_update"):
        fields: dict[str, Any] = {
            "name": f"fuzz-{index}", "limit": rng.choice((None, 0, 5, 12.5)),
            "limit_reset": rng.choice((None, "daily", "weekly", "monthly")), "expires_at": "2031-01-01T00:00:00Z",
            "allowed_models": ["openai/*", "anthropic/claude-sonnet-4"], "disabled": False, "rpm": 600, "tpm": 10**6,
            "priority": "low", "management": False, "workspace": "fuzz-ws", "environment": "staging",
            "member": setup.member_email,
        }
        chosen = {name: value for name, value in fields.items() if rng.random() < 0.35}
        if kind == "key":
            chosen.setdefault("name", fields["name"])
        else:
            for name in ("management", "workspace", "environment", "member"):
                chosen.pop(name, None)
        return chosen
    if kind in ("workspace", "environment"):
        body: dict[str, Any] = {"name": f"fuzz-{kind}-{index}"}
        if rng.random() < 0.5:
            body["budget"] = {"limit": rng.choice((None, 1, 100.5)), "limit_reset": rng.choice((None, "monthly"))}
        return body
    if kind == "member":
        body = {"email": f"fuzz-{index}@example.test", "role": rng.choice(("member", "viewer", "admin"))}
        if rng.random() < 0.3:
            body["budget"] = {"limit": 3, "limit_reset": "weekly"}
        return body
    if kind == "user_ids":
        return {"user_ids": [rng.choice(("nope", "0" * 16, "x"))]}
    if kind == "budget":
        return {"limit_usd": rng.choice((1, 50.5, 1000))}
    if kind == "auth_code":
        return {"code": rng.choice(("abc", "0" * 43, "x")), "code_verifier": "v" * 43,
                "code_challenge_method": rng.choice(("S256", "plain"))}
    return {"model": EMBEDDING_MODEL, "input": rng.choice(("hello", ["a", "b"], [[1, 2, 3]])),
            "encoding_format": rng.choice(("float", "base64")), "dimensions": rng.choice((8, 16))}


def set_field(rng: random.Random, body: dict[str, Any]) -> None:
    """One of the body's fields (or of an object in it: a budget) given a value the account endpoints read: a date
    out of range, a number too large for a column, a role or interval..."""
    target, key = body, rng.choice(list(body))
    if isinstance(body[key], dict) and body[key] and rng.random() < 0.7:
        target = body[key]
        key = rng.choice(list(target))
    target[key] = rng.choice(ACCOUNT_VALUES)


def shape_of(method: str, target: bytes) -> str:
    """Whose error shape an account request gets (api/app.py: its route's, a known path's for a wrong method, else
    OpenRouter's), from the path as the gateway sees it (percent-decoded)."""
    path = unquote_to_bytes(target.split(b"?")[0])
    bare = path.rstrip(b"/") or b"/"
    for prefix in (b"/api/v1", b"/v1"):
        if bare in (prefix + b"/messages", prefix + b"/messages/count_tokens"):
            return "messages"
        if bare == prefix + b"/responses":
            return "responses"
        stored = prefix + b"/responses/"
        if path.startswith(stored) and b"/" not in path[len(stored):] and method in ("GET", "DELETE"):
            return "responses"
    return "account"


KNOWN_PATHS = ["/keys", "/key", "/credits", "/activity", "/generation", "/models", "/providers", "/chat/completions",
               "/messages", "/responses", "/embeddings", "/auth/keys", "/workspaces", "/openapi.json"]


def account_case(rng: random.Random, index: int, setup: Setup) -> Case:
    routes = ACCOUNT_ROUTES
    share, method, template, kind, usual = rng.choices(routes, [r[0] for r in routes])[0]
    if method == "*":
        method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
        template = rng.choice([*KNOWN_PATHS, "/nope", "/keys/a/b", "/" + "x" * 3000, "", "/models/x/endpoints"])
    prefix = "/api/v1" if template.startswith("/workspaces") or rng.random() < 0.8 else "/v1"
    target = prefix.encode() + fill(rng, template, setup, method) + query_for(rng, template, setup)
    if rng.random() < 0.05:
        target += rng.choice([b"/", b"//", b"/.", b"/..", b"%00", b"?"])
    raw = rng.random() < 0.5 or not re.fullmatch(rb"[A-Za-z0-9/_.,:=&?-]*", target) or b"/." in target
    auth, who = auth_for(rng, setup, usual if usual != "none" else "master", raw=raw)
    headers = list(auth)
    body = b""
    if kind is not None or method in ("POST", "PATCH", "PUT"):
        headers += json_type()
        valid = account_body(rng, kind or "key", index, setup)
        if rng.random() < 0.15:
            body = garbage_of(rng, encode(valid).encode(), huge_array_key=rng.choice(list(valid) or ["x"]))
            who += ", garbage"
        else:
            mutations = rng.choice((0, 1, 1, 1, 2, 3))
            for _ in range(mutations):
                if valid and rng.random() < 0.5:
                    set_field(rng, valid)
                else:
                    mutate(rng, valid)
            if kind == "embeddings" and type(valid.get("dimensions")) is int and valid["dimensions"] > 4096:
                valid["dimensions"] = 4096  # the fake upstream builds each vector in full: not billions of floats
            body = encode(valid).encode("utf-8", "surrogatepass")
            who += f", {mutations} mutation(s)"
    return Case(index, shape_of(method, target), who, method, target, body, headers, raw=raw)


# -- headers -----------------------------------------------------------------------------------------------------

# Headers the gateway reads, records or echoes, and a few it ignores.
HEADER_NAMES = [b"X-Title", b"X-OpenRouter-Title", b"HTTP-Referer", b"Referer", b"X-Request-Id", b"traceparent",
                b"tracestate", b"Anthropic-Version", b"Anthropic-Beta", b"X-Crossroads-Metadata-Trace",
                b"X-Crossroads-Model", b"User-Agent", b"vendor", b"Accept", b"Accept-Encoding", b"Cookie", b"Origin",
                b"Content-Type", b"X-Api-Key"]
RECORDED = {b"x-title", b"x-openrouter-title", b"http-referer", b"referer", b"user-agent"}
HEADER_VALUES = [
    b"a\r\nX-Evil: 1", b"a\rX-Evil: 1", b"a\nX-Evil: 1", b"a\r\n X-Evil: 1", b"a\r\n\tb", b"a%0d%0aX-Evil:%201",
    b"a%0D%0A%0D%0A<html>", b"a\\r\\nX-Evil: 1", b"a\x00b", b"\x00", b"a\x01\x1fb", b"\x7f", b"a\x0bb", b"\xff\xfe",
    b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", "é漢字🙂".encode(), b"\xe9t\xe9", b"\x1b[31mred", b"", b" ", b"\t",
    b"   a   ", b"x" * 8192, b'{"json": "x"}', b"</script>", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0b-01",
    b"00-" + b"f" * 3000, b"2023-06-01", b"prompt-caching-2024-07-31,\xff", b"a" * 129, b"req-" + b"9" * 124,
    b"a,b,c," * 500, b"=", b"k=v,k2=v2,=,", b"\\", b'"', b"application/json; charset=latin-1",
    b"text/plain", b"multipart/form-data; boundary=x", b"gzip, br, zstd", b"*/*;q=0.5, text/event-stream",
]


def header_case(rng: random.Random, index: int, setup: Setup) -> Case:
    """A valid request (a plain inference, or a GET of the account API) with hostile headers, over a raw socket."""
    if rng.random() < 0.65:
        endpoint = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        body = encode(valid_body(rng, endpoint)).encode()
        case = Case(index, endpoint, "", "POST", PATHS[endpoint].encode(), body, raw=True)
        key = rng.choice((MASTER_KEY, setup.user_key))
    else:
        template = rng.choice(["/key", "/credits", "/models", "/keys", "/activity", "/workspaces", "/providers"])
        case = Case(index, "account", "", "GET", b"/api/v1" + template.encode(), raw=True)
        key = MASTER_KEY
    case.headers = [*bearer(key), *(json_type() if case.body else [])]
    pick = rng.randrange(100)
    if pick < 62:  # one hostile value (or two) in a header the gateway reads
        for _ in range(rng.choice((1, 1, 1, 2))):
            name = rng.choice(HEADER_NAMES)
            value = rng.choice(HEADER_VALUES)
            if name == b"Content-Type" and value[:1] not in (b"a", b"t", b"m"):
                name = b"X-Title"  # a garbled Content-Type only says the body is not JSON: the gateway reads it anyway
            case.headers.append((name, value))
            case.note += f"{name.decode()} hostile; "
        case.follow_generation = any(name.lower() in RECORDED for name, _ in case.headers)
    elif pick < 70:
        case.headers.append((rng.choice(HEADER_NAMES), b"x" * 100_000))
        case.note, case.expect = "a 100 KB header", 431  # over api/protocol.py's MAX_HEAD_BYTES
    elif pick < 78:
        case.headers += [(b"X-Fuzz-%d" % i, b"v%d" % i) for i in range(500)]
        case.note = "500 headers"
    elif pick < 82:
        case.headers.append(rng.choice([(b"X Title", b"a"), (b"X-Title\x00", b"a"), (b"X-T\xc3\xa9", b"a"),
                                        (b"", b"a"), (b"X-Title:", b"a"), (b"(x)", b"a"), (b"X-Title ", b"a")]))
        case.note = "a bad header name"
    elif pick < 87:
        name = rng.choice([b"Authorization", b"X-Title", b"Content-Type", b"X-Request-Id", b"vendor", b"Host"])
        case.headers += [(name, b"first"), (name, rng.choice(HEADER_VALUES))]
        case.note = f"{name.decode()} twice"
    elif pick < 94:  # framing the parser must refuse (or read one way only)
        length = str(len(case.body)).encode()
        case.headers += rng.choice([
            [(b"Content-Length", length), (b"Content-Length", b"1")],
            [(b"Content-Length", length), (b"Transfer-Encoding", b"chunked")],
            [(b"Content-Length", b"-1")], [(b"Content-Length", b"abc")], [(b"Content-Length", b"1" * 30)],
            [(b"Content-Length", length + b", " + length)], [(b"Transfer-Encoding", b"gzip")],
            [(b"Transfer-Encoding", b"chunked, identity")], [(b"Content-Length", b" " + length)],
        ])
        case.note = "contradictory framing"
    else:
        case.head = rng.choice([
            b"GET\x00 /api/v1/key HTTP/1.1", b"FOO /api/v1/key HTTP/1.1", b"get /api/v1/key HTTP/1.1",
            b"GET /api/v1/key HTTP/9.9", b"GET /api/v1/key", b"GET  /api/v1/key  HTTP/1.1", b"GET * HTTP/1.1",
            b"GET http://evil.test/api/v1/key HTTP/1.1", b"GET /api/v1/key?\x01 HTTP/1.1", b"\r\nGET / HTTP/1.1",
            b"GET /api/v1/key HTTP/1.0", b"GET /" + b"a" * 60_000 + b" HTTP/1.1",
        ])
        case.method, case.target, case.body, case.shape = "GET", b"", b"", "account"
        case.note = "a bad request line"
    case.note = case.note.rstrip("; ")
    return case


# -- bodies at the edges -----------------------------------------------------------------------------------------

DEEP_TARGETS = [("chat", "POST", PATHS["chat"]), ("messages", "POST", PATHS["messages"]),
                ("count_tokens", "POST", PATHS["count_tokens"]), ("responses", "POST", PATHS["responses"]),
                ("completions", "POST", PATHS["completions"]), ("account", "POST", "/api/v1/embeddings"),
                ("account", "POST", "/api/v1/keys"), ("account", "POST", "/api/v1/workspaces"),
                ("account", "POST", "/api/v1/auth/keys")]


def deep_case(rng: random.Random, index: int, setup: Setup) -> Case:
    """10,000 levels of nesting, as a whole body or inside a field: 400 before anything else looks at it."""
    shape, method, path = rng.choice(DEEP_TARGETS)
    levels = 10_000
    nested = rng.choice([Raw("[" * levels + "]" * levels), Raw('{"a":' * levels + "1" + "}" * levels),
                         Raw("[" * levels)])  # the last never closes
    if rng.random() < 0.3:
        body = nested.text.encode()
    else:
        body = encode({"model": MODELS[0], "name": "deep", "messages": [{"role": "user", "content": "hi"}],
                       "metadata": nested}).encode()
    return Case(index, shape, "10,000 levels", method, path.encode(), body, [*bearer(MASTER_KEY), *json_type()],
                expect=400)


def huge_string_case(rng: random.Random, index: int, setup: Setup) -> Case:
    """A 10 MB string where each endpoint has a string: below the body limit, so never a 413."""
    text = rng.choice(("y", "é", "\x00", "🙂")) * (HUGE_STRING // 4) if rng.random() < 0.3 else "y" * HUGE_STRING
    shape, path, body = rng.choice([
        ("chat", PATHS["chat"], {"model": rng.choice(MODELS), "max_tokens": 5,
                                 "messages": [{"role": "user", "content": text}]}),
        ("messages", PATHS["messages"], {"model": "anthropic/claude-sonnet-4", "max_tokens": 5,
                                         "messages": [{"role": "user", "content": text}]}),
        ("count_tokens", PATHS["count_tokens"], {"model": "anthropic/claude-sonnet-4",
                                                 "messages": [{"role": "user", "content": text}]}),
        ("responses", PATHS["responses"], {"model": rng.choice(MODELS), "store": False, "input": text}),
        ("completions", PATHS["completions"], {"model": rng.choice(MODELS), "prompt": text, "max_tokens": 5}),
        ("chat", PATHS["chat"], {"model": rng.choice(MODELS), "messages": [{"role": "user", "content": "hi"}],
                                 "metadata": {"trace": text}}),
        ("account", "/api/v1/embeddings", {"model": EMBEDDING_MODEL, "input": text}),
        ("account", "/api/v1/workspaces", {"name": text}),
        ("account", "/api/v1/auth/keys", {"code": text, "code_verifier": text}),
        ("account", "/api/v1/workspaces/fuzz-ws/members", {"email": text + "@example.test", "role": "member"}),
    ])
    return Case(index, shape, "a 10 MB string", "POST", path.encode(),
                json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass"),
                [*bearer(MASTER_KEY), *json_type()])


def over_limit_case(rng: random.Random, index: int, setup: Setup) -> Case:
    """A body above server.max_body_bytes: 413, whether its size is announced (Content-Length) or not (chunked)."""
    endpoint = rng.choice(list(PATHS))
    body = b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"' + b"z" * (MAX_BODY_BYTES + 1) \
        + b'"}]}'
    chunked = rng.random() < 0.4
    return Case(index, endpoint, f"{'chunked ' if chunked else ''}body above the limit", "POST",
                PATHS[endpoint].encode(), body, [*bearer(MASTER_KEY), *json_type()], raw=True, expect=413,
                chunked=chunked)


def cases(seed: int, count: int, setup: Setup, start: int = 0) -> Iterator[Case]:
    """The run's requests from number `start` on, made one at a time (a long run's bodies would not fit in memory
    together). The first of each edge case comes early, inside the warm-up."""
    makers: dict[str, Callable[[random.Random, int, Setup], Case]] = {
        "inference": inference_case, "account": account_case, "header": header_case, "deep": deep_case}
    for index in range(start, count):
        rng = random.Random(seed * 1_000_003 + index)  # each request its own stream: any one can be re-made alone
        if index % HUGE_EVERY == 7:
            kind, case = "huge", huge_string_case(rng, index, setup)
        elif index % OVER_LIMIT_EVERY == 11:
            kind, case = "over limit", over_limit_case(rng, index, setup)
        else:
            kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
            case = makers[kind](rng, index, setup)
        case.kind = kind
        yield case


# -- sending and reading -----------------------------------------------------------------------------------------


class NoAnswer(Exception):
    """The connection closed, or the time ran out, before a whole answer arrived."""


@dataclass
class Answer:
    status: int
    head: bytes  # the status line and header lines as received (rebuilt from httpx's raw headers for its answers)
    headers: list[tuple[bytes, bytes]]
    body: bytes
    cut: bool = False  # the connection closed before the body its head announced was complete

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


def request_bytes(case: Case, port: int) -> bytes:
    head = [case.head if case.head is not None else case.method.encode() + b" " + case.target + b" HTTP/1.1",
            b"Host: 127.0.0.1:%d" % port, b"Connection: close"]
    named = {name.lower() for name, _ in case.headers}
    body = case.body
    if case.chunked:
        head.append(b"Transfer-Encoding: chunked")
        step = 1 << 20
        body = b"".join(b"%x\r\n%s\r\n" % (len(body[at:at + step]), body[at:at + step])
                        for at in range(0, len(body), step)) + b"0\r\n\r\n"
    elif not named & {b"content-length", b"transfer-encoding"} and (body or case.method in ("POST", "PATCH", "PUT")):
        head.append(b"Content-Length: %d" % len(body))
    head += [name + b": " + value for name, value in case.headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def dechunk(data: bytes) -> bytes | None:
    """A chunked body decoded, or None while it is incomplete."""
    out, at = [], 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out) if data.find(b"\r\n", end + 2) >= 0 else None
        if len(data) < end + 2 + size + 2:
            return None
        out.append(data[end + 2:end + 2 + size])
        at = end + 2 + size + 2


def answer_from(data: bytes, method: str, *, closed: bool) -> Answer | None:
    """The answer in `data` (interim 1xx answers skipped), or None while it is incomplete and the connection open."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return Answer(-1, data[:300], [], b"") if closed and data else None
        head, rest = data[:end], data[end + 4:]
        status_line = head.split(b"\r\n", 1)[0]
        match = re.fullmatch(rb"HTTP/1\.[01] (\d{3})( .*)?", status_line)
        if match is None:
            return Answer(-1, head[:300], [], b"")
        if not 100 <= int(match[1]) < 200:
            break
        data = rest
    headers = [(name.strip(), value.strip()) for name, _, value in
               (line.partition(b":") for line in head.split(b"\r\n")[1:])]
    answer = Answer(int(match[1]), head, headers, rest)
    if method == "HEAD" or answer.status in (204, 304):
        answer.body = b""
        return answer
    if (answer.header(b"transfer-encoding") or b"").lower() == b"chunked":
        body = dechunk(rest)
        if body is None:
            answer.cut = True
            return answer if closed else None
        answer.body = body
    elif answer.header(b"content-length") is not None:
        length = int(answer.header(b"content-length") or b"0")
        if len(rest) < length:
            answer.cut = True
            return answer if closed else None
        answer.body = rest[:length]
    elif not closed:
        return None  # the body ends when the connection does
    return answer


def exchange_raw(port: int, data: bytes, method: str) -> Answer:
    """Send `data` on a connection of its own and read the answer. Sending stops once an answer (not an interim
    100 Continue) begins: a server may refuse a body (413) before it has all arrived."""
    deadline = time.monotonic() + REQUEST_TIMEOUT
    received = bytearray()
    view = memoryview(data)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setblocking(False)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswer(f"no whole answer within {REQUEST_TIMEOUT:g} s; got {bytes(received[:200])!r}")
            sending = sent < len(view) and (not received or received.startswith(b"HTTP/1.1 1"))
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], min(remaining, 1.0))
            if readable:
                try:
                    chunk = sock.recv(1 << 18)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                answer = answer_from(bytes(received + chunk), method, closed=not chunk)
                if answer is not None:
                    return answer
                if not chunk:
                    raise NoAnswer("the connection closed without an answer")
                received += chunk
            elif writable:
                try:
                    sent += sock.send(view[sent:sent + (1 << 18)])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(view)  # the server stopped reading: its answer may still be there to read


def exchange(case: Case, client: httpx.Client, port: int) -> Answer:
    if not case.raw:
        try:
            resp = client.request(case.method, case.target.decode("latin-1"), headers=case.headers,
                                  content=case.body if case.body or case.method in ("POST", "PATCH", "PUT") else None)
        except (httpx.LocalProtocolError, httpx.InvalidURL):  # what httpx will not send (a header with trailing
            case.raw = True  # whitespace, a URL over 64 KB): sent raw below
        else:
            raw_headers = list(resp.headers.raw)
            head = b"\r\n".join([b"HTTP/1.1 %d" % resp.status_code, *(n + b": " + v for n, v in raw_headers)])
            return Answer(resp.status_code, head, raw_headers, resp.content)
    return exchange_raw(port, request_bytes(case, port), case.method)


# -- what an answer must be --------------------------------------------------------------------------------------


def error_shape_problem(endpoint: str, status: int, payload: Any) -> str | None:
    """What is wrong with an error body for `endpoint`, or None (the shape each endpoint's SDK reads; "account" and
    any other name: OpenRouter's)."""
    if not isinstance(payload, dict):
        return "error body is not an object"
    if endpoint in ("messages", "count_tokens"):  # Anthropic's
        error = payload.get("error")
        if payload.get("type") != "error" or not isinstance(error, dict) or not isinstance(error.get("type"), str) \
                or not isinstance(error.get("message"), str) or not error["message"]:
            return f"not Anthropic's error shape: {payload!r:.200}"
        return None
    error = payload.get("error")
    if set(payload) != {"error"} or not isinstance(error, dict) or not isinstance(error.get("message"), str) \
            or not error["message"]:
        return f"not an OpenAI/OpenRouter error: {payload!r:.200}"
    if error.get("code") != status:  # OpenRouter's (the Responses endpoints' too): code is the HTTP status
        return f"error.code {error.get('code')!r} is not the status {status}"
    return None


STREAM_FAILURES = (b'"finish_reason":"error"', b"event: error", b"event: response.failed")
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")  # observability/record.py's
HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
PARSER_REFUSAL = b"Invalid HTTP request received."  # uvicorn's answer to a request its HTTP parser cannot read


def head_problem(answer: Answer, secrets: list[bytes]) -> str | None:
    lines = answer.head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line or b"\x00" in line for line in lines):
        return f"a bare CR, LF or NUL in the answer's head: {answer.head[:400]!r}"
    for name, value in answer.headers:
        if not HEADER_NAME.fullmatch(name):
            return f"a header line that is not `name: value`: {name[:100]!r}"
        if name.lower().startswith(b"x-evil"):
            return f"an injected header in the answer: {name!r}: {value[:100]!r}"
    request_id = answer.header(b"x-request-id")
    if request_id is not None and not SANE_REQUEST_ID.fullmatch(request_id):
        return f"X-Request-Id is not a plain token: {request_id[:100]!r}"
    for secret in secrets:
        if secret in answer.head or secret in answer.body:
            return f"a secret ({secret[:12].decode()}…) in the answer"
    return None


def check(case: Case, answer: Answer, secrets: list[bytes]) -> str | None:
    status = answer.status
    if status < 0:
        return f"not an HTTP answer: {answer.head[:200]!r}"
    if status >= 500:
        return f"HTTP {status}: {answer.body[:300]!r}"
    if answer.cut:
        return f"HTTP {status} cut short: the connection closed inside the body ({answer.body[-200:]!r})"
    problem = head_problem(answer, secrets)
    if problem is not None:
        return problem
    if case.expect is not None and status != case.expect:
        return f"HTTP {status}, not {case.expect}: {answer.body[:300]!r}"
    if b"Traceback" in answer.body:
        return "a traceback in the answer"
    if case.method == "HEAD" or (300 <= status < 400 and answer.header(b"location")):
        return None  # no body to read; the dashboard's redirect of `GET /` (a bad request line's leading CRLF)
    content_type = (answer.header(b"content-type") or b"").lower()
    if status >= 400:
        # The HTTP server's own refusal of what its parser cannot read (no X-Request-Id: the gateway never saw it):
        # the connection must close; its body, uvicorn's plain text or JSON in OpenRouter's or the path's shape.
        refused = case.raw and status in (400, 431) and answer.header(b"x-request-id") is None
        if refused and (answer.header(b"connection") or b"").lower() != b"close":
            return "the HTTP parser's refusal leaves the connection open"
        if refused and answer.body == PARSER_REFUSAL:
            return None
        try:
            payload = json.loads(answer.body)
        except ValueError:
            return f"HTTP {status} with a body that is not JSON: {answer.body[:200]!r}"
        problem = error_shape_problem(case.shape, status, payload)
        return None if refused and error_shape_problem("account", status, payload) is None else problem
    if content_type.startswith(b"text/event-stream"):
        if any(marker in answer.body for marker in STREAM_FAILURES):
            return f"a stream that failed: {answer.body[-400:]!r}"
        for line in answer.body.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                try:
                    json.loads(line[6:])
                except ValueError:
                    return f"an SSE event that is not JSON: {line[:200]!r}"
        return None
    try:
        payload = json.loads(answer.body)
    except ValueError:
        return f"HTTP {status} with a body that is not JSON: {answer.body[:200]!r}"
    return None if isinstance(payload, dict) else f"HTTP {status} with a non-object body"


def recorded_problem(answer: Answer, port: int, secrets: list[bytes]) -> str | None:
    """The generation of an answer to hostile recorded headers (X-Title, Referer...) reads back as valid JSON."""
    generation_id = answer.header(b"x-generation-id")
    if generation_id is None:
        return None  # not an inference answer (an account GET)
    follow = Case(-1, "account", "its generation", "GET", b"/api/v1/generation?id=" + generation_id,
                  headers=bearer(MASTER_KEY), raw=True, expect=200)
    problem = check(follow, exchange_raw(port, request_bytes(follow, port), "GET"), secrets)
    return None if problem is None else f"GET /generation of its answer: {problem}"


class Run:
    """Sends cases IN_FLIGHT at a time and collects what went wrong."""

    def __init__(self, port: int, secrets: list[bytes], deadline: float) -> None:
        self.port = port
        self.secrets = secrets
        self.deadline = deadline
        self.lock = threading.Lock()
        self.problems: list[str] = []
        self.answered: Counter[tuple[str, str]] = Counter()  # (kind, status class) -> answers
        self.sent = 0

    def send(self, case: Case, client: httpx.Client) -> None:
        status = "none"
        try:
            answer = exchange(case, client, self.port)
            status = f"{answer.status // 100}xx"
            problem = check(case, answer, self.secrets)
            if problem is None and case.follow_generation and answer.status == 200:
                problem = recorded_problem(answer, self.port, self.secrets)
        except (NoAnswer, httpx.HTTPError, OSError) as exc:  # no answer at all: a closed connection or a hang
            problem = f"no answer: {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a fault of this test's own checks must fail it, not vanish
            problem = f"the check itself failed: {type(exc).__name__}: {exc}"
        with self.lock:
            self.answered[(case.kind, status)] += 1
            if case.kind == "inference":
                self.answered[(case.shape, status)] += 1
            if problem is not None and len(self.problems) < 50:
                self.problems.append(f"{case.describe()}: {problem}")

    def run(self, batch: Iterator[Case]) -> None:
        slots = threading.BoundedSemaphore(2 * IN_FLIGHT)  # cases made ahead of the senders: bounded memory

        def task(case: Case, client: httpx.Client) -> None:
            try:
                self.send(case, client)
            finally:
                slots.release()

        limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", limits=limits,
                          timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=5.0)) as client, \
                ThreadPoolExecutor(IN_FLIGHT) as pool:
            for case in batch:
                if len(self.problems) >= 50 or time.monotonic() > self.deadline:
                    break
                slots.acquire()
                self.sent += 1
                pool.submit(task, case, client)


# -- the run -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_gateway(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path_factory) -> Iterator[GatewayProcess]:
    """The shared gateway's configuration with the default body limit and an embedding model: a gateway of its own,
    so that the keys and workspaces the run makes and its measures of memory and open files are this run's alone."""
    workdir = tmp_path_factory.mktemp("fuzz")
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, workdir / "data")
    del config["server"]["max_body_bytes"]
    for connection in config["providers"]:
        # The fakes run in this process, beside the senders: on a busy machine one may answer late, which is not
        # what this test is about (tests/api/test_faults.py is).
        connection["timeout"] = 30
    config["providers"][0]["models"].append({
        "id": EMBEDDING_MODEL, "upstream": "text-embedding-3-small", "context_length": 8191,
        "pricing": {"prompt": 0.02, "completion": 0}, "output_modalities": ["embeddings"]})
    # Blocks of 256 KB and more are mapped for each request and unmapped after it: glibc would otherwise keep freed
    # 10 MB bodies in its heap (its mmap threshold rises to the largest block freed), and resident memory would
    # wander by tens of MB with the order of the requests, hiding what the bound is there to catch (memory that
    # requests leave behind).
    proc = GatewayProcess(config, workdir, env={"MALLOC_MMAP_THRESHOLD_": str(256 * 1024)}).start()
    yield proc
    proc.stop()


def make_setup(url: str) -> Setup:
    """A workspace with an environment and a member, a plain key, a management key, keys to change and delete, a
    generation and a stored response."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        def made(path: str, body: dict[str, Any], key: str = MASTER_KEY) -> httpx.Response:
            resp = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code in (200, 201), f"{path}: {resp.status_code} {resp.text[:300]}"
            return resp

        made("/api/v1/workspaces", {"name": "fuzz-ws"})
        made("/api/v1/workspaces/fuzz-ws/environments", {"name": "staging"})
        member = "fuzz-member@example.test"
        made("/api/v1/workspaces/fuzz-ws/members", {"email": member, "role": "member"})
        user_key = made("/api/v1/keys", {"name": "fuzz-user"}).json()["key"]
        admin_key = made("/api/v1/keys", {"name": "fuzz-admin", "management": True, "workspace": "fuzz-ws"}).json()["key"]
        victims = [made("/api/v1/keys", {"name": f"fuzz-victim-{n}", "workspace": "fuzz-ws"}).json()["data"]["hash"]
                   for n in range(6)]
        chat = made(PATHS["chat"], {"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}]}, user_key)
        stored = made(PATHS["responses"], {"model": MODELS[0], "input": "hi", "store": True}, user_key)
    return Setup(user_key, admin_key, victims, chat.headers["x-generation-id"], stored.json()["id"], member)


def process_figures(pid: int) -> tuple[int, int]:
    """(resident memory in bytes, open files) of process `pid`, once its open files have stopped changing (the
    connections of the batch just sent close on the server's side a moment after the client's)."""
    fds, since = -1, time.monotonic()
    while time.monotonic() - since < 5:
        now = len(os.listdir(f"/proc/{pid}/fd"))
        if now == fds:
            break
        fds = now
        time.sleep(0.3)
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
    return rss, fds


ERROR_LINE = re.compile(r'"level":\s*"(ERROR|CRITICAL)"|Traceback|unhandled error')


@pytest.mark.timeout(int(HANG_BUDGET) + 180)
def test_fuzzed_requests_never_get_a_5xx(fuzz_gateway, fake_openai, fake_anthropic, fake_gemini,
                                         fake_local) -> None:
    gateway = fuzz_gateway
    assert gateway.proc is not None
    setup = make_setup(gateway.url)
    secrets = [MASTER_KEY.encode(), setup.user_key.encode(), setup.admin_key.encode(),
               *(fake.api_key.encode() for fake in (fake_openai, fake_anthropic, fake_gemini))]
    started = time.monotonic()
    run = Run(gateway.port, secrets, started + HANG_BUDGET)

    run.run(cases(SEED, WARM_UP, setup))
    for fake in (fake_openai, fake_anthropic, fake_gemini, fake_local):
        fake.reset()  # thousands of recorded requests (some of 10 MB) are no use to anyone
    rss_warm, fds_warm = process_figures(gateway.proc.pid)
    run.run(cases(SEED, COUNT, setup, start=WARM_UP))
    elapsed = time.monotonic() - started
    for fake in (fake_openai, fake_anthropic, fake_gemini, fake_local):
        fake.reset()
    rss_end, fds_end = process_figures(gateway.proc.pid)

    summary = (f"seed {SEED}: {run.sent} requests in {elapsed:.1f} s; RSS {rss_warm >> 20} -> {rss_end >> 20} MiB, "
               f"open files {fds_warm} -> {fds_end}; answers {dict(sorted(run.answered.items()))}")
    print(summary)
    errors = [line[:400] for line in gateway.log().splitlines() if ERROR_LINE.search(line)]
    assert not run.problems, f"{summary}\n{len(run.problems)} problem(s):\n" + "\n".join(run.problems) \
        + "\nerrors in the gateway's log:\n" + "\n".join(errors[:20])
    assert run.sent == COUNT, f"{summary}\nthe run stopped after {run.sent} of {COUNT} requests: something hangs"
    assert not errors, "errors in the gateway's log:\n" + "\n".join(errors[:20])
    assert httpx.get(gateway.url + "/health", timeout=5).status_code == 200
    assert httpx.get(gateway.url + "/health/ready", timeout=5).status_code == 200
    assert rss_end - rss_warm < RSS_GROWTH_BOUND, summary
    assert fds_end - fds_warm <= FD_GROWTH_BOUND, summary
    # The run reached the handlers, not only the gate and the parsers: every kind of request got answers of each class.
    for kind in ("chat", "messages", "responses", "account", "header"):
        for status_class in ("2xx", "4xx"):
            assert run.answered[(kind, status_class)] > 0, f"no {status_class} answer for {kind}: {summary}"
