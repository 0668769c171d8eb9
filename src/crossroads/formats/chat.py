"""OpenAI Chat Completions as OpenRouter extends it: request checks and response/stream rendering.

Validation checks the types of the fields the gateway and its adapters read, and names the field in the error;
everything else passes through untouched (no whole-body model validation on the hot path).
"""

from __future__ import annotations

import os
import re
import string
import time
from typing import Any, final

import orjson

from crossroads.accounting.pricing import completion_cost, prompt_cost
from crossroads.canonical import Usage
from crossroads.catalog import Pricing
from crossroads.errors import GatewayError
from crossroads.formats.base import Parsed, ResponseStore
from crossroads.formats.json_input import loads_bounded
from crossroads.reasoning import wants_reasoning

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_NUMBER = (int, float)
_ALPHABET = string.ascii_letters + string.digits


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _fail(field: str, expected: str, value: Any) -> GatewayError:
    return GatewayError(400, f"Invalid request: '{field}' must be {expected}, got {_kind(value)}",
                        metadata={"field": field})


# field -> (accepted types, description for the error message)
_SCALAR_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "stream": (bool, "a boolean"),
    "max_tokens": (int, "an integer"),
    "max_completion_tokens": (int, "an integer"),
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "top_k": (_NUMBER, "a number"),
    "min_p": (_NUMBER, "a number"),
    "top_a": (_NUMBER, "a number"),
    "frequency_penalty": (_NUMBER, "a number"),
    "presence_penalty": (_NUMBER, "a number"),
    "repetition_penalty": (_NUMBER, "a number"),
    "seed": (int, "an integer"),
    "logit_bias": (dict, "an object"),
    "tools": (list, "an array"),
    "tool_choice": ((str, dict), "a string or an object"),
    "parallel_tool_calls": (bool, "a boolean"),
    "response_format": (dict, "an object"),
    "user": (str, "a string"),
    "reasoning": (dict, "an object"),
    "stream_options": (dict, "an object"),
    "models": (list, "an array of model ids"),
    "provider": (dict, "an object"),
    "transforms": (list, "an array of strings"),
    "prompt": (str, "a string"),
    "stop": ((str, list), "a string or an array of strings"),
    "metadata": (dict, "an object"),
}


def _checks(fields: dict[str, tuple[type | tuple[type, ...], str]]) -> dict[str, tuple[tuple[type, ...], bool, str]]:
    """field -> (accepted types as a tuple, whether a boolean is accepted, description): bool is an int subclass,
    so isinstance alone would let `true` through as an integer."""
    out = {}
    for field, (kinds, expected) in fields.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        out[field] = (kinds, bool in kinds, expected)
    return out


def _wrong_type(value: Any, check: tuple[tuple[type, ...], bool, str]) -> bool:
    return value is not None and (not isinstance(value, check[0]) or (value.__class__ is bool and not check[1]))


_SCALAR_CHECKS = _checks(_SCALAR_FIELDS)
_REASONING_CHECKS = _checks({"effort": (str, "a string"), "max_tokens": (int, "an integer"),
                             "enabled": (bool, "a boolean"), "exclude": (bool, "a boolean")})


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    if not raw:
        raise GatewayError(400, "Invalid request: the body is empty; send a JSON object")
    body = loads_bounded(raw)
    if not isinstance(body, dict):
        raise GatewayError(400, f"Invalid request: the body must be a JSON object, got {_kind(body)}")
    return body


def parse_chat_request(raw: bytes) -> dict[str, Any]:
    return check_chat_body(parse_json_object(raw))


def check_routing_fields(body: dict[str, Any]) -> None:
    """Check `model` (the first of `models` when absent), `models` and the scalar fields every request kind shares
    (`provider`, `user`, ...): what routing and the records read, for chat and embeddings alike."""
    model = body.get("model")
    if model is None and isinstance(body.get("models"), list) and body["models"]:
        model = body["model"] = body["models"][0]
    if not isinstance(model, str) or not model:
        raise _fail("model", "a non-empty string", model) if model is not None else GatewayError(
            400, "Invalid request: 'model' is required", metadata={"field": "model"})
    _check_model_name("model", model)
    models = body.get("models")
    if isinstance(models, list):
        for i, name in enumerate(models):
            if not isinstance(name, str) or not name:
                raise _fail(f"models[{i}]", "a non-empty string", name)
            _check_model_name(f"models[{i}]", name)
    # Over the body's fields (a handful) rather than every known field.
    for field, value in body.items():
        check = _SCALAR_CHECKS.get(field)
        if check is not None and _wrong_type(value, check):
            raise _fail(field, check[2], value)


