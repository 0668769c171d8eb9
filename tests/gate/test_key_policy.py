"""Key policy at the edges: models without a price never reach a key with a credit limit, a route name in a key's
allowed_models allows that route, and /models shows a restricted key only what it may use."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayServer

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]
PRICED = {"prompt": 1.0, "completion": 2.0}


@pytest.fixture(scope="module")
def gw(fake_openai, fake_local, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("key-policy")
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
        "routing": {"retries": 0},
        "providers": [
            {"name": "oai", "type": "openai", "base_url": fake_openai.base_url + "/v1", "api_key": fake_openai.api_key,
             "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini", "pricing": PRICED},
                        {"id": "openai/unpriced", "upstream": "gpt-4o"}]},
            {"name": "local", "type": "openai", "base_url": fake_local.base_url + "/v1",
             "models": [{"id": "local/llama", "upstream": "llama-3.2-3b", "pricing": "free"}]},
            {"name": "disc", "type": "openai", "base_url": fake_local.base_url + "/v1", "discover": True},
        ],
        "routes": [{"name": "support-bot", "targets": [{"connection": "oai", "model": "gpt-4o-mini"}]}],
    }
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


def key(gw: GatewayServer, **policy) -> str:
    resp = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "policy", **policy})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["key"]


def chat(gw: GatewayServer, api_key: str, model: str) -> httpx.Response:
    return httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                      json={"model": model, "messages": HELLO}, timeout=20)


@pytest.mark.parametrize("model", ["openai/unpriced", "oai/some-new-model", "disc/qwen2.5-7b"])
def test_unpriced_models_refused_for_keys_with_a_limit(gw, fake_openai, fake_local, model: str) -> None:
    limited = key(gw, limit=5.0)
    resp = chat(gw, limited, model)
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["metadata"]["code"] == "unpriced_model" and error["metadata"]["model"] == model
    assert model in error["message"] and "pricing" in error["message"] and "pricing: free" in error["message"]
    assert not fake_openai.requests and not fake_local.requests
    # Without a limit, nothing has to be counted: served (and recorded at $0).
    assert chat(gw, key(gw), model).status_code == 200


def test_priced_and_declared_free_models_serve_limited_keys(gw, fake_openai, fake_local) -> None:
    limited = key(gw, limit=5.0)
    assert chat(gw, limited, "openai/gpt-4o-mini").status_code == 200
    assert chat(gw, limited, "local/llama").status_code == 200


def test_unpriced_fallbacks_are_skipped_for_limited_keys(gw, fake_openai) -> None:
    limited = key(gw, limit=5.0)
    resp = httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {limited}"},
                      json={"models": ["openai/unpriced", "openai/gpt-4o-mini"], "messages": HELLO})
    assert resp.status_code == 200 and resp.json()["model"] == "openai/gpt-4o-mini"
    assert [r.json["model"] for r in fake_openai.requests] == ["gpt-4o-mini"]


def test_start_up_warns_about_each_unpriced_model(gw) -> None:
    deadline = time.monotonic() + 5
    while "without a price" not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in gw.log().splitlines() if "without a price" in line]
    assert any("connection oai" in line and "openai/unpriced" in line for line in lines), lines
    assert any("connection disc" in line and "disc/qwen2.5-7b" in line for line in lines), lines
    assert not any("connection local " in line for line in lines), lines  # declared free on purpose
    assert not any("openai/gpt-4o-mini" in line for line in lines)


def test_route_name_in_allowed_models_allows_the_route(gw, fake_openai) -> None:
    bot_only = key(gw, allowed_models=["support-bot"])
    resp = chat(gw, bot_only, "support-bot")
    assert resp.status_code == 200, resp.text
    assert chat(gw, bot_only, "openai/gpt-4o-mini").status_code == 403  # the route, not its model directly
    refused = chat(gw, key(gw, allowed_models=["anthropic/*"]), "support-bot")
    assert refused.status_code == 403 and "'support-bot'" in refused.json()["error"]["message"]


def test_models_lists_only_what_a_restricted_key_may_use(gw) -> None:
    def ids(api_key: str) -> list[str]:
        resp = httpx.get(gw.url + "/api/v1/models", headers={"Authorization": f"Bearer {api_key}"})
        body = resp.json()
        assert body["total_count"] == len(body["data"])
        return [m["id"] for m in body["data"]]

    everything = ids(MASTER_KEY)
    assert {"openai/gpt-4o-mini", "openai/unpriced", "local/llama", "support-bot"} <= set(everything)
    assert ids(key(gw)) == everything
    assert ids(key(gw, allowed_models=["openai/*"])) == ["openai/gpt-4o-mini", "openai/unpriced"]
    assert ids(key(gw, allowed_models=["support-bot", "local/llama"])) == ["local/llama", "support-bot"]
