"""GET /api/v1/models, /api/v1/models/{author}/{slug}/endpoints and /api/v1/providers in OpenRouter's shapes.

The bodies only change when the configuration does, so they are rendered once per worker and served as bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
        if health is not None else {"status": 0, "uptime_last_30m": None}
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
