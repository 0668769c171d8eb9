"""Plain rows exchanged with the store (no ORM objects leave `store/`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import orjson

from crossroads.timetext import SecondCachedTime


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
    workspace_id: str = "default"
    environment_id: str = "default"
    user_id: str | None = None  # the member who owns the key (None: made with the master key or a management key)


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
    workspace_id: str | None = None  # the key's when the request was made (None: the master key)
    environment_id: str | None = None
    user_id: str | None = None  # the member who owns the key


GENERATION_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(GenerationRow))
JSON_COLUMNS = ("provider_responses", "events")

# A generation as the writer takes it: a plain tuple in GENERATION_COLUMNS order, `created_at` as naive UTC text
# ("YYYY-MM-DD HH:MM:SS.ffffff", see utc_text) and the JSON columns as JSON text (None for none). The request path
# builds one per request: a tuple of strings and numbers costs a fraction of a dataclass, binds into SQLite as it is,
# and is untracked by the garbage collector while it waits in the writer's buffer.
GenerationRecord = tuple[Any, ...]
_CREATED_AT = GENERATION_COLUMNS.index("created_at")
RECORD_COST = GENERATION_COLUMNS.index("cost")
_JSON_INDEXES = tuple(GENERATION_COLUMNS.index(name) for name in JSON_COLUMNS)


# Timestamps as naive UTC text, microseconds.
utc_text = SecondCachedTime("%Y-%m-%d %H:%M:%S", 6)


def to_record(row: GenerationRow) -> GenerationRecord:
    values = [getattr(row, name) for name in GENERATION_COLUMNS]
    created = row.created_at
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
    values[_CREATED_AT] = created.strftime("%Y-%m-%d %H:%M:%S.%f")
    for index in _JSON_INDEXES:
        values[index] = orjson.dumps(values[index]).decode() if values[index] else None
    return tuple(values)


def from_record(record: GenerationRecord) -> GenerationRow:
    values = list(record)
    values[_CREATED_AT] = datetime.fromisoformat(values[_CREATED_AT]).replace(tzinfo=UTC)
    for index in _JSON_INDEXES:
        values[index] = orjson.loads(values[index]) if values[index] is not None else []
    return GenerationRow(*values)


@dataclass(slots=True)
class WorkspaceRow:
    id: str
    name: str
    budget_limit: float | None = None  # USD; None = no budget
    budget_reset: str | None = None  # daily | weekly | monthly | None (lifetime)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class EnvironmentRow:
    id: str
    workspace_id: str
    name: str
    budget_limit: float | None = None
    budget_reset: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class UserRow:
    id: str
    email: str  # lower-cased
    password_hash: str | None = None  # argon2id; never leaves the store's callers' process
    is_admin: bool = False
    oidc_subject: str | None = None
    disabled: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class MembershipRow:
    id: str
    workspace_id: str
    user_id: str
    role: str  # owner | admin | member | viewer
    budget_limit: float | None = None
    budget_reset: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class InstanceRow:
    """A running `crossroads serve` (table `instances`): the multi-instance safety net (crossroads/instances.py)."""

    id: str  # random, one per `serve` run
    host: str  # the host name, as shown to people
    pid: int  # the serving (supervisor) process
    workers: int
    shared: bool  # True when its limits are kept in a shared store (CROSSROADS_REDIS_URL), not in process memory
    # Where `pid` can be looked up: boot id and PID namespace (Linux); None where that cannot be told. Two rows with
    # the same value are processes of one kernel and one PID namespace: a pid that is gone there is a dead instance.
    pid_namespace: str | None = None
    started_at: datetime | None = None  # None when registering: the database's clock
    heartbeat_at: datetime | None = None  # None when registering: the database's clock
    heartbeat_age: float | None = None  # not a column: seconds since heartbeat_at, by the database's clock (read)
