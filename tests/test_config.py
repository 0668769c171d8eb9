"""`crossroads.config.load_config` against real files in tmp_path, with the environment controlled by monkeypatch."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from crossroads.catalog import load_catalog
from crossroads.config import ConfigError, load_config
from crossroads.routing.registry import models_for

PROVIDER_ENV = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY",
    "DEEPSEEK_API_KEY", "MISTRAL_API_KEY", "TOGETHER_API_KEY", "OLLAMA_BASE_URL",
)
CROSSROADS_ENV = ("CROSSROADS_CONFIG", "CROSSROADS_MASTER_KEY", "CROSSROADS_DATA_DIR")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # The machine's own keys must not leak into what the tests see.
    for name in (*PROVIDER_ENV, *CROSSROADS_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "crossroads.yaml"
    path.write_text(text)
    return str(path)


def write_yaml(tmp_path: Path, data: dict) -> str:
    return write(tmp_path, yaml.safe_dump(data))


# -- ${VAR} substitution -------------------------------------------------------------------------------------------

def test_env_vars_replaced_in_base_url_headers_and_api_key(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CR_TEST_HOST", "vllm.internal:8000")
    clean_env.setenv("CR_TEST_ORG", "org-42")
    clean_env.setenv("CR_TEST_KEY", "secret-key-value")
    clean_env.delenv("CR_TEST_UNSET", raising=False)
    path = write(tmp_path, """
providers:
  - name: local
    type: openai
    base_url: http://${CR_TEST_HOST}/v1
    api_key: ${CR_TEST_KEY}
    headers:
      X-Org: ${CR_TEST_ORG}
      X-Mixed: "a-${CR_TEST_ORG}-b-${CR_TEST_UNSET:-}-c"
      X-Default: ${CR_TEST_UNSET:-fallback value}
""")
    conn = load_config(path).providers[0]
    assert conn.base_url == "http://vllm.internal:8000/v1"
    assert conn.api_key == "secret-key-value"
    assert conn.headers == {"X-Org": "org-42", "X-Mixed": "a-org-42-b--c", "X-Default": "fallback value"}
    assert all(type(v) is str for v in (conn.base_url, conn.api_key, *conn.headers.values()))


def test_empty_default_allows_unset_and_default_applies(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("CR_TEST_UNSET", raising=False)
    clean_env.setenv("CR_TEST_EMPTY", "")
    path = write(tmp_path, """
server:
  master_key: ${CR_TEST_UNSET:-}
  data_dir: ${CR_TEST_UNSET:-/var/lib/crossroads}
