"""Admission: what the gate decides for one inference request before it goes upstream, and undoes or settles after.

Plain functions and one small per-request object, called by the request path (api/inference.py) in this order:

- `admissible`: the candidates the caller may use (connections and routes of other workspaces are invisible, a key's
  allow-list, only priced models under a credit limit) and the budget chain its cost counts against;
- `Counts`: the rate-limit windows the request is counted in, all or nothing: its key's and its route's before
  anything else is spent, then per attempt the serving connection's (`Counts` is the attempt loop's `Capacity`);
  each corrected to the real token count when the request settles, or given back when what it was counted for did
  not happen;
- `reserve_credit`: the worst-case cost held on the chain; `settle_credit` replaces it with the real cost at the end.

None of it awaits on the common path (no limits, no shared ledger): a request without limits passes the gate with
dict lookups only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from crossroads.accounting.exchange import NOTHING_TO_HOLD, worst_case_cost
from crossroads.errors import GatewayError
from crossroads.gate.auth import allowed_for_inference, priced_for_limit
from crossroads.gate.credits import Budget, CreditLedger, Reservation
from crossroads.gate.directory import chain_limited
from crossroads.gate.ratelimit import Decision, Limit
from crossroads.gate.shared_credits import SharedReservation
from crossroads.observability.logs import OncePer
from crossroads.observability.metrics import count_redis_error

if TYPE_CHECKING:
    from crossroads.catalog import ModelSpec
    from crossroads.config import Config
    from crossroads.gate.auth import Principal
    from crossroads.gate.directory import Directory
    from crossroads.gate.ratelimit import RateLimiter
    from crossroads.gate.shared_credits import FleetCredits
    from crossroads.routing.select import Candidate
    from crossroads.store.rows import KeyRow

# The request path's logger, as before admission was split out of api/inference.py: operators filter on its name.
log = logging.getLogger("crossroads.inference")
_limit_store_down = OncePer(log)

# X-RateLimit-* always mean the gateway's own limits for the calling key (or its route), in OpenRouter's units (reset
# in epoch milliseconds). The upstream account's request limits, in whatever units the upstream uses ("6ms",
# an RFC 3339 time...), are passed on as X-Upstream-RateLimit-* (api/inference.py; each provider names its headers,
# ProviderSpec.rate_limit_headers).

# What a request gets while the rate-limit store is down and routing.rate_limits_fail_open is set: allowed, counted
# nowhere (so nothing to correct afterwards), no rate-limit headers.
UNCOUNTED = Decision(allowed=True, scope=None, kind=None, limit=None, remaining=None, reset=0.0, retry_after=0.0,
                     code=None)


# -- who may use what ----------------------------------------------------------------------------------------------
def admissible(principal: Principal, candidates: list[Candidate], directory: Directory, *, scoped: bool,
               route_owner: Mapping[str, str], asked: str | None
               ) -> tuple[list[Candidate], tuple[Budget, ...], bool]:
    """The candidates `principal` may use, in try order, the budget chain its cost counts against (key, environment,
    member, workspace) and whether any level of it has a limit. 404 when every candidate belongs to another
    workspace, 403 for a model the key may not use or that has no price under a limit. `scoped`: some connection or
    route belongs to one workspace (config `workspace:`); `route_owner` names the routes' owners."""
    key = principal.key
    if scoped and (key is not None or principal.workspace_id is not None):
        candidates = visible_candidates(
            candidates, workspace_name(directory, key.workspace_id if key is not None else principal.workspace_id),
            route_owner, asked if asked is not None else candidates[0].model_id)
    candidates = allowed_for_inference(principal, candidates, names_of)
    chain = directory.chain(key, principal.workspace_id, principal.environment_id)
    limited = chain_limited(chain)
    return priced_for_limit(limited, candidates, model_of), chain, limited


def visible_candidates(candidates: list[Candidate], workspace: str | None, route_owner: Mapping[str, str],
                       asked: str) -> list[Candidate]:
    """The candidates a request of `workspace` (its name) may use: connections and routes that are everyone's or
    that workspace's. None left: 404, as for a model that does not exist."""
    kept = [c for c in candidates if c.deployment.connection.config.workspace in (None, workspace)
            and (c.route is None or route_owner.get(c.route) in (None, workspace))]
    if not kept:
        raise GatewayError(404, f"Model {asked!r} not found", metadata={"code": "model_not_found"})
    return kept


