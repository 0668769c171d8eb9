"""Upstream provider adapters, one module per wire protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crossroads.config import ConnectionConfig
    from crossroads.providers.base import ProviderAdapter


def make_adapter(conn: ConnectionConfig) -> ProviderAdapter:
    if conn.type == "openai":
        from crossroads.providers.openai import OpenAIAdapter

        return OpenAIAdapter(conn)
    if conn.type == "anthropic":
        from crossroads.providers.anthropic import AnthropicAdapter

        return AnthropicAdapter(conn)
    if conn.type == "gemini":
        from crossroads.providers.gemini import GeminiAdapter

        return GeminiAdapter(conn)
    raise ValueError(f"unknown provider type {conn.type!r}")
