"""Workspaces, environments, users and memberships; keys and generation records gain their workspace, environment
and member. Every existing key moves into the `default` workspace's `default` environment (created here), so a
single-account database keeps working unchanged.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DEFAULT = "default"


def _budgeted(name: str, *columns: sa.Column, constraints: tuple = ()) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.String(64), primary_key=True),
        *columns,
        sa.Column("budget_limit", sa.Float, nullable=True),
        sa.Column("budget_reset", sa.String(16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *constraints,
    )


def upgrade() -> None:
    _budgeted("workspaces", sa.Column("name", sa.String(200), nullable=False, unique=True))
    _budgeted("environments", sa.Column("workspace_id", sa.String(64), nullable=False),
              sa.Column("name", sa.String(200), nullable=False),
              constraints=(sa.UniqueConstraint("workspace_id", "name", name="uq_environments_workspace_name"),))
    op.create_table(
        "users",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=True),
        sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("oidc_subject", sa.String(255), nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    _budgeted("memberships", sa.Column("workspace_id", sa.String(64), nullable=False),
              sa.Column("user_id", sa.String(64), nullable=False),
              sa.Column("role", sa.String(16), nullable=False),
              constraints=(sa.UniqueConstraint("workspace_id", "user_id", name="uq_memberships_workspace_user"),))
    # The same text the store writes (see schema.UTCDateTime): naive UTC on SQLite, timestamptz on PostgreSQL.
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    op.bulk_insert(sa.table("workspaces", sa.column("id"), sa.column("name"), sa.column("created_at"),
                            sa.column("updated_at")),
                   [{"id": DEFAULT, "name": DEFAULT, "created_at": now, "updated_at": now}])
    op.bulk_insert(sa.table("environments", sa.column("id"), sa.column("workspace_id"), sa.column("name"),
                            sa.column("created_at"), sa.column("updated_at")),
                   [{"id": DEFAULT, "workspace_id": DEFAULT, "name": DEFAULT, "created_at": now, "updated_at": now}])
    # server_default fills the existing rows: every key made before workspaces belongs to the default ones.
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("workspace_id", sa.String(64), nullable=False, server_default=DEFAULT))
        batch.add_column(sa.Column("environment_id", sa.String(64), nullable=False, server_default=DEFAULT))
        batch.add_column(sa.Column("user_id", sa.String(64), nullable=True))
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("workspace_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("environment_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("user_id", sa.String(64), nullable=True))
    # Records of keys are the default workspace's (the master key's stay without one, as its new ones do).
    op.execute(sa.text("UPDATE generations SET workspace_id = :d, environment_id = :d WHERE key_hash IS NOT NULL")
               .bindparams(d=DEFAULT))
    op.create_index("ix_generations_workspace_id_created_at", "generations", ["workspace_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_generations_workspace_id_created_at", table_name="generations")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("user_id")
        batch.drop_column("environment_id")
        batch.drop_column("workspace_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("user_id")
        batch.drop_column("environment_id")
        batch.drop_column("workspace_id")
    for table in ("memberships", "users", "environments", "workspaces"):
        op.drop_table(table)
