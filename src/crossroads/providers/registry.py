"""Every provider type the gateway speaks, in one place: add a line here to add one (docs/providers.md)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from crossroads.providers import anthropic, gemini, openai
from crossroads.providers.base import ProviderSpec

if TYPE_CHECKING:
    from crossroads.config import ConnectionConfig
    from crossroads.providers.base import Adapter

SPECS: dict[str, ProviderSpec] = {spec.type: spec for spec in (
    openai.SPEC,
    anthropic.SPEC,
    gemini.SPEC,
)}
PROVIDER_TYPES = tuple(SPECS)


def spec_for(kind: str) -> ProviderSpec:
    """The spec of provider type `kind` (a KeyError for a type nobody registered: config refuses those first)."""
    return SPECS[kind]


def make_adapter(conn: ConnectionConfig) -> Adapter:
    """The adapter of one connection, built from the class its type's spec names ("package.module:Class"; the module
    is imported here the first time, once per connection at start-up, never per request)."""
    spec = SPECS.get(conn.type)
    if spec is None:
        raise ValueError(f"unknown provider type {conn.type!r}")
    module, _, name = spec.adapter.partition(":")
    adapter_class: type[Adapter] = getattr(importlib.import_module(module), name)
    return adapter_class(conn)
