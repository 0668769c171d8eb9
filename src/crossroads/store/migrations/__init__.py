"""Alembic environment of the store (run by `crossroads.store.migrate`; no alembic.ini needed)."""
