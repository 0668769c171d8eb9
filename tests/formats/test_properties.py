"""Property tests (Hypothesis) for every translator: the fronts (client formats) and the provider adapters.

Inputs are generated valid for their format — text, images as data URLs, tool calls and tool results, system
prompts, reasoning settings, sampling parameters, stop sequences, tools with JSON-schema parameters — and then:

1. Round trips keep meaning. An Anthropic Messages body through the messages front and the anthropic translator, a
   Responses body through the responses front and the openai translator, a canonical chat body through the gemini
   translator: the native request says what the client said. A native response of each provider, read by its
   translator and rendered by each front, says what the upstream said. "Meaning" is what the helpers below compute
   (`anthropic_turns`, `responses_events`, `gemini_events`, `Answer`...): normalised text per role, tool calls by
   name and parsed arguments, tool results, the parameters — never byte equality.
2. Re-chunking changes nothing. A native stream (OpenAI chat chunks, Anthropic events, Gemini SSE, Responses events),
   encoded with LF or CRLF line ends, `: ping` comments, `event:`/`id:` fields and multi-line `data:` fields, is split
   at arbitrary byte boundaries and fed through the gateway's SSE reader, the provider's translator and each front's
   renderer the way `Call._pump` does: the events read and the answer each client assembles are those of the unsplit
   stream, and that answer is the one the upstream gave. The same streams, served by the fake upstreams, also go
   through a real gateway process (`test_generated_streams_keep_meaning_through_the_gateway`).
3. Bad input never raises anything undocumented. Arbitrary JSON (and bodies that look almost right: right keys, wrong
   types, missing parts) given to every front's parse gives a canonical body or a `GatewayError` below 500 (the
   parsed body then goes to every provider's request() under the same rule); given to every provider translator's
   response()/stream_event() it gives a value or `ValueError` / `UpstreamStreamError` (what the gateway answers 502
   for), and what the translator gave back renders in every front. A KeyError, TypeError, AttributeError... is a bug;
   each one found is kept below as a plain regression test.

Runs are bounded (`deadline=None`; the whole file takes well under a minute on two cores), no example database is
written to the work tree, and when the environment variable CI is set generation is derandomized, so a CI run is
reproducible. For a longer run by hand, pick the thorough profile (25 times the examples):

    CROSSROADS_HYPOTHESIS_PROFILE=crossroads-thorough .venv/bin/python -m pytest -q -p no:cacheprovider \
        tests/formats/test_properties.py
"""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from crossroads.accounting.exchange import Exchange
from crossroads.api.asgi import Request
from crossroads.api.inference import _observe
from crossroads.catalog import ModelSpec, Pricing
from crossroads.config import ConnectionConfig
from crossroads.errors import GatewayError
from crossroads.formats.base import Parsed
from crossroads.formats.chat import ChatFront
from crossroads.formats.embeddings import EmbeddingsFront
from crossroads.formats.fronts import CompletionsFront, MessagesFront, ResponsesFront
from crossroads.providers.anthropic.adapter import AnthropicAdapter, AnthropicNativeTranslator
from crossroads.providers.base import FINISH_REASONS, RequestContext, UpstreamStreamError, Usage, sse_frame
from crossroads.providers.gemini.adapter import GeminiAdapter
from crossroads.providers.http import iter_sse
from crossroads.providers.openai.adapter import OPENROUTER_ONLY_FIELDS, OpenAIAdapter
from crossroads.providers.openai.responses import ResponsesPassthrough
from crossroads.store import Store, migrate
from crossroads.store.engine import async_url, create_engine
from tests.conftest import MASTER_KEY, GatewayProcess
from tests.conftest import PROVIDERS as CONFTEST_PROVIDERS
from tests.fakes.base import FakeUpstream, Fault

# -- run bounds ----------------------------------------------------------------------------------------------

settings.register_profile("crossroads-quick", deadline=None, database=None, derandomize=bool(os.environ.get("CI")),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("crossroads-thorough", settings.get_profile("crossroads-quick"))
PROFILE_NAME = os.environ.get("CROSSROADS_HYPOTHESIS_PROFILE") or "crossroads-quick"
PROFILE = settings.get_profile(PROFILE_NAME)  # used as each test's parent: other test modules' Hypothesis is untouched
SCALE = 25 if PROFILE_NAME == "crossroads-thorough" else 1


def bounded(examples: int, *, also_suppress: tuple[HealthCheck, ...] = ()) -> settings:
    return settings(PROFILE, max_examples=examples * SCALE,
                    suppress_health_check=[*PROFILE.suppress_health_check, *also_suppress])


# One event loop for the module's coroutines (front parse, translator request, the SSE reader): a loop per example
# would cost more than the example. Opened by `module_scope` each time the module's tests start (pytest-xdist's
# worksteal can run them in two stretches on one worker, the module torn down in between).
LOOP = asyncio.new_event_loop()


def run(coroutine: Any) -> Any:
    return LOOP.run_until_complete(coroutine)


# Hypothesis keeps caches in ./.hypothesis, written as soon as tests are collected: this module's go to the system's
# temporary directory instead, not into the work tree (HYPOTHESIS_STORAGE_DIRECTORY, when set, wins).
HYPOTHESIS_HOME = os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or os.path.join(tempfile.gettempdir(),
                                                                                 "crossroads-hypothesis")
set_hypothesis_home_dir(HYPOTHESIS_HOME)


@pytest.fixture(scope="module", autouse=True)
def module_scope() -> Iterator[None]:
    global LOOP
    set_hypothesis_home_dir(HYPOTHESIS_HOME)  # again: another module's test may have set it back meanwhile
    if LOOP.is_closed():
        LOOP = asyncio.new_event_loop()
    yield
    LOOP.close()


class Holder:
    """What `ResponsesFront.parse` uses of the gateway: its store (a real one, migrated, on a temporary SQLite file),
    asked only when a body names a previous_response_id."""

    def __init__(self, store: Store) -> None:
        self.store = store


@pytest.fixture(scope="module")
def stored(module_scope: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holder]:
    url = f"sqlite:///{tmp_path_factory.mktemp('properties') / 'db.sqlite'}"
    migrate(url)
    store = Store(create_engine(async_url(url)))
    yield Holder(store)
    run(store.close())


# -- connections, translators, fronts ------------------------------------------------------------------------

PRICING = Pricing(prompt=1e-6, completion=2e-6)
ADAPTERS: dict[str, Any] = {
    "openai": OpenAIAdapter(ConnectionConfig(name="compat", type="openai", base_url="https://llm.example/v1")),
    "anthropic": AnthropicAdapter(ConnectionConfig(name="anthropic", type="anthropic",
                                                   base_url="https://api.anthropic.com/v1", api_key="sk-ant-test")),
    "gemini": GeminiAdapter(ConnectionConfig(name="gemini", type="gemini",
                                             base_url="https://generativelanguage.googleapis.com/v1beta")),
}
ADAPTERS["responses"] = ADAPTERS["openai"]  # an OpenAI-compatible server that also serves /responses
MODELS = {
    "openai": ModelSpec(id="openai/gpt-4o", upstream="gpt-4o"),
    "anthropic": ModelSpec(id="anthropic/claude-sonnet-4", upstream="claude-sonnet-4-20250514",
                           max_completion_tokens=64000, reasoning=True),
    "gemini": ModelSpec(id="google/gemini-2.5-flash", upstream="gemini-2.5-flash", reasoning=True),
}
MODELS["responses"] = MODELS["openai"]
EMBEDDING_MODEL = ModelSpec(id="test/embed", upstream="text-embedding-3-small")
PROVIDERS = ("openai", "anthropic", "gemini")


def context(provider: str, *, stream: bool, model: ModelSpec | None = None) -> RequestContext:
    adapter = ADAPTERS[provider]
    return RequestContext(model=model or MODELS[provider], connection=adapter.conn, stream=stream)


def translator(provider: str, *, stream: bool = False, native: dict[str, Any] | None = None) -> Any:
    """A fresh translator as the gateway makes one per request (`responses`: the Responses pass-through)."""
    ctx = context(provider, stream=stream)
    if provider == "responses":
        return ResponsesPassthrough(ADAPTERS["openai"], ctx, native or {})
    return ADAPTERS[provider].translator(ctx)


FRONTS: dict[str, Any] = {"chat": ChatFront(), "messages": MessagesFront(), "responses": ResponsesFront(),
                          "completions": CompletionsFront(), "embeddings": EmbeddingsFront()}
CHAT_FRONTS = ("chat", "messages", "responses", "completions")
PATHS = {"chat": "/api/v1/chat/completions", "messages": "/api/v1/messages", "responses": "/api/v1/responses",
         "completions": "/api/v1/completions", "embeddings": "/api/v1/embeddings"}


def client_request(front: str, raw: bytes) -> Request:
    scope = {"type": "http", "method": "POST", "path": PATHS[front],
             "headers": [(b"content-type", b"application/json")]}
    request = Request(scope, receive=None, send=None)  # type: ignore[arg-type]  # parse reads only the body
    request.body = raw
    return request


async def parse(front: str, body: Any, gateway: Any = None) -> Parsed:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return await FRONTS[front].parse(client_request(front, raw), gateway)


def renderer(front: str, usage: Usage) -> Any:
    """The front's renderer as the gateway makes one per request (the Responses one echoes an empty request)."""
    parsed = Parsed({"model": "test/model", "messages": [{"role": "user", "content": "hi"}]})
    return FRONTS[front].renderer(generation_id="gen-1700000000-abcdefghij", model_id="test/model", provider="up",
                                  parsed=parsed, usage=usage)


def exchange() -> Exchange:
    """An Exchange for `_observe` (which tracks only finish reasons and streamed text): nothing else is read."""
    return Exchange("gen-1", None, MODELS["openai"], None, stream=True, headers={}, user=None,  # type: ignore[arg-type]
                    prompt_estimate=0)


# -- common strategies ---------------------------------------------------------------------------------------

# Any text a client may send (lone surrogates cannot be encoded as JSON).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
WORDS = TEXT.filter(lambda s: bool(s.strip()))  # text that says something: formats drop blank text
NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,15}", fullmatch=True)
SIGNATURES = st.from_regex(r"[A-Za-z0-9+/]{8,40}={0,2}", fullmatch=True)
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
                | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
