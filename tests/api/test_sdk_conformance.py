"""Conformance with both official OpenRouter SDKs (issue 18): what a live gateway answers, validated against the
response models the SDKs run on every answer, and the SDK calls users make, end to end.

Every served endpoint both SDKs model is asked for real (chat completions and responses, whole and streamed event by
event, errors, the models, key, credits, activity and generation endpoints, embeddings), and each body or event is
validated twice: by the Python `openrouter` SDK's pydantic models (with the SDK's own unmarshalling) and by the zod
schemas of the TypeScript `@openrouter/sdk` (tests/conformance/ts_validate.mjs, pinned in its package.json). Both
SDKs parse leniently in two ways, which count as failures here: a union member that fails to parse becomes an
"unknown" variant (the user loses every typed field), and an enum value they do not list is kept as an
unrecognized string. Where OpenRouter's published API document and the SDKs disagree, the SDKs win: they are what
users run (src/crossroads/formats/responses.py notes where).

The TypeScript half needs node and `npm ci --prefix tests/conformance` (scripts/test runs it); without them it skips,
except under CI, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openrouter import OpenRouter, components, errors, operations
from openrouter.components.streamevents import _STREAM_EVENTS_VARIANTS
from openrouter.types import UnrecognizedStr
from openrouter.utils.serializers import unmarshal_json
from pydantic import BaseModel

from tests.conftest import MASTER_KEY, PROVIDERS, GatewayServer, gateway_config
from tests.fakes.base import Fault, Reply, ToolCall

CONFORMANCE_DIR = Path(__file__).resolve().parents[1] / "conformance"
API = "/api/v1"
EMBEDDING_MODEL = "openai/text-embedding-3-small"
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}
RESPONSES_TOOL = {"type": "function", "name": "lookup", "parameters": TOOL["function"]["parameters"]}

# What each endpoint answers, as (the Python SDK's model, the TypeScript SDK's schema).
BODIES: dict[str, tuple[Any, str]] = {
    "chat": (components.ChatResult, "models.ChatResult"),
    "chat.chunk": (components.ChatStreamChunk, "models.ChatStreamChunk"),
    "responses": (components.OpenResponsesResult, "models.OpenResponsesResult"),
    "models": (components.ModelsListResponse, "models.ModelsListResponse"),
    "models.count": (components.ModelsCountResponse, "models.ModelsCountResponse"),
    "endpoints": (operations.ListEndpointsResponse, "operations.ListEndpointsResponse"),
    "providers": (operations.ListProvidersResponse, "operations.ListProvidersResponse"),
    "key": (operations.GetCurrentKeyResponse, "operations.GetCurrentKeyResponse"),
    "keys": (operations.ListResponse, "operations.ListResponse"),
    "credits": (operations.GetCreditsResponse, "operations.GetCreditsResponse"),
    "activity": (components.ActivityResponse, "models.ActivityResponse"),
    "generation": (components.GenerationResponse, "models.GenerationResponse"),
    "embeddings": (operations.CreateEmbeddingsResponseBody, "operations.CreateEmbeddingsResponseBody"),
}
# Error bodies by status: the SDKs pick their typed error class by the status, then parse the body with its model.
ERRORS: dict[int, tuple[Any, str, type[Exception]]] = {
    400: (errors.BadRequestResponseErrorData, "errors.BadRequestResponseError", errors.BadRequestResponseError),
    401: (errors.UnauthorizedResponseErrorData, "errors.UnauthorizedResponseError",
          errors.UnauthorizedResponseError),
    402: (errors.PaymentRequiredResponseErrorData, "errors.PaymentRequiredResponseError",
          errors.PaymentRequiredResponseError),
    403: (errors.ForbiddenResponseErrorData, "errors.ForbiddenResponseError", errors.ForbiddenResponseError),
    404: (errors.NotFoundResponseErrorData, "errors.NotFoundResponseError", errors.NotFoundResponseError),
    429: (errors.TooManyRequestsResponseErrorData, "errors.TooManyRequestsResponseError",
          errors.TooManyRequestsResponseError),
}


# -- the two validators ------------------------------------------------------------------------------------------------

def lenient_parses(value: Any, path: str = "") -> list[str]:
    """Where the Python SDK accepted `value` only leniently: unknown union variants, enum values it does not list."""
    if isinstance(value, UnrecognizedStr):
        return [f"{path or '(top)'}: {str(value)!r} is not a value the SDK lists"]
    if isinstance(value, BaseModel):
        if getattr(value, "is_unknown", False) is True:
            return [f"{path or '(top)'}: parsed as an unknown variant: {json.dumps(value.raw)[:300]}"]
        # Read from __dict__: getattr warns for the fields the SDK marks deprecated.
        return [problem for name in type(value).model_fields
                for problem in lenient_parses(value.__dict__.get(name), f"{path}.{name}")]
    if isinstance(value, list | tuple):
        return [problem for i, item in enumerate(value) for problem in lenient_parses(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [problem for key, item in value.items() for problem in lenient_parses(item, f"{path}.{key}")]
    return []


def python_problems(model: Any, sample: Any) -> list[str]:
    try:
        parsed = unmarshal_json(json.dumps(sample), model)  # what the SDK does with a response body
    except Exception as exc:  # noqa: BLE001 - a pydantic error, reported with every failing field
        errors_of = getattr(exc, "errors", None)
        if callable(errors_of):
            return [f"{'.'.join(str(p) for p in e['loc'][1:]) or '(top)'}: {e['msg']}" for e in errors_of()]
        return [repr(exc)]
    return lenient_parses(parsed)


class TypeScriptValidator:
    """tests/conformance/ts_validate.mjs, one process for the module, asked one sample per line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["node", str(CONFORMANCE_DIR / "ts_validate.mjs")], cwd=CONFORMANCE_DIR,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.count = 0

    def problems(self, schema: str, sample: Any) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        self.proc.stdin.write(json.dumps({"id": self.count, "schema": schema, "sample": sample}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"ts_validate.mjs exited ({self.proc.poll()}) without an answer")
        answer = json.loads(line)
        assert answer["id"] == self.count
        return answer["problems"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


def typescript_missing() -> str | None:
    """Why the TypeScript SDK cannot be used here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (CONFORMANCE_DIR / "node_modules" / "@openrouter" / "sdk" / "package.json").exists():
        return "the TypeScript SDK is not installed (run: npm ci --prefix tests/conformance)"
    return None


# Fields whose values are the operator's own names: a connection's name is its endpoints' provider_name. The SDKs type
# them as open enums of OpenRouter's providers, which cannot list a self-hosted gateway's connections (and keep such
# a value as a string, as they do for providers added after their release). The checks see a listed name there.
OPERATOR_NAMED = {"provider_name": "OpenAI"}


def with_listed_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: OPERATOR_NAMED[k] if k in OPERATOR_NAMED and isinstance(v, str) else with_listed_names(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [with_listed_names(item) for item in value]
    return value


class Conformance:
    """Validates samples with both SDKs and collects every problem of a test, to fail once with all of them."""

    def __init__(self, ts: TypeScriptValidator | None) -> None:
        self.ts = ts
        self.problems: list[str] = []
        self.checked = 0

    def check(self, label: str, model: Any, ts_schema: str, sample: Any) -> None:
        self.checked += 1
        sample = with_listed_names(sample)
        for problem in python_problems(model, sample):
            self.problems.append(f"{label}: Python SDK {getattr(model, '__name__', model)}: {problem}")
        if self.ts is not None:
            for problem in self.ts.problems(ts_schema, sample):
                self.problems.append(f"{label}: TypeScript SDK {ts_schema}: {problem}")

    def body(self, label: str, kind: str, sample: Any) -> None:
        model, ts_schema = BODIES[kind]
        self.check(label, model, ts_schema, sample)

    def error(self, label: str, status: int, sample: Any) -> None:
        model, ts_schema, _ = ERRORS[status]
        self.check(f"{label} ({status})", model, ts_schema, sample)

    def responses_event(self, label: str, event: dict[str, Any]) -> None:
        # Validated against the event type's own model: the SDKs' union turns a failing event into an unknown one.
        variant = _STREAM_EVENTS_VARIANTS.get(event.get("type"))
        if variant is None:
            self.problems.append(f"{label}: event type {event.get('type')!r} is not one the SDKs know")
            return
        self.check(f"{label} {event['type']}", variant, f"models.{variant.__name__}", event)

    def assert_ok(self) -> None:
        assert self.checked, "nothing was validated"
        assert not self.problems, "\n".join(self.problems)


# -- fixtures ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path_factory) -> Iterator[GatewayServer]:
    """A gateway of this module's own: its tests create keys with limits, and it serves an embeddings model."""
    workdir = tmp_path_factory.mktemp("conformance")
    config = gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, workdir / "data")
    config["accounting"] = {"flush_interval": 0.2}
    config["providers"][0]["models"].append(
        {"id": EMBEDDING_MODEL, "upstream": "text-embedding-3-small", "context_length": 8191,
         "pricing": {"prompt": 0.02, "completion": 0}, "output_modalities": ["embeddings"]})
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ts_validator() -> Iterator[TypeScriptValidator | None]:
    if typescript_missing() is not None:
        yield None
        return
    validator = TypeScriptValidator()
    yield validator
    validator.close()


@pytest.fixture
def conform(ts_validator: TypeScriptValidator | None) -> Conformance:
    return Conformance(ts_validator)


@pytest.fixture
def sdk(gw: GatewayServer) -> Iterator[OpenRouter]:
    with OpenRouter(api_key=MASTER_KEY, server_url=gw.url + API) as client:
        yield client


def test_typescript_sdk_is_installed() -> None:
    """The TypeScript half of every test here runs only when this passes."""
    missing = typescript_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: CI must install it (scripts/test)")
        pytest.skip(f"{missing}: the TypeScript SDK's checks are skipped")
    assert json.loads((CONFORMANCE_DIR / "package.json").read_text())["dependencies"]["@openrouter/sdk"] \
        .lstrip("~^").startswith("1.3.")


# -- helpers -----------------------------------------------------------------------------------------------------------

def auth(key: str = MASTER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(gw: GatewayServer, path: str, body: dict[str, Any], key: str = MASTER_KEY) -> httpx.Response:
    return httpx.post(gw.url + API + path, headers=auth(key), json=body, timeout=30)


def get(gw: GatewayServer, path: str, key: str = MASTER_KEY, **params: Any) -> httpx.Response:
    return httpx.get(gw.url + API + path, headers=auth(key), params=params, timeout=30)


def ok(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, f"{resp.request.url}: {resp.status_code} {resp.text[:500]}"
    return resp.json()


def stream_events(gw: GatewayServer, path: str, body: dict[str, Any], key: str = MASTER_KEY) -> list[Any]:
    """The JSON of every `data:` line of a streamed answer (comments and [DONE] left out)."""
    with httpx.stream("POST", gw.url + API + path, headers=auth(key), json={**body, "stream": True},
                      timeout=30) as resp:
        assert resp.status_code == 200, resp.read()
        text = resp.read().decode()
    events = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    return events


def create_key(gw: GatewayServer, **fields: Any) -> tuple[str, str]:
    """A new API key (its secret, its hash)."""
    resp = httpx.post(gw.url + API + "/keys", headers=auth(), json={"name": "conformance", **fields}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"], resp.json()["data"]["hash"]


def eventually(fetch: Callable[[], httpx.Response], what: str) -> httpx.Response:
    """The first 200 answer of `fetch` (records reach the store within the flush interval)."""
    deadline = time.monotonic() + 15
    while True:
        resp = fetch()
        if resp.status_code == 200 or time.monotonic() > deadline:
            assert resp.status_code == 200, f"{what}: {resp.status_code} {resp.text[:300]}"
            return resp
        time.sleep(0.1)


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


def responses_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "input": "Hi", "store": False, **extra}


# What the fake model says, for each sample kind: plain text, a tool call, reasoning then text, cut by max tokens.
REPLIES = {
    "text": lambda: Reply(),
    "tool call": lambda: Reply(text=None, finish="tool_calls", tool_calls=[ToolCall("lookup", {"q": "x"})]),
    "reasoning": lambda: Reply(reasoning="Thinking it over.", reasoning_signature="sig-1", reasoning_tokens=3),
    "cut short": lambda: Reply(finish="length"),
}


def queue(fake: Any, reply: str) -> None:
    fake.reply(REPLIES[reply]())


# -- inference bodies and streams --------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_chat_completions(gw, conform, provider, request) -> None:
    model, _, fake_name = PROVIDERS[provider]
    fake = request.getfixturevalue(fake_name)
    for reply in REPLIES:
        extra = {"tools": [TOOL]} if reply == "tool call" else {}
        queue(fake, reply)
        conform.body(f"chat {reply}", "chat", ok(post(gw, "/chat/completions", chat_body(model, **extra))))
        queue(fake, reply)
        chunks = stream_events(gw, "/chat/completions", chat_body(model, **extra))
        assert chunks and chunks[-1]["usage"]["total_tokens"] > 0
        for n, chunk in enumerate(chunks):
            conform.body(f"chat stream {reply} chunk {n}", "chat.chunk", chunk)
    conform.assert_ok()


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_responses(gw, conform, provider, request) -> None:
    model, _, fake_name = PROVIDERS[provider]
    fake = request.getfixturevalue(fake_name)
    for reply in REPLIES:
        extra = {"tools": [RESPONSES_TOOL]} if reply == "tool call" else {}
        queue(fake, reply)
        body = ok(post(gw, "/responses", responses_body(model, **extra)))
        assert body["status"] == ("incomplete" if reply == "cut short" else "completed")
        conform.body(f"responses {reply}", "responses", body)
        queue(fake, reply)
        events = stream_events(gw, "/responses", responses_body(model, **extra))
        assert events[-1]["type"] == ("response.incomplete" if reply == "cut short" else "response.completed")
        for event in events:
            conform.responses_event(f"responses stream {reply}", event)
    conform.assert_ok()


def test_mid_stream_errors(gw, conform, fake_openai) -> None:
    """A stream that fails after data reached the client ends with its format's error, which both SDKs parse (the
    chat chunk's error.metadata.error_type; Responses' `error` and `response.failed` events)."""
    fake_openai.fault(Fault(error_event_after=2))
    chunks = stream_events(gw, "/chat/completions", chat_body("openai/gpt-4o-mini"))
    failed = chunks[-1]
    assert failed["error"]["code"] == 502 and failed["error"]["metadata"]["error_type"] == "provider_unavailable"
    assert failed["choices"][0]["finish_reason"] == "error"
    for n, chunk in enumerate(chunks):
        conform.body(f"chat stream chunk {n}", "chat.chunk", chunk)
    fake_openai.fault(Fault(cut_after=3))
    chunks = stream_events(gw, "/chat/completions", chat_body("openai/gpt-4o-mini"))
    assert chunks[-1]["error"]["metadata"]["error_type"]
    conform.body("chat stream cut off", "chat.chunk", chunks[-1])
    fake_openai.fault(Fault(error_event_after=2))
    events = stream_events(gw, "/responses", responses_body("openai/gpt-4o-mini"))
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    for event in events:
        conform.responses_event("responses stream", event)
    conform.assert_ok()


def test_embeddings(gw, conform) -> None:
    for given in ("one text", ["two", "texts"]):
        conform.body(f"embeddings {given!r}", "embeddings",
                     ok(post(gw, "/embeddings", {"model": EMBEDDING_MODEL, "input": given})))
    conform.assert_ok()


# -- errors ------------------------------------------------------------------------------------------------------------

def error_requests(gw: GatewayServer) -> dict[int, Callable[[str, dict[str, Any]], httpx.Response]]:
    """One way to each error status, for a path and a valid body of that path."""
    poor, _ = create_key(gw, limit=1e-10)  # less than any request's worst-case cost: 402

    def rate_limited(path: str, body: dict[str, Any]) -> httpx.Response:
        key, _ = create_key(gw, rpm=1)
        for _ in range(3):  # the limit's one-minute window may roll over between two of them, not twice
            resp = post(gw, path, body, key)
            if resp.status_code != 200:
                break
        return resp

    return {
        400: lambda path, body: post(gw, path, {**body, "model": 42}),
        401: lambda path, body: post(gw, path, body, key="sk-or-v1-" + "0" * 64),
        402: lambda path, body: post(gw, path, body, key=poor),
        404: lambda path, body: post(gw, path, {**body, "model": "nobody/no-such-model"}),
        429: rate_limited,
    }


@pytest.mark.parametrize("path", ["/chat/completions", "/responses", "/embeddings"])
def test_error_bodies(gw, conform, fake_openai, path) -> None:
    body = {"/chat/completions": chat_body("openai/gpt-4o-mini"), "/responses": responses_body("openai/gpt-4o-mini"),
            "/embeddings": {"model": EMBEDDING_MODEL, "input": "x"}}[path]
    for status, send in error_requests(gw).items():
        resp = send(path, body)
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["code"] == status  # OpenRouter's rule: error.code is the HTTP status
        conform.error(path, status, resp.json())
    fake_openai.fault(Fault(status=429, headers={"Retry-After": "1"}))  # the upstream's limit, not the gateway's
    resp = post(gw, path, body)
    assert resp.status_code == 429, resp.text
    conform.error(f"{path} upstream", 429, resp.json())
    # A normal key may not read the account's credits (OpenRouter: a management key's).
    key, _ = create_key(gw)
    resp = get(gw, "/credits", key)
    assert resp.status_code == 403
    conform.error("/credits with a normal key", 403, resp.json())
    conform.assert_ok()


def test_responses_errors_keep_openai_sdk_typed_errors(gw) -> None:
    """The openai SDK picks its exception class by the status and still shows OpenAI's type and param."""
    client = openai.OpenAI(base_url=gw.url + API, api_key=MASTER_KEY, max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="openai/gpt-4o-mini", input=42)  # type: ignore[arg-type]
    assert bad.value.type == "invalid_request_error" and bad.value.param == "input"
    assert bad.value.body["code"] == 400  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nobody/no-such-model", input="Hi")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + API, api_key="sk-or-v1-" + "0" * 64, max_retries=0).responses.create(
            model="openai/gpt-4o-mini", input="Hi")


def test_messages_errors_carry_the_request_id(gw) -> None:
    """Anthropic's error body has a top-level request_id: the gateway's X-Request-Id of that request."""
    import anthropic

    resp = httpx.post(gw.url + API + "/messages", headers={**auth(), "X-Request-Id": "conformance-1"}, timeout=30,
                      json={"model": "nobody/no-such-model", "max_tokens": 5,
                            "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status_code == 404
    assert resp.json()["request_id"] == resp.headers["x-request-id"] == "conformance-1"
    client = anthropic.Anthropic(base_url=gw.url + "/api", api_key=MASTER_KEY, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="anthropic/claude-sonnet-4", max_tokens=5, messages=[])
    body = bad.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["request_id"]


# -- the models and account API ----------------------------------------------------------------------------------------

def test_models_and_account_endpoints(gw, conform, fake_openai) -> None:
    generation_id = ok(post(gw, "/chat/completions", chat_body("openai/gpt-4o-mini")))["id"]
    key, key_hash = create_key(gw, limit=5, limit_reset="monthly")
    ok(post(gw, "/chat/completions", chat_body("openai/gpt-4o-mini"), key))
    conform.body("/models", "models", ok(get(gw, "/models")))
    conform.body("/models page", "models", ok(get(gw, "/models", limit=2, offset=1)))
    conform.body("/models/count", "models.count", ok(get(gw, "/models/count")))
    for model in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash"):
        conform.body(f"{model} endpoints", "endpoints", ok(get(gw, f"/models/{model}/endpoints")))
    conform.body("/providers", "providers", ok(get(gw, "/providers")))
    conform.body("/key (master)", "key", ok(get(gw, "/key")))
    conform.body("/key (a key with a limit)", "key", ok(get(gw, "/key", key)))
    conform.body("/keys", "keys", ok(get(gw, "/keys")))
    conform.body("/credits", "credits", ok(get(gw, "/credits")))
    generation = eventually(lambda: get(gw, "/generation", id=generation_id), "the generation record")
    conform.body("/generation", "generation", generation.json())
    activity = ok(get(gw, "/activity"))
    assert activity["data"], "no activity recorded"
    conform.body("/activity", "activity", activity)
    conform.body("/activity of a key", "activity", ok(get(gw, "/activity", api_key_hash=key_hash)))
    conform.assert_ok()


# -- the Python SDK, end to end ----------------------------------------------------------------------------------------

def test_sdk_responses_send(sdk, fake_anthropic) -> None:
    fake_anthropic.reply(REPLIES["reasoning"]())
    result = sdk.responses.send(model="anthropic/claude-sonnet-4", input="Hi", presence_penalty=0.5)
    assert result.status == "completed" and result.usage is not None and result.usage.total_tokens == 18
    assert (result.presence_penalty, result.frequency_penalty) == (0.5, 0.0)  # the request's, else OpenAI's default
    texts = [part.text for item in result.output if item.type == "message" for part in item.content]
    assert texts == ["Hello from the fake upstream."]
    assert [item.type for item in result.output] == ["reasoning", "message"]

    fake_anthropic.reply(REPLIES["tool call"]())
    events = list(sdk.responses.send(model="anthropic/claude-sonnet-4", input="Find x", stream=True,
                                     tools=[RESPONSES_TOOL]))
    assert not [e for e in events if getattr(e, "is_unknown", False)]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and done[0].name == "lookup" and json.loads(done[0].arguments) == {"q": "x"}
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.usage.total_tokens == 18


def test_sdk_endpoints_list(sdk) -> None:
    listed = sdk.endpoints.list(author="anthropic", slug="claude-sonnet-4")
    assert listed.data.id == "anthropic/claude-sonnet-4"
    assert [e.provider_name for e in listed.data.endpoints] and all(
        e.supports_tool_choice is not None for e in listed.data.endpoints)


def test_sdk_models_list_pages(sdk) -> None:
    total = sdk.models.count().data.count
    ids: list[str] = []
    page = sdk.models.list(limit=2)
    pages = 0
    while page is not None:
        ids.extend(model.id for model in page.result.data)
        pages += 1
        assert pages <= total, "paging does not end"
        page = page.next()
    # A full page makes the SDK ask for the next one: an exact multiple of the page size ends with an empty page.
    assert len(ids) == len(set(ids)) == total and pages == total // 2 + 1


@pytest.mark.parametrize("call", ["chat", "responses"])
def test_sdk_typed_errors(gw, fake_openai, call) -> None:
    """Each error status raises the SDK's own error class, with OpenRouter's code and message parsed."""
    body = (chat_body("openai/gpt-4o-mini") if call == "chat" else {"model": "openai/gpt-4o-mini", "input": "Hi"})
    poor, _ = create_key(gw, limit=1e-10)
    # No messages (no input): a request the SDK lets through and the gateway refuses.
    empty = {**body, "messages": []} if call == "chat" else {**body, "input": []}
    cases = {400: (MASTER_KEY, empty), 401: ("sk-or-v1-" + "0" * 64, body), 402: (poor, body),
             404: (MASTER_KEY, {**body, "model": "nobody/no-such-model"}), 429: (MASTER_KEY, body)}
    for status, (key, sent) in cases.items():
        if status == 429:
            fake_openai.fault(Fault(status=429))  # no Retry-After: the SDK's own retries are not what is tested
        with OpenRouter(api_key=key, server_url=gw.url + API) as client:
            send = client.chat.send if call == "chat" else client.responses.send
            with pytest.raises(ERRORS[status][2]) as raised:
                send(**sent)
        assert raised.value.data.error.code == status and raised.value.data.error.message, status


def test_sdk_mid_stream_error(sdk, fake_openai) -> None:
    """The client sees the error: the chat stream's last chunk carries it, typed; Responses' failed events too."""
    fake_openai.fault(Fault(error_event_after=2, message="the upstream broke"))
    chunks = list(sdk.chat.send(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                                stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].error is not None
    assert chunks[-1].error.code == 502 and chunks[-1].error.metadata.error_type == "provider_unavailable"
    assert chunks[-1].choices[0].finish_reason == "error"
    fake_openai.fault(Fault(error_event_after=2))
    events = list(sdk.responses.send(model="openai/gpt-4o-mini", input="Hi", stream=True))
    assert not [e for e in events if getattr(e, "is_unknown", False)]
    assert events[-2].type == "error" and events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error is not None


# -- the TypeScript SDK, end to end ------------------------------------------------------------------------------------

def ts_call(gw: GatewayServer, call: str, key: str = MASTER_KEY, **args: Any) -> Any:
    """tests/conformance/ts_calls.mjs: one call through the TypeScript SDK, its outcome as JSON."""
    missing = typescript_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}: CI must install it (scripts/test)")
        pytest.skip(missing)
    request = {"url": gw.url + API, "key": key, "call": call, "args": args}
    done = subprocess.run(["node", str(CONFORMANCE_DIR / "ts_calls.mjs"), json.dumps(request)], cwd=CONFORMANCE_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"ts_calls.mjs {call}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def test_ts_sdk_calls(gw, fake_openai, fake_anthropic) -> None:
    fake_anthropic.reply(REPLIES["reasoning"]())
    sent = ts_call(gw, "responses", model="anthropic/claude-sonnet-4")
    assert sent == {"status": "completed", "text": "Hello from the fake upstream.", "total_tokens": 18,
                    "types": ["reasoning", "message"]}
    fake_anthropic.reply(REPLIES["tool call"]())
    streamed = ts_call(gw, "responses-stream", model="anthropic/claude-sonnet-4", tools=[RESPONSES_TOOL])
    assert streamed["unknown"] == [] and streamed["types"][0] == "response.created"
    assert streamed["types"][-1] == "response.completed" and streamed["calls"] == [["lookup", '{"q":"x"}']]
    assert ts_call(gw, "chat-stream", model="openai/gpt-4o-mini")["text"] == "Hello from the fake upstream."
    listed = ts_call(gw, "endpoints", author="anthropic", slug="claude-sonnet-4")
    assert listed["id"] == "anthropic/claude-sonnet-4" and listed["endpoints"] >= 1
    pages = ts_call(gw, "models-pages", limit=2)
    total = ok(get(gw, "/models/count"))["data"]["count"]
    assert len(pages["ids"]) == len(set(pages["ids"])) == total and pages["pages"] == total // 2 + 1
    fake_openai.fault(Fault(error_event_after=2))
    failed = ts_call(gw, "chat-stream", model="openai/gpt-4o-mini")
    assert failed["text"] and failed["error"] == {"code": 502, "errorType": "provider_unavailable"}
    fake_openai.fault(Fault(error_event_after=2))
    failed = ts_call(gw, "responses-stream", model="openai/gpt-4o-mini")
    assert failed["unknown"] == [] and failed["types"][-2:] == ["error", "response.failed"]


@pytest.mark.parametrize("call", ["chat", "responses"])
def test_ts_sdk_typed_errors(gw, fake_openai, call) -> None:
    body_model = "openai/gpt-4o-mini"
    poor, _ = create_key(gw, limit=1e-10)
    cases = {400: (MASTER_KEY, body_model, True), 401: ("sk-or-v1-" + "0" * 64, body_model, False),
             402: (poor, body_model, False), 404: (MASTER_KEY, "nobody/no-such-model", False),
             429: (MASTER_KEY, body_model, False)}
    for status, (key, model, empty) in cases.items():
        if status == 429:
            fake_openai.fault(Fault(status=429))
        outcome = ts_call(gw, call, key, model=model, empty=empty)
        expected = ERRORS[status][1].removeprefix("errors.")
        assert outcome.get("error") == {"name": expected, "status": status, "code": status}, (status, outcome)
