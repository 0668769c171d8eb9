"""API keys: generation, hashing, and the in-memory view every request is authenticated against.

Only a SHA-256 hash of a key is stored (keys carry 256 random bits, so a plain hash cannot be reversed); the
plaintext exists once, in the creation response. The cache answers every request from memory and follows changes
made by other processes (other workers, the `crossroads keys` CLI) by polling a cheap version stamp.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from crossroads.gate.directory import Directory
from crossroads.observability.logs import OncePer
from crossroads.observability.metrics import count_store_error
from crossroads.store.loops import Stopping
from crossroads.store.rows import KeyRow

if TYPE_CHECKING:
    from crossroads.store import Store

log = logging.getLogger("crossroads.keys")

KEY_PREFIX = "sk-or-v1-"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(32)


def hash_key(plaintext: str | bytes) -> str:
    data = plaintext.encode() if isinstance(plaintext, str) else plaintext
    return hashlib.sha256(data).hexdigest()


def display_label(plaintext: str) -> str:
    """What lists show: enough to recognise a key, never enough to use it."""
    return f"{plaintext[:len(KEY_PREFIX) + 3]}...{plaintext[-3:]}"


def model_allowed(patterns: Iterable[str] | None, model_id: str) -> bool:
    if patterns is None:
        return True
    return any(p == model_id or fnmatchcase(model_id, p) for p in patterns)


def is_expired(key: KeyRow, now: datetime | None = None) -> bool:
    return key.expires_at is not None and key.expires_at <= (now or datetime.now(UTC))


class KeyCache:
    """hash -> KeyRow, loaded at start-up, updated in place by this process's writes and by polling for others'."""

    # Half a second: a key created, changed or disabled through any process (of any instance) applies on every
    # other within a second, at the cost of one single-row read per process every half second.
    def __init__(self, store: Store, *, poll_interval: float = 0.5) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.keys: dict[str, KeyRow] = {}
        self.directory = Directory()  # workspaces, environments, users, memberships: loaded with the keys
        self._version: str | None = None
        self._during_load: list[tuple[Any, bool]] | None = None  # see load
        self._task: asyncio.Task[None] | None = None
        self._stopping = Stopping()
        self._store_down = OncePer(log)  # polled every second: one line per 30 s of an outage, not one per poll

    async def load(self) -> None:
        # This process's own writes made while the load is under way (`put`, `drop`) are applied on top of what it
        # read: the rows may have been read before them, and replacing the cache with those would hide a key just
        # created here until the next poll.
        during: list[tuple[Any, bool]] = []
        self._during_load = during
        try:
            version = await self.store.keys_version()
            await self.reload_directory()
            keys = {row.hash: row for row in await self.store.list_keys()}
            for row, dropped in during:
                if dropped:
                    keys.pop(row, None)
                else:
                    loaded = keys.get(row.hash)
                    if loaded is None or _newer_or_same(row, loaded):
                        keys[row.hash] = row
            self.keys = keys
            self.directory.forget_chains()
            self._version = version
        finally:
            self._during_load = None

    def start(self) -> None:
        self._stopping = Stopping()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await self._stopping.stop(task)  # between two polls (store/loops.py says why)

    def get(self, key_hash: str) -> KeyRow | None:
        return self.keys.get(key_hash)

    def put(self, row: KeyRow) -> None:
        self.keys[row.hash] = row
        self.directory.forget_chains()
        if self._during_load is not None:
            self._during_load.append((row, False))

    def drop(self, key_hash: str) -> None:
        self.keys.pop(key_hash, None)
        self.directory.forget_chains()
        if self._during_load is not None:
            self._during_load.append((key_hash, True))

    async def reload_directory(self) -> None:
        """Load workspaces, environments, users and memberships now: the management API reads and writes them
        through whichever worker a request reaches, so it starts from the database's (a few small queries), not from
        what this process last polled."""
        from crossroads.store.directory import DirectoryStore

        directory = DirectoryStore(self.store)
        self.directory = Directory.of(await directory.workspaces(), await directory.environments(),
                                      await directory.users(), await directory.memberships())

    async def _poll(self) -> None:
        while await self._stopping.pause(self.poll_interval):
            try:
                version = await self.store.keys_version()
                if version != self._version:
                    await self.load()
            except Exception as exc:  # noqa: BLE001 - the DB may be briefly away; keep serving from memory
                count_store_error()
                self._store_down.warning("could not refresh API keys from the store (serving the keys in memory): %s",
                                         type(exc).__name__)


def _newer_or_same(row: KeyRow, loaded: KeyRow) -> bool:
    if row.updated_at is None or loaded.updated_at is None:
        return True
    return row.updated_at >= loaded.updated_at


# What `crossroads serve` records in the store's meta table while it runs, so that the key CLI (another process, maybe
# on another host) applies the same rule as the running gateway's API.
SERVE_WORKERS = "serve_workers"
SERVE_SHARED_COUNTERS = "serve_shared_counters"


def multiprocess_policy_problem(changes: dict, *, workers: int, shared_counters: bool,
                                shared_credits: bool | None = None) -> str | None:
    """Why a key change cannot hold while the gateway runs `workers` processes (every worker of every instance), or
    None. `shared_counters`: rate-limit counters live in Redis (CROSSROADS_REDIS_URL). `shared_credits`: credit
    limits live in a shared ledger (Redis, or PostgreSQL without it; default: as `shared_counters`). What is not
    shared is kept per process and needs a single one."""
    if shared_credits is None:
        shared_credits = shared_counters
    if workers > 1 and not shared_credits and changes.get("limit") is not None:
        return (f"Credit limits are enforced in one process unless CROSSROADS_REDIS_URL points at a shared Redis (or "
                f"the database is PostgreSQL); {workers} worker processes (--workers, over every instance) serve "
                "this database. Set CROSSROADS_REDIS_URL or run a single worker to use key limits.")
    if workers > 1 and not shared_counters and (changes.get("rpm") or changes.get("tpm")):
        return (f"Rate limits need CROSSROADS_REDIS_URL when {workers} worker processes serve this database (each "
                "would otherwise count alone).")
    return None