ARGUMENTS = st.dictionaries(NAMES, JSON_VALUES, max_size=4)
IMAGE_MAGIC = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff\xe0", "image/gif": b"GIF89a",
               "image/webp": b"RIFF\x00\x00\x00\x00WEBPVP8 "}


@st.composite
def data_urls(draw: st.DrawFn) -> str:
    mime = draw(st.sampled_from(sorted(IMAGE_MAGIC)))
    payload = IMAGE_MAGIC[mime] + draw(st.binary(max_size=24))
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def _leaf_schemas() -> st.SearchStrategy[dict[str, Any]]:
    kinds = st.sampled_from(["string", "integer", "number", "boolean"])
    return st.builds(lambda kind, description: {"type": kind, **({"description": description} if description else {})},
                     kinds, st.none() | WORDS)


@st.composite
def object_schemas(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """JSON Schema for tool parameters, within the subset every provider takes as it is."""
    value = _leaf_schemas() if depth >= 1 else (_leaf_schemas() | object_schemas(depth + 1)
                                                | st.builds(lambda items: {"type": "array", "items": items},
                                                            _leaf_schemas()))
    properties = draw(st.dictionaries(NAMES, value, max_size=4))
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if properties:
        required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True))
        if required:
            schema["required"] = required
    return schema


@st.composite
def fragments(draw: st.DrawFn, text: str) -> list[str]:
    """`text` cut into non-empty pieces (none for empty text), as upstreams stream it."""
    if not text:
        return []
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(text) - 1, 1)), max_size=4))) - {len(text)})
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def canonical_json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# == 1. round trips ==========================================================================================

# -- Anthropic Messages -> canonical -> Anthropic ------------------------------------------------------------


@st.composite
def anthropic_tools(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(NAMES, max_size=3, unique=True))
    tools = []
    for name in names:
        tool: dict[str, Any] = {"name": name, "input_schema": draw(object_schemas())}
        description = draw(st.none() | WORDS)
        if description:
            tool["description"] = description
        tools.append(tool)
    return tools


@st.composite
def messages_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """An Anthropic Messages request: a conversation of text, images, thinking, tool use and tool results."""
    tools = draw(anthropic_tools())
    tool_names = st.sampled_from([t["name"] for t in tools]) if tools else NAMES
    messages: list[dict[str, Any]] = []
    unanswered: list[str] = []  # tool_use ids of the last assistant turn
    for turn in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(("user", "assistant")))
        blocks: list[dict[str, Any]] = []
        if role == "user":
            for call_id in unanswered:
                result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
                content = draw(st.none() | TEXT | st.lists(TEXT, min_size=1, max_size=2))
                if isinstance(content, list):
                    result["content"] = [{"type": "text", "text": text} for text in content]
                elif content is not None:
                    result["content"] = content
                blocks.append(result)
            unanswered = []
            for _ in range(draw(st.integers(0 if blocks else 1, 3))):
                if draw(st.integers(0, 3)) == 0:
                    source = ({"type": "url", "url": f"https://img.example/{draw(NAMES)}.png"}
                              if draw(st.booleans()) else None)
                    if source is None:
                        header, payload = draw(data_urls())[5:].split(",", 1)
                        source = {"type": "base64", "media_type": header.split(";")[0], "data": payload}
                    blocks.append({"type": "image", "source": source})
                else:
                    blocks.append({"type": "text", "text": draw(TEXT)})
        else:
            unanswered = []
            for _ in range(draw(st.integers(0, 1))):
                if draw(st.booleans()):
                    blocks.append({"type": "thinking", "thinking": draw(TEXT), "signature": draw(SIGNATURES)})
                else:
                    blocks.append({"type": "redacted_thinking", "data": draw(SIGNATURES)})
            for _ in range(draw(st.integers(0, 2))):
                blocks.append({"type": "text", "text": draw(TEXT)})
            for k in range(draw(st.integers(0 if blocks else 1, 2))):
                call_id = f"toolu_{turn}_{k}"
                blocks.append({"type": "tool_use", "id": call_id, "name": draw(tool_names), "input": draw(ARGUMENTS)})
                unanswered.append(call_id)
        if len(blocks) == 1 and blocks[0]["type"] == "text" and draw(st.booleans()):
            messages.append({"role": role, "content": blocks[0]["text"]})
        else:
            messages.append({"role": role, "content": blocks})
    body: dict[str, Any] = {"model": "anthropic/claude-sonnet-4", "max_tokens": draw(st.integers(1, 8192)),
                            "messages": messages}
    system = draw(st.none() | WORDS | st.lists(WORDS, min_size=1, max_size=3))
    if isinstance(system, list):
        body["system"] = [{"type": "text", "text": text} for text in system]
    elif system is not None:
        body["system"] = system
    optional = {"temperature": st.floats(0, 1), "top_p": st.floats(0.01, 1), "top_k": st.integers(1, 500),
                "stop_sequences": st.lists(WORDS, min_size=1, max_size=4),
                "metadata": st.builds(lambda user: {"user_id": user}, WORDS),
                "thinking": st.sampled_from([{"type": "disabled"}, {"type": "adaptive"}])
                | st.builds(lambda budget: {"type": "enabled", "budget_tokens": budget}, st.integers(1, 16000))}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if tools:
        body["tools"] = tools
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["auto", "any", "none", "tool"]))
            choice: dict[str, Any] = {"type": kind}
            if kind == "tool":
                choice["name"] = draw(tool_names)
            if draw(st.booleans()):
                choice["disable_parallel_tool_use"] = draw(st.booleans())
            body["tool_choice"] = choice
    return body


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block["text"] for block in content or () if block.get("type") == "text")


