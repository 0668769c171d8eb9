"""API keys get capacity limits and a priority (rpm, tpm, priority); generations get events; stored_responses.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rpm", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tpm", sa.Integer, nullable=True))
        batch.add_column(sa.Column("priority", sa.String(16), nullable=False, server_default="normal"))
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("events", sa.JSON, nullable=True))
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stored_responses")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("events")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("priority")
        batch.drop_column("tpm")
        batch.drop_column("rpm")
