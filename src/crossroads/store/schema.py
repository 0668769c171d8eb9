"""SQLAlchemy Core tables of the store. The Alembic scripts in ``migrations/`` create them; keep both in step."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL keeps them as ``timestamptz``. SQLite has no datetime type: values are stored as naive UTC text
    (``YYYY-MM-DD HH:MM:SS.ffffff``), which sorts and compares correctly, and come back with ``tzinfo=UTC``.
    Naive datetimes handed in are taken to be UTC already.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("limit", sa.Float, nullable=True),
    sa.Column("limit_reset", sa.String(16), nullable=True),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("allowed_models", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("is_management", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.Integer, nullable=True),
    sa.Column("priority", sa.String(16), nullable=False, default="normal"),
    # Where the key belongs (workspaces below): its workspace and environment, and the member who owns it (None for
    # keys made with the master key or a workspace's management key without a member).
    sa.Column("workspace_id", sa.String(64), nullable=False, default="default"),
    sa.Column("environment_id", sa.String(64), nullable=False, default="default"),
    sa.Column("user_id", sa.String(64), nullable=True),
)

# Workspaces (teams) -> environments (dev, prod, ...) -> keys; people are users, members of workspaces with a role.
# Every level may carry a budget: a USD limit (None: none) and its reset period (None: lifetime, daily, weekly,
# monthly). The migration's `default` workspace and its `default` environment hold every key made before workspaces.
# Writes bump `keys_version` (meta) like key writes, so every process's key cache reloads them together.
workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("budget_limit", sa.Float, nullable=True),
    sa.Column("budget_reset", sa.String(16), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

environments = sa.Table(
    "environments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("workspace_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("budget_limit", sa.Float, nullable=True),
    sa.Column("budget_reset", sa.String(16), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("workspace_id", "name", name="uq_environments_workspace_name"),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),  # lower-cased
    sa.Column("password_hash", sa.Text, nullable=True),  # argon2id; None: single sign-on or an invitation only
    sa.Column("is_admin", sa.Boolean, nullable=False, default=False),  # the whole gateway's, like the master key
    sa.Column("oidc_subject", sa.String(255), nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("workspace_id", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # owner | admin | member | viewer
    sa.Column("budget_limit", sa.Float, nullable=True),
    sa.Column("budget_reset", sa.String(16), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("workspace_id", "user_id", name="uq_memberships_workspace_user"),
)

generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("provider_name", sa.Text, nullable=True),
    sa.Column("provider_type", sa.Text, nullable=True),
    sa.Column("upstream_model", sa.Text, nullable=True),
    sa.Column("upstream_id", sa.Text, nullable=True),
    sa.Column("api_type", sa.String(32), nullable=False),
    sa.Column("streamed", sa.Boolean, nullable=False),
    sa.Column("cancelled", sa.Boolean, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("finish_reason", sa.Text, nullable=True),
    sa.Column("native_finish_reason", sa.Text, nullable=True),
    sa.Column("tokens_prompt", sa.Integer, nullable=False),
    sa.Column("tokens_completion", sa.Integer, nullable=False),
    sa.Column("tokens_reasoning", sa.Integer, nullable=False),
    sa.Column("tokens_cached", sa.Integer, nullable=False),
    sa.Column("tokens_cache_write", sa.Integer, nullable=False),
    sa.Column("cost", sa.Float, nullable=False),
    sa.Column("latency_ms", sa.Integer, nullable=True),
    sa.Column("generation_time_ms", sa.Integer, nullable=True),
    sa.Column("ttft_ms", sa.Integer, nullable=True),
    sa.Column("http_referer", sa.Text, nullable=True),
    sa.Column("app_title", sa.Text, nullable=True),
    sa.Column("user", sa.Text, nullable=True),
    sa.Column("user_agent", sa.Text, nullable=True),
    sa.Column("provider_responses", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("events", sa.JSON(none_as_null=True), nullable=True),
    # The key's workspace, environment and member when the request was made (None: master key, or before 0006).
    sa.Column("workspace_id", sa.String(64), nullable=True),
    sa.Column("environment_id", sa.String(64), nullable=True),
    sa.Column("user_id", sa.String(64), nullable=True),
    sa.Index("ix_generations_key_hash_created_at", "key_hash", "created_at"),
    sa.Index("ix_generations_created_at", "created_at"),
    sa.Index("ix_generations_workspace_id_created_at", "workspace_id", "created_at"),
)

# Responses API objects kept for `previous_response_id` (store: true): the conversation so far as input items.
stored_responses = sa.Table(
    "stored_responses",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=True),  # None for the master key
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("history", sa.JSON, nullable=False),  # input items of the whole chain, this response's output included
    sa.Column("response", sa.JSON, nullable=False),  # the Response object as returned
)

# Small counters; ``keys_version`` is bumped in the same transaction as every api_keys write.
meta = sa.Table(
    "meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

# Dashboard sign-ins and OAuth PKCE grants (store/signins.py), shared by every process: found by the SHA-256 of
# their secret, never the secret itself.
dashboard_sessions = sa.Table(
    "dashboard_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=True, index=True),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
    sa.Column("flash", sa.Text, nullable=True),  # a key made in this session, sealed for the session's token
    sa.Column("user_id", sa.String(64), nullable=True, index=True),  # a person's session (kind "user")
    sa.Column("workspace_id", sa.String(64), nullable=True),  # the workspace the session looks at (None: all)
)

# Pending invitations to a workspace (a one-time link; found by the SHA-256 of its token).
invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("workspace_id", sa.String(64), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("budget_limit", sa.Float, nullable=True),
    sa.Column("budget_reset", sa.String(16), nullable=True),
    sa.Column("expires", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

oauth_grants = sa.Table(
    "oauth_grants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("limit", sa.Float, nullable=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("challenge", sa.Text, nullable=True),
    sa.Column("method", sa.String(8), nullable=True),
    sa.Column("expires", UTCDateTime, nullable=False),
    # Where the key made from the grant belongs: the approving session's workspace, and person (None: the defaults).
    sa.Column("workspace_id", sa.String(64), nullable=True),
    sa.Column("environment_id", sa.String(64), nullable=True),
    sa.Column("owner_id", sa.String(64), nullable=True),
)

# Running `crossroads serve` instances (crossroads/instances.py): each registers itself and its workers heartbeat; a
# second live instance on the same database without a shared store (Redis) is refused at start. Timestamps are written
# and compared by the database's clock, so the hosts' clocks need not agree.
instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_namespace", sa.Text, nullable=True),
    sa.Column("workers", sa.Integer, nullable=False),
    sa.Column("shared", sa.Boolean, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
)

# The credit-limit ledger on PostgreSQL without Redis (gate/pg_credits.py): per limited key its spend (total and of the
# period each `day` / `week` / `month` names: "YYYY-MM-DD", Monday's date, "YYYY-MM", UTC) and what its open
# reservations hold; each open reservation until its lease (the database's clock) ends.
credit_accounts = sa.Table(
    "credit_accounts",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("spent_total", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("day", sa.Text, nullable=False, server_default=""),
    sa.Column("spent_day", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("week", sa.Text, nullable=False, server_default=""),
    sa.Column("spent_week", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("month", sa.Text, nullable=False, server_default=""),
    sa.Column("spent_month", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Column("reserved", sa.Float, nullable=False, server_default=sa.text("0")),
)

credit_reservations = sa.Table(
    "credit_reservations",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("amount", sa.Float, nullable=False),
    sa.Column("lease_until", UTCDateTime, nullable=False),
    sa.Index("ix_credit_reservations_key_hash", "key_hash"),
)