def anthropic_turns(messages: list[dict[str, Any]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The conversation as Anthropic reads it: (role, blocks) with blank text gone, neighbouring turns of one role
    merged, a user turn's tool results first, and a final assistant turn (a prefill) without trailing whitespace."""
    turns: list[tuple[str, list[tuple[Any, ...]]]] = []
    for message in messages:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        items: list[tuple[Any, ...]] = []
        for block in blocks:
            kind = block["type"]
            if kind == "text" and block["text"].strip():
                items.append(("text", block["text"]))
            elif kind == "image":
                source = block["source"]
                items.append(("image", source.get("media_type"), source.get("data"), source.get("url")))
            elif kind == "tool_use":
                items.append(("tool_use", block["id"], block["name"], canonical_json(block["input"])))
            elif kind == "tool_result":
                items.append(("tool_result", block["tool_use_id"], _tool_result_text(block.get("content"))))
            elif kind == "thinking":
                items.append(("thinking", block["thinking"], block["signature"]))
            elif kind == "redacted_thinking":
                items.append(("redacted_thinking", block["data"]))
        if not items:
            continue
        if turns and turns[-1][0] == message["role"]:
            turns[-1][1].extend(items)
        else:
            turns.append((message["role"], items))
    for role, items in turns:
        if role == "user":
            items.sort(key=lambda item: item[0] != "tool_result")
    if turns and turns[-1][0] == "assistant":
        items = turns[-1][1]
        if items[-1][0] == "text":
            items[-1] = ("text", items[-1][1].rstrip())
            if not items[-1][1]:
                items.pop()
        if not items:
            turns.pop()
    return turns


def system_text(system: Any) -> str:
    if isinstance(system, list):
        return "\n\n".join(block["text"] for block in system)
    return system or ""


def thinking_refused(turns: list[tuple[str, list[tuple[Any, ...]]]], tool_choice: Any, prefill: bool) -> bool:
    """Anthropic's rules for extended thinking: not with a forced tool, not with a prefilled answer, and mid tool loop
    only when the assistant turn that called the tools starts with its (signed) thinking."""
    if isinstance(tool_choice, dict) and tool_choice.get("type") in ("any", "tool"):
        return True
    if prefill:
        return True
    for role, items in reversed(turns):
        if role == "assistant":
            if any(item[0] == "tool_use" for item in items):
                return items[0][0] not in ("thinking", "redacted_thinking")
            break
    return False


@bounded(150)
@given(body=messages_bodies())
@example(body={"model": "m", "max_tokens": 10, "thinking": {"type": "enabled", "budget_tokens": 2000}, "messages": [
    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": " "}]})
def test_messages_to_anthropic_keeps_meaning(body: dict[str, Any]) -> None:
    parsed = run(parse("messages", body))
    native = orjson.loads(run(translator("anthropic").request(parsed.body)).body)

    assert anthropic_turns(native["messages"]) == anthropic_turns(body["messages"])
    assert system_text(native.get("system")) == system_text(body.get("system"))
    assert native.get("stop_sequences") == body.get("stop_sequences")
    assert native.get("metadata") == body.get("metadata")
    assert [(t["name"], t.get("description"), t["input_schema"]) for t in native.get("tools", ())] == [
        (t["name"], t.get("description"), t["input_schema"]) for t in body.get("tools", ())]
    choice = body.get("tool_choice")
    if choice is None:
        assert "tool_choice" not in native
    else:
        wanted = {"type": choice["type"], **({"name": choice["name"]} if "name" in choice else {})}
        if choice.get("disable_parallel_tool_use") and choice["type"] != "none":
            wanted["disable_parallel_tool_use"] = True
        assert native["tool_choice"] == wanted

    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        budget: int | None = max(thinking["budget_tokens"], 1024)
    elif thinking.get("type") == "adaptive":
        budget = max(int(body["max_tokens"] * 0.5), 1024)
    else:
        budget = None
    merged = anthropic_turns(body["messages"])
    prefill = bool(merged) and merged[-1][0] == "assistant"  # the conversation as Anthropic reads it ends with it
    if budget is None or thinking_refused(merged, choice, prefill):
        assert "thinking" not in native
        assert native["max_tokens"] == body["max_tokens"]
        for key in ("temperature", "top_k"):
            assert native.get(key) == body.get(key)
        # Current Claude models refuse temperature and top_p together: temperature wins.
        assert native.get("top_p") == (body.get("top_p") if "temperature" not in body else None)
    else:
        assert native["thinking"] == {"type": "enabled", "budget_tokens": budget}
        # The budget counts inside max_tokens: a smaller max_tokens is raised so the answer keeps its room.
        assert native["max_tokens"] == (body["max_tokens"] + budget if body["max_tokens"] <= budget
                                        else body["max_tokens"])
        assert not {"temperature", "top_p", "top_k"} & set(native)  # refused alongside thinking

    # The same body to an Anthropic connection goes up as it came, but for the model.
    passthrough = AnthropicNativeTranslator(ADAPTERS["anthropic"], context("anthropic", stream=False), body, None)
    sent = orjson.loads(run(passthrough.request(parsed.body)).body)
    assert sent == {**body, "model": MODELS["anthropic"].upstream}


# -- OpenAI Responses -> canonical -> OpenAI chat ------------------------------------------------------------


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A Responses request: instructions, message items (text and images), function calls and their outputs."""
    tools = []
    for name in draw(st.lists(NAMES, max_size=3, unique=True)):
        tool: dict[str, Any] = {"type": "function", "name": name, "parameters": draw(object_schemas())}
        if draw(st.booleans()):
            tool["description"] = draw(WORDS)
        if draw(st.booleans()):
            tool["strict"] = draw(st.booleans())
        tools.append(tool)
    tool_names = st.sampled_from([t["name"] for t in tools]) if tools else NAMES
    items: list[dict[str, Any]] = []
    calls: list[str] = []
    for n in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "user", "system", "assistant", "function_call", "function_call_output"]))
        if kind == "function_call_output" and not calls:
            kind = "function_call"
        if kind == "user":
            if draw(st.booleans()):
                content: Any = draw(TEXT)
            else:
                content = []
                for _ in range(draw(st.integers(1, 3))):
                    if draw(st.integers(0, 2)) == 0:
                        part = {"type": "input_image", "image_url": draw(data_urls())}
                        if draw(st.booleans()):
                            part["detail"] = draw(st.sampled_from(["auto", "low", "high"]))
                        content.append(part)
                    else:
                        content.append({"type": "input_text", "text": draw(TEXT)})
            item: dict[str, Any] = {"role": "user", "content": content}
        elif kind == "system":
            item = {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(TEXT)}
        elif kind == "assistant":
            item = {"type": "message", "role": "assistant", "id": f"msg_{n}", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}
                                for text in draw(st.lists(TEXT, min_size=1, max_size=2))]}
        elif kind == "function_call":
            call_id = f"call_{n}"
            calls.append(call_id)
            item = {"type": "function_call", "call_id": call_id, "name": draw(tool_names),
                    "arguments": orjson.dumps(draw(ARGUMENTS)).decode()}
        else:
            item = {"type": "function_call_output", "call_id": draw(st.sampled_from(calls)), "output": draw(TEXT)}
        if "role" in item and draw(st.booleans()):
            item["type"] = "message"
        items.append(item)
    body: dict[str, Any] = {"model": "openai/gpt-4o", "input": items}
    if len(items) == 1 and items[0].get("role") == "user" and isinstance(items[0]["content"], str):
        body["input"] = items[0]["content"]
    optional = {"instructions": WORDS, "max_output_tokens": st.integers(1, 32000), "temperature": st.floats(0, 2),
                "top_p": st.floats(0.01, 1), "user": WORDS,
                "reasoning": st.builds(lambda effort: {"effort": effort}, st.sampled_from(["low", "medium", "high"])),
                "text": st.builds(lambda name, schema: {"format": {"type": "json_schema", "name": name,
                                                                   "schema": schema}}, NAMES, object_schemas()),
                "metadata": st.dictionaries(NAMES, TEXT, max_size=2), "store": st.booleans()}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if tools:
        body["tools"] = tools
        if draw(st.booleans()):
            body["tool_choice"] = draw(st.sampled_from(["auto", "required", "none"])
                                       | st.builds(lambda name: {"type": "function", "name": name}, tool_names))
        if draw(st.booleans()):
            body["parallel_tool_calls"] = draw(st.booleans())
    return body


def _responses_parts(content: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(content, str):
        return (("text", content),)
    return tuple(("image", part["image_url"]) if part["type"] == "input_image" else ("text", part["text"])
                 for part in content)


def responses_events(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The conversation of a Responses request as a list of what was said: (speaker, what), in order."""
    events: list[tuple[Any, ...]] = []
    if body.get("instructions"):
        events.append(("system", body["instructions"]))
    items = body["input"] if isinstance(body["input"], list) else [{"role": "user", "content": body["input"]}]
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            events.append(("call", item["call_id"], item["name"], canonical_json(orjson.loads(item["arguments"]))))
        elif kind == "function_call_output":
            events.append(("output", item["call_id"], item["output"]))
        elif item["role"] == "user":
            events.append(("user", _responses_parts(item["content"])))
        elif item["role"] == "assistant":
            events.append(("assistant", "".join(part["text"] for part in item["content"])))
        else:
            events.append(("system", item["content"]))
    return events


def _chat_parts(content: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(content, str):
        return (("text", content),)
    return tuple(("image", part["image_url"]["url"]) if part["type"] == "image_url" else ("text", part["text"])
                 for part in content)


def chat_events(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The same for a chat request's messages."""
    events: list[tuple[Any, ...]] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            events.append(("system", message["content"]))
        elif role == "user":
            events.append(("user", _chat_parts(message["content"])))
        elif role == "tool":
            events.append(("output", message["tool_call_id"], message["content"]))
        else:
            if message.get("content") is not None:
                events.append(("assistant", message["content"]))
            for call in message.get("tool_calls") or ():
                events.append(("call", call["id"], call["function"]["name"],
                               canonical_json(orjson.loads(call["function"]["arguments"]))))
    return events


@bounded(150)
@given(body=responses_bodies())
def test_responses_to_openai_chat_keeps_meaning(body: dict[str, Any]) -> None:
    parsed = run(parse("responses", body))
    native = orjson.loads(run(translator("openai").request(parsed.body)).body)

    assert chat_events(native["messages"]) == responses_events(body)
    assert native["model"] == MODELS["openai"].upstream
    assert not set(native) & OPENROUTER_ONLY_FIELDS  # a plain OpenAI-compatible server would refuse them
    assert native.get("max_tokens") == body.get("max_output_tokens")
    for key in ("temperature", "top_p", "user"):
        assert native.get(key) == body.get(key)
    assert native.get("reasoning_effort") == (body.get("reasoning") or {}).get("effort")
    if "text" in body:
        fmt = body["text"]["format"]
        assert native["response_format"] == {"type": "json_schema",
                                             "json_schema": {"name": fmt["name"], "schema": fmt["schema"]}}
    else:
        assert "response_format" not in native
    tools = body.get("tools", [])
    assert [t["function"] for t in native.get("tools", ())] == [
        {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t} for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice["name"]}}
    assert native.get("tool_choice") == choice
    assert native.get("parallel_tool_calls") == body.get("parallel_tool_calls")

    # To an upstream that serves /responses itself the body goes up as it came, but for the model.
    sent = orjson.loads(run(translator("responses", native=body).request(parsed.body)).body)
    assert sent == {**body, "model": MODELS["openai"].upstream}


# -- canonical chat -> Gemini --------------------------------------------------------------------------------


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A canonical chat request: system prompts, user text and images, assistant tool calls, tool results."""
    tools = []
    for name in draw(st.lists(NAMES, max_size=3, unique=True)):
        function: dict[str, Any] = {"name": name, "parameters": draw(object_schemas())}
        if draw(st.booleans()):
            function["description"] = draw(WORDS)
        tools.append({"type": "function", "function": function})
    tool_names = st.sampled_from([t["function"]["name"] for t in tools]) if tools else NAMES
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        system = draw(WORDS | st.lists(WORDS, min_size=1, max_size=2))
        messages.append({"role": draw(st.sampled_from(["system", "developer"])),
                         "content": system if isinstance(system, str)
                         else [{"type": "text", "text": text} for text in system]})
    unanswered: list[str] = []
    for turn in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(["user", "assistant", "tool"] if unanswered else ["user", "assistant"]))
        if role == "user":
            if draw(st.booleans()):
                content: Any = draw(WORDS)
            else:
                content = [{"type": "image_url", "image_url": {"url": draw(data_urls())}}
                           if draw(st.integers(0, 2)) == 0 else {"type": "text", "text": draw(WORDS)}
                           for _ in range(draw(st.integers(1, 3)))]
            messages.append({"role": "user", "content": content})
        elif role == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | WORDS)}
            calls = [{"id": f"call_{turn}_{k}", "type": "function",
                      "function": {"name": draw(tool_names), "arguments": orjson.dumps(draw(ARGUMENTS)).decode()}}
                     for k in range(draw(st.integers(0 if message["content"] else 1, 2)))]
            if calls:
                message["tool_calls"] = calls
            unanswered = [call["id"] for call in calls]
            messages.append(message)
        else:
            messages.append({"role": "tool", "tool_call_id": unanswered.pop(0),
                             "content": draw(TEXT | st.builds(lambda v: orjson.dumps(v).decode(), ARGUMENTS))})
    body: dict[str, Any] = {"model": "google/gemini-2.5-flash", "messages": messages}
    optional = {"max_tokens": st.integers(1, 65536), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
                "top_k": st.integers(1, 100), "seed": st.integers(0, 2**31 - 1),
                "stop": WORDS | st.lists(WORDS, min_size=1, max_size=5),
                "reasoning": st.builds(lambda effort: {"effort": effort},
                                       st.sampled_from(["none", "minimal", "low", "medium", "high"]))}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if tools:
        body["tools"] = tools
        if draw(st.booleans()):
            body["tool_choice"] = draw(st.sampled_from(["auto", "required", "none"]) | st.builds(
                lambda name: {"type": "function", "function": {"name": name}}, tool_names))
    return body


def _tool_response(text: str) -> dict[str, Any]:
    """What Gemini is told a tool answered: the JSON object the tool returned, else its text."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) and text[:1] == "{" else {"content": text}


def _decoded(url: str) -> tuple[str, str]:
    header, payload = url[5:].split(",", 1)
    return header.split(";")[0], payload


def chat_to_gemini_events(messages: list[dict[str, Any]]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(system texts, what each side said in order) of a chat conversation, in Gemini's terms: user and model turns,
    tool results said by the user side under the called function's name."""
    system: list[str] = []
    events: list[tuple[Any, ...]] = []
    names: dict[str, str] = {}
    for message in messages:
        role, content = message["role"], message.get("content")
        if role in ("system", "developer"):
            system.extend([content] if isinstance(content, str) else [part["text"] for part in content])
        elif role == "user":
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                events.append(("user", "image", *_decoded(part["image_url"]["url"])) if part["type"] == "image_url"
                              else ("user", "text", part["text"]))
        elif role == "assistant":
            if content:
                events.append(("model", "text", content))
            for call in message.get("tool_calls") or ():
                names[call["id"]] = call["function"]["name"]
                events.append(("model", "call", call["function"]["name"],
                               canonical_json(orjson.loads(call["function"]["arguments"]))))
        else:
            events.append(("user", "response", names[message["tool_call_id"]],
                           canonical_json(_tool_response(content))))
    return system, events


def gemini_events(native: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    system = [part["text"] for part in (native.get("systemInstruction") or {}).get("parts", ())]
    events: list[tuple[Any, ...]] = []
    for content in native["contents"]:
        role = content["role"]
        for part in content["parts"]:
            if "text" in part:
                events.append((role, "text", part["text"]))
            elif "inlineData" in part:
                events.append((role, "image", part["inlineData"]["mimeType"], part["inlineData"]["data"]))
            elif "functionCall" in part:
                events.append((role, "call", part["functionCall"]["name"],
                               canonical_json(part["functionCall"]["args"])))
            else:
                response = part["functionResponse"]
                events.append((role, "response", response["name"], canonical_json(response["response"])))
    return system, events


@bounded(150)
@given(body=chat_bodies())
def test_chat_to_gemini_keeps_meaning(body: dict[str, Any]) -> None:
    parsed = run(parse("chat", body))
    native = orjson.loads(run(translator("gemini").request(parsed.body)).body)

    assert gemini_events(native) == chat_to_gemini_events(body["messages"])
    config = native.get("generationConfig", {})
    assert config.get("maxOutputTokens") == body.get("max_tokens")
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed")):
        assert config.get(dst) == body.get(src)
    stop = body.get("stop")
    assert config.get("stopSequences") == ([stop] if isinstance(stop, str) else stop)
    declarations = [d for tool in native.get("tools", ()) for d in tool["functionDeclarations"]]
    assert [(d["name"], d.get("description"), d.get("parametersJsonSchema")) for d in declarations] == [
        (t["function"]["name"], t["function"].get("description"), t["function"]["parameters"] or None)
        for t in body.get("tools", ())]
    choice = body.get("tool_choice")
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str):
        assert native["toolConfig"] == {"functionCallingConfig": {"mode": modes[choice]}}
    elif isinstance(choice, dict):
        assert native["toolConfig"] == {"functionCallingConfig": {
            "mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}}
    else:
        assert "toolConfig" not in native
    effort = (body.get("reasoning") or {}).get("effort")
    thinking = config.get("thinkingConfig")
    if effort is None:
        assert thinking is None
    elif effort == "none":
        assert thinking == {"includeThoughts": False, "thinkingBudget": 0}
    else:
        assert thinking["includeThoughts"] is True
        # Thoughts count against the output allowance: they never take all of it.
        assert 0 <= thinking["thinkingBudget"] and (
            "max_tokens" not in body or thinking["thinkingBudget"] < body["max_tokens"])


# -- native responses -> canonical -> every front ------------------------------------------------------------


@dataclass
class Reply:
    """What an upstream answered, in canonical terms."""

    text: str
    reasoning: str
    calls: list[tuple[str, dict[str, Any]]]
    finish: str
    usage: Usage


@st.composite
def replies(draw: st.DrawFn, provider: str) -> Reply:
    """An answer the provider's API can express (Anthropic reports no reasoning tokens; only Anthropic and OpenAI
    chat report cache writes)."""
    calls = draw(st.lists(st.tuples(NAMES, ARGUMENTS), max_size=3))
    finish = draw(st.sampled_from(("tool_calls", "length") if calls else ("stop", "length", "content_filter")))
    prompt = draw(st.integers(0, 10**6))
    cached = draw(st.integers(0, prompt))
    writes = draw(st.integers(0, prompt - cached)) if provider in ("openai", "anthropic") else 0
    completion = draw(st.integers(0, 10**6))
    reasoning_tokens = draw(st.integers(0, completion)) if provider != "anthropic" else 0
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, reasoning_tokens=reasoning_tokens,
                  cached_tokens=cached, cache_write_tokens=writes, seen=True)
    return Reply(draw(TEXT), draw(TEXT), calls, finish, usage)


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens,
                                      "cache_write_tokens": usage.cache_write_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens,
            "output_tokens": usage.completion_tokens, "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens}


def gemini_usage(usage: Usage) -> dict[str, Any]:
    return {"promptTokenCount": usage.prompt_tokens,
            "candidatesTokenCount": usage.completion_tokens - usage.reasoning_tokens,
            "thoughtsTokenCount": usage.reasoning_tokens, "cachedContentTokenCount": usage.cached_tokens,
            "totalTokenCount": usage.total_tokens}


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}, "total_tokens": usage.total_tokens}


ANTHROPIC_STOPS = {"stop": ["end_turn", "stop_sequence"], "length": ["max_tokens"], "tool_calls": ["tool_use"],
                   "content_filter": ["refusal"]}
GEMINI_FINISHES = {"stop": ["STOP"], "tool_calls": ["STOP"], "length": ["MAX_TOKENS"],
                   "content_filter": ["SAFETY", "RECITATION", "PROHIBITED_CONTENT"]}


@st.composite
def native_responses(draw: st.DrawFn, provider: str, reply: Reply) -> dict[str, Any]:
    """The provider's non-stream answer body for `reply`."""
    arguments = [orjson.dumps(args).decode() for _, args in reply.calls]
    if provider == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.reasoning:
            message[draw(st.sampled_from(["reasoning", "reasoning_content"]))] = reply.reasoning
        if reply.calls:
            message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                      "function": {"name": name, "arguments": arguments[i]}}
                                     for i, (name, _) in enumerate(reply.calls)]
        return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o", "usage": openai_usage(reply.usage),
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish}]}
    if provider == "anthropic":
        content: list[dict[str, Any]] = []
        if reply.reasoning:
            content.append({"type": "thinking", "thinking": reply.reasoning, "signature": draw(SIGNATURES)})
        content += [{"type": "text", "text": piece} for piece in draw(fragments(reply.text))]
        content += [{"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": args}
                    for i, (name, args) in enumerate(reply.calls)]
        return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
                "content": content, "stop_reason": draw(st.sampled_from(ANTHROPIC_STOPS[reply.finish])),
                "stop_sequence": None, "usage": anthropic_usage(reply.usage)}
    parts = [{"text": piece, "thought": True} for piece in draw(fragments(reply.reasoning))]
    parts += [{"text": piece} for piece in draw(fragments(reply.text))]
    parts += [{"functionCall": {"name": name, "args": args}} for name, args in reply.calls]
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0,
                            "finishReason": draw(st.sampled_from(GEMINI_FINISHES[reply.finish]))}],
            "usageMetadata": gemini_usage(reply.usage), "modelVersion": "gemini-2.5-flash", "responseId": "r-1"}


