"""docs/providers.md's walkthrough, executed: its code blocks are written to a scratch package, registered with the
registry line it shows, and the new type's connection is loaded from YAML and sent a request to the doc's fake."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

import crossroads.providers
import tests.fakes
from crossroads.config import ConfigError, load_config
from crossroads.providers.base import RequestContext
from crossroads.providers.registry import SPECS
from crossroads.routing.registry import Connection

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
_BLOCK = re.compile(r"```(python|yaml)\n(.*?)```", re.DOTALL)


def _blocks() -> tuple[dict[str, str], str, str]:
    """The doc's files (by the path in their first comment line), its registry snippet and its YAML example."""
    files: dict[str, str] = {}
    registry = config = ""
    for language, text in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        first = text.splitlines()[0]
        if language == "yaml":
            config = text
        elif first.startswith("# ") and first.endswith(".py"):
            files[first[2:]] = text
        elif "SPECS" in text:
            registry = text
    return files, registry, config


@pytest.fixture
def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    files, registry, _ = _blocks()
    assert set(files) == {"providers/azure/__init__.py", "providers/azure/adapter.py", "tests/fakes/azure_fake.py"}
    for name, text in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    # The scratch folders join the real packages, as if the files were in the tree.
    monkeypatch.setattr(crossroads.providers, "__path__", [*crossroads.providers.__path__, str(tmp_path / "providers")])
    monkeypatch.setattr(tests.fakes, "__path__", [*tests.fakes.__path__, str(tmp_path / "tests" / "fakes")])
    for module in ("crossroads.providers.azure", "crossroads.providers.azure.adapter", "tests.fakes.azure_fake"):
        sys.modules.pop(module, None)
    package = importlib.import_module("crossroads.providers.azure")
    # The registry line: the doc's snippet lists the new spec after the three that exist.
    assert re.search(r"^\s+azure\.SPEC,$", registry, re.MULTILINE)
    assert "from crossroads.providers import anthropic, azure, gemini, openai" in registry
    monkeypatch.setitem(SPECS, "azure", package.SPEC)
    yield package
    for module in ("crossroads.providers.azure", "crossroads.providers.azure.adapter", "tests.fakes.azure_fake"):
        sys.modules.pop(module, None)


def _load(tmp_path: Path, base_url: str, api_key: str | None) -> object:
    _, _, example = _blocks()
    providers = yaml.safe_load(example)["providers"]
    providers[0].update(base_url=base_url, api_key=api_key)
    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump({"server": {"data_dir": str(tmp_path / "data")}, "providers": providers}))
    return load_config(str(path))


async def test_the_walkthrough_adds_a_working_provider(azure: object, tmp_path: Path) -> None:
    from tests.fakes.azure_fake import FakeAzure

    fake = FakeAzure().start()
    try:
        config = _load(tmp_path, fake.base_url, fake.api_key)
        conn_config = config.providers[0]  # type: ignore[attr-defined]
        assert conn_config.type == "azure" and conn_config.options == {"api_version": "2024-10-21"}
        from crossroads.providers.http import UpstreamClient
        from crossroads.providers.registry import make_adapter

        connection = Connection(conn_config, make_adapter(conn_config), UpstreamClient(conn_config.timeout))
        assert connection.spec.provider_name == "azure.ai.openai"
        model = conn_config.models[0]
        translator = connection.adapter.translator(RequestContext(model=model, connection=conn_config, stream=False))
        upstream = await translator.request({"model": model.id, "messages": [{"role": "user", "content": "hi"}]})
        assert upstream.url == (f"{fake.base_url}/openai/deployments/my-gpt4o-deployment/chat/completions"
                                "?api-version=2024-10-21")
        assert "Authorization" not in upstream.headers
        async with aiohttp.ClientSession() as session, session.post(upstream.url, data=upstream.body,
                                                                    headers=upstream.headers) as resp:
            assert resp.status == 200
            result = translator.response(await resp.read())
        assert result["choices"][0]["message"]["content"]
        assert translator.usage.seen and translator.usage.prompt_tokens > 0
        assert fake.last.json["model"] == "my-gpt4o-deployment"
        assert fake.last.headers["api-key"] == fake.api_key
        await connection.client.close()
    finally:
        fake.stop()


def test_the_walkthrough_connection_field_is_azures_only(azure: object, tmp_path: Path) -> None:
    config = _load(tmp_path, "https://my-resource.openai.azure.com", None)
    assert config.providers[0].options["api_version"] == "2024-10-21"  # type: ignore[attr-defined]
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({"providers": [{"name": "o", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                                                   "api_version": "2024-10-21"}]}))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "anthropic, azure connections only" in caught.value.problem
