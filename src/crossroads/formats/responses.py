"""OpenAI's Responses API as a front format, converted to and from the canonical chat shape.

Requests: `responses_to_chat` turns a Responses request (plus the stored items of a `previous_response_id` chain)
into a canonical chat request. Input items fold into chat messages: `instructions` become the first system message,
`function_call` items join the assistant message before them, `function_call_output` items become tool messages and
`reasoning` items become the assistant's `reasoning_details`. Fields with no chat counterpart (built-in tools such as
web_search, uploaded-file ids, ...) are dropped and their names returned so the caller can report them.

Responses: `ResponsesRenderer` turns a canonical completion into a Response object, or canonical stream chunks into
Responses SSE events (`response.created` ... `response.completed`), with OpenAI's event order: one output item is
open at a time and is finished (its `.done` events sent) before the next one is added.

Reasoning continuity: providers hand out opaque reasoning state as `reasoning_details` (an Anthropic thinking
signature together with its text, Gemini thought signatures keyed by tool-call id, OpenAI encrypted reasoning). A
Responses client can only carry `encrypted_content` back, so the whole entries are packed into it as an envelope
(`crossroads.v1.` + base64url JSON) and unpacked unchanged when the item comes back; a bare signature alone would not
be accepted by Anthropic and would lose the tool-call id Gemini matches on. Foreign `encrypted_content` (from OpenAI
itself, say) is passed on as a `reasoning.encrypted` entry.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from crossroads import reasoning as rsn
from crossroads.canonical import ReasoningDetail, Usage, text_of
from crossroads.errors import GatewayError

# Top-level request fields this module converts, or that the caller acts on (store, previous_response_id, metadata).
_CONSUMED = frozenset({
    "model", "models", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
    "temperature", "top_p", "text", "reasoning", "user", "safety_identifier", "metadata", "stream", "stream_options",
    "store", "previous_response_id", "include",
})
# Fields with the same meaning in the canonical chat request (OpenRouter's routing extras and sampling knobs).
_PASSTHROUGH = (
    "provider", "transforms", "plugins", "route", "usage", "top_k", "seed", "frequency_penalty", "presence_penalty",
    "repetition_penalty", "min_p", "top_a", "prompt_cache_key", "service_tier",
)
# Fields that point at server-side state Crossroads does not have: ignoring them would silently change the answer.
_UNSUPPORTED = {
    "conversation": "conversations are not supported; send the history as input items or use previous_response_id",
    "prompt": "stored prompt templates are not supported; send instructions and input instead",
}
_INCLUDE_HONOURED = frozenset({"reasoning.encrypted_content"})  # always present when there is any
_REASONING_KEYS = ("effort", "max_tokens", "exclude", "enabled")  # OpenRouter's reasoning object
_IMAGE_DETAIL = frozenset({"auto", "low", "high"})

# finish_reason -> (Response status, incomplete_details.reason)
_OUTCOMES: dict[str | None, tuple[str, str | None]] = {
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
    "error": ("failed", None),
}
_FINAL_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
                 "failed": "response.failed"}
# ResponseError.code is a closed set; these are the members an HTTP status can map to.
_ERROR_CODES = {400: "invalid_prompt", 429: "rate_limit_exceeded"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
                403: "permission_error", 404: "invalid_request_error", 408: "timeout_error",
                409: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__)


def _invalid(field_name: str, problem: str) -> GatewayError:
    return GatewayError(400, f"Invalid request: '{field_name}' {problem}", metadata={"field": field_name})


def _expect(value: Any, kinds: type | tuple[type, ...], field_name: str, expected: str) -> Any:
    """`value` if it has one of `kinds` (booleans only where asked for) or is None; a 400 naming the field if not."""
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if value is None or (isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool))):
        return value
    raise _invalid(field_name, f"must be {expected}, got {_kind(value)}")


# --------------------------------------------------------------------------------------------------- requests


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """body["input"] as a list of item dicts: a string is one user message; items without a type are messages."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        if value is None:
            raise _invalid("input", "is required (a string or an array of input items)")
        raise _invalid("input", f"must be a string or an array of input items, got {_kind(value)}")
    items: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _invalid(f"input[{i}]", f"must be an object, got {_kind(item)}")
        item = dict(item)
        if "type" not in item and "role" in item:
            item["type"] = "message"  # the SDK's "easy" message form leaves the type out
        items.append(item)
    return items