@dataclass
class Answer:
    """What a client of one format takes from an answer, in canonical terms (None: the format cannot say it)."""

    text: str
    reasoning: str | None
    calls: list[tuple[str, bytes]] | None  # (name, the arguments as canonical JSON)
    finish: str | None
    usage: dict[str, int]


FRONT_USAGE = {"chat": ("prompt", "completion", "cached", "cache_write", "reasoning"),
               "messages": ("prompt", "completion", "cached", "cache_write"),
               "responses": ("prompt", "completion", "cached", "cache_write", "reasoning"),
               "completions": ("prompt", "completion")}


def usage_numbers(usage: Usage, front: str) -> dict[str, int]:
    numbers = {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens, "cached": usage.cached_tokens,
               "cache_write": usage.cache_write_tokens, "reasoning": usage.reasoning_tokens}
    return {key: numbers[key] for key in FRONT_USAGE[front]}


def expected_answer(reply: Reply, front: str) -> Answer:
    usage = usage_numbers(reply.usage, front)
    if front == "completions":  # legacy completions have neither tool calls nor reasoning, and no tool_calls finish
        return Answer(reply.text, None, None, "stop" if reply.finish == "tool_calls" else reply.finish, usage)
    return Answer(reply.text, reply.reasoning, [(name, canonical_json(args)) for name, args in reply.calls],
                  reply.finish, usage)


STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
                "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}


def _arguments(text: str) -> bytes:
    return canonical_json(orjson.loads(text))


def chat_answer(body: dict[str, Any]) -> Answer:
    choice = body["choices"][0]
    message = choice["message"]
    usage = body["usage"]
    calls = [(call["function"]["name"], _arguments(call["function"]["arguments"]))
             for call in message.get("tool_calls") or ()]
    return Answer(message.get("content") or "", message.get("reasoning") or "", calls, choice["finish_reason"], {
        "prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"],
        "cached": usage["prompt_tokens_details"]["cached_tokens"],
        "cache_write": usage["prompt_tokens_details"]["cache_write_tokens"],
        "reasoning": usage["completion_tokens_details"]["reasoning_tokens"]})


def _messages_usage(usage: dict[str, Any]) -> dict[str, int]:
    return {"prompt": usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"],
            "completion": usage["output_tokens"], "cached": usage["cache_read_input_tokens"],
            "cache_write": usage["cache_creation_input_tokens"]}


def messages_answer(body: dict[str, Any]) -> Answer:
    blocks = body["content"]
    return Answer("".join(b["text"] for b in blocks if b["type"] == "text"),
                  "".join(b["thinking"] for b in blocks if b["type"] == "thinking"),
                  [(b["name"], canonical_json(b["input"])) for b in blocks if b["type"] == "tool_use"],
                  STOP_REASONS[body["stop_reason"]], _messages_usage(body["usage"]))


def responses_answer(response: dict[str, Any]) -> Answer:
    output = response["output"]
    calls = [(item["name"], _arguments(item["arguments"])) for item in output if item["type"] == "function_call"]
    if response["status"] == "completed":
        finish = "tool_calls" if calls else "stop"
    else:
        assert response["status"] == "incomplete", response["status"]
        finish = {"max_output_tokens": "length", "content_filter": "content_filter"}[
            response["incomplete_details"]["reason"]]
    usage = response["usage"]
    return Answer("".join(part["text"] for item in output if item["type"] == "message" for part in item["content"]),
                  "".join(part["text"] for item in output if item["type"] == "reasoning" for part in item["summary"]),
                  calls, finish, {"prompt": usage["input_tokens"], "completion": usage["output_tokens"],
                                  "cached": usage["input_tokens_details"]["cached_tokens"],
                                  "cache_write": usage["input_tokens_details"].get("cache_write_tokens", 0),
                                  "reasoning": usage["output_tokens_details"]["reasoning_tokens"]})


def completions_answer(body: dict[str, Any]) -> Answer:
    (choice,) = body["choices"]
    usage = body["usage"]
    return Answer(choice["text"], None, None, choice["finish_reason"],
                  {"prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"]})


WHOLE_ANSWERS = {"chat": chat_answer, "messages": messages_answer, "responses": responses_answer,
                 "completions": completions_answer}


@bounded(100)
@given(data=st.data(), provider=st.sampled_from(PROVIDERS))
def test_native_responses_keep_meaning_in_every_front(data: st.DataObject, provider: str) -> None:
    reply = data.draw(replies(provider))
    raw = orjson.dumps(data.draw(native_responses(provider, reply)))
    for front in CHAT_FRONTS:
        upstream = translator(provider)
        result = upstream.response(raw)
        assert upstream.usage == reply.usage
        for choice in result["choices"]:
            assert choice["finish_reason"] in FINISH_REASONS
        body = orjson.loads(renderer(front, upstream.usage).completion(result, upstream.usage, PRICING))
        assert WHOLE_ANSWERS[front](body) == expected_answer(reply, front), front


# == 2. re-chunked streams ===================================================================================


@st.composite
def native_streams(draw: st.DrawFn, provider: str, reply: Reply) -> list[tuple[str | None, bytes]]:
    """The provider's stream for `reply`: (event name, data) per server-sent event."""
    events: list[tuple[str | None, Any]] = []
    arguments = [orjson.dumps(args).decode() for _, args in reply.calls]
    if provider == "openai":
        head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, dict[str, Any]]:
            return None, {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events.append(chunk({"role": "assistant", "content": ""}))
        key = draw(st.sampled_from(["reasoning", "reasoning_content"]))
        events += [chunk({key: piece}) for piece in draw(fragments(reply.reasoning))]
        events += [chunk({"content": piece}) for piece in draw(fragments(reply.text))]
        for i, (name, _) in enumerate(reply.calls):
            first, *rest = draw(fragments(arguments[i]))
            events.append(chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                                 "function": {"name": name, "arguments": first}}]}))
            events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}) for piece in rest]
        events.append(chunk({}, reply.finish))
        events.append((None, {**head, "choices": [], "usage": openai_usage(reply.usage)}))
        return [(name, orjson.dumps(payload)) for name, payload in events] + [(None, b"[DONE]")]
    if provider == "anthropic":
        usage = anthropic_usage(reply.usage)
        events.append(("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}))
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if reply.reasoning:
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""},
                           [{"type": "thinking_delta", "thinking": piece}
                            for piece in draw(fragments(reply.reasoning))]
                           + [{"type": "signature_delta", "signature": draw(SIGNATURES)}]))
        if reply.text:
            blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": piece}
                                                          for piece in draw(fragments(reply.text))]))
        for i, (name, _) in enumerate(reply.calls):
            # Anthropic opens the arguments with an empty fragment.
            blocks.append(({"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}},
                           [{"type": "input_json_delta", "partial_json": piece}
                            for piece in ["", *draw(fragments(arguments[i]))]]))
        for index, (block, deltas) in enumerate(blocks):
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": block}))
            if draw(st.booleans()):
                events.append(("ping", {"type": "ping"}))
            events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                       for delta in deltas]
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": draw(st.sampled_from(ANTHROPIC_STOPS[reply.finish])), "stop_sequence": None},
            "usage": {"output_tokens": reply.usage.completion_tokens}}))
        events.append(("message_stop", {"type": "message_stop"}))
    elif provider == "gemini":
        head = {"modelVersion": "gemini-2.5-flash", "responseId": "r-1"}
        parts = [{"text": piece, "thought": True} for piece in draw(fragments(reply.reasoning))]
        parts += [{"text": piece} for piece in draw(fragments(reply.text))]
        parts += [{"functionCall": {"name": name, "args": args}} for name, args in reply.calls]
        for part in parts:
            events.append((None, {"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
                                  **head}))
        events.append((None, {"candidates": [{"content": {"role": "model", "parts": []}, "index": 0,
                                              "finishReason": draw(st.sampled_from(GEMINI_FINISHES[reply.finish]))}],
                              "usageMetadata": gemini_usage(reply.usage), **head}))
    else:  # OpenAI Responses events, read by the pass-through
        output: list[dict[str, Any]] = []
        events.append(("response.created", {"type": "response.created", "response": {
            "id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4o", "output": []}}))
        if reply.reasoning:
            events += [("response.reasoning_summary_text.delta", {
                "type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "output_index": len(output),
                "summary_index": 0, "delta": piece}) for piece in draw(fragments(reply.reasoning))]
            output.append({"id": "rs_1", "type": "reasoning",
                           "summary": [{"type": "summary_text", "text": reply.reasoning}]})
        if reply.text:
            events += [("response.output_text.delta", {
                "type": "response.output_text.delta", "item_id": "msg_1", "output_index": len(output),
                "content_index": 0, "delta": piece}) for piece in draw(fragments(reply.text))]
            output.append({"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": reply.text, "annotations": []}]})
        for i, (name, _) in enumerate(reply.calls):
            item = {"id": f"fc_{i}", "type": "function_call", "call_id": f"call_{i}", "name": name,
                    "arguments": arguments[i], "status": "completed"}
            events.append(("response.output_item.added", {"type": "response.output_item.added",
                                                          "output_index": len(output),
                                                          "item": {**item, "arguments": ""}}))
            events += [("response.function_call_arguments.delta", {
                "type": "response.function_call_arguments.delta", "item_id": f"fc_{i}", "output_index": len(output),
                "delta": piece}) for piece in draw(fragments(arguments[i]))]
            output.append(item)
        status = "completed" if reply.finish in ("stop", "tool_calls") else "incomplete"
        incomplete = {"reason": "max_output_tokens" if reply.finish == "length" else "content_filter"}
        events.append((f"response.{status}", {"type": f"response.{status}", "response": {
            "id": "resp_1", "object": "response", "status": status, "model": "gpt-4o", "output": output,
            "incomplete_details": incomplete if status == "incomplete" else None,
            "usage": responses_usage(reply.usage)}}))
    return [(name, orjson.dumps(payload)) for name, payload in events]


@st.composite
def sse_encoded(draw: st.DrawFn, events: list[tuple[str | None, bytes]]) -> bytes:
    """The events as a server might send them: LF or CRLF, comments, `event:` (for the APIs that name their events:
    Anthropic's, Responses) and `id:` fields, and `data:` split over several lines (joined by LF, per the SSE spec)."""
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    out: list[bytes] = []
    if draw(st.booleans()):
        out.append(b": PROCESSING" + eol + eol)
    for number, (name, data) in enumerate(events):
        lines: list[bytes] = []
        if draw(st.booleans()):
            lines.append(b": ping")
        if name is not None:
            lines.append(b"event: " + name.encode())
        if draw(st.booleans()):
            lines.append(b"id: %d" % number)
        if data != b"[DONE]" and draw(st.booleans()):
            pretty = orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2)
            lines += [b"data:" + (b" " if draw(st.booleans()) else b"") + line for line in pretty.split(b"\n")]
        else:
            lines.append(b"data: " + data)
        out.append(eol.join(lines) + eol + eol)
    return b"".join(out)


