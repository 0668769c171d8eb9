"""GET /api/v1/models, /models/{author}/{slug}/endpoints and /providers, through the official SDKs."""

from __future__ import annotations

import httpx
import openai
import pytest
from openrouter import OpenRouter

from tests.conftest import MASTER_KEY

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MODEL_KEYS = {"id", "canonical_slug", "name", "created", "description", "context_length", "architecture", "pricing",
              "top_provider", "supported_parameters"}


def test_models_shape(gateway) -> None:
    data = httpx.get(gateway.url + "/api/v1/models", headers=AUTH).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert {"openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash"} <= set(by_id)
    model = by_id["openai/gpt-4o-mini"]
    assert MODEL_KEYS <= set(model)
    assert model["context_length"] == 128000
    assert model["top_provider"] == {"context_length": 128000, "max_completion_tokens": 16384, "is_moderated": False}
    assert model["architecture"]["input_modalities"] == ["text", "image", "file"]
    assert model["architecture"]["modality"] == "text+image+file->text"
    # USD per token as decimal strings: the config said 1.0 / 2.0 / 0.5 / 1.25 USD per 1M tokens.
    assert model["pricing"]["prompt"] == "0.000001"
    assert model["pricing"]["completion"] == "0.000002"
    assert model["pricing"]["input_cache_read"] == "0.0000005"
    assert model["pricing"]["input_cache_write"] == "0.00000125"
    assert model["pricing"]["request"] == "0"
    # A model listed in config by id only inherits what the built-in catalog knows (Anthropic's context length).
    assert by_id["anthropic/claude-sonnet-4"]["context_length"] >= 200000


def test_discovered_models_of_an_openai_compatible_server(gateway, fake_local) -> None:
    ids = {m["id"] for m in httpx.get(gateway.url + "/v1/models", headers=AUTH).json()["data"]}
    assert {"local/llama-3.2-3b", "local/qwen2.5-7b"} <= ids
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER_KEY, max_retries=0)
    result = client.chat.completions.create(model="local/llama-3.2-3b", messages=[{"role": "user", "content": "x"}])
    assert result.choices[0].message.content
    assert fake_local.last.json["model"] == "llama-3.2-3b"
    assert "Authorization" not in fake_local.last.headers  # that connection has no key


def test_adhoc_connection_addressing(gateway, fake_openai) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER_KEY, max_retries=0)
    result = client.chat.completions.create(model="oai/some-new-model:2026", messages=[{"role": "user", "content": "x"}])
    assert result.model == "oai/some-new-model:2026"
    assert fake_openai.last.json["model"] == "some-new-model:2026"


def test_models_through_openai_sdk(gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key=MASTER_KEY, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert "google/gemini-2.5-flash" in ids


def test_models_through_openrouter_sdk(gateway) -> None:
    with OpenRouter(api_key=MASTER_KEY, server_url=gateway.url + "/api/v1") as client:
        listing = client.models.list().result
        ids = {m.id for m in listing.data}
        assert "anthropic/claude-sonnet-4" in ids
        model = next(m for m in listing.data if m.id == "openai/gpt-4o-mini")
        assert model.pricing.prompt == "0.000001"
        assert model.context_length == 128000


def test_endpoints(gateway) -> None:
    resp = httpx.get(gateway.url + "/api/v1/models/openai/gpt-4o-mini/endpoints", headers=AUTH)
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert data["id"] == "openai/gpt-4o-mini"
    [endpoint] = data["endpoints"]
    assert endpoint["provider_name"] == "oai"
    assert endpoint["pricing"]["prompt"] == "0.000001"
    assert endpoint["context_length"] == 128000
    missing = httpx.get(gateway.url + "/api/v1/models/none/such/endpoints", headers=AUTH)
    assert missing.status_code == 404


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash"])
def test_endpoints_through_the_openrouter_sdk(gateway, model: str) -> None:
    # Both SDKs require fields the published document leaves optional (supports_tool_choice, native_tools, ...).
    author, slug = model.split("/")
    with OpenRouter(api_key=MASTER_KEY, server_url=gateway.url + "/api/v1") as client:
        listing = client.endpoints.list(author=author, slug=slug).data
    assert listing.id == model
    [endpoint] = listing.endpoints
    assert endpoint.model_id == model and endpoint.native_tools == {} and endpoint.service_tier is None
    assert endpoint.supports_tool_choice.auto and endpoint.supports_tool_choice.function
    assert endpoint.uptime_last_5m is None or 0 <= endpoint.uptime_last_5m <= 100


def test_providers(gateway) -> None:
    data = httpx.get(gateway.url + "/api/v1/providers", headers=AUTH).json()["data"]
    by_name = {p["name"]: p for p in data}
    assert {"oai", "ant", "gem", "local"} <= set(by_name)
    assert by_name["ant"]["type"] == "anthropic"
    text = str(data)
    assert "secret" not in text  # provider keys never leave the gateway


@pytest.mark.parametrize("path", ["/api/v1/models", "/api/v1/providers", "/api/v1/models/openai/gpt-4o-mini/endpoints"])
def test_listing_needs_auth(gateway, path: str) -> None:
    assert httpx.get(gateway.url + path).status_code == 401
