"""Hostile input never gets a 5xx, a hang or a connection closed without an answer: a bounded, seeded fuzz run.

Valid request bodies of every inference front (chat completions, messages, count_tokens, responses, completions) are
mutated at random paths (values of other types, huge numbers, control characters, deep nesting, missing required keys,
unknown keys, content parts of the wrong shape), and raw garbage bodies (invalid JSON and UTF-8, JSON scalars,
truncated JSON, 1e999, duplicate keys, huge arrays) are sent too, each over HTTP to the shared gateway, whose fake
upstreams are healthy. Every request must get an answer below 500 in its endpoint's error shape, and the gateway must
log no unhandled error.

The run is deterministic: `CROSSROADS_FUZZ_SEED` and `CROSSROADS_FUZZ_COUNT` run another or a longer one by hand, e.g.
`CROSSROADS_FUZZ_SEED=7 CROSSROADS_FUZZ_COUNT=20000 .venv/bin/python -m pytest tests/test_fuzz.py -q`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import MASTER_KEY

SEED = int(os.environ.get("CROSSROADS_FUZZ_SEED") or 20240117)
COUNT = int(os.environ.get("CROSSROADS_FUZZ_COUNT") or 2500)
TIME_BUDGET = 90.0  # seconds: a default run takes well under this on two cores

AUTH = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
PATHS = {"chat": "/api/v1/chat/completions", "messages": "/api/v1/messages",
         "count_tokens": "/api/v1/messages/count_tokens", "responses": "/api/v1/responses",
         "completions": "/api/v1/completions"}
# endpoint -> share of the mutated requests
WEIGHTS = {"chat": 35, "messages": 20, "count_tokens": 8, "responses": 25, "completions": 12}
MODELS = ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash")

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


def hostile(rng: random.Random) -> Any:
    pick = rng.randrange(22)
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
                         "previous_response_id", "response_format", "stop", "instructions"])] = hostile(rng)


# -- raw garbage -------------------------------------------------------------------------------------------------


def garbage(rng: random.Random, endpoint: str) -> bytes:
    valid = encode(valid_body(rng, endpoint)).encode()
    pick = rng.randrange(20)
    if pick == 0:
        return valid[: rng.randrange(1, len(valid))]  # truncated
    if pick == 1:
        flipped = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if pick == 2:
        return valid.replace(b'"model"', b'"model":"x","model"', 1)  # duplicate keys
    if pick == 3:
        return b"\xef\xbb\xbf" + valid  # a byte-order mark
    if pick == 4:
        return valid[:-1] + b',"messages":[' + b"1," * 200_000 + b"1]}"  # a huge array
    if pick == 5:
        return rng.choice([b"[" * 5000, b'{"a":' * 3000, b"[" * 1100 + b"]" * 1100, b"[" * 255 + b"]" * 255])
    if pick == 6:
        return valid.replace(b"Say hi", b"\xff\xfe\xc3\x28") if b"Say hi" in valid else b'{"model":"\xff"}'
    return rng.choice([
        b"", b" ", b"\n", b"\x00", b"{", b"}", b"{}", b"[]", b"null", b"true", b"1", b"-1", b'"model"', b"1e999",
        b'{"model": 1e999}', b'{"model": NaN}', b"Infinity", b'{"a":1,"a":2}', b"// c\n{}", b"{'model': 'x'}",
        b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":1e999}',
        b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"openai/gpt-4o-mini\\u0000","messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}garbage',
        b"\xc3\x28", b"\xed\xa0\x80", b'{"\xff": 1}',
    ])


# -- one request, checked ----------------------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    endpoint: str
    body: bytes
    headers: dict[str, str]
    note: str


def cases(seed: int, count: int) -> Iterator[Case]:
    """The run's requests, made one at a time (a long run's bodies would not fit in memory together)."""
    rng = random.Random(seed)
    endpoints = list(WEIGHTS)
    weights = list(WEIGHTS.values())
    for index in range(count):
        endpoint = rng.choices(endpoints, weights)[0]
        headers: dict[str, str] = {}
        if rng.random() < 0.04:
            headers["vendor"] = rng.choice(["nope", "oai", "OAI", "anthropic", "google", "auto", "", "x" * 2000,
                                            "gem", "openai", "é", "local"])
        if rng.random() < 0.12:
            yield Case(index, endpoint, garbage(rng, endpoint), headers, "garbage")
            continue
        body = valid_body(rng, endpoint)
        mutations = rng.choice((1, 1, 1, 2, 3))
        for _ in range(mutations):
            mutate(rng, body)
        yield Case(index, endpoint, encode(body).encode("utf-8", "surrogatepass"), headers, f"{mutations} mutation(s)")


def error_shape_problem(endpoint: str, status: int, payload: Any) -> str | None:
    """What is wrong with an error body for `endpoint`, or None (the shape each endpoint's SDK reads)."""
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
    if endpoint == "responses":  # OpenAI's: a type, code a string or null
        if not isinstance(error.get("type"), str) or not (error.get("code") is None or isinstance(error["code"], str)):
            return f"not OpenAI's error shape: {payload!r:.200}"
    elif error.get("code") != status:  # OpenRouter's: code is the HTTP status
        return f"error.code {error.get('code')!r} is not the status {status}"
    return None


STREAM_FAILURES = (b'"finish_reason":"error"', b"event: error", b"event: response.failed")


def check(case: Case, resp: httpx.Response) -> str | None:
    status = resp.status_code
    if status >= 500:
        return f"HTTP {status}: {resp.text[:300]}"
    if "Traceback" in resp.text:
        return "a traceback in the answer"
    content_type = resp.headers.get("content-type", "")
    if status >= 400:
        try:
            payload = resp.json()
        except ValueError:
            return f"HTTP {status} with a body that is not JSON: {resp.text[:200]!r}"
        return error_shape_problem(case.endpoint, status, payload)
    if content_type.startswith("text/event-stream"):
        body = resp.content
        if any(marker in body for marker in STREAM_FAILURES):
            return f"a stream that failed: {body[-400:]!r}"
        return None
    try:
        payload = resp.json()
    except ValueError:
        return f"HTTP {status} with a body that is not JSON: {resp.text[:200]!r}"
    return None if isinstance(payload, dict) else f"HTTP {status} with a non-object body"


def run(url: str, seed: int, count: int, budget: float) -> tuple[list[str], float]:
    """Send the run's requests; (the problems found, the seconds it took). Stops early at 50 problems."""
    problems: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=url, timeout=httpx.Timeout(15.0, connect=5.0)) as client:
        for case in cases(seed, count):
            try:
                headers = {**AUTH, **{name: value.encode() for name, value in case.headers.items()}}  # "é" as UTF-8
                resp = client.post(PATHS[case.endpoint], content=case.body, headers=headers)
                problem = check(case, resp)
            except httpx.HTTPError as exc:  # no answer at all: a closed connection or a hang
                problem = f"no response: {type(exc).__name__}: {exc}"
            if problem is not None:
                problems.append(f"#{case.index} {case.endpoint} ({case.note}, headers {case.headers!r:.60}) "
                                f"body {case.body[:240]!r}: {problem}")
            if len(problems) >= 50 or time.monotonic() - started > budget:
                break
    return problems, time.monotonic() - started


def test_fuzzed_requests_never_get_a_5xx(gateway, fake_openai, fake_anthropic, fake_gemini) -> None:
    log_start = len(gateway.log())
    budget = TIME_BUDGET * max(1.0, COUNT / 2500)
    problems, elapsed = run(gateway.url, SEED, COUNT, budget)
    for fake in (fake_openai, fake_anthropic, fake_gemini):
        fake.reset()  # thousands of recorded requests are no use to the tests that follow
    log = gateway.log()[log_start:]
    errors = sorted({line for line in log.splitlines() if line[:1].isalpha() and "Error" in line.split(":")[0]})
    assert not problems, (f"seed {SEED}: {len(problems)} problem(s) in {elapsed:.1f} s:\n" + "\n".join(problems)
                          + "\nerrors in the gateway's log:\n" + "\n".join(errors))
    assert "unhandled error" not in log and "Traceback" not in log, log[-4000:]
    assert elapsed < budget, f"the fuzz run took {elapsed:.1f} s"
    assert httpx.get(gateway.url + "/health").status_code == 200
