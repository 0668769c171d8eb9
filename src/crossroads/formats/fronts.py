"""The non-canonical fronts (Anthropic Messages, OpenAI Responses, legacy Completions) under the `Front` contract.

Each converts the client's body with its format module, then checks the result with the same checks a chat request
gets, so every front reaches the providers with the same guarantees. Renderers adapt each format module's renderer to
`formats.base.Renderer`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from crossroads.accounting.pricing import request_cost
from crossroads.errors import GatewayError
from crossroads.formats.base import Parsed, ResponseStore
from crossroads.formats.chat import check_chat_body, parse_json_object, stream_error
from crossroads.formats.completions import CompletionsRenderer, completions_to_chat
from crossroads.formats.messages import MessagesRenderer, anthropic_error_body, messages_to_chat
from crossroads.formats.responses import (
    ResponsesRenderer,
    input_items,
    items_for_history,
    responses_error_body,
    responses_to_chat,
)

log = logging.getLogger("crossroads.formats")

if TYPE_CHECKING:
    from crossroads.canonical import Usage
    from crossroads.catalog import Pricing
    from crossroads.providers.base import RequestContext, Translator
    from crossroads.routing.registry import Connection


def _suffix(generation_id: str) -> str:
    return generation_id.removeprefix("gen-")


# -- Anthropic Messages ------------------------------------------------------------------------------------------
class MessagesFront:
    api_type = "messages"
    native_only = False  # see Front.native_only

    async def parse(self, request: Any, responses: ResponseStore) -> Parsed:
        native = parse_json_object(request.body)
        body, dropped = messages_to_chat(native)
        parsed = Parsed(check_chat_body(body), dropped, native)
        beta = request.headers.get(b"anthropic-beta")
        if beta:
            parsed.extra["anthropic-beta"] = beta.decode("latin-1")
        return parsed

    def renderer(self, *, generation_id: str, model_id: str, provider: str, parsed: Parsed,
                 usage: Usage) -> MessagesRendererAdapter:
        # The live usage: message_start reports the input tokens known when the stream opens.
        return MessagesRendererAdapter(f"msg_{_suffix(generation_id)}", model_id, usage=usage)

    def native_translator(self, connection: Connection, ctx: RequestContext, parsed: Parsed) -> Translator | None:
        if parsed.native is None:
            return None
        return connection.adapter.native_translator(self.api_type, ctx, parsed.native, parsed.extra)

    def error_body(self, error: GatewayError) -> bytes:
        return orjson.dumps(anthropic_error_body(error.status, error.message))


class MessagesRendererAdapter(MessagesRenderer):
    __slots__ = ()

    def completion(self, result: dict[str, Any], usage: Usage, pricing: Pricing) -> bytes:
        return orjson.dumps(self.response(result, usage))

    def end(self, usage: Usage, pricing: Pricing, finish_reason: str | None, native: str | None) -> bytes:
        return self.finish(usage, finish_reason, native)

    def error_chunk(self, status: int, message: str, metadata: dict[str, Any] | None) -> bytes:
        return self.error_event(status, message)


# -- OpenAI Responses --------------------------------------------------------------------------------------------
class ResponsesFront:
    api_type = "responses"
    native_only = False  # see Front.native_only

    async def parse(self, request: Any, responses: ResponseStore) -> Parsed:
        native = parse_json_object(request.body)
        history: list[dict[str, Any]] | None = None
        previous = native.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise GatewayError(400, "Invalid request: 'previous_response_id' must be a string",
                                   metadata={"field": "previous_response_id"})
            stored = await responses.get_response(previous)
            principal = request.principal
            if stored is None or (not principal.is_master and stored[0] != principal.key_hash):
                # A key never learns whether another key's response exists.
                raise GatewayError(404, f"Previous response with id '{previous}' not found.",
                                   metadata={"field": "previous_response_id"})
            history = stored[1]
        body, dropped = responses_to_chat(native, history)
        parsed = Parsed(check_chat_body(body), dropped, native)
        parsed.extra["history"] = history or []
        return parsed

    def renderer(self, *, generation_id: str, model_id: str, provider: str, parsed: Parsed,
                 usage: Usage) -> ResponsesRendererAdapter:
        return ResponsesRendererAdapter(f"resp_{_suffix(generation_id)}", model_id, parsed.native or {},
                                        int(time.time()), parsed)

    def native_translator(self, connection: Connection, ctx: RequestContext, parsed: Parsed) -> Translator | None:
        # A previous_response_id names a response kept by the gateway, which the upstream does not know: such a
        # request goes through the translation, history included.
        native = parsed.native
        if native is None or native.get("previous_response_id"):
            return None
        return connection.adapter.native_translator(self.api_type, ctx, native, parsed.extra)

    def error_body(self, error: GatewayError) -> bytes:
        return orjson.dumps(responses_error_body(error))


class ResponsesRendererAdapter(ResponsesRenderer):
    __slots__ = ("parsed",)

    def __init__(self, response_id: str, model: str, request: dict[str, Any], created_at: int,
                 parsed: Parsed) -> None:
        super().__init__(response_id, model, request, created_at)
        self.parsed = parsed

    def completion(self, result: dict[str, Any], usage: Usage, pricing: Pricing) -> bytes:
        return orjson.dumps(self.response(result, usage))

    def end(self, usage: Usage, pricing: Pricing, finish_reason: str | None, native: str | None) -> bytes:
        return self.finish(usage, finish_reason)

    def error_chunk(self, status: int, message: str, metadata: dict[str, Any] | None) -> bytes:
        return self.error_event(status, message)

    async def on_complete(self, responses: ResponseStore, principal: Any, translator: Any) -> None:
        """store: true (the default) keeps the conversation for a later previous_response_id."""
        final = getattr(translator, "final_response", None)
        if final is not None:  # a passed-through Response: keep the upstream's own object, under its own id
            self.last_response = final
            self.response_id = final.get("id") or self.response_id
        request = self.request
        if request.get("store") is False or self.last_response is None:
            return
        history = [*self.parsed.extra.get("history", []), *input_items(request)]
        try:
            await responses.put_response(self.response_id, principal.key_hash,
                                         items_for_history(history, self.last_response), self.last_response)
        except Exception:  # noqa: BLE001 - the answer still goes out; only its continuation is lost
            log.exception("could not store response %s for previous_response_id", self.response_id)


# -- legacy Completions ------------------------------------------------------------------------------------------
class CompletionsFront:
    api_type = "completions"
    native_only = False  # see Front.native_only

    async def parse(self, request: Any, responses: ResponseStore) -> Parsed:
        native = parse_json_object(request.body)
        body, dropped = completions_to_chat(native)
        return Parsed(check_chat_body(body), dropped, native)

    def renderer(self, *, generation_id: str, model_id: str, provider: str, parsed: Parsed,
                 usage: Usage) -> CompletionsAdapter:
        return CompletionsAdapter(f"cmpl-{_suffix(generation_id)}", model_id, int(time.time()))

    def native_translator(self, connection: Any, ctx: Any, parsed: Parsed) -> None:
        return None

    def error_body(self, error: GatewayError) -> bytes:
        return error.body()


class CompletionsAdapter(CompletionsRenderer):
    __slots__ = ()

    def completion(self, result: dict[str, Any], usage: Usage, pricing: Pricing) -> bytes:
        return orjson.dumps(self.response(result, usage, request_cost(usage, pricing)))

    def end(self, usage: Usage, pricing: Pricing, finish_reason: str | None, native: str | None) -> bytes:
        return self.finish(usage, request_cost(usage, pricing))

    def error_chunk(self, status: int, message: str, metadata: dict[str, Any] | None) -> bytes:
        # The same error object as a chat stream's (OpenRouter's shape, with metadata.error_type).
        return b"data: " + orjson.dumps({"id": self.completion_id, "object": "text_completion",
                                          "created": self.created, "model": self.model,
                                          "error": stream_error(status, message, metadata),
                                          "choices": [{"text": "", "index": 0, "logprobs": None,
                                                       "finish_reason": "error"}]}) + b"\n\n"