def items_for_history(request_items: list[dict[str, Any]], response: dict[str, Any]) -> list[dict[str, Any]]:
    """What to store for a response so a later `previous_response_id` continues the conversation.

    `request_items` are the request's input items (from `input_items`; prepend the earlier chain's items when storing
    the whole chain per response). The response's output items are valid input items as they are.
    """
    items = [dict(item) for item in request_items]
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") in ("message", "function_call", "reasoning"):
            items.append(copy.deepcopy(item))
    return items


def responses_to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None,
                      ) -> tuple[dict[str, Any], list[str]]:
    """A Responses request -> (canonical chat request, names of the fields that were dropped)."""
    if not isinstance(body, dict):
        raise GatewayError(400, f"Invalid request: the body must be a JSON object, got {_kind(body)}")
    for name, problem in _UNSUPPORTED.items():
        if body.get(name) is not None:
            raise _invalid(name, problem)
    dropped: list[str] = []
    chat: dict[str, Any] = {"model": _model(body)}
    builder = _MessageBuilder(dropped)
    instructions = _expect(body.get("instructions"), str, "instructions", "a string")
    if instructions:
        builder.messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(history or ()):
        builder.add(item, f"previous_response.items[{i}]")
    for i, item in enumerate(input_items(body)):
        builder.add(item, f"input[{i}]")
    builder.close_turn()
    if not builder.messages:
        raise _invalid("input", "must not be empty")
    chat["messages"] = builder.messages
    _sampling(body, chat)
    _tools(body, chat, dropped)
    _text(body, chat, dropped)
    _reasoning(body, chat)
    _identity(body, chat)
    for name in _PASSTHROUGH:
        if body.get(name) is not None:
            chat[name] = body[name]
    if isinstance(body.get("models"), list):
        chat["models"] = body["models"]
    dropped.extend(_ignored(body))
    return chat, list(dict.fromkeys(dropped))


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None and isinstance(body.get("models"), list) and body["models"]:
        model = body["models"][0]  # OpenRouter's fallback list may stand in for the model, as in chat
    if model is None:
        raise _invalid("model", "is required")
    if not isinstance(model, str) or not model:
        raise _invalid("model", f"must be a non-empty string, got {_kind(model)}")
    return model


def _sampling(body: dict[str, Any], chat: dict[str, Any]) -> None:
    stream = _expect(body.get("stream"), bool, "stream", "a boolean")
    if stream is not None:
        chat["stream"] = stream
    max_tokens = _expect(body.get("max_output_tokens"), int, "max_output_tokens", "an integer")
    if max_tokens is not None:
        if max_tokens < 1:
            raise _invalid("max_output_tokens", f"must be at least 1, got {max_tokens}")
        chat["max_tokens"] = max_tokens
    for name in ("temperature", "top_p"):
        value = _expect(body.get(name), (int, float), name, "a number")
        if value is not None:
            chat[name] = value


def _tools(body: dict[str, Any], chat: dict[str, Any], dropped: list[str]) -> None:
    tools = _expect(body.get("tools"), list, "tools", "an array") or []
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _invalid(f"tools[{i}].type", "must be a string")
        if tool["type"] != "function":
            dropped.append(f"tools.{tool['type']}")  # built-in tools (web_search, file_search, ...) run at OpenAI
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"tools[{i}].name", "must be a non-empty string")
        function = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        converted.append({"type": "function", "function": function})
    choice = _tool_choice(body.get("tool_choice"), dropped)
    parallel = _expect(body.get("parallel_tool_calls"), bool, "parallel_tool_calls", "a boolean")
    if not converted:
        return  # chat APIs refuse tool_choice and parallel_tool_calls without tools
    chat["tools"] = converted
    if choice is not None:
        chat["tool_choice"] = choice
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel


