"""What a client sends can never steer the gateway's credentials elsewhere, and no configured credential comes back.

- An upstream model id (ad-hoc `<connection>/<upstream>`, a route target, a configured or discovered id) can never
  change the path or the query of the URL the gateway calls with its key: ids with `..`, `?`, `#`, `%`, control
  characters and the like are refused with a 400 before anything goes upstream, for every provider type.
- Every credential configured for a connection (its API key, each `headers:` value, a password in `base_url`) is
  removed from everything that reaches a client, the log or a generation record, whichever way the upstream echoes
  it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayProcess, GatewayServer
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import FakeUpstream, Fault
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
CHAT = "/api/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]

HOSTILE_UPSTREAM_IDS = [
    "../../some/other/endpoint?x=",
    "..",
    "gemini-2.5-flash/../../v1/files",
    "x/./y",
    "gemini-2.5-flash:generateContent?key=attacker",
    "gemini-2.5-flash#fragment",
    "gemini%2f..%2f..%2fv1%2ffiles",
    "gemini-2.5-flash%3fx=1",
    "a\r\nX-Injected: 1",
    "a\x00b",
    "a\tb",
    "a b",
    "a\\..\\b",
    "/absolute",
    "trailing/",
    "x" * 300,
]


@pytest.mark.parametrize("connection", ["oai", "ant", "gem"])
@pytest.mark.parametrize("upstream", HOSTILE_UPSTREAM_IDS, ids=lambda u: repr(u)[:30])
def test_hostile_adhoc_model_ids_never_reach_the_upstream(gateway, fake_openai, fake_anthropic, fake_gemini,
                                                          connection: str, upstream: str) -> None:
    resp = httpx.post(gateway.url + CHAT, headers=AUTH, json={"model": f"{connection}/{upstream}", "messages": HELLO})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == 400
    assert error["metadata"]["field"] == "model"
    assert not fake_openai.requests and not fake_anthropic.requests and not fake_gemini.requests


@pytest.mark.parametrize("connection", ["oai", "ant", "gem"])
def test_hostile_ids_in_the_models_fallback_list_are_refused(gateway, fake_openai, fake_anthropic, fake_gemini,
                                                             connection: str) -> None:
    body = {"model": f"{connection}/../../v1/files", "models": [f"{connection}/../../v1/files"], "messages": HELLO}
    resp = httpx.post(gateway.url + CHAT, headers=AUTH, json=body)
    assert resp.status_code == 400, resp.text
    assert not fake_openai.requests and not fake_anthropic.requests and not fake_gemini.requests


def test_ordinary_adhoc_ids_still_work(gateway, fake_openai, fake_gemini) -> None:
    # Slashes, colons, dots and '@' are part of real ids (OpenRouter's author/slug, Ollama's name:tag).
    for model in ("oai/meta-llama/Llama-3.1-8B-Instruct", "oai/llama3:8b", "oai/vendor.model-v1:0@rev"):
        resp = httpx.post(gateway.url + CHAT, headers=AUTH, json={"model": model, "messages": HELLO})
        assert resp.status_code == 200, resp.text
        assert fake_openai.last.json["model"] == model.split("/", 1)[1]
    resp = httpx.post(gateway.url + CHAT, headers=AUTH, json={"model": "gem/gemini-2.5-flash-lite",
                                                               "messages": HELLO})
    assert resp.status_code == 200, resp.text
    assert fake_gemini.last.path == "/v1beta/models/gemini-2.5-flash-lite:generateContent"
    assert fake_gemini.last.query == {}


def test_config_refuses_hostile_upstream_ids(tmp_path: Path) -> None:
    for connection, route in (
        ({"models": [{"id": "x/model", "upstream": "../v1/files"}]}, None),
        ({}, {"name": "bot", "targets": [{"connection": "c", "model": "a?b=1"}]}),
    ):
        config = {"server": {"master_key": MASTER_KEY, "data_dir": str(tmp_path / "data")},
                  "providers": [{"name": "c", "type": "gemini", "base_url": "http://127.0.0.1:9/v1beta",
                                 "api_key": "k", **connection}]}
        if route:
            config["routes"] = [route]
        gw = GatewayProcess(config, tmp_path)
        gw.start(wait=False)
        try:
            assert gw.proc.wait(20) == 2
        finally:
            gw.stop()
        assert "cannot be sent upstream as a model id" in gw.log()


# -- configured credentials never come back ------------------------------------------------------------------------

HEADER_SECRET = "hdr-secret-Zq8Vw3Lm9Tx2"
KEY = {"openai": "sk-fake-openai-secret", "anthropic": "sk-ant-fake-secret", "gemini": "fake-gemini-secret"}


@pytest.fixture(scope="module")
def echoing(tmp_path_factory: pytest.TempPathFactory):
    fakes = {"openai": FakeOpenAI().start(), "anthropic": FakeAnthropic().start(), "gemini": FakeGemini().start()}
    workdir = tmp_path_factory.mktemp("echoing")
    providers = []
    for kind, fake in fakes.items():
        base = fake.base_url + {"openai": "/v1", "anthropic": "/v1", "gemini": "/v1beta"}[kind]
        providers.append({"name": kind, "type": kind, "base_url": base, "api_key": fake.api_key, "timeout": 5,
                          "headers": {"X-Extra-Auth": HEADER_SECRET},
                          "models": [{"id": f"{kind}/m", "upstream": "m", "pricing": {"prompt": 1, "completion": 1}}]})
    config = {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data"),
                         "keepalive_interval": 5},
              "accounting": {"flush_interval": 0.1},
              "routing": {"retries": 0, "breaker": {"failure_threshold": 1000000}},
              "providers": providers}
    gw = GatewayServer(config, workdir).start()
    yield gw, fakes
    gw.stop()
    for fake in fakes.values():
        fake.stop()


def _echo(kind: str) -> str:
    return f"you sent X-Extra-Auth: {HEADER_SECRET}, key {KEY[kind]}"


def _assert_clean(kind: str, *texts: str) -> None:
    for text in texts:
        for secret in (HEADER_SECRET, KEY[kind]):
            assert secret not in text, f"{secret!r} leaked: {text[:300]}"


def _record(gw: GatewayProcess, generation_id: str) -> str:
    import time

    for _ in range(100):
        resp = httpx.get(gw.url + "/api/v1/generation", params={"id": generation_id}, headers=AUTH)
        if resp.status_code == 200:
            return resp.text
        time.sleep(0.05)
    raise AssertionError(f"no record for {generation_id}")


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("case", ["non_json_200", "error_status", "mid_stream_error"])
def test_configured_credentials_are_redacted_everywhere(echoing, kind: str, case: str) -> None:
    gw, fakes = echoing
    fake: FakeUpstream = fakes[kind]
    fake.reset()
    echo = _echo(kind)
    body = {"model": f"{kind}/m", "messages": HELLO}
    if case == "non_json_200":
        fake.fault(Fault(body=f"<html>proxy diagnostic: {echo}</html>".encode()))
    elif case == "error_status":
        fake.fault(Fault(status=500, message=echo))
    else:
        fake.fault(Fault(error_event_after=2, message=echo))
        body["stream"] = True
    resp = httpx.post(gw.url + CHAT, headers=AUTH, json=body, timeout=20)
    assert fake.requests and fake.last.headers.get("X-Extra-Auth") == HEADER_SECRET  # it was really sent
    if case == "mid_stream_error":
        assert resp.status_code == 200
        assert "error" in resp.text
    else:
        assert resp.status_code == 502, resp.text
    _assert_clean(kind, resp.text, str(resp.headers))
    _assert_clean(kind, _record(gw, resp.headers["x-generation-id"]))
    _assert_clean(kind, gw.log())
