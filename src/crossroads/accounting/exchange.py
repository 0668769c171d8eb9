"""One inference request's bookkeeping: what it reserved, what happened upstream, and the record it leaves."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from crossroads.accounting.pricing import request_cost
from crossroads.providers.base import Usage
from crossroads.store.rows import GenerationRecord, utc_text

if TYPE_CHECKING:
    from crossroads.catalog import ModelSpec
    from crossroads.gate.auth import Principal
    from crossroads.gate.credits import Reservation
    from crossroads.routing.registry import Connection

CHARS_PER_TOKEN = 4  # a rough, deliberately pessimistic-for-the-client estimate when no usage is known
IMAGE_TOKENS = 1000  # worst-case-ish prompt tokens an image or file part is reserved at


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    media = 0
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    chars += len(part.get("text") or "")
                else:
                    media += 1
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                chars += len(str(call.get("function") or ""))
    if body.get("tools"):
        chars += len(str(body["tools"]))
    return chars // CHARS_PER_TOKEN + media * IMAGE_TOKENS + 8


def worst_case_output(body: dict[str, Any], model: ModelSpec) -> int:
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return model.max_completion_tokens or model.context_length or 4096


class WorstCase(NamedTuple):
    total: float  # USD: the prompt estimate plus the largest possible answer
    prompt: float  # USD of the prompt estimate (and per-request price)
    completion_price: float  # USD per completion token


NOTHING_TO_HOLD = WorstCase(0.0, 0.0, 0.0)


def worst_case_cost(body: dict[str, Any], models: list[ModelSpec], prompt_tokens: int) -> WorstCase:
    """The most a request may cost on any of the models that may serve it (what a credit reservation holds)."""
    worst = WorstCase(0.0, 0.0, 0.0)
    for model in models:
        pricing = model.pricing
        prompt_cost = prompt_tokens * pricing.prompt + pricing.request
        total = prompt_cost + worst_case_output(body, model) * pricing.completion
        if total >= worst.total:
            worst = WorstCase(total, prompt_cost, pricing.completion)
    return worst


class Exchange:
    """Filled in as the request progresses; `to_record()` turns it into the generation record."""

    def __init__(self, generation_id: str, principal: Principal, model: ModelSpec, connection: Connection,
                 *, stream: bool, headers: dict[bytes, bytes], user: str | None, prompt_estimate: int) -> None:
        self.generation_id = generation_id
        self.principal = principal
        self.model = model
        self.connection = connection
        self.stream = stream
        self.headers = headers
        self.user = user
        self.prompt_estimate = prompt_estimate
        self.reservation: Reservation | None = None
        self.finished = False  # settled and recorded (exactly once)
        self.api_type = "chat"  # which front format the client spoke
        self.model_id = model.id  # the model the client is told served (a catalog id, a route's target...)
        self.dropped: list[str] = []  # request fields the format conversion could not express
        self.events: list[dict[str, Any]] = []  # what else the gateway did to the request (e.g. a transform)
        self.started = time.monotonic()
        self.upstream_started: float | None = None
        self.upstream_ended: float | None = None
        self.first_token: float | None = None
        self.usage = Usage()
        self.upstream_model: str | None = None
        self.upstream_id: str | None = None
        self.streamed_chars = 0
        self.cancelled = False
        self.status = 200
        self.error: str | None = None
        self.finish_reason: str | None = None
        self.native_finish_reason: str | None = None
        self.attempts: list[dict[str, Any]] = []

    def attempt(self, status: int | None, error: str | None = None) -> None:
        latency = (time.monotonic() - self.upstream_started) * 1000 if self.upstream_started else None
        self.attempts.append({"provider_name": self.connection.name, "model_permaslug": self.model.id,
                              "status": status, "latency": round(latency, 1) if latency is not None else None,
                              "error": error})

    def billed_usage(self) -> Usage:
        """The upstream's usage when it reported one; otherwise an estimate from what was streamed."""
        if self.usage.seen:
            return self.usage
        usage = Usage()
        if self.streamed_chars:
            usage.prompt_tokens = self.prompt_estimate
            usage.completion_tokens = -(-self.streamed_chars // CHARS_PER_TOKEN)
        return usage

    def cost(self) -> float:
        return request_cost(self.billed_usage(), self.model.pricing)

    def to_record(self) -> GenerationRecord:
        """The generation record, in `GENERATION_COLUMNS` order (checked by a test against `to_record(GenerationRow)`)."""
        now = time.monotonic()
        usage = self.billed_usage()
        headers = self.headers
        started, upstream_started = self.started, self.upstream_started
        title = headers.get(b"x-title") or headers.get(b"x-openrouter-title")
        referer = headers.get(b"http-referer") or headers.get(b"referer")
        agent = headers.get(b"user-agent")
        events = self.events
        if self.dropped:
            events = [*({"type": "dropped_field", "field": name} for name in self.dropped), *events]
        return (
            self.generation_id, utc_text(time.time()), self.principal.key_hash, self.model_id, self.connection.name,
            self.connection.config.type, self.upstream_model or self.model.upstream, self.upstream_id,
            self.api_type, self.stream, self.cancelled, self.status, self.error,
            self.finish_reason, self.native_finish_reason,
            usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens, usage.cached_tokens,
            usage.cache_write_tokens, request_cost(usage, self.model.pricing),
            int((now - started) * 1000),
            int(((self.upstream_ended or now) - upstream_started) * 1000) if upstream_started is not None else None,
            int((self.first_token - upstream_started) * 1000)
            if upstream_started is not None and self.first_token is not None else None,
            _text(referer) if referer else None, _text(title) if title else None, self.user,
            _text(agent) if agent else None,
            orjson.dumps(self.attempts).decode() if self.attempts else None,
            orjson.dumps(events).decode() if events else None,
        )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")[:500]
