"""End to end: the legacy Completions API (POST /api/v1/completions) through the official `openai` SDK -> a real
Crossroads process -> fake upstreams of each provider type.

The prompt must reach every upstream as one user message; answers come back as `text_completion` objects.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from crossroads.formats.chat import stream_error_type
from tests.conftest import MASTER_KEY, assert_ends_with_done, expected_cost
from tests.fakes.base import FakeUpstream, Fault, Reply

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def upstream_messages(fake: FakeUpstream) -> list[tuple[str, str]]:
    """(role, text) of every message the upstream received, system prompt included, in its own shape."""
    body = fake.last.json

    def text(value: Any) -> str:
        return value if isinstance(value, str) else "".join(p.get("text", "") for p in value)

    if fake.name == "anthropic":
        system = [("system", text(body["system"]))] if body.get("system") else []
        return system + [(m["role"], text(m["content"])) for m in body["messages"]]
    if fake.name == "gemini":
        system = [("system", text(body["systemInstruction"]["parts"]))] if body.get("systemInstruction") else []
        return system + [(c["role"], text(c["parts"])) for c in body["contents"]]
    return [(m["role"], text(m["content"])) for m in body["messages"]]


def upstream_limits(fake: FakeUpstream) -> tuple[int | None, list[str] | str | None]:
    """(max tokens, stop sequences) as the upstream received them."""
    body = fake.last.json
    if fake.name == "anthropic":
        return body.get("max_tokens"), body.get("stop_sequences")
    if fake.name == "gemini":
        config = body.get("generationConfig") or {}
        return config.get("maxOutputTokens"), config.get("stopSequences")
    return body.get("max_completion_tokens", body.get("max_tokens")), body.get("stop")


def test_completion(client: openai.OpenAI, target) -> None:
    model, connection, fake = target
    fake.reply(Reply(text=" there was a fox.", prompt_tokens=14, completion_tokens=6))
    raw = client.completions.with_raw_response.create(model=model, prompt="Once upon a time", max_tokens=20,
                                                      stop=["END", "###"])
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert raw.headers["x-generation-id"] == "gen-" + completion.id.removeprefix("cmpl-")
    assert raw.headers["x-crossroads-connection"] == connection
    assert completion.model == model
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert (choice.index, choice.text, choice.finish_reason) == (0, " there was a fox.", "stop")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (14, 6, 20)
    assert completion.usage.model_extra["cost"] == pytest.approx(expected_cost(14, 6))
    # One user message holding the prompt, nothing else; the limits in the upstream's own fields.
    assert upstream_messages(fake) == [("user", "Once upon a time")]
    assert upstream_limits(fake) == (20, ["END", "###"])


def test_whitespace_stop_sequence(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    client.completions.create(model=model, prompt="List:", stop=["\n\n", "END"])
    stop = upstream_limits(fake)[1]
    # Anthropic refuses whitespace-only stop sequences, so only that upstream goes without it.
    assert stop == (["END"] if fake.name == "anthropic" else ["\n\n", "END"])


def test_stream(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="one two three four five", prompt_tokens=9, completion_tokens=5))
    chunks = list(client.completions.create(model=model, prompt="Count to five:", stream=True, max_tokens=30,
                                            stop="END"))
    assert all(c.object == "text_completion" and c.model == model for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    text = "".join(choice.text for c in chunks for choice in c.choices)
    assert text == "one two three four five"
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # really streamed, piece by piece
    finishes = [choice.finish_reason for c in chunks for choice in c.choices if choice.finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (9, 5, 14)
    assert last.usage.model_extra["cost"] == pytest.approx(expected_cost(9, 5))
    assert upstream_messages(fake) == [("user", "Count to five:")]
    max_tokens, stop = upstream_limits(fake)
    assert max_tokens == 30
    assert stop in ("END", ["END"])  # OpenAI takes the string as it is; the others take a list
    if fake.name == "gemini":
        assert fake.last.path.endswith(":streamGenerateContent")
    else:
        assert fake.last.json["stream"] is True


def test_stream_framing_ends_with_done(gateway, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="a b"))
    assert_ends_with_done(gateway, "/api/v1/completions", {"model": model, "prompt": "x", "stream": True})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_length_finish(client: openai.OpenAI, target, stream: bool) -> None:
    model, _, fake = target
    fake.reply(Reply(text="cut short", finish="length", completion_tokens=3))
    if stream:
        chunks = list(client.completions.create(model=model, prompt="go", max_tokens=3, stream=True))
        finishes = [choice.finish_reason for c in chunks for choice in c.choices if choice.finish_reason]
        text = "".join(choice.text for c in chunks for choice in c.choices)
    else:
        completion = client.completions.create(model=model, prompt="go", max_tokens=3)
        finishes = [completion.choices[0].finish_reason]
        text = completion.choices[0].text
    assert finishes == ["length"]
    assert text == "cut short"
    assert upstream_limits(fake)[0] == 3


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_generation_record(client: openai.OpenAI, gateway, target, stream: bool) -> None:
    model, connection, fake = target
    fake.reply(Reply(text="Counted.", prompt_tokens=200, completion_tokens=40))
    raw = client.completions.with_raw_response.create(model=model, prompt="bill me", stream=stream)
    if stream:
        list(raw.parse())
    generation_id = raw.headers["x-generation-id"]
    resp = httpx.get(gateway.url + "/api/v1/generation", headers=AUTH, params={"id": generation_id}, timeout=10)
    assert resp.status_code == 200, resp.text
    record = resp.json()["data"]
    assert record["endpoint"] == "completions"
    assert record["model"] == model and record["provider_name"] == connection
    assert (record["tokens_prompt"], record["tokens_completion"]) == (200, 40)
    assert record["total_cost"] == pytest.approx(expected_cost(200, 40))
    assert record["streamed"] is stream and record["finish_reason"] == "stop"


def test_prompt_as_a_list_of_one(client: openai.OpenAI, fake_openai) -> None:
    client.completions.create(model="openai/gpt-4o-mini", prompt=["Just one prompt"])
    assert fake_openai.last.json["messages"] == [{"role": "user", "content": "Just one prompt"}]


@pytest.mark.parametrize(("body", "field"), [
    ({"model": "openai/gpt-4o-mini"}, "prompt"),
    ({"model": "openai/gpt-4o-mini", "prompt": None}, "prompt"),
    ({"model": "openai/gpt-4o-mini", "prompt": ["first", "second"]}, "prompt"),
    ({"model": "openai/gpt-4o-mini", "prompt": [1212, 318]}, "prompt"),
    ({"model": "openai/gpt-4o-mini", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "openai/gpt-4o-mini", "prompt": "x", "stop": [1, 2]}, "stop"),
    ({"prompt": "x"}, "model"),
], ids=["missing-prompt", "null-prompt", "batched-prompts", "token-ids", "zero-max-tokens", "stop-numbers",
        "missing-model"])
def test_bad_request_is_400_naming_the_field(client: openai.OpenAI, fake_openai, body: dict, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/completions", cast_to=httpx.Response, body=body)
    assert err.value.status_code == 400
    assert f"'{field}'" in err.value.message
    assert not fake_openai.requests


def test_unknown_model_is_404(client: openai.OpenAI, fake_openai) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nobody/no-such-model", prompt="hi")
    assert "nobody/no-such-model" in err.value.message
    assert not fake_openai.requests


def test_bad_key_is_401(gateway, fake_openai) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key="sk-or-v1-" + "0" * 64, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.completions.create(model="openai/gpt-4o-mini", prompt="hi")
    assert not fake_openai.requests


def test_mid_stream_error_chunk_has_openrouters_error_shape(gateway, target) -> None:
    """The error chunk of a legacy completions stream carries the same error object as a chat stream's:
    code, message and metadata.error_type (OpenRouter's canonical type for the status)."""
    model, _, fake = target
    fake.reply(Reply(text="alpha beta gamma delta", chunks=4))
    fake.fault(Fault(error_event_after=2, message="upstream overloaded"))
    with httpx.stream("POST", gateway.url + "/api/v1/completions", headers=AUTH, timeout=10,
                      json={"model": model, "prompt": "go", "stream": True}) as resp:
        assert resp.status_code == 200
        events = [json.loads(line[len("data: "):]) for line in resp.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    [failed] = [event for event in events if "error" in event]
    assert failed["object"] == "text_completion" and failed["choices"][0]["finish_reason"] == "error"
    error = failed["error"]
    assert "upstream overloaded" in error["message"] and isinstance(error["code"], int)
    assert error["metadata"]["error_type"] == stream_error_type(error["code"]) != "unmapped"


def test_mid_stream_error_raised_by_the_sdk(client: openai.OpenAI, target) -> None:
    model, _, fake = target
    fake.reply(Reply(text="alpha beta gamma delta epsilon zeta", chunks=6))
    fake.fault(Fault(error_event_after=2, message="upstream overloaded"))
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for chunk in client.completions.create(model=model, prompt="go", stream=True):
            received.extend(choice.text for choice in chunk.choices)
    assert "upstream overloaded" in err.value.message
    assert "alpha beta gamma delta epsilon zeta".startswith("".join(received))
