"""Members in the dashboard: a session may be a person's (user_id) and remembers the workspace it looks at; pending
invitations (one-time links) to join a workspace; an OAuth grant knows where the key it makes belongs.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.add_column(sa.Column("user_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("workspace_id", sa.String(64), nullable=True))
    op.create_index("ix_dashboard_sessions_user_id", "dashboard_sessions", ["user_id"])
    with op.batch_alter_table("oauth_grants") as batch:
        batch.add_column(sa.Column("workspace_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("environment_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("owner_id", sa.String(64), nullable=True))
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(64), primary_key=True),  # the SHA-256 of the link's token
        sa.Column("workspace_id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("budget_limit", sa.Float, nullable=True),
        sa.Column("budget_reset", sa.String(16), nullable=True),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invitations")
    with op.batch_alter_table("oauth_grants") as batch:
        batch.drop_column("owner_id")
        batch.drop_column("environment_id")
        batch.drop_column("workspace_id")
    op.drop_index("ix_dashboard_sessions_user_id", table_name="dashboard_sessions")
    with op.batch_alter_table("dashboard_sessions") as batch:
        batch.drop_column("workspace_id")
        batch.drop_column("user_id")
