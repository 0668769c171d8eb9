"""Dashboard sign-in state: server-side sessions and a throttle on failed sign-ins.

Both live in the memory of one gateway process (the unit of the guarantee: one process). A gateway that runs several
worker processes would sign a user in on one worker and forget them on the next, so the dashboard refuses to sign
in there (see Dashboard.sign_in) rather than behave at random.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

IDLE_TIMEOUT = 30 * 60.0  # seconds without a request after which a session ends
FAILED_SIGN_INS = 5  # failed attempts per client address ...
FAILED_WINDOW = 60.0  # ... within this many seconds, then sign-in is refused until the window has passed


@dataclass
class Session:
    kind: str  # "master" | "key"
    key_hash: str | None  # the management key that signed in (None for the master key)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    last_seen: float = field(default_factory=time.monotonic)
    flash_key: str | None = None  # a key created in this session, shown once on the next page then forgotten


class SessionStore:
    """Sessions by the SHA-256 of their cookie token: the token itself is never kept."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, Session] = {}

    @staticmethod
    def _id(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def create(self, kind: str, key_hash: str | None) -> tuple[str, Session]:
        self._sweep()
        token = secrets.token_urlsafe(32)
        session = Session(kind, key_hash)
        self._sessions[self._id(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session_id = self._id(token)
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.idle_timeout:
            del self._sessions[session_id]
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._sessions.pop(self._id(token), None)

    def end_for_key(self, key_hash: str) -> None:
        """Sign out every session of a key that was disabled or deleted."""
        for session_id in [i for i, s in self._sessions.items() if s.key_hash == key_hash]:
            del self._sessions[session_id]

    def _sweep(self) -> None:
        now = time.monotonic()
        for session_id in [i for i, s in self._sessions.items() if now - s.last_seen > self.idle_timeout]:
            del self._sessions[session_id]


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
