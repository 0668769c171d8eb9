"""`crossroads.routing.select.plan` over registries built in the test (no network): which deployments a request is
tried on, in which order, and the errors when none is left."""

from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crossroads.catalog import ModelSpec, Pricing
from crossroads.config import ConnectionConfig, load_config
from crossroads.errors import GatewayError
from crossroads.providers.http import UpstreamClient
from crossroads.providers.registry import make_adapter
from crossroads.routing.registry import Connection, Registry, build_registry
from crossroads.routing.routes import RouteTable
from crossroads.routing.select import AUTO_MODELS, RoutePlan, plan
from crossroads.store.rows import KeyRow

# -- fixtures -------------------------------------------------------------------------------------------------------


@dataclass
class FakeStats:
    down: set[str] = field(default_factory=set)  # connection names, or "connection:upstream model" endpoints
    latencies: dict[str, float] = field(default_factory=dict)
    throughputs: dict[str, float] = field(default_factory=dict)

    def available(self, connection: str, model: str) -> bool:
        return connection not in self.down and f"{connection}:{model}" not in self.down

    def latency(self, connection: str, model: str) -> float | None:
        return self.latencies.get(connection)

    def throughput(self, connection: str, model: str) -> float | None:
        return self.throughputs.get(connection)


def connection(name: str, kind: str = "openai", data_collection: str = "allow") -> Connection:
    config = ConnectionConfig(name=name, type=kind, base_url="http://127.0.0.1:9/v1", data_collection=data_collection)
    return Connection(config, make_adapter(config), UpstreamClient(5.0))


def spec(model_id: str, prompt: float = 1.0, completion: float = 0.0, *, upstream: str | None = None,
         params: list[str] | None = None, context: int | None = None, inputs: list[str] | None = None) -> ModelSpec:
    """Prices in USD per million tokens, as configured."""
    return ModelSpec(id=model_id, upstream=upstream or model_id.split("/")[-1], name=model_id,
                     context_length=context, input_modalities=inputs or ["text"],
                     pricing=Pricing.from_per_million({"prompt": prompt, "completion": completion}),
                     supported_parameters=params if params is not None else ["max_tokens", "temperature"])


def registry(*served: tuple[str, ModelSpec], kinds: dict[str, str] | None = None,
             deny: tuple[str, ...] = ()) -> Registry:
    reg = Registry()
    for name, model in served:
        conn = reg.connections.get(name)
        if conn is None:
            conn = reg.connections[name] = connection(name, (kinds or {}).get(name, "openai"),
                                                      "deny" if name in deny else "allow")
        reg.add(model, conn)
    return reg


def three_way(prices: tuple[float, float, float] = (1.0, 2.0, 3.0), **kwargs: Any) -> Registry:
    """One model, m/x, served by connections a, b and c at the given prompt prices."""
    return registry(*((name, spec("m/x", price)) for name, price in zip("abc", prices, strict=True)), **kwargs)


