"""Alembic environment. `crossroads.store.migrate` passes an open (sync-facade) connection in
``config.attributes["connection"]``; the migrations run in one transaction on it."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from crossroads.store.schema import metadata

# An arbitrary constant: concurrent `migrate` calls on PostgreSQL queue on this transaction-scoped advisory lock.
_PG_LOCK_ID = 0x63726F7373  # "cross"


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through crossroads.store.migrate(url)")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # SQLite supports transactional DDL; the store's engine issues real BEGIN (IMMEDIATE) statements, so the
        # whole upgrade is one transaction holding the write lock and a concurrent `migrate` waits, then finds
        # nothing to do.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
run_migrations_online()
