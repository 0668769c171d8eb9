"""credit_accounts and credit_reservations: the credit-limit ledger shared by every process on PostgreSQL without
Redis (gate/pg_credits.py).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    zero = sa.text("0")
    op.create_table(
        "credit_accounts",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("spent_total", sa.Float, nullable=False, server_default=zero),
        sa.Column("day", sa.Text, nullable=False, server_default=""),
        sa.Column("spent_day", sa.Float, nullable=False, server_default=zero),
        sa.Column("week", sa.Text, nullable=False, server_default=""),
        sa.Column("spent_week", sa.Float, nullable=False, server_default=zero),
        sa.Column("month", sa.Text, nullable=False, server_default=""),
        sa.Column("spent_month", sa.Float, nullable=False, server_default=zero),
        sa.Column("reserved", sa.Float, nullable=False, server_default=zero),
    )
    op.create_table(
        "credit_reservations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_credit_reservations_key_hash", "credit_reservations", ["key_hash"])


def downgrade() -> None:
    op.drop_index("ix_credit_reservations_key_hash", table_name="credit_reservations")
    op.drop_table("credit_reservations")
    op.drop_table("credit_accounts")
