"""Candidate selection: which deployments (model + connection) one request is tried on, and in which order.

`plan()` is pure decision logic run on every request; the caller tries `RoutePlan.candidates` in turn, each with its
own retries. The rules:

Which models
- `model`, then each entry of `models` not already listed (OpenRouter's model fallbacks; a request with only
  `models` has its first entry as `model`, see formats/chat.py). An unknown model is a 404, wherever it is listed.
- A configured route name (routing/routes.py) gives the route's targets and then its fallback chain.
- `openrouter/auto` or `crossroads/auto` is the auto router: the registry's models that meet the request's needs
  (tool calling when `tools` are sent; every media kind in the messages — image, file, audio — as an input modality;
  text output; a context of prompt tokens + max_tokens, a model of unknown context length counting as
  AUTO_UNKNOWN_CONTEXT tokens), that the API key may use, ranked by the price of their cheapest usable connection
  (prompt + completion USD per token, ties by id); the AUTO_MODELS cheapest are tried in that order.
- Suffixes `:nitro` (= provider.sort "throughput") and `:floor` (= provider.sort "price") on any model id; an explicit
  `provider.sort` wins. An id that exists with its suffix is taken literally.

Which connections, per model
1. Filters; each excluded connection is remembered with the requirement that excluded it, for the 503 message:
   the `vendor` header (a connection name, a provider type, a catalog vendor key; `auto` pins nothing),
   provider.only / provider.ignore (connection names, case-insensitive), provider.data_collection "deny" (only
   connections configured `data_collection: deny`), provider.require_parameters (the model as that connection serves
   it lists every parameter the body sends), provider.max_price (USD per million prompt/completion tokens, USD per
   request/image). Fallback and auto models must also be allowed by the key's `allowed_models` (the gate checks the
   requested model itself).
2. Order: provider.order's connections first, in that order; the rest by provider.sort when set (price ascending;
   throughput descending or latency ascending from the live figures, connections without figures after those with,
   by price), else at random weighted by the inverse square of the price as OpenRouter does (free deployments first).
   provider.allow_fallbacks false keeps only provider.order's connections, or without an order only the first pick.
3. Deployments that are not `stats.available` move to the end of the whole plan, keeping their relative order:
   those whose endpoint (this upstream model on this connection) or whole connection has its breaker open, and those
   cool after a 429's Retry-After (routing/health.py). They are never waited on first; a cool one is still tried
   when everything before it failed, an ejected one only when the breakers leave the request nothing to attempt
   (panic routing, routing/attempts.py). Leaving them out would turn a breaker that opened on a few errors into a hard
   outage for models with one connection.

Named routes: the filters of step 1 apply to route targets too (they are the client's requirements), the ordering
preferences of step 2 do not (the route's strategy is the operator's order).

`Candidate.model_id` is the model that serves, which is what the response's `model` reports (as OpenRouter does for
`openrouter/auto`): the catalog/config id, or `<connection>/<upstream>` ad hoc. Requests for a route report the model
too; `Candidate.route` names the route for logs and headers.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from crossroads.errors import GatewayError
from crossroads.gate.keys import model_allowed
from crossroads.routing.features import requested_features, unhonoured
from crossroads.routing.registry import Deployment, Registry
from crossroads.routing.routes import Route, RouteTable, RouteTarget, weighted_order

if TYPE_CHECKING:
    from crossroads.catalog import ModelSpec
    from crossroads.store.rows import KeyRow

AUTO_MODEL_IDS = frozenset({"openrouter/auto", "crossroads/auto"})
AUTO_MODELS = 3  # how many of the cheapest fitting models the auto router tries
AUTO_UNKNOWN_CONTEXT = 8192  # tokens assumed for a model whose context length nobody stated
SORTS = ("price", "throughput", "latency")
_SUFFIX_SORTS = ((":nitro", "throughput"), (":floor", "price"))
_PRICE_LIMITS = {"prompt": 1_000_000, "completion": 1_000_000, "request": 1, "image": 1}  # per-M -> per-token
_SHOWN_NAMES = 5  # connections named per requirement in a 503 message

# Request parameters `require_parameters` checks, with the names under which a model may list support for each.
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "max_tokens": ("max_tokens",),
    "max_completion_tokens": ("max_tokens", "max_completion_tokens"),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "top_k": ("top_k",),
    "min_p": ("min_p",),
    "top_a": ("top_a",),
    "frequency_penalty": ("frequency_penalty",),
    "presence_penalty": ("presence_penalty",),
    "repetition_penalty": ("repetition_penalty",),
    "seed": ("seed",),
    "stop": ("stop",),
    "logit_bias": ("logit_bias",),
    "logprobs": ("logprobs",),
    "top_logprobs": ("top_logprobs",),
    "tools": ("tools",),
    "tool_choice": ("tool_choice",),
    "parallel_tool_calls": ("parallel_tool_calls",),
    "response_format": ("response_format", "structured_outputs"),
    "structured_outputs": ("structured_outputs",),
    "reasoning": ("reasoning",),
    "reasoning_effort": ("reasoning",),
    "include_reasoning": ("include_reasoning", "reasoning"),
    "web_search_options": ("web_search_options",),
    "verbosity": ("verbosity",),
}
# Content part type -> the input modality a model needs for it.
_PART_MODALITIES = {"image_url": "image", "input_image": "image", "image": "image", "file": "file",
                    "input_audio": "audio"}

_default_rng = random.Random()


class LiveStats(Protocol):
    """Live health per endpoint (routing/health.py's HealthBoard); `model` is `Deployment.model.upstream`."""

    def available(self, connection: str, model: str) -> bool: ...  # neither ejected nor cool

    def latency(self, connection: str, model: str) -> float | None: ...  # p50 seconds to first token

    def throughput(self, connection: str, model: str) -> float | None: ...  # tokens per second


@dataclass(slots=True)
class Candidate:
    deployment: Deployment  # the model as that connection serves it, and the connection
    model_id: str  # what the response's `model` reports: the serving model's id (never the route's name)
    overrides: dict[str, Any] = field(default_factory=dict)  # merge over the body for this attempt; read-only
    route: str | None = None  # the named route this candidate came from

    @property
    def connection(self) -> str:
        return self.deployment.connection.name


@dataclass(slots=True)
class RoutePlan:
    candidates: list[Candidate]  # in try order


@dataclass(frozen=True, slots=True)
class Preferences:
    """The request's `provider` object, checked."""

    order: tuple[str, ...] = ()  # lower-case connection names
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    require_parameters: bool = False
    deny_data_collection: bool = False
    sort: str | None = None
    max_price: tuple[tuple[str, float], ...] = ()  # (Pricing field, limit in Pricing's units)

    @property
    def filters(self) -> bool:
        return bool(self.only is not None or self.ignore or self.require_parameters or self.deny_data_collection
                    or self.max_price)


NO_PREFERENCES = Preferences()


def _invalid(field_name: str, expected: str) -> GatewayError:
    return GatewayError(400, f"Invalid request: '{field_name}' must be {expected}", metadata={"field": field_name})


def _names(raw: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"provider.{key}", "an array of provider names")
    return tuple(v.lower() for v in value)


def _flag(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"provider.{key}", "a boolean")
    return value


def parse_preferences(raw: Any) -> Preferences:
    """Check the body's `provider` object (400 naming the field); unknown keys pass, as on OpenRouter."""
    if raw is None:
        return NO_PREFERENCES
    if not isinstance(raw, dict):
        raise _invalid("provider", "an object")
    only = _names(raw, "only")
    data_collection = raw.get("data_collection")
    if data_collection not in (None, "allow", "deny"):
        raise _invalid("provider.data_collection", '"allow" or "deny"')
    return Preferences(
        order=_names(raw, "order") or (),
        only=frozenset(only) if only is not None else None,
        ignore=frozenset(_names(raw, "ignore") or ()),
        allow_fallbacks=_flag(raw, "allow_fallbacks", True),
        require_parameters=_flag(raw, "require_parameters", False),
        deny_data_collection=data_collection == "deny",
        sort=_sort(raw.get("sort")),
        max_price=_max_price(raw.get("max_price")),
    )


def _sort(value: Any) -> str | None:
    if isinstance(value, dict):  # OpenRouter's newer spelling: {"by": "price", ...}
        value = value.get("by")
    if value is None:
        return None
    if value not in SORTS:
        raise _invalid("provider.sort", "one of " + ", ".join(SORTS))
    return value


def _max_price(value: Any) -> tuple[tuple[str, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _invalid("provider.max_price", "an object")
    limits = []
    for key, limit in value.items():
        if key not in _PRICE_LIMITS:
            raise _invalid(f"provider.max_price.{key}", "one of " + ", ".join(_PRICE_LIMITS) + " (not another key)")
        if isinstance(limit, str):  # how OpenRouter's document and both SDKs send prices: decimal strings
            limit = _decimal(limit)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 <= limit < float("inf"):
            raise _invalid(f"provider.max_price.{key}", "a non-negative number (or a decimal string such as \"1.5\")")
        # Divided the way Pricing.from_per_million divides, plus a hair of slack, so an equal limit passes.
        limits.append((key, limit / _PRICE_LIMITS[key] * (1 + 1e-9)))
    return tuple(limits)


_DECIMAL = re.compile(r"\d+(\.\d+)?|\.\d+")


def _decimal(text: str) -> float | None:
    """A price written as a plain decimal string ("1.5", "0", ".25"); None for anything else."""
    text = text.strip()
    return float(text) if _DECIMAL.fullmatch(text) else None


def unit_price(dep: Deployment) -> float:
    """What routing compares: USD per prompt token + per completion token."""
    pricing = dep.model.pricing
    return pricing.prompt + pricing.completion


def _split_suffix(model: str, registry: Registry, routes: RouteTable | None) -> tuple[str, str | None]:
    for suffix, sort in _SUFFIX_SORTS:
        if model.endswith(suffix) and model not in registry.models and (routes is None or routes.get(model) is None):
            return model[: -len(suffix)], sort
    return model, None


def _label(dep: Deployment) -> str:
    return f"{dep.connection.name}/{dep.model.upstream}"


Need = tuple[str, Callable[["ModelSpec"], bool]]


def auto_needs(body: dict[str, Any], prompt_tokens: int) -> list[Need]:
    """What a model must offer to serve this request under the auto router, with the label a 503 would show."""
    needs: list[Need] = [("text output", lambda spec: "text" in spec.output_modalities)]
    if body.get("tools"):
        needs.append(("tool calling (the request sends tools)", lambda spec: "tools" in spec.supported_parameters))
    for modality in sorted(_media_kinds(body.get("messages"))):
        needs.append((f"{modality} input", _takes_input(modality)))
    output = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    context = prompt_tokens + (output if isinstance(output, int) else 0)
    def fits(spec: ModelSpec) -> bool:
        return (spec.context_length or AUTO_UNKNOWN_CONTEXT) >= context

    needs.append((f"a context of at least {context} tokens", fits))
    return needs


def _takes_input(modality: str) -> Callable[[ModelSpec], bool]:
    def takes(spec: ModelSpec) -> bool:
        return modality in spec.input_modalities

    return takes


def _media_kinds(messages: Any) -> set[str]:
    kinds: set[str] = set()
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                kind_name = part.get("type") if isinstance(part, dict) else None
                kind = _PART_MODALITIES.get(kind_name) if isinstance(kind_name, str) else None
                if kind is not None:
                    kinds.add(kind)
    return kinds


class _Planner:
    """The state of one plan() call: preferences, exclusions seen so far, candidates chosen so far."""

    __slots__ = ("registry", "routes", "body", "headers", "key", "stats", "prompt_tokens", "rng", "prefs", "pin",
                 "features", "sent", "excluded", "out", "seen")

    def __init__(self, registry: Registry, routes: RouteTable | None, body: dict[str, Any],
                 headers: dict[bytes, bytes], key: KeyRow | None, stats: LiveStats, prompt_tokens: int,
                 rng: random.Random) -> None:
        self.registry, self.routes, self.body, self.headers = registry, routes, body, headers
        self.key, self.stats, self.prompt_tokens, self.rng = key, stats, prompt_tokens, rng
        self.prefs = parse_preferences(body.get("provider"))
        pin = headers.get(b"vendor")
        pin_text = pin.decode("latin-1").strip().lower() if pin else ""
        self.pin = pin_text if pin_text and pin_text != "auto" else None
        self.sent = [p for p in _PARAMETERS if body.get(p) is not None] if self.prefs.require_parameters else []
        self.features = requested_features(body) if self.prefs.require_parameters else ()
        self.excluded: dict[str, list[str]] = {}
        self.out: list[Candidate] = []
        self.seen: set[tuple[str, str, int]] = set()

    # -- entries ---------------------------------------------------------------------------------------------------

    def entry(self, model: str, *, primary: bool) -> None:
        base, suffix_sort = _split_suffix(model, self.registry, self.routes)
        route = self.routes.get(base) if self.routes is not None else None
        if route is not None:
            self.route(route, primary=primary)
        elif base in AUTO_MODEL_IDS:
            self.auto(suffix_sort)
        else:
            self.model(base, suffix_sort, route=None, check_key=not primary)

    def model(self, model_id: str, sort: str | None, *, route: str | None, check_key: bool) -> None:
        deployments = self.registry.deployments(model_id)  # 404 for an unknown id
        if check_key and not self.key_allows(model_id):
            self.exclude_all("the API key's allowed_models", deployments)
            return
        for dep in self.order(self.filter(deployments), sort):
            self.add(dep, None, route)

    def route(self, route: Route, *, primary: bool) -> None:
        try:
            targets = route.select(prompt_tokens=self.prompt_tokens, key=self.key, body=self.body,
                                   headers=self.headers, rng=self.rng)
        except GatewayError:
            if primary:
                raise
            # A later fallback entry that blocks only drops out; the models before it still serve.
            self.excluded.setdefault(f"a blocking condition of route {route.name!r}", []).append(route.name)
            return
        for target in targets:
            self.target(target, route.name)
        for entry in route.fallback:
            if isinstance(entry, RouteTarget):
                self.target(entry, route.name)
                continue
            try:
                self.model(entry, None, route=route.name, check_key=False)
            except GatewayError:
                # An operator's fallback that no connection serves (yet) must not fail requests the targets serve.
                self.excluded.setdefault(f"route {route.name!r}'s fallback list (no such model)", []).append(entry)

    def target(self, target: RouteTarget, route: str) -> None:
        dep = self.registry.find(target.connection, target.model)
        if dep is None:  # the config checks connection names; a registry built otherwise may lack one
            self.excluded.setdefault("connection not configured", []).append(target.connection)
            return
        reason = self.rejects(dep)
        if reason is not None:
            self.excluded.setdefault(reason, []).append(_label(dep))
            return
        self.add(dep, target, route)

    def auto(self, sort: str | None) -> None:
        needs = auto_needs(self.body, self.prompt_tokens)
        ranked: list[tuple[float, str, list[Deployment]]] = []
        for model_id, deployments in self.registry.models.items():
            if model_id in AUTO_MODEL_IDS:
                continue
            if not self.key_allows(model_id):
                self.exclude_all("the API key's allowed_models", deployments)
                continue
            kept = self.filter(deployments, needs)
            if kept:
                ranked.append((min(unit_price(d) for d in kept), model_id, kept))
        ranked.sort(key=lambda item: (item[0], item[1]))
        for _, _, kept in ranked[:AUTO_MODELS]:
            for dep in self.order(kept, sort):
                self.add(dep, None, None)

    # -- filters and order -----------------------------------------------------------------------------------------

    def key_allows(self, model_id: str) -> bool:
        return self.key is None or model_allowed(self.key.allowed_models, model_id)

    def exclude_all(self, reason: str, deployments: list[Deployment]) -> None:
        self.excluded.setdefault(reason, []).extend(_label(d) for d in deployments)

    def filter(self, deployments: list[Deployment], needs: list[Need] | None = None) -> list[Deployment]:
        if self.pin is None and not self.prefs.filters and not needs:
            return deployments  # the common case: nothing to check
        kept = []
        for dep in deployments:
            reason = self.rejects(dep)
            if reason is None and needs:
                reason = next((label for label, ok in needs if not ok(dep.model)), None)
            if reason is None:
                kept.append(dep)
            else:
                self.excluded.setdefault(reason, []).append(_label(dep))
        return kept

    def rejects(self, dep: Deployment) -> str | None:
        """The requirement this deployment fails, or None."""
        config = dep.connection.config
        name = config.name.lower()
        if self.pin is not None and self.pin not in (name, config.type, *dep.connection.spec.aliases,
                                                     config.vendor.key if config.vendor else None):
            return f"the vendor header ({self.pin!r})"
        prefs = self.prefs
        if prefs.only is not None and name not in prefs.only:
            return "provider.only"
        if name in prefs.ignore:
            return "provider.ignore"
        if prefs.deny_data_collection and config.data_collection != "deny":
            return "provider.data_collection=deny (connections configured data_collection: deny)"
        if self.sent:
            supported = dep.model.supported_parameters
            missing = [p for p in self.sent if not any(a in supported for a in _PARAMETERS[p])]
            if missing:
                return f"provider.require_parameters (no support for {', '.join(missing)})"
        if self.features:
            cannot = unhonoured(self.features, dep)
            if cannot:
                return f"provider.require_parameters (cannot honour {', '.join(cannot)})"
        pricing = dep.model.pricing
        for price_field, limit in prefs.max_price:
            if getattr(pricing, price_field) > limit:
                return f"provider.max_price.{price_field}"
        return None

    def order(self, deployments: list[Deployment], sort: str | None) -> list[Deployment]:
        prefs = self.prefs
        sort = prefs.sort or sort
        listed: list[Deployment] = []
        rest = deployments
        if prefs.order:
            for name in prefs.order:
                listed.extend(d for d in deployments if d.connection.name.lower() == name
                              and not any(d is x for x in listed))
            rest = [d for d in deployments if not any(d is x for x in listed)]
            if not prefs.allow_fallbacks:
                self.exclude_all("provider.allow_fallbacks=false (only provider.order is tried)", rest)
                rest = []
        ordered = listed + self.rank(rest, sort)
        if not prefs.allow_fallbacks and not prefs.order and len(ordered) > 1:
            ordered = self.healthy_first(ordered)[:1]  # the primary choice only
        return ordered

    def rank(self, deployments: list[Deployment], sort: str | None) -> list[Deployment]:
        if len(deployments) < 2:
            return list(deployments)
        if sort is None:
            return self.price_weighted(deployments)
        by_price = sorted(deployments, key=unit_price)
        if sort == "price":
            return by_price
        figure = self.stats.throughput if sort == "throughput" else self.stats.latency
        known: list[tuple[float, int, Deployment]] = []
        unknown: list[Deployment] = []
        for i, dep in enumerate(by_price):
            value = figure(dep.connection.name, dep.model.upstream)
            if value is None:
                unknown.append(dep)
            else:
                # Highest throughput first, lowest latency first; the index keeps price order among equals.
                known.append((-value if sort == "throughput" else value, i, dep))
        known.sort(key=lambda item: (item[0], item[1]))
        return [dep for _, _, dep in known] + unknown

    def price_weighted(self, deployments: list[Deployment]) -> list[Deployment]:
        free: list[Deployment] = []
        priced: list[Deployment] = []
        prices: list[float] = []
        for dep in deployments:
            price = unit_price(dep)
            if price > 0:
                priced.append(dep)
                prices.append(price)
            else:
                free.append(dep)
        if len(free) > 1:
            self.rng.shuffle(free)
        if len(priced) > 1:
            cheapest = min(prices)
            # Relative to the cheapest, so weights stay near 1 whatever the price scale.
            priced = weighted_order(priced, [(cheapest / p) ** 2 for p in prices], self.rng)
        return free + priced

    def healthy_first(self, deployments: list[Deployment]) -> list[Deployment]:
        available = self.stats.available
        healthy = [d for d in deployments if available(d.connection.name, d.model.upstream)]
        if len(healthy) == len(deployments):
            return deployments
        return healthy + [d for d in deployments if not any(d is h for h in healthy)]

    # -- result ----------------------------------------------------------------------------------------------------

    def add(self, dep: Deployment, target: RouteTarget | None, route: str | None) -> None:
        # The same deployment reached twice (model and models overlap, a route's fallback repeats a target) is
        # tried once; route targets with their own overrides count as distinct.
        marker = (dep.connection.name, dep.model.id, id(target) if target is not None else 0)
        if marker in self.seen:
            return
        self.seen.add(marker)
        overrides = target.overrides if target is not None else {}
        self.out.append(Candidate(dep, dep.model.id, overrides, route))

    def finish(self) -> RoutePlan:
        if not self.out:
            raise self.nothing_left()
        available = self.stats.available
        healthy: list[Candidate] = []
        broken: list[Candidate] = []
        for candidate in self.out:
            dep = candidate.deployment
            (healthy if available(dep.connection.name, dep.model.upstream) else broken).append(candidate)
        return RoutePlan(healthy + broken if broken else healthy)

    def nothing_left(self) -> GatewayError:
        if not self.excluded:
            return GatewayError(503, "No provider is configured that can serve this request")
        parts = []
        for reason, names in self.excluded.items():
            unique = list(dict.fromkeys(names))
            shown = ", ".join(unique[:_SHOWN_NAMES])
            more = f" and {len(unique) - _SHOWN_NAMES} more" if len(unique) > _SHOWN_NAMES else ""
            parts.append(f"{reason} excluded {shown}{more}")
        message = "No provider can serve this request under its requirements: " + "; ".join(parts)
        # Every exclusion is the request's own choice (its parameters, preferences, vendor, key): a 404 as
        # OpenRouter answers "no endpoints found", not a 503 that clients would retry.
        return GatewayError(404, message, metadata={"requirements": {r: list(dict.fromkeys(n))
                                                                     for r, n in self.excluded.items()}})


def _model_list(body: dict[str, Any]) -> list[str]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "a non-empty string")
    entries = [model]
    extra = body.get("models")
    if extra is not None:
        if not isinstance(extra, list):
            raise _invalid("models", "an array of model ids")
        for i, item in enumerate(extra):
            if not isinstance(item, str) or not item:
                raise _invalid(f"models[{i}]", "a non-empty string")
            if item not in entries:
                entries.append(item)
    return entries


def plan(registry: Registry, routes: RouteTable | None, body: dict[str, Any], *, headers: dict[bytes, bytes],
         key: KeyRow | None, stats: LiveStats, prompt_tokens: int, rng: random.Random | None = None) -> RoutePlan:
    """The candidates to try for this request, in order.

    Raises GatewayError 404 for an unknown model, 400 for a malformed `provider`/`models` or a blocking route
    condition (`error.metadata.code = "blocked_by_routing_condition"`), and 503 naming the requirements that
    excluded every connection.
    """
    planner = _Planner(registry, routes, body, headers, key, stats, prompt_tokens, rng or _default_rng)
    for i, model in enumerate(_model_list(body)):
        planner.entry(model, primary=i == 0)
    return planner.finish()
