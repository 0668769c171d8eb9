"""OpenAI's legacy Completions API (`POST /completions`) as a front format.

The prompt becomes one user message of a canonical chat request; the chat result comes back as `text_completion`
objects. Only single-prompt, single-choice requests are served: batched prompts and token-id prompts are refused,
and parameters with no chat counterpart (echo, suffix, best_of, logprobs) are dropped and reported.
"""

from __future__ import annotations

from typing import Any

import orjson

from crossroads.canonical import Usage, text_of
from crossroads.errors import GatewayError

# Parameters with the same meaning in the canonical chat request -> (accepted types, description for errors).
_PASSTHROUGH: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"),
    "max_tokens": ((int,), "an integer"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
    "top_k": ((int, float), "a number"),
    "min_p": ((int, float), "a number"),
    "top_a": ((int, float), "a number"),
    "frequency_penalty": ((int, float), "a number"),
    "presence_penalty": ((int, float), "a number"),
    "repetition_penalty": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
    "logit_bias": ((dict,), "an object"),
    "stop": ((str, list), "a string or an array of strings"),
    "user": ((str,), "a string"),
    "stream_options": ((dict,), "an object"),
    "reasoning": ((dict,), "an object"),
    "include_reasoning": ((bool,), "a boolean"),
    "response_format": ((dict,), "an object"),
    "provider": ((dict,), "an object"),
    "models": ((list,), "an array of model ids"),
    "transforms": ((list,), "an array of strings"),
    "plugins": ((list,), "an array"),
    "route": ((str,), "a string"),
    "usage": ((dict,), "an object"),
}
# Completions-only parameters: their default values are what a chat request does anyway.
_DEFAULTS: dict[str, Any] = {"echo": False, "best_of": 1, "n": 1, "logprobs": None, "suffix": None}
_FINISH_REASONS = frozenset({"stop", "length", "content_filter"})  # all openai.types.CompletionChoice allows


def _invalid(field_name: str, problem: str) -> GatewayError:
    return GatewayError(400, f"Invalid request: '{field_name}' {problem}", metadata={"field": field_name})


def completions_to_chat(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A Completions request -> (canonical chat request, names of the fields that were dropped)."""
    if not isinstance(body, dict):
        raise GatewayError(400, "Invalid request: the body must be a JSON object")
    model = body.get("model")
    if model is None and isinstance(body.get("models"), list) and body["models"]:
        model = body["models"][0]  # as in chat: OpenRouter's fallback list may stand in for the model
    if not isinstance(model, str) or not model:
        raise _invalid("model", "is required (a non-empty string)")
    chat: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": _prompt(body.get("prompt"))}]}
    dropped: list[str] = []
    for name, value in body.items():
        if name in ("model", "prompt") or value is None:
            continue
        if name in _PASSTHROUGH:
            chat[name] = _checked(name, value)
        elif name not in _DEFAULTS or value != _DEFAULTS[name]:
            dropped.append(name)
    return chat, dropped


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if prompt is None:
        raise _invalid("prompt", "is required")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise _invalid("prompt", "must be a single prompt; send one request per prompt")
    raise _invalid("prompt", "must be a string or an array of one string (token-id prompts are not supported)")


def _checked(name: str, value: Any) -> Any:
    kinds, expected = _PASSTHROUGH[name]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise _invalid(name, f"must be {expected}")
    if name == "max_tokens" and isinstance(value, int) and value < 1:  # an int: checked above
        raise _invalid(name, f"must be at least 1, got {value}")
    if name == "stop" and isinstance(value, list) and not all(isinstance(s, str) for s in value):
        raise _invalid(name, f"must be {expected}")
    return value


def _finish_reason(value: str | None) -> str:
    # tool_calls cannot happen without tools, and an error finish has no legacy spelling: both read as a stop.
    return value if value in _FINISH_REASONS else "stop"


def _usage(usage: Usage, cost: float) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "cost": cost}


class CompletionsRenderer:
    """Renders canonical results as `text_completion` objects and SSE chunks."""

    __slots__ = ("completion_id", "model", "created")

    def __init__(self, completion_id: str, model: str, created: int) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = created

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.completion_id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices}

    def response(self, completion: dict[str, Any], usage: Usage, cost: float) -> dict[str, Any]:
        choices = completion.get("choices") or [{}]
        choice = choices[0]
        text = text_of((choice.get("message") or {}).get("content"))
        out = self._envelope([{"text": text, "index": 0, "logprobs": None,
                               "finish_reason": _finish_reason(choice.get("finish_reason"))}])
        out["usage"] = _usage(usage, cost)
        return out

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """One canonical chunk as a `data:` frame; empty when it carries neither text nor a finish reason
        (role-only and reasoning chunks have no legacy form)."""
        choice = next((c for c in chunk.get("choices") or () if isinstance(c, dict) and c.get("index", 0) == 0),
                      None)
        if choice is None:
            return b""
        content = (choice.get("delta") or {}).get("content")
        text = content if isinstance(content, str) else ""
        finish = choice.get("finish_reason")
        if not text and finish is None:
            return b""
        payload = self._envelope([{"text": text, "index": 0, "logprobs": None,
                                   "finish_reason": None if finish is None else _finish_reason(finish)}])
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def finish(self, usage: Usage, cost: float) -> bytes:
        payload = self._envelope([])
        payload["usage"] = _usage(usage, cost)
        return b"data: " + orjson.dumps(payload) + b"\n\ndata: [DONE]\n\n"
