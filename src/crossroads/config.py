"""Configuration: a YAML file (``crossroads serve --config FILE``) or, without one, the environment.

The keys documented in the README are a user-facing contract, declared here as a pydantic schema that mirrors the file
(`_File` and its sections); what it accepts is built into the dataclasses the gateway reads (`Config` and those it
holds), which keep the defaults. ``${VAR}`` (and ``${VAR:-default}``) is replaced from the environment in every string
of the file before validation (a variable that is not set and has no default is an error; ``${VAR:-}`` allows an empty
value). Problems raise `ConfigError`, whose message names the file, the key and the problem (never the value of a
secret: master key, API keys, header values), and which the CLI prints without a traceback.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

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
    try:
        file = _File.model_validate(_expand_env(raw, source), context={"catalog": catalog})
    except ValidationError as exc:
        raise _config_error(source, exc) from None  # not chained: pydantic's error holds the values, secrets too
    return file.build(source, catalog)


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


# -- the schema ------------------------------------------------------------------------------------------------------
# Pydantic models that mirror the file. Strict: a YAML string is no number (but a ${VAR} value is read as one where one
# is wanted: `_from_env`). A key set to null counts as absent, and an absent key stays unset: the dataclasses above,
# built from the keys the file sets (`_Section.given`), keep every default. Where users see a rule's wording, the rule
# declares it (`_must`); `_config_error` words pydantic's own errors alike, never showing a value that may be secret.


def _fail(problem: str, *at: str | int) -> PydanticCustomError:
    """An error in the file's own words; `at` continues the key's path below the value being validated."""
    return PydanticCustomError("config", "{problem}", {"problem": problem, "at": at})


def _must(test: Callable[[Any], object], problem: str | Callable[[Any], object]) -> AfterValidator:
    """A rule and its wording: unless `test(value)`, fail with `problem` (``{value}`` shows the value) or
    `problem(value)`."""

    def check(value: Any) -> Any:
        if not test(value):
            raise _fail(problem.format(value=value) if isinstance(problem, str) else str(problem(value)))
        return value

    return AfterValidator(check)


def _from_env(value: Any) -> Any:
    """A ``${VAR}`` value where a number or a boolean is wanted (``port: ${PORT:-8080}``) is read as YAML reads one,
    since the environment only holds strings; one that is no number or boolean stays a string, refused as one."""
    if not isinstance(value, _EnvStr):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    return parsed if parsed is not None and not isinstance(parsed, str) else str(value)


def _secret(value: Any) -> str:
    """A credential is a string, and its errors never show it."""
    if not isinstance(value, str):
        raise _fail(f"must be a string, got {_got(value, shown=False)}")
    return str(value)


def _keys_as_str(value: Any) -> Any:
    """A mapping's keys are names, even those YAML reads as numbers or booleans (``1: x``)."""
    return {str(key): item for key, item in value.items()} if isinstance(value, dict) else value


def _unsendable(model: str) -> str:
    return f"{model!r} cannot be sent upstream as a model id: {upstream_model_problem(model)}"


def _is_http_url(value: Any, *, origin: bool = False) -> bool:
    """An http(s) URL with a host; an `origin` has nothing after the host and port but "/"."""
    parts = urlsplit(value) if isinstance(value, str) else None
    return bool(parts and parts.scheme in ("http", "https") and parts.hostname
                and not (origin and parts.path not in ("", "/")))