def body(model: str = "m/x", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def run(reg: Registry, request: dict[str, Any], *, routes: RouteTable | None = None, stats: FakeStats | None = None,
        headers: dict[bytes, bytes] | None = None, key: KeyRow | None = None, prompt_tokens: int = 10,
        seed: int = 1) -> RoutePlan:
    return plan(reg, routes or RouteTable(), request, headers=headers or {}, key=key, stats=stats or FakeStats(),
                prompt_tokens=prompt_tokens, rng=random.Random(seed))


def names(result: RoutePlan) -> list[str]:
    return [c.deployment.connection.name for c in result.candidates]


def served(result: RoutePlan) -> list[tuple[str, str]]:
    return [(c.model_id, c.deployment.connection.name) for c in result.candidates]


def refused(reg: Registry, request: dict[str, Any], **kwargs: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        run(reg, request, **kwargs)
    return info.value


# -- default: price-weighted ----------------------------------------------------------------------------------------

def test_price_weighting_follows_inverse_square_of_price() -> None:
    reg = three_way((1.0, 2.0, 4.0))
    rng = random.Random(7)
    firsts: Counter[str] = Counter()
    draws = 20000
    for _ in range(draws):
        result = plan(reg, RouteTable(), body(), headers={}, key=None, stats=FakeStats(), prompt_tokens=10, rng=rng)
        assert sorted(names(result)) == ["a", "b", "c"]  # the others stay as fallbacks
        firsts[names(result)[0]] += 1
    weights = {"a": 1.0, "b": 1 / 4, "c": 1 / 16}
    total = sum(weights.values())
    for name, weight in weights.items():
        assert firsts[name] / draws == pytest.approx(weight / total, abs=0.015), (name, firsts)


def test_price_weighting_uses_completion_price_too() -> None:
    # a: 1 + 1 = 2 per M, b: 1 + 3 = 4 per M -> weights 1 and 1/4.
    reg = registry(("a", spec("m/x", 1.0, 1.0)), ("b", spec("m/x", 1.0, 3.0)))
    rng = random.Random(3)
    firsts = Counter(names(plan(reg, RouteTable(), body(), headers={}, key=None, stats=FakeStats(),
                                prompt_tokens=1, rng=rng))[0] for _ in range(8000))
    assert firsts["a"] / 8000 == pytest.approx(0.8, abs=0.02)


def test_free_deployments_come_before_priced_ones() -> None:
    reg = registry(("paid", spec("m/x", 0.01)), ("local", spec("m/x", 0.0)), ("cheap", spec("m/x", 0.001)))
    for seed in range(50):
        assert names(run(reg, body(), seed=seed))[0] == "local"


def test_single_deployment_and_body_left_untouched() -> None:
    reg = registry(("a", spec("m/x")))
    request = body(provider={"order": ["a"]}, models=["m/x"], tools=[{"type": "function", "function": {"name": "f"}}])
    before = copy.deepcopy(request)
    result = run(reg, request)
    assert served(result) == [("m/x", "a")]
    assert result.candidates[0].overrides == {} and result.candidates[0].route is None
    assert request == before


# -- provider.order / only / ignore / allow_fallbacks ---------------------------------------------------------------

ORDER_CASES = [
    ({"order": ["c", "b"]}, ["c", "b", "a"], {"a", "b", "c"}),
    ({"order": ["C"]}, ["c"], {"a", "b", "c"}),  # names are case-insensitive
    ({"order": ["nope", "b"]}, ["b"], {"a", "b", "c"}),
    ({"order": ["c"], "allow_fallbacks": False}, ["c"], {"c"}),
    ({"order": ["c", "a"], "allow_fallbacks": False}, ["c", "a"], {"a", "c"}),
    ({"only": ["a", "b"]}, [], {"a", "b"}),
    ({"ignore": ["a"]}, [], {"b", "c"}),
    ({"only": ["b", "c"], "ignore": ["c"]}, ["b"], {"b"}),
    ({"only": ["b", "c"], "order": ["c"]}, ["c", "b"], {"b", "c"}),
    ({"order": ["b"], "sort": "price"}, ["b", "a", "c"], {"a", "b", "c"}),
]


@pytest.mark.parametrize(("provider", "prefix", "members"), ORDER_CASES, ids=[str(c[0]) for c in ORDER_CASES])
def test_order_only_ignore_allow_fallbacks(provider: dict, prefix: list[str], members: set[str]) -> None:
    reg = three_way()
    for seed in range(20):  # whatever the random draw of the unlisted ones
        result = names(run(reg, body(provider=provider), seed=seed))
        assert result[:len(prefix)] == prefix
        assert set(result) == members and len(result) == len(members)


def test_allow_fallbacks_false_without_order_keeps_only_the_first_pick() -> None:
    reg = three_way((1.0, 1.0, 1.0))
    picks = {tuple(names(run(reg, body(provider={"allow_fallbacks": False}), seed=s))) for s in range(40)}
    assert all(len(p) == 1 for p in picks)
    assert {p[0] for p in picks} == {"a", "b", "c"}  # still load-balanced


def test_allow_fallbacks_false_with_order_nobody_serves_is_404_naming_it() -> None:
    error = refused(three_way(), body(provider={"order": ["zzz"], "allow_fallbacks": False}))
    assert error.status == 404
    assert "provider.allow_fallbacks=false" in error.message and "a/x" in error.message


# -- require_parameters / data_collection / max_price ---------------------------------------------------------------

def params_registry() -> Registry:
    return registry(("full", spec("m/x", 2.0, params=["max_tokens", "temperature", "tools", "tool_choice", "seed"])),
                    ("basic", spec("m/x", 1.0, params=["max_tokens", "temperature"])))


REQUIRE_CASES = [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, True, {"full"}),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, False, {"full", "basic"}),
    ({"temperature": 0.2, "max_completion_tokens": 20}, True, {"full", "basic"}),  # max_tokens covers the alias
    ({"seed": 1, "temperature": 0.1}, True, {"full"}),
    ({"stream": True, "user": "u", "metadata": {"a": 1}}, True, {"full", "basic"}),  # not parameters
]