def workspace_name(directory: Directory, workspace_id: str | None) -> str | None:
    """A workspace's name (what config `workspace:` names), or the id itself when the directory does not know it."""
    workspace = directory.workspaces.get(workspace_id) if workspace_id is not None else None
    return workspace.name if workspace is not None else workspace_id


def names_of(candidate: Candidate) -> tuple[str, ...]:
    """What a key's allowed_models may name to allow a candidate: the route asked for, or the model itself."""
    return (candidate.route, candidate.model_id) if candidate.route else (candidate.model_id,)


def model_of(candidate: Candidate) -> ModelSpec:
    return candidate.deployment.model


# -- rate limits ---------------------------------------------------------------------------------------------------
class LimitTables:
    """The configured rate limits of routes and connections (a key's come with the key), looked up per request."""

    __slots__ = ("routes", "connections", "fail_open")

    def __init__(self, config: Config) -> None:
        # routing.rate_limits_fail_open: while the shared counter store is down, serve uncounted rather than 503.
        self.fail_open = config.routing.rate_limits_fail_open
        self.routes = {r.name: Limit(f"route:{r.name}", rpm=r.rpm, tpm=r.tpm) for r in config.routes if r.rpm or r.tpm}
        self.connections = {c.name: [Limit(f"conn:{c.name}", rpm=c.rpm, tpm=c.tpm, priority_shares=True)]
                            for c in config.providers if c.rpm or c.tpm}

    def for_request(self, key: KeyRow | None, route: str | None) -> list[Limit]:
        """The request-level limits: the key's own and the named route's."""
        limits = []
        if key is not None and (key.rpm or key.tpm):
            limits.append(Limit(f"key:{key.hash}", rpm=key.rpm, tpm=key.tpm))
        if route is not None and route in self.routes:
            limits.append(self.routes[route])
        return limits


class Counts:
    """The rate-limit windows one request is counted in: `request` (its key's and route's) and `connection` (the
    connection serving it). Each is counted with the request's token estimate and corrected once: to the real count
    when the request settles (`settle`), or back to nothing when what it was counted for did not happen.

    Each counting method awaits the limiter itself, not a helper coroutine: a frame fewer for every resumption."""

    __slots__ = ("limiter", "tables", "priority", "estimate", "request", "connection", "headers")

    def __init__(self, limiter: RateLimiter, tables: LimitTables, *, priority: str, estimate: int) -> None:
        self.limiter = limiter
        self.tables = tables
        self.priority = priority  # the key's priority (its share of a connection's capacity)
        self.estimate = estimate  # the prompt's token estimate, counted until the real count is known
        self.request: list[Limit] = []  # request-level limits counted for this request
        self.connection: list[Limit] = []  # the serving connection's limits counted for this request
        self.headers: dict[str, str] = {}  # X-RateLimit-* of the request-level limits

    async def count_request(self, limits: list[Limit]) -> None:
        """Count the request against its key's and route's limits (`LimitTables.for_request`), all or nothing: 429
        when one is spent (nothing counted), 503 when they cannot be counted."""
        try:
            decision = await self.limiter.acquire(limits, self.estimate, self.priority)
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; all mean "cannot count"
            decision = self._uncounted(exc)
        self.headers = decision.headers()
        if not decision.allowed:  # nothing was counted
            raise limit_error(decision, "this API key" if (decision.scope or "").startswith("key:") else "this route")
        if decision is not UNCOUNTED:
            self.request = limits

    # The attempt loop's Capacity (routing/attempts.py): a connection's own limits, per attempt.
    def needs(self, connection: str) -> bool:
        return connection in self.tables.connections

    async def take(self, connection: str) -> GatewayError | None:
        """Count the request against `connection`'s limits; the 429 to answer when they are spent, else None."""
        limits = self.tables.connections[connection]
        try:
            decision = await self.limiter.acquire(limits, self.estimate, self.priority)
        except Exception as exc:  # noqa: BLE001
            decision = self._uncounted(exc)
        if not decision.allowed:
            return limit_error(decision, f"connection {connection}")
        if decision is not UNCOUNTED:
            self.connection = limits
        return None

    @property
    def holding(self) -> bool:
        """Whether a connection's limits are counted and not settled yet."""
        return bool(self.connection)

    async def give_back(self) -> None:
        """The connection counted for served nothing (the attempts failed): its estimate is given back."""
        limits, self.connection = self.connection, []
        await self._adjust(limits, -self.estimate)

    async def refund(self) -> None:
        """The request was refused before anything was tried: the request-level estimate is given back."""
        limits, self.request = self.request, []
        await self._adjust(limits, -self.estimate)

    async def settle(self, tokens: int) -> None:
        """Replace the estimate with the real token count in every window still counted (once)."""
        held = self.request + self.connection
        self.request, self.connection = [], []
        await self._adjust(held, tokens - self.estimate)

    def _uncounted(self, exc: Exception) -> Decision:
        """When the shared counter store (Redis) is down the request is refused: a limit that silently stopped
        counting would no longer be a limit; unless routing.rate_limits_fail_open says to serve it uncounted."""
        count_redis_error()
        if self.tables.fail_open:
            _limit_store_down.warning("rate-limit store unavailable, requests served WITHOUT rate limits "
                                      "(routing.rate_limits_fail_open): %s", type(exc).__name__)
            return UNCOUNTED
        _limit_store_down.warning("rate-limit store unavailable, requests refused with 503: %s", type(exc).__name__)
        raise GatewayError(503, "Rate limits cannot be checked right now (their store is unavailable); retry shortly",
                           metadata={"code": "rate_limit_store_unavailable"}) from None

    async def _adjust(self, limits: list[Limit], delta_tokens: int) -> None:
        """Best effort: the request has been answered (or refused) whatever the store says."""
        try:
            await self.limiter.adjust(limits, delta_tokens)
        except Exception as exc:  # noqa: BLE001
            count_redis_error()
            _limit_store_down.warning("could not correct token counts in the rate-limit store: %s",
                                      type(exc).__name__)


