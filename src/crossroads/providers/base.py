"""The provider contract: what every upstream API's package (`providers/<type>/`) declares and implements.

A provider is mostly data, a `ProviderSpec` registered in `providers/registry.py`: its connection defaults (base URL,
API version path, parameters its models take), what the rest of the gateway must know of it (whether media must be
fetched as bytes, the upstream's rate-limit header names, its name in telemetry, what clients call it) and the
connection fields only it takes. Its `Adapter` (one per connection) holds the hooks: translators, URL building,
per-request signing, stream framing and error classification, each with a default that suits an HTTPS + JSON + SSE
API, so a provider overrides only where its upstream differs.

A `Translator` lives for one request and converts in both directions between the canonical shape (OpenAI Chat
Completions, extended the way OpenRouter extends it: `crossroads.canonical`) and the upstream's native API:

- `request(body)`        canonical chat request dict  -> `UpstreamRequest` (URL, headers, bytes)
- `response(raw)`        upstream non-stream body     -> canonical completion dict (`choices` and nothing else needed)
- `stream_event(e, d)`   one upstream stream event    -> list of canonical chunk dicts (`{"choices": [...]}`)
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

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from crossroads.canonical import FINISH_REASONS, Chunk, Completion, Delta, Usage, text_of
from crossroads.providers.http import iter_sse

if TYPE_CHECKING:
    import aiohttp

    from crossroads.catalog import ModelSpec
    from crossroads.config import ConnectionConfig
    from crossroads.net.fetch import MediaFetcher

__all__ = ["FINISH_REASONS", "Usage", "text_of"]  # re-exported: what every translator reads and fills


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

    # A chat translator takes a ChatRequest and answers Completions; the embeddings translators (a native-only front)
    # take OpenAI's embeddings request and answer its embeddings response.
    async def request(self, body: Any) -> UpstreamRequest: ...

    def response(self, raw: bytes) -> Completion | dict[str, Any]: ...

    def stream_event(self, event: str | None, data: bytes) -> list[Chunk]: ...

    def finish(self) -> list[Chunk]: ...


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """Where an upstream states its account's request limits: the first header of each tuple it sent is passed on to
    the client as X-Upstream-RateLimit-Limit / -Remaining / -Reset (in the upstream's own units)."""

    limit: tuple[str, ...] = ("x-ratelimit-limit-requests", "x-ratelimit-limit")
    remaining: tuple[str, ...] = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining")
    reset: tuple[str, ...] = ("x-ratelimit-reset-requests", "x-ratelimit-reset")


@dataclass(frozen=True, slots=True)
class ConnectionField:
    """A connection key only this provider takes (a cloud region, an API version...), read from the config file into
    `ConnectionConfig.options[name]`."""

    kind: type  # str, int, float or bool
    default: Any = None
    required: bool = False
    secret: bool = False  # never echoed in a configuration error
    help: str = ""


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What the rest of the gateway knows about one upstream API. Declared by `providers/<type>/__init__.py`, listed
    once in `providers/registry.py`; nothing outside `providers/` names a provider type."""

    type: str  # a connection's `type:` in the config file
    # The Adapter class, as "package.module:Class": imported by the registry when the first connection of this type
    # is built, so reading specs at start-up (config) imports no translator.
    adapter: str
    # Connection defaults: the base URL when none is given, and the API version path its SDKs add themselves
    # (`api_version`, appended unless the base URL already ends with one of `accepted_versions`).
    default_base_url: str | None = None
    api_version: str | None = None
    accepted_versions: tuple[str, ...] = ()
    # The request parameters a model of this type takes when neither the catalog nor the config says.
    default_parameters: tuple[str, ...] = ()
    # True: only one vendor speaks this API, so its catalog entry applies to every connection of this type. False
    # (an API many servers speak): a connection gets a vendor's catalog by its name, base URL or `catalog:` key.
    single_vendor: bool = False
    discover_models: bool = False  # ask the upstream's GET /models at start-up when no model is declared
    fetches_media: bool = False  # the upstream needs http(s) media as bytes: the gateway fetches it (SSRF-guarded)
    max_messages: int | None = None  # messages one request may hold (middle-out trims to it)
    rate_limit_headers: RateLimitHeaders = RateLimitHeaders()
    aliases: tuple[str, ...] = ()  # other names clients use for this type (in `provider.only`, `order`...)
    telemetry_name: str = ""  # OpenTelemetry's gen_ai.provider.name ("" = the type)
    connection_fields: Mapping[str, ConnectionField] = field(default_factory=dict)

    @property
    def provider_name(self) -> str:
        return self.telemetry_name or self.type


# One upstream stream event: (event name or None, data bytes), whatever the framing on the wire.
StreamEvents = AsyncIterator[list[tuple[str | None, bytes]]]


class Adapter:
    """One connection's adapter: its translators plus the hooks the transport calls. Every hook has a default for an
    HTTPS + JSON + server-sent events API; a provider overrides what its upstream does differently."""

    # Per-request authentication (AWS SigV4 over the body, a refreshed OAuth token...): awaited on each
    # UpstreamRequest after the gateway's own headers are set, before it is sent. None (the default, static
    # credentials in `headers`) costs the request path nothing.
    sign: Callable[[UpstreamRequest], Awaitable[None]] | None = None

    def __init__(self, conn: ConnectionConfig) -> None:
        self.conn = conn
        self.base_url = conn.base_url

    def translator(self, ctx: RequestContext) -> Translator:
        """The translator of one canonical (chat) request."""
        raise NotImplementedError

    def native_translator(self, api: str, ctx: RequestContext, native: dict[str, Any],
                          extra: dict[str, Any]) -> Translator | None:
        """A translator that passes a client's own `api` body through ("messages", "responses", "embeddings"),
        when this connection speaks that API; None to go through the canonical translation."""
        return None

    def url(self, path: str) -> str:
        """The URL of one upstream operation (`path` as the API names it: "chat/completions", "messages"...).
        Override for URLs the model or a connection field decides (Azure deployments and api-version, Gemini)."""
        return f"{self.base_url}/{path}"

    def events(self, resp: aiohttp.ClientResponse, max_bytes: int) -> StreamEvents:
        """A streamed answer's events, in batches. Server-sent events by default; override for another framing
        (AWS's binary event stream, newline-delimited JSON)."""
        return iter_sse(resp, max_bytes)

    def error_status(self, status: int, raw: bytes) -> int:
        """The HTTP status an upstream error counts as, for retries, breakers and the client: the status itself
        unless the upstream says more in its body (a throttling error sent as 400, an overload sent as 500)."""
        return status

    def error_message(self, status: int, raw: bytes) -> str:
        """The human message inside an upstream error body (falls back to the status)."""
        return error_text(raw, status)


ProviderAdapter = Adapter  # the name the routing registry and older code use


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


def choice_chunk(delta: Delta | dict[str, Any], finish_reason: str | None = None,
                 native_finish_reason: str | None = None, index: int = 0) -> Chunk:
    """A canonical stream chunk with one choice."""
    # A delta built from an upstream's event may carry keys of its own; the Delta keys are the ones fronts read.
    return {"choices": [{"index": index, "delta": cast(Delta, delta), "finish_reason": finish_reason,
                         "native_finish_reason": native_finish_reason}]}


def sse_frame(event: str | None, data: bytes) -> bytes:
    """An upstream's server-sent event framed again for the client, as it came (a pass-through). A value the upstream
    sent on several `data:` lines (read joined by LF, per the SSE spec) goes out on as many `data:` lines."""
    if b"\n" in data:
        data = data.replace(b"\n", b"\ndata: ")
    return b"event: %s\ndata: %s\n\n" % (event.encode(), data) if event else b"data: %s\n\n" % data


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
