"""Plain rows exchanged with the store (no ORM objects leave `store/`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class KeyRow:
    hash: str  # sha256 hex of the plaintext key
    name: str
    label: str  # display form, e.g. "sk-or-v1-abc...f00" — never enough to use the key
    limit: float | None = None  # USD credit limit; None = no limit
    limit_reset: str | None = None  # daily | weekly | monthly | None
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None  # ids or glob patterns; None = all
    disabled: bool = False
    is_management: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    rpm: int | None = None  # requests per minute; None = no limit
    tpm: int | None = None  # tokens per minute; None = no limit
    priority: str = "normal"  # high | normal | low: who is refused first when a connection is near capacity


@dataclass(slots=True)
class GenerationRow:
    id: str
    created_at: datetime
    key_hash: str | None  # None for the master key
    model: str  # the model id served (catalog/config id)
    provider_name: str | None  # connection name
    provider_type: str | None
    upstream_model: str | None
    upstream_id: str | None
    api_type: str = "completions"
    streamed: bool = False
    cancelled: bool = False
    status: int = 200  # HTTP status the client got
    error: str | None = None
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    tokens_prompt: int = 0
    tokens_completion: int = 0
    tokens_reasoning: int = 0
    tokens_cached: int = 0
    tokens_cache_write: int = 0
    cost: float = 0.0
    latency_ms: int | None = None  # request start to last byte
    generation_time_ms: int | None = None  # upstream request start to upstream end
    ttft_ms: int | None = None  # time to first token (streams)
    http_referer: str | None = None
    app_title: str | None = None
    user: str | None = None
    user_agent: str | None = None
    provider_responses: list[dict[str, Any]] = field(default_factory=list)  # one per upstream attempt
    events: list[dict[str, Any]] = field(default_factory=list)  # e.g. request fields a conversion had to drop
