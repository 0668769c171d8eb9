"""Anthropic's Messages API as a front format: requests to the canonical chat shape, results rendered back.

`messages_to_chat` turns a Messages request into a canonical chat request (OpenAI Chat Completions as
OpenRouter extends it), so any provider can serve it; fields with no canonical counterpart are named in a
`dropped` list rather than failing the request. `MessagesRenderer` turns the canonical completion, or the
canonical stream, back into Anthropic's message object and its SSE event sequence (`message_start`,
`content_block_*`, `message_delta`, `message_stop`), which the official SDKs accumulate.

Thinking round-trips through OpenRouter's `reasoning_details`. Signatures made by other vendors (Gemini
thought signatures, OpenAI encrypted reasoning) cannot be labelled as Anthropic's without Anthropic rejecting
them later, so they travel inside the signature/data string in a wrapped form (`_wrap`) that records their
format and id, and are unwrapped when the client sends them back.
"""

from __future__ import annotations

from typing import Any

import orjson

from crossroads import reasoning as rsn
from crossroads.canonical import ReasoningDetail, Usage, text_of
from crossroads.errors import GatewayError
from crossroads.observability.logs import REQUEST_ID

REASONING_FORMAT = rsn.ANTHROPIC_FORMAT
DEFAULT_FILENAME = "document.pdf"

# Anthropic's own stop reasons: when the upstream was Anthropic, its value is passed on as is.
ANTHROPIC_STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn",
                                    "refusal", "model_context_window_exceeded"})
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 408: "timeout_error",
                413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                504: "timeout_error", 529: "overloaded_error"}

# Top-level fields messages_to_chat understands; anything else is reported as dropped.
_HANDLED = frozenset({"model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
                      "stop_sequences", "stream", "metadata", "thinking", "tools", "tool_choice",
                      "output_config", "output_format", "cache_control"})
_TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control", "strict"})
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


# -- errors and small checks ---------------------------------------------------------------------------------


