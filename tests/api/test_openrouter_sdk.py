"""The official `openrouter` SDK validates every response with its own models: if it accepts ours, its users will."""

from __future__ import annotations

import pytest
from openrouter import OpenRouter, errors

from tests.conftest import MASTER_KEY
from tests.fakes.base import Reply, ToolCall

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash"]


@pytest.fixture
def client(gateway):
    with OpenRouter(api_key=MASTER_KEY, server_url=gateway.url + "/api/v1") as sdk:
        yield sdk


@pytest.mark.parametrize("model", MODELS)
def test_chat_send(client, model, fake_openai, fake_anthropic, fake_gemini) -> None:
    result = client.chat.send(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert result.id.startswith("gen-")
    assert result.model == model
    assert result.choices[0].message.content == "Hello from the fake upstream."
    assert result.usage.total_tokens == 18


@pytest.mark.parametrize("model", MODELS)
def test_chat_send_stream(client, model, fake_openai, fake_anthropic, fake_gemini) -> None:
    chunks = list(client.chat.send(model=model, messages=[{"role": "user", "content": "Hi"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18


def test_chat_send_tool_call(client, fake_anthropic) -> None:
    fake_anthropic.reply(Reply(text=None, finish="tool_calls", tool_calls=[ToolCall("lookup", {"q": "x"})]))
    result = client.chat.send(model="anthropic/claude-sonnet-4", messages=[{"role": "user", "content": "find x"}],
                              tools=[{"type": "function", "function": {"name": "lookup", "parameters": {
                                  "type": "object", "properties": {"q": {"type": "string"}}}}}])
    call = result.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup"
    assert result.choices[0].finish_reason == "tool_calls"


def test_errors_surface_as_sdk_errors(client) -> None:
    with pytest.raises(errors.OpenRouterError) as err:
        client.chat.send(model="no/such-model", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 404


def test_provider_max_price_as_the_sdk_sends_it(client) -> None:
    """The SDK takes and sends max_price values as decimal strings only (its schema's type; a number is silently left
    out of the request): a limit the model fits serves it, one it does not is OpenRouter's 404 naming the field."""
    import httpx

    sent: list[bytes] = []
    with OpenRouter(api_key=MASTER_KEY, server_url=client.sdk_configuration.server_url,
                    client=httpx.Client(event_hooks={"request": [lambda r: sent.append(r.content)]})) as sdk:
        ok = sdk.chat.send(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                           provider={"max_price": {"prompt": "100", "completion": "100"}})
        assert ok.choices[0].message.content == "Hello from the fake upstream."
        assert b'"max_price":{' in sent[-1] and b'"prompt":"100"' in sent[-1]  # strings, as its schema says
        with pytest.raises(errors.OpenRouterError) as refused:
            sdk.chat.send(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                          provider={"max_price": {"prompt": "0.000001"}})
    assert refused.value.status_code == 404 and "provider.max_price.prompt" in refused.value.body