@pytest.mark.parametrize(("extra", "require", "expected"), REQUIRE_CASES)
def test_require_parameters(extra: dict, require: bool, expected: set[str]) -> None:
    result = run(params_registry(), body(provider={"require_parameters": require}, **extra))
    assert set(names(result)) == expected


def test_require_parameters_404_names_the_missing_parameter() -> None:
    error = refused(params_registry(), body(provider={"require_parameters": True}, top_k=5))
    assert error.status == 404
    assert "provider.require_parameters" in error.message and "top_k" in error.message
    assert set(error.metadata["requirements"]["provider.require_parameters (no support for top_k)"]) == {
        "full/x", "basic/x"}


@pytest.mark.parametrize(("setting", "deny", "expected"), [
    ("deny", ("b",), {"b"}),
    ("allow", ("b",), {"a", "b", "c"}),
    (None, (), {"a", "b", "c"}),
    ("deny", ("a", "c"), {"a", "c"}),
])
def test_data_collection(setting: str | None, deny: tuple[str, ...], expected: set[str]) -> None:
    provider = {"data_collection": setting} if setting else {}
    assert set(names(run(three_way(deny=deny), body(provider=provider)))) == expected


def test_data_collection_deny_with_no_such_connection_is_404() -> None:
    error = refused(three_way(), body(provider={"data_collection": "deny"}))
    assert error.status == 404 and "data_collection" in error.message


def price_registry() -> Registry:
    return registry(("cheap", spec("m/x", 1.0, 2.0)), ("dear", spec("m/x", 5.0, 10.0)))


@pytest.mark.parametrize(("max_price", "expected"), [
    ({"prompt": 2}, {"cheap"}),
    ({"prompt": 5, "completion": 10}, {"cheap", "dear"}),  # limits are inclusive
    ({"prompt": 4.99}, {"cheap"}),
    ({"completion": 100}, {"cheap", "dear"}),
    ({"request": 0}, {"cheap", "dear"}),  # no per-request price configured
    # As OpenRouter's document and both official SDKs send them: decimal strings.
    ({"prompt": "2"}, {"cheap"}),
    ({"prompt": "4.99", "completion": "100"}, {"cheap"}),
    ({"prompt": " 5 ", "completion": "10.0"}, {"cheap", "dear"}),
])
def test_max_price_in_usd_per_million_tokens(max_price: dict, expected: set[str]) -> None:
    assert set(names(run(price_registry(), body(provider={"max_price": max_price})))) == expected


def test_max_price_404_names_the_price_field() -> None:
    error = refused(price_registry(), body(provider={"max_price": {"completion": 1}}))
    assert error.status == 404 and "provider.max_price.completion" in error.message
    assert "cheap/x" in error.message and "dear/x" in error.message


# -- sort, :nitro, :floor -------------------------------------------------------------------------------------------

SORT_STATS = FakeStats(latencies={"a": 0.5, "b": 0.2}, throughputs={"a": 50.0, "c": 120.0})
SORT_CASES = [
    (body(provider={"sort": "price"}), ["a", "b", "c"]),
    (body(provider={"sort": {"by": "price"}}), ["a", "b", "c"]),
    (body("m/x:floor"), ["a", "b", "c"]),
    # latency ascending, c (no figure) last
    (body(provider={"sort": "latency"}), ["b", "a", "c"]),
    # throughput descending, b (no figure) last
    (body(provider={"sort": "throughput"}), ["c", "a", "b"]),
    (body("m/x:nitro"), ["c", "a", "b"]),
    (body("m/x:nitro", provider={"sort": "latency"}), ["b", "a", "c"]),  # an explicit sort wins
    (body("m/x:nitro", provider={"order": ["b"]}), ["b", "c", "a"]),  # order first, then the sort
]