def _tool_choice(choice: Any, dropped: list[str]) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "required", "none"):
            raise _invalid("tool_choice", f"must be one of auto, required, none, got {choice!r}")
        return choice
    if not isinstance(choice, dict):
        raise _invalid("tool_choice", f"must be a string or an object, got {_kind(choice)}")
    if choice.get("type") == "function":
        if not isinstance(choice.get("name"), str) or not choice["name"]:
            raise _invalid("tool_choice.name", "must be a non-empty string")
        return {"type": "function", "function": {"name": choice["name"]}}
    dropped.append("tool_choice")  # a built-in tool or an allowed_tools list: nothing to force in chat terms
    return None


def _text(body: dict[str, Any], chat: dict[str, Any], dropped: list[str]) -> None:
    text = _expect(body.get("text"), dict, "text", "an object")
    if not text:
        return
    verbosity = _expect(text.get("verbosity"), str, "text.verbosity", "a string")
    if verbosity is not None:
        chat["verbosity"] = verbosity  # OpenRouter's chat parameter of the same name
    fmt = _expect(text.get("format"), dict, "text.format", "an object")
    if not fmt:
        return
    kind = fmt.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
        return
    if kind != "json_schema":
        raise _invalid("text.format.type", f"must be one of text, json_object, json_schema, got {kind!r}")
    if not isinstance(fmt.get("name"), str) or not fmt["name"]:
        raise _invalid("text.format.name", "must be a non-empty string")
    if not isinstance(fmt.get("schema"), dict):
        raise _invalid("text.format.schema", f"must be an object, got {_kind(fmt.get('schema'))}")
    schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
    for key in ("strict", "description"):
        if fmt.get(key) is not None:
            schema[key] = fmt[key]
    chat["response_format"] = {"type": "json_schema", "json_schema": schema}


def _reasoning(body: dict[str, Any], chat: dict[str, Any]) -> None:
    reasoning = _expect(body.get("reasoning"), dict, "reasoning", "an object")
    if not reasoning:
        return
    _expect(reasoning.get("effort"), str, "reasoning.effort", "a string")
    # `summary` has no chat counterpart: reasoning text, when the model gives any, always comes back as a summary.
    out = {key: reasoning[key] for key in _REASONING_KEYS if reasoning.get(key) is not None}
    if out:
        chat["reasoning"] = out


def _identity(body: dict[str, Any], chat: dict[str, Any]) -> None:
    user = _expect(body.get("user"), str, "user", "a string")
    safety = _expect(body.get("safety_identifier"), str, "safety_identifier", "a string")
    if user or safety:
        chat["user"] = user or safety
    metadata = _expect(body.get("metadata"), dict, "metadata", "an object")
    # The Response echoes metadata and OpenAI types it as string -> string, so anything else is refused here.
    for key, value in (metadata or {}).items():
        if not isinstance(value, str):
            raise _invalid(f"metadata.{key}", f"must be a string, got {_kind(value)}")


def _ignored(body: dict[str, Any]) -> list[str]:
    """Fields accepted without effect: unknown ones, and known ones whose non-default value cannot be honoured."""
    names = []
    for name, value in body.items():
        if name in _CONSUMED or name in _PASSTHROUGH or value is None:
            continue
        if (name == "truncation" and value == "disabled") or (name == "background" and value is False) \
                or (name == "top_logprobs" and value == 0):
            continue  # the defaults: what Crossroads does anyway
        names.append(name)
    include = body.get("include")
    if isinstance(include, list):
        names.extend(f"include.{v}" for v in include if isinstance(v, str) and v not in _INCLUDE_HONOURED)
    return names