def limit_error(decision: Decision, what: str) -> GatewayError:
    code = decision.code or "resource_exhausted"
    if code == "prioritization_gate_denied":
        message = (f"Capacity of {what} is reserved for higher-priority keys right now; retry in "
                   f"{decision.retry_after:.0f} s")
    else:
        unit = "requests" if decision.kind == "rpm" else "tokens"
        message = f"Rate limit of {what} exceeded: {decision.limit} {unit} per minute; retry in " \
                  f"{decision.retry_after:.0f} s"
    return GatewayError(429, message, metadata={"code": code, "scope": decision.scope, "kind": decision.kind},
                        headers=decision.headers())


# -- credit --------------------------------------------------------------------------------------------------------
def reserve_credit(ledger: CreditLedger, fleet_credits: FleetCredits | None, chain: tuple[Budget, ...],
                   limited: bool, body: dict[str, Any], candidates: list[Candidate]
                   ) -> Reservation | Awaitable[SharedReservation]:
    """Hold the request's worst-case cost over every candidate that may serve it on every budget of its chain, all or
    none: 402 naming the level that does not fit. Only a chain with a limit (`limited`) holds anything; the shared
    ledger holds it when there is one, and only then is the answer something to await (one round trip): this
    process's ledger answers at once."""
    if not limited:
        worst = NOTHING_TO_HOLD
    else:
        worst = worst_case_cost(body, [(c.deployment.model, c.overrides) for c in candidates])
        if fleet_credits is not None:
            return fleet_credits.reserve(chain, worst.total, prompt_cost=worst.prompt,
                                         completion_price=worst.completion_price)
    return ledger.reserve(chain, worst.total, prompt_cost=worst.prompt, completion_price=worst.completion_price)


def settle_credit(ledger: CreditLedger, fleet_credits: FleetCredits | None,
                  reservation: Reservation | SharedReservation | None, chain: tuple[Budget, ...], cost: float) -> None:
    """Replace a reservation with the request's real cost (exactly once; the ledgers ignore a second settle)."""
    if reservation is None:
        return
    if isinstance(reservation, SharedReservation):
        assert fleet_credits is not None  # a shared reservation comes from the fleet's ledger
        fleet_credits.settle_later(reservation, cost)
        # This process's share of every level's figures (the shared ledger holds the limited ones).
        ledger.settle(Reservation(tuple(b.account for b in chain), 0.0), cost)
    else:
        ledger.settle(reservation, cost)
