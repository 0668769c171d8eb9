"""API keys, credit limits and the account API, driven by the official `openrouter` SDK where it has a call."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from openrouter import OpenRouter

from tests.conftest import MASTER_KEY, PRICING, GatewayServer, gateway_config
from tests.fakes.base import Fault, Reply
from tests.harness import read_database_files

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture(scope="module")
def gw(fake_openai, fake_anthropic, fake_gemini, fake_local, tmp_path_factory) -> GatewayServer:
    workdir = tmp_path_factory.mktemp("keys-gateway")
    proc = GatewayServer(gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, workdir / "data"),
                          workdir, args=["--log-level", "debug"]).start()
    yield proc
    proc.stop()


@pytest.fixture
def sdk(gw):
    with OpenRouter(api_key=MASTER_KEY, server_url=gw.url + "/api/v1") as client:
        yield client


def create_key(gw: GatewayServer, **body) -> tuple[str, dict]:
    resp = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "test", **body})
    assert resp.status_code == 201, resp.text
    payload = resp.json()
    return payload["key"], payload["data"]


def chat(gw: GatewayServer, key: str, model: str = "openai/gpt-4o-mini", **extra) -> httpx.Response:
    return httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def test_sdk_key_lifecycle(sdk, gw) -> None:
    created = sdk.api_keys.create(name="ci key", limit=5.0, limit_reset="monthly")
    assert created.key.startswith("sk-or-v1-") and len(created.key) == len("sk-or-v1-") + 64
    key_hash = created.data.hash
    assert created.data.name == "ci key" and created.data.limit == 5.0 and created.data.limit_reset == "monthly"
    assert created.key not in created.data.label  # only a display prefix is ever shown again
    listed = sdk.api_keys.list()
    assert key_hash in {k.hash for k in listed.data}
    fetched = sdk.api_keys.get(hash=key_hash)
    assert fetched.data.limit_remaining == 5.0
    updated = sdk.api_keys.update(hash=key_hash, name="renamed", disabled=True)
    assert updated.data.name == "renamed" and updated.data.disabled is True
    assert chat(gw, created.key).status_code == 401
    sdk.api_keys.update(hash=key_hash, disabled=False)
    assert chat(gw, created.key).status_code == 200
    with OpenRouter(api_key=created.key, server_url=gw.url + "/api/v1") as as_key:
        current = as_key.api_keys.get_current_key_metadata()
        assert current.data.label == created.data.label
        assert current.data.limit == 5.0 and current.data.is_management_key is False
        assert 0 < current.data.usage < 0.001
        assert current.data.limit_remaining == pytest.approx(5.0 - current.data.usage)
    sdk.api_keys.delete(hash=key_hash)
    assert chat(gw, created.key).status_code == 401
    assert httpx.get(gw.url + f"/api/v1/keys/{key_hash}", headers=AUTH).status_code == 404


def test_legacy_auth_key_endpoint(gw) -> None:
    key, data = create_key(gw, limit=1.5)
    body = httpx.get(gw.url + "/api/v1/auth/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert body["label"] == data["label"] and body["limit"] == 1.5 and body["is_free_tier"] is False
    assert body["rate_limit"]["requests"] == -1


def test_credits_and_generation_via_sdk(sdk, gw, fake_openai) -> None:
    key, _ = create_key(gw)
    fake_openai.reply(Reply(text="hello", prompt_tokens=100, completion_tokens=50))
    resp = httpx.post(gw.url + "/api/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}", "HTTP-Referer": "https://app.example",
                               "X-Title": "Example App"},
                      json={"model": "openai/gpt-4o-mini", "user": "u-42",
                            "messages": [{"role": "user", "content": "hi"}]})
    generation_id = resp.json()["id"]
    cost = 100 * PRICING["prompt"] / 1e6 + 50 * PRICING["completion"] / 1e6
    generation = sdk.generations.get_generation(id=generation_id).data
    assert generation.id == generation_id
    assert generation.model == "openai/gpt-4o-mini" and generation.provider_name == "oai"
    assert generation.tokens_prompt == 100 and generation.tokens_completion == 50
    assert generation.total_cost == pytest.approx(cost)
    assert generation.streamed is False and generation.cancelled is False
    assert generation.finish_reason == "stop"
    assert generation.origin == "https://app.example"
    assert generation.provider_responses and generation.provider_responses[0].status == 200
    credits = sdk.credits.get_credits().data
    assert credits.total_usage >= cost
    # A key sees only its own generations.
    other, _ = create_key(gw)
    with OpenRouter(api_key=other, server_url=gw.url + "/api/v1") as as_other:
        with pytest.raises(Exception) as err:
            as_other.generations.get_generation(id=generation_id)
        assert getattr(err.value, "status_code", None) == 404
    with OpenRouter(api_key=key, server_url=gw.url + "/api/v1") as as_owner:
        assert as_owner.generations.get_generation(id=generation_id).data.id == generation_id


def test_unknown_disabled_expired_keys(gw) -> None:
    assert "Invalid" in chat(gw, "sk-or-v1-" + "0" * 64).json()["error"]["message"]
    key, data = create_key(gw)
    httpx.patch(gw.url + f"/api/v1/keys/{data['hash']}", headers=AUTH, json={"disabled": True})
    resp = chat(gw, key)
    assert resp.status_code == 401 and "disabled" in resp.json()["error"]["message"]
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired, _ = create_key(gw, expires_at=past)
    resp = chat(gw, expired)
    assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    short, _ = create_key(gw, expires_at=soon)
    assert chat(gw, short).status_code == 200
    time.sleep(1.6)
    assert chat(gw, short).status_code == 401


def test_model_allow_list_with_globs(gw) -> None:
    key, _ = create_key(gw, allowed_models=["openai/*", "google/gemini-2.5-flash"])
    assert chat(gw, key, "openai/gpt-4o-mini").status_code == 200
    assert chat(gw, key, "google/gemini-2.5-flash").status_code == 200
    denied = chat(gw, key, "anthropic/claude-sonnet-4")
    assert denied.status_code == 403 and "not allowed" in denied.json()["error"]["message"]


def test_management_key_cannot_infer_but_can_manage(gw) -> None:
    key, data = create_key(gw, management=True)
    assert data["is_management_key"] is True
    assert chat(gw, key).status_code == 403
    made = httpx.post(gw.url + "/api/v1/keys", headers={"Authorization": f"Bearer {key}"}, json={"name": "child"})
    assert made.status_code == 201
    regular, _ = create_key(gw)
    assert httpx.get(gw.url + "/api/v1/keys", headers={"Authorization": f"Bearer {regular}"}).status_code == 403


def test_402_when_limit_would_be_exceeded(gw, fake_openai) -> None:
    # Worst case of one request: ~10 prompt tokens at $1/M + max_tokens at $2/M.
    key, _ = create_key(gw, limit=0.001)
    resp = chat(gw, key, max_tokens=1000)
    assert resp.status_code == 402
    message = resp.json()["error"]["message"]
    assert "max_tokens" in message
    fits = int(message.split("At most ")[1].split(" ")[0])
    assert 400 < fits < 500
    assert chat(gw, key, max_tokens=fits).status_code == 200
    assert not [r for r in fake_openai.requests if r.json.get("max_tokens") == 1000]


def test_concurrent_requests_cannot_overspend(gw, fake_openai) -> None:
    # Each request really costs its worst case (the upstream bills all max_tokens), so overspending would show.
    limit = 0.01
    key, data = create_key(gw, limit=limit)
    fake_openai.reply(*[Reply(text="x", prompt_tokens=10, completion_tokens=1000) for _ in range(50)])
    fake_openai.fault(*[Fault(delay=0.3) for _ in range(50)])
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: chat(gw, key, max_tokens=1000).status_code, range(50)))
    assert set(results) <= {200, 402} and results.count(402) > 0
    spent = httpx.get(gw.url + f"/api/v1/keys/{data['hash']}", headers=AUTH).json()["data"]["usage"]
    assert spent <= limit + 1e-12
    assert results.count(200) * (10 * 1e-6 + 1000 * 2e-6) == pytest.approx(spent, rel=1e-6)


def test_activity(gw, fake_openai) -> None:
    key, data = create_key(gw)
    for _ in range(3):
        assert chat(gw, key).status_code == 200
    time.sleep(1.5)  # records are written in batches at least every second
    today = datetime.now(UTC).date().isoformat()
    rows = httpx.get(gw.url + "/api/v1/activity", headers=AUTH, params={"date_from": today, "date_to": today}).json()
    mine = [r for r in rows["data"] if r["key_hash"] == data["hash"]]
    assert len(mine) == 1 and mine[0]["requests"] == 3 and mine[0]["model"] == "openai/gpt-4o-mini"
    assert mine[0]["provider_name"] == "oai"  # the connection that served
    assert mine[0]["date"] == today and mine[0]["usage"] > 0
    own = httpx.get(gw.url + "/api/v1/activity", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert {r["key_hash"] for r in own} == {data["hash"]}


def test_cancelled_stream_is_recorded_and_billed(gw, fake_openai) -> None:
    key, data = create_key(gw)
    fake_openai.reply(Reply(text=" ".join(f"word{i}" for i in range(40))))
    fake_openai.fault(Fault(chunk_delay=0.05))
    generation_id = None
    with httpx.stream("POST", gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "openai/gpt-4o-mini", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}, timeout=30) as resp:
        generation_id = resp.headers["x-generation-id"]
        seen = 0
        for line in resp.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 6:
                    break
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = httpx.get(gw.url + "/api/v1/generation", headers=AUTH, params={"id": generation_id})
        if got.status_code == 200:
            break
        time.sleep(0.1)
    record = got.json()["data"]
    assert record["cancelled"] is True and record["streamed"] is True
    assert record["tokens_completion"] > 0 and record["total_cost"] > 0
    usage = httpx.get(gw.url + f"/api/v1/keys/{data['hash']}", headers=AUTH).json()["data"]["usage"]
    assert usage == pytest.approx(record["total_cost"])


def test_no_plaintext_key_in_logs_or_database(gw, fake_openai) -> None:
    key, data = create_key(gw)
    assert chat(gw, key).status_code == 200
    assert chat(gw, key + "x").status_code == 401
    time.sleep(1.5)
    assert key not in gw.log()
    stored = read_database_files(Path(gw.workdir / "data"))
    assert key.encode() not in stored
    assert key[len("sk-or-v1-"):].encode() not in stored


def test_cli_keys(gw, tmp_path) -> None:
    env = {**os.environ}
    base = [sys.executable, "-m", "crossroads", "keys", "--config", str(gw.config_path)]
    made = subprocess.run([*base, "create", "--name", "cli-key", "--limit", "2.5", "--limit-reset", "daily",
                           "--models", "openai/*"], capture_output=True, text=True, cwd=gw.workdir, env=env,
                          timeout=30)
    assert made.returncode == 0, made.stderr
    plaintext = made.stdout.strip().splitlines()[-1]
    assert plaintext.startswith("sk-or-v1-")
    key_hash = next(w.split("=")[1] for w in made.stdout.split() if w.startswith("hash="))
    # The running server picks up the new key within its poll interval.
    deadline = time.monotonic() + 5
    while chat(gw, plaintext).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert chat(gw, plaintext).status_code == 200
    listed = subprocess.run([*base, "list"], capture_output=True, text=True, cwd=gw.workdir, timeout=30)
    assert key_hash in listed.stdout and "cli-key" in listed.stdout and plaintext not in listed.stdout
    assert subprocess.run([*base, "disable", key_hash], cwd=gw.workdir, timeout=30).returncode == 0
    deadline = time.monotonic() + 5
    while chat(gw, plaintext).status_code != 401 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert chat(gw, plaintext).status_code == 401
    assert subprocess.run([*base, "enable", key_hash], cwd=gw.workdir, timeout=30).returncode == 0
    assert subprocess.run([*base, "delete", key_hash], cwd=gw.workdir, timeout=30).returncode == 0
    missing = subprocess.run([*base, "delete", key_hash], capture_output=True, text=True, cwd=gw.workdir, timeout=30)
    assert missing.returncode == 1


def test_openai_sdk_with_an_api_key(gw) -> None:
    key, _ = create_key(gw)
    client = openai.OpenAI(base_url=gw.url + "/api/v1", api_key=key, max_retries=0)
    assert client.chat.completions.create(model="openai/gpt-4o-mini", messages=[
        {"role": "user", "content": "x"}]).choices[0].message.content