@dataclass(slots=True)
class _MessageBuilder:
    """Folds input items into chat messages.

    An assistant turn is a run of assistant-side items (reasoning, assistant message, function calls): OpenAI lists
    them as separate items, chat needs them on one assistant message so that tool results follow their calls.
    Reasoning that follows a turn's text is held until the next item shows where it belongs: with a following
    function call, or a following tool result / user turn, it stays in this turn (Gemini signs text and calls after
    the text); before another assistant message it starts that message's turn.
    """

    dropped: list[str]
    messages: list[dict[str, Any]] = field(default_factory=list)
    turn: dict[str, Any] | None = None  # the assistant message being assembled
    held: list[ReasoningDetail] = field(default_factory=list)  # reasoning_details not yet placed

    def add(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise _invalid(where, f"must be an object, got {_kind(item)}")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._function_call(item, where)
        elif kind == "function_call_output":
            self._function_output(item, where)
        elif kind == "reasoning":
            self._reasoning(item, where)
        elif kind == "item_reference":
            raise _invalid(f"{where}.type", "item_reference is not supported; send the item itself")
        else:
            raise _invalid(f"{where}.type", "must be one of message, function_call, function_call_output, "
                                            f"reasoning, got {kind!r}")

    def close_turn(self) -> None:
        self._place_held()
        turn, self.turn = self.turn, None
        if turn is not None and turn["content"] is None and not turn.get("tool_calls"):
            self.messages.remove(turn)  # reasoning with nothing after it is no chat message of its own

    def _open_turn(self) -> dict[str, Any]:
        held, self.held = self.held, []
        self.close_turn()
        self.turn = {"role": "assistant", "content": None}
        if held:
            self.turn["reasoning_details"] = held
        self.messages.append(self.turn)
        return self.turn

    def _place_held(self) -> None:
        if self.held and self.turn is not None:
            self.turn.setdefault("reasoning_details", []).extend(self.held)
        self.held = []

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise _invalid(f"{where}.role", f"must be one of user, system, developer, assistant, got {role!r}")
        content = item.get("content")
        if not isinstance(content, (str, list)):
            raise _invalid(f"{where}.content", f"must be a string or an array of content parts, got {_kind(content)}")
        if role == "assistant":
            turn = self.turn
            if turn is None or turn["content"] is not None or turn.get("tool_calls"):
                turn = self._open_turn()
            turn["content"] = _joined_text(content, f"{where}.content", ("output_text", "input_text", "refusal"))
            return
        if role in ("system", "developer"):
            self.close_turn()
            self.messages.append({"role": "system",
                                  "content": _joined_text(content, f"{where}.content", ("input_text",))})
            return
        self.close_turn()
        parts = content if isinstance(content, str) else _chat_parts(content, f"{where}.content", self.dropped)
        self.messages.append({"role": "user", "content": parts})

    def _function_call(self, item: dict[str, Any], where: str) -> None:
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{where}.call_id", "must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{where}.name", "must be a non-empty string")
        arguments = _expect(item.get("arguments"), str, f"{where}.arguments", "a string")
        self._place_held()
        turn = self.turn if self.turn is not None else self._open_turn()
        turn.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or "{}"}})

    def _function_output(self, item: dict[str, Any], where: str) -> None:
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise _invalid(f"{where}.call_id", "must be a non-empty string")
        if isinstance(output, list):
            output = _chat_parts(output, f"{where}.output", self.dropped)
        elif not isinstance(output, str):
            raise _invalid(f"{where}.output", f"must be a string or an array of content parts, got {_kind(output)}")
        self.close_turn()
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": output})

    def _reasoning(self, item: dict[str, Any], where: str) -> None:
        details = _details_from_item(item, where)
        if not details:
            return
        turn = self.turn
        if turn is not None and turn["content"] is not None and not turn.get("tool_calls"):
            self.held.extend(details)  # after this turn's text: the next item decides (see the class doc)
            return
        turn = turn if turn is not None else self._open_turn()
        turn.setdefault("reasoning_details", []).extend(details)


def _joined_text(content: str | list[Any], where: str, kinds: tuple[str, ...]) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise _invalid(f"{where}[{j}].type", f"must be one of {', '.join(kinds)}, got {kind!r}")
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise _invalid(f"{where}[{j}].text", f"must be a string, got {_kind(text)}")
        texts.append(text)
    return "".join(texts)