@st.composite
def network_reads(draw: st.DrawFn, raw: bytes) -> list[bytes]:
    """`raw` cut at arbitrary byte boundaries: at chosen offsets, or into reads of one small size."""
    if draw(st.booleans()):
        size = draw(st.integers(1, 16))
        return [raw[i:i + size] for i in range(0, len(raw), size)]
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(raw) - 1, 1)), max_size=24))) - {len(raw)})
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


class Received:
    """Stands in for aiohttp's ClientResponse as `iter_sse` reads it, delivering exactly these network reads: over a
    real socket the writes would be merged at the kernel's whim, not at the chosen offsets (tests/providers/test_sse.py reads
    over a real server). The body is complete: `content` is at its end once the last read is taken."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = list(reads)
        self.content = self
        self.content_length: int | None = None
        self.headers: dict[str, str] = {"Content-Type": "text/event-stream"}

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""

    async def iter_any(self) -> AsyncIterator[bytes]:
        while self.reads:
            yield self.reads.pop(0)

    def is_eof(self) -> bool:
        return not self.reads

    at_eof = is_eof


async def read_events(reads: list[bytes]) -> list[list[tuple[str | None, bytes]]]:
    return [batch async for batch in iter_sse(Received(reads))]  # type: ignore[arg-type]


def pump(batches: list[list[tuple[str | None, bytes]]], upstream: Any, render: Any | None) -> tuple[bytes, Exchange]:
    """What `Call._pump` sends the client for these reads: each event through the translator and the renderer
    (or as it came, for a pass-through), the translator's tail, then the renderer's end."""
    seen = exchange()
    out: list[bytes] = []
    finished = False
    for batch in batches:
        for event, data in batch:
            chunks = upstream.stream_event(event, data)
            if render is None:
                out.append(sse_frame(event, data))
            for chunk in chunks:
                finished = _observe(seen, chunk) or finished
                if render is not None:
                    out.append(render.chunk(chunk))
    for chunk in upstream.finish():
        finished = _observe(seen, chunk) or finished
        if render is not None:
            out.append(render.chunk(chunk))
    assert finished, "the stream never finished a choice"
    if render is not None:
        out.append(render.end(upstream.usage, PRICING, seen.finish_reason, seen.native_finish_reason))
    return b"".join(out), seen


def client_events(raw: bytes) -> Iterator[tuple[str | None, Any]]:
    """What a client's SSE parser reads from the gateway's stream: (event name, parsed data)."""
    assert b"\r" not in raw
    for block in raw.split(b"\n\n"):
        name = None
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:])
        if data:
            joined = b"\n".join(data)
            yield name, joined if joined == b"[DONE]" else orjson.loads(joined)


def chat_stream_answer(raw: bytes) -> Answer:
    text, reasoning, finish, usage = "", "", None, None
    calls: dict[int, list[str]] = {}
    for _, chunk in client_events(raw):
        if chunk == b"[DONE]":
            continue
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning") or ""
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], ["", ""])
                entry[0] += call["function"].get("name") or ""
                entry[1] += call["function"].get("arguments") or ""
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage") or usage
    assert usage is not None
    return Answer(text, reasoning, [(name, _arguments(args)) for name, args in calls.values()], finish, {
        "prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"],
        "cached": usage["prompt_tokens_details"]["cached_tokens"],
        "cache_write": usage["prompt_tokens_details"]["cache_write_tokens"],
        "reasoning": usage["completion_tokens_details"]["reasoning_tokens"]})


def messages_stream_answer(raw: bytes) -> Answer:
    blocks: dict[int, dict[str, Any]] = {}
    stop, usage = None, {}
    for name, event in client_events(raw):
        assert name == event["type"] != "error", event
        if event["type"] == "message_start":
            usage.update(event["message"]["usage"])
        elif event["type"] == "content_block_start":
            blocks[event["index"]] = {**event["content_block"], "json": ""}
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                block["json"] += delta["partial_json"]
        elif event["type"] == "message_delta":
            stop = event["delta"]["stop_reason"]
            usage.update(event["usage"])  # the final counts (Anthropic's own say only output_tokens here)
    ordered = [blocks[i] for i in sorted(blocks)]
    return Answer("".join(b["text"] for b in ordered if b["type"] == "text"),
                  "".join(b["thinking"] for b in ordered if b["type"] == "thinking"),
                  [(b["name"], _arguments(b["json"] or "{}")) for b in ordered if b["type"] == "tool_use"],
                  STOP_REASONS[stop], _messages_usage(usage))


def responses_stream_answer(raw: bytes) -> Answer:
    final = None
    text = ""
    for name, event in client_events(raw):
        assert name == event["type"] and name not in ("error", "response.failed"), event
        if name == "response.output_text.delta":
            text += event["delta"]
        elif name in ("response.completed", "response.incomplete"):
            final = event["response"]
    assert final is not None
    answer = responses_answer(final)
    assert answer.text == text  # the deltas add up to the final Response's text
    return answer


def completions_stream_answer(raw: bytes) -> Answer:
    text, finish, usage = "", None, None
    for _, chunk in client_events(raw):
        if chunk == b"[DONE]":
            continue
        for choice in chunk["choices"]:
            text += choice["text"]
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage") or usage
    assert usage is not None
    return Answer(text, None, None, finish,
                  {"prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"]})


STREAM_ANSWERS = {"chat": chat_stream_answer, "messages": messages_stream_answer,
                  "responses": responses_stream_answer, "completions": completions_stream_answer}


def stream_answer(provider: str, front: str, batches: list[list[tuple[str | None, bytes]]],
                  reply: Reply) -> Answer:
    upstream = translator(provider, stream=True)
    if provider == "responses":  # passed through: the client gets the upstream's events, the translator reads them
        raw, seen = pump(batches, upstream, None)
        assert (seen.finish_reason, upstream.usage) == (reply.finish, reply.usage)
        return STREAM_ANSWERS["responses"](raw)
    raw, _ = pump(batches, upstream, renderer(front, upstream.usage))
    return STREAM_ANSWERS[front](raw)


@bounded(100)
@given(data=st.data(), provider=st.sampled_from((*PROVIDERS, "responses")))
def test_rechunked_streams_give_the_same_answer(data: st.DataObject, provider: str) -> None:
    reply = data.draw(replies(provider if provider != "responses" else "gemini"))  # no cache writes in Responses
    events = data.draw(native_streams(provider, reply))
    raw = data.draw(sse_encoded(events))
    reads = data.draw(network_reads(raw))

    whole = run(read_events([raw]))
    split = run(read_events(reads))
    flat_whole = [event for batch in whole for event in batch]
    assert [event for batch in split for event in batch] == flat_whole
    assert len(flat_whole) == len(events)
    for (read_name, read_data), (name, sent) in zip(flat_whole, events, strict=True):
        assert read_name == name
        assert read_data == sent if sent == b"[DONE]" else orjson.loads(read_data) == orjson.loads(sent)

    for front in CHAT_FRONTS if provider != "responses" else ("responses",):
        answer = stream_answer(provider, front, split, reply)
        assert answer == stream_answer(provider, front, whole, reply)
        assert answer == expected_answer(reply, front), front


# == 3. bad input ============================================================================================

# Field names of every format, so that arbitrary JSON often has the right keys (with the wrong values).
KEYS = st.sampled_from(sorted({
    "model", "models", "messages", "role", "content", "type", "text", "image_url", "url", "tool_calls", "tool_call_id",
    "function", "name", "arguments", "tools", "tool_choice", "parameters", "max_tokens", "temperature", "top_p",
    "top_k", "stop", "stream", "reasoning", "effort", "system", "thinking", "budget_tokens", "stop_sequences", "input",
    "instructions", "output", "call_id", "summary", "max_output_tokens", "prompt", "choices", "message", "delta",
    "index", "finish_reason", "usage", "prompt_tokens", "completion_tokens", "prompt_tokens_details",
    "completion_tokens_details", "cached_tokens", "reasoning_tokens", "reasoning_content", "reasoning_details", "id",
    "error", "source", "data", "media_type", "tool_use_id", "signature", "input_schema", "metadata", "output_config",
    "stop_reason", "content_block", "partial_json", "input_tokens", "output_tokens", "cache_read_input_tokens",
    "cache_creation_input_tokens", "candidates", "parts", "functionCall", "args", "thought", "thoughtSignature",
    "finishReason", "usageMetadata", "promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount",
    "promptFeedback", "blockReason", "modelVersion", "responseId", "status", "response", "incomplete_details",
    "embeddings", "values", "embedding", "dimensions", "encoding_format", "previous_response_id", "text_delta",
    "input_json_delta", "thinking_delta", "signature_delta", "tool_use", "tool_result", "message_start",
    "content_block_start", "content_block_delta", "message_delta", "function_call", "function_call_output",
    "output_text", "input_text", "input_image", "user", "assistant", "tool", "STOP", "MAX_TOKENS",
}))
ANY_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | TEXT
               | KEYS)
ANY_JSON = st.recursive(ANY_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(KEYS | TEXT, inner, max_size=5), max_leaves=20)
# Bytes that are not JSON at all, or not UTF-8.
GARBAGE = st.binary(max_size=48) | st.sampled_from([b"", b"null", b"[DONE]", b"{", b'{"a":1e999}', b"\xff\xfe{}"])


def _slots(value: Any, into: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in `value`."""
    if isinstance(value, dict):
        for key, inner in value.items():
            into.append((value, key))
            _slots(inner, into)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            into.append((value, index))
            _slots(inner, into)
    return into


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    """A valid value with a few places broken: a value of another type, a part missing, one wrapped in a list."""
    value = copy.deepcopy(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(value, [])
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        how = draw(st.sampled_from(["replace", "replace", "delete", "wrap", "empty"]))
        if how == "delete":
            del container[key]
        elif how == "wrap":
            container[key] = [container[key]]
        elif how == "empty":
            container[key] = draw(st.sampled_from([None, "", 0, -1, [], {}, True, 1.5]))
        else:
            container[key] = draw(ANY_JSON)
    return value


@st.composite
def completions_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "openai/gpt-4o", "prompt": draw(WORDS | st.lists(WORDS, min_size=1, max_size=1))}
    optional = {"max_tokens": st.integers(1, 4096), "temperature": st.floats(0, 2), "stop": WORDS,
                "stream": st.booleans(), "echo": st.just(False), "n": st.just(1), "suffix": st.none()}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


