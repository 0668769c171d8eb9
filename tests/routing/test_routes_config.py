"""Configuration for routing: connections' data_collection/rpm/tpm, the `routing:` section and named `routes:`,
with errors that name the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crossroads.config import (
    BreakerConfig,
    ConditionCheck,
    ConfigError,
    RouteTargetConfig,
    RoutingConfig,
    ValueTest,
    load_config,
)
from crossroads.routing.registry import build_registry
from crossroads.routing.routes import RouteTable

PROVIDERS = [
    {"name": "oa", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "discover": False,
     "models": [{"id": "acme/small", "upstream": "small", "context_length": 16000,
                 "input_modalities": ["text", "image"], "supported_parameters": ["max_tokens", "tools"]}]},
    {"name": "claude", "type": "anthropic",
     "models": [{"id": "anthropic/claude-x", "upstream": "claude-x", "context_length": 200000,
                 "input_modalities": ["text", "image"], "supported_parameters": ["max_tokens", "top_k"]}]},
]


def write(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def with_routes(routes: object, **extra: object) -> dict:
    return {"providers": PROVIDERS, "routes": routes, **extra}


def route(**fields: object) -> dict:
    base: dict = {"name": "bot", "targets": [{"connection": "oa", "model": "small"}]}
    base.update(fields)
    return base


def config_error(tmp_path: Path, data: dict) -> ConfigError:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == path
    assert str(info.value).startswith(f"configuration error in {path}: {info.value.key}: ")
    return info.value


# -- connections ----------------------------------------------------------------------------------------------------

def test_connection_capacity_and_data_collection(tmp_path: Path) -> None:
    providers = [{**PROVIDERS[0], "data_collection": "deny", "rpm": 600, "tpm": 100000}, PROVIDERS[1]]
    config = load_config(write(tmp_path, {"providers": providers}))
    oa, claude = config.providers
    assert (oa.data_collection, oa.rpm, oa.tpm) == ("deny", 600, 100000)
    assert (claude.data_collection, claude.rpm, claude.tpm) == ("allow", None, None)


@pytest.mark.parametrize(("field_name", "value", "problem"), [
    ("data_collection", "never", "must be allow or deny, got 'never'"),
    ("data_collection", True, "must be a string, got a boolean"),
    ("rpm", 0, "must be a positive integer, got 0"),
    ("rpm", 1.5, "must be an integer"),
    ("tpm", -10, "must be a positive integer, got -10"),
    ("tpm", "lots", "must be an integer"),
])
def test_connection_field_errors(tmp_path: Path, field_name: str, value: object, problem: str) -> None:
    error = config_error(tmp_path, {"providers": [{**PROVIDERS[0], field_name: value}]})
    assert error.key == f"providers[0].{field_name}"
    assert problem in error.problem


def test_capacity_from_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CR_TEST_RPM", "120")
    path = tmp_path / "c.yaml"
    path.write_text("providers:\n  - {name: oa, type: openai, base_url: 'http://127.0.0.1:9/v1', "
                    "rpm: '${CR_TEST_RPM}', discover: false}\n"
                    "routes:\n  - {name: bot, tpm: '${CR_TEST_RPM}', targets: [{connection: oa, model: m}]}\n")
    config = load_config(str(path))
    assert config.providers[0].rpm == 120 and config.routes[0].tpm == 120


# -- routing section ------------------------------------------------------------------------------------------------

def test_routing_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"providers": PROVIDERS}))
    assert config.routing == RoutingConfig()
    assert (config.routing.retries, config.routing.breaker) == (2, BreakerConfig(failure_threshold=5, cooldown=30.0))
    assert config.routing.priority_shares == {"high": 1.0, "normal": 0.9, "low": 0.7}
    assert config.routes == []


def test_routing_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"routing": {
        "retries": 3, "breaker": {"failure_threshold": 2, "cooldown": 5, "probe_timeout": 45},
        "priority_shares": {"high": 1, "normal": 0.5, "batch": 0.25}}}))
    assert config.routing.retries == 3
    assert config.routing.breaker == BreakerConfig(failure_threshold=2, cooldown=5.0, probe_timeout=45.0)
    from crossroads.api.app import Gateway

    policy = Gateway(config).services.health.policy  # what the breakers run with
    assert (policy.failure_threshold, policy.cooldown, policy.probe_timeout) == (2, 5.0, 45.0)
    assert config.routing.priority_shares == {"high": 1.0, "normal": 0.5, "batch": 0.25}


def test_partial_breaker_keeps_the_other_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {"routing": {"breaker": {"cooldown": 2.5}}}))
    assert config.routing.breaker == BreakerConfig(failure_threshold=5, cooldown=2.5)


@pytest.mark.parametrize(("routing", "key", "problem"), [
    ({"retries": -1}, "routing.retries", "must be a non-negative integer"),
    ({"retries": "two"}, "routing.retries", "must be an integer"),
    ({"breaker": {"failure_threshold": -1}}, "routing.breaker.failure_threshold", "must be positive"),
    ({"breaker": {"cooldown": 0}}, "routing.breaker.cooldown", "must be positive"),
    ({"breaker": {"window": 3}}, "routing.breaker.window", "unknown key"),
    ({"breaker": 5}, "routing.breaker", "must be a mapping"),
    ({"priority_shares": {"low": 1.5}}, "routing.priority_shares.low", "between 0 (exclusive) and 1"),
    ({"priority_shares": {"low": 0}}, "routing.priority_shares.low", "between 0 (exclusive) and 1"),
    ({"priority_shares": {"low": "half"}}, "routing.priority_shares.low", "must be a number"),
    ({"priority_shares": [0.5]}, "routing.priority_shares", "must be a mapping"),
    ({"retry": 2}, "routing.retry", "unknown key"),
])
def test_routing_errors(tmp_path: Path, routing: dict, key: str, problem: str) -> None:
    error = config_error(tmp_path, {"routing": routing})
    assert error.key == key and problem in error.problem


# -- routes ---------------------------------------------------------------------------------------------------------

FULL_ROUTE = {
    "name": "support-bot",
    "display_name": "Support bot",
    "description": "Answers customers",
    "strategy": "weighted",
    "rpm": 60,
    "tpm": 50000,
    "targets": [
        {"connection": "oa", "model": "small", "name": "cheap", "weight": 3, "params": {"temperature": 0.1}},
        {"connection": "claude", "model": "claude-x"},
    ],
    "fallback": ["acme/small", {"connection": "claude", "model": "claude-y", "params": {"top_k": 5}}],
    "conditions": [
        {"when": {"prompt_tokens": {"gt": 8000, "lte": 100000}}, "target": "claude/claude-x"},
        {"when": {"key": ["ci", "nightly"]}, "target": "cheap"},
        {"when": {"metadata": {"tier": "free", "score": {"gte": 0.5}}}, "action": "route", "target": "cheap"},
        {"when": {"header": {"X-Team": "support", "x-retries": {"lt": 3}, "x-flag": True, "x-n": [1, 2]}},
         "action": "BLOCK", "message": "no"},
        {"when": {"header": {"x-debug": {"exists": True}}}, "action": "block"},
    ],
}


def test_full_route_parses(tmp_path: Path) -> None:
    [parsed] = load_config(write(tmp_path, with_routes([FULL_ROUTE]))).routes
    assert (parsed.name, parsed.display_name, parsed.description, parsed.strategy) == (
        "support-bot", "Support bot", "Answers customers", "weighted")
    assert (parsed.rpm, parsed.tpm, parsed.context_length) == (60, 50000, None)
    assert parsed.targets == [
        RouteTargetConfig("oa", "small", "cheap", 3.0, {"temperature": 0.1}),
        RouteTargetConfig("claude", "claude-x", "claude/claude-x", 1.0, {}),
    ]
    assert parsed.fallback == ["acme/small", RouteTargetConfig("claude", "claude-y", "claude/claude-y", 1.0,
                                                               {"top_k": 5})]
    c0, c1, c2, c3, c4 = parsed.conditions
    assert c0.checks == [ConditionCheck("prompt_tokens", None, [ValueTest("gt", 8000), ValueTest("lte", 100000)])]
    assert (c0.target, c0.block) == ("claude/claude-x", False)
    assert c1.checks == [ConditionCheck("key", None, [ValueTest("in", ("ci", "nightly"))])]
    assert c2.checks == [ConditionCheck("metadata", "tier", [ValueTest("eq", "free")]),
                         ConditionCheck("metadata", "score", [ValueTest("gte", 0.5)])]
    # Header names are lower-cased and compared values become strings (headers are text on the wire).
    assert c3.checks == [ConditionCheck("header", "x-team", [ValueTest("eq", "support")]),
                         ConditionCheck("header", "x-retries", [ValueTest("lt", 3)]),
                         ConditionCheck("header", "x-flag", [ValueTest("eq", "true")]),
                         ConditionCheck("header", "x-n", [ValueTest("in", ("1", "2"))])]
    assert (c3.block, c3.target, c3.message) == (True, None, "no")
    assert (c4.block, c4.checks[0].tests) == (True, [ValueTest("exists", True)])


def test_route_defaults(tmp_path: Path) -> None:
    [parsed] = load_config(write(tmp_path, with_routes([route()]))).routes
    assert (parsed.strategy, parsed.display_name, parsed.fallback, parsed.conditions, parsed.rpm) == (
        "ordered", "", [], [], None)
    assert parsed.targets[0].name == "oa/small" and parsed.targets[0].weight == 1.0


ROUTE_ERRORS = [
    ([{"targets": [{"connection": "oa", "model": "m"}]}], "routes[0].name", "is required"),
    ([route(name="a/b")], "routes[0].name", "no '/'"),
    ([route(), route()], "routes[1].name", "duplicate route name 'bot'"),
    ([route(kind="x")], "routes[0].kind", "unknown key"),
    ([route(targets=[])], "routes[0].targets", "at least one target"),
    ([route(targets=None)], "routes[0].targets", "is required"),
    ([route(strategy="random")], "routes[0].strategy", "must be ordered or weighted"),
    ([route(targets=[{"connection": "nope", "model": "m"}])], "routes[0].targets[0].connection",
     "no connection is named 'nope' (configured: claude, oa)"),
    ([route(targets=[{"connection": "oa"}])], "routes[0].targets[0].model", "is required"),
    ([route(targets=[{"connection": "oa", "model": "m", "weight": 2}])], "routes[0].targets[0].weight",
     "only applies to a route with strategy: weighted"),
    ([route(strategy="weighted", targets=[{"connection": "oa", "model": "m", "weight": 0}])],
     "routes[0].targets[0].weight", "must be positive"),
    ([route(targets=[{"connection": "oa", "model": "m"}, {"connection": "oa", "model": "m"}])],
     "routes[0].targets[1].name", "duplicate target name 'oa/m'"),
    ([route(targets=[{"connection": "oa", "model": "m", "params": [1]}])], "routes[0].targets[0].params",
     "must be a mapping"),
    ([route(fallback=[3])], "routes[0].fallback[0]", "must be a model id or a mapping"),
    ([route(fallback=[{"connection": "zz", "model": "m"}])], "routes[0].fallback[0].connection",
     "no connection is named 'zz'"),
    ([route(), route(name="other", fallback=["bot"])], "routes[1].fallback[0]", "'bot' is a route"),
    ([route(conditions=[{"when": {"prompt_tokens": {"gt": 5}}}])], "routes[0].conditions[0].action",
     "needs a target or action: block"),
    ([route(conditions=[{"target": "ghost"}])], "routes[0].conditions[0].target",
     "'ghost' is not one of this route's targets (oa/small)"),
    ([route(conditions=[{"action": "block", "target": "oa/small"}])], "routes[0].conditions[0].target",
     "a blocking condition picks no target"),
    ([route(conditions=[{"action": "route"}])], "routes[0].conditions[0].target", "is required for action: route"),
    ([route(conditions=[{"action": "drop"}])], "routes[0].conditions[0].action", "must be route"),
    ([route(conditions=[{"target": "oa/small", "message": "m"}])], "routes[0].conditions[0].message",
     "only applies to action: block"),
    ([route(conditions=[{"when": {"model": "x"}, "action": "block"}])], "routes[0].conditions[0].when.model",
     "unknown key"),
    ([route(conditions=[{"when": {"prompt_tokens": {"above": 5}}, "action": "block"}])],
     "routes[0].conditions[0].when.prompt_tokens.above", "unknown operator"),
    ([route(conditions=[{"when": {"prompt_tokens": {"gt": "many"}}, "action": "block"}])],
     "routes[0].conditions[0].when.prompt_tokens.gt", "must be a number"),
    ([route(conditions=[{"when": {"prompt_tokens": "many"}, "action": "block"}])],
     "routes[0].conditions[0].when.prompt_tokens.eq", "must be a number"),
    ([route(conditions=[{"when": {"header": {"x-a": {"in": "abc"}}}, "action": "block"}])],
     "routes[0].conditions[0].when.header.x-a.in", "must be a list"),
    ([route(conditions=[{"when": {"metadata": {"t": {"exists": "yes"}}}, "action": "block"}])],
     "routes[0].conditions[0].when.metadata.t.exists", "must be true or false"),
    ([route(conditions=[{"when": {"metadata": {"t": {}}}, "action": "block"}])],
     "routes[0].conditions[0].when.metadata.t", "at least one test"),
    ([route(conditions=[{"when": {"metadata": {"t": {"eq": {"a": 1}}}}, "action": "block"}])],
     "routes[0].conditions[0].when.metadata.t.eq", "must be a plain value"),
    ([route(conditions=[{"when": {"header": ["x"]}, "action": "block"}])],
     "routes[0].conditions[0].when.header", "must be a mapping"),
    ([route(rpm=0)], "routes[0].rpm", "must be a positive integer"),
    ([route(tpm="x")], "routes[0].tpm", "must be an integer"),
    ([route(context_length=-1)], "routes[0].context_length", "must be a positive integer"),
    ("bot", "routes", "must be a list"),
]


@pytest.mark.parametrize(("routes", "key", "problem"), ROUTE_ERRORS, ids=[e[1] + ":" + e[2] for e in ROUTE_ERRORS])
def test_route_errors(tmp_path: Path, routes: object, key: str, problem: str) -> None:
    error = config_error(tmp_path, with_routes(routes))
    assert error.key == key
    assert problem in error.problem


# -- RouteTable -----------------------------------------------------------------------------------------------------

def test_route_table_from_config_and_models_entries(tmp_path: Path) -> None:
    routes = [
        route(name="support-bot", display_name="Support bot", description="Answers customers",
              targets=[{"connection": "oa", "model": "small"}, {"connection": "claude", "model": "claude-x"},
                       {"connection": "oa", "model": "unlisted"}]),
        route(name="long", context_length=100000, targets=[{"connection": "claude", "model": "claude-x"}]),
    ]
    config = load_config(write(tmp_path, with_routes(routes)))
    table = RouteTable.from_config(config)
    assert len(table) == 2 and table.get("support-bot") is not None and table.get("acme/small") is None
    entries = {e["id"]: e for e in table.models_entries(build_registry(config))}
    support = entries["support-bot"]
    assert (support["name"], support["description"]) == ("Support bot", "Answers customers")
    assert support["context_length"] == 16000  # smallest known target; the ad-hoc one is unknown, not zero
    assert support["input_modalities"] == ["text", "image"]
    assert support["supported_parameters"] == ["max_tokens"]  # what every known target supports
    assert entries["long"]["context_length"] == 100000  # configured value wins
    assert entries["long"]["name"] == "long" and entries["long"]["supported_parameters"] == ["max_tokens", "top_k"]


def test_empty_route_table() -> None:
    table = RouteTable()
    assert len(table) == 0 and table.get("anything") is None and table.models_entries() == []
