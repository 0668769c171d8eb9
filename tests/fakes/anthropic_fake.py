"""A fake Anthropic Messages API server (shapes as recorded from api.anthropic.com, TestAnthropic*)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeUpstream, Fault, Reply, split_text, sse

FAKE_SIGNATURE = "EqQBCkYIBxgCKkBmYWtlLXNpZ25hdHVyZS1mb3ItdGVzdHM="
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                503: "overloaded_error", 529: "overloaded_error"}


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message},
                         "request_id": "req_fake0123456789"})


class FakeAnthropic(FakeUpstream):
    name = "anthropic"
    # The in-stream error type sent for Fault.error_event_after (Anthropic's usual mid-stream failure).
    stream_error_type = "overloaded_error"

    def __init__(self, *, api_key: str | None = "sk-ant-fake-secret") -> None:
        super().__init__()
        self.api_key = api_key

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)

    def _refusal(self, request: web.Request) -> web.Response | None:
        # Anthropic authenticates with x-api-key; newer SDKs send the key as a bearer token instead.
        key = request.headers.get("x-api-key")
        if key is None and request.headers.get("Authorization", "").startswith("Bearer "):
            key = request.headers["Authorization"][7:]
        if self.api_key and key != self.api_key:
            return web.Response(status=401, body=error_body("authentication_error", "invalid x-api-key"),
                                content_type="application/json")
        if not request.headers.get("anthropic-version"):
            return web.Response(status=400, body=error_body("invalid_request_error",
                                                            "anthropic-version: header is required"),
                                content_type="application/json")
        return None

    async def count_tokens(self, request: web.Request) -> web.Response:
        rec = await self.record(request)
        if (denied := self._refusal(request)) is not None:
            return denied
        req = rec.json
        # About four characters a token, like Anthropic's own rule of thumb.
        size = len(orjson.dumps([req.get("system"), req.get("messages"), req.get("tools")]))
        return web.json_response({"input_tokens": max(1, size // 4)})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        fault = self.next_fault()
        await self.before_response(request, fault)
        if (denied := self._refusal(request)) is not None:
            return denied
        if fault and (fault.status != 200 or fault.body is not None):
            kind = _ERROR_TYPES.get(fault.status, "api_error")
            return self.error_response(fault, error_body(kind, fault.message))
        req = rec.json
        # Two checks real Anthropic is strict about, so a translator bug shows up as it would in production.
        if not isinstance(req.get("max_tokens"), int):
            return web.Response(status=400, content_type="application/json",
                                body=error_body("invalid_request_error", "max_tokens: Field required"))
        if not req.get("messages"):
            return web.Response(status=400, body=error_body("invalid_request_error",
                                                            "messages: at least one message is required"),
                                content_type="application/json")
        reply = self.next_reply()
        model = reply.model or req.get("model")
        if req.get("stream"):
            error = sse({"type": "error", "error": {"type": self.stream_error_type,
                                                    "message": fault.message if fault else ""}}, "error")
            return await self.write_sse(request, self.events(reply, model), fault, error)
        return web.json_response(self.message(reply, model),
                                 headers={"request-id": "req_fake0123456789", **(fault.headers if fault else {})})

    # -- rendering -----------------------------------------------------------------------------------------
    @staticmethod
    def stop_reason(reply: Reply) -> str:
        return _STOP_REASONS.get(reply.finish, "end_turn")

    @staticmethod
    def input_tokens(reply: Reply) -> int:
        # Anthropic's input_tokens excludes cache reads and writes; Reply.prompt_tokens includes them.
        return max(0, reply.prompt_tokens - reply.cached_tokens - reply.cache_write_tokens)

    def usage(self, reply: Reply) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens(reply),
            "cache_creation_input_tokens": reply.cache_write_tokens,
            "cache_read_input_tokens": reply.cached_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": reply.cache_write_tokens,
                               "ephemeral_1h_input_tokens": 0},
            "output_tokens": reply.completion_tokens,
            "service_tier": "standard",
            "inference_geo": "not_available",
        }

    @staticmethod
    def tool_id(reply: Reply, i: int) -> str:
        tc = reply.tool_calls[i]
        return tc.id or f"toolu_01Fake{i:04d}AbCdEfGhIjKlMn"

    def message(self, reply: Reply, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.reasoning is not None:
            content.append({"type": "thinking", "thinking": reply.reasoning,
                            "signature": reply.reasoning_signature or FAKE_SIGNATURE})
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        for i, tc in enumerate(reply.tool_calls):
            content.append({"type": "tool_use", "id": self.tool_id(reply, i), "name": tc.name,
                            "input": tc.arguments, "caller": {"type": "direct"}})
        return {"model": model, "id": "msg_01FakeMessage0123456789", "type": "message", "role": "assistant",
                "content": content, "stop_reason": self.stop_reason(reply), "stop_sequence": None,
                "usage": self.usage(reply)}

    def events(self, reply: Reply, model: str) -> list[bytes]:
        """The SSE events of a streamed reply, in the order Anthropic sends them."""
        start_usage = {**self.usage(reply), "output_tokens": 1}
        out = [sse({"type": "message_start", "message": {
            "model": model, "id": "msg_01FakeMessage0123456789", "type": "message", "role": "assistant",
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage,
        }}, "message_start")]
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if reply.reasoning is not None:
            deltas = [{"type": "thinking_delta", "thinking": p} for p in split_text(reply.reasoning, 0)]
            # Anthropic closes a thinking block with an empty thinking_delta, then the signature.
            deltas.append({"type": "thinking_delta", "thinking": ""})
            signature = reply.reasoning_signature or FAKE_SIGNATURE
            deltas.append({"type": "signature_delta", "signature": signature})
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, deltas))
        if reply.text:
            blocks.append(({"type": "text", "text": ""},
                           [{"type": "text_delta", "text": p} for p in split_text(reply.text, reply.chunks)]))
        for i, tc in enumerate(reply.tool_calls):
            args = orjson.dumps(tc.arguments).decode()
            third = max(1, len(args) // 3)
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": args[s:s + third]}
                       for s in range(0, len(args), third)]
            blocks.append(({"type": "tool_use", "id": self.tool_id(reply, i), "name": tc.name, "input": {},
                            "caller": {"type": "direct"}}, deltas))
        for index, (block, deltas) in enumerate(blocks):
            out.append(sse({"type": "content_block_start", "index": index, "content_block": block},
                           "content_block_start"))
            if index == 0:
                out.append(sse(b'{"type": "ping"}', "ping"))  # where Anthropic sends it, byte for byte
            for delta in deltas:
                out.append(sse({"type": "content_block_delta", "index": index, "delta": delta},
                               "content_block_delta"))
            out.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
        if not blocks:
            out.append(sse(b'{"type": "ping"}', "ping"))
        final_usage = {"input_tokens": self.input_tokens(reply),
                       "cache_creation_input_tokens": reply.cache_write_tokens,
                       "cache_read_input_tokens": reply.cached_tokens,
                       "output_tokens": reply.completion_tokens}
        out.append(sse({"type": "message_delta",
                        "delta": {"stop_reason": self.stop_reason(reply), "stop_sequence": None},
                        "usage": final_usage}, "message_delta"))
        out.append(sse({"type": "message_stop"}, "message_stop"))
        return out


def fault(**kwargs: Any) -> Fault:
    return Fault(**kwargs)
