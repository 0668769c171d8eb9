"""The provider adapter interface.

A *connection* (one upstream account) has one `ProviderAdapter`: mostly data — base URL, auth headers, which request
parameters the upstream accepts — plus a factory for `Translator`s. A `Translator` lives for one request and converts
in both directions between the canonical shape (OpenAI Chat Completions, extended the way OpenRouter extends it) and
the upstream's native API:

- `request(body)`        canonical chat request dict  -> `UpstreamRequest` (URL, headers, bytes)
- `response(raw)`        upstream non-stream body     -> canonical completion dict (`choices` and nothing else needed)
- `stream_event(e, d)`   one upstream SSE event       -> list of canonical chunk dicts (`{"choices": [...]}`)
- `finish()`             upstream stream ended        -> list of canonical chunk dicts still owed
- `usage`                token usage seen so far (updated by `response` and `stream_event`)
- `upstream_model`, `upstream_id`  what the upstream said it ran, when it said so

Canonical choices always carry `finish_reason` (one of stop | length | tool_calls | content_filter | error, or None)
and `native_finish_reason` (the upstream's own value). Translators never build ids, `model`, `provider` or usage chunks:
the front format stamps those, so every provider behaves the same to clients.

A translator raises `UpstreamStreamError` for an error the upstream reports inside a stream, `GatewayError` for a
request it cannot express (a bad image URL, say), and `ValueError` for an answer or stream event it cannot read (not
JSON, or JSON of another shape: the gateway answers 502). Whatever else an upstream sends, what `response()` and
`stream_event()` return has the canonical shape every front renders: `choices` a list of objects, each `message` /
`delta` an object, finish reasons from FINISH_REASONS (or None), `usage` counts whole numbers, `upstream_model` and
`upstream_id` strings (or None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from crossroads.catalog import ModelSpec
    from crossroads.config import ConnectionConfig
    from crossroads.net.fetch import MediaFetcher

# Finish reasons a client may see (OpenRouter's normalised set).
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "error")


@dataclass(slots=True)
class Usage:
    """Token usage in OpenAI's accounting: prompt_tokens includes cached reads and cache writes;
    completion_tokens includes reasoning tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the cache
    cache_write_tokens: int = 0  # prompt tokens written to the cache
    seen: bool = False  # whether the upstream reported usage at all

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class RequestContext:
    """What a translator may know about the request besides its body."""

    model: ModelSpec  # the model as this connection serves it (`model.upstream` is the id to send)
    connection: ConnectionConfig
    stream: bool
    media: MediaFetcher | None = None  # fetches http(s) media for upstreams that need bytes (SSRF-guarded)


class UpstreamStreamError(Exception):
    """The upstream reported an error after its stream began."""

    def __init__(self, message: str, *, code: int = 502, raw: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.raw = raw


class Translator(Protocol):
    usage: Usage
    upstream_model: str | None
    upstream_id: str | None

    async def request(self, body: dict[str, Any]) -> UpstreamRequest: ...

    def response(self, raw: bytes) -> dict[str, Any]: ...

    def stream_event(self, event: str | None, data: bytes) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...


class ProviderAdapter(Protocol):
    type: str

    def translator(self, ctx: RequestContext) -> Translator: ...

    def error_message(self, status: int, raw: bytes) -> str:
        """The human message inside an upstream error body (falls back to the status)."""
        ...


# An upstream model id goes into a URL path (Gemini's /models/{id}:generateContent) or a JSON body; it must never be
# able to change which URL is called. Ids in the wild use letters, digits and "-._:/@+" (OpenRouter's author/slug,
# Ollama's name:tag, Bedrock's vendor.model-v1:0); nothing needs these characters.
_UPSTREAM_ID_FORBIDDEN = frozenset("?#%\\\"'<>{}|^`[] ") | frozenset(map(chr, range(0x20))) | frozenset(
    map(chr, range(0x7F, 0xA0)))
MAX_MODEL_ID = 256


def upstream_model_problem(model: str) -> str | None:
    """Why `model` cannot be sent upstream as a model id, or None when it can."""
    if not model:
        return "it is empty"
    if len(model) > MAX_MODEL_ID:
        return f"it is longer than {MAX_MODEL_ID} characters"
    bad = next((c for c in model if c in _UPSTREAM_ID_FORBIDDEN or c.isspace()), None)
    if bad is not None:
        return f"it contains the character {bad!r}"
    if any(segment in ("", ".", "..") for segment in model.split("/")):
        return "it contains an empty, '.' or '..' path segment"
    return None


def token_count(value: Any) -> int:
    """A token count from an upstream's usage: absent or null is 0, a negative count is 0 (it would credit the
    account); anything but a number (or a numeric string) is a ValueError."""
    if not value:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"upstream token count is not a number: {value!r:.50}")
    return max(int(value), 0)


def object_or_empty(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one: for the optional parts of an upstream's answer (usage
    details and the like), which a broken upstream may send as null or as another type."""
    return value if isinstance(value, dict) else {}


def string_or_none(value: Any) -> str | None:
    """`value` when it is a string (an upstream's model name or response id, recorded as text), else None."""
    return value if isinstance(value, str) else None


def choice_chunk(delta: dict[str, Any], finish_reason: str | None = None,
                 native_finish_reason: str | None = None, index: int = 0) -> dict[str, Any]:
    """A canonical stream chunk with one choice."""
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                         "native_finish_reason": native_finish_reason}]}


def sse_frame(event: str | None, data: bytes) -> bytes:
    """An upstream's server-sent event framed again for the client, as it came (a pass-through). A value the upstream
    sent on several `data:` lines (read joined by LF, per the SSE spec) goes out on as many `data:` lines."""
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    return b"event: %s\ndata: %s\n\n" % (event.encode(), data) if event else b"data: %s\n\n" % data


def text_of(content: Any) -> str:
    """The text of a chat message's content (a string, or a list of parts of which the text parts count)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text for p in content if isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(text := p.get("text"), str))
    return str(content)


def error_text(raw: bytes, status: int) -> str:
    """Pull `error.message` (or `message`) out of an upstream error body; fall back to a short generic text."""
    import orjson

    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return text[:500] if text else f"upstream answered HTTP {status}"
    if isinstance(data, list) and data:  # Gemini sometimes wraps errors in a list
        data = data[0]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(data.get("message"), str):
            return data["message"]
    return f"upstream answered HTTP {status}"
