"""GET /api/v1/models, /api/v1/models/{author}/{slug}/endpoints and /api/v1/providers in OpenRouter's shapes.

The bodies only change when the configuration does, so they are rendered once per worker and served as bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from crossroads.accounting.pricing import price_string
from crossroads.catalog import ModelSpec
from crossroads.errors import GatewayError
from crossroads.gate.keys import model_allowed
from crossroads.routing.registry import Deployment, Registry

if TYPE_CHECKING:
    from crossroads.routing.health import HealthBoard
    from crossroads.routing.routes import RouteTable


# OpenRouter's `output_modalities` query parameter on GET /models: a comma-separated list of output modalities (a model
# is listed when it outputs any of them) or "all"; absent (or empty), text-output models only, so embedding and other
# non-text models appear only when asked for (https://openrouter.ai/docs/guides/overview/models#query-parameters).
DEFAULT_OUTPUT_MODALITIES: frozenset[str] = frozenset({"text"})


def output_modalities_filter(value: str | None) -> frozenset[str] | None:
    """The `output_modalities` query parameter as the set of modalities to list (None: every model)."""
    names = frozenset(part.strip().lower() for part in (value or "").split(",") if part.strip())
    if not names:
        return DEFAULT_OUTPUT_MODALITIES
    return None if "all" in names else names


# -- GET /models query: OpenRouter's paging, filters and sorts ---------------------------------------------------------
# The openrouter SDKs send offset=0&limit=500 on every models.list and ask for the next page while a page is full, so
# paging must be real. Filters need data a gateway may not have (use-case category, benchmark indices, distillation,
# data region): a model without the figure does not match, as OpenRouter places models without a score last and
# excludes them from a range. Sorts without data keep the default order (every model is "without a score").
MAX_PAGE = 1000
SORTS = frozenset({"most-popular", "newest", "top-weekly", "pricing-low-to-high", "pricing-high-to-low",
                   "context-high-to-low", "throughput-high-to-low", "latency-low-to-high", "intelligence-high-to-low",
                   "coding-high-to-low", "agentic-high-to-low", "design-arena-elo-high-to-low"})
_NO_DATA_FILTERS = ("category", "distillable", "region", "min_intelligence_index", "max_intelligence_index",
                    "min_coding_index", "max_coding_index", "min_agentic_index", "max_agentic_index",
                    "min_tool_success_rate", "max_tool_success_rate")
_LIST_FILTERS = ("input_modalities", "supported_parameters", "model_authors", "providers")
_PRICE_FILTERS = ("min_price", "max_price", "min_output_price", "max_output_price")
_INT_FILTERS = ("context", "min_age_days", "max_age_days")


@dataclass(frozen=True)
class ModelQuery:
    """GET /models' query parameters, checked. `filters` is hashable: it keys the cache of filtered lists."""

    output_modalities: frozenset[str] | None = DEFAULT_OUTPUT_MODALITIES
    filters: tuple[tuple[str, Any], ...] = ()
    sort: str | None = None
    offset: int = 0
    limit: int | None = None  # None: every match (OpenRouter's answer when neither offset nor limit is given)

    @property
    def plain(self) -> bool:
        return not self.filters and self.sort is None and self.offset == 0 and self.limit is None


