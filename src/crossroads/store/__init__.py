"""Persistence: API keys (hashes only) and generation records, on SQLite (default) or PostgreSQL.

See README.md beside this file for the interface contract."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from crossroads.store.engine import StoreUnavailable
from crossroads.store.migrate import migrate
from crossroads.store.rows import GenerationRow, KeyRow
from crossroads.store.store import Store

if TYPE_CHECKING:
    from crossroads.config import ServerConfig

__all__ = ["GenerationRow", "KeyRow", "Store", "StoreUnavailable", "database_url", "migrate"]


def database_url(server: ServerConfig) -> str:
    """CROSSROADS_DATABASE_URL, else ``server.database_url``, else an SQLite file ``crossroads.db`` in data_dir
    (made absolute, so that it does not depend on a later working directory)."""
    url = os.environ.get("CROSSROADS_DATABASE_URL") or server.database_url
    if url:
        return url
    return f"sqlite:///{Path(server.data_dir).expanduser().absolute() / 'crossroads.db'}"
