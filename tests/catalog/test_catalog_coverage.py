"""The built-in catalog covers the model ids the product documents name (issue #10), and stays well formed.

The documents (quickstart, chat-completions and SDK examples) tell clients to send these ids. A catalog entry says
"this vendor serves this model today at these prices", so an id only belongs in the catalog while some catalog vendor
really serves it. Ids whose every catalog vendor has retired the model are listed apart, each with the retirement that
keeps it out, and marked as expected failures: when a served, priced entry is added, drop its mark (strict xfail turns
the unexpected pass into a failure so the mark cannot go stale). `anthropic/claude-sonnet-4-20250514` is a dated
alias of `anthropic/claude-sonnet-4`, resolved in code rather than in the catalog, so it is not listed here.
"""

from __future__ import annotations

from collections import Counter

import pytest

from crossroads.catalog import load_catalog

# Served by a catalog vendor today: each must be in the catalog.
DOCUMENTED_IDS = [
    "openai/gpt-4o",
    "openai/gpt-4o-mini",
    "google/gemini-2.5-flash",
    "google/gemini-2.5-pro",
    "deepseek/deepseek-chat",
    "mistralai/mistral-large",
    "anthropic/claude-sonnet-4",  # the home of the documented dated alias
]

# Named by the documents, but retired by every catalog vendor that once served them (as of the catalog's date).
RETIRED_IDS = {
    "openai/gpt-3.5-turbo": "OpenAI shut gpt-3.5-turbo down on 2026-10-23 (replacement gpt-5.6-terra)",
    "meta-llama/llama-4-maverick": "Groq shut it down on 2026-03-09; Together deprecated its serverless Maverick in 2026",
    "meta-llama/llama-3.1-405b-instruct": "no catalog vendor serves it: Groq never did generally, Together's Turbo "
                                          "build is no longer verifiably served",
    "meta-llama/llama-3.1-70b-instruct": "Groq retired llama-3.1-70b-versatile (2024-12); Together's Turbo build is "
                                         "no longer verifiably served",
    "mistralai/mixtral-8x7b-instruct": "Mistral retired open-mixtral-8x7b (2025-03-30), Groq mixtral-8x7b-32768 "
                                       "(2025-03-20), Together Mixtral-8x7B-Instruct-v0.1 (2026-04-16)",
}

_CASES = [*DOCUMENTED_IDS] + [
    pytest.param(model_id, marks=pytest.mark.xfail(strict=True, reason=f"retired upstream: {why}"), id=model_id)
    for model_id, why in RETIRED_IDS.items()
]


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def test_catalog_loads(catalog) -> None:
    assert catalog.date
    assert catalog.vendors
    assert catalog.by_id


@pytest.mark.parametrize("model_id", _CASES)
def test_documented_model_is_catalogued(catalog, model_id: str) -> None:
    assert model_id in catalog.by_id, f"{model_id} is named by the product documents but missing from the catalog"
    entries = [m for v in catalog.vendors.values() for m in v.models if m.id == model_id]
    for model in entries:
        assert model.pricing.prompt > 0, f"{model_id} ({model.upstream}) has no prompt price"
        assert model.pricing.completion > 0, f"{model_id} ({model.upstream}) has no completion price"
        assert model.context_length and model.context_length > 0, f"{model_id} ({model.upstream}) has no context_length"


def test_upstream_ids_unique_within_vendor(catalog) -> None:
    for vendor in catalog.vendors.values():
        counts = Counter(m.upstream for m in vendor.models)
        duplicates = sorted(upstream for upstream, n in counts.items() if n > 1)
        assert not duplicates, f"vendor {vendor.key} lists upstream ids more than once: {duplicates}"


def test_model_ids_unique_within_vendor(catalog) -> None:
    for vendor in catalog.vendors.values():
        counts = Counter(m.id for m in vendor.models)
        duplicates = sorted(model_id for model_id, n in counts.items() if n > 1)
        assert not duplicates, f"vendor {vendor.key} lists model ids more than once: {duplicates}"


def test_every_model_is_priced(catalog) -> None:
    for vendor in catalog.vendors.values():
        for model in vendor.models:
            assert model.priced, f"{vendor.key}/{model.id} has no pricing"
            assert not model.pricing.is_zero(), f"{vendor.key}/{model.id} has all-zero pricing"
