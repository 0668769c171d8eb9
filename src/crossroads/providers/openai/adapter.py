"""OpenAI Chat Completions upstreams: OpenAI itself and every OpenAI-compatible server (vLLM, Ollama, Groq, DeepSeek,
Together, Mistral, OpenRouter, ...).

The canonical shape *is* this API, so the request goes through nearly untouched: the model name is replaced, fields
only OpenRouter understands are removed (unless the upstream is OpenRouter), and parameters the vendor rejects are
dropped. Responses get finish reasons normalised and `reasoning_content` (DeepSeek, vLLM) renamed to `reasoning`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import orjson

from crossroads.canonical import ChatRequest, Chunk, Completion
from crossroads.providers.base import (
    Adapter,
    RequestContext,
    Translator,
    UpstreamRequest,
    UpstreamStreamError,
    Usage,
    object_or_empty,
    string_or_none,
    token_count,
)

if TYPE_CHECKING:
    from crossroads.config import ConnectionConfig

# Fields of OpenRouter's request schema that a plain OpenAI-compatible server does not know.
OPENROUTER_ONLY_FIELDS = frozenset({
    "models", "route", "provider", "transforms", "plugins", "usage", "reasoning", "include_reasoning", "prompt",
    "debug", "preset",
})
# Routing fields the gateway acts on itself, so even an OpenRouter upstream must not see them.
GATEWAY_FIELDS = frozenset({"models", "route", "provider"})

_FINISH_REASONS = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter",
    "function_call": "tool_calls", "error": "error", "eos": "stop", "end_turn": "stop", "max_tokens": "length",
    "tool_use": "tool_calls", "stop_sequence": "stop", "completed": "stop",
}


def normalise_finish_reason(value: Any) -> str | None:
    if value is None:
        return None
    return _FINISH_REASONS.get(value, "stop") if isinstance(value, str) else "stop"


_TEXT_FIELDS = frozenset({"role", "reasoning", "reasoning_content", "refusal"})


def _check_message(message: Any, where: str) -> None:
    """ValueError unless a choice's message (or a stream chunk's delta) has the shape the gateway and every front
    read: an object, text fields strings, tool calls objects (with a function object and a numeric index)."""
    if not isinstance(message, dict):
        raise ValueError(f"upstream {where} is not an object")
    for field, value in message.items():  # a delta has a key or two: cheaper than looking each field up
        if value is None:
            continue
        if field == "content":
            readable = isinstance(value, str | list)
        elif field == "tool_calls":
            readable = isinstance(value, list) and all(map(_is_tool_call, value))
        elif field in _TEXT_FIELDS:
            readable = isinstance(value, str)
        else:
            continue
        if not readable:
            raise ValueError(f"upstream {where}.{field} is not of the type OpenAI's API gives it")


def _rename_reasoning_content(fields: dict[str, Any]) -> None:
    """A message's or delta's `reasoning_content` (DeepSeek's and vLLM's name) as `reasoning`, unless that is set."""
    reasoning = fields.pop("reasoning_content")
    if reasoning and not fields.get("reasoning"):
        fields["reasoning"] = reasoning


def _is_tool_call(call: Any) -> bool:
    if not isinstance(call, dict) or not isinstance(call.get("index", 0), int):
        return False
    function = call.get("function")
    # Arguments are JSON text; some servers send the object itself, which the fronts take too.
    return function is None or (isinstance(function, dict)
                                and isinstance(function.get("arguments"), str | dict | None))


def read_openai_usage(raw: dict[str, Any], usage: Usage) -> None:
    usage.seen = True
    usage.prompt_tokens = token_count(raw.get("prompt_tokens"))
    usage.completion_tokens = token_count(raw.get("completion_tokens"))
    prompt_details = object_or_empty(raw.get("prompt_tokens_details"))
    completion_details = object_or_empty(raw.get("completion_tokens_details"))
    usage.cached_tokens = token_count(prompt_details.get("cached_tokens") or raw.get("prompt_cache_hit_tokens"))
    usage.cache_write_tokens = token_count(prompt_details.get("cache_write_tokens"))
    usage.reasoning_tokens = token_count(completion_details.get("reasoning_tokens"))


def with_file_data_urls(messages: list[Any]) -> list[Any]:
    """`messages` with every file part's raw base64 `file_data` as the data URL OpenAI expects
    (`data:application/pdf;base64,...`; OpenRouter and its users also send bare base64). Unchanged (the same list)
    when there is nothing to convert, which is nearly always: only messages with content lists are looked into."""
    out = messages
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            file = part.get("file") if isinstance(part, dict) and part.get("type") == "file" else None
            data = file.get("file_data") if isinstance(file, dict) else None
            if not isinstance(data, str) or not data or data[:5].lower() == "data:" or \
                    data.startswith(("http://", "https://")):
                continue
            if out is messages:
                out = list(messages)
            if out[i] is message:
                content = list(content)
                out[i] = {**message, "content": content}
            assert isinstance(file, dict)  # data was read from it
            content[j] = {**part, "file": {**file, "file_data": f"data:{_sniff_file_type(data)};base64,{data}"}}
    return out


def _sniff_file_type(base64_data: str) -> str:
    """The media type of a base64 document from its first bytes (the file parts' documented content is a PDF)."""
    import base64
    import binascii

    from crossroads.net.fetch import sniff_mime

    head = "".join(base64_data[:64].split())
    try:
        first = base64.b64decode(head[: len(head) // 4 * 4])
    except (binascii.Error, ValueError):
        return "application/pdf"
    return sniff_mime(first) or "application/pdf"


_EMBEDDING_FIELDS = ("input", "dimensions", "encoding_format", "user")  # what every OpenAI-compatible server takes


class OpenAIAdapter(Adapter):
    def __init__(self, conn: ConnectionConfig) -> None:
        super().__init__(conn)
        self.chat_url = self.url("chat/completions")
        self.is_openrouter = conn.vendor is not None and conn.vendor.key == "openrouter"
        self.is_openai = conn.vendor is not None and conn.vendor.key == "openai"
        dropped = set(conn.vendor.drop_params) if conn.vendor else set()
        dropped |= GATEWAY_FIELDS if self.is_openrouter else OPENROUTER_ONLY_FIELDS
        self.dropped = frozenset(dropped)
        self.embeddings_url = self.url("embeddings")
        self.responses_url = self.url("responses")
        self.headers = {"Content-Type": "application/json", **conn.headers}
        if conn.api_key:
            self.headers["Authorization"] = f"Bearer {conn.api_key}"

    def translator(self, ctx: RequestContext) -> OpenAITranslator:
        return OpenAITranslator(self, ctx)

    def native_translator(self, api: str, ctx: RequestContext, native: dict[str, Any],
                          extra: dict[str, Any]) -> Translator | None:
        if api == "embeddings":
            return OpenAIEmbeddingsTranslator(self, ctx)
        if api == "responses" and self.conn.responses_api:
            from crossroads.providers.openai.responses import ResponsesPassthrough

            return ResponsesPassthrough(self, ctx, native)
        return None


class OpenAITranslator:
    __slots__ = ("adapter", "ctx", "usage", "upstream_model", "upstream_id")

    def __init__(self, adapter: OpenAIAdapter, ctx: RequestContext) -> None:
        self.adapter = adapter
        self.ctx = ctx
        self.usage = Usage()
        self.upstream_model: str | None = None
        self.upstream_id: str | None = None

    async def request(self, body: ChatRequest) -> UpstreamRequest:
        adapter = self.adapter
        out: dict[str, Any] = {k: v for k, v in body.items() if k not in adapter.dropped}
        out["model"] = self.ctx.model.upstream
        messages = out.get("messages")
        if messages and not adapter.is_openrouter:
            out["messages"] = with_file_data_urls(messages)
        reasoning = body.get("reasoning")
        if not adapter.is_openrouter and isinstance(reasoning, dict) and reasoning.get("effort") \
                and "reasoning_effort" not in out:
            out["reasoning_effort"] = reasoning["effort"]
        if adapter.is_openai and "max_tokens" in out:
            # OpenAI's reasoning models refuse max_tokens; max_completion_tokens works for every current model.
            value = out.pop("max_tokens")
            out.setdefault("max_completion_tokens", value)
        if self.ctx.stream:
            options = dict(out.get("stream_options") or {})
            options["include_usage"] = True  # the gateway needs usage to bill, whatever the client asked
            out["stream_options"] = options
        else:
            out.pop("stream_options", None)
        return UpstreamRequest(url=adapter.chat_url, body=orjson.dumps(out), headers=adapter.headers)

    def response(self, raw: bytes) -> Completion:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ValueError("upstream response has no choices")
        self.upstream_model = string_or_none(data.get("model"))
        self.upstream_id = string_or_none(data.get("id"))
        if isinstance(data.get("usage"), dict):
            read_openai_usage(data["usage"], self.usage)
        for choice in data["choices"]:
            if not isinstance(choice, dict):
                raise ValueError("upstream choice is not an object")
            message = choice.setdefault("message", {})
            _check_message(message, "message")
            if "reasoning_content" in message:
                _rename_reasoning_content(message)
            native = choice.get("native_finish_reason") or choice.get("finish_reason")
            choice["finish_reason"] = normalise_finish_reason(choice.get("finish_reason"))
            choice["native_finish_reason"] = string_or_none(native)
        return cast(Completion, data)  # the upstream's own object, its choices checked and normalised above

    def stream_event(self, event: str | None, data: bytes) -> list[Chunk]:
        if data == b"[DONE]":
            return []
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk and not chunk.get("choices"):
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise UpstreamStreamError(message or "upstream stream error", raw=err)
        if self.upstream_model is None:
            self.upstream_model = string_or_none(chunk.get("model"))
            self.upstream_id = string_or_none(chunk.get("id"))
        usage = chunk.pop("usage", None)
        if isinstance(usage, dict):
            read_openai_usage(usage, self.usage)
        choices = chunk.get("choices")
        if not choices:
            return []
        if not isinstance(choices, list):
            raise ValueError("upstream chunk's choices is not a list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise ValueError("upstream chunk's choice is not an object")
            delta = choice.get("delta")
            # Nearly every chunk is {"content": "..."}: checked here without a call.
            if delta is not None and not (delta.__class__ is dict and len(delta) == 1
                                          and delta.get("content").__class__ is str):
                _check_message(delta, "delta")
            if delta and "reasoning_content" in delta:
                _rename_reasoning_content(delta)
            finish = choice.get("finish_reason")
            if finish is None:
                native = choice.setdefault("native_finish_reason", None)
                if native is not None and not isinstance(native, str):
                    choice["native_finish_reason"] = None
            else:
                choice["native_finish_reason"] = string_or_none(choice.get("native_finish_reason") or finish)
                choice["finish_reason"] = normalise_finish_reason(finish)
        return [cast(Chunk, chunk)]  # the upstream's own chunk, its choices checked and normalised above

    def finish(self) -> list[Chunk]:
        return []


class OpenAIEmbeddingsTranslator:
    """POST {base_url}/embeddings: the client's request goes up as it came (the model replaced; `input_type` only to
    OpenRouter, which knows it), the vectors come back in input order, base64 strings left as the upstream made
    them."""

    __slots__ = ("adapter", "ctx", "usage", "upstream_model", "upstream_id")

    def __init__(self, adapter: OpenAIAdapter, ctx: RequestContext) -> None:
        self.adapter = adapter
        self.ctx = ctx
        self.usage = Usage()
        self.upstream_model: str | None = None
        self.upstream_id: str | None = None

    async def request(self, body: dict[str, Any]) -> UpstreamRequest:
        out: dict[str, Any] = {"model": self.ctx.model.upstream}
        for field in (*_EMBEDDING_FIELDS, "input_type") if self.adapter.is_openrouter else _EMBEDDING_FIELDS:
            if body.get(field) is not None:
                out[field] = body[field]
        return UpstreamRequest(url=self.adapter.embeddings_url, body=orjson.dumps(out), headers=self.adapter.headers)

    def response(self, raw: bytes) -> dict[str, Any]:
        data = orjson.loads(raw)
        items = data.get("data") if isinstance(data, dict) else None
        # A vector is a list of numbers, or base64 text when the upstream encoded it as asked; the index orders them.
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("embedding"), list | str)
                                                  and isinstance(i.get("index") or 0, int) for i in items):
            raise ValueError("upstream response has no embeddings")
        self.upstream_model = string_or_none(data.get("model"))
        self.upstream_id = string_or_none(data.get("id"))
        if isinstance(data.get("usage"), dict):
            self.usage.seen = True
            self.usage.prompt_tokens = token_count(data["usage"].get("prompt_tokens"))
        ordered = sorted(items, key=lambda item: item.get("index") or 0)
        return {"data": [item["embedding"] for item in ordered], "model": self.upstream_model}

    def stream_event(self, event: str | None, data: bytes) -> list[Chunk]:
        raise ValueError("embeddings do not stream")

    def finish(self) -> list[Chunk]:
        return []
