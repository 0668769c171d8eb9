"""OpenAI Chat Completions (and Responses, Embeddings): OpenAI itself and every OpenAI-compatible server."""

from __future__ import annotations

from crossroads.providers.base import ProviderSpec

SPEC = ProviderSpec(
    type="openai",
    adapter="crossroads.providers.openai.adapter:OpenAIAdapter",
    # Many servers speak this API (vLLM, Ollama, Groq, OpenRouter...), each under its own path (`/v1`, `/openai/v1`,
    # `/api/v1`): the base URL is taken as written and is required unless the catalog knows the vendor.
    default_parameters=("max_tokens", "temperature", "top_p", "stop", "frequency_penalty", "presence_penalty",
                        "seed", "tools", "tool_choice", "response_format"),
    discover_models=True,
)
