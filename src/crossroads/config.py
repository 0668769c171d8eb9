"""Configuration: a YAML file (``crossroads serve --config FILE``) or, without one, the environment.

The keys documented in the README are a user-facing contract. ``${VAR}`` (and ``${VAR:-default}``) is replaced from
the environment in every string of the file (a variable that is not set and has no default is an error; ``${VAR:-}``
allows an empty value). Problems raise `ConfigError`, whose message names the file, the key and the problem (never the
value of a secret: master key, API keys, header values), and which the CLI prints without a traceback.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from crossroads.catalog import Catalog, ModelSpec, Vendor, load_catalog, model_from_dict
from crossroads.providers.base import ProviderSpec, upstream_model_problem
from crossroads.providers.registry import SPECS

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
class MetricsConfig:
    """GET /metrics (Prometheus text). Who may read it: with `token`, a client sending it as a bearer token; with
    `metrics_port`, anyone reaching that port, which is bound to 127.0.0.1 only (and /metrics leaves the main port);
    with neither, clients connecting from a loopback address."""

    enabled: bool = True
    token: str | None = None
    metrics_port: int | None = None


@dataclass(slots=True)
class OAuthConfig:
    # Callback URLs the PKCE flow may redirect to besides https ones and http to localhost: origins such as
    # "http://intranet-app:3000" (scheme, host and port must match exactly).
    allowed_callbacks: list[str] = field(default_factory=list)


@dataclass(slots=True)
class OidcConfig:
    # Dashboard single sign-on with one OpenID Connect provider (authorization code flow with PKCE). The provider
    # must allow the redirect URI <dashboard origin>/signin/sso/callback.
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: list[str] = field(default_factory=lambda: ["openid", "email", "profile"])


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    master_key: str | None = None
    data_dir: str = "./data"
    max_body_bytes: int = 32 * 1024 * 1024
    keepalive_interval: float = 3.0  # seconds between ": PROCESSING" comments while a stream waits on its upstream
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish after SIGTERM
    # Slow clients (slowloris) get 408 and are disconnected: seconds to send a request's whole head, and seconds
    # a body may pause between two of its parts (it must also average api/app.BODY_MIN_RATE after that long).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    discovery_timeout: float = 3.0  # seconds a connection's GET /models may take at start-up
    database_url: str | None = None  # SQLAlchemy-style URL; None = SQLite file in data_dir
    media: MediaConfig = field(default_factory=MediaConfig)
    oauth: OAuthConfig = field(default_factory=OAuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    oidc: OidcConfig | None = None


@dataclass(slots=True)
class ConnectionConfig:
    name: str
    type: str
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    # Seconds to open the TCP (and TLS) connection: a black-holed upstream fails fast instead of holding the request
    # for the whole `timeout`.
    connect_timeout: float = 10.0
    # Bytes the gateway accepts in one upstream answer (a whole body; a stream's total): a runaway or broken
    # upstream cannot fill the gateway's memory or stream without end.
    max_response_bytes: int = 64 * 1024 * 1024
    models: list[ModelSpec] = field(default_factory=list)
    vendor: Vendor | None = None  # catalog vendor whose models and parameter rules apply
    discover: bool = False  # ask the upstream's GET /models at start-up
    data_collection: str = "allow"  # "deny": the operator vouches the upstream neither stores nor trains on prompts
    # The upstream also serves OpenAI's Responses API (POST /responses): Responses requests then pass through.
    # Default: true for OpenAI itself, false for other OpenAI-compatible servers.
    responses_api: bool = False
    rpm: int | None = None  # capacity: requests per minute this connection may take (None = unlimited)
    tpm: int | None = None  # capacity: tokens per minute
    workspace: str | None = None  # the name of the workspace that owns it (only its keys see it); None: everyone's
    # The keys only its provider type takes (ProviderSpec.connection_fields: a region, an API version...).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AccountingConfig:
    durability: str = "batched"  # batched: records written off the request path; strict: durable before responding
    flush_interval: float = 1.0  # seconds between batched writes of generation records
    max_pending: int = 100_000  # records held in memory; beyond, the oldest go to the spool (data_dir/spool)
    budget: float | None = None  # USD the whole account may spend: GET /api/v1/credits' total_credits
    # With the credit ledger in Redis (CROSSROADS_REDIS_URL): how long a reservation outlives a process that stopped
    # renewing it (SIGKILL, host loss), and how often Redis' figures are reconciled with the generation records.
    reservation_lease: float = 30.0
    reconcile_interval: float = 60.0


@dataclass(slots=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures that open a connection's circuit breaker
    cooldown: float = 30.0  # seconds an open breaker waits before letting a trial request through
    probe_timeout: float = 600.0  # seconds an unanswered probe keeps the next one from going (a hung probe)


def _default_priority_shares() -> dict[str, float]:
    return {"high": 1.0, "normal": 0.9, "low": 0.7}


@dataclass(slots=True)
class RoutingConfig:
    retries: int = 2  # retries on the same connection after a failed attempt, before the next candidate
    max_retry_wait: float = 5.0  # an upstream's Retry-After longer than this moves on to the next candidate instead
    # While the rate-limit store (Redis) is unreachable: refuse requests that have rpm/tpm limits with 503 (false),
    # or serve them uncounted (true). Credit limits always fail closed.
    rate_limits_fail_open: bool = False
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    # Share of a capacity limit (rpm/tpm) each request priority may use: low-priority traffic stops first.
    priority_shares: dict[str, float] = field(default_factory=_default_priority_shares)


CONDITION_OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists")


@dataclass(slots=True)
class ValueTest:
    """One comparison of a routing condition: `op` is one of CONDITION_OPERATORS."""

    op: str
    operand: Any


@dataclass(slots=True)
class ConditionCheck:
    """What a condition looks at: prompt_tokens | key (the API key's name) | metadata.<field> | header.<name>."""

    subject: str
    field: str | None  # the metadata field or the lower-case header name; None for prompt_tokens and key
    tests: list[ValueTest]


@dataclass(slots=True)
class RouteConditionConfig:
    checks: list[ConditionCheck]  # all must hold (an empty list always matches)
    target: str | None = None  # the target it picks (None when it blocks)
    block: bool = False
    message: str | None = None  # what a blocked client is told


@dataclass(slots=True)
class RouteTargetConfig:
    connection: str
    model: str  # the upstream model id (or an id that connection lists)
    name: str  # how conditions refer to it; defaults to "<connection>/<model>"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)  # merged over the request body for this target


@dataclass(slots=True)
class RouteConfig:
    """A model name of the operator's own (VM-X's "AI resource"): targets, a fallback chain and conditions."""

    name: str
    targets: list[RouteTargetConfig]
    strategy: str = "ordered"  # ordered | weighted
    display_name: str = ""
    description: str = ""
    context_length: int | None = None
    fallback: list[str | RouteTargetConfig] = field(default_factory=list)  # model ids or targets, tried in order
    conditions: list[RouteConditionConfig] = field(default_factory=list)
    rpm: int | None = None
    tpm: int | None = None
    workspace: str | None = None  # the name of the workspace that owns it; None: everyone's


@dataclass(slots=True)
class Config:
    source: str
    server: ServerConfig
    providers: list[ConnectionConfig]
    catalog: Catalog
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    routes: list[RouteConfig] = field(default_factory=list)


class _EnvStr(str):
    """A string produced by ``${VAR}`` substitution: where the key wants a number or a boolean, it is parsed as one
    (``port: ${PORT:-8080}``), since the environment only holds strings."""


def _expand_env(value: Any, source: str, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string. A variable that is not set and has no default is an
    error naming the key (it would otherwise silently become, say, "no API key"); ``${VAR:-}`` allows it to be empty.
    A set but empty variable counts as empty (and takes the default, as in the shell)."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found:
                return found
            if default is not None:
                return default
            if found is None:
                raise ConfigError(source, path or "(top level)",
                                  f"${{{name}}} is not set (write ${{{name}:-}} to allow it to be empty)")
            return ""

        whole = _ENV_PATTERN.fullmatch(value)
        if whole is not None:
            result = replace(whole)
            return _EnvStr(result) if result else None
        if _ENV_PATTERN.search(value) is None:
            return value
        return _EnvStr(_ENV_PATTERN.sub(replace, value))
    if isinstance(value, dict):
        return {k: _expand_env(v, source, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, source, f"{path}[{i}]") for i, v in enumerate(value)]
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

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False,
            secret: bool = False) -> Any:
        """The value of `name`, of type `kind`. A `secret` value is never repeated in an error."""
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
            shown = "" if secret else f" {value!r}"
            raise self.error(name, f"must be {_kind_name(kinds)}, got {type(value).__name__}{shown}")
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
    raw = _expand_env(raw, source)
    top = _Reader(source, "", raw, {"server", "providers", "accounting", "routing", "routes"})
    server = _read_server(_Reader(source, "server", top.data.get("server"), _SERVER_KEYS))
    accounting = _read_accounting(_Reader(source, "accounting", top.data.get("accounting"),
                                          {"durability", "flush_interval", "max_pending", "budget",
                                           "reservation_lease", "reconcile_interval"}))
    providers = _read_named(source, "providers", "connection", top.get("providers", list, []), _connection_keys(),
                            lambda r: _read_connection(r, catalog))
    seen = {conn.name for conn in providers}
    routing = _read_routing(_Reader(source, "routing", top.data.get("routing"),
                                    {"retries", "max_retry_wait", "breaker", "priority_shares",
                                     "rate_limits_fail_open"}))
    routes = _read_routes(source, top.get("routes", list, []), seen)
    return Config(source=source, server=server, providers=providers, catalog=catalog, accounting=accounting,
                  routing=routing, routes=routes)


def _read_accounting(r: _Reader) -> AccountingConfig:
    accounting = AccountingConfig()
    accounting.durability = r.get("durability", str, accounting.durability)
    if accounting.durability not in ("batched", "strict"):
        raise r.error("durability", f"must be batched or strict, got {accounting.durability!r}")
    accounting.flush_interval = r.positive("flush_interval", float, accounting.flush_interval)
    accounting.max_pending = r.positive("max_pending", int, accounting.max_pending)
    accounting.reservation_lease = r.positive("reservation_lease", float, accounting.reservation_lease)
    accounting.reconcile_interval = r.positive("reconcile_interval", float, accounting.reconcile_interval)
    budget = r.get("budget", float, None)
    if budget is not None and budget < 0:
        raise r.error("budget", "must not be negative")
    accounting.budget = budget
    return accounting


_SERVER_KEYS = {
    "host", "port", "master_key", "data_dir", "max_body_bytes", "keepalive_interval", "shutdown_grace",
    "header_timeout", "body_timeout", "discovery_timeout", "media", "database_url", "oauth", "metrics", "oidc",
}
_COMMON_CONNECTION_KEYS = {"name", "type", "base_url", "api_key", "headers", "timeout", "connect_timeout",
                           "max_response_bytes", "models", "catalog", "discover", "data_collection", "rpm", "tpm",
                           "responses_api", "workspace"}


def _connection_keys() -> set[str]:
    """Every key a connection may have: the common ones and those some provider type takes (checked against the
    connection's own type in _read_connection)."""
    return _COMMON_CONNECTION_KEYS | {key for spec in SPECS.values() for key in spec.connection_fields}
_MODEL_KEYS = {
    "id", "upstream", "name", "created", "description", "context_length", "max_completion_tokens", "dimensions",
    "pricing", "input_modalities", "output_modalities", "tokenizer", "reasoning", "supported_parameters",
}


def _seconds(r: _Reader, name: str, default: float) -> float:
    """A positive, finite number of seconds (NaN and infinity pass `positive` but would break aiohttp's timers)."""
    value = r.positive(name, float, default)
    if not math.isfinite(value):
        raise r.error(name, f"must be a finite number of seconds, got {value!r}")
    return value


def _read_server(r: _Reader) -> ServerConfig:
    server = ServerConfig()
    server.host = r.get("host", str, server.host)
    server.port = r.get("port", int, server.port)
    if not 0 <= server.port <= 65535:
        raise r.error("port", f"must be between 0 and 65535, got {server.port}")
    server.master_key = r.get("master_key", str, None, secret=True)
    problem = master_key_problem(server.master_key)
    if problem is not None:
        raise r.error("master_key", problem)
    server.data_dir = r.get("data_dir", str, server.data_dir)
    server.max_body_bytes = r.positive("max_body_bytes", int, server.max_body_bytes)
    server.keepalive_interval = r.positive("keepalive_interval", float, server.keepalive_interval)
    server.shutdown_grace = r.positive("shutdown_grace", float, server.shutdown_grace)
    server.header_timeout = _seconds(r, "header_timeout", server.header_timeout)
    server.body_timeout = _seconds(r, "body_timeout", server.body_timeout)
    server.discovery_timeout = r.positive("discovery_timeout", float, server.discovery_timeout)
    server.database_url = r.get("database_url", str, None)
    media = _Reader(r.source, r.key("media"), r.data.get("media"), {"allow", "max_bytes", "timeout"})
    defaults = MediaConfig()
    server.media = MediaConfig(
        allow=[str(x) for x in media.get("allow", list, [])],
        max_bytes=media.positive("max_bytes", int, defaults.max_bytes),
        timeout=media.positive("timeout", float, defaults.timeout),
    )
    oauth = _Reader(r.source, r.key("oauth"), r.data.get("oauth"), {"allowed_callbacks"})
    callbacks = oauth.get("allowed_callbacks", list, [])
    for index, origin in enumerate(callbacks):
        parts = urlsplit(origin) if isinstance(origin, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise oauth.error("allowed_callbacks", f"entry {index} must be an origin such as "
                                                   f"'http://intranet-app:3000' (scheme://host[:port])")
    server.oauth = OAuthConfig(allowed_callbacks=[c.rstrip("/").lower() for c in callbacks])
    metrics = _Reader(r.source, r.key("metrics"), r.data.get("metrics"), {"enabled", "token", "metrics_port"})
    server.metrics = MetricsConfig(enabled=metrics.get("enabled", bool, True),
                                   token=metrics.get("token", str, None, secret=True),
                                   metrics_port=metrics.get("metrics_port", int, None))
    if server.metrics.token is not None and len(server.metrics.token) < 16:
        raise metrics.error("token", "must be at least 16 characters (it guards the metrics)")
    port = server.metrics.metrics_port
    if port is not None and not 1 <= port <= 65535:
        raise metrics.error("metrics_port", f"must be between 1 and 65535, got {port}")
    if r.data.get("oidc") is not None:
        oidc = _Reader(r.source, r.key("oidc"), r.data.get("oidc"), {"issuer", "client_id", "client_secret", "scopes"})
        issuer = oidc.get("issuer", str, required=True)
        if urlsplit(issuer).scheme not in ("http", "https") or not urlsplit(issuer).hostname:
            raise oidc.error("issuer", "must be the provider's issuer URL, such as 'https://accounts.example.com'")
        scopes = [str(scope) for scope in oidc.get("scopes", list, ["openid", "email", "profile"])]
        if "openid" not in scopes:
            raise oidc.error("scopes", "must include 'openid'")
        server.oidc = OidcConfig(issuer=issuer, client_id=oidc.get("client_id", str, required=True),
                                 client_secret=oidc.get("client_secret", str, required=True, secret=True),
                                 scopes=scopes)
    return server


def versioned_base_url(kind: str, base_url: str) -> str:
    """`base_url` with the API version path its SDKs add themselves (ProviderSpec.api_version):
    `https://api.anthropic.com` (the Anthropic SDK's base URL) means `https://api.anthropic.com/v1`,
    `https://generativelanguage.googleapis.com` means `.../v1beta`; a base URL that already ends with a version path
    is kept. A type without a version path (OpenAI-compatible servers vary: `/v1`, `/openai/v1`, `/api/v1`...) has
    its base URL taken as written."""
    spec = SPECS[kind]
    if spec.api_version is None:
        return base_url
    path = base_url.split("://", 1)[-1].partition("/")[2]
    path = "/" + path.split("?", 1)[0] if path else ""
    return base_url if path.endswith(spec.accepted_versions) else base_url + spec.api_version


def _read_connection(r: _Reader, catalog: Catalog) -> ConnectionConfig:
    name = r.get("name", str, required=True)
    if not _NAME_PATTERN.match(name):
        raise r.error("name", f"{name!r} may hold only letters, digits, '.', '_' and '-' (no '/')")
    kind = r.get("type", str, required=True)
    if kind not in SPECS:
        raise r.error("type", f"{kind!r} is not one of {', '.join(SPECS)}")
    provider = SPECS[kind]
    for key in r.data:
        if key not in _COMMON_CONNECTION_KEYS and key not in provider.connection_fields:
            takers = ", ".join(s.type for s in SPECS.values() if key in s.connection_fields)
            raise r.error(key, f"is a key of {takers} connections only, not of {kind} ones")
    vendor_key = r.get("catalog", str, None)
    if vendor_key is not None and vendor_key not in catalog.vendors:
        raise r.error("catalog", f"unknown catalog vendor {vendor_key!r} (known: {', '.join(catalog.vendors)})")
    base_url = r.get("base_url", str, None)
    if base_url is None:
        vendor_guess = catalog.vendors.get(vendor_key or name)
        base_url = provider.default_base_url or (vendor_guess.base_url if vendor_guess else None)
        if base_url is None:
            raise r.error("base_url", f"is required for a {kind}-type connection that is not a known vendor")
    if not base_url.startswith(("http://", "https://")):
        raise r.error("base_url", f"must be an http(s) URL, got {_without_password(base_url)!r}")
    base_url = versioned_base_url(kind, base_url.rstrip("/"))
    vendor = _pick_vendor(catalog, vendor_key, name, provider, base_url)
    headers = r.get("headers", dict, {}, secret=True)
    for key, value in headers.items():
        if not isinstance(value, str):
            raise r.error(f"headers.{key}", f"must be a string, got {type(value).__name__}")
    conn = ConnectionConfig(
        name=name,
        type=kind,
        base_url=base_url,
        api_key=r.get("api_key", str, None, secret=True),
        headers={str(k): str(v) for k, v in headers.items()},
        timeout=r.positive("timeout", float, 600.0),
        connect_timeout=_seconds(r, "connect_timeout", 10.0),
        max_response_bytes=r.positive("max_response_bytes", int, 64 * 1024 * 1024),
        vendor=vendor,
    )
    models_raw = r.get("models", list, [])
    params = vendor.supported_parameters if vendor else list(provider.default_parameters)
    for index, item in enumerate(models_raw):
        mr = _Reader(r.source, r.key(f"models[{index}]"), item, _MODEL_KEYS)
        model_id = mr.get("id", str, required=True)
        for key in ("context_length", "max_completion_tokens", "created"):
            mr.get(key, int)
        _optional_positive(mr, "dimensions")  # an embedding model's default vector size
        for key in ("input_modalities", "output_modalities", "supported_parameters"):
            mr.get(key, list)
        pricing = item.get("pricing")
        if pricing == "free":
            pricing = None  # declared free on purpose
        elif pricing is not None and not isinstance(pricing, dict):
            raise mr.error("pricing", "must be a mapping of USD per 1M tokens (prompt, completion, ...) or 'free', "
                                      f"got {type(pricing).__name__}")
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
        problem = upstream_model_problem(spec.upstream)
        if problem is not None:
            raise mr.error("upstream" if "upstream" in item else "id",
                           f"{spec.upstream!r} cannot be sent upstream as a model id: {problem}")
        conn.models.append(spec)
    conn.discover = r.get("discover", bool, provider.discover_models and not conn.models
                          and not (vendor and vendor.models) and not (vendor and vendor.key == "openrouter"))
    conn.data_collection = r.get("data_collection", str, "allow")
    conn.responses_api = r.get("responses_api", bool, vendor is not None and vendor.responses_api)
    for key, option in provider.connection_fields.items():
        value = r.get(key, option.kind, option.default, required=option.required, secret=option.secret)
        if value is not None:
            conn.options[key] = value
    if conn.data_collection not in ("allow", "deny"):
        raise r.error("data_collection", f"must be allow or deny, got {conn.data_collection!r}")
    conn.rpm = _optional_positive(r, "rpm")
    conn.tpm = _optional_positive(r, "tpm")
    conn.workspace = _optional_name(r, "workspace")
    return conn


def _optional_name(r: _Reader, key: str) -> str | None:
    value = r.get(key, str, None)
    if value is not None and not value.strip():
        raise r.error(key, "must be a workspace's name")
    return value.strip() if value is not None else None


def _without_password(url: str) -> str:
    """`url` with the password of its user-info (``scheme://user:password@host``) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}{slash}{tail}"


def _optional_positive(r: _Reader, name: str) -> int | None:
    value = r.get(name, int, None)
    if value is not None and value <= 0:
        raise r.error(name, f"must be a positive integer, got {value!r}")
    return value


def _read_routing(r: _Reader) -> RoutingConfig:
    routing = RoutingConfig()
    routing.retries = r.get("retries", int, routing.retries)
    if isinstance(routing.retries, bool) or routing.retries < 0:
        raise r.error("retries", f"must be a non-negative integer, got {routing.retries!r}")
    routing.max_retry_wait = r.positive("max_retry_wait", float, routing.max_retry_wait)
    routing.rate_limits_fail_open = r.get("rate_limits_fail_open", bool, routing.rate_limits_fail_open)
    breaker = _Reader(r.source, r.key("breaker"), r.data.get("breaker"),
                      {"failure_threshold", "cooldown", "probe_timeout"})
    defaults = BreakerConfig()
    routing.breaker = BreakerConfig(
        failure_threshold=breaker.positive("failure_threshold", int, defaults.failure_threshold),
        cooldown=breaker.positive("cooldown", float, defaults.cooldown),
        probe_timeout=breaker.positive("probe_timeout", float, defaults.probe_timeout),
    )
    shares_raw = r.get("priority_shares", dict, None)
    if shares_raw is not None:
        shares = _Reader(r.source, r.key("priority_shares"), shares_raw, set(map(str, shares_raw)))
        routing.priority_shares = {}
        for name in shares_raw:
            value = shares.get(str(name), float, required=True)
            if not 0 < value <= 1:
                raise shares.error(str(name), f"must be a share between 0 (exclusive) and 1, got {value!r}")
            routing.priority_shares[str(name)] = value
    return routing


_ROUTE_KEYS = {"name", "display_name", "description", "context_length", "strategy", "targets", "fallback",
               "conditions", "rpm", "tpm", "workspace"}
_TARGET_KEYS = {"connection", "model", "name", "weight", "params"}
_CONDITION_KEYS = {"when", "target", "action", "message"}
_CONDITION_SUBJECTS = {"prompt_tokens", "key", "metadata", "header"}
_NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")


def _read_named(source: str, section: str, what: str, items: list[Any], keys: set[str],
                read: Callable[[_Reader], Any]) -> list[Any]:
    """A list of config entries with unique `name`s, each read by `read`."""
    entries: list[Any] = []
    names: set[str] = set()
    for index, item in enumerate(items):
        entry = read(_Reader(source, f"{section}[{index}]", item, keys))
        if entry.name in names:
            raise ConfigError(source, f"{section}[{index}].name", f"duplicate {what} name {entry.name!r}")
        names.add(entry.name)
        entries.append(entry)
    return entries


def _read_routes(source: str, items: list[Any], connections: set[str]) -> list[RouteConfig]:
    routes: list[RouteConfig] = _read_named(source, "routes", "route", items, _ROUTE_KEYS,
                                            lambda r: _read_route(r, connections))
    names = {route.name for route in routes}
    # A fallback naming another route could loop; routes fall back to models and targets only.
    for index, route in enumerate(routes):
        for position, entry in enumerate(route.fallback):
            if isinstance(entry, str) and entry in names:
                raise ConfigError(source, f"routes[{index}].fallback[{position}]",
                                  f"{entry!r} is a route; a fallback must be a model id or a target")
    return routes


def _read_route(r: _Reader, connections: set[str]) -> RouteConfig:
    name = r.get("name", str, required=True)
    if not _NAME_PATTERN.match(name):
        raise r.error("name", f"{name!r} may hold only letters, digits, '.', '_' and '-' (no '/')")
    strategy = r.get("strategy", str, "ordered")
    if strategy not in ("ordered", "weighted"):
        raise r.error("strategy", f"must be ordered or weighted, got {strategy!r}")
    targets_raw = r.get("targets", list, required=True)
    if not targets_raw:
        raise r.error("targets", "must list at least one target")
    targets = [_read_target(_Reader(r.source, r.key(f"targets[{i}]"), item, _TARGET_KEYS), connections,
                            weighted=strategy == "weighted") for i, item in enumerate(targets_raw)]
    seen: set[str] = set()
    for i, target in enumerate(targets):
        if target.name in seen:
            raise r.error(f"targets[{i}].name", f"duplicate target name {target.name!r}")
        seen.add(target.name)
    fallback: list[str | RouteTargetConfig] = []
    for i, item in enumerate(r.get("fallback", list, [])):
        key = r.key(f"fallback[{i}]")
        if isinstance(item, str) and item:
            fallback.append(item)
        elif isinstance(item, dict):
            fallback.append(_read_target(_Reader(r.source, key, item, _TARGET_KEYS), connections, weighted=False))
        else:
            raise ConfigError(r.source, key, "must be a model id or a mapping with connection and model")
    conditions = [_read_condition(_Reader(r.source, r.key(f"conditions[{i}]"), item, _CONDITION_KEYS), seen)
                  for i, item in enumerate(r.get("conditions", list, []))]
    return RouteConfig(
        name=name,
        targets=targets,
        strategy=strategy,
        display_name=r.get("display_name", str, ""),
        description=r.get("description", str, ""),
        context_length=_optional_positive(r, "context_length"),
        fallback=fallback,
        conditions=conditions,
        rpm=_optional_positive(r, "rpm"),
        tpm=_optional_positive(r, "tpm"),
        workspace=_optional_name(r, "workspace"),
    )


def _read_target(r: _Reader, connections: set[str], *, weighted: bool) -> RouteTargetConfig:
    connection = r.get("connection", str, required=True)
    if connection not in connections:
        known = ", ".join(sorted(connections)) or "none"
        raise r.error("connection", f"no connection is named {connection!r} (configured: {known})")
    model = r.get("model", str, required=True)
    problem = upstream_model_problem(model)
    if problem is not None:
        raise r.error("model", f"{model!r} cannot be sent upstream as a model id: {problem}")
    if not weighted and "weight" in r.data:
        raise r.error("weight", "only applies to a route with strategy: weighted")
    params = r.get("params", dict, {})
    return RouteTargetConfig(
        connection=connection,
        model=model,
        name=r.get("name", str, f"{connection}/{model}"),
        weight=r.positive("weight", float, 1.0),
        params={str(k): v for k, v in params.items()},
    )


def _read_condition(r: _Reader, target_names: set[str]) -> RouteConditionConfig:
    when = _Reader(r.source, r.key("when"), r.data.get("when"), _CONDITION_SUBJECTS)
    checks: list[ConditionCheck] = []
    if "prompt_tokens" in when.data:
        checks.append(ConditionCheck("prompt_tokens", None,
                                     _read_tests(when, "prompt_tokens", when.data["prompt_tokens"], numeric=True)))
    if "key" in when.data:
        checks.append(ConditionCheck("key", None, _read_tests(when, "key", when.data["key"], numeric=False)))
    for subject in ("metadata", "header"):
        fields = when.get(subject, dict, {})
        for field_name, spec in fields.items():
            name = str(field_name).lower() if subject == "header" else str(field_name)
            tests = _read_tests(when, f"{subject}.{field_name}", spec, numeric=False)
            if subject == "header":
                # Header values are strings on the wire; compare them as strings.
                tests = [ValueTest(t.op, _stringify(t.operand)) if t.op not in _NUMERIC_OPERATORS + ("exists",)
                         else t for t in tests]
            checks.append(ConditionCheck(subject, name, tests))
    action = r.get("action", str, None)
    action = action.lower() if action is not None else ("route" if "target" in r.data else None)
    if action not in ("route", "block"):
        raise r.error("action", "must be route (with a target) or block"
                      if action is not None else "a condition needs a target or action: block")
    target = r.get("target", str, None)
    message = r.get("message", str, None)
    if action == "block":
        if target is not None:
            raise r.error("target", "a blocking condition picks no target")
        return RouteConditionConfig(checks=checks, block=True, message=message)
    if target is None:
        raise r.error("target", "is required for action: route")
    if target not in target_names:
        raise r.error("target", f"{target!r} is not one of this route's targets ({', '.join(sorted(target_names))})")
    if message is not None:
        raise r.error("message", "only applies to action: block")
    return RouteConditionConfig(checks=checks, target=target)


def _stringify(operand: Any) -> Any:
    if isinstance(operand, tuple):
        return tuple(str(x) for x in operand)
    return str(operand) if not isinstance(operand, bool) else str(operand).lower()


def _read_tests(r: _Reader, name: str, spec: Any, *, numeric: bool) -> list[ValueTest]:
    """A scalar means equality, a list means membership, a mapping holds operators (eq, in, gt, exists, ...)."""
    if isinstance(spec, list):
        spec = {"in": spec}
    elif not isinstance(spec, dict):
        spec = {"eq": spec}
    if not spec:
        raise r.error(name, "must hold at least one test")
    tests: list[ValueTest] = []
    for op, operand in spec.items():
        if op not in CONDITION_OPERATORS:
            raise r.error(f"{name}.{op}", f"unknown operator (allowed: {', '.join(CONDITION_OPERATORS)})")
        key = f"{name}.{op}"
        if op == "exists":
            if not isinstance(operand, bool):
                raise r.error(key, "must be true or false")
        elif op in ("in", "not_in"):
            if not isinstance(operand, list) or not all(_is_scalar(x) for x in operand):
                raise r.error(key, "must be a list of plain values")
            operand = tuple(operand)
        elif op in _NUMERIC_OPERATORS or numeric:
            if not isinstance(operand, (int, float)) or isinstance(operand, bool):
                raise r.error(key, f"must be a number, got {type(operand).__name__} {operand!r}")
        elif not _is_scalar(operand):
            raise r.error(key, "must be a plain value (string, number or boolean)")
        tests.append(ValueTest(op, operand))
    return tests


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _pick_vendor(catalog: Catalog, key: str | None, name: str, spec: ProviderSpec, base_url: str) -> Vendor | None:
    """The catalog vendor whose models and parameter rules a connection gets: the one its `catalog:` key names, else
    the one its base URL belongs to, else (for an API only one vendor speaks) that vendor."""
    if key is not None:
        return catalog.vendors[key]
    by_url = catalog.vendor_for_url(base_url)
    if by_url is not None and by_url.type == spec.type:
        return by_url
    if not spec.single_vendor:
        return None
    named = catalog.vendors.get(name)
    if named is not None and named.type == spec.type:
        return named
    return next((vendor for vendor in catalog.vendors.values() if vendor.type == spec.type), None)


def _config_from_environment(catalog: Catalog) -> Config:
    server = ServerConfig(
        master_key=os.environ.get("CROSSROADS_MASTER_KEY") or None,
        data_dir=os.environ.get("CROSSROADS_DATA_DIR") or "./data",
    )
    problem = master_key_problem(server.master_key)
    if problem is not None:
        raise ConfigError("environment", "CROSSROADS_MASTER_KEY", problem)
    providers: list[ConnectionConfig] = []
    for vendor in catalog.vendors.values():
        value = next((os.environ[v] for v in vendor.env if os.environ.get(v)), None)
        if not value:
            continue
        base_url: str = vendor.base_url
        api_key: str | None = value
        if vendor.env_is_base_url:  # the variable holds the server's URL, and the server takes no key
            base_url, api_key = value.rstrip("/"), None
            if not base_url.endswith("/v1"):
                base_url += "/v1"
        providers.append(ConnectionConfig(
            name=vendor.key, type=vendor.type, base_url=base_url, api_key=api_key, vendor=vendor,
            discover=SPECS[vendor.type].discover_models and not vendor.models and vendor.key != "openrouter",
            responses_api=vendor.responses_api,
        ))
    return Config(source="environment", server=server, providers=providers, catalog=catalog)


MIN_MASTER_KEY_LENGTH = 32


def master_key_problem(key: str | None) -> str | None:
    """Why `key` cannot be the master key (too short to resist guessing), or None. Never repeats the key."""
    if key is not None and len(key) < MIN_MASTER_KEY_LENGTH:
        return (f"the master key must be at least {MIN_MASTER_KEY_LENGTH} characters long (this one has {len(key)}); "
                "leave it unset to have one generated")
    return None


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
            problem = master_key_problem(key)
            if problem is not None:
                raise ConfigError(str(key_file), "master key", problem)
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
