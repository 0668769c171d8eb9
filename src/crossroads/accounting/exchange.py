"""One inference request's bookkeeping: what it reserved, what happened upstream, and the record it leaves."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from crossroads.accounting.pricing import request_cost
from crossroads.canonical import Usage
from crossroads.store.rows import GenerationRecord, utc_text

if TYPE_CHECKING:
    from crossroads.catalog import ModelSpec
    from crossroads.gate.auth import Principal
    from crossroads.gate.credits import Budget, Reservation
    from crossroads.gate.shared_credits import SharedReservation
    from crossroads.routing.registry import Connection

CHARS_PER_TOKEN = 4  # a rough, deliberately pessimistic-for-the-client estimate when no usage is known
IMAGE_TOKENS = 1000  # worst-case-ish prompt tokens an image or file part is reserved at


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    inputs = body.get("input")
    if isinstance(inputs, list) and "messages" not in body:  # an embeddings request (formats/embeddings.py)
        return sum(len(item) if isinstance(item, list) else len(item) // CHARS_PER_TOKEN + 1 for item in inputs)
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


# -- the most a prompt can cost ------------------------------------------------------------------------------------
# A credit reservation must hold whatever tokenizer the upstream uses, so it counts what no tokenizer can beat instead
# of estimating: byte-level BPE (OpenAI, Anthropic, Llama) and SentencePiece with byte fallback (Gemini, Mistral)
# never make more than one token of one UTF-8 byte. What the upstream adds around the text (chat-template tokens per
# message, the system prompt Anthropic adds for tool use: 346 tokens at most in its documentation) is bounded by the
# allowances below, and media parts by the largest per-item counts the providers document.
MESSAGE_OVERHEAD_TOKENS = 16  # role and separators of one message in any chat template
REQUEST_OVERHEAD_TOKENS = 32  # start of the prompt and the assistant turn it opens
TOOL_USE_OVERHEAD_TOKENS = 600  # the tool-use system prompt an upstream adds when tools are defined
IMAGE_TOKEN_BOUND = 2_600  # images are resized before counting: Anthropic ≤ ~1,600, Gemini ≤ 1,120 (high), GPT-4o 1,105
PDF_PAGE_TOKEN_BOUND = 3_500  # a page is billed as its text plus its image
FILE_TOKEN_BOUND = 100 * PDF_PAGE_TOKEN_BOUND  # a document whose pages cannot be counted: the 100-page limit of most
AUDIO_TOKENS_PER_BASE64_BYTE = 0.25  # generous for any codec (Gemini: 32 tokens a second; 8 kbit/s is 1,333 B/s)


def prompt_token_bound(body: dict[str, Any]) -> int:
    """At most how many prompt tokens the canonical request `body` can be billed for, on any upstream.

    Exact for text (UTF-8 bytes) whatever its script, spacing or symbols; media parts count at the documented maxima
    above. Used for credit reservations only: it over-counts plain English about four-fold, which is the price of a
    limit that cannot be overrun (rate limits and middle-out use the cheaper `estimate_prompt_tokens`)."""
    tokens = REQUEST_OVERHEAD_TOKENS
    for message in body.get("messages") or ():
        tokens += MESSAGE_OVERHEAD_TOKENS  # the role is part of it
        if isinstance(message, dict):
            for key, value in message.items():
                if key == "content":
                    tokens += _bound_of(value)
                elif key != "role":
                    tokens += len(key) + _bound_of(value)
    for field in ("tools", "response_format", "tool_choice", "functions"):
        value = body.get(field)
        if value:
            tokens += _json_bytes(value)
    if body.get("tools") or body.get("functions"):
        tokens += TOOL_USE_OVERHEAD_TOKENS
    return tokens


def _bound_of(value: Any) -> int:
    """Tokens a message (or any part of it) can count for: text as its UTF-8 bytes, media at their bounds, and any
    other structure as the bytes of its JSON (keys and punctuation included: always at least what a template makes
    of it)."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        return sum(_bound_of(item) for item in value)
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ("image_url", "image", "input_image"):
            return IMAGE_TOKEN_BOUND
        if kind in ("file", "input_file", "document"):
            return _file_bound(value)
        if kind == "text" and isinstance(value.get("text"), str) and len(value) <= 3:
            return 4 + _bound_of(value["text"])  # a text part (perhaps with cache_control): its text
        if kind == "input_audio":
            audio = value.get("input_audio")
            data = audio.get("data") if isinstance(audio, dict) else None
            return int(len(data) * AUDIO_TOKENS_PER_BASE64_BYTE) + 100 if isinstance(data, str) else FILE_TOKEN_BOUND
        total = 0
        for key, item in value.items():
            total += len(key) + 4 + (_bound_of(item) if isinstance(item, str | list | dict) else 8)
        return total
    return 8  # a number, a boolean, null