_V = TypeVar("_V")
Int = Annotated[int, BeforeValidator(_from_env)]
Float = Annotated[float, BeforeValidator(_from_env)]
Bool = Annotated[bool, BeforeValidator(_from_env)]
Secret = Annotated[str, PlainValidator(_secret)]
StrDict = Annotated[dict[str, _V], BeforeValidator(_keys_as_str)]
PositiveInt = Annotated[Int, Field(gt=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
Seconds = Annotated[Float, Field(allow_inf_nan=False), Field(gt=0)]  # NaN and infinity would break aiohttp's timers
NonNegative = Annotated[Float, Field(ge=0)]
Count = Annotated[Int, _must(lambda v: v > 0, "must be a positive integer, got {value!r}")]  # rpm, tpm, sizes
Share = Annotated[Float, _must(lambda v: 0 < v <= 1, "must be a share between 0 (exclusive) and 1, got {value!r}")]
Name = Annotated[str, _must(_NAME_PATTERN.match, "{value!r} may hold only letters, digits, '.', '_' and '-' (no '/')")]
Workspace = Annotated[str, AfterValidator(str.strip), _must(bool, "must be a workspace's name")]
UpstreamModel = Annotated[str, _must(lambda m: upstream_model_problem(m) is None, _unsendable)]


class _Section(BaseModel):
    """One mapping of the file."""

    # (hide_input_in_errors: should pydantic's own error ever be printed, it shows no value, which may be a secret.)
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:  # an empty file
            return {}
        if not isinstance(data, dict):
            return data  # which pydantic refuses: "must be a mapping"
        unknown = sorted(set(map(str, data)) - cls._keys())
        if unknown:
            raise _fail(f"unknown key (allowed: {', '.join(sorted(cls._keys()))})", unknown[0])
        return {str(key): value for key, value in data.items() if value is not None}

    @classmethod
    def _keys(cls) -> set[str]:
        return set(cls.model_fields)

    def given(self, *skip: str) -> dict[str, Any]:
        """The keys the file sets (but `skip`), for a dataclass whose defaults fill in the rest."""
        return {key: getattr(self, key) for key in self.model_fields_set & type(self).model_fields.keys()
                if key not in skip}


class _Media(_Section):
    allow: list[str] | None = None
    max_bytes: PositiveInt | None = None
    timeout: PositiveFloat | None = None


class _OAuth(_Section):
    allowed_callbacks: list[Any] | None = None

    @field_validator("allowed_callbacks")
    @classmethod
    def _origins(cls, callbacks: list[Any]) -> list[str]:
        for index, origin in enumerate(callbacks):
            if not _is_http_url(origin, origin=True):
                raise _fail(f"entry {index} must be an origin such as 'http://intranet-app:3000' "
                            "(scheme://host[:port])")
        return [origin.rstrip("/").lower() for origin in callbacks]


class _Metrics(_Section):
    enabled: Bool | None = None
    token: Annotated[Secret, _must(lambda v: len(v) >= 16,
                                   "must be at least 16 characters (it guards the metrics)")] | None = None
    metrics_port: Annotated[Int, _must(lambda v: 1 <= v <= 65535,
                                       "must be between 1 and 65535, got {value}")] | None = None


class _Oidc(_Section):
    issuer: Annotated[str, _must(_is_http_url,
                                 "must be the provider's issuer URL, such as 'https://accounts.example.com'")]
    client_id: str
    client_secret: Secret
    scopes: Annotated[list[str], _must(lambda v: "openid" in v, "must include 'openid'")] | None = None


class _Server(_Section):
    host: str | None = None
    port: Annotated[Int, _must(lambda v: 0 <= v <= 65535, "must be between 0 and 65535, got {value}")] | None = None
    master_key: Annotated[Secret, _must(lambda key: master_key_problem(key) is None, master_key_problem)] | None = None
    data_dir: str | None = None
    max_body_bytes: PositiveInt | None = None
    keepalive_interval: PositiveFloat | None = None
    shutdown_grace: PositiveFloat | None = None
    header_timeout: Seconds | None = None
    body_timeout: Seconds | None = None
    discovery_timeout: PositiveFloat | None = None
    database_url: str | None = None
    media: _Media = Field(default_factory=_Media)
    oauth: _OAuth = Field(default_factory=_OAuth)
    metrics: _Metrics = Field(default_factory=_Metrics)
    oidc: _Oidc | None = None

    def build(self) -> ServerConfig:
        return ServerConfig(**self.given("media", "oauth", "metrics", "oidc"), media=MediaConfig(**self.media.given()),
                            oauth=OAuthConfig(**self.oauth.given()), metrics=MetricsConfig(**self.metrics.given()),
                            oidc=OidcConfig(**self.oidc.given()) if self.oidc is not None else None)


class _Accounting(_Section):
    durability: Literal["batched", "strict"] | None = None
    flush_interval: PositiveFloat | None = None
    max_pending: PositiveInt | None = None
    budget: NonNegative | None = None
    reservation_lease: PositiveFloat | None = None
    reconcile_interval: PositiveFloat | None = None


class _Prices(_Section):
    """USD per 1M tokens (request, image: per unit)."""

    prompt: NonNegative | None = None
    completion: NonNegative | None = None
    request: NonNegative | None = None
    image: NonNegative | None = None
    input_cache_read: NonNegative | None = None
    input_cache_write: NonNegative | None = None


def _prices(value: Any) -> Any:
    if value == "free":  # free on purpose: priced, at zero
        return {}
    if not isinstance(value, dict):
        raise _fail("must be a mapping of USD per 1M tokens (prompt, completion, ...) or 'free', "
                    f"got {type(value).__name__}")
    return value


class _Model(_Section):
    """A model a connection serves: an entry of its own, or what it changes of the catalog's entry of that id."""

    id: str
    upstream: str | None = None
    name: str | None = None
    created: Int | None = None
    description: str | None = None
    context_length: Int | None = None
    max_completion_tokens: Int | None = None
    dimensions: Count | None = None  # an embedding model's default vector size
    pricing: Annotated[_Prices, BeforeValidator(_prices)] | None = None
    input_modalities: list[str] | None = None
    output_modalities: list[str] | None = None
    tokenizer: str | None = None
    reasoning: Bool | None = None
    supported_parameters: list[str] | None = None

    def spec(self, catalog: Catalog, vendor: Vendor | None, params: list[str]) -> ModelSpec:
        fields = self.given("pricing") | ({"pricing": self.pricing.given()} if self.pricing is not None else {})
        base = catalog.by_id.get(self.id)
        spec = model_from_dict(fields, vendor_params=params, base=base)
        if base is not None and self.upstream is None and vendor is not None and vendor.key == "openrouter":
            spec.upstream = self.id  # OpenRouter takes the catalog's ids as they are
        return spec


@functools.cache
def _option_type(kind: type) -> TypeAdapter[Any]:
    """The validator of a provider type's own connection key (`ConnectionField.kind`: str, int, float or bool)."""
    return TypeAdapter({str: str, int: Int, float: Float, bool: Bool}[kind], config=ConfigDict(strict=True))


class _Connection(_Section):
    # Its extra keys are those some provider type takes (ProviderSpec.connection_fields: a new type needs no change
    # here): `_keys` lets through those of every type, `_resolve` keeps those of the connection's own.
    model_config = ConfigDict(extra="allow")

    name: Name
    type: str
    base_url: str | None = None
    api_key: Secret | None = None
    headers: StrDict[Secret] | None = None
    timeout: PositiveFloat | None = None
    connect_timeout: Seconds | None = None
    max_response_bytes: PositiveInt | None = None
    models: list[_Model] = []
    catalog: str | None = None  # the catalog vendor whose models and parameter rules apply
    discover: Bool | None = None
    data_collection: Literal["allow", "deny"] | None = None
    responses_api: Bool | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    workspace: Workspace | None = None
    _resolved: dict[str, Any] = PrivateAttr(default_factory=dict)  # what `_resolve` works out (ConnectionConfig's)

    @classmethod
    def _keys(cls) -> set[str]:
        return super()._keys() | {key for spec in SPECS.values() for key in spec.connection_fields}

    @field_validator("type")
    @classmethod
    def _registered(cls, kind: str) -> str:
        if kind not in SPECS:
            raise _fail(f"{kind!r} is not one of {', '.join(SPECS)}")
        return kind

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise _fail(f"must be an http(s) URL, got {_without_password(url)!r}")
        return url

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Self:
        """What the provider type's spec and the catalog decide: its own keys, the base URL, vendor and models."""
        catalog: Catalog = (info.context or {})["catalog"]
        spec = SPECS[self.type]
        options = self._options(spec)
        if self.catalog is not None and self.catalog not in catalog.vendors:
            raise _fail(f"unknown catalog vendor {self.catalog!r} (known: {', '.join(catalog.vendors)})", "catalog")
        named = catalog.vendors.get(self.catalog or self.name)
        url = self.base_url or spec.default_base_url or (named.base_url if named else None)
        if url is None:
            raise _fail(f"is required for a {self.type}-type connection that is not a known vendor", "base_url")
        url = versioned_base_url(self.type, url.rstrip("/"))
        vendor = _pick_vendor(catalog, self.catalog, self.name, spec, url)
        params = vendor.supported_parameters if vendor else list(spec.default_parameters)
        models = [model.spec(catalog, vendor, params) for model in self.models]
        for index, (model, model_spec) in enumerate(zip(self.models, models, strict=True)):
            if upstream_model_problem(model_spec.upstream) is not None:
                raise _fail(_unsendable(model_spec.upstream), "models", index,
                            "id" if model.upstream is None else "upstream")
        self._resolved = {
            "base_url": url, "vendor": vendor, "models": models, "options": options,
            "discover": spec.discover_models and not models
            and not (vendor and (vendor.models or vendor.key == "openrouter")),
            "responses_api": vendor is not None and vendor.responses_api,
        }
        return self

    def _options(self, spec: ProviderSpec) -> dict[str, Any]:
        given = self.model_extra or {}
        for key in given:
            if key not in spec.connection_fields:
                takers = ", ".join(s.type for s in SPECS.values() if key in s.connection_fields)
                raise _fail(f"is a key of {takers} connections only, not of {self.type} ones", key)
        options: dict[str, Any] = {}
        for key, option in spec.connection_fields.items():
            if key in given:
                try:
                    options[key] = _option_type(option.kind).validate_python(given[key])
                except ValidationError as exc:
                    raise _fail(_problem(exc.errors()[0], shown=not option.secret), key) from None
            elif option.required:
                raise _fail("is required", key)
            elif option.default is not None:
                options[key] = option.default
        return options

    def build(self) -> ConnectionConfig:
        return ConnectionConfig(**(self._resolved | self.given("base_url", "models", "catalog")))


class _Target(_Section):
    connection: str
    model: UpstreamModel  # the upstream model id (or an id that connection lists)
    name: str | None = None
    weight: PositiveFloat | None = None
    params: StrDict[Any] | None = None

    @property
    def label(self) -> str:
        """How conditions refer to it."""
        return self.name if self.name is not None else f"{self.connection}/{self.model}"

    def build(self) -> RouteTargetConfig:
        return RouteTargetConfig(**self.given("name"), name=self.label)


# A fallback is a model id or a target. The union's tags show in pydantic's error paths (`_config_error` drops them).
_FALLBACK_TAGS = ("(model id)", "(target)")
_Fallback = Annotated[
    Annotated[str, Tag(_FALLBACK_TAGS[0])] | Annotated[_Target, Tag(_FALLBACK_TAGS[1])],
    Discriminator(lambda v: _FALLBACK_TAGS[0] if isinstance(v, str) and v else
                  _FALLBACK_TAGS[1] if isinstance(v, dict) else None,
                  custom_error_type="fallback",
                  custom_error_message="must be a model id or a mapping with connection and model"),
]
_NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")


def _tests(spec: Any, *, numeric: bool) -> list[ValueTest]:
    """A scalar means equality, a list means membership, a mapping holds operators (eq, in, gt, exists, ...)."""
    if isinstance(spec, list):
        spec = {"in": spec}
    elif not isinstance(spec, dict):
        spec = {"eq": spec}
    if not spec:
        raise _fail("must hold at least one test")
    tests: list[ValueTest] = []
    for op, operand in spec.items():
        if op not in CONDITION_OPERATORS:
            raise _fail(f"unknown operator (allowed: {', '.join(CONDITION_OPERATORS)})", str(op))
        if op == "exists":
            if not isinstance(operand, bool):
                raise _fail("must be true or false", op)
        elif op in ("in", "not_in"):
            if not isinstance(operand, list) or not all(_is_scalar(x) for x in operand):
                raise _fail("must be a list of plain values", op)
            operand = tuple(operand)
        elif op in _NUMERIC_OPERATORS or numeric:
            if not isinstance(operand, int | float) or isinstance(operand, bool):
                raise _fail(f"must be a number, got {_got(operand)}", op)
        elif not _is_scalar(operand):
            raise _fail("must be a plain value (string, number or boolean)", op)
        tests.append(ValueTest(op, operand))
    return tests


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _as_text(test: ValueTest) -> ValueTest:
    """A header test compares strings (headers are text on the wire), but for its numeric comparisons."""

    def text(operand: Any) -> str:
        return str(operand).lower() if isinstance(operand, bool) else str(operand)  # true, as YAML spells it

    if test.op in (*_NUMERIC_OPERATORS, "exists"):
        return test
    return ValueTest(test.op, tuple(map(text, test.operand)) if isinstance(test.operand, tuple) else text(test.operand))


Tests = Annotated[list[ValueTest], PlainValidator(functools.partial(_tests, numeric=False))]


class _When(_Section):
    prompt_tokens: Annotated[list[ValueTest], PlainValidator(functools.partial(_tests, numeric=True))] | None = None
    key: Tests | None = None  # the API key's name
    metadata: StrDict[Tests] | None = None
    header: StrDict[Tests] | None = None

    def checks(self) -> list[ConditionCheck]:
        checks = [ConditionCheck(subject, None, tests) for subject, tests in (("prompt_tokens", self.prompt_tokens),
                                                                             ("key", self.key)) if tests is not None]
        checks += [ConditionCheck("metadata", name, tests) for name, tests in (self.metadata or {}).items()]
        return checks + [ConditionCheck("header", name.lower(), [_as_text(test) for test in tests])
                         for name, tests in (self.header or {}).items()]


class _Condition(_Section):
    when: _When = Field(default_factory=_When)
    target: str | None = None
    action: str | None = None  # route (the default with a target) | block, in any case
    message: str | None = None  # what a blocked client is told

    @model_validator(mode="after")
    def _action(self) -> Self:
        action = self.action.lower() if self.action is not None else "route" if self.target is not None else None
        if action not in ("route", "block"):
            raise _fail("must be route (with a target) or block" if action is not None
                        else "a condition needs a target or action: block", "action")
        if action == "block" and self.target is not None:
            raise _fail("a blocking condition picks no target", "target")
        if action == "route" and self.target is None:
            raise _fail("is required for action: route", "target")
        if action == "route" and self.message is not None:
            raise _fail("only applies to action: block", "message")
        self.action = action
        return self

    def build(self) -> RouteConditionConfig:
        return RouteConditionConfig(checks=self.when.checks(), target=self.target, block=self.action == "block",
                                    message=self.message)


class _Route(_Section):
    name: Name
    targets: Annotated[list[_Target], _must(bool, "must list at least one target")]
    strategy: Literal["ordered", "weighted"] | None = None
    display_name: str | None = None
    description: str | None = None
    context_length: Count | None = None
    fallback: list[_Fallback] | None = None
    conditions: list[_Condition] | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    workspace: Workspace | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [target.label for target in self.targets]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _fail(f"duplicate target name {name!r}", "targets", index, "name")
        weights: list[tuple[str, list[_Target] | list[str | _Target]]] = [("fallback", self.fallback or [])]
        if self.strategy != "weighted":
            weights.append(("targets", self.targets))
        for section, entries in weights:
            for index, entry in enumerate(entries):
                if isinstance(entry, _Target) and "weight" in entry.model_fields_set:
                    raise _fail("only applies to a route with strategy: weighted", section, index, "weight")
        for index, condition in enumerate(self.conditions or []):
            if condition.target is not None and condition.target not in names:
                raise _fail(f"{condition.target!r} is not one of this route's targets ({', '.join(sorted(names))})",
                            "conditions", index, "target")
        return self

    def build(self) -> RouteConfig:
        return RouteConfig(**self.given("targets", "fallback", "conditions"),
                           targets=[target.build() for target in self.targets],
                           fallback=[e if isinstance(e, str) else e.build() for e in self.fallback or []],
                           conditions=[condition.build() for condition in self.conditions or []])


class _Breaker(_Section):
    failure_threshold: PositiveInt | None = None
    cooldown: PositiveFloat | None = None
    probe_timeout: PositiveFloat | None = None


class _Routing(_Section):
    retries: Annotated[Int, _must(lambda v: v >= 0, "must be a non-negative integer, got {value!r}")] | None = None
    max_retry_wait: PositiveFloat | None = None
    rate_limits_fail_open: Bool | None = None
    breaker: _Breaker = Field(default_factory=_Breaker)
    priority_shares: StrDict[Share] | None = None

    def build(self) -> RoutingConfig:
        return RoutingConfig(**self.given("breaker"), breaker=BreakerConfig(**self.breaker.given()))


class _File(_Section):
    server: _Server = Field(default_factory=_Server)
    accounting: _Accounting = Field(default_factory=_Accounting)
    providers: list[_Connection] = []
    routing: _Routing = Field(default_factory=_Routing)
    routes: list[_Route] = []

    @model_validator(mode="after")
    def _references(self) -> Self:
        """Names are unique; routes' targets name configured connections; a fallback names no route (it could loop:
        routes fall back to models and targets only)."""
        connections, routes = [conn.name for conn in self.providers], [route.name for route in self.routes]
        for section, what, names in (("providers", "connection", connections), ("routes", "route", routes)):
            for index, name in enumerate(names):
                if name in names[:index]:
                    raise _fail(f"duplicate {what} name {name!r}", section, index, "name")
        for index, route in enumerate(self.routes):
            for section, entries in (("targets", [*route.targets]), ("fallback", route.fallback or [])):
                for position, entry in enumerate(entries):
                    at = ("routes", index, section, position)
                    if isinstance(entry, str) and entry in routes:
                        raise _fail(f"{entry!r} is a route; a fallback must be a model id or a target", *at)
                    if isinstance(entry, _Target) and entry.connection not in connections:
                        known = ", ".join(sorted(connections)) or "none"
                        raise _fail(f"no connection is named {entry.connection!r} (configured: {known})",
                                    *at, "connection")
        return self

    def build(self, source: str, catalog: Catalog) -> Config:
        return Config(source=source, server=self.server.build(), providers=[conn.build() for conn in self.providers],
                      catalog=catalog, accounting=AccountingConfig(**self.accounting.given()),
                      routing=self.routing.build(), routes=[route.build() for route in self.routes])


# -- errors ---------------------------------------------------------------------------------------------------------
# Pydantic's own errors in the words of the file's other rules (its only bounds are gt=0 and ge=0). A value is shown
# only where a scalar was wanted: what a container held could be a secret.
_SCALAR = {"int_type": "an integer", "float_type": "a number", "bool_type": "a boolean", "string_type": "a string",
           "literal_error": "a string"}
_CONTAINER = {"list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping"}
_BOUNDS = {"greater_than": "must be positive", "greater_than_equal": "must not be negative",
           "finite_number": "must be a finite number"}


def _config_error(source: str, exc: ValidationError) -> ConfigError:
    """The first of pydantic's errors as a ConfigError: the key's path as the file spells it, and the problem."""
    error = exc.errors(include_url=False)[0]
    key = ""
    for part in (*error["loc"], *(error.get("ctx") or {}).get("at", ())):
        if isinstance(part, int):
            key += f"[{part}]"
        elif part not in _FALLBACK_TAGS:
            key += f".{part}" if key else part
    return ConfigError(source, key or "(top level)", _problem(error))


def _problem(error: ErrorDetails, *, shown: bool = True) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "config":
        return str(ctx["problem"])
    if kind == "missing":
        return "is required"
    if kind == "literal_error" and isinstance(value, str):
        return f"must be {str(ctx['expected']).replace(chr(39), '')}, got {value!r}"
    if kind in _SCALAR:
        return f"must be {_SCALAR[kind]}, got {_got(value, shown=shown)}"
    if kind in _CONTAINER:
        return f"must be {_CONTAINER[kind]}, got {_got(value, shown=False)}"
    if kind in _BOUNDS:
        return f"{_BOUNDS[kind]}, got {value!r}"
    return error["msg"]  # a rule's own wording (a fallback entry's), or pydantic's where nothing here words it


def _got(value: Any, *, shown: bool = True) -> str:
    """What the file holds instead: the type, and the value too if `shown` and a scalar."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else "a boolean"
    kind = "str" if isinstance(value, str) else type(value).__name__
    return f"{kind} {value!r}" if shown and isinstance(value, str | int | float) else kind


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



def _without_password(url: str) -> str:
    """`url` with the password of its user-info (``scheme://user:password@host``) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}{slash}{tail}"


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