def check_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """Check (and normalise in place) the fields of a chat request the gateway and its adapters read."""
    check_routing_fields(body)
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and value < 1:
            raise GatewayError(400, f"Invalid request: '{field}' must be at least 1, got {value}",
                               metadata={"field": field})
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise _fail("stop", "a string or an array of strings", stop)
    messages = body.get("messages")
    if messages is None:
        if body.get("prompt") is None:
            raise GatewayError(400, "Invalid request: 'messages' (or 'prompt') is required",
                               metadata={"field": "messages"})
        # OpenRouter accepts a bare prompt; every adapter sees it as one user turn.
        body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
    else:
        _check_messages(messages)
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and "reasoning" not in body:
        # OpenAI's flat spelling (sent by the openrouter SDK too) means the same as reasoning.effort.
        body["reasoning"] = {"effort": effort}
    reasoning = body.get("reasoning")
    if reasoning:
        _check_reasoning(reasoning)
    tools = body.get("tools")
    if tools:
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise GatewayError(400, f"Invalid request: 'tools[{i}].function.name' must be a string",
                                   metadata={"field": f"tools[{i}].function.name"})
    fmt = body.get("response_format")
    if fmt is not None and fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise GatewayError(400, "Invalid request: 'response_format.type' must be one of text, json_object, "
                                "json_schema", metadata={"field": "response_format.type"})
    if fmt is not None and fmt.get("type") == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise _fail("response_format.json_schema", "an object", fmt.get("json_schema"))
    return body


MAX_MODEL_NAME = 256  # characters; the longest real id is under 100, and a name may end up in a header or a log
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_model_name(field: str, name: str) -> None:
    """Model names are never echoed unchecked (headers, logs, upstream URLs): bounded, no control characters."""
    if len(name) > MAX_MODEL_NAME:
        raise GatewayError(400, f"Invalid request: '{field}' is {len(name)} characters long; a model name has at "
                                f"most {MAX_MODEL_NAME}", metadata={"field": field})
    if _CONTROL_CHARACTERS.search(name):
        raise GatewayError(400, f"Invalid request: '{field}' contains a control character (such as CR, LF or NUL); "
                                "a model name cannot", metadata={"field": field})


def _check_reasoning(reasoning: dict[str, Any]) -> None:
    for field, check in _REASONING_CHECKS.items():
        if _wrong_type(reasoning.get(field), check):
            raise _fail(f"reasoning.{field}", check[2], reasoning[field])


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _fail("messages", "an array", messages)
    if not messages:
        raise GatewayError(400, "Invalid request: 'messages' must not be empty", metadata={"field": "messages"})
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _fail(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise GatewayError(400, f"Invalid request: 'messages[{i}].role' must be one of "
                                    f"{', '.join(sorted(ROLES))}, got {role!r}", metadata={"field": f"messages[{i}].role"})
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _fail(f"messages[{i}].content", "a string or an array of content parts", content)
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise GatewayError(400, f"Invalid request: 'messages[{i}].content[{j}].type' must be a string",
                                       metadata={"field": f"messages[{i}].content[{j}].type"})
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise _fail(f"messages[{i}].content[{j}].text", "a string", part.get("text"))
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise GatewayError(400, f"Invalid request: 'messages[{i}].tool_call_id' is required for tool messages",
                               metadata={"field": f"messages[{i}].tool_call_id"})
        tool_calls = message.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise _fail(f"messages[{i}].tool_calls", "an array", tool_calls)
        for k, call in enumerate(tool_calls or ()):
            if not isinstance(call, dict):
                raise _fail(f"messages[{i}].tool_calls[{k}]", "an object", call)
            if not isinstance(call.get("function"), dict):
                raise _fail(f"messages[{i}].tool_calls[{k}].function", "an object", call.get("function"))


# Byte -> letter/digit, applied by bytes.translate in C (a 256/62 bias that no one can exploit in an id).
_ID_TABLE = bytes(ord(_ALPHABET[b % 62]) for b in range(256))


@final  # no subclass: register_at_fork below calls this instance's own __init__
class _RandomText:
    """Random letters and digits from the OS's CSPRNG, fetched 4 KiB at a time: one getrandom() per ~200 ids instead
    of one per request (the system call is a measurable share of a request's CPU on some virtual machines)."""

    __slots__ = ("pool", "offset")

    def __init__(self) -> None:
        self.pool = b""
        self.offset = 0

    def take(self, size: int) -> str:
        offset = self.offset
        if offset + size > len(self.pool):
            self.pool = os.urandom(4096).translate(_ID_TABLE)
            offset = 0
        self.offset = offset + size
        return self.pool[offset:offset + size].decode()


random_text = _RandomText()
if hasattr(os, "register_at_fork"):  # a forked worker must not repeat its parent's ids
    os.register_at_fork(after_in_child=random_text.__init__)


def new_generation_id() -> str:
    return f"gen-{int(time.time())}-{random_text.take(20)}"


def usage_payload(usage: Usage, pricing: Pricing) -> dict[str, Any]:
    p_cost = prompt_cost(usage, pricing)
    c_cost = completion_cost(usage, pricing)
    cost = round(p_cost + c_cost, 12)
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost": cost,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens,
                                  "cache_write_tokens": usage.cache_write_tokens},
        "cost_details": {"upstream_inference_cost": cost,
                         "upstream_inference_prompt_cost": round(p_cost, 12),
                         "upstream_inference_completions_cost": round(c_cost, 12)},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChatRenderer:
    """Stamps OpenRouter's fields on what a translator produced and renders it for the client."""

    __slots__ = ("generation_id", "model", "provider", "created", "include_reasoning", "_stamp")

    def __init__(self, generation_id: str, model: str, provider: str, *, include_reasoning: bool = True) -> None:
        self.generation_id = generation_id
        self.model = model
        self.provider = provider
        self.created = int(time.time())
        self.include_reasoning = include_reasoning
        self._stamp = {"id": generation_id, "object": "chat.completion.chunk", "created": self.created,
                       "model": model, "provider": provider}

    def completion(self, result: dict[str, Any], usage: Usage, pricing: Pricing) -> bytes:
        choices = result.get("choices") or []
        for choice in choices:
            message = choice.setdefault("message", {"role": "assistant", "content": None})
            message.setdefault("role", "assistant")
            message.setdefault("content", None)
            message.setdefault("refusal", None)
            if not self.include_reasoning:
                message.pop("reasoning", None)
                message.pop("reasoning_details", None)
            else:
                message.setdefault("reasoning", None)
            choice.setdefault("logprobs", None)
        out = {
            "id": self.generation_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "provider": self.provider,
            "system_fingerprint": result.get("system_fingerprint"),
            "choices": choices,
            "usage": usage_payload(usage, pricing),
        }
        if result.get("service_tier") is not None:
            out["service_tier"] = result["service_tier"]
        return orjson.dumps(out)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if not self.include_reasoning:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta")
                if delta:
                    delta.pop("reasoning", None)
                    delta.pop("reasoning_details", None)
        chunk.update(self._stamp)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def usage_chunk(self, usage: Usage, pricing: Pricing) -> bytes:
        return b"data: " + orjson.dumps({**self._stamp, "choices": [], "usage": usage_payload(usage, pricing)}) + b"\n\n"

    def end(self, usage: Usage, pricing: Pricing, finish_reason: str | None, native: str | None) -> bytes:
        """The stream's end: the usage chunk, then [DONE]."""
        return self.usage_chunk(usage, pricing) + b"data: [DONE]\n\n"

    def error_chunk(self, code: int | str, message: str, metadata: dict[str, Any] | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            **self._stamp, "error": stream_error(code, message, metadata),
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                         "native_finish_reason": "error"}],
        }) + b"\n\n"


