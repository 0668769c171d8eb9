"""Configuration: a YAML file (``crossroads serve --config FILE``) or, without one, the environment.

The keys documented in the README are a user-facing contract. ``${VAR}`` (and ``${VAR:-default}``) is replaced from
the environment in every string of the file. Problems raise `ConfigError`, whose message names the file, the key and
the problem, and which the CLI prints without a traceback.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossroads.catalog import PROVIDER_TYPES, Catalog, ModelSpec, Vendor, load_catalog, model_from_dict

DEFAULT_BASE_URLS = {"anthropic": "https://api.anthropic.com/v1", "gemini": "https://generativelanguage.googleapis.com/v1beta"}
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(Exception):
    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"configuration error in {source}: {key}: {problem}")
        self.source, self.key, self.problem = source, key, problem


@dataclass(slots=True)
class MediaConfig:
    allow: list[str] = field(default_factory=list)  # hosts or CIDRs the media fetcher may reach despite the SSRF guard
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    master_key: str | None = None
    data_dir: str = "./data"
    max_body_bytes: int = 32 * 1024 * 1024
    keepalive_interval: float = 3.0  # seconds between ": PROCESSING" comments while a stream waits on its upstream
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    discovery_timeout: float = 3.0  # seconds a connection's GET /models may take at start-up
    database_url: str | None = None  # SQLAlchemy-style URL; None = SQLite file in data_dir
    media: MediaConfig = field(default_factory=MediaConfig)


@dataclass(slots=True)
class ConnectionConfig:
    name: str
    type: str
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    models: list[ModelSpec] = field(default_factory=list)
    vendor: Vendor | None = None  # catalog vendor whose models and parameter rules apply
    discover: bool = False  # ask the upstream's GET /models at start-up


@dataclass(slots=True)
class AccountingConfig:
    durability: str = "batched"  # batched: records written off the request path; strict: durable before responding
    flush_interval: float = 1.0  # seconds between batched writes of generation records
    budget: float | None = None  # USD the whole account may spend: GET /api/v1/credits' total_credits


@dataclass(slots=True)
class Config:
    source: str
    server: ServerConfig
    providers: list[ConnectionConfig]
    catalog: Catalog
    accounting: AccountingConfig = field(default_factory=AccountingConfig)


class _EnvStr(str):
    """A string produced by ``${VAR}`` substitution: where the key wants a number or a boolean, it is parsed as one
    (``port: ${PORT:-8080}``), since the environment only holds strings."""


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        whole = _ENV_PATTERN.fullmatch(value)
        if whole is not None:
            result = os.environ.get(whole.group(1)) or whole.group(2)
            return _EnvStr(result) if result else None
        if _ENV_PATTERN.search(value) is None:
            return value
        return _EnvStr(_ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", value))
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


class _Reader:
    """Typed access to one mapping of the file, with errors that name the key's full path."""

    def __init__(self, source: str, path: str, data: Any, allowed: set[str]) -> None:
        self.source, self.path = source, path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(source, path or "(top level)", f"must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - allowed)
        if unknown:
            raise ConfigError(source, self.key(unknown[0]), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.error(name, "is required")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, _EnvStr):
            parsed = None
            if str not in kinds:
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    pass
            value = self.data[name] = parsed if parsed is not None and not isinstance(parsed, str) else str(value)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"must be {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.error(name, f"must be {_kind_name(kinds)}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, name: str, kind: type, default: Any) -> Any:
        value = self.get(name, kind, default)
        if value <= 0:
            raise self.error(name, f"must be positive, got {value!r}")
        return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def load_config(path: str | None = None, *, catalog: Catalog | None = None) -> Config:
    catalog = catalog or load_catalog()
    path = path or os.environ.get("CROSSROADS_CONFIG")
    if not path:
        return _config_from_environment(catalog)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot be read: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(source, where, f"invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    raw = _expand_env(raw)
    top = _Reader(source, "", raw, {"server", "providers", "accounting"})
    server = _read_server(_Reader(source, "server", top.data.get("server"), _SERVER_KEYS))
    accounting = _read_accounting(_Reader(source, "accounting", top.data.get("accounting"),
                                          {"durability", "flush_interval", "budget"}))
    providers_raw = top.get("providers", list, [])
    providers: list[ConnectionConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(providers_raw):
        conn = _read_connection(_Reader(source, f"providers[{index}]", item, _CONNECTION_KEYS), catalog)
        if conn.name in seen:
            raise ConfigError(source, f"providers[{index}].name", f"duplicate connection name {conn.name!r}")
        seen.add(conn.name)
        providers.append(conn)
    return Config(source=source, server=server, providers=providers, catalog=catalog, accounting=accounting)


def _read_accounting(r: _Reader) -> AccountingConfig:
    accounting = AccountingConfig()
    accounting.durability = r.get("durability", str, accounting.durability)
    if accounting.durability not in ("batched", "strict"):
        raise r.error("durability", f"must be batched or strict, got {accounting.durability!r}")
    accounting.flush_interval = r.positive("flush_interval", float, accounting.flush_interval)
    budget = r.get("budget", float, None)
    if budget is not None and budget < 0:
        raise r.error("budget", "must not be negative")
    accounting.budget = budget
    return accounting


_SERVER_KEYS = {
    "host", "port", "master_key", "data_dir", "max_body_bytes", "keepalive_interval", "shutdown_grace",
    "discovery_timeout", "media", "database_url",
}
_CONNECTION_KEYS = {"name", "type", "base_url", "api_key", "headers", "timeout", "models", "catalog", "discover"}
_MODEL_KEYS = {
    "id", "upstream", "name", "created", "description", "context_length", "max_completion_tokens", "pricing",
    "input_modalities", "output_modalities", "tokenizer", "reasoning", "supported_parameters",
}


def _read_server(r: _Reader) -> ServerConfig:
    server = ServerConfig()
    server.host = r.get("host", str, server.host)
    server.port = r.get("port", int, server.port)
    if not 0 <= server.port <= 65535:
        raise r.error("port", f"must be between 0 and 65535, got {server.port}")
    server.master_key = r.get("master_key", str, None)
    server.data_dir = r.get("data_dir", str, server.data_dir)
    server.max_body_bytes = r.positive("max_body_bytes", int, server.max_body_bytes)
    server.keepalive_interval = r.positive("keepalive_interval", float, server.keepalive_interval)
    server.shutdown_grace = r.positive("shutdown_grace", float, server.shutdown_grace)
    server.discovery_timeout = r.positive("discovery_timeout", float, server.discovery_timeout)
    server.database_url = r.get("database_url", str, None)
    media = _Reader(r.source, r.key("media"), r.data.get("media"), {"allow", "max_bytes", "timeout"})
    defaults = MediaConfig()
    server.media = MediaConfig(
        allow=[str(x) for x in media.get("allow", list, [])],
        max_bytes=media.positive("max_bytes", int, defaults.max_bytes),
        timeout=media.positive("timeout", float, defaults.timeout),
    )
    return server


def _read_connection(r: _Reader, catalog: Catalog) -> ConnectionConfig:
    name = r.get("name", str, required=True)
    if not _NAME_PATTERN.match(name):
        raise r.error("name", f"{name!r} may hold only letters, digits, '.', '_' and '-' (no '/')")
    kind = r.get("type", str, required=True)
    if kind not in PROVIDER_TYPES:
        raise r.error("type", f"{kind!r} is not one of {', '.join(PROVIDER_TYPES)}")
    vendor_key = r.get("catalog", str, None)
    if vendor_key is not None and vendor_key not in catalog.vendors:
        raise r.error("catalog", f"unknown catalog vendor {vendor_key!r} (known: {', '.join(catalog.vendors)})")
    base_url = r.get("base_url", str, None)
    if base_url is None:
        vendor_guess = catalog.vendors.get(vendor_key or name)
        base_url = DEFAULT_BASE_URLS.get(kind) or (vendor_guess.base_url if vendor_guess else None)
        if base_url is None:
            raise r.error("base_url", "is required for an openai-type connection that is not a known vendor")
    if not base_url.startswith(("http://", "https://")):
        raise r.error("base_url", f"must be an http(s) URL, got {base_url!r}")
    base_url = base_url.rstrip("/")
    vendor = _pick_vendor(catalog, vendor_key, name, kind, base_url)
    headers = r.get("headers", dict, {})
    for key, value in headers.items():
        if not isinstance(value, str):
            raise r.error(f"headers.{key}", f"must be a string, got {type(value).__name__}")
    conn = ConnectionConfig(
        name=name,
        type=kind,
        base_url=base_url,
        api_key=r.get("api_key", str, None),
        headers={str(k): str(v) for k, v in headers.items()},
        timeout=r.positive("timeout", float, 600.0),
        vendor=vendor,
    )
    models_raw = r.get("models", list, [])
    params = vendor.supported_parameters if vendor else _DEFAULT_PARAMS[kind]
    for index, item in enumerate(models_raw):
        mr = _Reader(r.source, r.key(f"models[{index}]"), item, _MODEL_KEYS)
        model_id = mr.get("id", str, required=True)
        for key in ("context_length", "max_completion_tokens", "created"):
            mr.get(key, int)
        for key in ("input_modalities", "output_modalities", "supported_parameters"):
            mr.get(key, list)
        pricing = mr.get("pricing", dict)
        if pricing is not None:
            pr = _Reader(r.source, mr.key("pricing"), pricing, {"prompt", "completion", "request", "image",
                                                                 "input_cache_read", "input_cache_write"})
            for key in pr.data:
                if pr.get(key, float) < 0:
                    raise pr.error(key, "must not be negative")
        base = catalog.by_id.get(model_id)
        spec = model_from_dict(item, vendor_params=params, base=base)
        if base is not None and "upstream" not in item and vendor is not None and vendor.key == "openrouter":
            spec.upstream = model_id
        conn.models.append(spec)
    conn.discover = r.get("discover", bool, kind == "openai" and not conn.models and not (vendor and vendor.models)
                          and not (vendor and vendor.key == "openrouter"))
    return conn


_DEFAULT_PARAMS = {
    "openai": ["max_tokens", "temperature", "top_p", "stop", "frequency_penalty", "presence_penalty", "seed",
               "tools", "tool_choice", "response_format"],
    "anthropic": ["max_tokens", "temperature", "top_p", "top_k", "stop", "tools", "tool_choice", "reasoning"],
    "gemini": ["max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "tools", "tool_choice",
               "response_format", "reasoning"],
}


def _pick_vendor(catalog: Catalog, key: str | None, name: str, kind: str, base_url: str) -> Vendor | None:
    if key is not None:
        return catalog.vendors[key]
    by_url = catalog.vendor_for_url(base_url)
    if by_url is not None and by_url.type == kind:
        return by_url
    named = catalog.vendors.get(name)
    if named is not None and named.type == kind and kind != "openai":
        return named
    for vendor in catalog.vendors.values():
        if vendor.type == kind and kind != "openai":
            return vendor
    return None


def _config_from_environment(catalog: Catalog) -> Config:
    server = ServerConfig(
        master_key=os.environ.get("CROSSROADS_MASTER_KEY") or None,
        data_dir=os.environ.get("CROSSROADS_DATA_DIR") or "./data",
    )
    providers: list[ConnectionConfig] = []
    for vendor in catalog.vendors.values():
        value = next((os.environ[v] for v in vendor.env if os.environ.get(v)), None)
        if not value:
            continue
        base_url, api_key = vendor.base_url, value
        if vendor.env_is_base_url:
            base_url, api_key = value.rstrip("/"), None
            if not base_url.endswith("/v1"):
                base_url += "/v1"
        providers.append(ConnectionConfig(
            name=vendor.key, type=vendor.type, base_url=base_url, api_key=api_key, vendor=vendor,
            discover=vendor.type == "openai" and not vendor.models and vendor.key != "openrouter",
        ))
    return Config(source="environment", server=server, providers=providers, catalog=catalog)


def ensure_master_key(config: Config) -> tuple[str, bool]:
    """Return the master key and whether it was just generated.

    Without one in the config/environment, a key is generated once and kept in ``data_dir/master_key`` (mode 0600),
    so every worker process and every restart uses the same one.
    """
    if config.server.master_key:
        return config.server.master_key, False
    data_dir = Path(config.server.data_dir)
    key_file = data_dir / "master_key"
    if key_file.exists():
        key = key_file.read_text(encoding="utf-8").strip()
        if key:
            config.server.master_key = key
            return key, False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "sk-or-v1-" + secrets.token_hex(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.chmod(key_file, 0o600)
    config.server.master_key = key
    return key, True
