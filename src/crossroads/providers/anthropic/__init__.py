"""Anthropic's Messages API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossroads.providers.base import ConnectionField, ProviderSpec, RateLimitHeaders

if TYPE_CHECKING:
    from crossroads.config import ConnectionConfig
    from crossroads.providers.anthropic.adapter import AnthropicAdapter

# Anthropic's documented cap on messages per request (middle-out trims to it).
MAX_MESSAGES = 1000


def _adapter(conn: ConnectionConfig) -> AnthropicAdapter:
    from crossroads.providers.anthropic.adapter import AnthropicAdapter

    return AnthropicAdapter(conn)


SPEC = ProviderSpec(
    type="anthropic",
    adapter=_adapter,
    default_base_url="https://api.anthropic.com/v1",
    api_version="/v1",
    accepted_versions=("/v1",),
    default_parameters=("max_tokens", "temperature", "top_p", "top_k", "stop", "tools", "tool_choice", "reasoning"),
    single_vendor=True,
    fetches_media=True,
    max_messages=MAX_MESSAGES,
    rate_limit_headers=RateLimitHeaders(
        limit=("anthropic-ratelimit-requests-limit", "x-ratelimit-limit"),
        remaining=("anthropic-ratelimit-requests-remaining", "x-ratelimit-remaining"),
        reset=("anthropic-ratelimit-requests-reset", "x-ratelimit-reset")),
    connection_fields={
        "api_version": ConnectionField(str, help="the anthropic-version header sent upstream (default 2023-06-01)"),
    },
)
