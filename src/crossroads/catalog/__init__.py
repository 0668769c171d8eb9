"""The built-in model catalog: a dated data file of popular models per vendor, with limits and prices.

Prices in the file are USD per 1M tokens (as vendors publish them); `Pricing` keeps USD per token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

PRICE_FIELDS = ("prompt", "completion", "request", "image", "input_cache_read", "input_cache_write")
# Prices per request/image are already per unit; token prices are published per 1M tokens.
_PER_UNIT_FIELDS = ("request", "image")

REASONING_PARAMETERS = ("reasoning", "include_reasoning")


@dataclass(frozen=True, slots=True)
class Pricing:
    """USD per token (request/image: USD per unit)."""

    prompt: float = 0.0
    completion: float = 0.0
    request: float = 0.0
    image: float = 0.0
    input_cache_read: float = 0.0
    input_cache_write: float = 0.0

    @classmethod
    def from_per_million(cls, raw: dict[str, Any]) -> Pricing:
        values = {}
        for key in PRICE_FIELDS:
            value = float(raw.get(key) or 0.0)
            values[key] = value if key in _PER_UNIT_FIELDS else value / 1_000_000
        return cls(**values)

    def is_zero(self) -> bool:
        return not any(getattr(self, key) for key in PRICE_FIELDS)


@dataclass(slots=True)
class ModelSpec:
    """One model as one connection serves it."""

    id: str
    upstream: str
    name: str = ""
    created: int = 0
    description: str = ""
    context_length: int | None = None
    max_completion_tokens: int | None = None
    # An embedding model's default output vector size (its `dimensions` when a request names none); None for others.
    dimensions: int | None = None
    input_modalities: list[str] = field(default_factory=lambda: ["text"])
    output_modalities: list[str] = field(default_factory=lambda: ["text"])
    tokenizer: str = "Other"
    reasoning: bool = False
    pricing: Pricing = field(default_factory=Pricing)
    supported_parameters: list[str] = field(default_factory=list)
    # Whether `pricing` is known (from the catalog or the configuration, `pricing: free` included). An unpriced
    # model (discovered, ad hoc, configured without prices) would cost $0 in the records: keys with a credit limit
    # are refused on it rather than served for free.
    priced: bool = False


@dataclass(slots=True)
class Vendor:
    key: str
    type: str
    base_url: str
    env: list[str]
    env_is_base_url: bool
    drop_params: frozenset[str]
    supported_parameters: list[str]
    models: list[ModelSpec]
    responses_api: bool = False  # also serves OpenAI's Responses API (POST /responses): Responses pass through


@dataclass  # not slots: `by_id` is a cached_property, which needs an instance __dict__
class Catalog:
    date: str
    vendors: dict[str, Vendor]

    @functools.cached_property
    def by_id(self) -> dict[str, ModelSpec]:
        """Every catalog model by its id (the first vendor listing an id is its home)."""
        out: dict[str, ModelSpec] = {}
        for vendor in self.vendors.values():
            for model in vendor.models:
                out.setdefault(model.id, model)
        return out

    def vendor_for_url(self, base_url: str) -> Vendor | None:
        host = _host(base_url)
        for vendor in self.vendors.values():
            if host and _host(vendor.base_url) == host and vendor.key != "ollama":
                return vendor
        return None


def _host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].lower()


def model_from_dict(raw: dict[str, Any], *, vendor_params: list[str], base: ModelSpec | None = None) -> ModelSpec:
    """Build a ModelSpec from catalog/config data; fields missing in `raw` come from `base`."""
    spec = ModelSpec(id=raw["id"], upstream=raw.get("upstream") or (base.upstream if base else _default_upstream(raw["id"])))
    if base is not None:
        for name in ModelSpec.__slots__:
            if name not in ("id", "upstream"):
                setattr(spec, name, getattr(base, name))
    for key in ("name", "created", "description", "context_length", "max_completion_tokens", "dimensions", "tokenizer",
                "reasoning"):
        if raw.get(key) is not None:
            setattr(spec, key, raw[key])
    for key in ("input_modalities", "output_modalities"):
        if raw.get(key) is not None:
            setattr(spec, key, list(raw[key]))
    if raw.get("pricing") == "free":
        spec.pricing = Pricing()  # free on purpose (a local model, say)
        spec.priced = True
    elif raw.get("pricing") is not None:
        spec.pricing = Pricing.from_per_million(raw["pricing"])
        spec.priced = True
    if raw.get("supported_parameters") is not None:
        spec.supported_parameters = list(raw["supported_parameters"])
    elif base is None:
        params = list(vendor_params)
        if spec.reasoning:
            params += [p for p in REASONING_PARAMETERS if p not in params]
        spec.supported_parameters = params
    if not spec.name:
        spec.name = spec.id
    return spec


def _default_upstream(model_id: str) -> str:
    return model_id.split("/", 1)[1] if "/" in model_id else model_id


@functools.cache
def load_catalog() -> Catalog:
    text = resources.files("crossroads.catalog").joinpath("catalog.yaml").read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    raw = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    vendors: dict[str, Vendor] = {}
    for key, data in raw["vendors"].items():
        params = list(data.get("supported_parameters") or [])
        vendors[key] = Vendor(
            key=key,
            type=data["type"],
            base_url=data["base_url"].rstrip("/"),
            env=list(data.get("env") or []),
            env_is_base_url=bool(data.get("env_is_base_url")),
            drop_params=frozenset(data.get("drop_params") or ()),
            supported_parameters=params,
            models=[model_from_dict(m, vendor_params=params) for m in data.get("models") or []],
            responses_api=bool(data.get("responses_api")),
        )
    return Catalog(date=str(raw["date"]), vendors=vendors)
