"""URLs, engines and the mapping of driver errors to `StoreUnavailable` (shared by the store and the migrations)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from crossroads.store.text import dumps  # JSON columns: NUL and lone surrogates replaced (store/text.py)

SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT = 10.0  # seconds asyncpg may take to open one connection


class StoreUnavailable(Exception):
    """The database cannot be reached right now (down, unreachable, locked for too long, read-only, disk full).
    The operation did not happen; retrying later may succeed. Other database errors propagate unchanged."""


def async_url(url: str) -> URL:
    """The SQLAlchemy async URL for a user-facing URL (``postgres://``, ``postgresql://``, ``sqlite:///path``...)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError as exc:
        raise ValueError(f"invalid database URL {url!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        query = dict(parsed.query)
        if "sslmode" in query and "ssl" not in query:  # libpq spelling -> asyncpg's
            query["ssl"] = query.pop("sslmode")
            parsed = parsed.set(query=query)
        return parsed
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
            raise ValueError(f"database URL {url!r}: SQLite needs a file path, e.g. sqlite:///data/crossroads.db")
        return parsed.set(drivername="sqlite+aiosqlite")
    raise ValueError(f"database URL {url!r}: unsupported backend {backend!r} (use postgresql:// or sqlite:///PATH)")


def sqlite_path(url: URL) -> Path | None:
    return Path(url.database).expanduser() if url.get_backend_name() == "sqlite" and url.database else None


def create_engine(url: URL, *, pool: bool = True, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> AsyncEngine:
    """An async engine. SQLite: WAL, busy_timeout, foreign keys, and real transactions (the driver's implicit BEGIN is
    replaced by ours; connections with the execution option ``crossroads_write`` begin with BEGIN IMMEDIATE, so a
    write transaction waits for the lock up front instead of failing on a read-to-write upgrade). Every backend
    serialises JSON columns with `text.dumps`, which replaces what the databases cannot store."""
    if url.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_ms / 1000}, "json_serializer": dumps}
        if pool:
            kwargs.update(pool_size=4, max_overflow=4, pool_pre_ping=False)
        else:
            kwargs["poolclass"] = NullPool
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # autocommit at the driver level; BEGIN is ours (below)
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            write = connection.get_execution_options().get("crossroads_write")
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    connect_args = {"timeout": PG_CONNECT_TIMEOUT}
    if pool:
        return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True, pool_recycle=1800,
                                   pool_timeout=30, connect_args=connect_args, json_serializer=dumps)
    return create_async_engine(url, poolclass=NullPool, connect_args=connect_args, json_serializer=dumps)


# SQLite result codes that mean "the database cannot be used right now" rather than "this statement is wrong".
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_READONLY",
                       "SQLITE_FULL", "SQLITE_PROTOCOL", "SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_PERM")
# PostgreSQL SQLSTATEs: connection exceptions (08xxx), shutdown / starting up, too many connections.
_PG_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "53300", "53100")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend([getattr(item, "orig", None), item.__cause__])


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, StoreUnavailable):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        errorname = getattr(exc.orig, "sqlite_errorname", None)
        if errorname is not None:
            return errorname.startswith(_SQLITE_UNAVAILABLE)
        if isinstance(exc, sa_exc.OperationalError) and exc.orig is not None and \
                type(exc.orig).__module__.startswith("sqlite3"):
            return True  # an old sqlite3 without error names: OperationalError is mostly "cannot open / locked"
    elif isinstance(exc, (sa_exc.TimeoutError, OSError)):  # pool exhausted; refused, unreachable, DNS, timeouts
        return True
    for item in _chain(exc):
        state = getattr(item, "sqlstate", None)
        if isinstance(state, str) and (state.startswith("08") or state in _PG_UNAVAILABLE_STATES):
            return True
        if isinstance(item, OSError):
            return True
        # asyncpg's client-side connection errors (ConnectionDoesNotExistError is one) derive from its InterfaceError
        if type(item).__module__.startswith("asyncpg") and any(
                base.__name__ == "InterfaceError" for base in type(item).__mro__):
            return True
    return False


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise connection-level failures as `StoreUnavailable`; everything else unchanged."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        raise