# OpenRouter's canonical error types (its SDKs' APIErrorType) for the statuses a stream can fail with.
_STREAM_ERROR_TYPES = {400: "invalid_request", 401: "authentication", 402: "payment_required", 403: "permission_denied",
                       404: "not_found", 408: "timeout", 413: "payload_too_large", 422: "unprocessable",
                       429: "rate_limit_exceeded", 502: "provider_unavailable", 503: "provider_unavailable",
                       504: "timeout", 524: "timeout", 529: "provider_overloaded"}


def stream_error(code: int | str, message: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The `error` object of a mid-stream error chunk. Both OpenRouter SDKs require error.metadata.error_type on a
    chat chunk: without it the chunk fails their validation and the stream aborts before the client sees the error."""
    error_type = (metadata or {}).get("error_type")
    if not isinstance(error_type, str) or not error_type:
        error_type = stream_error_type(code)
    return {"code": code, "message": message, "metadata": {**(metadata or {}), "error_type": error_type}}


def stream_error_type(status: int | str) -> str:
    """The `error.metadata.error_type` of a mid-stream error with this status ("unmapped" when none fits)."""
    if not isinstance(status, int):
        return "unmapped"
    return _STREAM_ERROR_TYPES.get(status, "server" if status >= 500 else "unmapped")


class ChatFront:
    """POST /chat/completions: the canonical format itself (the openai adapter is already a near pass-through)."""

    api_type = "chat"
    native_only = False  # see Front.native_only

    async def parse(self, request: Any, responses: ResponseStore) -> Parsed:
        return Parsed(parse_chat_request(request.body))

    def renderer(self, *, generation_id: str, model_id: str, provider: str, parsed: Parsed,
                 usage: Usage) -> ChatRenderer:
        return ChatRenderer(generation_id, model_id, provider, include_reasoning=wants_reasoning(parsed.body))

    def native_translator(self, connection: Any, ctx: Any, parsed: Parsed) -> None:
        return None

    def error_body(self, error: GatewayError) -> bytes:
        return error.body()
