"""A fake OpenAI Chat Completions server (shapes as recorded from api.openai.com and OpenAI-compatible servers)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import (
    FakeUpstream,
    Fault,
    Recorded,
    Reply,
    fake_token_count,
    fake_vector,
    split_text,
    sse,
)


class FakeOpenAI(FakeUpstream):
    name = "openai"

    # The models /v1/embeddings serves (as api.openai.com: a chat model there is a 400 "does not support embeddings").
    EMBEDDING_MODELS = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")

    def __init__(self, *, api_key: str | None = "sk-fake-openai-secret", models: list[str] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = models or ["gpt-4o-mini", "gpt-4o"]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)

    async def embeddings(self, request: web.Request) -> web.Response:
        """POST /v1/embeddings as api.openai.com answers it: float lists, or base64 float32 with
        encoding_format=base64; `dimensions` shortens the vector."""
        rec, fault, refusal = await self._admit(request, {"type": "server_error", "param": None, "code": None})
        if refusal is not None:
            return refusal
        req = rec.json
        model = req.get("model")
        if model not in self.EMBEDDING_MODELS:
            return web.json_response({"error": {"message": f"This model does not support embeddings: {model}",
                                                "type": "invalid_request_error", "param": "model",
                                                "code": None}}, status=400)
        inputs = req.get("input")
        inputs = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else inputs
        if not inputs:
            return web.json_response({"error": {"message": "'$.input' is invalid.", "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=400)
        dimensions = req.get("dimensions") or 8
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += fake_token_count(text) if isinstance(item, str) else len(item)
            vector: Any = fake_vector(text, dimensions)
            if req.get("encoding_format") == "base64":
                import base64
                import struct

                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                                 headers=fault.headers if fault else None)

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

    async def _admit(self, request: web.Request, error: dict[str, Any]
                     ) -> tuple[Recorded, Fault | None, web.Response | None]:
        """Record the request and apply its fault: (record, fault, the answer to send instead, if any)."""
        rec = await self.record(request)
        fault = self.next_fault()
        await self.before_response(request, fault)
        if (denied := self._auth_error(request)) is not None:
            return rec, fault, denied
        if fault and (fault.status != 200 or fault.body is not None):
            body = orjson.dumps({"error": {"message": fault.message, **error}})
            return rec, fault, self.error_response(fault, body)
        return rec, fault, None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rec, fault, refusal = await self._admit(request, {"type": "server_error", "code": None})
        if refusal is not None:
            return refusal
        req = rec.json
        reply = self.next_reply()
        model = reply.model or req.get("model")
        if req.get("stream"):
            include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
            events = [sse(c) for c in self.chunks(reply, model, include_usage)] + [b"data: [DONE]\n\n"]
            error = sse({"error": {"message": fault.message if fault else "", "type": "server_error"}})
            return await self.write_sse(request, events, fault, error)
        return web.json_response(self.completion(reply, model), headers=fault.headers if fault else None)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's Responses API (as api.openai.com serves it), for pass-through tests."""
        rec, fault, refusal = await self._admit(request, {"type": "server_error", "param": None, "code": None})
        if refusal is not None:
            return refusal
        req = rec.json
        reply = self.next_reply()
        model = reply.model or req.get("model")
        response = self.response_object(reply, model, req)
        if not req.get("stream"):
            return web.json_response(response)
        events = [sse({"type": t, "sequence_number": n, **data}, t)
                  for n, (t, data) in enumerate(self.response_events(reply, response))]
        error = sse({"type": "error", "code": "server_error", "message": fault.message if fault else "",
                     "param": None, "sequence_number": len(events)}, "error")
        return await self.write_sse(request, events, fault, error)

    # -- rendering -------------------------------------------------------------------------------------------------
    def response_object(self, reply: Reply, model: str, req: dict[str, Any]) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if reply.text:
            output.append({"id": "msg_fake1", "type": "message", "status": "completed", "role": "assistant",
                           "content": [{"type": "output_text", "text": reply.text, "annotations": [],
                                        "logprobs": []}]})
        for i, tc in enumerate(reply.tool_calls):
            output.append({"id": f"fc_fake{i}", "type": "function_call", "status": "completed",
                           "call_id": tc.id or f"call_{i}abc", "name": tc.name,
                           "arguments": orjson.dumps(tc.arguments).decode()})
        incomplete = reply.finish == "length"
        return {
            "id": f"resp_fake{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
            "status": "incomplete" if incomplete else "completed", "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
            "model": model, "output": output, "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": True,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": req.get("tools") or [], "top_p": 1.0, "truncation": "disabled", "metadata": {},
            "user": None,
            "usage": {"input_tokens": reply.prompt_tokens,
                      "input_tokens_details": {"cached_tokens": reply.cached_tokens},
                      "output_tokens": reply.completion_tokens,
                      "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        }

    @staticmethod
    def response_events(reply: Reply, response: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        opening = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str, dict[str, Any]]] = [("response.created", {"response": opening}),
                                                    ("response.in_progress", {"response": opening})]
        for index, item in enumerate(response["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                events.append(("response.output_item.added", {"output_index": index, "item": {
                    **item, "status": "in_progress", "content": []}}))
                events.append(("response.content_part.added", {"item_id": item["id"], "output_index": index,
                                                               "content_index": 0, "part": {
                                                                   "type": "output_text", "text": "",
                                                                   "annotations": [], "logprobs": []}}))
                for piece in split_text(text, reply.chunks):
                    events.append(("response.output_text.delta", {"item_id": item["id"], "output_index": index,
                                                                  "content_index": 0, "delta": piece,
                                                                  "logprobs": []}))
                events.append(("response.output_text.done", {"item_id": item["id"], "output_index": index,
                                                             "content_index": 0, "text": text, "logprobs": []}))
                events.append(("response.content_part.done", {"item_id": item["id"], "output_index": index,
                                                              "content_index": 0, "part": item["content"][0]}))
            else:
                events.append(("response.output_item.added", {"output_index": index, "item": {
                    **item, "status": "in_progress", "arguments": ""}}))
                events.append(("response.function_call_arguments.delta", {
                    "item_id": item["id"], "output_index": index, "delta": item["arguments"]}))
                events.append(("response.function_call_arguments.done", {
                    "item_id": item["id"], "output_index": index, "arguments": item["arguments"]}))
            events.append(("response.output_item.done", {"output_index": index, "item": item}))
        final = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        events.append((final, {"response": response}))
        return events

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
