"""Google Gemini's Generative Language API."""

from __future__ import annotations

from crossroads.providers.base import ProviderSpec

SPEC = ProviderSpec(
    type="gemini",
    adapter="crossroads.providers.gemini.adapter:GeminiAdapter",
    default_base_url="https://generativelanguage.googleapis.com/v1beta",
    api_version="/v1beta",
    accepted_versions=("/v1", "/v1beta", "/v1alpha"),
    default_parameters=("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "tools", "tool_choice",
                        "response_format", "reasoning"),
    single_vendor=True,
    fetches_media=True,
    aliases=("google",),  # what OpenRouter calls it in provider preferences
    telemetry_name="gcp.gemini",
)