@pytest.mark.parametrize(("request_body", "expected"), SORT_CASES, ids=[str(i) for i in range(len(SORT_CASES))])
def test_sort_and_suffixes(request_body: dict, expected: list[str]) -> None:
    reg = three_way((1.0, 2.0, 3.0))
    for seed in range(5):  # sorting disables the random draw
        result = run(reg, request_body, stats=SORT_STATS, seed=seed)
        assert names(result) == expected
        assert {c.model_id for c in result.candidates} == {"m/x"}


def test_unknown_figures_follow_price_order() -> None:
    reg = three_way((3.0, 2.0, 1.0))
    assert names(run(reg, body(provider={"sort": "latency"}), stats=FakeStats())) == ["c", "b", "a"]


def test_suffix_kept_when_the_id_exists_literally() -> None:
    reg = registry(("a", spec("m/x:floor")), ("b", spec("m/x")))
    assert served(run(reg, body("m/x:floor"))) == [("m/x:floor", "a")]


def test_suffix_on_an_unknown_model_is_404() -> None:
    assert refused(three_way(), body("m/nope:nitro")).status == 404


# -- vendor header --------------------------------------------------------------------------------------------------

def vendor_registry() -> Registry:
    return registry(("oa", spec("m/x", 1.0)), ("claude", spec("m/x", 2.0)), ("gem", spec("m/x", 3.0)),
                    kinds={"claude": "anthropic", "gem": "gemini"})


@pytest.mark.parametrize(("value", "expected"), [
    (b"claude", {"claude"}),
    (b"CLAUDE", {"claude"}),
    (b"anthropic", {"claude"}),
    (b"gemini", {"gem"}),
    (b"google", {"gem"}),
    (b"openai", {"oa"}),
    (b"auto", {"oa", "claude", "gem"}),
    (b"", {"oa", "claude", "gem"}),
])
def test_vendor_header_pins_the_connection(value: bytes, expected: set[str]) -> None:
    assert set(names(run(vendor_registry(), body(), headers={b"vendor": value}))) == expected


def test_vendor_header_matching_nothing_is_404_naming_it() -> None:
    error = refused(vendor_registry(), body(), headers={b"vendor": b"mistral"})
    assert error.status == 404 and "vendor header ('mistral')" in error.message


# -- models fallback ------------------------------------------------------------------------------------------------

def fallback_registry() -> Registry:
    return registry(("a", spec("m/one")), ("b", spec("m/two")), ("c", spec("m/three")), ("c", spec("m/two", 9.0)))


def test_models_are_tried_after_model_in_order() -> None:
    result = run(fallback_registry(), body("m/one", models=["m/three", "m/one", "m/two"], provider={"sort": "price"}))
    assert served(result) == [("m/one", "a"), ("m/three", "c"), ("m/two", "b"), ("m/two", "c")]


def test_models_alone_start_with_their_first_entry() -> None:
    # formats/chat.py sets model = models[0] when model is missing; the list is not tried twice.
    result = run(fallback_registry(), body("m/two", models=["m/two", "m/one"], provider={"sort": "price"}))
    assert served(result) == [("m/two", "b"), ("m/two", "c"), ("m/one", "a")]


def test_unknown_fallback_model_is_404() -> None:
    error = refused(fallback_registry(), body("m/one", models=["m/missing"]))
    assert error.status == 404 and "m/missing" in error.message


def test_fallback_models_respect_the_keys_allowed_models() -> None:
    key = KeyRow(hash="h", name="team", label="l", allowed_models=["m/one", "m/th*"])
    result = run(fallback_registry(), body("m/one", models=["m/two", "m/three"]), key=key)
    assert served(result) == [("m/one", "a"), ("m/three", "c")]


