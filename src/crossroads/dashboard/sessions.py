"""Dashboard sign-in state: server-side sessions and a throttle on failed sign-ins.

Sessions live in the database (store/signins.py), so every worker of every instance knows them: the unit of a session
is the fleet. The throttle on failed sign-ins is per process (each of N processes allows FAILED_SIGN_INS per address
per window, so a fleet allows at most N times that): it slows guessing down, the key space (256 bits) is what stops it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crossroads.store.signins import SessionRow, SignInStore, seal, unseal

IDLE_TIMEOUT = 30 * 60.0  # seconds without a request after which a session ends
TOUCH_EVERY = 60.0  # seconds between two writes of a session's last request (idle time is known to within this)
FAILED_SIGN_INS = 5  # failed attempts per client address ...
FAILED_WINDOW = 60.0  # ... within this many seconds, then sign-in is refused until the window has passed


@dataclass(slots=True)
class Session:
    id: str  # the SHA-256 of the cookie's token
    kind: str  # "master" | "key" | "user"
    key_hash: str | None  # the management key that signed in (kind "key")
    csrf: str
    user_id: str | None = None  # the person who signed in (kind "user")
    workspace_id: str | None = None  # the workspace the session looks at (None: every one, for a super-admin)


class SessionStore:
    """Sessions by the SHA-256 of their cookie token: the token itself is never kept. `db` is set at start-up."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self.db: SignInStore = None  # type: ignore[assignment]

    @staticmethod
    def _id(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    async def create(self, kind: str, key_hash: str | None, *, user_id: str | None = None,
                     workspace_id: str | None = None) -> tuple[str, Session]:
        now = datetime.now(UTC)
        await self.db.end_idle_sessions(now - timedelta(seconds=self.idle_timeout))
        token = secrets.token_urlsafe(32)
        session = Session(self._id(token), kind, key_hash, secrets.token_urlsafe(32), user_id, workspace_id)
        await self.db.add_session(SessionRow(session.id, kind, key_hash, session.csrf, now, None, user_id,
                                             workspace_id))
        return token, session

    async def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session_id = self._id(token)
        row = await self.db.session(session_id)
        if row is None:
            return None
        now = datetime.now(UTC)
        idle = (now - row.last_seen).total_seconds()
        if idle > self.idle_timeout:
            await self.db.end_session(session_id)
            return None
        if idle > TOUCH_EVERY:
            await self.db.touch_session(session_id, now)
        return Session(session_id, row.kind, row.key_hash, row.csrf, row.user_id, row.workspace_id)

    async def end(self, token: str | None) -> None:
        if token:
            await self.db.end_session(self._id(token))

    async def end_for_key(self, key_hash: str) -> None:
        """Sign out every session of a key that was disabled or deleted."""
        await self.db.end_sessions_of_key(key_hash)

    async def end_for_user(self, user_id: str) -> None:
        """Sign out every session of a person who was disabled or removed."""
        await self.db.end_sessions_of_user(user_id)

    async def look_at(self, session: Session, workspace_id: str | None) -> None:
        """Make `workspace_id` the workspace the session's pages show."""
        await self.db.set_session_workspace(session.id, workspace_id)
        session.workspace_id = workspace_id

    async def set_flash(self, token: str, session: Session, kind: str, secret: str) -> None:
        """Keep `secret` (a key just created, an invitation link) for the session's next page, sealed for its
        token; `kind` says which page shows it."""
        await self.db.set_flash(session.id, seal(token, f"{kind} {secret}"))

    async def take_flash(self, token: str, session: Session, kind: str) -> str | None:
        """The secret kept by `set_flash`, once, if it is of `kind` (a key never shows as a link, nor the reverse)."""
        sealed = await self.db.take_flash(session.id)
        if sealed is None:
            return None
        found_kind, _, secret = unseal(token, sealed).partition(" ")
        return secret if found_kind == kind else None


class SignInThrottle:
    """At most FAILED_SIGN_INS failed sign-ins per client address per FAILED_WINDOW seconds."""

    def __init__(self, limit: int = FAILED_SIGN_INS, window: float = FAILED_WINDOW) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again (0 when it may now)."""
        now = time.monotonic()
        recent = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        return self.window - (now - recent[0]) if len(recent) >= self.limit else 0.0

    def failed(self, address: str) -> None:
        if len(self._failures) > 10_000:  # an address flood cannot grow this without bound
            self._failures.clear()
        self._failures.setdefault(address, []).append(time.monotonic())

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
