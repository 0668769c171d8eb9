"""The one record every request leaves for logs, metrics and traces, built by the ASGI entry (api/app.py) once the
response is complete (or abandoned)."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from crossroads.formats.chat import random_text

if TYPE_CHECKING:
    from crossroads.accounting.exchange import Exchange, Usage
    from crossroads.errors import GatewayError

# A client's X-Request-Id is kept when it is a sane token (it is echoed in headers and logs), else replaced.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


@final  # no subclass: register_at_fork below calls this instance's own __init__
class _RequestIds:
    """New request ids: "req-", 16 random letters and digits drawn once per process, and a counter in hex. Unique
    across processes and restarts without a random draw per request (a request id is a name, not a secret)."""

    __slots__ = ("prefix", "counter")

    def __init__(self) -> None:
        self.prefix = f"req-{random_text.take(16)}"
        self.counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):08x}"


new_request_id = _RequestIds()
if hasattr(os, "register_at_fork"):  # a forked worker draws its own prefix
    os.register_at_fork(after_in_child=new_request_id.__init__)


def request_id_from(headers: dict[bytes, bytes]) -> str:
    """The client's X-Request-Id when it is a sane token, else a new one (`new_request_id`)."""
    given = headers.get(b"x-request-id")
    if given is not None and _SANE_REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    return new_request_id()


def presented_key_label(headers: dict[bytes, bytes]) -> str | None:
    """What a log may show of the key a request presented (Authorization: Bearer, or x-api-key)."""
    value = headers.get(b"authorization") or headers.get(b"x-api-key")
    if value is None:
        return None
    return key_label(value.decode("latin-1").removeprefix("Bearer ").removeprefix("bearer "))


def key_label(token: str) -> str | None:
    """What a log may show of a key the gate did not accept: its first 12 characters when it is long enough that
    they are a small part of it, else nothing of it (None for no key at all)."""
    token = token.strip()
    if not token:
        return None
    return (token[:12] if len(token) >= 32 else "") + "…"


@dataclass(slots=True)
class RequestInfo:
    request_id: str
    method: str
    path: str
    endpoint: str  # the route's template, e.g. "/api/v1/chat/completions"; "unmatched" for 404s (bounded labels)
    status: int  # the status the client was sent; 499 when it went away first, 0 when nothing was sent
    started: float  # epoch seconds
    started_mono: float  # time.monotonic() at the same instant (Exchange times are monotonic)
    duration: float  # seconds from the request's arrival to its end
    key_name: str | None  # the API key's name ("master" for the master key); None when not authenticated
    key_label: str | None  # the key's display prefix (never enough to use it); for a refused key, presented_key_label
    exchange: Exchange | None  # inference requests that reached the router: model, attempts, usage, cost
    error: GatewayError | None = None  # the error the client got, if any (status, message, metadata.code)
    # Set once by Observability.end for every reader: the exchange's billed usage and its cost (USD).
    usage: Usage | None = None
    cost: float = 0.0

    @property
    def denial(self) -> str | None:
        """Why the gateway itself refused the request: "auth" (401/403 from the gate), "credit" (402),
        "rate_limit" (429 of the gateway's own rpm/tpm limits, not an upstream's), or None."""
        error = self.error
        if error is None:
            return None
        if error.status == 402:
            return "credit"
        if error.status == 429 and (error.metadata or {}).get("code") in _LIMIT_CODES:
            return "rate_limit"
        if error.status in (401, 403) and not (error.metadata or {}).get("provider_name"):
            return "auth"
        return None


_LIMIT_CODES = ("resource_exhausted", "prioritization_gate_denied")
_NOT_SENT = ("skipped:", "capacity:")  # attempt entries that never went upstream (breaker open, connection full)


def upstream_attempts(exchange: Exchange) -> list[dict]:
    """The exchange's attempts that went upstream, in order (each a dict: provider_name, model_permaslug, status,
    latency in ms, error), without the candidates skipped for an open breaker or a full connection."""
    return [a for a in exchange.attempts if not (a.get("error") or "").startswith(_NOT_SENT)]