def test_fallback_models_all_disallowed_leave_the_primary() -> None:
    key = KeyRow(hash="h", name="team", label="l", allowed_models=["m/one"])
    result = run(fallback_registry(), body("m/one", models=["m/two", "m/three"]), key=key)
    assert served(result) == [("m/one", "a")]


def test_filters_apply_to_every_model_in_the_list() -> None:
    result = run(fallback_registry(), body("m/one", models=["m/two"], provider={"ignore": ["a", "b"]}))
    assert served(result) == [("m/two", "c")]


@pytest.mark.parametrize(("models", "field_name"), [("m/two", "models"), ([1], "models[0]"), ([""], "models[0]")])
def test_malformed_models_is_400(models: Any, field_name: str) -> None:
    error = refused(fallback_registry(), body("m/one", models=models))
    assert error.status == 400 and error.metadata == {"field": field_name}


# -- unavailable connections ----------------------------------------------------------------------------------------

def test_unavailable_connections_go_last_not_away() -> None:
    stats = FakeStats(down={"a"})
    for seed in range(10):
        result = names(run(three_way((1.0, 50.0, 50.0)), body(), stats=stats, seed=seed))
        assert result[-1] == "a" and set(result) == {"a", "b", "c"}


def test_unavailable_goes_after_fallback_models_too() -> None:
    result = run(fallback_registry(), body("m/one", models=["m/three"]), stats=FakeStats(down={"a"}))
    assert served(result) == [("m/three", "c"), ("m/one", "a")]


def test_order_and_allow_fallbacks_false_prefer_a_healthy_pick() -> None:
    stats = FakeStats(down={"a"})
    assert names(run(three_way(), body(provider={"order": ["a", "b"]}), stats=stats)) == ["b", "c", "a"]
    for seed in range(10):
        assert names(run(three_way((1.0, 1.0, 1.0)), body(provider={"allow_fallbacks": False}), stats=stats,
                         seed=seed)) != ["a"]


def test_all_unavailable_still_plans_them() -> None:
    assert set(names(run(three_way(), body(), stats=FakeStats(down={"a", "b", "c"})))) == {"a", "b", "c"}


def test_an_unavailable_endpoint_goes_last_not_its_whole_connection() -> None:
    # c serves m/three (upstream "three") and m/two (upstream "two"); only c's "two" endpoint is ejected or cool.
    request = body("m/two", models=["m/three"], provider={"sort": "price"})
    assert served(run(fallback_registry(), request)) == [("m/two", "b"), ("m/two", "c"), ("m/three", "c")]
    result = run(fallback_registry(), request, stats=FakeStats(down={"c:two"}))
    assert served(result) == [("m/two", "b"), ("m/three", "c"), ("m/two", "c")]


# -- auto router ----------------------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "f"}}]
IMAGE_MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "what?"},
                                               {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]


def auto_registry() -> Registry:
    return registry(
        ("local", spec("x/plain", 0.1, params=["max_tokens"], context=8192)),
        ("p1", spec("x/tooly", 1.0, params=["max_tokens", "tools"], context=32000)),
        ("p2", spec("x/vision", 2.0, params=["max_tokens", "tools"], context=128000, inputs=["text", "image"])),
        ("p3", spec("x/long", 3.0, params=["max_tokens", "tools"], context=1_000_000)),
        ("p3", spec("x/mystery", 0.05, params=["max_tokens"])),  # context unknown: counted as 8192 tokens
    )


AUTO_CASES = [
    ({}, 10, "x/mystery"),
    ({"tools": TOOLS}, 10, "x/tooly"),
    ({"messages": IMAGE_MESSAGES}, 10, "x/vision"),
    ({"messages": IMAGE_MESSAGES, "tools": TOOLS}, 10, "x/vision"),
    ({}, 9000, "x/tooly"),  # too long for the 8K models
    ({}, 100_000, "x/vision"),
    ({}, 200_000, "x/long"),
    ({"max_tokens": 40_000}, 1000, "x/vision"),  # room for the answer counts
    ({"tools": TOOLS}, 500_000, "x/long"),
]