@st.composite
def embeddings_bodies(draw: st.DrawFn) -> dict[str, Any]:
    tokens = st.lists(st.integers(0, 100_000), min_size=1, max_size=4)
    body: dict[str, Any] = {"model": "test/embed", "input": draw(
        WORDS | st.lists(WORDS, min_size=1, max_size=3) | tokens | st.lists(tokens, min_size=1, max_size=2))}
    optional = {"dimensions": st.integers(1, 3072), "encoding_format": st.sampled_from(["float", "base64"]),
                "user": WORDS, "input_type": st.sampled_from(["query", "document"])}
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


VALID_BODIES = {"chat": chat_bodies(), "messages": messages_bodies(), "responses": responses_bodies(),
                "completions": completions_bodies(), "embeddings": embeddings_bodies()}


def client_bodies(front: str) -> st.SearchStrategy[Any]:
    return ANY_JSON | mutated(VALID_BODIES[front]) | mutated(VALID_BODIES[front]) | GARBAGE


def check_client_error(front: str, error: GatewayError) -> None:
    assert 400 <= error.status < 500, (error.status, error.message)
    body = orjson.loads(FRONTS[front].error_body(error))
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def request_everywhere(front: str, body: dict[str, Any]) -> None:
    """The parsed body to every provider's request(), as a candidate of each kind would get it: an upstream request
    or a client error."""
    for provider in PROVIDERS:
        adapter = ADAPTERS[provider]
        if front == "embeddings":
            embedder = adapter.native_translator("embeddings", context(provider, stream=False, model=EMBEDDING_MODEL),
                                                 body, {})
            if embedder is None:
                continue
            upstream = embedder
        else:
            upstream = translator(provider, stream=body.get("stream") is True)
        try:
            await upstream.request(copy.deepcopy(body))
        except GatewayError as error:
            check_client_error(front, error)


@bounded(400)
@given(data=st.data(), front=st.sampled_from(sorted(FRONTS)))
def test_fronts_give_any_body_a_canonical_request_or_a_client_error(stored: Holder, data: st.DataObject,
                                                                    front: str) -> None:
    body = data.draw(client_bodies(front))
    try:
        parsed = run(parse(front, body, stored))
    except GatewayError as error:
        check_client_error(front, error)
        return
    run(request_everywhere(front, parsed.body))


def native_answers(provider: str) -> st.SearchStrategy[Any]:
    """Valid non-stream answers of a provider (the Responses pass-through: a Response object)."""
    if provider == "openai-embeddings":
        return st.builds(lambda vectors: {"object": "list", "model": "m", "usage": {"prompt_tokens": 3},
                                          "data": [{"object": "embedding", "index": i, "embedding": v}
                                                   for i, v in enumerate(vectors)]},
                         st.lists(st.lists(st.floats(-1, 1), min_size=1, max_size=4), min_size=1, max_size=3))
    if provider == "gemini-embeddings":
        return st.builds(lambda vectors: {"embeddings": [{"values": v} for v in vectors]},
                         st.lists(st.lists(st.floats(-1, 1), min_size=1, max_size=4), min_size=1, max_size=3))
    if provider == "responses":
        return replies("gemini").flatmap(lambda reply: native_streams("responses", reply)).map(
            lambda events: orjson.loads(events[-1][1])["response"])
    return replies(provider).flatmap(lambda reply: native_responses(provider, reply))


TRANSLATORS = (*PROVIDERS, "responses", "openai-embeddings", "gemini-embeddings")


def any_translator(name: str, *, stream: bool = False) -> Any:
    if name.endswith("-embeddings"):
        provider = name.removesuffix("-embeddings")
        return ADAPTERS[provider].native_translator("embeddings", context(provider, stream=False,
                                                                         model=EMBEDDING_MODEL), {}, {})
    return translator(name, stream=stream)


def check_usage(upstream: Any) -> None:
    """Usage the records and the price computation can take: whole numbers, never negative; the upstream's model and
    id as text."""
    usage = upstream.usage
    for value in (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens, usage.cached_tokens,
                  usage.cache_write_tokens):
        assert type(value) is int and value >= 0, usage
    assert isinstance(upstream.upstream_model, str | None) and isinstance(upstream.upstream_id, str | None)


def render_everywhere(name: str, result: dict[str, Any], usage: Usage) -> None:
    """What a translator made of an answer, used as the gateway uses it: its finish, each front's rendering."""
    if name.endswith("-embeddings"):
        for encoding in ("float", "base64"):
            render = FRONTS["embeddings"].renderer(generation_id="gen-1", model_id="test/embed", provider="up",
                                                   parsed=Parsed({"encoding_format": encoding}), usage=usage)
            try:
                orjson.loads(render.completion(copy.deepcopy(result), usage, PRICING))
            except GatewayError as error:  # numbers that are no float32s, asked for as base64: the upstream's fault
                assert (encoding, error.status) == ("base64", 502)
        return
    for choice in result.get("choices") or ():  # Call._attempt reads the first choice's finish reasons
        assert choice.get("finish_reason") in (*FINISH_REASONS, None)
        break
    for front in CHAT_FRONTS:
        orjson.loads(renderer(front, usage).completion(copy.deepcopy(result), usage, PRICING))


def read_answer(name: str, raw: bytes) -> str:
    """An upstream's answer through translator `name`, then used as the gateway uses a result: "read", or "error"
    when the translator found it unreadable (a 502). Anything else raised is a bug."""
    upstream = any_translator(name)
    try:
        result = upstream.response(raw)
    except ValueError:  # the gateway answers 502: the upstream sent something it cannot read
        return "error"
    check_usage(upstream)
    render_everywhere(name, result, upstream.usage)
    return "read"


@bounded(400)
@given(data=st.data(), name=st.sampled_from(TRANSLATORS))
def test_translators_give_any_answer_a_canonical_result_or_an_upstream_error(data: st.DataObject, name: str) -> None:
    read_answer(name, data.draw(ANY_JSON.map(orjson.dumps) | mutated(native_answers(name)).map(orjson.dumps)
                                | GARBAGE))


