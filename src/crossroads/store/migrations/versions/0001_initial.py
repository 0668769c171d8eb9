"""Initial schema: api_keys, generations, meta.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("limit", sa.Float, nullable=True),
        sa.Column("limit_reset", sa.String(16), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("allowed_models", sa.JSON, nullable=True),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("is_management", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "generations",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
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
        sa.Column("provider_responses", sa.JSON, nullable=True),
    )
    op.create_index("ix_generations_key_hash_created_at", "generations", ["key_hash", "created_at"])
    op.create_index("ix_generations_created_at", "generations", ["created_at"])
    meta = op.create_table(
        "meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(meta, [{"name": "keys_version", "value": 0}])


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_index("ix_generations_created_at", table_name="generations")
    op.drop_index("ix_generations_key_hash_created_at", table_name="generations")
    op.drop_table("generations")
    op.drop_table("api_keys")
