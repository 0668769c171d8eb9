"""Which connections serve which models.

Built once per worker at start-up from the configuration, the built-in catalog and, for OpenAI-compatible servers
without catalog entries, the upstream's own GET /models. Resolution on the request path is a dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

import aiohttp
import orjson

from crossroads.catalog import Catalog, ModelSpec
from crossroads.config import Config, ConnectionConfig
from crossroads.errors import GatewayError, redact
from crossroads.providers.base import ProviderAdapter, ProviderSpec, upstream_model_problem
from crossroads.providers.http import UpstreamClient
from crossroads.providers.registry import make_adapter, spec_for

log = logging.getLogger("crossroads.routing")


@dataclass(slots=True)
class Connection:
    """A configured upstream account at run time: its settings, its adapter and its pooled HTTP client."""

    config: ConnectionConfig
    adapter: ProviderAdapter
    client: UpstreamClient
    name: str = field(init=False)  # config.name, read on every request (a plain attribute, not a property)
    spec: ProviderSpec = field(init=False)  # what its provider type declares (providers/<type>/)
    # Every credential the operator configured for this connection: the API key, each extra header's value, and a
    # password in base_url. An upstream may echo any of them (an error that quotes the request, a
    # proxy's diagnostic page), so none may reach a client, a log or a record.
    secrets: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.config.name
        self.spec = spec_for(self.config.type)
        self.secrets = connection_secrets(self.config)

    def redact(self, text: str) -> str:
        """`text` without this connection's credentials (nor anything shaped like an API key)."""
        return redact(text, self.secrets)


@dataclass(slots=True)
class Deployment:
    """One model as served by one connection."""

    model: ModelSpec
    connection: Connection