def _chat_parts(parts: list[Any], where: str, dropped: list[str]) -> list[dict[str, Any]]:
    """Responses content parts -> chat content parts; parts that only name an uploaded file are dropped."""
    out = []
    for j, part in enumerate(parts):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise _invalid(f"{here}.text", f"must be a string, got {_kind(part.get('text'))}")
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            converted = _image_part(part, here, dropped)
            if converted is not None:
                out.append(converted)
        elif kind == "input_file":
            converted = _file_part(part, here, dropped)
            if converted is not None:
                out.append(converted)
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            out.append({"type": "input_audio", "input_audio": part["input_audio"]})
        else:
            raise _invalid(f"{here}.type", "must be one of input_text, output_text, input_image, input_file, "
                                           f"input_audio, got {kind!r}")
    return out


def _image_part(part: dict[str, Any], where: str, dropped: list[str]) -> dict[str, Any] | None:
    url = part.get("image_url")
    if isinstance(url, str) and url:
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str) and part["detail"] in _IMAGE_DETAIL:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if part.get("file_id") is not None:
        dropped.append(f"{where}.file_id")  # an OpenAI Files upload: Crossroads cannot read it
        return None
    raise _invalid(f"{where}.image_url", "must be a URL (http(s) or data:)")


def _file_part(part: dict[str, Any], where: str, dropped: list[str]) -> dict[str, Any] | None:
    data = part.get("file_data") or part.get("file_url")  # chat file parts take a URL in file_data too
    if isinstance(data, str) and data:
        file: dict[str, Any] = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file = {"filename": part["filename"], **file}
        return {"type": "file", "file": file}
    if part.get("file_id") is not None:
        dropped.append(f"{where}.file_id")
        return None
    raise _invalid(f"{where}.file_data", "is required (base64 data, a data: URL or file_url)")


def _details_from_item(item: dict[str, Any], where: str) -> list[ReasoningDetail]:
    encrypted = item.get("encrypted_content")
    if isinstance(encrypted, str) and encrypted.startswith(rsn.ENVELOPE):
        return _unpack(encrypted, f"{where}.encrypted_content")  # already holds the text entries too
    summary = _expect(item.get("summary"), list, f"{where}.summary", "an array") or []
    details: list[ReasoningDetail] = []
    for j, part in enumerate(summary):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            raise _invalid(f"{where}.summary[{j}].text", "must be a string")
        details.append(rsn.detail(rsn.SUMMARY, summary=part["text"]))
    if isinstance(encrypted, str) and encrypted:
        details.append(rsn.detail(rsn.ENCRYPTED, data=encrypted, id=item.get("id")))
    return details


def _unpack(encrypted: str, where: str) -> list[ReasoningDetail]:
    details = rsn.unseal(encrypted)
    if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
        raise _invalid(where, "is not reasoning state this gateway produced (it was altered or truncated)")
    return details


# ------------------------------------------------------------------------------------------------- responses


def responses_error_body(error: GatewayError) -> dict[str, Any]:
    """An error body of the Responses endpoints: OpenRouter's shape (`error.code` the HTTP status, an integer, as both
    OpenRouter SDKs require: anything else fails their validation instead of raising their typed error), with OpenAI's
    `type` and `param` beside it for the openai SDKs, which show them on their exceptions (and pick the exception class
    by the HTTP status alone, so the integer code does not bother them). A cause's identifier, OpenAI's string `code`,
    is `error.metadata.code`, as in every OpenRouter error."""
    body = error.payload()
    status = error.status
    field_name = (error.metadata or {}).get("field")
    body["error"]["type"] = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body["error"]["param"] = field_name if isinstance(field_name, str) else None
    return body


def _carries_state(details: list[ReasoningDetail]) -> bool:
    return any(d.get("signature") or d.get("data") for d in details)


def _usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            # cache_write_tokens: required by current openai SDKs' ResponseUsage
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": usage.cache_write_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "content": [_output_text(text)],
            "role": "assistant"}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


def _reasoning_item(item_id: str, summary: str, details: list[ReasoningDetail]) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": summary}] if summary else []}
    if _carries_state(details):
        item["encrypted_content"] = rsn.seal(details)
    return item


@dataclass(slots=True)
class _OpenItem:
    """An output item whose `.done` events are still owed."""

    index: int  # output_index
    pieces: list[str] = field(default_factory=list)  # text, summary or argument fragments so far
    details: list[ReasoningDetail] = field(default_factory=list)  # reasoning items only


