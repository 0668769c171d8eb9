"""POST /embeddings: OpenAI's embeddings request and response as OpenRouter serves them.

The request is checked here and kept in OpenAI's own shape (it is also what every OpenAI-compatible upstream takes):
`model` (or `models` for fallbacks), `input` as a string, an array of strings, an array of token ids or an array of
such arrays, `dimensions`, `encoding_format` (float | base64), `user`, `input_type`, and OpenRouter's `provider`
preferences. `input` is normalised to a list (of strings, or of token-id lists), so the providers, the credit bound
and the rate-limit estimate read one shape.

Each upstream kind has its own embeddings translator (providers/openai.py, providers/gemini.py) whose result is
`{"data": [vectors], "model": ...}`; the renderer here stamps OpenRouter's envelope on it: the `gen-` id, the model
and provider that served, and the usage with its cost. Embeddings never stream.
"""

from __future__ import annotations

import base64
import struct
from typing import TYPE_CHECKING, Any

import orjson

from crossroads.accounting.pricing import request_cost
from crossroads.errors import GatewayError
from crossroads.formats.base import Parsed, ResponseStore
from crossroads.formats.chat import check_routing_fields, parse_json_object

if TYPE_CHECKING:
    from crossroads.canonical import Usage
    from crossroads.catalog import Pricing
    from crossroads.providers.base import RequestContext, Translator
    from crossroads.routing.registry import Connection

MAX_INPUTS = 2048  # OpenAI's cap on inputs per request (Gemini's batch is smaller: its translator says so)
ENCODINGS = ("float", "base64")


def _refuse(field: str, problem: str) -> GatewayError:
    return GatewayError(400, f"Invalid request: '{field}' {problem}", metadata={"field": field})


def check_embeddings_body(body: dict[str, Any]) -> dict[str, Any]:
    """Check (and normalise in place) an embeddings request: 400 naming the field for anything wrong."""
    check_routing_fields(body)
    if body.get("stream"):
        raise _refuse("stream", "is not supported: embeddings are answered whole")
    body["input"] = _inputs(body.get("input"))
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise _refuse("dimensions", "must be a positive integer")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise _refuse("encoding_format", "must be 'float' or 'base64'")
    input_type = body.get("input_type")
    if input_type is not None and not isinstance(input_type, str):
        raise _refuse("input_type", "must be a string")
    return body


def _inputs(value: Any) -> list[Any]:
    """`input` as a non-empty list of non-empty strings, or of non-empty token-id lists."""
    if value is None:
        raise GatewayError(400, "Invalid request: 'input' is required", metadata={"field": "input"})
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_token(t) for t in value):
        value = [value]  # one input given as token ids
    if not isinstance(value, list) or not value:
        raise _refuse("input", "must be a non-empty string, an array of strings, an array of token ids or an "
                               "array of arrays of token ids")
    if len(value) > MAX_INPUTS:
        raise _refuse("input", f"has {len(value)} items; at most {MAX_INPUTS} inputs fit in one request")
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise _refuse(f"input[{i}]", "is empty; every input needs some text")
        elif isinstance(item, list):
            if not item or not all(_is_token(t) for t in item):
                raise _refuse(f"input[{i}]", "must be a non-empty array of token ids (non-negative integers)")
        elif isinstance(item, dict):
            raise _refuse(f"input[{i}]", "is a multimodal input; Crossroads embeds text and token ids only")
        else:
            raise _refuse(f"input[{i}]", "must be a string or an array of token ids")
    kinds = {isinstance(item, str) for item in value}
    if len(kinds) > 1:
        raise _refuse("input", "mixes strings and token arrays; send one kind")
    return value


def _is_token(value: Any) -> bool:
    return type(value) is int and value >= 0


def as_base64(vector: list[float]) -> str:
    """A vector as OpenAI's base64 encoding: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class EmbeddingsFront:
    api_type = "embeddings"
    # Every upstream kind answers through this front's own translators (there is no chat translation to fall back
    # to), and the renderer re-renders their results (the gen- id, provider and cost are the gateway's).
    native_only = True

    async def parse(self, request: Any, responses: ResponseStore) -> Parsed:
        return Parsed(check_embeddings_body(parse_json_object(request.body)))

    def renderer(self, *, generation_id: str, model_id: str, provider: str, parsed: Parsed,
                 usage: Usage) -> EmbeddingsRenderer:
        return EmbeddingsRenderer(generation_id, model_id, provider, parsed.body.get("encoding_format") or "float")

    def native_translator(self, connection: Connection, ctx: RequestContext, parsed: Parsed) -> Translator:
        translator = connection.adapter.native_translator(self.api_type, ctx, parsed.body, parsed.extra)
        if translator is None:
            raise GatewayError(400, f"Connection {connection.name!r} ({connection.config.type}) has no embeddings "
                                    f"API: model {ctx.model.id!r} cannot embed", metadata={"code": "no_embeddings"})
        return translator

    def error_body(self, error: GatewayError) -> bytes:
        return error.body()


class EmbeddingsRenderer:
    __slots__ = ("generation_id", "model_id", "provider", "encoding")

    def __init__(self, generation_id: str, model_id: str, provider: str, encoding: str) -> None:
        self.generation_id = generation_id
        self.model_id = model_id
        self.provider = provider
        self.encoding = encoding

    def completion(self, result: dict[str, Any], usage: Usage, pricing: Pricing) -> bytes:
        """`result["data"]`: one vector per input, in input order, as float lists (or base64 strings when the
        upstream already encoded them as asked)."""
        data = []
        for index, vector in enumerate(result["data"]):
            if self.encoding == "base64" and not isinstance(vector, str):
                try:
                    vector = as_base64(vector)
                except (struct.error, OverflowError):  # numbers the upstream sent that are not float32s
                    raise GatewayError(502, f"Upstream {self.provider} sent an embedding that is not a list of "
                                            "float32 numbers", metadata={"provider_name": self.provider}) from None
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return orjson.dumps({
            "id": self.generation_id, "object": "list", "data": data, "model": self.model_id,
            "provider": self.provider,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens,
                      "cost": request_cost(usage, pricing)},
        })

    # Embeddings never stream: the stream half of the renderer contract is never called.
    def chunk(self, chunk: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def end(self, usage: Usage, pricing: Pricing, finish_reason: str | None, native: str | None) -> bytes:
        raise NotImplementedError

    def error_chunk(self, status: int, message: str, metadata: dict[str, Any] | None) -> bytes:
        raise NotImplementedError
