"""Pass-through to an upstream that serves OpenAI's Responses API itself (POST /responses).

The client's Responses body goes up untouched but for `model`, and the upstream's bytes come back untouched. This
translator only *reads* what passes: usage, the finish, text deltas (time to first token, the bill of a cancelled
stream) and the final Response object (kept for `previous_response_id` like any other stored response).
"""

from __future__ import annotations

from typing import Any

import orjson

from crossroads.canonical import ChatRequest, Chunk, Completion
from crossroads.providers.base import (
    RequestContext,
    UpstreamRequest,
    UpstreamStreamError,
    Usage,
    choice_chunk,
    object_or_empty,
    string_or_none,
    token_count,
)

_FINISH = {"completed": "stop", "incomplete": "length", "failed": "error", "cancelled": "error"}


def read_responses_usage(raw: dict[str, Any], usage: Usage) -> None:
    usage.seen = True
    usage.prompt_tokens = token_count(raw.get("input_tokens"))
    usage.completion_tokens = token_count(raw.get("output_tokens"))
    usage.cached_tokens = token_count(object_or_empty(raw.get("input_tokens_details")).get("cached_tokens"))
    usage.reasoning_tokens = token_count(object_or_empty(raw.get("output_tokens_details")).get("reasoning_tokens"))


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

    async def request(self, body: ChatRequest) -> UpstreamRequest:
        out = {**self.native, "model": self.ctx.model.upstream}
        return UpstreamRequest(url=self.adapter.responses_url, body=orjson.dumps(out),
                               headers=self.adapter.headers)

    def _finished(self, response: dict[str, Any]) -> dict[str, Any]:
        self.final_response = response
        self.upstream_model = string_or_none(response.get("model"))
        self.upstream_id = string_or_none(response.get("id"))
        if isinstance(response.get("usage"), dict):
            read_responses_usage(response["usage"], self.usage)
        status = string_or_none(response.get("status"))
        reason = _FINISH.get(status, "stop") if status is not None else "stop"
        incomplete = object_or_empty(response.get("incomplete_details"))
        if reason == "length" and incomplete.get("reason") == "content_filter":
            reason = "content_filter"
        output = response.get("output")
        if reason == "stop" and isinstance(output, list) and any(
                isinstance(item, dict) and item.get("type") == "function_call" for item in output):
            reason = "tool_calls"
        return {"finish_reason": reason, "native_finish_reason": status}

    def response(self, raw: bytes) -> Completion:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("output"), list):
            raise ValueError("upstream Responses body has no output")
        finish = self._finished(data)
        messages = [item for item in data["output"] if isinstance(item, dict) and item.get("type") == "message"]
        text = "".join(part["text"] for item in messages if isinstance(item.get("content"), list)
                       for part in item["content"] if isinstance(part, dict) and part.get("type") == "output_text"
                       and isinstance(part.get("text"), str))
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish["finish_reason"],
                             "native_finish_reason": finish["native_finish_reason"]}]}

    def stream_event(self, event: str | None, data: bytes) -> list[Chunk]:
        kind = event
        if kind not in ("response.output_text.delta", "response.function_call_arguments.delta",
                        "response.reasoning_summary_text.delta", "response.completed", "response.incomplete",
                        "response.failed", "error"):
            return []
        payload = object_or_empty(orjson.loads(data))
        if kind == "error":
            raise UpstreamStreamError(str(payload.get("message") or "upstream stream error"), raw=payload)
        if kind.endswith(".delta"):
            delta = payload.get("delta")
            if not isinstance(delta, str):
                return []
            if kind == "response.output_text.delta":
                return [choice_chunk({"content": delta})]
            if kind == "response.reasoning_summary_text.delta":
                return [choice_chunk({"reasoning": delta})]
            index = payload.get("output_index")
            return [choice_chunk({"tool_calls": [{"index": index if isinstance(index, int) else 0,
                                                  "function": {"arguments": delta}}]})]
        finish = self._finished(object_or_empty(payload.get("response")))
        if kind == "response.failed":
            error = object_or_empty((self.final_response or {}).get("error"))
            raise UpstreamStreamError(str(error.get("message") or "upstream response failed"), raw=payload)
        return [choice_chunk({}, finish["finish_reason"], finish["native_finish_reason"])]

    def finish(self) -> list[Chunk]:
        return []