def _invalid(field: str, problem: str) -> GatewayError:
    return GatewayError(400, f"Invalid request: '{field}' {problem}", metadata={"field": field})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _string(block: dict[str, Any], key: str, field: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise _invalid(f"{field}.{key}", "must be a string")
    return value


def _with_cache(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


# -- foreign reasoning signatures ----------------------------------------------------------------------------


def _wrap(value: str, fmt: Any, detail_id: Any = None) -> str:
    """The string to hand an Anthropic client for a signature or encrypted blob of format `fmt`.

    Anthropic's own (and unlabelled) values pass as they are; another vendor's carry their format and id
    along, so that the request that echoes them back restores the detail exactly instead of mislabelling it.
    """
    foreign = isinstance(fmt, str) and fmt and fmt != REASONING_FORMAT
    if not foreign and not isinstance(detail_id, str):
        return value
    return rsn.seal({"format": fmt, "id": detail_id, "data": value})


def _unwrap(value: str) -> tuple[str, str, str | None]:
    """(data, format, id) of a signature/data string a client sent back."""
    payload = rsn.unseal(value)
    if isinstance(payload, dict) and isinstance(payload.get("data"), str):
        fmt = payload.get("format")
        detail_id = payload.get("id")
        return (payload["data"], fmt if isinstance(fmt, str) and fmt else REASONING_FORMAT,
                detail_id if isinstance(detail_id, str) else None)
    return value, REASONING_FORMAT, None


# -- request: Anthropic -> canonical -------------------------------------------------------------------------


def messages_to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A Messages request as a canonical chat request, plus the names of the fields it could not express."""
    if not isinstance(body, dict):
        raise GatewayError(400, "Invalid request: the body must be a JSON object")
    dropped: list[str] = []
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "is required and must be a non-empty string")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _invalid("max_tokens", "is required and must be a positive integer")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "is required and must be a non-empty array")

    chat: list[dict[str, Any]] = []
    if body.get("system") is not None:
        system = _system_message(body["system"])
        if system is not None:
            chat.append(system)
    for i, message in enumerate(messages):
        chat.extend(_message(message, i, len(messages), dropped))
    if body.get("cache_control") is not None and chat:
        # Anthropic's automatic caching marks the last cacheable block; the canonical shape marks parts.
        _mark_last(chat[-1], body["cache_control"])

    out: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens}
    for key in ("temperature", "top_p", "top_k"):
        value = body.get(key)
        if value is not None:
            if not _is_number(value):
                raise _invalid(key, "must be a number")
            out[key] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _invalid("stop_sequences", "must be an array of strings")
        if stops:
            out["stop"] = stops
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _invalid("stream", "must be a boolean")
        out["stream"] = stream
    _metadata(body.get("metadata"), out, dropped)
    _tools(body, out, dropped)
    reasoning = _reasoning(body, dropped)
    if reasoning:
        out["reasoning"] = reasoning
    response_format = _response_format(body)
    if response_format:
        out["response_format"] = response_format
    dropped.extend(key for key in body if key not in _HANDLED)
    return out, dropped


def _system_message(system: Any) -> dict[str, Any] | None:
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    if not isinstance(system, list):
        raise _invalid("system", "must be a string or an array of text blocks")
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(system):
        field = f"system[{j}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _invalid(f"{field}.type", "must be \"text\"")
        parts.append(_with_cache({"type": "text", "text": _string(block, "text", field)}, block))
    return {"role": "system", "content": parts} if parts else None


def _message(message: Any, i: int, count: int, dropped: list[str]) -> list[dict[str, Any]]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _invalid(where, "must be an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _invalid(f"{where}.role", f"must be \"user\" or \"assistant\", got {role!r}")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", "must be a string or an array of content blocks")
    if not content:
        if role == "assistant" and i == count - 1:
            return []  # an empty prefill says nothing
        raise _invalid(f"{where}.content", "must not be empty")
    if role == "user":
        return _user_message(content, where, dropped)
    assistant = _assistant_message(content, where, dropped)
    return [assistant] if assistant else []


def _block_type(block: Any, field: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(f"{field}.type", "must be a string")
    return block["type"]


def _user_message(content: list[Any], where: str, dropped: list[str]) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []  # images and documents returned by tools: they go in the user turn
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        field = f"{where}.content[{j}]"
        kind = _block_type(block, field)
        if kind == "tool_result":
            tool_messages.append(_tool_message(block, field, media, dropped))
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise _invalid(f"{field}.type", f"{kind!r} blocks are only allowed in assistant messages")
        else:
            parts.extend(_content_parts(block, kind, field, dropped))
    # Tool results answer the previous assistant turn, so they come before whatever else the user said.
    out = tool_messages
    if media or parts:
        out.append({"role": "user", "content": media + parts})
    return out


def _tool_message(block: dict[str, Any], field: str, media: list[dict[str, Any]],
                  dropped: list[str]) -> dict[str, Any]:
    tool_call_id = _string(block, "tool_use_id", field)
    content = block.get("content")
    result: str | list[dict[str, Any]]
    if content is None:
        result = ""
    elif isinstance(content, str):
        result = content
    elif isinstance(content, list):
        texts: list[dict[str, Any]] = []
        for k, inner in enumerate(content):
            inner_field = f"{field}.content[{k}]"
            for part in _content_parts(inner, _block_type(inner, inner_field), inner_field, dropped):
                (texts if part["type"] == "text" else media).append(part)
        result = texts if texts else ""
    else:
        raise _invalid(f"{field}.content", "must be a string or an array of content blocks")
    if block.get("is_error"):
        dropped.append(f"{field}.is_error")  # chat tool messages have no error flag
    message: dict[str, Any] = {"role": "tool", "tool_call_id": tool_call_id, "content": result}
    if block.get("cache_control") is not None:
        _mark_last(message, block["cache_control"])
    return message


def _content_parts(block: dict[str, Any], kind: str, field: str, dropped: list[str]) -> list[dict[str, Any]]:
    """Canonical content parts for one user-side content block (text, image, document, search result)."""
    if kind == "text":
        if block.get("citations"):
            dropped.append(f"{field}.citations")
        return [_with_cache({"type": "text", "text": _string(block, "text", field)}, block)]
    if kind == "image":
        return [_with_cache({"type": "image_url", "image_url": {"url": _image_url(block, field)}}, block)]
    if kind == "document":
        return _document_parts(block, field, dropped)
    if kind == "search_result":
        # The model should still read the result; its citation metadata has no canonical form.
        content = block.get("content") or []
        if not isinstance(content, list):
            raise _invalid(f"{field}.content", "must be an array of text blocks")
        texts = [_string(b, "text", f"{field}.content") for b in content if isinstance(b, dict)]
        header = "\n".join(v for v in (block.get("title"), block.get("source")) if isinstance(v, str) and v)
        text = "\n\n".join(t for t in (header, *texts) if t)
        return [_with_cache({"type": "text", "text": text}, block)]
    if any(key not in ("type", "cache_control") for key in block):
        # A block kind the canonical shape cannot carry (server tool use and results, container uploads...).
        dropped.append(f"{field} ({kind})")
        return []
    raise _invalid(f"{field}.type", f"unknown content block type {kind!r}")


def _source(block: dict[str, Any], field: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise _invalid(f"{field}.source", "must be an object with a type")
    if source["type"] == "file":
        raise _invalid(f"{field}.source.type",
                       "\"file\" (Files API) sources are not supported; send base64 or a URL")
    return source


def _image_url(block: dict[str, Any], field: str) -> str:
    source = _source(block, field)
    if source["type"] == "base64":
        mime = _string(source, "media_type", f"{field}.source")
        return f"data:{mime};base64,{_string(source, 'data', f'{field}.source')}"
    if source["type"] == "url":
        return _string(source, "url", f"{field}.source")
    raise _invalid(f"{field}.source.type", "must be \"base64\" or \"url\"")


def _document_parts(block: dict[str, Any], field: str, dropped: list[str]) -> list[dict[str, Any]]:
    source = _source(block, field)
    kind = source["type"]
    if block.get("context"):
        dropped.append(f"{field}.context")
    if isinstance(block.get("citations"), dict) and block["citations"].get("enabled"):
        dropped.append(f"{field}.citations")
    if kind == "text":
        return [_with_cache({"type": "text", "text": _string(source, "data", f"{field}.source")}, block)]
    if kind == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return [_with_cache({"type": "text", "text": inner}, block)]
        if not isinstance(inner, list):
            raise _invalid(f"{field}.source.content", "must be a string or an array of content blocks")
        parts: list[dict[str, Any]] = []
        for k, item in enumerate(inner):
            item_field = f"{field}.source.content[{k}]"
            parts.extend(_content_parts(item, _block_type(item, item_field), item_field, dropped))
        if parts:
            _with_cache(parts[-1], block)
        return parts
    if kind == "base64":
        mime = source.get("media_type") or "application/pdf"
        data = f"data:{mime};base64,{_string(source, 'data', f'{field}.source')}"
    elif kind == "url":
        data = _string(source, "url", f"{field}.source")
    else:
        raise _invalid(f"{field}.source.type", "must be one of base64, url, text, content")
    title = block.get("title")
    filename = title if isinstance(title, str) and title else DEFAULT_FILENAME
    return [_with_cache({"type": "file", "file": {"filename": filename, "file_data": data}}, block)]


def _assistant_message(content: list[Any], where: str, dropped: list[str]) -> dict[str, Any] | None:
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    details: list[ReasoningDetail] = []
    thoughts: list[str] = []
    cache_control: Any = None
    for j, block in enumerate(content):
        field = f"{where}.content[{j}]"
        kind = _block_type(block, field)
        if kind == "tool_use":
            tool_input = block.get("input", {})
            if not isinstance(tool_input, dict):
                raise _invalid(f"{field}.input", "must be an object")
            tool_calls.append({"id": _string(block, "id", field), "type": "function",
                               "function": {"name": _string(block, "name", field),
                                            "arguments": orjson.dumps(tool_input).decode()}})
            if block.get("cache_control") is not None:
                # Tool calls cannot carry a marker of their own; the message-level one is the nearest place.
                cache_control = block["cache_control"]
        elif kind == "thinking":
            text = _string(block, "thinking", field)
            signature, fmt, detail_id = _unwrap(_string(block, "signature", field))
            thoughts.append(text)
            detail = rsn.detail(rsn.TEXT, fmt, len(details), text=text, signature=signature)
            if detail_id is not None:
                detail["id"] = detail_id
            details.append(detail)
        elif kind == "redacted_thinking":
            data, fmt, detail_id = _unwrap(_string(block, "data", field))
            detail = rsn.detail(rsn.ENCRYPTED, fmt, len(details), data=data)
            if detail_id is not None:
                detail["id"] = detail_id
            details.append(detail)
        elif kind == "tool_result":
            raise _invalid(f"{field}.type", "'tool_result' blocks are only allowed in user messages")
        else:
            parts.extend(_content_parts(block, kind, field, dropped))
    if not (parts or tool_calls or details):
        return None
    message: dict[str, Any] = {"role": "assistant", "content": parts or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    rsn.add_to_message(message, thoughts, details)
    if cache_control is not None:
        message["cache_control"] = cache_control
    return message


def _mark_last(message: dict[str, Any], cache_control: Any) -> None:
    """Put a cache marker on a canonical message's last content part (or on the message when it has none)."""
    content = message.get("content")
    if isinstance(content, str) and content:
        message["content"] = [{"type": "text", "text": content, "cache_control": cache_control}]
    elif isinstance(content, list) and content:
        content[-1].setdefault("cache_control", cache_control)
    else:
        message["cache_control"] = cache_control


def _metadata(metadata: Any, out: dict[str, Any], dropped: list[str]) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise _invalid("metadata", "must be an object")
    for key, value in metadata.items():
        if key == "user_id" and isinstance(value, str):
            if value:
                out["user"] = value
        elif value is not None:
            dropped.append(f"metadata.{key}")


def _tools(body: dict[str, Any], out: dict[str, Any], dropped: list[str]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _invalid("tools", "must be an array")
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools or ()):
        field = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _invalid(field, "must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            # Server tools (web search, code execution...) run inside Anthropic's API only.
            dropped.append(f"{field} ({kind})")
            continue
        function: dict[str, Any] = {"name": _string(tool, "name", field)}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _invalid(f"{field}.input_schema", "must be an object")
        function["parameters"] = schema
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        functions.append(_with_cache({"type": "function", "function": function}, tool))
        dropped.extend(f"{field}.{key}" for key in tool if key not in _TOOL_KEYS)
    if functions:
        out["tools"] = functions

    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str):
        raise _invalid("tool_choice.type", "must be a string")
    if not functions:
        dropped.append("tool_choice")  # chat upstreams reject a tool_choice without tools
        return
    kind = choice["type"]
    if kind in _TOOL_CHOICES:
        out["tool_choice"] = _TOOL_CHOICES[kind]
    elif kind == "tool":
        name = _string(choice, "name", "tool_choice")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _invalid("tool_choice.type", "must be one of auto, any, tool, none")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _reasoning(body: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    """OpenRouter's reasoning object for `thinking` (and `output_config.effort`)."""
    reasoning: dict[str, Any] = {}
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise _invalid("thinking", "must be an object")
        kind = thinking.get("type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
                raise _invalid("thinking.budget_tokens", "must be a positive integer")
            reasoning["max_tokens"] = budget
        elif kind == "disabled":
            reasoning["enabled"] = False
        elif kind == "adaptive":
            reasoning["enabled"] = True  # the upstream decides how much to think
        else:
            raise _invalid("thinking.type", "must be one of enabled, disabled, adaptive")
        if thinking.get("display") is not None:
            dropped.append("thinking.display")
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise _invalid("output_config", "must be an object")
    effort = (config or {}).get("effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _EFFORTS:
            raise _invalid("output_config.effort", f"must be one of {', '.join(_EFFORTS)}")
        if reasoning.get("enabled") is not False:
            reasoning["effort"] = _EFFORTS[effort]
    return reasoning


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config")
    fmt, field = ((config or {}).get("format"), "output_config.format")
    if fmt is None:
        fmt, field = body.get("output_format"), "output_format"  # the structured-outputs beta spelling
    if fmt is None:
        return None
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(schema, dict):
        raise _invalid(field, "must be {\"type\": \"json_schema\", \"schema\": {...}}")
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt["schema"]}}


# -- response: canonical -> Anthropic ------------------------------------------------------------------------


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body for an HTTP status, with the request's id (its X-Request-Id) as Anthropic's top-level
    `request_id`, which the anthropic SDKs read (it is set for every request the gateway serves: api/app.py)."""
    error_type = _ERROR_TYPES.get(status) if isinstance(status, int) else None
    if error_type is None:
        client_side = isinstance(status, int) and 400 <= status < 500
        error_type = "invalid_request_error" if client_side else "api_error"
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    request_id = REQUEST_ID.get()
    if request_id:
        body["request_id"] = request_id
    return body


def stop_reason(finish_reason: str | None, native: str | None) -> str | None:
    """Anthropic's stop_reason for a canonical finish reason (the upstream's own when it is Anthropic's)."""
    if native in ANTHROPIC_STOP_REASONS:
        return native
    if finish_reason is None or finish_reason == "error":
        return None
    return _STOP_REASONS.get(finish_reason, "end_turn")


def anthropic_usage(usage: Usage) -> dict[str, int]:
    """Anthropic's usage counts: input_tokens excludes the cached reads and cache writes OpenAI's includes."""
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for item in rsn.merge_details(message.get("reasoning_details")):
        kind = item.get("type")
        fmt = item.get("format")
        if kind == rsn.TEXT:
            signature = item.get("signature")
            blocks.append({"type": "thinking", "thinking": item.get("text") or "",
                           "signature": _wrap(signature, fmt, item.get("id")) if signature else ""})
        elif kind == rsn.SUMMARY:
            blocks.append({"type": "thinking", "thinking": item.get("summary") or "", "signature": ""})
        elif kind == rsn.ENCRYPTED and isinstance(item.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": _wrap(item["data"], fmt, item.get("id"))})
    reasoning = message.get("reasoning")
    if isinstance(reasoning, str) and reasoning and not any(b.get("thinking") for b in blocks):
        # Reasoning given only as text (most OpenAI-compatible upstreams): one unsigned thinking block.
        blocks.insert(0, {"type": "thinking", "thinking": reasoning, "signature": ""})
    return blocks


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}  # a model's malformed arguments should not sink the whole answer
    return value if isinstance(value, dict) else {}


def _frame(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class MessagesRenderer:
    """Renders a canonical completion or stream as Anthropic's message object or SSE events.

    `usage`, when given, is the live Usage the translator updates: `message_start` reports what it holds by
    then (Anthropic upstreams announce the input tokens before any content).
    """

    __slots__ = ("message_id", "model", "usage", "_started", "_done", "_next_index", "_open", "_open_kind",
                 "_thinking_key", "_tools", "_finish", "_native")

    def __init__(self, message_id: str, model: str, *, usage: Usage | None = None) -> None:
        self.message_id = message_id
        self.model = model
        self.usage = usage
        self._started = False
        self._done = False
        self._next_index = 0
        self._open: int | None = None  # index of the content block currently open
        self._open_kind: str | None = None
        self._thinking_key: Any = None  # reasoning_details index the open thinking block belongs to
        self._tools: dict[int, int] = {}  # canonical tool-call index -> content block index
        self._finish: str | None = None  # the last finish reasons seen in the stream, for finish()
        self._native: str | None = None

    # -- whole responses -------------------------------------------------------------------------------------
    def response(self, completion: dict[str, Any], usage: Usage) -> dict[str, Any]:
        choices = completion.get("choices") or [{}]
        choice = choices[0]
        message = choice.get("message") or {}
        content = _thinking_blocks(message)
        text = text_of(message.get("content"))
        if not text and isinstance(message.get("refusal"), str):
            text = message["refusal"]
        if text:
            content.append({"type": "text", "text": text})
        for i, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            content.append({"type": "tool_use", "id": call.get("id") or self._tool_id(i),
                            "name": function.get("name") or "",
                            "input": _tool_input(function.get("arguments"))})
        reason = self._stop_reason(choice.get("finish_reason"), choice.get("native_finish_reason"),
                                   any(b["type"] == "tool_use" for b in content))
        return {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": reason, "stop_sequence": None,
                "usage": anthropic_usage(usage)}

    def _tool_id(self, index: int) -> str:
        return f"toolu_{self.message_id.removeprefix('msg_')}_{index}"

    @staticmethod
    def _stop_reason(finish_reason: str | None, native: str | None, used_tools: bool) -> str | None:
        reason = stop_reason(finish_reason, native)
        if reason is None and finish_reason != "error":
            reason = "end_turn"
        if used_tools and reason == "end_turn":
            reason = "tool_use"  # some upstreams say "stop" after tool calls; clients loop on tool_use
        return reason

    # -- streams ---------------------------------------------------------------------------------------------
    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start())
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a Messages response has one answer
            if choice.get("finish_reason") is not None or choice.get("native_finish_reason") is not None:
                self._finish = choice.get("finish_reason")
                self._native = choice.get("native_finish_reason")
            delta = choice.get("delta") or {}
            self._reasoning_delta(delta, out)
            text = delta.get("content") or delta.get("refusal")
            if isinstance(text, str) and text:
                if self._open_kind != "text":
                    self._start(out, {"type": "text", "text": ""})
                self._delta(out, self._open, {"type": "text_delta", "text": text})
            for position, call in enumerate(delta.get("tool_calls") or ()):
                self._tool_delta(call, position, out)
        return b"".join(out)

    def finish(self, usage: Usage, finish_reason: str | None = None, native: str | None = None) -> bytes:
        if self._done:
            return b""
        self._done = True
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start())
        self._close(out)
        if finish_reason is None and native is None:
            finish_reason, native = self._finish, self._native
        reason = self._stop_reason(finish_reason, native, bool(self._tools))
        out.append(_frame("message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": reason, "stop_sequence": None},
                                            "usage": anthropic_usage(usage)}))
        out.append(_frame("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error_event(self, status: int, message: str) -> bytes:
        self._done = True
        return _frame("error", anthropic_error_body(status, message))

    def ping(self) -> bytes:
        """Anthropic's keep-alive event, for long silences from the upstream."""
        return _frame("ping", {"type": "ping"})

    def _message_start(self) -> bytes:
        self._started = True
        usage = anthropic_usage(self.usage) if self.usage is not None else anthropic_usage(Usage())
        return _frame("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}})

    def _start(self, out: list[bytes], block: dict[str, Any]) -> int:
        self._close(out)
        index = self._next_index
        self._next_index += 1
        self._open, self._open_kind = index, block["type"]
        out.append(_frame("content_block_start", {"type": "content_block_start", "index": index,
                                                  "content_block": block}))
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(_frame("content_block_stop", {"type": "content_block_stop", "index": self._open}))
        self._open = self._open_kind = self._thinking_key = None

    @staticmethod
    def _delta(out: list[bytes], index: int | None, delta: dict[str, Any]) -> None:
        out.append(_frame("content_block_delta",
                          {"type": "content_block_delta", "index": index, "delta": delta}))

    def _thinking_block(self, out: list[bytes], key: Any) -> None:
        """Make sure a thinking block for reasoning_details entry `key` is open."""
        same = self._open_kind == "thinking" and (key is None or self._thinking_key in (None, key))
        if not same:
            self._start(out, {"type": "thinking", "thinking": "", "signature": ""})
        if key is not None:
            self._thinking_key = key

    def _reasoning_delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        details = [d for d in delta.get("reasoning_details") or () if isinstance(d, dict)]
        reasoning = delta.get("reasoning")
        has_text = isinstance(reasoning, str) and bool(reasoning)
        if has_text:
            # Translators send the same text in `reasoning` and in a reasoning.text entry: render it once.
            key = next((d.get("index") for d in details if d.get("type") == rsn.TEXT), None)
            self._thinking_block(out, key)
            self._delta(out, self._open, {"type": "thinking_delta", "thinking": reasoning})
        for detail in details:
            kind = detail.get("type")
            key = detail.get("index")
            if kind in (rsn.TEXT, rsn.SUMMARY):
                text = rsn.detail_text(detail)
                if text and not has_text:
                    self._thinking_block(out, key)
                    self._delta(out, self._open, {"type": "thinking_delta", "thinking": text})
                signature = detail.get("signature")
                if isinstance(signature, str) and signature:
                    self._thinking_block(out, key)
                    self._delta(out, self._open, {"type": "signature_delta", "signature": _wrap(
                        signature, detail.get("format"), detail.get("id"))})
            elif kind == rsn.ENCRYPTED and isinstance(detail.get("data"), str):
                self._start(out, {"type": "redacted_thinking",
                                  "data": _wrap(detail["data"], detail.get("format"), detail.get("id"))})
                self._close(out)

    def _tool_delta(self, call: Any, position: int, out: list[bytes]) -> None:
        if not isinstance(call, dict):
            return
        key = call.get("index", position)
        function = call.get("function") or {}
        index = self._tools.get(key)
        if index is None:
            call_id = call.get("id") or self._tool_id(len(self._tools))
            index = self._start(out, {"type": "tool_use", "id": call_id, "name": function.get("name") or "",
                                      "input": {}})
            self._tools[key] = index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # A fragment for a call whose block was already closed (interleaved upstream fragments) still goes
            # to that block's index: the SDKs accumulate by index.
            self._delta(out, index, {"type": "input_json_delta", "partial_json": arguments})