@pytest.mark.parametrize(("extra", "prompt_tokens", "first"), AUTO_CASES)
@pytest.mark.parametrize("auto_id", ["openrouter/auto", "crossroads/auto"])
def test_auto_router_picks_the_cheapest_model_that_fits(auto_id: str, extra: dict, prompt_tokens: int,
                                                        first: str) -> None:
    result = run(auto_registry(), {**body(auto_id), **extra}, prompt_tokens=prompt_tokens)
    assert result.candidates[0].model_id == first  # the response reports the model that served
    prices = [c.deployment.model.pricing.prompt for c in result.candidates]
    assert prices == sorted(prices)


def test_auto_router_tries_a_few_models_cheapest_first() -> None:
    result = run(auto_registry(), body("openrouter/auto"), prompt_tokens=10)
    assert [c.model_id for c in result.candidates] == ["x/mystery", "x/plain", "x/tooly"][:AUTO_MODELS]


def test_auto_router_honours_the_key_and_the_provider_filters() -> None:
    key = KeyRow(hash="h", name="k", label="l", allowed_models=["x/v*", "x/long"])
    assert run(auto_registry(), body("openrouter/auto"), key=key).candidates[0].model_id == "x/vision"
    assert run(auto_registry(), body("openrouter/auto", provider={"ignore": ["p3", "local"]})).candidates[
        0].model_id == "x/tooly"


def test_auto_router_404_names_the_unmet_need() -> None:
    error = refused(auto_registry(), {**body("openrouter/auto"), "messages": IMAGE_MESSAGES}, prompt_tokens=500_000)
    assert error.status == 404
    assert "image input" in error.message and "a context of at least 500000 tokens" in error.message


# -- named routes ---------------------------------------------------------------------------------------------------

ROUTES_YAML = """
providers:
  - name: oa
    type: openai
    base_url: http://127.0.0.1:9/v1
    discover: false
    models:
      - {id: acme/small, upstream: small, context_length: 16000, pricing: {prompt: 0.1, completion: 0.2}}
      - {id: acme/big, upstream: big, context_length: 128000, pricing: {prompt: 3, completion: 6}}
  - name: claude
    type: anthropic
    models:
      - {id: anthropic/claude-x, upstream: claude-x, context_length: 200000}
routes:
  - name: support-bot
    description: Customer support
    targets:
      - {connection: claude, model: claude-x, name: primary, params: {temperature: 0.2}}
      - {connection: oa, model: small, name: cheap}
      - {connection: oa, model: big, name: big, params: {max_tokens: 4000}}
    fallback:
      - acme/big
      - {connection: oa, model: unlisted-model}
      - acme/not-configured
    conditions:
      - when: {header: {x-abuse: "yes"}}
        action: BLOCK
        message: Not for you
      - when: {prompt_tokens: {gt: 10000}}
        target: big
      - when: {key: [batch-job, nightly]}
        target: cheap
      - when: {metadata: {tier: free}}
        target: cheap
      - when: {header: {x-team: [support, sales]}, metadata: {priority: {gte: 5}}}
        target: primary
      - when: {metadata: {plan: {exists: false}}, header: {x-plan-check: "on"}}
        action: block
  - name: split
    strategy: weighted
    targets:
      - {connection: oa, model: small, weight: 3}
      - {connection: claude, model: claude-x, weight: 1}
"""


@pytest.fixture
def routed(tmp_path: Path) -> tuple[Registry, RouteTable]:
    path = tmp_path / "crossroads.yaml"
    path.write_text(ROUTES_YAML)
    config = load_config(str(path))
    return build_registry(config), RouteTable.from_config(config)


def route_plan(routed: tuple[Registry, RouteTable], request: dict[str, Any], **kwargs: Any) -> RoutePlan:
    reg, routes = routed
    return run(reg, request, routes=routes, **kwargs)


