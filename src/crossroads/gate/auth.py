"""Who is calling: the master key for now (real API keys come with the store)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from crossroads.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "master"
    label: str


MASTER = Principal(kind="master", label="master")


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
    def __init__(self, master_key: str) -> None:
        self._master = master_key.encode()

    def authenticate(self, headers: dict[bytes, bytes]) -> Principal:
        key = presented_key(headers)
        if key is None:
            raise GatewayError(401, "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")
        if hmac.compare_digest(key, self._master):
            return MASTER
        raise GatewayError(401, "Invalid API key")
