"""A fake Gemini API server (shapes as recorded from generativelanguage.googleapis.com/v1beta).

`POST /v1beta/models/{model}:generateContent` answers one GenerateContentResponse (pretty-printed, as Google does);
`:streamGenerateContent?alt=sse` answers `data: {...}\\r\\n\\r\\n` events, and without `alt=sse` a JSON array of the
same responses. Thoughts come first as `thought: true` parts, then text, then all function calls in one event with
the thought signature on the first call; the last event carries `finishReason` and the full usage.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeUpstream, Fault, Reply, fake_vector, split_text

FAKE_SIGNATURE = "CiQBvj72+ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ=="  # base64 like Google's, meaningless

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY", "tool_calls": "STOP"}
# google.rpc.Code names by HTTP status, as Google's error bodies carry them.
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def google_error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


def _stream_json(data: Any) -> bytes:
    # Google's SSE payloads are one line with ", "-less commas and ": " after keys; mimic that exactly.
    return json.dumps(data, separators=(",", ": "), ensure_ascii=False).encode()


def _sse(data: Any) -> bytes:
    return b"data: " + _stream_json(data) + b"\r\n\r\n"


class FakeGemini(FakeUpstream):
    name = "gemini"

    def __init__(self, *, api_key: str | None = "fake-gemini-secret") -> None:
        super().__init__()
        self.api_key = api_key
        self._ids = itertools.count(1)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{tail}", self.generate)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if not self.api_key:
            return None
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not given:
            body = google_error(403, "Method doesn't allow unregistered callers (callers without established "
                                     "identity). Please use API Key or other form of API consumer identity to call "
                                     "this API.")
            return web.json_response(body, status=403)
        if given != self.api_key:
            body = google_error(400, "API key not valid. Please pass a valid API key.", [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
            return web.json_response(body, status=400)
        return None

    async def generate(self, request: web.Request) -> web.StreamResponse:
        rec = await self.record(request)
        fault = self.next_fault()
        await self.before_response(request, fault)
        if (denied := self._auth_error(request)) is not None:
            return denied
        model, _, method = request.match_info["tail"].rpartition(":")
        if method == "batchEmbedContents" and model:
            return await self.batch_embed(rec, model, fault)
        if method not in ("generateContent", "streamGenerateContent") or not model:
            body = google_error(404, f"models/{request.match_info['tail']} is not found for API version v1beta.")
            return web.json_response(body, status=404)
        if fault and (fault.status != 200 or fault.body is not None):
            return self.error_response(fault, orjson.dumps(google_error(fault.status, fault.message)))
        try:
            req = rec.json
        except orjson.JSONDecodeError:
            return web.json_response(google_error(400, "Invalid JSON payload received."), status=400)
        if not isinstance(req, dict) or not req.get("contents"):
            return web.json_response(google_error(400, "* GenerateContentRequest.contents: contents is not "
                                                       "specified\n"), status=400)
        reply = self.next_reply()
        version = reply.model or model
        response_id = f"fakeResp{next(self._ids):06d}Gm"
        events = self.events(reply, version, response_id)
        if method == "generateContent":
            body = orjson.dumps(self.merge(events), option=orjson.OPT_INDENT_2) + b"\n"
            return web.Response(body=body, headers={"Content-Type": "application/json; charset=UTF-8",
                                                    **(fault.headers if fault else {})})
        if request.query.get("alt") != "sse":
            return web.Response(body=orjson.dumps(events, option=orjson.OPT_INDENT_2),
                                headers={"Content-Type": "application/json; charset=UTF-8",
                                         **(fault.headers if fault else {})})
        message = fault.message if fault else ""
        error = _sse(google_error(500, message))
        return await self.write_sse(request, [_sse(e) for e in events], fault, error)

    async def batch_embed(self, rec: Any, model: str, fault: Any) -> web.Response:
        """models/{model}:batchEmbedContents as the Gemini API answers it: `{"embeddings": [{"values": [...]}]}` in
        request order, at most 100 requests a batch, each naming the same model."""
        if fault and (fault.status != 200 or fault.body is not None):
            return self.error_response(fault, orjson.dumps(google_error(fault.status, fault.message)))
        if "embedding" not in model:
            return web.json_response(google_error(400, f"models/{model} is not an embedding model."), status=400)
        requests = (rec.json or {}).get("requests")
        if not isinstance(requests, list) or not requests:
            return web.json_response(google_error(400, "* BatchEmbedContentsRequest.requests: requests is not "
                                                       "specified\n"), status=400)
        if len(requests) > 100:
            return web.json_response(google_error(400, "* BatchEmbedContentsRequest.requests: at most 100 requests "
                                                       "can be in one batch\n"), status=400)
        embeddings = []
        for index, item in enumerate(requests):
            if item.get("model") != f"models/{model}":
                return web.json_response(google_error(400, f"* BatchEmbedContentsRequest.requests[{index}].model: "
                                                           "the model must match the batch's model\n"), status=400)
            text = "".join(part.get("text", "") for part in item["content"]["parts"])
            embeddings.append({"values": fake_vector(text, item.get("outputDimensionality") or 8)})
        return web.json_response({"embeddings": embeddings}, headers=fault.headers if fault else None)

    # -- rendering -------------------------------------------------------------------------------------------------
    @staticmethod
    def finish_reason(reply: Reply) -> str:
        return _FINISH.get(reply.finish, "STOP")

    @staticmethod
    def usage(reply: Reply, final: bool = True) -> dict[str, Any]:
        prompt = reply.prompt_tokens
        meta: dict[str, Any] = {"promptTokenCount": prompt}
        total = prompt
        if final:
            candidates = max(reply.completion_tokens - reply.reasoning_tokens, 0)
            meta["candidatesTokenCount"] = candidates
            total += candidates + reply.reasoning_tokens
        elif reply.reasoning_tokens:
            total += reply.reasoning_tokens
        meta["totalTokenCount"] = total
        if reply.cached_tokens:
            meta["cachedContentTokenCount"] = reply.cached_tokens
        meta["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if reply.cached_tokens:
            meta["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.cached_tokens}]
        if reply.reasoning_tokens:
            meta["thoughtsTokenCount"] = reply.reasoning_tokens
        return meta

    def events(self, reply: Reply, version: str, response_id: str) -> list[dict[str, Any]]:
        """The stream events for a reply; `merge` folds them into the one non-stream response."""
        part_groups: list[list[dict[str, Any]]] = []
        if reply.reasoning:
            part_groups += [[{"text": piece, "thought": True}] for piece in split_text(reply.reasoning, 0)]
        part_groups += [[{"text": piece}] for piece in split_text(reply.text or "", reply.chunks)]
        if reply.tool_calls:
            calls = []
            for i, tc in enumerate(reply.tool_calls):
                call: dict[str, Any] = {"name": tc.name, "args": tc.arguments}
                if tc.id:
                    call["id"] = tc.id  # Gemini 3 gives ids; 2.5 does not
                part: dict[str, Any] = {"functionCall": call}
                if i == 0:
                    part["thoughtSignature"] = reply.reasoning_signature or FAKE_SIGNATURE
                calls.append(part)
            part_groups.append(calls)
        elif reply.reasoning_signature and part_groups:
            # Without function calls Gemini 3 signs the last part of the answer.
            part_groups[-1][-1]["thoughtSignature"] = reply.reasoning_signature
        events: list[dict[str, Any]] = []
        for parts in part_groups:
            events.append({"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}],
                           "usageMetadata": self.usage(reply, final=False),
                           "modelVersion": version, "responseId": response_id})
        if not events:
            # A blocked answer has no content at all; an empty one has a single empty text part.
            candidate = {"index": 0} if reply.finish == "content_filter" else {
                "content": {"parts": [{"text": ""}], "role": "model"}, "index": 0}
            events.append({"candidates": [candidate], "modelVersion": version, "responseId": response_id})
        last = events[-1]
        candidate = last["candidates"][0]
        candidate["finishReason"] = self.finish_reason(reply)
        if reply.tool_calls:
            candidate["finishMessage"] = "Model generated function call(s)."
        if reply.finish == "content_filter":
            candidate["safetyRatings"] = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
                                           "blocked": True}]
        last["usageMetadata"] = self.usage(reply, final=True)
        # Keep Google's key order: candidates, usageMetadata, modelVersion, responseId.
        events[-1] = {"candidates": last["candidates"], "usageMetadata": last["usageMetadata"],
                      "modelVersion": version, "responseId": response_id}
        return events

    @staticmethod
    def merge(events: list[dict[str, Any]]) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        for event in events:
            for part in event["candidates"][0].get("content", {}).get("parts", ()):
                prev = parts[-1] if parts else None
                # Consecutive text pieces of one kind are one part in a non-stream answer.
                if (prev is not None and "text" in part and "text" in prev and "thoughtSignature" not in prev
                        and prev.get("thought") == part.get("thought")):
                    prev["text"] += part["text"]
                    if "thoughtSignature" in part:
                        prev["thoughtSignature"] = part["thoughtSignature"]
                else:
                    parts.append(dict(part))
        last = events[-1]
        candidate = {k: v for k, v in last["candidates"][0].items() if k != "content"}
        if "content" in last["candidates"][0]:
            parts = [p for p in parts if p.get("text") != "" or "thoughtSignature" in p] or [{"text": ""}]
            candidate = {"content": {"parts": parts, "role": "model"}, **candidate}
        return {"candidates": [candidate], "usageMetadata": last["usageMetadata"],
                "modelVersion": last["modelVersion"], "responseId": last["responseId"]}


def fault(**kwargs: Any) -> Fault:
    return Fault(**kwargs)