def _query_int(name: str, value: str, minimum: int, maximum: int | None = None) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise GatewayError(400, f"Invalid query parameter {name}: expected an integer, got {value[:40]!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise GatewayError(400, f"Invalid query parameter {name}: must be {bound}, got {number}")
    return number


def _query_price(name: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise GatewayError(400, f"Invalid query parameter {name}: expected a number, got {value[:40]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise GatewayError(400, f"Invalid query parameter {name}: must be a non-negative number")
    return number


def _names(value: str) -> frozenset[str]:
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def model_query(params: dict[str, str]) -> ModelQuery:
    """The query of GET /models (or /models/count) as a `ModelQuery`; 400 naming the parameter that is wrong."""
    filters: list[tuple[str, Any]] = []
    for name in _LIST_FILTERS:
        if names := _names(params.get(name, "")):
            filters.append((name, names))
    for name in _PRICE_FILTERS:
        if params.get(name, "").strip():
            filters.append((name, _query_price(name, params[name])))
    for name in _INT_FILTERS:
        if params.get(name, "").strip():
            filters.append((name, _query_int(name, params[name], 0)))
    if text := params.get("q", "").strip().lower():
        filters.append(("q", text[:256]))
    if arch := params.get("arch", "").strip().lower():
        filters.append(("arch", arch[:64]))
    zdr = params.get("zdr", "").strip().lower()
    if zdr not in ("", "true", "false"):
        raise GatewayError(400, f"Invalid query parameter zdr: expected true, got {zdr[:40]!r}")
    if zdr == "true":
        filters.append(("zdr", True))
    for name in _NO_DATA_FILTERS:
        if params.get(name, "").strip():
            filters.append((name, params[name].strip()[:64]))
    sort = params.get("sort", "").strip().lower() or None
    if sort is not None and sort not in SORTS:
        raise GatewayError(400, f"Invalid query parameter sort: {sort[:40]!r} is not one of {', '.join(sorted(SORTS))}")
    offset_text, limit_text = params.get("offset", "").strip(), params.get("limit", "").strip()
    return ModelQuery(
        output_modalities=output_modalities_filter(params.get("output_modalities")), filters=tuple(filters),
        sort=sort, offset=_query_int("offset", offset_text, 0) if offset_text else 0,
        limit=_query_int("limit", limit_text, 1, MAX_PAGE) if limit_text else None)


def _per_million(price: str) -> float | None:
    value = float(price)
    return None if value < 0 else value * 1_000_000  # "-1": a route's prices vary


def _modality(spec: ModelSpec) -> str:
    return "+".join(spec.input_modalities) + "->" + "+".join(spec.output_modalities)


def _pricing(spec: ModelSpec) -> dict[str, str]:
    p = spec.pricing
    return {"prompt": price_string(p.prompt), "completion": price_string(p.completion),
            "request": price_string(p.request), "image": price_string(p.image),
            "input_cache_read": price_string(p.input_cache_read),
            "input_cache_write": price_string(p.input_cache_write)}


def model_item(spec: ModelSpec) -> dict[str, Any]:
    item = {
        "id": spec.id,
        "canonical_slug": spec.id,
        "hugging_face_id": None,
        "name": spec.name or spec.id,
        "created": spec.created,
        "description": spec.description,
        "context_length": spec.context_length,
        "architecture": {
            "modality": _modality(spec),
            "input_modalities": spec.input_modalities,
            "output_modalities": spec.output_modalities,
            "tokenizer": spec.tokenizer,
            "instruct_type": None,
        },
        "pricing": _pricing(spec),
        "top_provider": {"context_length": spec.context_length,
                         "max_completion_tokens": spec.max_completion_tokens,
                         "is_moderated": False},
        "per_request_limits": None,
        "supported_parameters": spec.supported_parameters,
        "default_parameters": {},
        "supported_voices": None,
        "links": {"details": f"/api/v1/models/{spec.id}/endpoints"},
    }
    if spec.dimensions is not None:
        item["dimensions"] = spec.dimensions  # an embedding model's default vector size (not in OpenRouter's shape)
    return item


def route_item(entry: dict[str, Any]) -> dict[str, Any]:
    """A named route as a /models item: any of its targets may serve it, so its prices are not fixed."""
    spec = ModelSpec(id=entry["id"], upstream=entry["id"], name=entry["name"] or entry["id"],
                     description=entry["description"], context_length=entry["context_length"],
                     max_completion_tokens=entry["max_completion_tokens"],
                     input_modalities=entry["input_modalities"], output_modalities=entry["output_modalities"],
                     supported_parameters=entry["supported_parameters"])
    item = model_item(spec)
    item["pricing"] = {name: "-1" for name in item["pricing"]}  # OpenRouter's marker for "varies" (e.g. auto)
    return item


def _endpoint_item(dep: Deployment, health: HealthBoard | None,
                   others: dict[tuple[str, str], list[dict]] | None = None) -> dict[str, Any]:
    spec, conn = dep.model, dep.connection
    # Live, per endpoint (this upstream model on this connection): this process's figures plus, with Redis, every
    # other process's (`others`, routing/fleet_health.py). `status` is the worst breaker state of the endpoint and
    # its connection (0 ok, -5 probing, -10 ejected) anywhere.
    live = health.endpoint_stats(conn.name, spec.upstream, (others or {}).get((conn.name, spec.upstream), ())) \
        if health is not None else {"status": 0, "uptime_last_5m": None, "uptime_last_30m": None,
                                    "uptime_last_1d": None, "latency_last_30m": None, "throughput_last_30m": None}
    # Every provider type's adapter translates each tool_choice variant (auto, none, required, a named function).
    tool_choice = "tool_choice" in spec.supported_parameters
    return {
        "name": f"{conn.name} | {spec.upstream}",
        "model_id": spec.id,
        "model_name": spec.name or spec.id,
        "context_length": spec.context_length,
        "pricing": {**_pricing(spec), "discount": 0},
        "provider_name": conn.name,
        "provider_type": conn.config.type,
        "tag": conn.name,
        "quantization": None,
        "max_completion_tokens": spec.max_completion_tokens,
        "max_prompt_tokens": None,
        "supported_parameters": spec.supported_parameters,
        **live,
        "data_collection": conn.config.data_collection,
        "supports_implicit_caching": spec.pricing.input_cache_read > 0,
        # Required by both OpenRouter SDKs' endpoint models (the published document marks fewer): a gateway endpoint
        # runs no provider-native server tools, sells no special service tier and transcribes no audio.
        "supports_tool_choice": {"auto": tool_choice, "none": tool_choice, "required": tool_choice,
                                 "function": tool_choice},
        "native_tools": {},
        "service_tier": None,
        "supports_diarization": False,
    }


class ModelViews:
    def __init__(self, registry: Registry, routes: RouteTable | None = None,
                 health: HealthBoard | None = None) -> None:
        self.registry = registry
        self.health = health
        items = [model_item(deps[0].model) for deps in registry.models.values()]
        if routes is not None:
            named = {entry["id"]: route_item(entry) for entry in routes.models_entries(registry)}
            items = [item for item in items if item["id"] not in named] + list(named.values())
        items.sort(key=lambda m: m["id"])
        self.items = items
        # Every output modality some listed model has: a filter is narrowed to these before it keys the cache, so
        # any number of distinct query values share the few bodies there can be.
        self._modalities = frozenset(m for item in items for m in item["architecture"]["output_modalities"])
        # Who may see each model: the workspaces owning the connections that serve it, or the route (None: everyone).
        self.owners: dict[str, set[str | None]] = {
            model_id: {d.connection.config.workspace for d in deps} for model_id, deps in registry.models.items()}
        if routes is not None:
            for name, route in routes.routes.items():
                self.owners[name] = {route.workspace}
        # The plain GET /models body (no restriction, OpenRouter's default filter), rendered once.
        self.models_body = self._render(self._listed(items, DEFAULT_OUTPUT_MODALITIES))
        self._bodies_for: dict[tuple[str | None, tuple[str, ...] | None, frozenset[str] | None], bytes] = {}
        self._selected: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self.providers_body = orjson.dumps({"data": [
            {"name": conn.name, "slug": conn.name, "type": conn.config.type,
             "models": sum(1 for deps in registry.models.values() for d in deps if d.connection is conn),
             "privacy_policy_url": None, "terms_of_service_url": None, "status_page_url": None}
            for conn in registry.connections.values()]})

    @staticmethod
    def _render(items: list[dict[str, Any]]) -> bytes:
        return orjson.dumps({"data": items, "total_count": len(items), "links": {"next": None}})

    @staticmethod
    def _listed(items: list[dict[str, Any]], output_modalities: frozenset[str] | None) -> list[dict[str, Any]]:
        """The items that output any of `output_modalities` (None: all)."""
        if output_modalities is None:
            return items
        return [item for item in items if not output_modalities.isdisjoint(item["architecture"]["output_modalities"])]

    def visible(self, model_id: str, workspace: str | None) -> bool:
        """Whether a key of `workspace` (a name) sees the model: one of its connections (or the route) is everyone's
        or that workspace's."""
        owners = self.owners.get(model_id, {None})
        return None in owners or workspace in owners

    def models_body_for(self, allowed_models: list[str] | None, workspace: str | None = None,
                        output_modalities: frozenset[str] | None = DEFAULT_OUTPUT_MODALITIES) -> bytes:
        """/models as a key restricted to `allowed_models` (None: all) of `workspace` sees it: only what it may use,
        of the models that output any of `output_modalities` (None: all; see `output_modalities_filter`). Rendered
        once per distinct allow-list, workspace and filter; the unrestricted default is the prebuilt `models_body`."""
        if allowed_models is None and workspace is None and output_modalities == DEFAULT_OUTPUT_MODALITIES:
            return self.models_body
        if output_modalities is not None:
            output_modalities = output_modalities & self._modalities
        cache_key = (workspace, tuple(allowed_models) if allowed_models is not None else None, output_modalities)
        body = self._bodies_for.get(cache_key)
        if body is None:
            body = self._render([item for item in self._listed(self.items, output_modalities)
                                 if (allowed_models is None or model_allowed(allowed_models, item["id"]))
                                 and self.visible(item["id"], workspace)])
            if len(self._bodies_for) < 1024:
                self._bodies_for[cache_key] = body
        return body

    def _matches(self, item: dict[str, Any], name: str, value: Any) -> bool:
        """Whether a /models item passes one filter of a `ModelQuery`."""
        if name == "input_modalities":
            return value <= set(item["architecture"]["input_modalities"])
        if name == "supported_parameters":
            return value <= set(item["supported_parameters"])
        if name == "model_authors":
            return item["id"].split("/", 1)[0].lower() in value
        if name in ("providers", "zdr"):
            connections = [d.connection for d in self.registry.models.get(item["id"], ())]
            if name == "zdr":
                return any(c.config.data_collection == "deny" for c in connections)
            return any(c.name.lower() in value or c.config.type in value for c in connections)
        if name == "q":
            return value in item["id"].lower() or value in (item["name"] or "").lower()
        if name == "arch":
            return (item["architecture"]["tokenizer"] or "").lower() == value
        if name == "context":
            return (item["context_length"] or 0) >= value
        if name in ("min_age_days", "max_age_days"):
            if not item["created"]:
                return False
            age = (time.time() - item["created"]) / 86400
            return age >= value if name == "min_age_days" else age <= value
        if name in _PRICE_FILTERS:
            price = _per_million(item["pricing"]["completion" if "output" in name else "prompt"])
            return price is not None and (price >= value if name.startswith("min") else price <= value)
        return False  # a filter on data no model here has (category, benchmark indices, region, distillable)

    @staticmethod
    def _sorted(items: list[dict[str, Any]], sort: str | None) -> list[dict[str, Any]]:
        if sort == "newest":
            return sorted(items, key=lambda m: -(m["created"] or 0))
        if sort == "context-high-to-low":
            return sorted(items, key=lambda m: -(m["context_length"] or 0))
        if sort in ("pricing-low-to-high", "pricing-high-to-low"):
            def average(m: dict[str, Any]) -> float | None:
                prompt, completion = _per_million(m["pricing"]["prompt"]), _per_million(m["pricing"]["completion"])
                return None if prompt is None or completion is None else (prompt + completion) / 2
            priced = [(average(m), m) for m in items]
            known = sorted(((p, m) for p, m in priced if p is not None), key=lambda pm: pm[0],
                           reverse=sort == "pricing-high-to-low")
            return [m for _, m in known] + [m for p, m in priced if p is None]  # varying prices last
        return items  # no figures for the other sorts: every model is "without a score", the order stays

    def select(self, allowed_models: list[str] | None, workspace: str | None, query: ModelQuery
               ) -> list[dict[str, Any]]:
        """Every /models item a key (allow-list, workspace) sees that matches `query`'s filters, in its sort order.
        Cached per distinct key scope and query (paging aside), like `models_body_for`."""
        output_modalities = query.output_modalities
        if output_modalities is not None:
            output_modalities = output_modalities & self._modalities
        cache_key = (workspace, tuple(allowed_models) if allowed_models is not None else None, output_modalities,
                     query.filters, query.sort)
        selected = self._selected.get(cache_key)
        if selected is None:
            selected = self._sorted([
                item for item in self._listed(self.items, output_modalities)
                if (allowed_models is None or model_allowed(allowed_models, item["id"]))
                and self.visible(item["id"], workspace)
                and all(self._matches(item, name, value) for name, value in query.filters)], query.sort)
            if len(self._selected) < 1024:
                self._selected[cache_key] = selected
        return selected

    def models_page(self, allowed_models: list[str] | None, workspace: str | None, query: ModelQuery,
                    params: dict[str, str], path: str) -> bytes:
        """GET /models with filters, a sort or paging: the page, the total that matched, and the next page's URL."""
        if query.plain:
            return self.models_body_for(allowed_models, workspace, query.output_modalities)
        selected = self.select(allowed_models, workspace, query)
        end = len(selected) if query.limit is None else query.offset + query.limit
        page = selected[query.offset:end]
        following = None
        if end < len(selected):
            following = path + "?" + urlencode({**params, "offset": str(end), "limit": str(query.limit)})
        return orjson.dumps({"data": page, "total_count": len(selected), "links": {"next": following}})

    def count_body(self, allowed_models: list[str] | None, workspace: str | None, query: ModelQuery) -> bytes:
        """GET /models/count: how many models the same query lists (paging aside)."""
        return orjson.dumps({"data": {"count": len(self.select(allowed_models, workspace, query))}})

    def endpoints_body(self, model_id: str, others: dict[tuple[str, str], list[dict]] | None = None, *,
                       workspace: str | None = None, scoped: bool = False) -> bytes:
        """A model's endpoints; `scoped`: only the connections a key of `workspace` may use (everyone's and its
        own), 404 when there are none."""
        deployments = self.registry.models.get(model_id)
        if deployments and scoped:
            deployments = [d for d in deployments if d.connection.config.workspace in (None, workspace)]
        if not deployments:
            raise GatewayError(404, f"Model {model_id!r} not found")
        spec = deployments[0].model
        architecture = model_item(spec)["architecture"]
        return orjson.dumps({"data": {
            "id": spec.id, "name": spec.name or spec.id, "created": spec.created, "description": spec.description,
            "architecture": architecture, "endpoints": [_endpoint_item(d, self.health, others) for d in deployments]}})
