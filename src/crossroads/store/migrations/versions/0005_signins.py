"""dashboard_sessions and oauth_grants: dashboard sign-ins and OAuth PKCE grants shared by every process.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=True),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("flash", sa.Text, nullable=True),
    )
    op.create_index("ix_dashboard_sessions_key_hash", "dashboard_sessions", ["key_hash"])
    op.create_table(
        "oauth_grants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("limit", sa.Float, nullable=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("challenge", sa.Text, nullable=True),
        sa.Column("method", sa.String(8), nullable=True),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("oauth_grants")
    op.drop_index("ix_dashboard_sessions_key_hash", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
