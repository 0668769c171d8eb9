"""Anthropic's Messages API."""

from __future__ import annotations

from crossroads.providers.base import ConnectionField, ProviderSpec, RateLimitHeaders

# Anthropic's documented cap on messages per request (middle-out trims to it).
MAX_MESSAGES = 1000


SPEC = ProviderSpec(
    type="anthropic",
    adapter="crossroads.providers.anthropic.adapter:AnthropicAdapter",
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
