"""Features only some upstreams honour (OpenRouter's plugins, the :online suffix, output modalities) are never
dropped silently: the response header X-Crossroads-Dropped and the generation record name them, and with
provider.require_parameters the request is refused instead (404 naming the field)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import MASTER_KEY

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]


def post(gateway, **body) -> httpx.Response:
    return httpx.post(gateway.url + "/api/v1/chat/completions", headers=AUTH, timeout=20,
                      json={"messages": HELLO, **body})


def record_events(gateway, generation_id: str) -> list[dict]:
    for _ in range(100):
        resp = httpx.get(gateway.url + "/api/v1/generation", params={"id": generation_id}, headers=AUTH)
        if resp.status_code == 200:
            return resp.json()["data"].get("events") or []
        time.sleep(0.05)
    raise AssertionError("no record")


@pytest.mark.parametrize("body", [
    {"model": "openai/gpt-4o-mini", "plugins": [{"id": "web"}]},
    {"model": "openai/gpt-4o-mini:online"},
    {"model": "openai/gpt-4o-mini", "plugins": [{"id": "web"}], "stream": True},
])
def test_web_plugin_dropped_is_named(gateway, fake_openai, body) -> None:
    resp = post(gateway, **body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-crossroads-dropped"] == "plugins.web"
    assert "plugins" not in fake_openai.last.json
    assert fake_openai.last.json["model"] == "gpt-4o-mini"
    if not body.get("stream"):
        assert resp.json()["model"] == "openai/gpt-4o-mini"
    events = record_events(gateway, resp.headers["x-generation-id"])
    assert {"type": "dropped_field", "field": "plugins.web"} in events


def test_image_output_dropped_for_a_text_model(gateway, fake_anthropic) -> None:
    resp = post(gateway, model="anthropic/claude-sonnet-4", modalities=["image", "text"])
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-crossroads-dropped"] == "modalities.image"


def test_honoured_features_are_not_reported(gateway, fake_openai) -> None:
    resp = post(gateway, model="openai/gpt-4o-mini", plugins=[{"id": "context-compression"}], modalities=["text"])
    assert resp.status_code == 200
    assert "x-crossroads-dropped" not in resp.headers


@pytest.mark.parametrize("body", [
    {"model": "openai/gpt-4o-mini", "plugins": [{"id": "web"}]},
    {"model": "openai/gpt-4o-mini:online"},
    {"model": "anthropic/claude-sonnet-4", "modalities": ["image", "text"]},
])
def test_require_parameters_refuses_what_cannot_be_honoured(gateway, fake_openai, fake_anthropic, body) -> None:
    resp = post(gateway, provider={"require_parameters": True}, **body)
    assert resp.status_code == 404, resp.text
    message = resp.json()["error"]["message"]
    assert "require_parameters" in message and ("plugins.web" in message or "modalities.image" in message)
    assert not fake_openai.requests and not fake_anthropic.requests