def test_ordered_route_then_fallback_chain(routed: tuple[Registry, RouteTable]) -> None:
    result = route_plan(routed, body("support-bot"))
    assert served(result) == [
        ("anthropic/claude-x", "claude"), ("acme/small", "oa"), ("acme/big", "oa"),
        ("acme/big", "oa"),  # the fallback's plain acme/big (no overrides) is a distinct attempt from target "big"
        ("oa/unlisted-model", "oa"),  # ad hoc: the connection does not list it
    ]  # acme/not-configured is skipped: an operator's stale fallback must not fail the request
    assert [c.overrides for c in result.candidates] == [{"temperature": 0.2}, {}, {"max_tokens": 4000}, {}, {}]
    assert {c.route for c in result.candidates} == {"support-bot"}
    assert result.candidates[4].deployment.model.upstream == "unlisted-model"


def test_weighted_route_draws_by_weight(routed: tuple[Registry, RouteTable]) -> None:
    reg, routes = routed
    rng = random.Random(11)
    firsts = Counter()
    for _ in range(6000):
        result = plan(reg, routes, body("split"), headers={}, key=None, stats=FakeStats(), prompt_tokens=5, rng=rng)
        assert len(result.candidates) == 2
        firsts[result.candidates[0].model_id] += 1
    assert firsts["acme/small"] / 6000 == pytest.approx(0.75, abs=0.02)


def key_named(name: str) -> KeyRow:
    return KeyRow(hash="0" * 64, name=name, label="sk-or-v1-000...000")


CONDITION_CASES = [
    ("prompt tokens over 10000", {}, {}, None, 10_001, "big"),
    ("prompt tokens at 10000", {}, {}, None, 10_000, None),
    ("key name listed", {}, {}, key_named("nightly"), 10, "cheap"),
    ("key name not listed", {}, {}, key_named("someone"), 10, None),
    ("master key has no name", {}, {}, None, 10, None),
    ("metadata equals", {"metadata": {"tier": "free"}}, {}, None, 10, "cheap"),
    ("metadata differs", {"metadata": {"tier": "paid"}}, {}, None, 10, None),
    ("header in list and metadata number", {"metadata": {"priority": 7}}, {b"x-team": b"sales"}, None, 10, "primary"),
    ("header in list, metadata too low", {"metadata": {"priority": 2}}, {b"x-team": b"sales"}, None, 10, None),
    ("header not in list", {"metadata": {"priority": 9}}, {b"x-team": b"hr"}, None, 10, None),
    ("first match wins", {"metadata": {"tier": "free"}}, {}, None, 50_000, "big"),
]


@pytest.mark.parametrize(("case", "extra", "headers", "key", "prompt_tokens", "target"), CONDITION_CASES,
                         ids=[c[0] for c in CONDITION_CASES])
def test_route_conditions_pick_a_target(routed: tuple[Registry, RouteTable], case: str, extra: dict,
                                        headers: dict, key: KeyRow | None, prompt_tokens: int,
                                        target: str | None) -> None:
    result = route_plan(routed, body("support-bot", **extra), headers=headers, key=key, prompt_tokens=prompt_tokens)
    first = result.candidates[0]
    expected = {"big": ("acme/big", {"max_tokens": 4000}), "cheap": ("acme/small", {}),
                "primary": ("anthropic/claude-x", {"temperature": 0.2}), None: ("anthropic/claude-x",
                                                                                 {"temperature": 0.2})}[target]
    assert (first.model_id, first.overrides) == expected
    if target is not None:
        # A condition's target replaces the route's targets; the fallback chain still follows.
        assert [(c.model_id, c.overrides) for c in result.candidates[1:]] == [
            ("acme/big", {}), ("oa/unlisted-model", {})]


@pytest.mark.parametrize(("extra", "headers", "message"), [
    ({}, {b"x-abuse": b"yes"}, "Not for you"),
    ({}, {b"x-plan-check": b"on"}, "routing condition"),  # metadata.plan missing: exists false holds
])
def test_route_block_is_400_with_code(routed: tuple[Registry, RouteTable], extra: dict, headers: dict,
                                      message: str) -> None:
    reg, routes = routed
    error = refused(reg, body("support-bot", **extra), routes=routes, headers=headers)
    assert error.status == 400
    assert error.metadata["code"] == "blocked_by_routing_condition" and error.metadata["route"] == "support-bot"
    assert message in error.message
    assert error.payload()["error"]["metadata"]["code"] == "blocked_by_routing_condition"


