"""`migrate(url)`: Alembic ``upgrade head``, configured in code (no alembic.ini), over the async drivers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossroads.store.engine import async_url, create_engine, sqlite_path, translate_errors

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATE_SQLITE_BUSY_TIMEOUT_MS = 120_000
_thread_lock = threading.Lock()


def alembic_config() -> AlembicConfig:
    _quiet_alembic()  # before alembic is imported: it logs its plugins' set-up at import
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    return cfg


def known_revisions() -> list[str]:
    """The schema revisions this code knows, newest first (the first is what `migrate` brings a database to)."""
    from alembic.script import ScriptDirectory

    return [script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()]


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to the newest schema (or to `revision`: tests of an upgrade from an older one).
    Idempotent; safe to run from several processes at once.

    Creates the SQLite file's folder. Synchronous: runs its own event loop (on a helper thread when called from
    inside a running loop, which it then blocks until done). Raises `StoreUnavailable` when the database cannot be
    reached, ValueError for an unusable URL."""
    target = async_url(url)
    path = sqlite_path(target)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    # Alembic's `context` is module-global, hence the process-wide lock; across processes, see _sqlite_lock / env.py.
    with _thread_lock, _sqlite_lock(path):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_migrate(target, revision))
            return
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="crossroads-migrate") as pool:
            pool.submit(asyncio.run, _migrate(target, revision)).result()


@contextlib.contextmanager
def _sqlite_lock(path: Path | None) -> Iterator[None]:
    """Serialise SQLite migrations across processes: switching a new file to WAL while another connection
    holds its write lock can deadlock until the busy timeout. PostgreSQL uses an advisory lock in env.py instead."""
    if path is None:
        yield
        return
    with open(f"{path}.migrate-lock", "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: the transaction (BEGIN IMMEDIATE + busy timeout) is all there is
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def _migrate(target: Any, revision: str) -> None:
    engine = create_engine(target, pool=False, busy_timeout_ms=MIGRATE_SQLITE_BUSY_TIMEOUT_MS)
    try:
        with translate_errors():
            async with engine.connect() as connection:
                connection = await connection.execution_options(crossroads_write=True)
                await connection.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()


class _InfoAsDebug(logging.Filter):
    """Alembic's INFO lines (plugin set-up, "Context impl", "Will assume transactional DDL", each upgrade step) come on
    every start: they are logged at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_INFO_AS_DEBUG = _InfoAsDebug()


def _quiet_alembic() -> None:
    # The level keeps INFO out of loggers without the filter too (a module alembic imports later).
    parent = logging.getLogger("alembic")
    parent.setLevel(logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.WARNING)
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if (name == "alembic" or name.startswith("alembic.")) and isinstance(logger, logging.Logger) \
                and _INFO_AS_DEBUG not in logger.filters:
            logger.addFilter(_INFO_AS_DEBUG)


def _upgrade(connection: Any, revision: str) -> None:
    cfg = alembic_config()
    from alembic import command

    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)
