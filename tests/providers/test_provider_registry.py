"""The provider contract: every provider type lives in its own package under providers/, is registered once, and is
named nowhere else; what a spec declares reaches the config, the router and the transport."""

from __future__ import annotations

import ast
import asyncio
import importlib
from pathlib import Path

import httpx
import pytest
import yaml

from crossroads.config import ConfigError, load_config
from crossroads.providers.base import Adapter, ProviderSpec
from crossroads.providers.registry import PROVIDER_TYPES, SPECS, make_adapter, spec_for
from tests.conftest import MASTER_KEY, GatewayProcess
from tests.fakes.openai_fake import FakeOpenAI

SRC = Path(__file__).resolve().parents[2] / "src" / "crossroads"


def _provider_names() -> set[str]:
    return {name for spec in SPECS.values() for name in (spec.type, *spec.aliases)}


def test_no_module_outside_providers_names_a_provider_type() -> None:
    """A provider type's name as a string (`type == "anthropic"`, a dict keyed by types...) outside providers/ means
    one more file to touch for every provider added: what differs belongs in its ProviderSpec or Adapter."""
    names = _provider_names()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "providers":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not found, "provider types named outside providers/:\n" + "\n".join(found)


def test_the_scan_sees_a_provider_name() -> None:
    # The scan above must be able to fail: the providers' own modules do name their types.
    tree = ast.parse((SRC / "providers" / "anthropic" / "__init__.py").read_text(encoding="utf-8"))
    assert any(isinstance(n, ast.Constant) and n.value == "anthropic" for n in ast.walk(tree))


@pytest.mark.parametrize("kind", PROVIDER_TYPES)
def test_each_provider_is_one_package_with_a_spec_and_a_fake(kind: str) -> None:
    package = SRC / "providers" / kind
    assert (package / "__init__.py").is_file()
    spec = spec_for(kind)
    assert isinstance(spec, ProviderSpec) and spec.type == kind
    # The adapter class it names lives in its own package (imported only when a connection is built).
    module, _, name = spec.adapter.partition(":")
    assert module.startswith(f"crossroads.providers.{kind}.") and name
    assert issubclass(getattr(importlib.import_module(module), name), Adapter)
    # The fake upstream that speaks its wire format for the tests (docs/providers.md, step 3).
    assert (Path(__file__).resolve().parents[1] / "fakes" / f"{kind}_fake.py").is_file()


def _config(tmp_path: Path, providers: list[dict]) -> object:
    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump({"server": {"data_dir": str(tmp_path / "data")}, "providers": providers}))
    return load_config(str(path))


@pytest.mark.parametrize("kind", [kind for kind in PROVIDER_TYPES if spec_for(kind).default_base_url])
def test_a_spec_gives_its_connections_their_defaults(tmp_path: Path, kind: str) -> None:
    spec = spec_for(kind)
    config = _config(tmp_path, [{"name": "up", "type": kind, "api_key": "k" * 20,
                                 "models": [{"id": "x/model", "upstream": "model"}]}])
    conn = config.providers[0]  # type: ignore[attr-defined]
    assert conn.base_url == spec.default_base_url
    assert conn.base_url.endswith(spec.api_version or "")
    assert conn.discover is False  # models declared
    adapter = make_adapter(conn)
    assert isinstance(adapter, Adapter)
    assert adapter.url("x") == conn.base_url + "/x"


def test_an_api_many_servers_speak_needs_a_base_url(tmp_path: Path) -> None:
    kinds = [kind for kind in PROVIDER_TYPES if not spec_for(kind).default_base_url]
    assert kinds
    for kind in kinds:
        with pytest.raises(ConfigError) as caught:
            _config(tmp_path, [{"name": "somewhere", "type": kind}])
        assert caught.value.key == "providers[0].base_url"


def test_a_connection_field_belongs_to_its_provider_type(tmp_path: Path) -> None:
    config = _config(tmp_path, [{"name": "ant", "type": "anthropic", "api_key": "k" * 20,
                                 "api_version": "2024-01-01"}])
    conn = config.providers[0]  # type: ignore[attr-defined]
    assert conn.options == {"api_version": "2024-01-01"}
    assert make_adapter(conn).headers["anthropic-version"] == "2024-01-01"  # type: ignore[attr-defined]
    default = _config(tmp_path, [{"name": "ant", "type": "anthropic", "api_key": "k" * 20}]).providers[0]  # type: ignore[attr-defined]
    assert make_adapter(default).headers["anthropic-version"] == "2023-06-01"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, [{"name": "o", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                            "api_version": "2024-01-01"}])
    assert caught.value.key == "providers[0].api_version"
    assert "anthropic connections only" in caught.value.problem
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, [{"name": "ant", "type": "anthropic", "api_version": 3}])
    assert caught.value.key == "providers[0].api_version"


def test_adapter_hooks_default_to_https_json_and_sse(tmp_path: Path) -> None:
    config = _config(tmp_path, [{"name": "o", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}])
    adapter = make_adapter(config.providers[0])  # type: ignore[attr-defined]
    assert adapter.sign is None  # static credentials: nothing awaited per request
    assert adapter.error_status(529, b"{}") == 529
    assert adapter.error_message(500, b'{"error": {"message": "boom"}}') == "boom"
    assert adapter.native_translator("messages", None, {}, {}) is None  # type: ignore[arg-type]


async def test_concurrent_requests_keep_their_own_request_ids_upstream(gateway: GatewayProcess,
                                                                       fake_openai: FakeOpenAI) -> None:
    """Translators hand out their adapter's headers; the gateway adds each request's X-Request-Id to a copy, so
    concurrent streams never send another request's id (or trace context) upstream."""
    fake_openai.reset()
    ids = [f"req-concurrent-{n:02d}" for n in range(24)]

    async def one(client: httpx.AsyncClient, request_id: str) -> None:
        async with client.stream("POST", "/api/v1/chat/completions", headers={"X-Request-Id": request_id},
                                 json={"model": "openai/gpt-4o-mini", "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]}) as resp:
            assert resp.status_code == 200
            await resp.aread()

    async with httpx.AsyncClient(base_url=gateway.url, timeout=20,
                                 headers={"Authorization": f"Bearer {MASTER_KEY}"}) as client:
        await asyncio.gather(*(one(client, request_id) for request_id in ids))
    sent = sorted({k.lower(): v for k, v in r.headers.items()}.get("x-request-id", "") for r in fake_openai.requests
                  if r.path.endswith("/completions"))
    assert sent == ids