def test_block_condition_not_met_when_metadata_present(routed: tuple[Registry, RouteTable]) -> None:
    result = route_plan(routed, body("support-bot", metadata={"plan": "gold"}), headers={b"x-plan-check": b"on"})
    assert result.candidates[0].model_id == "anthropic/claude-x"


def test_blocking_route_in_models_fallback_only_drops_out(routed: tuple[Registry, RouteTable]) -> None:
    result = route_plan(routed, body("acme/small", models=["support-bot"]), headers={b"x-abuse": b"yes"})
    assert served(result) == [("acme/small", "oa")]


def test_request_filters_apply_to_route_targets(routed: tuple[Registry, RouteTable]) -> None:
    result = route_plan(routed, body("support-bot", provider={"ignore": ["claude"]}))
    assert "claude" not in names(result) and result.candidates[0].model_id == "acme/small"
    result = route_plan(routed, body("support-bot"), headers={b"vendor": b"anthropic"})
    assert served(result) == [("anthropic/claude-x", "claude")]
    reg, routes = routed
    error = refused(reg, body("split", provider={"only": ["nobody"]}), routes=routes)
    assert error.status == 404 and "provider.only excluded oa/small, claude/claude-x" in error.message


def test_route_targets_keep_the_route_order_despite_sort(routed: tuple[Registry, RouteTable]) -> None:
    result = route_plan(routed, body("support-bot", provider={"sort": "price"}))
    assert result.candidates[0].model_id == "anthropic/claude-x"


def test_unavailable_route_target_goes_last(routed: tuple[Registry, RouteTable]) -> None:
    result = route_plan(routed, body("support-bot"), stats=FakeStats(down={"claude"}))
    assert names(result)[-1] == "claude" and result.candidates[0].model_id == "acme/small"


def test_route_entries_for_the_models_list(routed: tuple[Registry, RouteTable]) -> None:
    reg, routes = routed
    entries = routes.models_entries(reg)
    assert [e["id"] for e in entries] == ["split", "support-bot"]
    support = entries[1]
    assert support["name"] == "support-bot" and support["description"] == "Customer support"
    assert support["context_length"] == 16000  # the smallest of its targets': any of them may serve
    assert entries[0]["description"] == "Route over oa/small, claude/claude-x"
    assert routes.models_entries()[1]["context_length"] is None  # unknown without the registry


# -- malformed provider preferences ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("provider", "field_name"), [
    ("openai", "provider"),
    ({"order": "a"}, "provider.order"),
    ({"only": [1]}, "provider.only"),
    ({"ignore": {"a": 1}}, "provider.ignore"),
    ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
    ({"require_parameters": 1}, "provider.require_parameters"),
    ({"data_collection": "never"}, "provider.data_collection"),
    ({"sort": "speed"}, "provider.sort"),
    ({"max_price": 3}, "provider.max_price"),
    ({"max_price": {"prompt": -1}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": "-1"}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": "1e3"}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": "cheap"}}, "provider.max_price.prompt"),
    ({"max_price": {"prompt": "nan"}}, "provider.max_price.prompt"),
    ({"max_price": {"tokens": 1}}, "provider.max_price.tokens"),
])
def test_malformed_provider_preferences_are_400(provider: Any, field_name: str) -> None:
    error = refused(three_way(), body(provider=provider))
    assert error.status == 400 and error.metadata == {"field": field_name}
    assert field_name in error.message


def test_unknown_model_is_404_and_unknown_provider_keys_pass() -> None:
    assert refused(three_way(), body("m/none")).status == 404
    assert len(run(three_way(), body(provider={"quantizations": ["fp8"]})).candidates) == 3


def test_404_lists_every_requirement_that_excluded_something() -> None:
    reg = three_way(deny=("c",))
    error = refused(reg, body(provider={"ignore": ["a"], "only": ["a", "b", "c"], "data_collection": "deny",
                                        "max_price": {"prompt": 1}}))
    assert error.status == 404
    assert "provider.ignore excluded a/x" in error.message
    assert "provider.data_collection=deny" in error.message and "b/x" in error.message
    assert "provider.max_price.prompt excluded c/x" in error.message
