"""Who is calling: the master key, or an API key from the key cache."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from crossroads.errors import GatewayError
from crossroads.gate.directory import MANAGING_ROLES
from crossroads.gate.keys import hash_key, is_expired, model_allowed

if TYPE_CHECKING:
    from crossroads.catalog import ModelSpec
    from crossroads.gate.keys import KeyCache
    from crossroads.store.rows import KeyRow


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "master" | "key" | "user" (a person signed in to the dashboard)
    key: KeyRow | None = None
    # The master key on a workspace's path (/v1/completion/{workspace}/{environment}/...): where its requests are
    # recorded; a person's: the workspace they act in. A key's own workspace and environment are its row's.
    workspace_id: str | None = None
    environment_id: str | None = None
    # A person's role in that workspace; for a management key made for a member, that member's role there
    # ("removed" once they are not a member any more). None: a management key of the workspace itself.
    role: str | None = None
    user_id: str | None = None  # the person (kind "user")

    @property
    def key_hash(self) -> str | None:
        return self.key.hash if self.key is not None else None

    @property
    def is_master(self) -> bool:
        return self.kind == "master"

    @property
    def can_manage(self) -> bool:
        """May manage keys, environments, members and budgets (of its workspace, unless it is the master key): the
        master key; a management key, unless made for a member whose role is not owner or admin; an owner or admin."""
        if self.kind == "master":
            return True
        if self.kind == "user":
            return self.role in MANAGING_ROLES
        return self.key is not None and self.key.is_management and (self.role is None or self.role in MANAGING_ROLES)


MASTER = Principal(kind="master")
T = TypeVar("T")


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
        return None
    key = headers.get(b"x-api-key")
    return key.strip() if key else None


class Authenticator:
    def __init__(self, master_key: str, keys: KeyCache | None = None) -> None:
        self._master = master_key.encode()
        self.keys = keys

    def authenticate(self, headers: dict[bytes, bytes]) -> Principal:
        presented = presented_key(headers)
        if presented is None:
            raise GatewayError(401, "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        if hmac.compare_digest(presented, self._master):
            return MASTER
        # Lookup by hash: a dict probe on a digest reveals nothing about the key through timing.
        keys = self.keys
        row = keys.get(hash_key(presented)) if keys is not None else None
        if row is None or keys is None:  # (keys None: row None too; spelt out for the type checker)
            raise GatewayError(401, "Invalid API key")
        if row.disabled:
            raise GatewayError(401, "API key is disabled")
        if is_expired(row, datetime.now(UTC)):
            raise GatewayError(401, "API key has expired")
        if row.is_management and row.user_id is not None:  # a member's key manages what the member may
            role = keys.directory.role(row.workspace_id, row.user_id) or "removed"
            return Principal(kind="key", key=row, role=role)
        return Principal(kind="key", key=row)


def allowed_for_inference(principal: Principal, candidates: list[T], names_of: Callable[[T], tuple[str, ...]]
                          ) -> list[T]:
    """The candidates the caller may use (fallbacks it may not use are dropped); 403 for a management key, or when
    the key may use none of them (naming what was asked for first). A candidate is allowed when the key's
    `allowed_models` admits any of its names: its model id, or the named route it came from (a route name in
    `allowed_models` allows that route, whichever model its targets are)."""
    key = principal.key
    if key is None:
        return candidates
    if key.is_management:
        raise GatewayError(403, "Management keys may not call inference; create a regular API key")
    allowed_models = key.allowed_models
    if allowed_models is None:
        return candidates
    allowed = [c for c in candidates if any(model_allowed(allowed_models, name) for name in names_of(c))]
    if not allowed:
        raise GatewayError(403, f"Model {names_of(candidates[0])[0]!r} is not allowed for this API key",
                           metadata={"allowed_models": allowed_models})
    return allowed


def priced_for_limit(limited: bool, candidates: list[T], model_of: Callable[[T], ModelSpec]) -> list[T]:
    """For a request under a credit limit or budget (`limited`), the candidates whose price is known: a model without
    one would be recorded at $0, so the limit would not hold. 403 when none is left, naming the model and how to
    price it."""
    if not limited:
        return candidates
    priced = [c for c in candidates if model_of(c).priced]
    if not priced:
        model = model_of(candidates[0])
        raise GatewayError(
            403, f"Model {model.id!r} has no price, so its cost cannot be counted against this key's credit limit or budget. "
                 "Price it in the configuration (providers[].models[].pricing: USD per 1M prompt and completion "
                 "tokens), or declare it free on purpose (pricing: free).",
            metadata={"code": "unpriced_model", "model": model.id})
    return priced


def require_management(principal: Principal) -> None:
    if not principal.can_manage:
        if principal.role is not None:
            raise GatewayError(403, f"This needs an owner or admin of the workspace; this key's member is "
                                    f"{'no longer a member' if principal.role == 'removed' else 'a ' + principal.role}")
        raise GatewayError(403, "This endpoint needs the master key or a management key")


def managed_workspace(principal: Principal) -> str | None:
    """What the caller may manage: None for every workspace (the master key), else the id of the one workspace a
    management key belongs to (it manages that workspace's keys, environments, members and budgets, nothing else);
    403 for any other caller."""
    require_management(principal)
    if principal.kind == "user":
        return principal.workspace_id
    return None if principal.key is None else principal.key.workspace_id


def reading_scope(principal: Principal) -> tuple[str | None, str | None]:
    """Whose keys, records and workspace details a management caller may read, as (workspace id, member id), None
    meaning all: the master key everything; a workspace's own management key, or an owner's or admin's, or a viewer's,
    the whole workspace; a member's, that member's own keys and records in it. 403 for any other caller."""
    key = principal.key
    if principal.can_manage or key is None or not key.is_management or principal.role not in ("member", "viewer"):
        return managed_workspace(principal), None
    return key.workspace_id, (key.user_id if principal.role == "member" else None)


def writing_scope(principal: Principal) -> tuple[str | None, str | None]:
    """Whose keys a management caller may create, change and delete, as `reading_scope`: a member's management key
    its member's own keys only; a viewer's none (403)."""
    if principal.role == "viewer":
        raise GatewayError(403, "This key's member is a viewer: viewers read, they do not change anything")
    return reading_scope(principal)


def require_master(principal: Principal, what: str) -> None:
    if not principal.is_master:
        raise GatewayError(403, f"{what} needs the master key (a management key manages its own workspace only)")
