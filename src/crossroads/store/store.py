"""`Store`: API keys and generation records over an async SQLAlchemy engine (aiosqlite or asyncpg).

Text bound for the database is cleaned first (`text.py`: NUL and lone surrogates become U+FFFD), so a value a client
or an upstream sent can never make a write fail."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from crossroads.store.engine import async_url, create_engine, translate_errors
from crossroads.store.rows import (
    GENERATION_COLUMNS,
    JSON_COLUMNS,
    GenerationRecord,
    GenerationRow,
    InstanceRow,
    KeyRow,
)
from crossroads.store.schema import UTCDateTime, api_keys, generations, instances, meta, stored_responses
from crossroads.store.text import clean_records, clean_text, clean_value

_KEY_FIELDS = tuple(f.name for f in dataclasses.fields(KeyRow))
_KEY_MUTABLE = frozenset(_KEY_FIELDS) - {"hash", "created_at"}
_KEYS_VERSION = "keys_version"


# SQLite takes at most 32766 bound variables per statement (999 before 3.32).
_SQLITE_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
# 64 rows a statement (1,920 parameters), far under that bound: the writer thread binds a statement's parameters
# holding the GIL, so one huge statement (1,024 rows) stalled the event loop for milliseconds once a second, which was
# most of the gateway's p99 at low concurrency (measured by bench/run.py's target 5).
_SQLITE_ROWS_PER_INSERT = min(64, 1 << ((_SQLITE_MAX_VARIABLES // len(GENERATION_COLUMNS)).bit_length() - 1))
_SQLITE_INSERT_HEAD = (f"INSERT OR IGNORE INTO generations ({', '.join(f'{chr(34)}{n}{chr(34)}' for n in GENERATION_COLUMNS)})"
                       " VALUES ")
_SQLITE_ROW_PLACEHOLDERS = "(" + ",".join("?" * len(GENERATION_COLUMNS)) + ")"
# Guard: a record carries datetimes and JSON as text (see rows.GenerationRecord); a new column of either kind must be
# converted there too.
if {c.name for c in generations.columns if isinstance(c.type, sa.JSON | UTCDateTime)} != {"created_at", *JSON_COLUMNS}:
    raise RuntimeError("update GenerationRecord (store/rows.py) for the new generations columns")
if tuple(c.name for c in generations.columns) != GENERATION_COLUMNS:
    raise RuntimeError("GenerationRow's fields must follow the generations table's column order")


# PostgreSQL takes a record nearly as it is: the JSON columns as the JSON text they already hold (untyped here, so the
# value is neither parsed nor serialised again: the server reads the text as `json`), the timestamp as a datetime.
_PG_GENERATIONS = sa.table("generations", *(sa.column(c.name) if c.name in JSON_COLUMNS else sa.column(c.name, c.type)
                                             for c in generations.columns))
_PG_INSERT_GENERATIONS = pg_insert(_PG_GENERATIONS).on_conflict_do_nothing(index_elements=["id"])
_CREATED_AT = GENERATION_COLUMNS.index("created_at")


def _pg_values(record: GenerationRecord) -> dict[str, Any]:
    values = dict(zip(GENERATION_COLUMNS, record, strict=True))
    values["created_at"] = datetime.fromisoformat(record[_CREATED_AT]).replace(tzinfo=UTC)
    return values


def _now() -> datetime:
    return datetime.now(UTC)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


class Store:
    """One per process (or per event loop). Every method raises `StoreUnavailable` when the database cannot be
    reached; other errors (e.g. IntegrityError for a duplicate key hash) propagate."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(crossroads_write=True)
        self._dialect = engine.dialect.name

    @classmethod
    async def open(cls, url: str) -> Store:
        """Create the engine; does not connect (use `ping` to check). The schema must exist (`migrate`)."""
        return cls(create_engine(async_url(url)))

    async def close(self) -> None:
        await self._engine.dispose()

    async def ping(self, *, write: bool = False) -> None:
        """Raise StoreUnavailable unless the database answers; with `write`, unless a write transaction can begin
        (SQLite: the write lock can be had, so a locked or read-only database does not count as available)."""
        with translate_errors():
            if write:
                async with self._writer.begin() as conn:
                    await conn.execute(sa.text("SELECT 1"))
                return
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

    async def schema_revision(self) -> str | None:
        """The schema revision the database is at (Alembic's version table), None before the first migration."""
        with translate_errors():
            async with self._engine.connect() as conn:
                try:
                    result = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                except sa.exc.ProgrammingError:  # PostgreSQL: the table does not exist
                    return None
                except sa.exc.OperationalError as exc:  # SQLite: no such table
                    if "no such table" in str(exc):
                        return None
                    raise
                row = result.first()
                return row[0] if row is not None else None

    # --- helpers -------------------------------------------------------------------------------------------

    async def _fetch(self, statement: Any) -> list[Any]:
        with translate_errors():
            async with self._engine.connect() as conn:
                return list((await conn.execute(statement)).all())

    @staticmethod
    def _bump_keys_version() -> Any:
        return meta.update().where(meta.c.name == _KEYS_VERSION).values(value=meta.c.value + 1)

    @staticmethod
    def _key_row(row: Any) -> KeyRow:
        values = row._mapping
        return KeyRow(**{name: values[name] for name in _KEY_FIELDS})

    # --- API keys --------------------------------------------------------------------------------------------

    async def insert_key(self, key: KeyRow) -> None:
        """Insert a key; `created_at` / `updated_at` default to now. A duplicate hash raises IntegrityError. Text the
        database cannot store (NUL, lone surrogates) is replaced in `key` itself, so the caller holds what is stored."""
        for name in _KEY_FIELDS:
            setattr(key, name, clean_value(getattr(key, name)))
        values = {name: getattr(key, name) for name in _KEY_FIELDS}
        values["created_at"] = values["created_at"] or _now()
        values["updated_at"] = values["updated_at"] or values["created_at"]
        with translate_errors():
            async with self._writer.begin() as conn:
                await conn.execute(api_keys.insert().values(**values))
                await conn.execute(self._bump_keys_version())

    async def update_key(self, hash: str, changes: dict) -> KeyRow | None:
        """Apply `changes` (KeyRow field names, except hash and created_at) and set updated_at to now (unless
        `changes` names it). Returns the updated row, or None when no key has this hash."""
        unknown = set(changes) - _KEY_MUTABLE
        if unknown:
            raise ValueError(f"cannot update key field(s): {', '.join(sorted(unknown))}")
        values = {name: clean_value(value) for name, value in changes.items()}
        values.setdefault("updated_at", _now())
        hash = clean_text(hash)
        with translate_errors():
            async with self._writer.begin() as conn:
                result = await conn.execute(api_keys.update().where(api_keys.c.hash == hash).values(**values))
                if result.rowcount == 0:
                    return None
                await conn.execute(self._bump_keys_version())
                row = (await conn.execute(api_keys.select().where(api_keys.c.hash == hash))).one()
        return self._key_row(row)

    async def delete_key(self, hash: str) -> bool:
        hash = clean_text(hash)  # as every text bound below: one with a NUL would make PostgreSQL refuse the query
        with translate_errors():
            async with self._writer.begin() as conn:
                result = await conn.execute(api_keys.delete().where(api_keys.c.hash == hash))
                if result.rowcount == 0:
                    return False
                await conn.execute(self._bump_keys_version())
        return True

    async def get_key(self, hash: str) -> KeyRow | None:
        rows = await self._fetch(api_keys.select().where(api_keys.c.hash == clean_text(hash)))
        return self._key_row(rows[0]) if rows else None

    async def list_keys(self, *, offset: int = 0, limit: int | None = None) -> list[KeyRow]:
        """Keys oldest first (ties by hash)."""
        statement = api_keys.select().order_by(api_keys.c.created_at, api_keys.c.hash).offset(offset)
        if limit is not None:
            statement = statement.limit(limit)
        return [self._key_row(row) for row in await self._fetch(statement)]

    async def keys_version(self) -> str:
        """An opaque token that changes whenever a key row is inserted, updated or deleted (by this module's
        writes: a counter bumped in the same transaction; the row count and newest updated_at are folded in too
        so that most edits made by hand are noticed as well). One single-row query."""
        statement = sa.select(
            sa.select(meta.c.value).where(meta.c.name == _KEYS_VERSION).scalar_subquery(),
            sa.select(sa.func.count()).select_from(api_keys).scalar_subquery(),
            sa.select(sa.func.max(api_keys.c.updated_at)).scalar_subquery(),
        )
        counter, count, newest = (await self._fetch(statement))[0]
        newest_text = newest.isoformat() if isinstance(newest, datetime) else str(newest)
        return f"{counter}:{count}:{newest_text}"

    # --- small named values (meta) ------------------------------------------------------------------------

    async def get_meta(self, name: str) -> int | None:
        rows = await self._fetch(sa.select(meta.c.value).where(meta.c.name == name))
        return int(rows[0][0]) if rows else None

    async def set_meta(self, name: str, value: int) -> None:
        # One statement (an upsert): two instances starting at once must not both insert the name.
        insert = (pg_insert if self._dialect == "postgresql" else sqlite_insert)(meta).values(name=name, value=value)
        with translate_errors():
            async with self._writer.begin() as conn:
                await conn.execute(insert.on_conflict_do_update(index_elements=["name"], set_={"value": value}))

    async def claim_meta(self, name: str, value: int) -> int:
        """`value` stored under `name` unless one is already there; returns the stored one (whoever came first)."""
        insert = (pg_insert if self._dialect == "postgresql" else sqlite_insert)(meta).values(name=name, value=value)
        with translate_errors():
            async with self._writer.begin() as conn:
                await conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
        stored = await self.get_meta(name)
        return value if stored is None else stored

    # --- running instances (crossroads/instances.py) ----------------------------------------------------------
    # Every timestamp here is the database's clock (written and compared in SQL), never this host's: instances on
    # hosts whose clocks disagree still agree on how old a heartbeat is.

    def _db_now(self, offset_s: float = 0.0) -> Any:
        """The database's current UTC time plus `offset_s` seconds, as a UTCDateTime expression."""
        if self._dialect == "sqlite":
            # Stored as UTCDateTime stores naive UTC text, "YYYY-MM-DD HH:MM:SS.ffffff" (SQLite's clock has ms).
            stamp = sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{float(offset_s)!r} seconds", type_=sa.String)
            return sa.type_coerce(stamp.concat("000"), UTCDateTime)
        now: sa.ColumnElement[Any] = sa.func.statement_timestamp(type_=sa.DateTime(timezone=True))
        if offset_s:
            now = now + sa.literal(timedelta(seconds=offset_s), sa.Interval)
        return sa.type_coerce(now, UTCDateTime)

    async def register_instance(self, row: InstanceRow) -> None:
        """Insert `row`; a started_at / heartbeat_at left None is the database's now. A duplicate id raises
        IntegrityError."""
        now = self._db_now()
        values = {"id": clean_text(row.id), "host": clean_text(row.host), "pid": row.pid,
                  "pid_namespace": row.pid_namespace and clean_text(row.pid_namespace), "workers": row.workers,
                  "shared": bool(row.shared), "started_at": row.started_at or now,
                  "heartbeat_at": row.heartbeat_at or now}
        with translate_errors():
            async with self._writer.begin() as conn:
                await conn.execute(instances.insert().values(**values))

    async def heartbeat_instance(self, id: str) -> bool:
        """Set the instance's heartbeat_at to the database's now; False when no instance has this id."""
        with translate_errors():
            async with self._writer.begin() as conn:
                result = await conn.execute(instances.update().where(instances.c.id == clean_text(id))
                                            .values(heartbeat_at=self._db_now()))
        return result.rowcount > 0

    async def unregister_instance(self, id: str) -> bool:
        with translate_errors():
            async with self._writer.begin() as conn:
                result = await conn.execute(instances.delete().where(instances.c.id == clean_text(id)))
        return result.rowcount > 0

    async def live_instances(self, max_age_s: float) -> list[InstanceRow]:
        """Instances whose heartbeat is less than `max_age_s` seconds old (database clock), newest heartbeat first,
        each with `heartbeat_age` set."""
        statement = (sa.select(instances, self._db_now().label("db_now"))
                     .where(instances.c.heartbeat_at > self._db_now(-max_age_s))
                     .order_by(instances.c.heartbeat_at.desc(), instances.c.id))
        out = []
        for result in await self._fetch(statement):
            values = result._mapping
            row = InstanceRow(**{column.name: values[column.name] for column in instances.columns})
            row.shared = bool(row.shared)
            row.heartbeat_age = max(0.0, (values["db_now"] - row.heartbeat_at).total_seconds())
            out.append(row)
        return out

    async def prune_instances(self, max_age_s: float) -> int:
        """Delete the instances whose heartbeat is at least `max_age_s` seconds old (database clock): how many."""
        with translate_errors():
            async with self._writer.begin() as conn:
                result = await conn.execute(instances.delete()
                                            .where(instances.c.heartbeat_at <= self._db_now(-max_age_s)))
        return result.rowcount

    # --- stored responses (Responses API, store: true) -----------------------------------------------------

    async def put_response(self, id: str, key_hash: str | None, history: list[dict], response: dict) -> None:
        with translate_errors():
            async with self._writer.begin() as conn:
                # The JSON columns are cleaned by the engine's serializer (engine.create_engine).
                await conn.execute(stored_responses.insert().values(
                    id=clean_text(id), key_hash=key_hash and clean_text(key_hash), created_at=_now(), history=history,
                    response=response))

    async def get_response(self, id: str) -> tuple[str | None, list[dict], dict] | None:
        """(key_hash, history, response) or None."""
        rows = await self._fetch(sa.select(stored_responses.c.key_hash, stored_responses.c.history,
                                           stored_responses.c.response).where(stored_responses.c.id == clean_text(id)))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def delete_response(self, id: str) -> bool:
        with translate_errors():
            async with self._writer.begin() as conn:
                result = await conn.execute(stored_responses.delete().where(stored_responses.c.id == clean_text(id)))
        return result.rowcount > 0

    # --- generations -----------------------------------------------------------------------------------------

    async def insert_generations(self, records: list[GenerationRecord]) -> None:
        """Insert a batch in one transaction; records whose id already exists (or repeats in the batch) are ignored."""
        if not records:
            return
        if self._dialect == "sqlite":
            await self._insert_generations_sqlite(records)
            return
        records = clean_records(records)
        with translate_errors():
            async with self._writer.begin() as conn:
                # Converted once connected: while the database is down a retry costs a connection attempt only.
                await conn.execute(_PG_INSERT_GENERATIONS, [_pg_values(record) for record in records])

    async def _insert_generations_sqlite(self, records: list[GenerationRecord]) -> None:
        """One multi-row INSERT per chunk, the records' values bound as they are.

        The records of a whole batch are written by a single statement step: executemany would step (and hand the
        GIL over) once per row, which under load costs the event loop far more than the writing itself.
        """
        with translate_errors():
            async with self._writer.begin() as conn:
                start = 0
                while start < len(records):
                    # Chunks of power-of-two sizes: the driver caches each distinct statement (a 500-row INSERT
                    # prepares a large one), so only a handful of distinct statements may ever exist.
                    size = min(_SQLITE_ROWS_PER_INSERT, 1 << ((len(records) - start).bit_length() - 1))
                    # Cleaned chunk by chunk, between awaits: a whole batch at once held the event loop for a
                    # millisecond or more.
                    chunk = clean_records(records[start:start + size])
                    start += size
                    sql = _SQLITE_INSERT_HEAD + ",".join([_SQLITE_ROW_PLACEHOLDERS] * len(chunk))
                    await conn.exec_driver_sql(sql, tuple(itertools.chain.from_iterable(chunk)))

    async def get_generation(self, id: str) -> GenerationRow | None:
        rows = await self._fetch(generations.select().where(generations.c.id == clean_text(id)))
        return _generation_row(rows[0]) if rows else None

    async def list_generations(self, *, key_hash: str | None = None, model: str | None = None,
                               failed: bool | None = None, app: str | None = None, since: datetime | None = None,
                               until: datetime | None = None, limit: int = 50, offset: int = 0,
                               workspace_id: str | None = None, user_id: str | None = None) -> list[GenerationRow]:
        """Generation records, newest first, optionally filtered (the dashboard's Activity page); `until` exclusive."""
        statement = _in_place(generations.select(), workspace_id, user_id).order_by(
            generations.c.created_at.desc(), generations.c.id.desc())
        if app is not None:
            statement = statement.where(generations.c.app_title == clean_text(app))
        if since is not None:
            statement = statement.where(generations.c.created_at >= since)
        if until is not None:
            statement = statement.where(generations.c.created_at < until)
        if key_hash is not None:
            statement = statement.where(generations.c.key_hash == clean_text(key_hash))
        if model is not None:
            statement = statement.where(generations.c.model == clean_text(model))
        if failed is not None:
            statement = statement.where(generations.c.status >= 400 if failed else generations.c.status < 400)
        return [_generation_row(row) for row in await self._fetch(statement.limit(limit).offset(offset))]

    async def request_outcomes(self, since: datetime, limit: int, *, workspace_id: str | None = None,
                               user_id: str | None = None
                               ) -> list[tuple[datetime, int, int | None, str | None, float]]:
        """(created_at, status, latency_ms, app_title, cost) of the newest `limit` records since `since` (the
        dashboard's error rate, latency percentiles and top apps; bounded so a busy gateway's page stays quick)."""
        columns = generations.c
        statement = (sa.select(columns.created_at, columns.status, columns.latency_ms, columns.app_title, columns.cost)
                     .where(columns.created_at >= since).order_by(columns.created_at.desc()).limit(limit))
        statement = _in_place(statement, workspace_id, user_id)
        return [(row.created_at, int(row.status), row.latency_ms, row.app_title, float(row.cost))
                for row in await self._fetch(statement)]

    async def key_spend(self, since: dict[str, datetime], key_hashes: list[str] | None = None
                        ) -> dict[str | None, dict[str, float]]:
        """Per key_hash (None = master key): {"total": all-time cost, name: cost since `since[name]` (inclusive)};
        only of `key_hashes` when given."""
        if key_hashes is not None and not key_hashes:
            return {}
        names = list(since)
        columns = [sa.func.coalesce(sa.func.sum(generations.c.cost), 0.0).label("total")]
        for index, name in enumerate(names):
            recent = sa.case((generations.c.created_at >= since[name], generations.c.cost), else_=0.0)
            columns.append(sa.func.coalesce(sa.func.sum(recent), 0.0).label(f"s{index}"))
        statement = sa.select(generations.c.key_hash, *columns).group_by(generations.c.key_hash)
        if key_hashes is not None:
            statement = statement.where(generations.c.key_hash.in_(key_hashes))
        result: dict[str | None, dict[str, float]] = {}
        for row in await self._fetch(statement):
            spend = {"total": float(row.total)}
            for index, name in enumerate(names):
                spend[name] = float(row[index + 2])
            result[row.key_hash] = spend
        return result

    async def place_spend(self, since: dict[str, datetime]) -> list[tuple[tuple[Any, ...], dict[str, float]]]:
        """Spend grouped by place: ((key_hash, workspace_id, environment_id, user_id), {"total", name: cost since
        `since[name]`}) for every combination in the records (about one per key: a key's place rarely changes).
        The credit ledger folds these into its accounts (gate/directory.py `accounts_of`)."""
        c = generations.c
        names = list(since)
        columns = [sa.func.coalesce(sa.func.sum(c.cost), 0.0).label("total")]
        for index, name in enumerate(names):
            columns.append(sa.func.coalesce(sa.func.sum(sa.case((c.created_at >= since[name], c.cost), else_=0.0)),
                                            0.0).label(f"s{index}"))
        place = (c.key_hash, c.workspace_id, c.environment_id, c.user_id)
        out = []
        for row in await self._fetch(sa.select(*place, *columns).group_by(*place)):
            spend = {"total": float(row.total)}
            for index, name in enumerate(names):
                spend[name] = float(row[index + 5])
            out.append((tuple(row[:4]), spend))
        return out

    async def activity(self, date_from: date, date_to: date, key_hash: str | None, *, hourly: bool = False,
                       workspace_id: str | None = None, user_id: str | None = None) -> list[dict]:
        """Usage grouped by (UTC date, model, connection, key_hash) for date_from..date_to inclusive; key_hash None =
        all keys (of `workspace_id`, and of its member `user_id`, when given). `hourly` groups by UTC hour instead:
        "date" is then "YYYY-MM-DD HH"."""
        if self._dialect == "postgresql":
            day = sa.func.to_char(sa.func.timezone(sa.literal_column("'UTC'"), generations.c.created_at),
                                  sa.literal_column("'YYYY-MM-DD HH24'" if hourly else "'YYYY-MM-DD'"))
        else:  # stored as "YYYY-MM-DD HH:MM:SS.ffffff" UTC text
            day = sa.func.substr(generations.c.created_at, sa.literal_column("1"),
                                 sa.literal_column("13" if hourly else "10"))
        statement = (
            sa.select(
                day.label("date"),
                generations.c.model,
                generations.c.provider_name,
                generations.c.key_hash,
                sa.func.count().label("requests"),
                sa.func.sum(generations.c.cost).label("cost"),
                sa.func.sum(generations.c.tokens_prompt).label("prompt_tokens"),
                sa.func.sum(generations.c.tokens_completion).label("completion_tokens"),
                sa.func.sum(generations.c.tokens_reasoning).label("reasoning_tokens"),
                sa.func.sum(generations.c.tokens_cached).label("cached_tokens"),
            )
            .where(generations.c.created_at >= _day_start(date_from))
            .where(generations.c.created_at < _day_start(date_to + timedelta(days=1)))
            .group_by(day, generations.c.model, generations.c.provider_name, generations.c.key_hash)
        )
        if key_hash is not None:
            statement = statement.where(generations.c.key_hash == clean_text(key_hash))
        statement = _in_place(statement, workspace_id, user_id)
        out = [
            {
                "date": str(row.date),
                "model": row.model,
                "provider_name": row.provider_name,
                "key_hash": row.key_hash,
                "requests": int(row.requests),
                "cost": float(row.cost or 0.0),
                "prompt_tokens": int(row.prompt_tokens or 0),
                "completion_tokens": int(row.completion_tokens or 0),
                "reasoning_tokens": int(row.reasoning_tokens or 0),
                "cached_tokens": int(row.cached_tokens or 0),
            }
            for row in await self._fetch(statement)
        ]
        # Sorted here, not in SQL, so that the order is the same (binary, None first) on every backend/collation.
        out.sort(key=lambda r: (r["date"], r["model"], r["provider_name"], r["key_hash"] is not None,
                                r["key_hash"] or ""))
        return out

    async def total_spend(self) -> float:
        rows = await self._fetch(sa.select(sa.func.coalesce(sa.func.sum(generations.c.cost), 0.0)))
        return float(rows[0][0])


def _in_place(statement: Any, workspace_id: str | None, user_id: str | None) -> Any:
    """Records of one workspace, and of one member in it, when given."""
    if workspace_id is not None:
        statement = statement.where(generations.c.workspace_id == clean_text(workspace_id))
    if user_id is not None:
        statement = statement.where(generations.c.user_id == clean_text(user_id))
    return statement


def _generation_row(result: Any) -> GenerationRow:
    values = result._mapping
    row = GenerationRow(**{name: values[name] for name in GENERATION_COLUMNS})
    row.provider_responses = row.provider_responses or []  # NULL in older rows
    row.events = row.events or []
    return row
