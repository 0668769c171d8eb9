"""Workspaces, environments, users and memberships in the database (the "directory" every key belongs to).

Every write bumps `keys_version` in the same transaction as the write, so that each process's key cache (which holds
the directory beside the keys: gate/keys.py) reloads both within its poll interval.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from crossroads.store.engine import translate_errors
from crossroads.store.rows import EnvironmentRow, MembershipRow, UserRow, WorkspaceRow
from crossroads.store.schema import api_keys, environments, memberships, users, workspaces
from crossroads.store.store import Store
from crossroads.store.text import clean_value

Row = TypeVar("Row", WorkspaceRow, EnvironmentRow, UserRow, MembershipRow)

_TABLES: dict[type, sa.Table] = {WorkspaceRow: workspaces, EnvironmentRow: environments, UserRow: users,
                                 MembershipRow: memberships}


class DirectoryStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _all(self, kind: type[Row], *order: sa.ColumnElement) -> list[Row]:
        table = _TABLES[kind]
        names = [f.name for f in dataclasses.fields(kind)]
        rows = await self.store._fetch(sa.select(table).order_by(*(order or (table.c.created_at, table.c.id))))
        return [kind(**{name: row._mapping[name] for name in names}) for row in rows]

    async def workspaces(self) -> list[WorkspaceRow]:
        return await self._all(WorkspaceRow)

    async def environments(self) -> list[EnvironmentRow]:
        return await self._all(EnvironmentRow)

    async def users(self) -> list[UserRow]:
        return await self._all(UserRow)

    async def memberships(self) -> list[MembershipRow]:
        return await self._all(MembershipRow)

    async def user_by_email(self, email: str) -> UserRow | None:
        found = [u for u in await self._all(UserRow) if u.email == email.strip().lower()]
        return found[0] if found else None

    async def insert(self, row: Row) -> Row:
        """Insert a row (created_at / updated_at default to now); a duplicate name or email raises IntegrityError."""
        now = datetime.now(UTC)
        row.created_at = row.created_at or now
        row.updated_at = row.updated_at or row.created_at
        values = {f.name: clean_value(getattr(row, f.name)) for f in dataclasses.fields(row)}
        with translate_errors():
            async with self.store._writer.begin() as conn:
                await conn.execute(_TABLES[type(row)].insert().values(**values))
                await conn.execute(self.store._bump_keys_version())
        return row

    async def update(self, kind: type[Row], id: str, changes: dict[str, Any]) -> Row | None:
        """Apply `changes` (field names; never id or created_at) and set updated_at; None when there is no such row."""
        table = _TABLES[kind]
        unknown = set(changes) - {f.name for f in dataclasses.fields(kind)} | ({"id", "created_at"} & set(changes))
        if unknown:
            raise ValueError(f"cannot update field(s): {', '.join(sorted(unknown))}")
        values = {name: clean_value(value) for name, value in changes.items()}
        values["updated_at"] = datetime.now(UTC)
        with translate_errors():
            async with self.store._writer.begin() as conn:
                result = await conn.execute(table.update().where(table.c.id == id).values(**values))
                if result.rowcount == 0:
                    return None
                await conn.execute(self.store._bump_keys_version())
                row = (await conn.execute(sa.select(table).where(table.c.id == id))).one()
        return kind(**{f.name: row._mapping[f.name] for f in dataclasses.fields(kind)})

    async def delete(self, kind: type, id: str) -> bool:
        table = _TABLES[kind]
        with translate_errors():
            async with self.store._writer.begin() as conn:
                result = await conn.execute(table.delete().where(table.c.id == id))
                if result.rowcount == 0:
                    return False
                if kind is WorkspaceRow:  # its environments and memberships go with it (its keys are gone first)
                    await conn.execute(environments.delete().where(environments.c.workspace_id == id))
                    await conn.execute(memberships.delete().where(memberships.c.workspace_id == id))
                await conn.execute(self.store._bump_keys_version())
        return True

    async def key_count(self, *, workspace_id: str | None = None, environment_id: str | None = None,
                        user_id: str | None = None) -> int:
        """How many keys belong to a workspace / environment / member (deleting one that has keys is refused)."""
        statement = sa.select(sa.func.count()).select_from(api_keys)
        if workspace_id is not None:
            statement = statement.where(api_keys.c.workspace_id == workspace_id)
        if environment_id is not None:
            statement = statement.where(api_keys.c.environment_id == environment_id)
        if user_id is not None:
            statement = statement.where(api_keys.c.user_id == user_id)
        return int((await self.store._fetch(statement))[0][0])
