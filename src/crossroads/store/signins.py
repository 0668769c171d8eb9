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
from crossroads.store.schema import dashboard_sessions, invitations, oauth_grants
from crossroads.store.store import Store


@dataclass(slots=True)
class SessionRow:
    id: str
    kind: str  # "master" | "key" | "user"
    key_hash: str | None
    csrf: str
    last_seen: datetime
    flash: str | None  # sealed
    user_id: str | None = None  # the person signed in (kind "user")
    workspace_id: str | None = None  # the workspace the session looks at (None: every one, for a super-admin)


@dataclass(slots=True)
class InvitationRow:
    id: str  # the SHA-256 of the link's token
    workspace_id: str
    email: str
    role: str
    budget_limit: float | None
    budget_reset: str | None
    expires: datetime
    created_at: datetime


@dataclass(slots=True)
class GrantRow:
    id: str
    name: str
    limit: float | None
    user_id: str
    challenge: str | None
    method: str | None
    expires: datetime
    workspace_id: str | None = None
    environment_id: str | None = None
    owner_id: str | None = None


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
            id=row.id, kind=row.kind, key_hash=row.key_hash, csrf=row.csrf, last_seen=row.last_seen, flash=row.flash,
            user_id=row.user_id, workspace_id=row.workspace_id))

    async def session(self, session_id: str) -> SessionRow | None:
        rows = await self.store._fetch(sa.select(dashboard_sessions).where(dashboard_sessions.c.id == session_id))
        if not rows:
            return None
        r = rows[0]
        return SessionRow(r.id, r.kind, r.key_hash, r.csrf, r.last_seen, r.flash, r.user_id, r.workspace_id)

    async def touch_session(self, session_id: str, last_seen: datetime) -> None:
        await self._write(dashboard_sessions.update().where(dashboard_sessions.c.id == session_id)
                          .values(last_seen=last_seen))

    async def set_session_workspace(self, session_id: str, workspace_id: str | None) -> None:
        await self._write(dashboard_sessions.update().where(dashboard_sessions.c.id == session_id)
                          .values(workspace_id=workspace_id))

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

    async def end_sessions_of_user(self, user_id: str) -> None:
        await self._write(dashboard_sessions.delete().where(dashboard_sessions.c.user_id == user_id))

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
                    method=row.method, expires=row.expires, workspace_id=row.workspace_id,
                    environment_id=row.environment_id, owner_id=row.owner_id))
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
                        found.expires, found.workspace_id, found.environment_id, found.owner_id)

    # -- invitations -----------------------------------------------------------------------------------------------
    async def add_invitation(self, row: InvitationRow) -> None:
        now = datetime.now(UTC)
        with translate_errors():
            async with self.store._writer.begin() as conn:
                await conn.execute(invitations.delete().where(invitations.c.expires <= now))
                # A new link for the same person and workspace replaces the old one (only the newest works).
                await conn.execute(invitations.delete().where(invitations.c.workspace_id == row.workspace_id,
                                                              invitations.c.email == row.email))
                await conn.execute(invitations.insert().values(**_invitation_values(row)))

    async def invitation(self, invitation_id: str) -> InvitationRow | None:
        """The invitation when it exists and has not expired."""
        rows = await self.store._fetch(sa.select(invitations).where(invitations.c.id == invitation_id,
                                                                    invitations.c.expires > datetime.now(UTC)))
        return _invitation(rows[0]) if rows else None

    async def take_invitation(self, invitation_id: str) -> InvitationRow | None:
        """The unexpired invitation, removed in the same statement: a link works once, even raced."""
        with translate_errors():
            async with self.store._writer.begin() as conn:
                found = (await conn.execute(invitations.delete().where(invitations.c.id == invitation_id)
                                            .returning(*invitations.c))).first()
        if found is None or _invitation(found).expires <= datetime.now(UTC):
            return None
        return _invitation(found)

    async def invitations_of(self, workspace_id: str) -> list[InvitationRow]:
        rows = await self.store._fetch(sa.select(invitations).where(
            invitations.c.workspace_id == workspace_id, invitations.c.expires > datetime.now(UTC))
            .order_by(invitations.c.created_at))
        return [_invitation(row) for row in rows]

    async def delete_invitation(self, invitation_id: str, workspace_id: str) -> bool:
        return bool(await self._write(invitations.delete().where(invitations.c.id == invitation_id,
                                                                 invitations.c.workspace_id == workspace_id)))


def _invitation_values(row: InvitationRow) -> dict:
    return {"id": row.id, "workspace_id": row.workspace_id, "email": row.email, "role": row.role,
            "budget_limit": row.budget_limit, "budget_reset": row.budget_reset, "expires": row.expires,
            "created_at": row.created_at}


def _invitation(found: sa.Row) -> InvitationRow:
    return InvitationRow(found.id, found.workspace_id, found.email, found.role, found.budget_limit,
                         found.budget_reset, found.expires, found.created_at)
