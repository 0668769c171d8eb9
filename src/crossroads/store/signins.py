"""Dashboard sessions and OAuth PKCE grants in the database, so that every worker of every instance sees them: a user
signed in through one process is signed in on all, and a code approved on one is redeemed on another.

Both are found by the SHA-256 of their secret (the cookie token, the code): the secret itself is never stored. The one
secret a session carries for a moment, a key created in it and shown once on the next page, is stored encrypted with a
key derived from the session's token, which only the browser holding the cookie has (`seal` / `unseal`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from crossroads.store.engine import translate_errors
from crossroads.store.schema import dashboard_sessions, oauth_grants
from crossroads.store.store import Store


@dataclass(slots=True)
class SessionRow:
    id: str
    kind: str  # "master" | "key"
    key_hash: str | None
    csrf: str
    last_seen: datetime
    flash: str | None  # sealed


@dataclass(slots=True)
class GrantRow:
    id: str
    name: str
    limit: float | None
    user_id: str
    challenge: str | None
    method: str | None
    expires: datetime


def _keystream(token: str, length: int) -> bytes:
    blocks = b"".join(hmac.new(token.encode(), b"flash:%d" % index, hashlib.sha256).digest()
                      for index in range(length // 32 + 1))
    return blocks[:length]


def seal(token: str, secret: str) -> str:
    """`secret` encrypted for the holder of `token` (one use: a fresh session token per session)."""
    data = secret.encode()
    return bytes(a ^ b for a, b in zip(data, _keystream(token, len(data)), strict=True)).hex()


def unseal(token: str, sealed: str) -> str:
    data = bytes.fromhex(sealed)
    return bytes(a ^ b for a, b in zip(data, _keystream(token, len(data)), strict=True)).decode()


class SignInStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _write(self, statement: sa.Executable) -> int:
        with translate_errors():
            async with self.store._writer.begin() as conn:
                return (await conn.execute(statement)).rowcount

    # -- sessions --------------------------------------------------------------------------------------------------
    async def add_session(self, row: SessionRow) -> None:
        await self._write(dashboard_sessions.insert().values(
            id=row.id, kind=row.kind, key_hash=row.key_hash, csrf=row.csrf, last_seen=row.last_seen, flash=row.flash))

    async def session(self, session_id: str) -> SessionRow | None:
        rows = await self.store._fetch(sa.select(dashboard_sessions).where(dashboard_sessions.c.id == session_id))
        if not rows:
            return None
        r = rows[0]
        return SessionRow(r.id, r.kind, r.key_hash, r.csrf, r.last_seen, r.flash)

    async def touch_session(self, session_id: str, last_seen: datetime) -> None:
        await self._write(dashboard_sessions.update().where(dashboard_sessions.c.id == session_id)
                          .values(last_seen=last_seen))

    async def set_flash(self, session_id: str, sealed: str | None) -> None:
        await self._write(dashboard_sessions.update().where(dashboard_sessions.c.id == session_id)
                          .values(flash=sealed))

    async def take_flash(self, session_id: str) -> str | None:
        """The session's sealed flash, cleared in the same step (a second page view does not see it)."""
        with translate_errors():
            async with self.store._writer.begin() as conn:
                found = (await conn.execute(sa.select(dashboard_sessions.c.flash)
                                            .where(dashboard_sessions.c.id == session_id))).first()
                if found is None or found.flash is None:
                    return None
                cleared = await conn.execute(
                    dashboard_sessions.update().where(dashboard_sessions.c.id == session_id,
                                                      dashboard_sessions.c.flash == found.flash).values(flash=None))
                return found.flash if cleared.rowcount else None

    async def end_session(self, session_id: str) -> None:
        await self._write(dashboard_sessions.delete().where(dashboard_sessions.c.id == session_id))

    async def end_sessions_of_key(self, key_hash: str) -> None:
        await self._write(dashboard_sessions.delete().where(dashboard_sessions.c.key_hash == key_hash))

    async def end_idle_sessions(self, before: datetime) -> None:
        await self._write(dashboard_sessions.delete().where(dashboard_sessions.c.last_seen < before))

    # -- OAuth grants ----------------------------------------------------------------------------------------------
    async def add_grant(self, row: GrantRow, *, max_pending: int) -> bool:
        """Store a grant unless `max_pending` unexpired ones wait already (expired ones are dropped first)."""
        now = datetime.now(UTC)
        with translate_errors():
            async with self.store._writer.begin() as conn:
                await conn.execute(oauth_grants.delete().where(oauth_grants.c.expires <= now))
                waiting = (await conn.execute(sa.select(sa.func.count()).select_from(oauth_grants))).scalar_one()
                if waiting >= max_pending:
                    return False
                await conn.execute(oauth_grants.insert().values(
                    id=row.id, name=row.name, limit=row.limit, user_id=row.user_id, challenge=row.challenge,
                    method=row.method, expires=row.expires))
        return True

    async def take_grant(self, grant_id: str) -> GrantRow | None:
        """The grant, removed in the same statement: two processes redeeming one code cannot both have it."""
        with translate_errors():
            async with self.store._writer.begin() as conn:
                found = (await conn.execute(oauth_grants.delete().where(oauth_grants.c.id == grant_id)
                                            .returning(*oauth_grants.c))).first()
        if found is None:
            return None
        return GrantRow(found.id, found.name, found.limit, found.user_id, found.challenge, found.method,
                        found.expires)
