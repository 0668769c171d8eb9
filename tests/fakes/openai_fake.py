"""A fake OpenAI Chat Completions server (shapes as recorded from api.openai.com and OpenAI-compatible servers)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeUpstream, Fault, Reply, split_text, sse


class FakeOpenAI(FakeUpstream):
    name = "openai"

    def __init__(self, *, api_key: str | None = "sk-fake-openai-secret", models: list[str] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = models or ["gpt-4o-mini", "gpt-4o"]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.list_models)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            body = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                              "code": "invalid_api_key"}}
            return web.json_response(body, status=401)
        return None

    async def list_models(self, request: web.Request) -> web.Response:
        await self.record(request)
        if (denied := self._auth_error(request)) is not None:
            return denied
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.models]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        fault = self.next_fault()
        await self.before_response(fault)
        if (denied := self._auth_error(request)) is not None:
            return denied
        if fault and fault.status != 200:
            body = orjson.dumps({"error": {"message": fault.message, "type": "server_error", "code": None}})
            return self.error_response(fault, body)
        req = rec.json
        reply = self.next_reply()
        model = reply.model or req.get("model")
        if req.get("stream"):
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            events = [sse(c) for c in self.chunks(reply, model, include_usage)] + [b"data: [DONE]\n\n"]
            error = sse({"error": {"message": fault.message if fault else "", "type": "server_error"}})
            return await self.write_sse(request, events, fault, error)
        return web.json_response(self.completion(reply, model))

    # -- rendering -------------------------------------------------------------------------------------------------
    @staticmethod
    def finish_reason(reply: Reply) -> str:
        return reply.finish

    @staticmethod
    def usage(reply: Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }

    def completion(self, reply: Reply, model: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
        if reply.reasoning is not None:
            message["reasoning_content"] = reply.reasoning
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": tc.id or f"call_{i}abc", "type": "function",
                 "function": {"name": tc.name, "arguments": orjson.dumps(tc.arguments).decode()}}
                for i, tc in enumerate(reply.tool_calls)]
        return {
            "id": "chatcmpl-fake123", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason(reply)}],
            "usage": self.usage(reply), "service_tier": "default", "system_fingerprint": "fp_fake",
        }

    def chunks(self, reply: Reply, model: str, include_usage: bool) -> list[dict[str, Any]]:
        base = {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "service_tier": "default", "system_fingerprint": "fp_fake"}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        out = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if reply.reasoning:
            out += [chunk({"reasoning_content": piece}) for piece in split_text(reply.reasoning, 0)]
        out += [chunk({"content": piece}) for piece in split_text(reply.text or "", reply.chunks)]
        for i, tc in enumerate(reply.tool_calls):
            args = orjson.dumps(tc.arguments).decode()
            out.append(chunk({"tool_calls": [{"index": i, "id": tc.id or f"call_{i}abc", "type": "function",
                                              "function": {"name": tc.name, "arguments": ""}}]}))
            third = max(1, len(args) // 3)
            for start in range(0, len(args), third):
                out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[start:start + third]}}]}))
        out.append(chunk({}, self.finish_reason(reply)))
        if include_usage:
            out.append({**base, "choices": [], "usage": self.usage(reply)})
        return out


def fault(**kwargs: Any) -> Fault:
    return Fault(**kwargs)