def _file_bound(part: dict[str, Any]) -> int:
    """A PDF's pages counted from its bytes when they are in the request, else the bound of a 100-page document."""
    import base64
    import binascii

    file = part.get("file") if isinstance(part.get("file"), dict) else part
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        return FILE_TOKEN_BOUND
    payload = data.partition(",")[2] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        return FILE_TOKEN_BOUND
    if not raw.startswith(b"%PDF"):
        return len(raw) + 100  # a text document: at most a token a byte
    # Every page object has "/Type /Page" (the page tree "/Type /Pages"); compressed object streams can hide them,
    # so a count of zero falls back to the 100-page bound.
    pages = raw.count(b"/Type /Page") + raw.count(b"/Type/Page") - raw.count(b"/Type /Pages") - raw.count(
        b"/Type/Pages")
    return pages * PDF_PAGE_TOKEN_BOUND + len(raw) // 100 if pages > 0 else FILE_TOKEN_BOUND


def _json_bytes(value: Any) -> int:
    return len(orjson.dumps(value)) if isinstance(value, dict | list) else _bound_of(value)


# Output of a model that declares no limit and a request that sets none: what the reservation assumes.
UNDECLARED_OUTPUT_TOKENS = 32_768


def worst_case_output(body: dict[str, Any], model: ModelSpec) -> int:
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return model.max_completion_tokens or model.context_length or UNDECLARED_OUTPUT_TOKENS


class WorstCase(NamedTuple):
    total: float  # USD: the prompt estimate plus the largest possible answer
    prompt: float  # USD of the prompt estimate (and per-request price)
    completion_price: float  # USD per completion token


NOTHING_TO_HOLD = WorstCase(0.0, 0.0, 0.0)


def worst_case_cost(body: dict[str, Any], targets: list[tuple[ModelSpec, dict[str, Any] | None]]) -> WorstCase:
    """The most a request may cost on any of the models that may serve it (what a credit reservation holds).
    `targets`: each candidate model with the parameter overrides its route applies (a route may set max_tokens)."""
    inputs = body.get("input")
    if isinstance(inputs, list) and "messages" not in body:
        return _worst_embedding_cost(inputs, targets)
    prompt_bound = prompt_token_bound(body)
    worst = WorstCase(0.0, 0.0, 0.0)
    for model, overrides in targets:
        pricing = model.pricing
        # No upstream bills more prompt than its context holds (a longer prompt is refused, for nothing).
        prompt_tokens = min(prompt_bound, model.context_length) if model.context_length else prompt_bound
        # Cache writes may cost more than plain input (Anthropic: 1.25x): the dearest way to bill the prompt.
        prompt_price = max(pricing.prompt, pricing.input_cache_write, pricing.input_cache_read)
        prompt_cost = prompt_tokens * prompt_price + pricing.request
        output = worst_case_output({**body, **overrides} if overrides else body, model)
        total = prompt_cost + output * pricing.completion
        if total >= worst.total:
            worst = WorstCase(total, prompt_cost, pricing.completion)
    return worst


def _worst_embedding_cost(inputs: list[Any], targets: list[tuple[ModelSpec, dict[str, Any] | None]]) -> WorstCase:
    """An embeddings request bills its inputs only: each at most its UTF-8 bytes (or its token ids), and at most the
    model's context (each input is embedded on its own, so the cap is per input, not for the whole batch)."""
    bounds = [len(item) if isinstance(item, list) else len(item.encode("utf-8", "surrogatepass")) for item in inputs]
    worst = NOTHING_TO_HOLD
    for model, _ in targets:
        context = model.context_length
        tokens = sum(min(bound, context) for bound in bounds) if context else sum(bounds)
        cost = tokens * model.pricing.prompt + model.pricing.request
        if cost >= worst.total:
            worst = WorstCase(cost, cost, 0.0)
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
        self.reservation: Reservation | SharedReservation | None = None
        self.chain: tuple[Budget, ...] = ()  # the budgets the request counts against (gate/directory.py)
        self.finished = False  # settled and recorded (exactly once)
        self.api_type = "chat"  # which front format the client spoke
        self.model_id = model.id  # the model the client is told served (a catalog id, a route's target...)
        self.requested_model: str | None = None  # the body's `model`, as the client sent it
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
        # One (upstream_started, ended, connection, model) per attempt that went upstream, in order, with monotonic
        # times: what trace spans need and the record's `attempts` JSON leaves out (observability/tracing.py).
        self.sent_attempts: list[tuple[float | None, float, Connection, ModelSpec]] = []

    def attempt(self, status: int | None, error: str | None = None) -> None:
        latency = (time.monotonic() - self.upstream_started) * 1000 if self.upstream_started else None
        self.attempts.append({"provider_name": self.connection.name, "model_permaslug": self.model.id,
                              "status": status, "latency": round(latency, 1) if latency is not None else None,
                              "error": error})
        self.sent_attempts.append((self.upstream_started, time.monotonic(), self.connection, self.model))

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
        key = self.principal.key
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
            *((key.workspace_id, key.environment_id, key.user_id) if key is not None
              else (self.principal.workspace_id, self.principal.environment_id, None)),
        )


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")[:500]
