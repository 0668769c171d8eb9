"""Pass-through to an upstream that serves OpenAI's Responses API itself (POST /responses).

The client's Responses body goes up untouched but for `model`, and the upstream's bytes come back untouched. This
translator only *reads* what passes: usage, the finish, text deltas (time to first token, the bill of a cancelled
stream) and the final Response object (kept for `previous_response_id` like any other stored response).
"""

from __future__ import annotations

from typing import Any

import orjson

from crossroads.providers.base import (
    RequestContext,
    UpstreamRequest,
    UpstreamStreamError,
    Usage,
    choice_chunk,
)

_FINISH = {"completed": "stop", "incomplete": "length", "failed": "error", "cancelled": "error"}


def read_responses_usage(raw: dict[str, Any], usage: Usage) -> None:
    usage.seen = True
    usage.prompt_tokens = int(raw.get("input_tokens") or 0)
    usage.completion_tokens = int(raw.get("output_tokens") or 0)
    usage.cached_tokens = int((raw.get("input_tokens_details") or {}).get("cached_tokens") or 0)
    usage.reasoning_tokens = int((raw.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)


class ResponsesPassthrough:
    __slots__ = ("adapter", "ctx", "native", "usage", "upstream_model", "upstream_id", "final_response")

    def __init__(self, adapter: Any, ctx: RequestContext, native: dict[str, Any]) -> None:
        self.adapter = adapter
        self.ctx = ctx
        self.native = native
        self.usage = Usage()
        self.upstream_model: str | None = None
        self.upstream_id: str | None = None
        self.final_response: dict[str, Any] | None = None

    async def request(self, body: dict[str, Any]) -> UpstreamRequest:
        out = {**self.native, "model": self.ctx.model.upstream}
        return UpstreamRequest(url=self.adapter.conn.base_url + "/responses", body=orjson.dumps(out),
                               headers=self.adapter.headers)

    def _finished(self, response: dict[str, Any]) -> dict[str, Any]:
        self.final_response = response
        self.upstream_model = response.get("model")
        self.upstream_id = response.get("id")
        if isinstance(response.get("usage"), dict):
            read_responses_usage(response["usage"], self.usage)
        status = response.get("status")
        reason = _FINISH.get(status, "stop")
        if reason == "length" and (response.get("incomplete_details") or {}).get("reason") == "content_filter":
            reason = "content_filter"
        if reason == "stop" and any(item.get("type") == "function_call" for item in response.get("output") or ()):
            reason = "tool_calls"
        return {"finish_reason": reason, "native_finish_reason": status}

    def response(self, raw: bytes) -> dict[str, Any]:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("output"), list):
            raise ValueError("upstream Responses body has no output")
        finish = self._finished(data)
        text = "".join(part.get("text", "") for item in data["output"] if item.get("type") == "message"
                       for part in item.get("content") or () if part.get("type") == "output_text")
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, **finish}]}

    def stream_event(self, event: str | None, data: bytes) -> list[dict[str, Any]]:
        kind = event
        if kind not in ("response.output_text.delta", "response.function_call_arguments.delta",
                        "response.reasoning_summary_text.delta", "response.completed", "response.incomplete",
                        "response.failed", "error"):
            return []
        payload = orjson.loads(data)
        if kind == "error":
            raise UpstreamStreamError(str(payload.get("message") or "upstream stream error"), raw=payload)
        if kind.endswith(".delta"):
            delta = payload.get("delta") or ""
            if kind == "response.output_text.delta":
                return [choice_chunk({"content": delta})]
            if kind == "response.reasoning_summary_text.delta":
                return [choice_chunk({"reasoning": delta})]
            return [choice_chunk({"tool_calls": [{"index": payload.get("output_index", 0),
                                                  "function": {"arguments": delta}}]})]
        finish = self._finished(payload.get("response") or {})
        if kind == "response.failed":
            error = (self.final_response or {}).get("error") or {}
            raise UpstreamStreamError(str(error.get("message") or "upstream response failed"), raw=payload)
        return [choice_chunk({}, finish["finish_reason"], finish["native_finish_reason"])]

    def finish(self) -> list[dict[str, Any]]:
        return []
