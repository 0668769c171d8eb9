"""Model names as clients copy them from vendor and product docs: bare upstream ids, vendor-prefixed dated ids and
snapshots resolve to the served model when that is unambiguous; otherwise the 404 says what was probably meant."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from crossroads.config import load_config
from crossroads.errors import GatewayError
from crossroads.routing.registry import build_registry
from tests.conftest import MASTER_KEY

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("asked", "served", "upstream"), [
    ("gpt-4o-mini", "openai/gpt-4o-mini", "gpt-4o-mini"),  # what the OpenAI SDK docs use
    ("claude-sonnet-4-20250514", "anthropic/claude-sonnet-4", "claude-sonnet-4-20250514"),  # the Anthropic SDK's
    ("anthropic/claude-sonnet-4-20250514", "anthropic/claude-sonnet-4", "claude-sonnet-4-20250514"),  # the seeds'
    ("openai/gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini", "gpt-4o-mini"),  # a dated snapshot of a served id
    ("gemini-2.5-flash", "google/gemini-2.5-flash", "gemini-2.5-flash"),
])
def test_unambiguous_names_resolve(gateway, fake_openai, fake_anthropic, fake_gemini, asked, served,
                                   upstream) -> None:
    resp = httpx.post(gateway.url + "/api/v1/chat/completions", headers=AUTH, json={"model": asked,
                                                                                     "messages": HELLO})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == served
    sent = [f for f in (fake_openai, fake_anthropic, fake_gemini) if f.requests]
    assert len(sent) == 1
    if sent[0] is fake_gemini:
        assert f"/models/{upstream}:" in sent[0].last.path
    else:
        assert sent[0].last.json["model"] == upstream


def test_unknown_name_suggests_the_closest_ids(gateway) -> None:
    resp = httpx.post(gateway.url + "/api/v1/chat/completions", headers=AUTH,
                      json={"model": "claude-sonet-4", "messages": HELLO})
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert "did you mean 'anthropic/claude-sonnet-4'" in error["message"]
    assert error["metadata"]["suggestions"][0] == "anthropic/claude-sonnet-4"
    far = httpx.post(gateway.url + "/api/v1/chat/completions", headers=AUTH,
                     json={"model": "zzzz-qqqq", "messages": HELLO})
    assert far.status_code == 404 and "did you mean" not in far.json()["error"]["message"]


def test_ambiguous_names_are_never_guessed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"server": {"master_key": MASTER_KEY, "data_dir": str(tmp_path)}, "providers": [
        {"name": "a", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
         "models": [{"id": "acme/llama-3-8b", "upstream": "llama3:8b", "pricing": {"prompt": 1, "completion": 1}}]},
        {"name": "b", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
         "models": [{"id": "other/llama-3-8b", "upstream": "llama3:8b", "pricing": {"prompt": 1, "completion": 1}},
                    {"id": "other/solo", "upstream": "llama3:8b-q4"}]},
    ]}))
    registry = build_registry(load_config(str(path)))
    for name in ("llama-3-8b", "llama3:8b"):  # a slug of two ids; an upstream id of two
        assert registry.canonical_id(name) is None
        with pytest.raises(GatewayError) as err:
            registry.deployments(name)
        assert err.value.status == 404 and "ambiguous" in err.value.message
        assert "'acme/llama-3-8b'" in err.value.message and "'other/llama-3-8b'" in err.value.message
    assert registry.canonical_id("solo") == "other/solo"
    assert registry.canonical_id("llama3:8b-q4") == "other/solo"
    # A connection's own name keeps its meaning: "<connection>/<upstream>" is ad hoc on that connection.
    assert registry.deployments("a/llama3:8b")[0].connection.name == "a"