@st.composite
def broken_streams(draw: st.DrawFn, provider: str) -> list[tuple[str | None, bytes]]:
    """A provider's valid stream with some events broken (their JSON mutated, replaced by arbitrary JSON or bytes,
    their name changed), or arbitrary events altogether."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.lists(st.tuples(st.none() | KEYS, ANY_JSON.map(orjson.dumps) | GARBAGE), max_size=6))
    reply = draw(replies(provider if provider != "responses" else "gemini"))
    events = list(draw(native_streams(provider, reply)))
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(events) - 1))
        name, data = events[index]
        how = draw(st.sampled_from(["mutate", "mutate", "mutate", "json", "bytes", "name"]))
        if how == "mutate":
            try:
                data = orjson.dumps(draw(mutated(st.just(orjson.loads(data)))))
            except orjson.JSONDecodeError:
                continue  # [DONE], or an event already broken into bytes
        elif how == "json":
            data = orjson.dumps(draw(ANY_JSON))
        elif how == "bytes":
            data = draw(GARBAGE)
        else:
            name = draw(st.none() | KEYS | st.sampled_from([n for n, _ in events if n] or [None]))
        events[index] = (name, data)
    return events


def read_stream(provider: str, events: list[tuple[str | None, bytes]]) -> str:
    """A stream's events through the provider's translator, each chunk observed and rendered as `Call._pump` does:
    "read", or "error" when the translator found an event unreadable or the upstream reported an error (the stream
    then ends with the format's error event). Anything else raised is a bug."""
    upstream = translator(provider, stream=True)
    # A passed-through stream is only read (its events go to the client as they came); the others are rendered.
    renders = {front: renderer(front, upstream.usage) for front in CHAT_FRONTS if provider != "responses"}
    seen = exchange()

    def deliver(chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks:
            _observe(seen, chunk)
            for render in renders.values():
                render.chunk(copy.deepcopy(chunk))

    try:
        for name, raw in events:
            deliver(upstream.stream_event(name, raw))
        deliver(upstream.finish())
    except (ValueError, UpstreamStreamError) as error:  # the stream ends with the format's error event
        for render in renders.values():
            render.error_chunk(502, str(error), None)
        return "error"
    finally:
        check_usage(upstream)
    assert seen.finish_reason in (*FINISH_REASONS, None)
    for render in renders.values():
        render.end(upstream.usage, PRICING, seen.finish_reason, seen.native_finish_reason)
    return "read"


@bounded(400)
@given(data=st.data(), provider=st.sampled_from((*PROVIDERS, "responses")))
def test_translators_give_any_stream_canonical_chunks_or_an_upstream_error(data: st.DataObject,
                                                                           provider: str) -> None:
    read_stream(provider, data.draw(broken_streams(provider)))


# -- regressions: each input raised something undocumented before the fix named ------------------------------

ANSWER_REGRESSIONS = [
    # (translator, answer, what the gateway makes of it); the fix is in the translator unless said otherwise
    ("openai", {"choices": [{"index": 0, "message": [], "finish_reason": "stop"}]}, "error"),  # chat renderer broke
    ("openai", {"choices": [{"index": 0, "message": True, "finish_reason": "stop"}]}, "error"),
    ("openai", {"choices": [[]]}, "error"),
    ("openai", {"choices": [{"message": {"tool_calls": [["delta"], None]}, "finish_reason": "tool_calls"}]}, "error"),
    ("openai", {"choices": [{"message": {"content": "hi"}, "finish_reason": [[], []]}]}, "read"),
    ("openai", {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": [None]}}, "error"),
    ("openai", {"choices": [], "usage": {"prompt_tokens": 3, "prompt_tokens_details": [{"cached_tokens": 1}]}}, "read"),
    ("openai", {"choices": [], "usage": {"prompt_tokens": -5, "completion_tokens": 2}}, "read"),  # no negative bill
    ("openai", {"model": ["gpt"], "id": {"a": 1}, "choices": []}, "read"),  # the record's text columns
    ("openai", {"choices": [{"message": {"content": [{"type": "text", "text": 5}]}, "finish_reason": "stop"}]},
     "read"),  # providers/base.py text_of
    ("anthropic", {"content": [None], "stop_reason": "max_tokens"}, "read"),
    ("anthropic", {"type": ["message"], "content": [], "stop_reason": [], "usage": {}}, "read"),
    ("anthropic", {"content": [{"type": "text", "text": {"MAX_TOKENS": None}}, {"type": "thinking",
                                                                               "thinking": ["x"]}]}, "read"),
    ("anthropic", {"content": [], "usage": {"input_tokens": 9, "cache_read_input_tokens": [2636]}}, "error"),
    ("gemini", {"candidates": 5}, "error"),
    ("gemini", {"candidates": {"MAX_TOKENS": None}}, "error"),
    ("gemini", [{"candidates": [["image_url"], []]}], "error"),
    ("gemini", {"candidates": [{"content": {"parts": [[], {"text": "hi"}]}, "finishReason": "STOP"}]}, "read"),
    ("gemini", {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": ["RECITATION"]}]}, "read"),
    ("gemini", {"candidates": [{"content": {"parts": [{"text": {"H": [""]}, "thought": True},
                                                      {"text": "W", "thought": True}]}}]}, "read"),
    ("gemini", {"candidates": [], "usageMetadata": {"promptTokenCount": [[], []]}}, "error"),
    ("responses", {"status": "completed", "output": [[], {"type": "function_call", "name": "f"}]}, "read"),
    ("responses", {"status": {}, "output": []}, "read"),
    ("responses", {"status": "completed", "output": [], "usage": {"input_tokens": [103]}}, "error"),
    ("responses", {"status": "incomplete", "output": [], "usage": {"output": {}, "input_tokens_details": [1]}}, "read"),
    ("openai-embeddings", {"data": [{"index": 0, "embedding": [0.5]}, {"index": [1], "embedding": [0.25]}]}, "error"),
    ("openai-embeddings", {"data": [{"index": 0, "embedding": [0.5]}, {"index": 1, "embedding": 0}]}, "error"),
    ("openai-embeddings", {"data": [{"index": 0, "embedding": [0.5]}], "usage": {"prompt_tokens": [3]}}, "error"),
    # formats/embeddings.py: asked for as base64, numbers that are no float32s are the upstream's fault (502)
    ("gemini-embeddings", {"embeddings": [{"values": [[-1]]}]}, "read"),
    ("openai-embeddings", {"data": [{"index": 0, "embedding": [1e300]}]}, "read"),
]


@pytest.mark.parametrize(("name", "answer", "outcome"), ANSWER_REGRESSIONS)
def test_regression_answers(name: str, answer: Any, outcome: str) -> None:
    assert read_answer(name, orjson.dumps(answer)) == outcome


def _events(*events: tuple[str | None, Any]) -> list[tuple[str | None, bytes]]:
    return [(name, orjson.dumps(payload)) for name, payload in events]


def _text_block(index: Any = 0) -> tuple[str, dict[str, Any]]:
    return "content_block_start", {"type": "content_block_start", "index": index,
                                   "content_block": {"type": "text", "text": ""}}


STREAM_REGRESSIONS = [
    ("openai", _events((None, {"choices": 1.5})), "error"),
    ("openai", _events((None, {"choices": [[None]]})), "error"),
    ("openai", _events((None, {"choices": [{"index": 0, "delta": [{"content": "x"}]}]})), "error"),
    ("openai", _events((None, {"choices": [{"index": 0, "delta": {"reasoning": True}}]})), "error"),
    ("openai", _events((None, {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"name": "f", "arguments": 5}}]}}]})), "error"),
    ("openai", _events((None, {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": [0]}]}}]})), "error"),
    ("openai", _events((None, {"choices": [{"index": 0, "delta": {}, "finish_reason": [[]]}]})), "read"),
    ("openai", _events((None, {"choices": [], "usage": {"prompt_tokens_details": [1]}})), "read"),
    ("anthropic", _events(("message_start", {"type": "message_start", "message": ["msg_1"]})), "read"),
    ("anthropic", _events(_text_block(), ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                                  "delta": ["text_delta"]})), "read"),
    ("anthropic", _events(_text_block([0]), ("content_block_stop", {"type": "content_block_stop"})), "error"),
    ("anthropic", _events(_text_block(), ("content_block_delta", {"type": "content_block_delta", "index": [[0]],
                                                                  "delta": {"type": "thinking_delta"}})), "error"),
    ("anthropic", _events(("content_block_start", {"type": "content_block_start", "index": 0,
                                                   "content_block": {"type": "thinking", "thinking": True}}),
                          ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "thinking_delta", "thinking": True}})), "read"),
    ("anthropic", _events(("message_delta", {"type": "message_delta", "delta": {"stop_reason": []}})), "read"),
    ("anthropic", _events(("message_delta", {"type": "message_delta", "delta": [],
                                             "usage": {"output_tokens": [5]}})), "error"),
    ("gemini", _events((None, {"candidates": True})), "error"),
    ("gemini", _events((None, {"candidates": [{"content": {"parts": 1.5}}]})), "error"),
    ("gemini", _events((None, {"candidates": [{"content": {"parts": [{"text": ["x"], "thought": True},
                                                                     {"text": "y", "thought": True}]}}]})), "read"),
    ("gemini", _events((None, {"candidates": [{"content": {"parts": []}, "finishReason": {"a": 1}}]})), "read"),
    ("responses", _events(("response.created", []), ("response.reasoning_summary_text.delta", [])), "read"),
    ("responses", _events(("response.output_text.delta", {"delta": 1.5})), "read"),
    ("responses", _events(("response.completed", {"response": ["resp_1"]})), "read"),
    ("responses", _events(("response.completed", {"response": {"status": ["x"], "output": [[]]}})), "read"),
]


@pytest.mark.parametrize(("provider", "events", "outcome"), STREAM_REGRESSIONS)
def test_regression_streams(provider: str, events: list[tuple[str | None, bytes]], outcome: str) -> None:
    assert read_stream(provider, events) == outcome


def test_regression_a_multi_line_data_field_passes_through_whole() -> None:
    """api/inference.py `_pump` (now with providers/base.py `sse_frame`) wrote a passed-through event's data, read
    from several `data:` lines and so holding LF, on one `data:` line: the client read the JSON cut short."""
    (batch,) = run(read_events([b'event: response.completed\ndata: {"type":\ndata:  "response.completed"}\n\n']))
    assert batch == [("response.completed", b'{"type":\n "response.completed"}')]
    assert list(client_events(sse_frame(*batch[0]))) == [("response.completed", {"type": "response.completed"})]


# -- the same, through the gateway ---------------------------------------------------------------------------

FRONT_REQUESTS = {
    "chat": ("/api/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
    "messages": ("/api/v1/messages", {"max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}),
    "responses": ("/api/v1/responses", {"input": "Hi"}),
    "completions": ("/api/v1/completions", {"prompt": "Hi"}),
}


@bounded(30, also_suppress=(HealthCheck.function_scoped_fixture,))  # the fakes are reset per example here
@given(data=st.data(), provider=st.sampled_from(PROVIDERS), front=st.sampled_from(CHAT_FRONTS))
def test_generated_streams_keep_meaning_through_the_gateway(gateway: GatewayProcess, fake_openai: FakeUpstream,
                                                            fake_anthropic: FakeUpstream, fake_gemini: FakeUpstream,
                                                            data: st.DataObject, provider: str, front: str) -> None:
    """A generated native stream (whatever its encoding) served by the fake upstream, streamed by a real gateway
    process in each front's format, says what the upstream said (Messages to Anthropic: passed through)."""
    reply = data.draw(replies(provider))
    raw = data.draw(sse_encoded(data.draw(native_streams(provider, reply))))
    model, _, _ = CONFTEST_PROVIDERS[provider]
    fake = {"openai": fake_openai, "anthropic": fake_anthropic, "gemini": fake_gemini}[provider]
    fake.reset()
    fake.fault(Fault(body=raw, headers={"Content-Type": "text/event-stream"}))
    path, body = FRONT_REQUESTS[front]
    answer = httpx.post(gateway.url + path, json={**body, "model": model, "stream": True}, timeout=20,
                        headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert answer.status_code == 200, answer.text
    assert STREAM_ANSWERS[front](answer.content) == expected_answer(reply, front)
