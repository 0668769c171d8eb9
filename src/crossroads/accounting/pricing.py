"""Cost of one request from its usage and the serving model's prices."""

from __future__ import annotations

from crossroads.canonical import Usage
from crossroads.catalog import Pricing


def prompt_cost(usage: Usage, pricing: Pricing) -> float:
    uncached = max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    write_price = pricing.input_cache_write or pricing.prompt
    read_price = pricing.input_cache_read or pricing.prompt
    return (uncached * pricing.prompt + usage.cached_tokens * read_price + usage.cache_write_tokens * write_price
            + pricing.request)


def completion_cost(usage: Usage, pricing: Pricing) -> float:
    return usage.completion_tokens * pricing.completion


def request_cost(usage: Usage, pricing: Pricing) -> float:
    # Rounded to 1e-12 USD so float noise never shows up in records or responses.
    return round(prompt_cost(usage, pricing) + completion_cost(usage, pricing), 12)


def price_string(value: float) -> str:
    """USD per token as OpenRouter writes it: a plain decimal string, no exponent."""
    if value == 0:
        return "0"
    text = f"{value:.12f}".rstrip("0").rstrip(".")
    return text or "0"
