"""crossroads.store against SQLite (always) and PostgreSQL (when CROSSROADS_TEST_POSTGRES_URL is set, e.g. by
`eval "$(scripts/ci-services.sh)"`). Every PostgreSQL test gets a database of its own, dropped afterwards."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import exc as sa_exc
from sqlalchemy import types as sa_types
from sqlalchemy.engine import make_url

from crossroads.config import ServerConfig
from crossroads.store import GenerationRow, KeyRow, Store, StoreUnavailable, database_url, migrate
from crossroads.store.engine import async_url, create_engine
from crossroads.store.rows import to_record

PG_URL = os.environ.get("CROSSROADS_TEST_POSTGRES_URL")
pytestmark = pytest.mark.asyncio(loop_scope="module")
T = TypeVar("T")

BACKENDS = [
    "sqlite",
    # Under CI a missing server is a failure (the fixture asserts), never a silent skip.
    pytest.param("postgres", marks=pytest.mark.skipif(
        not PG_URL and not os.environ.get("CI"),
        reason="CROSSROADS_TEST_POSTGRES_URL not set (run: eval \"$(scripts/ci-services.sh)\")")),
]


def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


async def _admin(sql: str) -> None:
    assert PG_URL, "CROSSROADS_TEST_POSTGRES_URL is not set"
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest_asyncio.fixture(params=BACKENDS, loop_scope="module")
async def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty, unmigrated database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'crossroads.db'}"
        return
    name = f"crossroads_t_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture(loop_scope="module")
async def store(fresh_url: str) -> AsyncIterator[Store]:
    await asyncio.to_thread(migrate, fresh_url)
    store = await Store.open(fresh_url)
    try:
        yield store
    finally:
        await store.close()


def key(n: int, **changes: Any) -> KeyRow:
    values: dict[str, Any] = {"hash": f"{n:064x}", "name": f"key {n}", "label": f"sk-or-v1-{n:03d}...f00"}
    values.update(changes)
    return KeyRow(**values)


T0 = datetime(2025, 3, 12, 15, 30, 0, 123456, tzinfo=UTC)


def gen(id: str, created_at: datetime = T0, *, key_hash: str | None = "a" * 64, model: str = "openai/gpt-4o",
        cost: float = 1.0, **changes: Any) -> GenerationRow:
    values: dict[str, Any] = {
        "id": id, "created_at": created_at, "key_hash": key_hash, "model": model, "provider_name": "openai",
        "provider_type": "openai", "upstream_model": "gpt-4o", "upstream_id": f"chatcmpl-{id}", "cost": cost,
    }
    values.update(changes)
    return GenerationRow(**values)


async def insert(store: Store, rows: list[GenerationRow]) -> None:
    await store.insert_generations([to_record(row) for row in rows])


# --- URLs -------------------------------------------------------------------------------------------------------

async def test_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CROSSROADS_DATABASE_URL", raising=False)
    server = ServerConfig(data_dir=str(tmp_path / "data"))
    assert database_url(server) == f"sqlite:///{tmp_path / 'data' / 'crossroads.db'}"
    server.database_url = "postgresql://u:p@db/x"
    assert database_url(server) == "postgresql://u:p@db/x"
    monkeypatch.setenv("CROSSROADS_DATABASE_URL", "postgres://env/y")
    assert database_url(server) == "postgres://env/y"


async def test_async_url_normalisation() -> None:
    for url in ("postgres://u@h:5/d", "postgresql://u@h:5/d", "postgresql+asyncpg://u@h:5/d",
                "postgresql+psycopg://u@h:5/d"):
        assert async_url(url).drivername == "postgresql+asyncpg"
        assert async_url(url).database == "d"
    assert async_url("postgresql://h/d?sslmode=require").query == {"ssl": "require"}
    assert async_url("sqlite:///rel/x.db").drivername == "sqlite+aiosqlite"
    assert async_url("sqlite+aiosqlite:////abs/x.db").database == "/abs/x.db"
    for bad in ("mysql://h/d", "sqlite://", "sqlite:///:memory:", "not a url"):
        with pytest.raises(ValueError):
            async_url(bad)


# --- migrations ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite"])
async def test_migrate_creates_sqlite_folder(backend: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'c.db'}"
    migrate(url)  # from inside a running loop: runs on a helper thread
    assert (tmp_path / "a" / "b" / "c.db").exists()
    with sqlite3.connect(tmp_path / "a" / "b" / "c.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_migrate_twice_is_a_noop(fresh_url: str) -> None:
    await asyncio.to_thread(migrate, fresh_url)
    store = await Store.open(fresh_url)
    try:
        await store.insert_key(key(1))
        version = await store.keys_version()
        await asyncio.to_thread(migrate, fresh_url)
        assert await store.get_key(key(1).hash) is not None
        assert await store.keys_version() == version
        engine = create_engine(async_url(fresh_url), pool=False)
        async with engine.connect() as conn:
            rows = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
        await engine.dispose()
        from alembic.script import ScriptDirectory

        from crossroads.store.migrate import alembic_config

        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert head is not None and head >= "0002"
        assert [tuple(r) for r in rows] == [(head,)]
    finally:
        await store.close()


async def test_concurrent_migrations(fresh_url: str) -> None:
    await asyncio.gather(*(asyncio.to_thread(migrate, fresh_url) for _ in range(4)))
    store = await Store.open(fresh_url)
    try:
        assert await store.list_keys() == []
        assert await store.keys_version() == "0:0:None"
    finally:
        await store.close()


# --- keys ------------------------------------------------------------------------------------------------------

async def test_key_round_trip(store: Store) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=5)))
    row = key(1, limit=12.5, limit_reset="monthly", expires_at=expires, allowed_models=["openai/*", "x/y"],
              disabled=True, is_management=True)
    await store.insert_key(row)
    got = await store.get_key(row.hash)
    assert got is not None
    assert (got.hash, got.name, got.label, got.limit, got.limit_reset) == (row.hash, "key 1", row.label, 12.5, "monthly")
    assert got.allowed_models == ["openai/*", "x/y"]
    assert got.disabled is True and got.is_management is True
    assert got.expires_at == expires and got.expires_at.tzinfo is not None
    assert got.expires_at.utcoffset() == timedelta(0)
    assert got.created_at is not None and got.created_at.tzinfo is not None
    assert abs(got.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert got.updated_at == got.created_at

    plain = key(2)  # defaults: no limit, all models, explicit timestamps kept
    plain.created_at = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    await store.insert_key(plain)
    got2 = await store.get_key(plain.hash)
    assert got2 is not None
    assert (got2.limit, got2.limit_reset, got2.expires_at, got2.allowed_models) == (None, None, None, None)
    assert (got2.disabled, got2.is_management) == (False, False)
    assert got2.created_at == got2.updated_at == plain.created_at

    with pytest.raises(sa_exc.IntegrityError):
        await store.insert_key(key(1))

    updated = await store.update_key(row.hash, {"name": "renamed", "allowed_models": None, "limit": None,
                                                "disabled": False})
    assert updated is not None
    assert (updated.name, updated.allowed_models, updated.limit, updated.disabled) == ("renamed", None, None, False)
    assert updated.created_at == got.created_at
    assert updated.updated_at is not None and updated.updated_at >= got.created_at
    assert await store.get_key(row.hash) == updated
    assert await store.update_key("f" * 64, {"name": "x"}) is None
    with pytest.raises(ValueError):
        await store.update_key(row.hash, {"hash": "0" * 64})
    with pytest.raises(ValueError):
        await store.update_key(row.hash, {"nonsense": 1})

    assert [k.hash for k in await store.list_keys()] == [plain.hash, row.hash]  # oldest first
    assert await store.delete_key(row.hash) is True
    assert await store.delete_key(row.hash) is False
    assert await store.get_key(row.hash) is None
    assert [k.hash for k in await store.list_keys()] == [plain.hash]


async def test_list_keys_paging(store: Store) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    for n in range(5):
        await store.insert_key(key(n, created_at=base + timedelta(minutes=n)))
    assert [k.name for k in await store.list_keys()] == [f"key {n}" for n in range(5)]
    assert [k.name for k in await store.list_keys(offset=1, limit=2)] == ["key 1", "key 2"]
    assert [k.name for k in await store.list_keys(offset=4)] == ["key 4"]
    assert await store.list_keys(offset=9) == []
    assert await store.list_keys(limit=0) == []


async def test_keys_version_changes_on_every_write(store: Store) -> None:
    seen = [await store.keys_version()]

    async def changed() -> None:
        version = await store.keys_version()
        assert version not in seen
        seen.append(version)

    await store.insert_key(key(1))
    await changed()
    await store.insert_key(key(2))
    await changed()
    await store.update_key(key(1).hash, {"disabled": True})
    await changed()
    # same updated_at, same count: the counter still moves
    stamp = datetime(2020, 1, 1, tzinfo=UTC)
    await store.update_key(key(2).hash, {"name": "a", "updated_at": stamp})
    await changed()
    await store.update_key(key(2).hash, {"name": "b", "updated_at": stamp})
    await changed()
    await store.delete_key(key(1).hash)
    await changed()
    # misses leave it alone
    assert await store.update_key("e" * 64, {"name": "x"}) is None
    assert await store.delete_key("e" * 64) is False
    assert await store.keys_version() == seen[-1]
    assert await store.keys_version() == seen[-1]  # stable when nothing changes


# --- generations -------------------------------------------------------------------------------------------------

async def test_generation_round_trip(store: Store) -> None:
    full = gen("gen-1", created_at=datetime(2025, 3, 12, 20, 0, 0, 1, tzinfo=timezone(timedelta(hours=-4))),
               api_type="messages", streamed=True, cancelled=True, status=499, error="client went away",
               finish_reason="stop", native_finish_reason="end_turn", tokens_prompt=11, tokens_completion=22,
               tokens_reasoning=3, tokens_cached=4, tokens_cache_write=5, cost=0.000123, latency_ms=900,
               generation_time_ms=800, ttft_ms=120, http_referer="https://app.example", app_title="App",
               user="u-1", user_agent="ua/1",
               provider_responses=[{"provider": "openai", "status": 500, "latency": 12},
                                   {"provider": "openai", "status": 200, "id": "x", "nested": {"a": [1, 2]}}])
    master = gen("gen-2", key_hash=None, upstream_model=None, upstream_id=None, provider_name=None,
                 provider_type=None)
    await insert(store, [full, master])
    got = await store.get_generation("gen-1")
    assert got is not None
    assert got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert got == full  # aware datetimes compare by instant; every other field round-trips as is
    got_master = await store.get_generation("gen-2")
    assert got_master == master and got_master.provider_responses == []
    assert await store.get_generation("nope") is None
    await insert(store, [])


async def test_insert_generations_ignores_duplicate_ids(store: Store) -> None:
    await insert(store, [gen("g1", cost=1.0), gen("g2", cost=2.0)])
    # one already stored, one repeated within the batch, one new: the batch still goes in
    await insert(store, [gen("g1", cost=100.0, model="other"), gen("g3", cost=3.0),
                                    gen("g3", cost=300.0), gen("g4", cost=4.0)])
    g1 = await store.get_generation("g1")
    assert g1 is not None and (g1.cost, g1.model) == (1.0, "openai/gpt-4o")  # first write wins
    g3 = await store.get_generation("g3")
    assert g3 is not None and g3.cost == 3.0
    assert await store.total_spend() == pytest.approx(10.0)


async def test_concurrent_writers(store: Store) -> None:
    async def batch(n: int) -> None:
        await insert(store, [gen(f"c{n}-{i}", cost=0.5) for i in range(20)])

    await asyncio.gather(*(batch(n) for n in range(10)),
                         *(store.insert_key(key(n)) for n in range(10)))
    assert await store.total_spend() == pytest.approx(100.0)
    assert len(await store.list_keys()) == 10


async def test_key_spend_boundaries(store: Store) -> None:
    day = datetime(2025, 3, 12, tzinfo=UTC)  # a Wednesday
    week = datetime(2025, 3, 10, tzinfo=UTC)  # its Monday
    month = datetime(2025, 3, 1, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    a, b = "a" * 64, "b" * 64
    rows = [
        gen("a-day-at", day, key_hash=a, cost=1.0),
        gen("a-day-before", day - tick, key_hash=a, cost=2.0),  # in week and month
        gen("a-week-at", week, key_hash=a, cost=4.0),
        gen("a-week-before", week - tick, key_hash=a, cost=8.0),  # in month only
        gen("a-month-at", month, key_hash=a, cost=16.0),
        gen("a-month-before", month - tick, key_hash=a, cost=32.0),  # total only
        gen("a-later", day + timedelta(hours=10), key_hash=a, cost=64.0),
        # the same instant written with a non-UTC offset counts the same
        gen("b-day-at-offset", day.astimezone(timezone(timedelta(hours=9))), key_hash=b, cost=0.25),
        gen("b-old", month - timedelta(days=40), key_hash=b, cost=0.5),
        gen("master", day + tick, key_hash=None, cost=0.125),
    ]
    await insert(store, rows)
    spend = await store.key_spend({"daily": day, "weekly": week, "monthly": month})
    assert spend == {
        a: {"total": 127.0, "daily": 65.0, "weekly": 71.0, "monthly": 95.0},
        b: {"total": 0.75, "daily": 0.25, "weekly": 0.25, "monthly": 0.25},
        None: {"total": 0.125, "daily": 0.125, "weekly": 0.125, "monthly": 0.125},
    }
    assert await store.key_spend({}) == {a: {"total": 127.0}, b: {"total": 0.75}, None: {"total": 0.125}}
    assert await store.total_spend() == pytest.approx(127.875)


async def test_key_spend_empty(store: Store) -> None:
    assert await store.key_spend({"daily": T0}) == {}
    assert await store.total_spend() == 0.0


async def test_activity(store: Store) -> None:
    a, b = "a" * 64, "b" * 64
    d1, d3 = date(2025, 3, 10), date(2025, 3, 12)
    start = datetime(2025, 3, 10, tzinfo=UTC)
    end = datetime(2025, 3, 13, tzinfo=UTC)  # exclusive
    tick = timedelta(microseconds=1)
    rows = [
        gen("before", start - tick, key_hash=a, cost=1000.0),
        gen("first", start, key_hash=a, cost=1.0, tokens_prompt=10, tokens_completion=5, tokens_reasoning=1),
        gen("first-2", start + timedelta(hours=5), key_hash=a, cost=2.0, tokens_prompt=20, tokens_completion=6),
        gen("first-other-model", start + timedelta(hours=6), key_hash=a, model="anthropic/claude", cost=4.0),
        gen("first-b", start + timedelta(hours=7), key_hash=b, cost=8.0, tokens_prompt=1, tokens_cached=1),
        # the same model served by another connection is a row of its own
        gen("first-b-azure", start + timedelta(hours=7), key_hash=b, cost=0.5, provider_name="azure"),
        gen("first-master", start + timedelta(hours=8), key_hash=None, cost=16.0),
        # 2025-03-11 23:30 at -05:00 is 2025-03-12 04:30 UTC: grouped under the UTC date
        gen("offset", datetime(2025, 3, 11, 23, 30, tzinfo=timezone(timedelta(hours=-5))), key_hash=a, cost=32.0),
        gen("last", end - tick, key_hash=a, cost=64.0, tokens_reasoning=7),
        gen("after", end, key_hash=a, cost=2000.0),
    ]
    await insert(store, rows)

    def entry(day: str, model: str, key_hash: str | None, requests: int, cost: float, prompt: int = 0,
              completion: int = 0, reasoning: int = 0, cached: int = 0, provider: str = "openai") -> dict:
        return {"date": day, "model": model, "provider_name": provider, "key_hash": key_hash, "requests": requests,
                "cost": cost, "prompt_tokens": prompt, "completion_tokens": completion, "reasoning_tokens": reasoning,
                "cached_tokens": cached}

    everything = await store.activity(d1, d3, None)
    assert everything == [
        entry("2025-03-10", "anthropic/claude", a, 1, 4.0),
        entry("2025-03-10", "openai/gpt-4o", b, 1, 0.5, provider="azure"),
        entry("2025-03-10", "openai/gpt-4o", None, 1, 16.0),
        entry("2025-03-10", "openai/gpt-4o", a, 2, 3.0, 30, 11, 1),
        entry("2025-03-10", "openai/gpt-4o", b, 1, 8.0, 1, cached=1),
        entry("2025-03-12", "openai/gpt-4o", a, 2, 96.0, 0, 0, 7),
    ]
    assert await store.activity(d1, d3, b) == [entry("2025-03-10", "openai/gpt-4o", b, 1, 0.5, provider="azure"),
                                               entry("2025-03-10", "openai/gpt-4o", b, 1, 8.0, 1, cached=1)]
    assert await store.activity(d3, d3, a) == [entry("2025-03-12", "openai/gpt-4o", a, 2, 96.0, 0, 0, 7)]
    assert await store.activity(date(2025, 3, 11), date(2025, 3, 11), None) == []
    assert await store.activity(date(2025, 3, 9), date(2025, 3, 9), None) == [
        entry("2025-03-09", "openai/gpt-4o", a, 1, 1000.0)]
    assert await store.activity(date(2025, 3, 13), date(2025, 3, 13), a) == [
        entry("2025-03-13", "openai/gpt-4o", a, 1, 2000.0)]
    assert await store.activity(d1, d3, "c" * 64) == []


# --- failures --------------------------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _all_unavailable(store: Store) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        store.ping, lambda: store.get_key("a" * 64), lambda: store.insert_key(key(1)), store.list_keys,
        store.keys_version, lambda: store.update_key("a" * 64, {"name": "x"}), lambda: store.delete_key("a" * 64),
        lambda: insert(store, [gen("x")]), lambda: store.get_generation("x"),
        lambda: store.key_spend({"daily": T0}), lambda: store.activity(T0.date(), T0.date(), None),
        store.total_spend,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()


async def test_unavailable_postgres_closed_port() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/crossroads"
    store = await Store.open(url)  # lazy: opening does not connect
    try:
        await _all_unavailable(store)
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await asyncio.to_thread(migrate, url)


async def test_unavailable_sqlite_folder_removed(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    url = f"sqlite:///{folder / 'crossroads.db'}"
    await asyncio.to_thread(migrate, url)
    store = await Store.open(url)
    await store.insert_key(key(1))
    await store.close()  # drop pooled connections (they would keep the unlinked file open)
    shutil.rmtree(folder)
    store = await Store.open(url)
    try:
        await _all_unavailable(store)
    finally:
        await store.close()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
async def test_unavailable_sqlite_read_only(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    url = f"sqlite:///{folder / 'crossroads.db'}"
    await asyncio.to_thread(migrate, url)
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    store = await Store.open(url)
    try:
        with pytest.raises(StoreUnavailable):
            await store.insert_key(key(1))
    finally:
        await store.close()
        folder.chmod(0o755)


async def test_unavailable_sqlite_locked_too_long(tmp_path: Path) -> None:
    path = tmp_path / "crossroads.db"
    url = f"sqlite:///{path}"
    await asyncio.to_thread(migrate, url)
    store = Store(create_engine(async_url(url), busy_timeout_ms=200))
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable):
            await store.insert_key(key(1))
        assert await store.get_key(key(1).hash) is None  # readers are not blocked (WAL)
        blocker.execute("ROLLBACK")
        await store.insert_key(key(1))  # and it recovers once the lock is gone
        assert await store.get_key(key(1).hash) is not None
    finally:
        blocker.close()
        await store.close()


async def test_other_errors_propagate(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'unmigrated.db'}")
    try:
        with pytest.raises(sa_exc.OperationalError, match="no such table") as info:
            await store.get_key("a" * 64)
        assert not isinstance(info.value, StoreUnavailable)
    finally:
        await store.close()


async def test_stored_responses_round_trip(fresh_url: str) -> None:
    await asyncio.to_thread(migrate, fresh_url)
    store = await Store.open(fresh_url)
    try:
        history = [{"type": "message", "role": "user", "content": "hi"}]
        await store.put_response("resp_1", "h" * 64, history, {"id": "resp_1", "output": []})
        assert await store.get_response("resp_1") == ("h" * 64, history, {"id": "resp_1", "output": []})
        assert await store.get_response("resp_2") is None
        assert await store.delete_response("resp_1") is True
        assert await store.delete_response("resp_1") is False
    finally:
        await store.close()


# --- text the databases refuse (NUL, lone surrogates) ----------------------------------------------------------

NUL, SURROGATE = "a\x00b", "a\ud800b"  # PostgreSQL's text refuses NUL; no driver can encode a lone surrogate
CLEANED = "a\ufffdb"


async def test_clean_text() -> None:
    from crossroads.store.text import clean_json_text, clean_text, dumps

    plain = "plain ascii"
    assert clean_text(plain) is plain  # nothing to replace: the same object, no copy
    assert clean_text(NUL) == clean_text(SURROGATE) == CLEANED
    assert clean_text("\x00\udcff é \ud83d\ude00") == "\ufffd\ufffd é 😀"  # surrogate halves of one character joined
    assert clean_json_text('{"a": "x\\u0000", "b": ["\\ud800"], "c": "\\ud83d\\ude00"}') == \
        '{"a":"x\ufffd","b":["\ufffd"],"c":"😀"}'
    assert clean_json_text('{"a":"\\\\u0000"}') == '{"a":"\\\\u0000"}'  # an escaped backslash, not a NUL
    assert dumps({"k\x00": [NUL, SURROGATE, 1, None]}) == '{"k\ufffd":["a\ufffdb","a\ufffdb",1,null]}'


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_generation_text_is_cleaned(store: Store, bad: str) -> None:
    """Every text column of generations (and the JSON ones, escaped as the stdlib writes them) takes NUL and lone
    surrogates: the record is written with U+FFFD in their place instead of being refused."""
    import json

    from crossroads.store.rows import GENERATION_COLUMNS, JSON_COLUMNS
    from crossroads.store.schema import generations

    text_columns = [c.name for c in generations.columns
                    if isinstance(c.type, sa_types.String) and c.name not in JSON_COLUMNS]
    assert {"id", "model", "user", "user_agent", "app_title", "http_referer", "error", "upstream_id"} <= \
        set(text_columns)
    values = {name: f"{bad}{name[:8]}" for name in text_columns}
    record = list(to_record(gen(values["id"])))
    for name, value in values.items():
        record[GENERATION_COLUMNS.index(name)] = value
    for name in JSON_COLUMNS:
        record[GENERATION_COLUMNS.index(name)] = json.dumps([{"error": bad, bad: 1}])  # "\u0000" / "\ud800" escapes
    await store.insert_generations([tuple(record), to_record(gen("clean-neighbour"))])
    got = await store.get_generation(values["id"])  # looked up by the same (uncleaned) id
    assert got is not None
    for name in text_columns:
        assert getattr(got, name) == f"{CLEANED}{name[:8]}", name
    assert got.provider_responses == got.events == [{"error": CLEANED, CLEANED: 1}]
    assert await store.get_generation("clean-neighbour") is not None
    assert await store.get_generation(f"{bad}nothing") is None


@pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_key_and_stored_response_text_is_cleaned(store: Store, bad: str) -> None:
    await store.insert_key(key(1, name=bad, label=bad, allowed_models=[bad, "x/*"], limit_reset=bad, priority=bad))
    got = await store.get_key(key(1).hash)
    assert got is not None and (got.name, got.label, got.allowed_models) == (CLEANED, CLEANED, [CLEANED, "x/*"])
    assert (got.limit_reset, got.priority) == (CLEANED, CLEANED)
    await store.insert_key(key(2, hash=f"{bad}-hash"))
    stored = await store.get_key(f"{bad}-hash")  # the lookup is cleaned the same way
    assert stored is not None and stored.hash == f"{CLEANED}-hash"
    updated = await store.update_key(key(1).hash, {"name": bad + "2", "allowed_models": [bad]})
    assert updated is not None and (updated.name, updated.allowed_models) == (CLEANED + "2", [CLEANED])
    assert await store.get_key(bad) is None  # a lookup with such text is an ordinary miss, not a database error
    assert await store.update_key(bad, {"name": "x"}) is None
    assert await store.delete_key(bad) is False

    history = [{"type": "message", "role": "user", "content": bad}]
    response = {"id": f"resp_{bad}", "output": [{"type": "output_text", "text": bad}], bad: bad}
    await store.put_response(f"resp_{bad}", "h" * 64, history, response)
    assert await store.get_response(f"resp_{bad}") == (
        "h" * 64, [{"type": "message", "role": "user", "content": CLEANED}],
        {"id": f"resp_{CLEANED}", "output": [{"type": "output_text", "text": CLEANED}], CLEANED: CLEANED})
    assert await store.delete_response(f"resp_{bad}") is True


async def test_migrations_build_the_schema_the_code_declares(fresh_url: str) -> None:
    """Every table and column of store/schema.py exists, of the same type, after the migrations run (a column added
    to the schema without a migration, or the reverse, fails here), on each backend."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from crossroads.store.schema import metadata

    await asyncio.to_thread(migrate, fresh_url)
    engine = create_engine(async_url(fresh_url), pool=False)
    try:
        async with engine.connect() as conn:
            diffs = await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), metadata))
    finally:
        await engine.dispose()
    assert diffs == [], diffs
