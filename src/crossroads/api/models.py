"""GET /api/v1/models, /api/v1/models/{author}/{slug}/endpoints and /api/v1/providers in OpenRouter's shapes.

The bodies only change when the configuration does, so they are rendered once per worker and served as bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

from crossroads.accounting.pricing import price_string
from crossroads.catalog import ModelSpec
from crossroads.errors import GatewayError
from crossroads.routing.registry import Deployment, Registry


def _modality(spec: ModelSpec) -> str:
    return "+".join(spec.input_modalities) + "->" + "+".join(spec.output_modalities)


def _pricing(spec: ModelSpec) -> dict[str, str]:
    p = spec.pricing
    return {"prompt": price_string(p.prompt), "completion": price_string(p.completion),
            "request": price_string(p.request), "image": price_string(p.image),
            "input_cache_read": price_string(p.input_cache_read),
            "input_cache_write": price_string(p.input_cache_write)}


def model_item(spec: ModelSpec) -> dict[str, Any]:
    return {
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


def _endpoint_item(dep: Deployment) -> dict[str, Any]:
    spec, conn = dep.model, dep.connection
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
        "status": 0,
        "uptime_last_30m": None,
        "supports_implicit_caching": spec.pricing.input_cache_read > 0,
    }


class ModelViews:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        items = [model_item(deps[0].model) for deps in registry.models.values()]
        items.sort(key=lambda m: m["id"])
        self.models_body = orjson.dumps({"data": items, "total_count": len(items), "links": {"next": None}})
        self.providers_body = orjson.dumps({"data": [
            {"name": conn.name, "slug": conn.name, "type": conn.config.type,
             "models": sum(1 for deps in registry.models.values() for d in deps if d.connection is conn),
             "privacy_policy_url": None, "terms_of_service_url": None, "status_page_url": None}
            for conn in registry.connections.values()]})

    def endpoints_body(self, model_id: str) -> bytes:
        deployments = self.registry.models.get(model_id)
        if not deployments:
            raise GatewayError(404, f"Model {model_id!r} not found")
        spec = deployments[0].model
        architecture = model_item(spec)["architecture"]
        return orjson.dumps({"data": {
            "id": spec.id, "name": spec.name or spec.id, "created": spec.created, "description": spec.description,
            "architecture": architecture, "endpoints": [_endpoint_item(d) for d in deployments]}})
