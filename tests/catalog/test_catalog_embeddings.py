"""Embedding models (issue 14): the catalog's entries, a configured model's `dimensions`, and GET /models listing them
only when asked for with OpenRouter's `output_modalities` query parameter (text-output models by default)."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from crossroads.api.models import DEFAULT_OUTPUT_MODALITIES, ModelViews, output_modalities_filter
from crossroads.catalog import load_catalog
from crossroads.config import ConfigError, load_config
from crossroads.routing.registry import build_registry
from tests.conftest import MASTER_KEY, GatewayServer

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}

# id -> (vendor, upstream, USD per 1M input tokens, context length, default dimensions)
EMBEDDING_MODELS = {
    "openai/text-embedding-3-small": ("openai", "text-embedding-3-small", 0.02, 8192, 1536),
    "openai/text-embedding-3-large": ("openai", "text-embedding-3-large", 0.13, 8192, 3072),
    "openai/text-embedding-ada-002": ("openai", "text-embedding-ada-002", 0.10, 8192, 1536),
    "google/gemini-embedding-001": ("google", "gemini-embedding-001", 0.15, 2048, 3072),
    "google/gemini-embedding-2": ("google", "gemini-embedding-2", 0.20, 8192, 3072),
    "mistralai/mistral-embed-2312": ("mistral", "mistral-embed", 0.10, 8192, 1024),
}
OPENAI_EMBEDDINGS = {m for m, (vendor, *_) in EMBEDDING_MODELS.items() if vendor == "openai"}


def _ids(body: bytes) -> set[str]:
    return {item["id"] for item in orjson.loads(body)["data"]}


def _views(tmp_path: Path, providers: list[dict]) -> ModelViews:
    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump({"providers": providers}))
    return ModelViews(build_registry(load_config(str(path))))


# -- the catalog ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", list(EMBEDDING_MODELS))
def test_catalog_embedding_model(model_id: str) -> None:
    vendor, upstream, prompt, context, dimensions = EMBEDDING_MODELS[model_id]
    [spec] = [m for m in load_catalog().vendors[vendor].models if m.id == model_id]
    assert spec.upstream == upstream
    assert spec.output_modalities == ["embeddings"] and spec.input_modalities == ["text"]
    assert spec.dimensions == dimensions
    assert spec.context_length == context
    assert spec.max_completion_tokens is None  # an embedding has no completion
    assert spec.priced
    assert spec.pricing.prompt == pytest.approx(prompt / 1e6)
    assert spec.pricing.completion == 0
    assert "temperature" not in spec.supported_parameters  # not the vendor's chat parameters


def test_only_embedding_models_have_dimensions() -> None:
    for vendor in load_catalog().vendors.values():
        for spec in vendor.models:
            assert (spec.dimensions is not None) == ("embeddings" in spec.output_modalities), spec.id


# -- configured models --------------------------------------------------------------------------------------------

def test_configured_embedding_model_keeps_its_dimensions(tmp_path: Path) -> None:
    views = _views(tmp_path, [{"name": "local", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": [
        {"id": "acme/embed-small", "upstream": "embed-small", "output_modalities": ["embeddings"], "dimensions": 768,
         "context_length": 512, "pricing": {"prompt": 0.05}},
        {"id": "acme/chat", "upstream": "chat", "pricing": {"prompt": 1, "completion": 2}},
    ]}])
    [dep] = views.registry.models["acme/embed-small"]
    assert dep.model.dimensions == 768
    assert views.registry.models["acme/chat"][0].model.dimensions is None
    assert _ids(views.models_body) == {"acme/chat"}
    [item] = orjson.loads(views.models_body_for(None, None, frozenset({"embeddings"})))["data"]
    assert item["id"] == "acme/embed-small" and item["dimensions"] == 768
    assert item["architecture"]["output_modalities"] == ["embeddings"]
    assert item["architecture"]["modality"] == "text->embeddings"
    assert item["pricing"]["prompt"] == "0.00000005" and item["pricing"]["completion"] == "0"


def test_configured_catalog_embedding_model_inherits_dimensions(tmp_path: Path) -> None:
    views = _views(tmp_path, [{"name": "openai", "type": "openai", "api_key": "k", "models": [
        {"id": "openai/text-embedding-3-large"}, {"id": "openai/text-embedding-3-small", "dimensions": 512}]}])
    assert views.registry.models["openai/text-embedding-3-large"][0].model.dimensions == 3072
    assert views.registry.models["openai/text-embedding-3-small"][0].model.dimensions == 512


@pytest.mark.parametrize(("value", "words"), [
    ("0", "positive"), ("-3", "positive"), ("big", "integer"), ("1.5", "integer"), ("true", "boolean")])
def test_bad_dimensions_is_a_config_error(tmp_path: Path, value: str, words: str) -> None:
    path = tmp_path / "crossroads.yaml"
    path.write_text("providers:\n  - {name: x, type: openai, base_url: 'http://h/v1', models: [{id: a/e, "
                    f"output_modalities: [embeddings], dimensions: {value}}}]}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert info.value.source == str(path) and str(path) in message
    assert info.value.key == "providers[0].models[0].dimensions" and info.value.key in message
    assert words in message


# -- GET /models ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (None, DEFAULT_OUTPUT_MODALITIES), ("", DEFAULT_OUTPUT_MODALITIES), (" , ", DEFAULT_OUTPUT_MODALITIES),
    ("embeddings", frozenset({"embeddings"})), ("text, Embeddings", frozenset({"text", "embeddings"})),
    ("all", None), ("image,all", None)])
def test_output_modalities_parameter(value: str | None, expected: frozenset[str] | None) -> None:
    assert output_modalities_filter(value) == expected


def test_openai_connection_lists_embedding_models_only_when_asked(tmp_path: Path) -> None:
    views = _views(tmp_path, [{"name": "openai", "type": "openai", "api_key": "k"}])
    catalog_ids = {m.id for m in load_catalog().vendors["openai"].models}
    text_ids = catalog_ids - OPENAI_EMBEDDINGS
    assert OPENAI_EMBEDDINGS <= catalog_ids and text_ids
    # The default list is what it was before embedding models existed: every text model, rendered as before.
    assert _ids(views.models_body) == text_ids
    text_items = [item for item in views.items if item["id"] in text_ids]
    assert views.models_body == ModelViews._render(text_items)
    assert all("dimensions" not in item for item in text_items)
    assert views.models_body_for(None, None, output_modalities_filter(None)) is views.models_body
    assert views.models_body_for(None) is views.models_body
    # Asked for, they are listed and marked.
    embeddings = orjson.loads(views.models_body_for(None, None, output_modalities_filter("embeddings")))
    assert {item["id"] for item in embeddings["data"]} == OPENAI_EMBEDDINGS
    assert embeddings["total_count"] == len(OPENAI_EMBEDDINGS)
    for item in embeddings["data"]:
        assert item["architecture"]["output_modalities"] == ["embeddings"]
        assert item["architecture"]["modality"] == "text->embeddings"
        assert item["dimensions"] == EMBEDDING_MODELS[item["id"]][4]
        assert item["pricing"]["completion"] == "0"
        assert item["top_provider"]["max_completion_tokens"] is None
    assert _ids(views.models_body_for(None, None, output_modalities_filter("text,embeddings"))) == catalog_ids
    assert _ids(views.models_body_for(None, None, output_modalities_filter("all"))) == catalog_ids
    assert _ids(views.models_body_for(None, None, output_modalities_filter("image"))) == set()


def test_filtered_bodies_are_cached_and_bounded(tmp_path: Path) -> None:
    views = _views(tmp_path, [{"name": "openai", "type": "openai", "api_key": "k"}])
    first = views.models_body_for(None, None, output_modalities_filter("embeddings"))
    assert views.models_body_for(None, None, output_modalities_filter("embeddings,nonsense")) is first
    for n in range(50):  # values no model outputs all share one (empty) body
        views.models_body_for(None, None, output_modalities_filter(f"made-up-{n}"))
    assert len(views._bodies_for) == 2


def test_restricted_key_sees_embedding_models_it_may_use(tmp_path: Path) -> None:
    views = _views(tmp_path, [{"name": "openai", "type": "openai", "api_key": "k"}])
    allowed = ["openai/text-embedding-3-small", "openai/gpt-4o"]
    assert _ids(views.models_body_for(allowed)) == {"openai/gpt-4o"}
    assert _ids(views.models_body_for(allowed, None, output_modalities_filter("embeddings"))) == \
        {"openai/text-embedding-3-small"}
    assert _ids(views.models_body_for(allowed, None, None)) == set(allowed)


@pytest.fixture(scope="module")
def embedding_gateway(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("embedding-gateway")
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
        "providers": [
            {"name": "oai", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "catalog": "openai"},
            {"name": "local", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": [
                {"id": "acme/embed", "upstream": "embed", "output_modalities": ["embeddings"], "dimensions": 384,
                 "pricing": "free"}]},
        ],
    }
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


def test_plain_models_listing_holds_text_models_only(embedding_gateway) -> None:
    data = httpx.get(embedding_gateway.url + "/api/v1/models", headers=AUTH).json()["data"]
    ids = {m["id"] for m in data}
    assert "openai/gpt-4o" in ids
    assert not ids & (OPENAI_EMBEDDINGS | {"acme/embed"})
    assert all("text" in m["architecture"]["output_modalities"] for m in data)


def test_models_listing_output_modalities_query(embedding_gateway) -> None:
    url = embedding_gateway.url + "/api/v1/models"
    data = httpx.get(url, params={"output_modalities": "embeddings"}, headers=AUTH).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert set(by_id) == OPENAI_EMBEDDINGS | {"acme/embed"}
    assert by_id["acme/embed"]["dimensions"] == 384
    assert by_id["openai/text-embedding-3-large"]["architecture"]["output_modalities"] == ["embeddings"]
    everything = {m["id"] for m in httpx.get(url, params={"output_modalities": "all"}, headers=AUTH).json()["data"]}
    assert set(by_id) | {"openai/gpt-4o"} <= everything
