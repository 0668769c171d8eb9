"""OpenRouter's OAuth PKCE flow: a signed-in user approves an app, the app trades the code for a new API key.

Approved grants wait in the database, so a code approved through one process is redeemed through any other of any
instance (each is taken in one statement: a code is redeemed once). A grant holds the key's settings, not a key: the
key is made when the code is redeemed, so an abandoned grant leaves nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from crossroads.errors import GatewayError
from crossroads.store.signins import GrantRow, SignInStore

CODE_LIFETIME = 600.0  # seconds a code may wait to be redeemed
METHODS = ("S256", "plain")
MAX_PENDING = 10_000
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


def callback_problem(url: str, allowed_origins: list[str]) -> str | None:
    """Why an app may not be sent back to `url`, or None: https anywhere, http only to this machine or an origin
    the operator allowed (server.oauth.allowed_callbacks)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "callback_url is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback_url must be an http(s) URL"
    if parts.username or parts.password:
        return "callback_url must not carry credentials"
    if not _HOST.fullmatch(parts.netloc):  # the origin goes into the consent page's Content-Security-Policy
        return "callback_url has characters a host name cannot have"
    if parts.scheme == "https":
        return None
    if parts.hostname in LOOPBACK_HOSTS:
        return None
    origin = f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port is not None else "")
    if origin.lower() in allowed_origins:
        return None
    return ("callback_url must use https (http is allowed only to localhost, 127.0.0.1 or an origin in "
            "server.oauth.allowed_callbacks)")


def challenge_problem(challenge: str | None, method: str | None) -> str | None:
    if method is not None and method not in METHODS:
        return "code_challenge_method must be S256 or plain"
    if challenge is not None and not 1 <= len(challenge) <= 256:
        return "code_challenge must be 1 to 256 characters"
    if method is not None and challenge is None:
        return "code_challenge_method needs a code_challenge"
    return None


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class PendingGrants:
    """Approved grants waiting for their code, in the database (store/signins.py) so that any process of any instance
    can redeem a code another approved. `db` is set at start-up."""

    def __init__(self) -> None:
        self.db: SignInStore = None  # type: ignore[assignment]  # set at start-up, before any request

    @staticmethod
    def _id(code: str) -> str:
        return hashlib.sha256(code.encode()).hexdigest()  # the code itself is never kept

    async def issue(self, *, name: str, limit: float | None, user_id: str, challenge: str | None,
                    method: str | None, place: dict[str, str | None] | None = None) -> str:
        """A one-time code for a key named `name`; `place` is where that key will belong (workspace_id,
        environment_id, user_id: see api/account.py `place_key`)."""
        code = secrets.token_urlsafe(32)
        if challenge is not None and method is None:
            method = "plain"  # RFC 7636: a challenge without a method is plain
        expires = datetime.now(UTC) + timedelta(seconds=CODE_LIFETIME)
        place = place or {}
        row = GrantRow(self._id(code), name, limit, user_id, challenge, method, expires, place.get("workspace_id"),
                       place.get("environment_id"), place.get("user_id"))
        if not await self.db.add_grant(row, max_pending=MAX_PENDING):
            raise GatewayError(503, "Too many pending authorisations; try again in a few minutes")
        return code

    async def redeem(self, code: str, verifier: str | None, method: str | None) -> GrantRow:
        """The grant for `code`, used up whatever the outcome (no second try at a verifier); OpenRouter's statuses:
        400 for a method that is not the one of step 1, 403 for an unknown, used, expired or unverified code."""
        grant = await self.db.take_grant(self._id(code))
        if grant is None or grant.expires <= datetime.now(UTC):
            raise GatewayError(403, "Invalid code or code_verifier: the code is unknown, used or expired")
        if grant.challenge is None:
            return grant
        if (method or "plain") != grant.method:
            raise GatewayError(400, "Invalid code_challenge_method: use the method of the authorisation request")
        if not isinstance(verifier, str) or not verifier:
            raise GatewayError(403, "Invalid code or code_verifier: code_verifier is required")
        expected = s256(verifier) if grant.method == "S256" else verifier
        if not hmac.compare_digest(expected.encode(), grant.challenge.encode()):
            raise GatewayError(403, "Invalid code or code_verifier")
        return grant