class ResponsesRenderer:
    """Renders canonical results as Responses objects and SSE events for one response."""

    __slots__ = ("response_id", "model", "request", "created_at", "last_response", "_suffix", "_echo", "_seq",
                 "_started", "_output", "_message", "_reasoning", "_calls", "_open_calls", "_details",
                 "_finish_reason")

    def __init__(self, response_id: str, model: str, request: dict[str, Any], created_at: int) -> None:
        self.response_id = response_id
        self.model = model
        self.request = request
        self.created_at = created_at
        self.last_response: dict[str, Any] | None = None  # the final Response, for storage (stream or not)
        self._suffix = response_id.removeprefix("resp_")
        self._echo = _echoed_fields(request)
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # output items in their latest state
        self._message: _OpenItem | None = None
        self._reasoning: _OpenItem | None = None
        self._calls: dict[int, _OpenItem] = {}  # canonical tool-call index -> its item
        self._open_calls: list[int] = []
        self._details: list[ReasoningDetail] = []  # reasoning_details not yet given to a reasoning item
        self._finish_reason: str | None = None

    # ---- whole responses

    def response(self, completion: dict[str, Any], usage: Usage) -> dict[str, Any]:
        choices = completion.get("choices") or [{}]
        message = choices[0].get("message") or {}
        status, reason = _OUTCOMES.get(choices[0].get("finish_reason"), ("completed", None))
        output: list[dict[str, Any]] = []
        details = rsn.merge_details(message.get("reasoning_details"))
        reasoning = message.get("reasoning")
        summary = reasoning if isinstance(reasoning, str) else rsn.details_text(details)
        if summary or _carries_state(details):
            output.append(_reasoning_item(self._item_id("rs", 0), summary, details))
        text = text_of(message.get("content"))
        if text:
            output.append(_message_item(self._item_id("msg", len(output)), text, "completed"))
        for n, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            output.append(_call_item(self._item_id("fc", len(output)), call.get("id") or self._call_id(n),
                                     function.get("name") or "", function.get("arguments") or "", "completed"))
        if status == "incomplete" and output and output[-1]["type"] != "reasoning":
            output[-1]["status"] = "incomplete"  # the item the token limit cut short
        error = self._finish_error() if status == "failed" else None
        self.last_response = self._response(status, output, _usage(usage), reason=reason, error=error)
        return self.last_response

    # ---- streams

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = self._start()
        choices = chunk.get("choices") or ()
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return b"".join(out)
        delta = choice.get("delta") or {}
        details = delta.get("reasoning_details")
        rsn.merge_details(details, self._details)
        reasoning = delta.get("reasoning")
        if not isinstance(reasoning, str):
            reasoning = rsn.details_text(details)
        if reasoning:
            out += self._reasoning_delta(reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            out += self._text_delta(content)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out += self._call_delta(call)
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
        return b"".join(out)

    def finish(self, usage: Usage, finish_reason: str | None) -> bytes:
        reason = finish_reason if finish_reason is not None else self._finish_reason
        status, incomplete = _OUTCOMES.get(reason, ("completed", None))
        out = self._start()
        out += self._close_all("incomplete" if status == "incomplete" else "completed")
        out += self._flush_details()
        error = self._finish_error() if status == "failed" else None
        self.last_response = self._response(status, self._output, _usage(usage), reason=incomplete, error=error)
        out.append(self._event(_FINAL_EVENTS[status], response=self.last_response))
        return b"".join(out)

    def error_event(self, status: int, message: str) -> bytes:
        """The stream failed: an `error` event, then `response.failed` with the output produced so far."""
        code = _ERROR_CODES.get(status, "server_error")
        out = self._start()
        out.append(self._event("error", code=code, message=message, param=None))
        self.last_response = self._response("failed", self._partial_output(), None,
                                            error={"code": code, "message": message})
        out.append(self._event("response.failed", response=self.last_response))
        return b"".join(out)

    def _partial_output(self) -> list[dict[str, Any]]:
        """The output so far, with the items still open shown as they stand (cut short: incomplete)."""
        output = copy.deepcopy(self._output)
        if self._message is not None:
            entry = self._message
            output[entry.index] = _message_item(output[entry.index]["id"], "".join(entry.pieces), "incomplete")
        if self._reasoning is not None:
            entry = self._reasoning
            output[entry.index] = _reasoning_item(output[entry.index]["id"], "".join(entry.pieces), [])
        for index in self._open_calls:
            entry = self._calls[index]
            item = output[entry.index]
            output[entry.index] = _call_item(item["id"], item["call_id"], item["name"], "".join(entry.pieces),
                                             "incomplete")
        return output

    # ---- stream internals

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        snapshot = self._response("in_progress", [], None)
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def _add_item(self, item: dict[str, Any]) -> tuple[_OpenItem, bytes]:
        index = len(self._output)
        self._output.append(item)
        return _OpenItem(index), self._event("response.output_item.added", output_index=index, item=item)

    def _reasoning_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._reasoning is None:
            out += self._close_all("completed")
            self._reasoning, added = self._add_item(
                {"id": self._item_id("rs", len(self._output)), "type": "reasoning", "summary": []})
            out.append(added)
            out.append(self._event("response.reasoning_summary_part.added", **self._where(self._reasoning),
                                   summary_index=0, part={"type": "summary_text", "text": ""}))
        self._reasoning.pieces.append(text)
        out.append(self._event("response.reasoning_summary_text.delta", **self._where(self._reasoning),
                               summary_index=0, delta=text))
        return out

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._message is None:
            out += self._close_all("completed")
            out += self._flush_details()
            item = {"id": self._item_id("msg", len(self._output)), "type": "message", "status": "in_progress",
                    "content": [], "role": "assistant"}
            self._message, added = self._add_item(item)
            out.append(added)
            out.append(self._event("response.content_part.added", **self._where(self._message), content_index=0,
                                   part=_output_text("")))
        self._message.pieces.append(text)
        out.append(self._event("response.output_text.delta", **self._where(self._message), content_index=0,
                               delta=text, logprobs=[]))
        return out

    def _call_delta(self, call: dict[str, Any]) -> list[bytes]:
        index = call.get("index", len(self._calls))
        function = call.get("function") or {}
        arguments = function.get("arguments")
        out: list[bytes] = []
        entry = self._calls.get(index)
        if entry is None:  # the first fragment names the call; later ones only carry arguments
            out += self._close_all("completed")
            out += self._flush_details()
            item = _call_item(self._item_id("fc", len(self._output)), call.get("id") or self._call_id(index),
                              function.get("name") or "", "", "in_progress")
            entry, added = self._add_item(item)
            out.append(added)
            self._calls[index] = entry
            self._open_calls.append(index)
        if isinstance(arguments, str) and arguments:
            entry.pieces.append(arguments)
            if index in self._open_calls:
                out.append(self._event("response.function_call_arguments.delta", **self._where(entry),
                                       delta=arguments))
            else:
                # A fragment for a call already finished (an upstream interleaving parallel calls): it cannot be
                # streamed any more, but the final Response still gets the whole arguments.
                self._output[entry.index]["arguments"] = "".join(entry.pieces)
        return out

    def _close_all(self, status: str) -> list[bytes]:
        out = self._close_reasoning()
        if self._message is not None:
            entry, self._message = self._message, None
            text = "".join(entry.pieces)
            where = self._where(entry)
            out.append(self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", **where, content_index=0, part=_output_text(text)))
            out.append(self._item_done(entry, _message_item(where["item_id"], text, status)))
        for index in self._open_calls:
            entry = self._calls[index]
            item = self._output[entry.index]
            arguments = "".join(entry.pieces)
            out.append(self._event("response.function_call_arguments.done", **self._where(entry),
                                   name=item["name"], arguments=arguments))
            out.append(self._item_done(entry, _call_item(item["id"], item["call_id"], item["name"], arguments,
                                                         status)))
        self._open_calls = []
        return out

    def _close_reasoning(self) -> list[bytes]:
        if self._reasoning is None:
            return []
        entry, self._reasoning = self._reasoning, None
        summary = "".join(entry.pieces)
        where = self._where(entry)
        details, self._details = self._details, []
        return [self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=summary),
                self._event("response.reasoning_summary_part.done", **where, summary_index=0,
                            part={"type": "summary_text", "text": summary}),
                self._item_done(entry, _reasoning_item(where["item_id"], summary, details))]

    def _flush_details(self) -> list[bytes]:
        """Reasoning state that arrived outside reasoning text (a Gemini signature, Anthropic redacted thinking)
        gets a reasoning item of its own, so a client can hand it back."""
        if not _carries_state(self._details):
            self._details = []
            return []
        details, self._details = self._details, []
        entry, added = self._add_item({"id": self._item_id("rs", len(self._output)), "type": "reasoning",
                                       "summary": []})
        return [added, self._item_done(entry, _reasoning_item(self._output[entry.index]["id"], "", details))]

    def _item_done(self, entry: _OpenItem, item: dict[str, Any]) -> bytes:
        self._output[entry.index] = item
        return self._event("response.output_item.done", output_index=entry.index, item=item)

    def _where(self, entry: _OpenItem) -> dict[str, Any]:
        return {"item_id": self._output[entry.index]["id"], "output_index": entry.index}

    # ---- shared

    def _item_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self._suffix}_{index}"

    def _call_id(self, n: int) -> str:
        return f"call_{self._suffix}_{n}"  # only when an upstream gave a call no id

    @staticmethod
    def _finish_error() -> dict[str, Any]:
        return {"code": "server_error", "message": "The upstream model stopped with an error"}

    def _response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None, *,
                  reason: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        # `usage` is null only while nothing is counted yet (response.created, response.in_progress) and in a
        # stream's response.failed, as OpenAI sends them: both OpenRouter SDKs type it as nullable there.
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "completed_at": int(time.time()) if status == "completed" else None,
            "error": error, "incomplete_details": {"reason": reason} if reason else None,
            **self._echo, "model": self.model, "output": output, "usage": usage,
        }