providers:
  - name: a
    type: openai
    base_url: http://127.0.0.1:1/v1
    api_key: ${CR_TEST_UNSET:-}
  - name: b
    type: openai
    base_url: ${CR_TEST_EMPTY:-http://127.0.0.1:2/v1}
    api_key: ${CR_TEST_EMPTY}
""")
    config = load_config(path)
    assert config.server.master_key is None
    assert config.server.data_dir == "/var/lib/crossroads"
    a, b = config.providers
    assert a.api_key is None
    assert b.api_key is None  # set but empty counts as unset
    assert b.base_url == "http://127.0.0.1:2/v1"


@pytest.mark.parametrize(("where", "key"), [
    ("server:\n  master_key: ${CR_TEST_UNSET}\n", "server.master_key"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', api_key: '${CR_TEST_UNSET}'}\n",
     "providers[0].api_key"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', headers: {X-Org: 'org-${CR_TEST_UNSET}'}}\n",
     "providers[0].headers.X-Org"),
    ("routes:\n  - {name: r, fallback: [a/b, '${CR_TEST_UNSET}'], targets: []}\n", "routes[0].fallback[1]"),
])
def test_unset_var_without_default_is_an_error(tmp_path: Path, clean_env: pytest.MonkeyPatch, where: str,
                                               key: str) -> None:
    # It used to become "no value" silently: a connection without its API key, a server without its master key.
    clean_env.delenv("CR_TEST_UNSET", raising=False)
    path = write(tmp_path, where)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.source == path and path in message
    assert info.value.key == key and key in message
    assert "${CR_TEST_UNSET} is not set" in message and "${CR_TEST_UNSET:-}" in message


def test_set_but_empty_var_is_empty(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CR_TEST_EMPTY", "")
    path = write(tmp_path, "providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', api_key: '${CR_TEST_EMPTY}',"
                           " headers: {X-A: 'a${CR_TEST_EMPTY}b'}}\n")
    [conn] = load_config(path).providers
    assert conn.api_key is None and conn.headers == {"X-A": "ab"}


def test_set_var_wins_over_default(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CR_TEST_DIR", "/srv/data")
    path = write(tmp_path, "server:\n  data_dir: ${CR_TEST_DIR:-./data}\n")
    assert load_config(path).server.data_dir == "/srv/data"


def test_env_var_in_numeric_and_boolean_keys(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    # "${VAR} is replaced anywhere in the file": the environment holds strings, numeric keys must still work.
    clean_env.setenv("CR_TEST_PORT", "9123")
    clean_env.setenv("CR_TEST_DISCOVER", "true")
    clean_env.delenv("CR_TEST_UNSET", raising=False)
    path = write(tmp_path, """
server:
  port: ${CR_TEST_PORT}
  shutdown_grace: ${CR_TEST_UNSET:-5}
providers:
  - name: local
    type: openai
    base_url: http://127.0.0.1:1/v1
    timeout: ${CR_TEST_UNSET:-12.5}
    discover: ${CR_TEST_DISCOVER}
""")
    config = load_config(path)
    assert config.server.port == 9123
    assert config.server.shutdown_grace == 5.0
    assert config.providers[0].timeout == 12.5
    assert config.providers[0].discover is True
    clean_env.setenv("CR_TEST_PORT", "not-a-port")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "server.port"
    assert "'not-a-port'" in str(info.value)


# -- no file: connections from the environment ---------------------------------------------------------------------

ENV_CONNECTIONS = [
    ("OPENAI_API_KEY", "openai", "openai", "https://api.openai.com/v1"),
    ("ANTHROPIC_API_KEY", "anthropic", "anthropic", "https://api.anthropic.com/v1"),
    ("GEMINI_API_KEY", "google", "gemini", "https://generativelanguage.googleapis.com/v1beta"),
    ("GOOGLE_API_KEY", "google", "gemini", "https://generativelanguage.googleapis.com/v1beta"),
    ("OPENROUTER_API_KEY", "openrouter", "openai", "https://openrouter.ai/api/v1"),
    ("GROQ_API_KEY", "groq", "openai", "https://api.groq.com/openai/v1"),
    ("DEEPSEEK_API_KEY", "deepseek", "openai", "https://api.deepseek.com/v1"),
    ("MISTRAL_API_KEY", "mistral", "openai", "https://api.mistral.ai/v1"),
    ("TOGETHER_API_KEY", "together", "openai", "https://api.together.xyz/v1"),
]


@pytest.mark.parametrize(("var", "name", "kind", "base_url"), ENV_CONNECTIONS, ids=[c[0] for c in ENV_CONNECTIONS])
def test_connection_from_env_var(clean_env: pytest.MonkeyPatch, var: str, name: str, kind: str,
                                 base_url: str) -> None:
    clean_env.setenv(var, "key-from-" + var)
    config = load_config(None)
    assert config.source == "environment"
    assert [(c.name, c.type, c.base_url, c.api_key) for c in config.providers] == [
        (name, kind, base_url, "key-from-" + var)]


def test_no_env_no_connections(clean_env: pytest.MonkeyPatch) -> None:
    config = load_config(None)
    assert config.providers == []
    assert config.server.master_key is None
    assert config.server.port == 8080 and config.server.host == "127.0.0.1"


def test_gemini_and_google_key_give_one_connection(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GEMINI_API_KEY", "gem-key")
    clean_env.setenv("GOOGLE_API_KEY", "goog-key")
    providers = load_config(None).providers
    assert [c.name for c in providers] == ["google"]
    assert providers[0].api_key == "gem-key"


def test_several_env_vars_give_several_connections(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "k1")
    clean_env.setenv("ANTHROPIC_API_KEY", "k2")
    clean_env.setenv("GROQ_API_KEY", "k3")
    assert sorted(c.name for c in load_config(None).providers) == ["anthropic", "groq", "openai"]


@pytest.mark.parametrize("value", ["http://host:11434", "http://host:11434/", "http://host:11434/v1"])
def test_ollama_from_base_url(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("OLLAMA_BASE_URL", value)
    [conn] = load_config(None).providers
    assert (conn.name, conn.type, conn.base_url, conn.api_key, conn.discover) == (
        "ollama", "openai", "http://host:11434/v1", None, True)


def test_master_key_and_data_dir_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CROSSROADS_MASTER_KEY", "sk-my-own-master-key-of-32-chars")
    clean_env.setenv("CROSSROADS_DATA_DIR", "/tmp/somewhere")
    config = load_config(None)
    assert config.server.master_key == "sk-my-own-master-key-of-32-chars"
    assert config.server.data_dir == "/tmp/somewhere"


def test_crossroads_config_env_names_the_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server:\n  port: 9001\n")
    clean_env.setenv("CROSSROADS_CONFIG", path)
    clean_env.setenv("OPENAI_API_KEY", "ignored-when-a-file-is-used")
    config = load_config(None)
    assert config.source == path
    assert config.server.port == 9001
    assert config.providers == []


# -- catalog models ---------------------------------------------------------------------------------------------------

def test_catalog_models_attach_to_connection_without_models(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"providers": [
        {"name": "work-openai", "type": "openai", "base_url": "https://api.openai.com/v1", "api_key": "k"},
        {"name": "claude", "type": "anthropic", "api_key": "k"},
    ]})
    config = load_config(path)
    oai, ant = config.providers
    catalog = load_catalog()
    assert oai.vendor is not None and oai.vendor.key == "openai"
    assert oai.discover is False  # the catalog supplies the models
    ids = {m.id for m in models_for(oai, config.catalog)}
    assert "openai/gpt-4o-mini" in ids
    assert ids == {m.id for m in catalog.vendors["openai"].models}
    assert ant.base_url == "https://api.anthropic.com/v1"
    ant_ids = {m.id for m in models_for(ant, config.catalog)}
    assert ant_ids == {m.id for m in catalog.vendors["anthropic"].models} and ant_ids


def test_catalog_vendor_by_key_for_custom_base_url(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"providers": [
        {"name": "proxy", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "catalog": "openai"}]})
    [conn] = load_config(path).providers
    assert conn.vendor is not None and conn.vendor.key == "openai"
    assert "openai/gpt-4o" in {m.id for m in models_for(conn, load_catalog())}


def test_unknown_openai_compatible_server_discovers(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"providers": [
        {"name": "vllm", "type": "openai", "base_url": "http://10.0.0.5:8000/v1/"}]})
    [conn] = load_config(path).providers
    assert conn.base_url == "http://10.0.0.5:8000/v1"
    assert conn.discover is True
    assert models_for(conn, load_catalog()) == []


def test_explicit_model_with_only_id_inherits_catalog(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"providers": [
        {"name": "oai", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": [{"id": "openai/gpt-4o"}]}]})
    [conn] = load_config(path).providers
    [spec] = conn.models
    base = load_catalog().by_id["openai/gpt-4o"]
    assert spec.upstream == base.upstream == "gpt-4o"
    assert spec.context_length == base.context_length and spec.context_length > 0
    assert spec.max_completion_tokens == base.max_completion_tokens
    assert spec.pricing == base.pricing and not spec.pricing.is_zero()
    assert spec.input_modalities == base.input_modalities
    # Only the listed model is served, not the whole catalog.
    assert [m.id for m in models_for(conn, load_catalog())] == ["openai/gpt-4o"]


def test_explicit_model_overrides_and_prices_are_per_token(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"providers": [
        {"name": "oai", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "models": [
            {"id": "openai/gpt-4o", "context_length": 1000,
             "pricing": {"prompt": 3, "completion": 12.5, "input_cache_read": 0.5, "request": 0.01}},
            {"id": "acme/custom-model"},
        ]}]})
    conn = load_config(path).providers[0]
    gpt, custom = conn.models
    base = load_catalog().by_id["openai/gpt-4o"]
    assert gpt.context_length == 1000
    assert gpt.max_completion_tokens == base.max_completion_tokens  # not overridden: inherited
    assert gpt.pricing.prompt == pytest.approx(3e-6)
    assert gpt.pricing.completion == pytest.approx(12.5e-6)
    assert gpt.pricing.input_cache_read == pytest.approx(0.5e-6)
    assert gpt.pricing.input_cache_write == 0
    assert gpt.pricing.request == pytest.approx(0.01)  # per request, not per token
    assert custom.upstream == "custom-model"
    assert custom.pricing.is_zero()
    assert custom.context_length is None


def test_catalog_prices_are_per_token() -> None:
    spec = load_catalog().by_id["openai/gpt-4o-mini"]
    assert spec.pricing.prompt == pytest.approx(0.15e-6)
    assert spec.pricing.completion == pytest.approx(0.6e-6)


def test_catalog_data_file_is_sane() -> None:
    catalog = load_catalog()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", catalog.date)
    assert {"openai", "anthropic", "google", "openrouter", "groq", "deepseek", "mistral", "together",
            "ollama"} <= set(catalog.vendors)
    assert len(catalog.by_id) >= 10
    for vendor in catalog.vendors.values():
        assert vendor.type in ("openai", "anthropic", "gemini")
        assert vendor.base_url.startswith(("http://", "https://"))
        seen: set[str] = set()  # one model may be hosted by several vendors, but once per vendor
        for model in vendor.models:
            assert "/" in model.id and model.upstream, model.id
            assert model.id not in seen, f"{model.id} listed twice"
            seen.add(model.id)
            assert isinstance(model.context_length, int) and model.context_length > 0, model.id
            assert model.max_completion_tokens is None or model.max_completion_tokens > 0, model.id
            for price in ("prompt", "completion", "request", "image", "input_cache_read", "input_cache_write"):
                assert getattr(model.pricing, price) >= 0, (model.id, price)
            assert not model.pricing.is_zero(), model.id


# -- errors -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "key", "words"), [
    ("providers:\n  - {name: x, type: azure, base_url: 'http://h/v1'}\n", "providers[0].type", "azure"),
    ("providers:\n  - {type: openai, base_url: 'http://h/v1'}\n", "providers[0].name", "required"),
    ("providers:\n  - {name: x, type: openai, base_url: 'http://h/v1'}\n"
     "  - {name: x, type: openai, base_url: 'http://h2/v1'}\n", "providers[1].name", "duplicate"),
    ("server:\n  port: eighty\n", "server.port", "integer"),
    ("server:\n  port: 70000\n", "server.port", "65535"),
    ("provders: []\n", "provders", "unknown key"),
    ("server:\n  prot: 1\n", "server.prot", "unknown key"),
    ("providers:\n  - {name: x, type: openai, base_url: 'ftp://h/v1'}\n", "providers[0].base_url", "http"),
    ("providers:\n  - {name: x, type: openai, base_url: 'http://h/v1', timeout: -5}\n", "providers[0].timeout",
     "positive"),
    ("providers:\n  - {name: a/b, type: openai, base_url: 'http://h/v1'}\n", "providers[0].name", "'/'"),
    ("providers:\n  - {name: x, type: openai}\n", "providers[0].base_url", "required"),
    ("providers:\n  - {name: x, type: openai, base_url: 'http://h/v1', models: [{id: m, pricing: {prompt: -1}}]}\n",
     "providers[0].models[0].pricing.prompt", "negative"),
    ("server:\n  port: 8080\n   host: x\n", "line 3", "invalid YAML"),
])
def test_config_errors_name_file_key_and_problem(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.source == path and path in message
    assert key in info.value.key and key in message
    assert words in message


@pytest.mark.parametrize(("text", "key", "secret"), [
    ("server:\n  master_key: 123456789012345678901234567890123\n", "server.master_key", "1234567890"),
    ("server:\n  master_key: [sk-or-v1-secret-master-4242]\n", "server.master_key", "secret-master-4242"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', api_key: [sk-proj-secret-4242]}\n",
     "providers[0].api_key", "secret-4242"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', api_key: {k: sk-proj-secret-4242}}\n",
     "providers[0].api_key", "secret-4242"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', headers: [sk-proj-secret-4242]}\n",
     "providers[0].headers", "secret-4242"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', headers: {X-K: [sk-proj-secret-4242]}}\n",
     "providers[0].headers.X-K", "secret-4242"),
    ("providers:\n  - {name: a, type: openai, base_url: 'ftp://user:secret-4242@h/v1'}\n", "providers[0].base_url",
     "secret-4242"),
])
def test_errors_never_repeat_secret_values(tmp_path: Path, text: str, key: str, secret: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key and "must be" in info.value.problem
    assert secret not in str(info.value)


def test_short_master_key_is_refused(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "server:\n  master_key: sk-only-thirty-one-characters-x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "server.master_key" and "at least 32 characters" in info.value.problem
    assert "sk-only-thirty-one" not in str(info.value)
    assert load_config(write(tmp_path, "server:\n  master_key: sk-exactly-thirty-two-characters\n")).server.master_key
    clean_env.setenv("CROSSROADS_MASTER_KEY", "sk-too-short")
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert info.value.key == "CROSSROADS_MASTER_KEY" and "sk-too-short" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert path in str(info.value) and "No such file" in str(info.value)


def test_connections_and_routes_may_belong_to_a_workspace(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, """
providers:
  - {name: team, type: openai, base_url: "http://127.0.0.1:9/v1", workspace: search}
routes:
  - {name: bot, workspace: search, targets: [{connection: team, model: m}]}
""")
    config = load_config(path)
    assert config.providers[0].workspace == "search" and config.routes[0].workspace == "search"
    for bad in ('""', "[a]"):
        path = write(tmp_path, f"""
providers:
  - {{name: team, type: openai, base_url: "http://127.0.0.1:9/v1", workspace: {bad}}}
""")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "workspace" in str(info.value)


def test_single_sign_on_settings(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SSO_SECRET", "very-secret-value")
    config = load_config(write(tmp_path, """
server:
  oidc: {issuer: "https://login.example.com/realm", client_id: crossroads, client_secret: "${SSO_SECRET}"}
"""))
    oidc = config.server.oidc
    assert oidc is not None and oidc.issuer == "https://login.example.com/realm" and oidc.client_id == "crossroads"
    assert oidc.client_secret == "very-secret-value" and oidc.scopes == ["openid", "email", "profile"]
    assert "very-secret-value" not in repr(oidc)
    assert load_config(write(tmp_path, "server: {}\n")).server.oidc is None
    for body, key, problem in (
            ("{client_id: c, client_secret: s}", "server.oidc.issuer", "is required"),
            ("{issuer: 'login.example.com', client_id: c, client_secret: s}", "server.oidc.issuer", "issuer URL"),
            ("{issuer: 'https://x', client_secret: s}", "server.oidc.client_id", "is required"),
            ("{issuer: 'https://x', client_id: c, client_secret: 5}", "server.oidc.client_secret", "must be"),
            ("{issuer: 'https://x', client_id: c, client_secret: s, scopes: [email]}", "server.oidc.scopes", "openid"),
            ("{issuer: 'https://x', client_id: c, client_secret: s, tenant: t}", "server.oidc.tenant", "unknown key")):
        with pytest.raises(ConfigError) as error:
            load_config(write(tmp_path, f"server:\n  oidc: {body}\n"))
        assert key in str(error.value) and problem in str(error.value), str(error.value)


# -- the schema's errors: paths, wording, secrets ---------------------------------------------------------------------

ROUTE_PROVIDERS = "providers:\n  - {name: oa, type: openai, base_url: 'http://h/v1'}\n"


@pytest.mark.parametrize(("text", "key", "problem"), [
    # An error deep in lists and mappings names the whole path, list indices included.
    (ROUTE_PROVIDERS + "routes:\n  - {name: a, targets: [{connection: oa, model: m}]}\n"
     "  - {name: b, strategy: weighted, targets: [{connection: oa, model: m, weight: heavy}]}\n",
     "routes[1].targets[0].weight", "must be a number, got str 'heavy'"),
    (ROUTE_PROVIDERS.replace("}", ", models: [{id: a/b}, {id: a/c, context_length: 1.5}]}"),
     "providers[0].models[1].context_length", "must be an integer, got float 1.5"),
    (ROUTE_PROVIDERS + "routes:\n  - {name: a, targets: [{connection: oa, model: m}], "
     "fallback: [x/y, {connection: oa, model: m, params: [1]}]}\n", "routes[0].fallback[1].params",
     "must be a mapping, got list"),
    (ROUTE_PROVIDERS + "routes:\n  - {name: a, targets: [{connection: oa, model: m}], "
     "fallback: [x/y, {connection: ghost, model: m}]}\n", "routes[0].fallback[1].connection",
     "no connection is named 'ghost' (configured: oa)"),
    (ROUTE_PROVIDERS + "routes:\n  - {name: a, targets: [{connection: oa, model: m}], "
     "conditions: [{when: {metadata: {tier: {gt: high}}}, action: block}]}\n",
     "routes[0].conditions[0].when.metadata.tier.gt", "must be a number, got str 'high'"),
    ("server:\n  media:\n    max_byte: 5\n", "server.media.max_byte",
     "unknown key (allowed: allow, max_bytes, timeout)"),
    ("server:\n  port: '8080'\n", "server.port", "must be an integer, got str '8080'"),  # a YAML string is no number
    ("server:\n  port: 8080.0\n", "server.port", "must be an integer, got float 8080.0"),
    ("server:\n  port: true\n", "server.port", "must be an integer, got a boolean"),
    ("server:\n  shutdown_grace: .nan\n", "server.shutdown_grace", "must be positive, got nan"),
    ("server:\n  metrics: {enabled: 'yes'}\n", "server.metrics.enabled", "must be a boolean, got str 'yes'"),
    ("server: 5\n", "server", "must be a mapping, got int"),
    ("- server\n", "(top level)", "must be a mapping, got list"),
    ("accounting:\n  durability: fast\n", "accounting.durability", "must be batched or strict, got 'fast'"),
    ("accounting:\n  budget: -1\n", "accounting.budget", "must not be negative"),
])
def test_schema_errors_name_the_path_and_the_problem(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key and problem in info.value.problem, str(info.value)
    assert str(info.value) == f"configuration error in {path}: {key}: {info.value.problem}"


@pytest.mark.parametrize(("text", "key"), [
    ("server:\n  metrics: {token: 98765432109876543210}\n", "server.metrics.token"),
    ("server:\n  metrics: {token: [sk-secret-98765]}\n", "server.metrics.token"),
    ("server:\n  oidc: {issuer: 'https://x', client_id: c, client_secret: [sk-secret-98765]}\n",
     "server.oidc.client_secret"),
    ("server:\n  oidc: {issuer: 'https://x', client_id: c, client_secret: 98765432109876543210}\n",
     "server.oidc.client_secret"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', api_key: 98765432109876543210}\n",
     "providers[0].api_key"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', headers: 'X-K: sk-secret-98765'}\n",
     "providers[0].headers"),
    ("providers:\n  - {name: a, type: openai, base_url: 'http://h/v1', headers: {X-K: 98765432109876543210}}\n",
     "providers[0].headers.X-K"),
    ("providers:\n  - {name: a, type: openai, base_url: ['http://u:sk-secret-98765@h/v1']}\n", "providers[0].base_url"),
])
def test_a_secret_in_a_wrongly_typed_key_is_not_echoed(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key and info.value.problem.startswith("must be"), str(info.value)
    assert "98765" not in str(info.value)
    # Nor is pydantic's own error, which holds the value, chained to it.
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_a_secret_provider_key_is_not_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossroads.providers.base import ConnectionField
    from crossroads.providers.registry import SPECS

    spec = SPECS["anthropic"]
    fields = {**spec.connection_fields, "signing_key": ConnectionField(str, secret=True),
              "region": ConnectionField(str, required=True)}
    monkeypatch.setitem(SPECS, "anthropic", dataclasses.replace(spec, connection_fields=fields))
    text = "providers:\n  - {name: c, type: anthropic, region: eu, signing_key: %s}\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text % "98765432109876543210"))
    assert (info.value.key, info.value.problem) == ("providers[0].signing_key", "must be a string, got int")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "providers:\n  - {name: c, type: anthropic}\n"))
    assert (info.value.key, info.value.problem) == ("providers[0].region", "is required")
    [conn] = load_config(write(tmp_path, text % "sk-signing")).providers
    assert conn.options == {"region": "eu", "signing_key": "sk-signing"}


def test_null_means_the_default(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("CR_TEST_UNSET", raising=False)
    config = load_config(write(tmp_path, "server:\n  port: ${CR_TEST_UNSET:-}\n  host: null\n  media: null\n"
                                         "routing:\n  retries: null\n"))
    assert (config.server.port, config.server.host, config.server.media.max_bytes) == (8080, "127.0.0.1", 20971520)
    assert config.routing.retries == 2


@pytest.mark.parametrize(("value", "parsed"), [("true", True), ("false", False), ("yes", True), ("off", False)])
def test_env_var_booleans(tmp_path: Path, clean_env: pytest.MonkeyPatch, value: str, parsed: bool) -> None:
    clean_env.setenv("CR_TEST_FLAG", value)
    config = load_config(write(tmp_path, "server:\n  metrics: {enabled: '${CR_TEST_FLAG}'}\nrouting:\n"
                                         "  rate_limits_fail_open: ${CR_TEST_FLAG}\n"))
    assert config.server.metrics.enabled is parsed and config.routing.rate_limits_fail_open is parsed


def test_env_var_that_is_no_boolean(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CR_TEST_FLAG", "maybe")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "routing:\n  rate_limits_fail_open: ${CR_TEST_FLAG}\n"))
    assert info.value.key == "routing.rate_limits_fail_open"
    assert info.value.problem == "must be a boolean, got str 'maybe'"
