"""The legacy Completions front format: request -> canonical chat, canonical results -> text_completion objects."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types import Completion

from crossroads.errors import GatewayError
from crossroads.formats.completions import CompletionsRenderer, completions_to_chat
from crossroads.providers.base import Usage, choice_chunk

CREATED = 1_760_000_000

REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("string prompt",
     {"model": "openai/gpt-3.5-turbo-instruct", "prompt": "Say this is a test"},
     {"model": "openai/gpt-3.5-turbo-instruct", "messages": [{"role": "user", "content": "Say this is a test"}]},
     []),
    ("a list of one prompt and the chat parameters",
     {"model": "m", "prompt": ["Once upon a time"], "max_tokens": 16, "temperature": 0.5, "top_p": 1,
      "stop": ["\n", "END"], "stream": True, "stream_options": {"include_usage": True}, "seed": 3,
      "frequency_penalty": 0.1, "presence_penalty": 0.2, "logit_bias": {"50256": -100}, "user": "u-1"},
     {"model": "m", "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 16,
      "temperature": 0.5, "top_p": 1, "stop": ["\n", "END"], "stream": True,
      "stream_options": {"include_usage": True}, "seed": 3, "frequency_penalty": 0.1, "presence_penalty": 0.2,
      "logit_bias": {"50256": -100}, "user": "u-1"},
     []),
    ("OpenRouter extras pass through",
     {"model": "m", "prompt": "x", "provider": {"order": ["oai"]}, "reasoning": {"effort": "low"}, "top_k": 40},
     {"model": "m", "messages": [{"role": "user", "content": "x"}], "provider": {"order": ["oai"]},
      "reasoning": {"effort": "low"}, "top_k": 40},
     []),
    ("defaults of completions-only parameters are no loss",
     {"model": "m", "prompt": "x", "n": 1, "best_of": 1, "echo": False, "logprobs": None, "suffix": None},
     {"model": "m", "messages": [{"role": "user", "content": "x"}]},
     []),
    ("completions-only parameters and unknown fields are dropped and reported",
     {"model": "m", "prompt": "x", "n": 2, "best_of": 3, "echo": True, "logprobs": 5, "suffix": "}", "wat": 1},
     {"model": "m", "messages": [{"role": "user", "content": "x"}]},
     ["n", "best_of", "echo", "logprobs", "suffix", "wat"]),
    ("model from OpenRouter's models list",
     {"models": ["a/b", "c/d"], "prompt": "x"},
     {"model": "a/b", "messages": [{"role": "user", "content": "x"}], "models": ["a/b", "c/d"]},
     []),
]


@pytest.mark.parametrize(("body", "expected", "dropped"), [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS])
def test_request_mapping(body: dict[str, Any], expected: dict[str, Any], dropped: list[str]) -> None:
    chat, got_dropped = completions_to_chat(body)
    assert chat == expected
    assert got_dropped == dropped


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("no model", {"prompt": "x"}, "model"),
    ("model not a string", {"model": 4, "prompt": "x"}, "model"),
    ("no prompt", {"model": "m"}, "prompt"),
    ("several prompts", {"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ("token ids", {"model": "m", "prompt": [1, 2, 3]}, "prompt"),
    ("empty prompt list", {"model": "m", "prompt": []}, "prompt"),
    ("max_tokens zero", {"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("max_tokens a string", {"model": "m", "prompt": "x", "max_tokens": "10"}, "max_tokens"),
    ("stream not a boolean", {"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
    ("temperature a boolean", {"model": "m", "prompt": "x", "temperature": True}, "temperature"),
    ("stop with a number", {"model": "m", "prompt": "x", "stop": ["a", 1]}, "stop"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        completions_to_chat(body)
    assert caught.value.status == 400
    assert caught.value.metadata == {"field": field}


def renderer() -> CompletionsRenderer:
    return CompletionsRenderer("gen-1-abc", "openai/gpt-4o-mini", CREATED)


@pytest.mark.parametrize(("finish_reason", "expected"), [
    ("stop", "stop"), ("length", "length"), ("content_filter", "content_filter"), ("tool_calls", "stop"),
    ("error", "stop"), (None, "stop"),
])
def test_response(finish_reason: str | None, expected: str) -> None:
    completion = {"choices": [{"index": 0, "finish_reason": finish_reason, "native_finish_reason": finish_reason,
                               "message": {"role": "assistant", "content": "This is a test.",
                                           "reasoning": "hidden in this format"}}]}
    out = renderer().response(completion, Usage(prompt_tokens=5, completion_tokens=7, seen=True), 0.000123)
    assert out == {
        "id": "gen-1-abc", "object": "text_completion", "created": CREATED, "model": "openai/gpt-4o-mini",
        "choices": [{"text": "This is a test.", "index": 0, "logprobs": None, "finish_reason": expected}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cost": 0.000123},
    }
    parsed = Completion.model_validate(out)
    assert parsed.choices[0].text == "This is a test."


def test_response_without_content() -> None:
    out = renderer().response({"choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                                            "finish_reason": "length"}]}, Usage(), 0.0)
    assert out["choices"] == [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]
    Completion.model_validate(out)


def frames(data: bytes) -> list[Any]:
    assert data.endswith(b"\n\n")
    out = []
    for frame in data.decode().split("\n\n")[:-1]:
        assert frame.startswith("data: ")
        body = frame[len("data: "):]
        out.append(body if body == "[DONE]" else orjson.loads(body))
    return out


def test_stream() -> None:
    r = renderer()
    chunks = [choice_chunk({"role": "assistant", "content": ""}), choice_chunk({"reasoning": "hmm"}),
              choice_chunk({"content": "Hello"}), choice_chunk({"content": " there"}),
              choice_chunk({}, "length", "max_tokens"), {"choices": []}]
    rendered = [r.chunk(c) for c in chunks]
    assert rendered[0] == rendered[1] == rendered[5] == b""  # nothing a legacy client could show
    data = b"".join(rendered) + r.finish(Usage(prompt_tokens=3, completion_tokens=2), 0.5)
    stamp = {"id": "gen-1-abc", "object": "text_completion", "created": CREATED, "model": "openai/gpt-4o-mini"}
    parsed = frames(data)
    assert parsed == [
        {**stamp, "choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": None}]},
        {**stamp, "choices": [{"text": " there", "index": 0, "logprobs": None, "finish_reason": None}]},
        {**stamp, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]},
        {**stamp, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                                           "cost": 0.5}},
        "[DONE]",
    ]
    # Mid-stream chunks carry finish_reason null, as OpenAI's do (the SDK builds them without validation);
    # the closing chunk and the usage chunk are complete Completion objects.
    for payload in parsed[2:4]:
        Completion.model_validate(payload)


def test_stream_tool_calls_finish_reads_as_stop() -> None:
    out = frames(renderer().chunk(choice_chunk({}, "tool_calls", "tool_use")))
    assert out[0]["choices"][0]["finish_reason"] == "stop"