def _echoed_fields(request: dict[str, Any]) -> dict[str, Any]:
    """The request fields a Response repeats back, limited to what was honoured and typed as the SDK expects."""

    def typed(name: str, kinds: tuple[type, ...]) -> Any:
        value = request.get(name)
        if isinstance(value, bool) and bool not in kinds:
            return None
        return value if isinstance(value, kinds) else None

    def penalty(name: str) -> float:
        value = typed(name, (int, float))
        return 0.0 if value is None else value

    tools = [t for t in request.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    choice = request.get("tool_choice")
    if not (choice in ("auto", "required", "none") or (isinstance(choice, dict) and choice.get("type") == "function")):
        choice = "auto"
    reasoning = request.get("reasoning")
    if not isinstance(reasoning, dict):
        reasoning = {}
    text = request.get("text")
    if not isinstance(text, dict):
        text = {}
    text_config = {"format": text.get("format") or {"type": "text"}}
    if text.get("verbosity") is not None:
        text_config["verbosity"] = text["verbosity"]
    parallel = typed("parallel_tool_calls", (bool,))
    store = typed("store", (bool,))
    return {
        "instructions": typed("instructions", (str,)),
        "max_output_tokens": typed("max_output_tokens", (int,)),
        "max_tool_calls": None,
        "parallel_tool_calls": True if parallel is None else parallel,
        # Required by both OpenRouter SDKs (OpenAI sends them too): the request's, else the default, 0 (as OpenAI).
        "presence_penalty": penalty("presence_penalty"),
        "frequency_penalty": penalty("frequency_penalty"),
        "previous_response_id": typed("previous_response_id", (str,)),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": typed("safety_identifier", (str,)),
        "store": True if store is None else store,  # OpenAI's default
        "temperature": typed("temperature", (int, float)),
        "text": text_config,
        "tool_choice": choice,
        "tools": tools,
        "top_p": typed("top_p", (int, float)),
        "truncation": "disabled",
        "user": typed("user", (str,)),
        "metadata": request.get("metadata") if isinstance(request.get("metadata"), dict) else {},
    }
