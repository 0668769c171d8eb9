"""Who is calling: the master key, or an API key from the key cache."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from crossroads.errors import GatewayError
from crossroads.gate.keys import hash_key, is_expired, model_allowed

if TYPE_CHECKING:
    from crossroads.catalog import ModelSpec
    from crossroads.gate.keys import KeyCache
    from crossroads.store.rows import KeyRow


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "master" | "key"
    key: KeyRow | None = None
    # The master key on a workspace's path (/v1/completion/{workspace}/{environment}/...): where its requests are
    # recorded. A key's own workspace and environment are its row's.
    workspace_id: str | None = None
    environment_id: str | None = None

    @property
    def key_hash(self) -> str | None:
        return self.key.hash if self.key is not None else None

    @property
    def is_master(self) -> bool:
        return self.kind == "master"

    @property
    def can_manage(self) -> bool:
        return self.kind == "master" or (self.key is not None and self.key.is_management)


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
        row = self.keys.get(hash_key(presented)) if self.keys is not None else None
        if row is None:
            raise GatewayError(401, "Invalid API key")
        if row.disabled:
            raise GatewayError(401, "API key is disabled")
        if is_expired(row, datetime.now(UTC)):
            raise GatewayError(401, "API key has expired")
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
        raise GatewayError(403, "This endpoint needs the master key or a management key")


def managed_workspace(principal: Principal) -> str | None:
    """What the caller may manage: None for every workspace (the master key), else the id of the one workspace a
    management key belongs to (it manages that workspace's keys, environments, members and budgets, nothing else);
    403 for any other caller."""
    require_management(principal)
    return None if principal.key is None else principal.key.workspace_id


def require_master(principal: Principal, what: str) -> None:
    if not principal.is_master:
        raise GatewayError(403, f"{what} needs the master key (a management key manages its own workspace only)")