@dataclass(slots=True)
class Registry:
    connections: dict[str, Connection] = field(default_factory=dict)
    models: dict[str, list[Deployment]] = field(default_factory=dict)
    # (connection name, model id or upstream id) -> deployment; built on first `find`, dropped by `add`.
    _by_connection: dict[tuple[str, str], Deployment] | None = field(default=None, repr=False, compare=False)
    # other names -> the model ids they may mean (see `canonical_id`), strongest meaning first: slugs of public ids,
    # then upstream ids (bare or vendor-prefixed); built on first use, dropped by `add`.
    _aliases: tuple[dict[str, set[str]], dict[str, set[str]]] | None = field(default=None, repr=False,
                                                                             compare=False)

    def add(self, model: ModelSpec, connection: Connection) -> None:
        self.models.setdefault(model.id, []).append(Deployment(model, connection))
        self._by_connection = None
        self._aliases = None

    def deployments(self, model_id: str) -> list[Deployment]:
        """Every deployment of a catalog/config id; else the one ad-hoc `<connection>/<upstream-model>`; else those
        of the model another name unambiguously means (`canonical_id`); else 404 suggesting the closest ids."""
        found = self.models.get(model_id)
        if found:
            return found
        if model_id.partition("/")[0] not in self.connections:
            canonical = self.canonical_id(model_id)
            if canonical is not None:
                return self.models[canonical]
        return [self.resolve(model_id)]

    def canonical_id(self, name: str) -> str | None:
        """The served model `name` means when it is not an id itself: a bare upstream id or slug (`gpt-4o-mini`,
        `claude-sonnet-4-20250514`, what the vendors' own SDK docs use), a vendor-prefixed upstream id
        (`anthropic/claude-sonnet-4-20250514`), or a dated snapshot of a served id (`openai/gpt-4o-2024-08-06`).
        None when nothing or more than one model matches (an ambiguous name is never guessed)."""
        ids = self._meanings(name)
        return next(iter(ids)) if len(ids) == 1 else None

    def _meanings(self, name: str) -> set[str]:
        """The model ids `name` may mean, at the strongest level that has any."""
        if self._aliases is None:
            self._aliases = self._alias_index()
        for candidate in (name, _undated(name)):
            if candidate in self.models:
                return {candidate}
            for index in self._aliases:
                ids = index.get(candidate)
                if ids:
                    return ids
        return set()

    def _alias_index(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        slugs: dict[str, set[str]] = {}
        upstreams: dict[str, set[str]] = {}
        for model_id, deployments in self.models.items():
            vendor, sep, slug = model_id.partition("/")
            if sep:
                slugs.setdefault(slug, set()).add(model_id)
            for dep in deployments:
                upstream = dep.model.upstream.removeprefix("models/")
                for alias in (upstream, f"{vendor}/{upstream}" if sep else upstream):
                    if alias != model_id:
                        upstreams.setdefault(alias, set()).add(model_id)
        return slugs, upstreams

    def not_found(self, model_id: str) -> GatewayError:
        """404 for a name that is no id, alias or connection, with the closest served ids as suggestions."""
        import difflib

        meanings = self._meanings(model_id)
        if len(meanings) > 1:
            options = sorted(meanings)
            return GatewayError(404, f"Model {model_id!r} is ambiguous: it may mean {', '.join(map(repr, options))}; "
                                     "send one of those ids", metadata={"suggestions": options})
        # Compare with ids and with their slugs (a bare name is closest to a slug).
        by_name: dict[str, str] = {}
        for known in self.models:
            by_name.setdefault(known, known)
            by_name.setdefault(known.partition("/")[2] or known, known)
        close = difflib.get_close_matches(model_id[:128], list(by_name), n=6, cutoff=0.6)
        suggestions = list(dict.fromkeys(by_name[name] for name in close))[:3]
        hint = f"; did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
        name, sep, _ = model_id.partition("/")
        where = (f": it is not in /api/v1/models and no connection is named {name!r}" if sep else
                 ": it is not in /api/v1/models")
        return GatewayError(404, f"Model {model_id!r} not found{where}{hint}",
                            metadata={"suggestions": suggestions} if suggestions else None)

    def find(self, connection: str, model: str) -> Deployment | None:
        """`model` (an id the connection lists, or its upstream id) on the named connection; an ad-hoc deployment
        when the connection does not list it; None when no connection has that name."""
        index = self._by_connection
        if index is None:
            index = self._by_connection = {}
            for deployments in self.models.values():
                for dep in deployments:
                    index.setdefault((dep.connection.name, dep.model.id), dep)
                    index.setdefault((dep.connection.name, dep.model.upstream), dep)
        found = index.get((connection, model))
        if found is not None:
            return found
        conn = self.connections.get(connection)
        if conn is None:
            return None
        _check_adhoc(model)
        model_id = f"{connection}/{model}"
        return Deployment(ModelSpec(id=model_id, upstream=model, name=model_id), conn)

    def resolve(self, model_id: str) -> Deployment:
        """A catalog/config id, else ad-hoc `<connection>/<upstream-model>`; 404 when neither exists."""
        deployments = self.models.get(model_id)
        if deployments:
            return deployments[0]
        name, sep, upstream = model_id.partition("/")
        connection = self.connections.get(name) if sep else None
        if connection is not None and upstream:
            _check_adhoc(upstream)
            return Deployment(self._adhoc_model(connection, model_id, upstream), connection)
        raise self.not_found(model_id)

    def _adhoc_model(self, connection: Connection, model_id: str, upstream: str) -> ModelSpec:
        # Reuse what is known about that upstream model (limits, prices) when the connection lists it.
        for deployments in self.models.values():
            for dep in deployments:
                if dep.connection is connection and dep.model.upstream == upstream:
                    known = dep.model
                    return ModelSpec(**{**{k: getattr(known, k) for k in ModelSpec.__slots__}, "id": model_id})
        return ModelSpec(id=model_id, upstream=upstream, name=model_id)

    async def close(self) -> None:
        await asyncio.gather(*(c.client.close() for c in self.connections.values()), return_exceptions=True)


_DATE_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")


def _undated(name: str) -> str:
    """`name` without a trailing snapshot date (-20250514, -2024-08-06)."""
    return _DATE_SUFFIX.sub("", name)


def _check_adhoc(upstream: str) -> None:
    """An ad-hoc upstream id comes from the client: it must not be able to steer the gateway's request (and its
    credentials) to another path or query on the upstream."""
    problem = upstream_model_problem(upstream)
    if problem is not None:
        raise GatewayError(400, f"Invalid model: the upstream model id {upstream[:64]!r} cannot be used: {problem}",
                           metadata={"field": "model"})


def connection_secrets(config: ConnectionConfig) -> tuple[str, ...]:
    from urllib.parse import urlsplit

    values = [config.api_key, *config.headers.values(), urlsplit(config.base_url).password]
    # Longest first: a secret that contains another must be removed whole.
    return tuple(sorted({v for v in values if v}, key=len, reverse=True))


def build_registry(config: Config) -> Registry:
    registry = Registry()
    for conn_config in config.providers:
        client = UpstreamClient(conn_config.timeout, conn_config.connect_timeout, conn_config.max_response_bytes)
        connection = Connection(conn_config, make_adapter(conn_config), client)
        registry.connections[conn_config.name] = connection
        for model in models_for(conn_config, config.catalog):
            registry.add(model, connection)
    return registry


def models_for(conn: ConnectionConfig, catalog: Catalog) -> list[ModelSpec]:
    if conn.models:
        return conn.models
    vendor = conn.vendor
    if vendor is None:
        return []
    if vendor.key == "openrouter":
        # OpenRouter serves every catalog model under the catalog's own id.
        out = []
        for model in catalog.by_id.values():
            copy = ModelSpec(**{k: getattr(model, k) for k in ModelSpec.__slots__})
            copy.upstream = model.id
            out.append(copy)
        return out
    return vendor.models


async def discover_models(registry: Registry, config: Config) -> None:
    """Ask each OpenAI-compatible connection marked `discover` for its models (bounded time; failures only logged)."""
    targets = [c for c in registry.connections.values() if c.config.discover]
    if not targets:
        return
    results = await asyncio.gather(*(_discover(c, config.server.discovery_timeout) for c in targets),
                                   return_exceptions=True)
    for connection, result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("model discovery for connection %r failed: %s", connection.name,
                        connection.redact(_describe(result)))
            continue
        for upstream in result:
            problem = upstream_model_problem(upstream)
            if problem is not None:
                log.warning("model discovery for connection %r: skipping model id %r: %s", connection.name,
                            upstream[:64], problem)
                continue
            registry.add(ModelSpec(id=f"{connection.name}/{upstream}", upstream=upstream,
                                   name=f"{connection.name}: {upstream}",
                                   supported_parameters=_DISCOVERED_PARAMS), connection)


_DISCOVERED_PARAMS = ["max_tokens", "temperature", "top_p", "stop", "frequency_penalty", "presence_penalty", "seed",
                      "tools", "tool_choice", "response_format"]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def _discover(connection: Connection, seconds: float) -> list[str]:
    adapter = connection.adapter
    headers = {k: v for k, v in getattr(adapter, "headers", {}).items() if k.lower() != "content-type"}
    url = connection.config.base_url + "/models"
    async with connection.client.session.get(url, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=seconds)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET /models answered HTTP {resp.status}")
        data = orjson.loads(await resp.read())
    items = data.get("data") if isinstance(data, dict) else data
    if isinstance(data, dict) and items is None:
        items = data.get("models")  # Ollama's native listing shape
    return [str(item.get("id") or item.get("name")) for item in items or [] if isinstance(item, dict)]
