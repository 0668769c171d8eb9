"""gate/admission.py without a server: which candidates a caller may use, the request's rate-limit counts (taken,
refused, corrected, given back; the store down), and the credit reservation and its settlement. End to end:
test_key_policy.py, test_ratelimit.py, test_routing.py, test_credits.py, test_workspaces.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from crossroads.catalog import ModelSpec, Pricing
from crossroads.config import ConnectionConfig
from crossroads.errors import GatewayError
from crossroads.gate.admission import (
    UNCOUNTED,
    Counts,
    LimitTables,
    admissible,
    reserve_credit,
    settle_credit,
    visible_candidates,
)
from crossroads.gate.auth import Principal
from crossroads.gate.credits import Budget, CreditLedger, Reservation
from crossroads.gate.directory import Directory
from crossroads.gate.ratelimit import Limit, MemoryLimiter
from crossroads.providers.http import UpstreamClient
from crossroads.providers.registry import make_adapter
from crossroads.routing.registry import Connection, Deployment
from crossroads.routing.select import Candidate
from crossroads.store.rows import KeyRow, WorkspaceRow

MILLION = 1_000_000


def candidate(name: str, *, workspace: str | None = None, route: str | None = None, priced: bool = True) -> Candidate:
    config = ConnectionConfig(name=name, type="openai", base_url="http://127.0.0.1:9/v1", workspace=workspace)
    pricing = Pricing(prompt=1 / MILLION, completion=2 / MILLION) if priced else Pricing()
    model = ModelSpec(id=f"{name}/m", upstream="m", pricing=pricing, priced=priced)
    return Candidate(Deployment(model, Connection(config, make_adapter(config), UpstreamClient(5.0))), f"{name}/m",
                     route=route)


def tables(*, routes: dict[str, int] | None = None, connections: dict[str, int] | None = None,
           fail_open: bool = False) -> LimitTables:
    config: Any = SimpleNamespace(
        routes=[SimpleNamespace(name=n, rpm=rpm, tpm=None) for n, rpm in (routes or {}).items()],
        providers=[SimpleNamespace(name=n, rpm=rpm, tpm=None) for n, rpm in (connections or {}).items()],
        routing=SimpleNamespace(rate_limits_fail_open=fail_open))
    return LimitTables(config)


class DownLimiter:
    """A rate-limit store that cannot be reached."""

    async def acquire(self, limits: list[Limit], tokens: int, priority: str = "normal") -> Any:
        raise ConnectionError("redis is down")

    async def adjust(self, limits: list[Limit], delta_tokens: int) -> None:
        raise ConnectionError("redis is down")


# -- who may use what ----------------------------------------------------------------------------------------------
def test_a_key_sees_only_its_workspaces_resources() -> None:
    directory = Directory(workspaces={"w1": WorkspaceRow(id="w1", name="team")})
    shared, own, other = candidate("shared"), candidate("own", workspace="team"), candidate("other", workspace="x")
    key = KeyRow(hash="k" * 64, name="k", label="k", workspace_id="w1")
    kept, chain, limited = admissible(Principal(kind="key", key=key), [other, own, shared], directory,
                                      scoped=True, route_owner={}, asked=None)
    assert [c.connection for c in kept] == ["own", "shared"]
    assert [b.level for b in chain] == ["key", "workspace"] and not limited
    with pytest.raises(GatewayError) as raised:  # nothing of its own: as if the model did not exist
        visible_candidates([other], "team", {}, "other/m")
    assert (raised.value.status, raised.value.message) == (404, "Model 'other/m' not found")
    route = candidate("shared", route="r")
    with pytest.raises(GatewayError):
        visible_candidates([route], "team", {"r": "x"}, "r")  # the route is another workspace's


def test_the_allow_list_and_a_limit_narrow_the_candidates() -> None:
    key = KeyRow(hash="k" * 64, name="k", label="k", allowed_models=["a/m", "free/m"], limit=1.0)
    candidates = [candidate("a"), candidate("b"), candidate("free", priced=False)]
    kept, chain, limited = admissible(Principal(kind="key", key=key), candidates, Directory(), scoped=False,
                                      route_owner={}, asked="a/m")
    assert [c.connection for c in kept] == ["a"]  # b is not allowed, free has no price under a limit
    assert limited and chain[0].limit == 1.0
    master, _, unlimited = admissible(Principal(kind="master"), candidates, Directory(), scoped=False,
                                      route_owner={}, asked="a/m")
    assert master == candidates and not unlimited


# -- rate limits ---------------------------------------------------------------------------------------------------
async def test_request_limits_count_all_or_nothing_and_settle_to_the_real_count() -> None:
    limiter = MemoryLimiter()
    limit_tables = tables(routes={"r": 5})
    key = KeyRow(hash="k" * 64, name="k", label="k", rpm=1, tpm=1000)
    limits = limit_tables.for_request(key, "r")
    assert [limit.scope for limit in limits] == ["key:" + "k" * 64, "route:r"]
    assert limit_tables.for_request(None, "elsewhere") == []
    counts = Counts(limiter, limit_tables, priority="normal", estimate=100)
    await counts.count_request(limits)
    assert counts.request == limits and counts.headers["X-RateLimit-Limit"] == "1"
    await counts.settle(40)  # the real count replaces the estimate
    assert counts.request == [] and (await limiter.usage(["key:" + "k" * 64]))[("key:" + "k" * 64, "tpm")] == 40
    second = Counts(limiter, limit_tables, priority="normal", estimate=100)
    with pytest.raises(GatewayError) as raised:
        await second.count_request(limits)
    assert raised.value.status == 429 and "this API key" in raised.value.message
    assert second.request == [] and raised.value.headers.get("Retry-After")


async def test_a_connections_capacity_is_taken_refused_and_given_back() -> None:
    limiter = MemoryLimiter()
    # A connection's limit has priority shares (gate/ratelimit.py): "high" may use all of it.
    counts = Counts(limiter, tables(connections={"up": 1}), priority="high", estimate=100)
    assert counts.needs("up") and not counts.needs("other")
    assert await counts.take("up") is None and counts.holding
    await counts.give_back()  # the attempts on it failed
    assert not counts.holding and (await limiter.usage(["conn:up"]))[("conn:up", "tpm")] == 0
    refusal = await Counts(limiter, tables(connections={"up": 1}), priority="high", estimate=1).take("up")
    assert refusal is not None and refusal.status == 429 and "connection up" in refusal.message
    assert refusal.metadata is not None and refusal.metadata["code"] == "resource_exhausted"
    shed = await Counts(MemoryLimiter(), tables(connections={"up": 1}), priority="normal", estimate=1).take("up")
    assert shed is not None and shed.metadata is not None and shed.metadata["code"] == "prioritization_gate_denied"


async def test_a_limit_store_that_is_down_refuses_unless_told_to_fail_open() -> None:
    limits = [Limit("key:k", rpm=1)]
    closed = Counts(DownLimiter(), tables(), priority="normal", estimate=1)  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as raised:
        await closed.count_request(limits)
    assert raised.value.status == 503 and raised.value.metadata == {"code": "rate_limit_store_unavailable"}
    opened = Counts(DownLimiter(), tables(fail_open=True), priority="normal", estimate=1)  # type: ignore[arg-type]
    await opened.count_request(limits)
    assert opened.request == [] and opened.headers == UNCOUNTED.headers() == {}  # counted nowhere: nothing to fix
    opened.request = limits
    await opened.refund()  # best effort: the store being down again raises nothing


# -- credit --------------------------------------------------------------------------------------------------------
async def test_credit_is_held_only_under_a_limit_and_settled_to_the_real_cost() -> None:
    ledger = CreditLedger()
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}
    free_chain = (Budget("key", "a", None, None),)
    held = reserve_credit(ledger, None, free_chain, False, body, [candidate("up")])
    assert isinstance(held, Reservation) and held.amount == 0.0  # nothing to hold, nothing awaited
    chain = (Budget("key", "b", 1.0, None),)
    held = reserve_credit(ledger, None, chain, True, body, [candidate("up")])
    assert isinstance(held, Reservation) and 0 < held.amount < 0.01
    assert ledger.figures("b").reserved == held.amount
    settle_credit(ledger, None, held, chain, 0.0001)
    assert (ledger.figures("b").reserved, ledger.figures("b").total) == (0.0, 0.0001)
    settle_credit(ledger, None, held, chain, 0.5)  # once only
    assert ledger.figures("b").total == 0.0001
    with pytest.raises(GatewayError) as raised:
        reserve_credit(ledger, None, (Budget("key", "c", 0.0, None),), True, body, [candidate("up")])
    assert raised.value.status == 402
