"""The front-format contract: what a client speaks, converted to and from the canonical chat shape.

A `Front` (one per endpoint, stateless) parses the client's request into a canonical chat request and makes one
`Renderer` per request. The renderer turns the canonical result back into the client's format: a whole response, one
stream chunk at a time, the stream's end (usage, terminator) and a mid-stream error in the format's own envelope.
Errors before a response starts use `Front.error_body`. What a front keeps between requests (the Responses API's stored
responses) it reaches through the `ResponseStore` it is handed, never through the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from crossroads.canonical import Usage
    from crossroads.catalog import Pricing
    from crossroads.errors import GatewayError
    from crossroads.providers.base import RequestContext, Translator
    from crossroads.routing.registry import Connection


@dataclass(slots=True)
class Parsed:
    body: dict[str, Any]  # the canonical chat request
    dropped: list[str] = field(default_factory=list)  # fields the conversion could not express
    native: dict[str, Any] | None = None  # the client's own body, for pass-through to an upstream of the same format
    extra: dict[str, Any] = field(default_factory=dict)  # what a front keeps for its renderer (e.g. history)


class ResponseStore(Protocol):
    """Stored Responses (the store's `stored_responses`), for `previous_response_id` and GET/DELETE /responses/{id}."""

    async def get_response(self, id: str) -> tuple[str | None, list[dict[str, Any]], dict[str, Any]] | None:
        """(key_hash, history items, response) or None."""
        ...

    async def put_response(self, id: str, key_hash: str | None, history: list[dict[str, Any]],
                           response: dict[str, Any]) -> None: ...


class Renderer(Protocol):
    """May also define `async on_complete(responses: ResponseStore, principal, translator)`: a step once the answer
    is whole (the Responses API stores the response there)."""

    def completion(self, result: dict[str, Any], usage: Usage, pricing: Pricing) -> bytes: ...

    def chunk(self, chunk: dict[str, Any]) -> bytes: ...

    def end(self, usage: Usage, pricing: Pricing, finish_reason: str | None, native: str | None) -> bytes: ...

    def error_chunk(self, status: int, message: str, metadata: dict[str, Any] | None) -> bytes: ...


class Front(Protocol):
    api_type: str  # recorded in the generation record: chat | messages | responses | completions | embeddings
    # True: every connection is reached through `native_translator` and every answer rendered by the renderer (the
    # embeddings front: no chat translation to fall back to). False: a native translator is a pass-through.
    native_only: bool

    async def parse(self, request: Any, responses: ResponseStore) -> Parsed:
        """The client's request (an `api.asgi.Request`) as a canonical chat request. Async because a front may
        need the store (`responses`: the Responses API's previous_response_id)."""
        ...

    def renderer(self, *, generation_id: str, model_id: str, provider: str, parsed: Parsed,
                 usage: Usage) -> Renderer:
        """`usage` is the translator's live usage (a renderer may report what is known before the end)."""
        ...

    def native_translator(self, connection: Connection, ctx: RequestContext, parsed: Parsed) -> Translator | None:
        """A pass-through translator when `connection` speaks this front's own API (the body goes up untouched but
        for the model, the answer comes back untouched); None to translate through the canonical shape."""
        ...

    def error_body(self, error: GatewayError) -> bytes: ...
