"""A connection's base_url as each vendor's own SDK spells it: Anthropic's without `/v1`, Gemini's without
`/v1beta`, work as well as with them."""

from __future__ import annotations

import httpx
import pytest

from crossroads.config import versioned_base_url
from tests.conftest import MASTER_KEY, GatewayServer

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.mark.parametrize(("kind", "given", "used"), [
    ("anthropic", "https://api.anthropic.com", "https://api.anthropic.com/v1"),
    ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com/v1"),
    ("anthropic", "https://proxy.example/anthropic", "https://proxy.example/anthropic/v1"),
    ("gemini", "https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/v1beta"),
    ("gemini", "https://generativelanguage.googleapis.com/v1beta", "https://generativelanguage.googleapis.com/v1beta"),
    ("gemini", "https://generativelanguage.googleapis.com/v1", "https://generativelanguage.googleapis.com/v1"),
    ("openai", "https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1"),
    ("openai", "http://127.0.0.1:11434", "http://127.0.0.1:11434"),
])
def test_version_path_rule(kind: str, given: str, used: str) -> None:
    assert versioned_base_url(kind, given) == used


@pytest.mark.parametrize("suffixed", [False, True])
def test_sdk_style_base_urls_work(fake_anthropic, fake_gemini, tmp_path, suffixed: bool) -> None:
    pricing = {"prompt": 1, "completion": 1}
    config = {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(tmp_path / "data")},
              "providers": [
                  {"name": "ant", "type": "anthropic", "api_key": fake_anthropic.api_key,
                   "base_url": fake_anthropic.base_url + ("/v1" if suffixed else ""),
                   "models": [{"id": "anthropic/claude-sonnet-4", "upstream": "claude-sonnet-4-20250514",
                               "pricing": pricing}]},
                  {"name": "gem", "type": "gemini", "api_key": fake_gemini.api_key,
                   "base_url": fake_gemini.base_url + ("/v1beta/" if suffixed else "/"),
                   "models": [{"id": "google/gemini-2.5-flash", "upstream": "gemini-2.5-flash", "pricing": pricing}]},
              ]}
    gw = GatewayServer(config, tmp_path).start()
    try:
        for model in ("anthropic/claude-sonnet-4", "google/gemini-2.5-flash"):
            resp = httpx.post(gw.url + "/api/v1/chat/completions", headers=AUTH,
                              json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status_code == 200, resp.text
    finally:
        gw.stop()
    assert fake_anthropic.last.path == "/v1/messages"
    assert fake_gemini.last.path == "/v1beta/models/gemini-2.5-flash:generateContent"
