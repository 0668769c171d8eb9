"""Named routes: model names of the operator's own (VM-X's "AI resources"), defined under `routes:` in the config.

A client sends `"model": "support-bot"`; the route decides where that goes:

- `targets` — connection + upstream model, each with optional parameter overrides. `strategy: ordered` tries them in
  the listed order; `strategy: weighted` draws the first by weight and the rest in weighted-random order after it.
- `fallback` — model ids (catalog/config ids or `<connection>/<model>`) or further targets, tried after the targets.
- `conditions` — checked in order on every request; the first whose checks all hold decides: it either picks one
  target (that target, then the fallback chain) or blocks the request (HTTP 400,
  `error.metadata.code = "blocked_by_routing_condition"`). No match: the strategy above applies.

Condition checks look at the estimated prompt tokens, the API key's name, a field of the request body's `metadata`
object, or a request header. A missing subject (no such header, the master key, no such metadata field) fails every
test except `ne`, `not_in` and `exists: false`.

This module only decides; `routing/select.py` turns the chosen targets into deployments and applies the request's
provider filters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crossroads.config import (
    ConditionCheck,
    Config,
    RouteConditionConfig,
    RouteConfig,
    RouteTargetConfig,
    ValueTest,
)
from crossroads.errors import GatewayError

if TYPE_CHECKING:
    from crossroads.routing.registry import Registry
    from crossroads.store.rows import KeyRow

BLOCKED_CODE = "blocked_by_routing_condition"
_MISSING = object()


@dataclass(slots=True)
class RouteTarget:
    name: str
    connection: str
    model: str
    weight: float
    overrides: dict[str, Any]  # shared by every request: read it, never change it


@dataclass(slots=True)
class _Check:
    subject: str
    field: str | None
    header: bytes | None  # the header name as it arrives (lower-case bytes), precomputed once
    tests: list[ValueTest]


@dataclass(slots=True)
class _Condition:
    index: int
    checks: list[_Check]
    target: RouteTarget | None
    block: bool
    message: str | None


@dataclass(slots=True)
class Route:
    name: str
    display_name: str
    description: str
    weighted: bool
    targets: list[RouteTarget]
    fallback: list[str | RouteTarget] = field(default_factory=list)
    conditions: list[_Condition] = field(default_factory=list)
    context_length: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    workspace: str | None = None  # the name of the workspace that owns it (None: everyone's)

    def select(self, *, prompt_tokens: int, key: KeyRow | None, body: dict[str, Any], headers: dict[bytes, bytes],
               rng: random.Random) -> list[RouteTarget]:
        """The targets to try, in order (the fallback chain is separate); raises the 400 of a blocking condition."""
        if self.conditions:
            metadata = body.get("metadata")
            if not isinstance(metadata, dict):
                metadata = None
            for condition in self.conditions:
                if all(_check_holds(c, prompt_tokens, key, metadata, headers) for c in condition.checks):
                    if condition.block:
                        raise self._blocked(condition)
                    assert condition.target is not None  # config guarantees route conditions name a target
                    return [condition.target]
        if self.weighted and len(self.targets) > 1:
            return weighted_order(self.targets, [t.weight for t in self.targets], rng)
        return self.targets

    def _blocked(self, condition: _Condition) -> GatewayError:
        message = condition.message or f"This request was blocked by a routing condition of {self.name!r}"
        return GatewayError(400, message, metadata={"code": BLOCKED_CODE, "route": self.name,
                                                    "condition": condition.index})


def weighted_order(items: list[Any], weights: list[float], rng: random.Random) -> list[Any]:
    """Weighted random order without replacement: item i comes first with probability weight_i / sum(weights).

    Each item draws an exponential "arrival time" with rate = its weight and the earliest arrives first; this is
    the same distribution as drawing by weight, removing the winner and drawing again.
    """
    keyed = sorted(zip((rng.expovariate(w) for w in weights), range(len(items)), strict=True))
    return [items[i] for _, i in keyed]


def _check_holds(check: _Check, prompt_tokens: int, key: KeyRow | None, metadata: dict[str, Any] | None,
                 headers: dict[bytes, bytes]) -> bool:
    subject = check.subject
    value: Any
    if subject == "prompt_tokens":
        value = prompt_tokens
    elif subject == "key":
        value = key.name if key is not None else _MISSING
    elif subject == "header":
        raw = headers.get(check.header or b"")
        value = raw.decode("latin-1") if raw is not None else _MISSING
    else:
        value = metadata.get(check.field or "", _MISSING) if metadata is not None else _MISSING
    return all(_test(t.op, t.operand, value) for t in check.tests)


def _test(op: str, operand: Any, value: Any) -> bool:
    if op == "exists":
        return (value is not _MISSING) is operand
    if value is _MISSING:
        return op in ("ne", "not_in")
    if op == "eq":
        return value == operand
    if op == "ne":
        return value != operand
    if op == "in":
        return value in operand
    if op == "not_in":
        return value not in operand
    number = _number(value)
    if number is None:
        return False
    if op == "gt":
        return number > operand
    if op == "gte":
        return number >= operand
    if op == "lt":
        return number < operand
    return number <= operand  # lte: the config accepts no other operator


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):  # header values arrive as text
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _target(config: RouteTargetConfig) -> RouteTarget:
    return RouteTarget(config.name, config.connection, config.model, config.weight, config.params)


def _condition(index: int, config: RouteConditionConfig, targets: dict[str, RouteTarget]) -> _Condition:
    checks = [_compile_check(c) for c in config.checks]
    target = targets[config.target] if config.target is not None else None
    return _Condition(index, checks, target, config.block, config.message)


def _compile_check(check: ConditionCheck) -> _Check:
    header = check.field.encode("latin-1") if check.subject == "header" and check.field else None
    return _Check(check.subject, check.field, header, check.tests)


def compile_route(config: RouteConfig) -> Route:
    targets = [_target(t) for t in config.targets]
    by_name = {t.name: t for t in targets}
    return Route(
        name=config.name,
        display_name=config.display_name or config.name,
        description=config.description,
        weighted=config.strategy == "weighted",
        targets=targets,
        fallback=[entry if isinstance(entry, str) else _target(entry) for entry in config.fallback],
        conditions=[_condition(i, c, by_name) for i, c in enumerate(config.conditions)],
        context_length=config.context_length,
        rpm=config.rpm,
        tpm=config.tpm,
        workspace=config.workspace,
    )


class RouteTable:
    """The configured routes by name."""

    __slots__ = ("routes",)

    def __init__(self, routes: list[RouteConfig] | None = None) -> None:
        self.routes: dict[str, Route] = {r.name: compile_route(r) for r in routes or ()}

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        return cls(config.routes)

    def get(self, name: str) -> Route | None:
        return self.routes.get(name)

    def __len__(self) -> int:
        return len(self.routes)

    def models_entries(self, registry: Registry | None = None) -> list[dict[str, Any]]:
        """What /api/v1/models needs to list each route, sorted by id.

        `context_length` (and `max_completion_tokens`) are the configured value, else — given the registry — the
        smallest known among the targets, since any of them may serve; modalities and supported parameters are
        those every known target has. Without a registry, or when no target is known, they are None / ["text"] / [].
        """
        entries = [_entry(route, registry) for route in self.routes.values()]
        entries.sort(key=lambda e: e["id"])
        return entries


def _entry(route: Route, registry: Registry | None) -> dict[str, Any]:
    specs = []
    if registry is not None:
        for target in route.targets:
            dep = registry.find(target.connection, target.model)
            # Only listed models count: an ad-hoc deployment knows nothing about its model.
            if dep is not None and any(d is dep for d in registry.models.get(dep.model.id, ())):
                specs.append(dep.model)
    context = route.context_length or _smallest(s.context_length for s in specs)
    description = route.description or "Route over " + ", ".join(t.name for t in route.targets)
    return {
        "id": route.name,
        "name": route.display_name,
        "description": description,
        "context_length": context,
        "max_completion_tokens": _smallest(s.max_completion_tokens for s in specs),
        "input_modalities": _common(s.input_modalities for s in specs) if specs else ["text"],
        "output_modalities": _common(s.output_modalities for s in specs) if specs else ["text"],
        "supported_parameters": _common(s.supported_parameters for s in specs) if specs else [],
    }


def _smallest(values: Any) -> int | None:
    known = [v for v in values if v]
    return min(known) if known else None


def _common(lists: Any) -> list[str]:
    lists = list(lists)
    first = lists[0]
    return [item for item in first if all(item in other for other in lists[1:])]
