"""A credit limit cannot be overrun, whatever the prompt's shape and however many processes serve.

The reservation made before a request goes upstream holds the most the request can cost: a prompt counted as what no
tokenizer can beat (one token per UTF-8 byte, plus chat-template and tool-use overheads), and the largest answer. The
fake upstream here bills every prompt as that worst tokenizer would, so a reservation that merely *estimated* (the
old characters/4) lets 100 concurrent requests spend well past the limit.
"""

from __future__ import annotations

import concurrent.futures
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from crossroads.accounting.exchange import prompt_token_bound
from tests.conftest import MASTER_KEY, GatewayProcess, GatewayServer
from tests.fakes.base import Reply
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MODEL = "openai/dear"
PRICE = 100.0  # USD per million tokens, prompt and completion alike
LIMIT = 0.10
MAX_TOKENS = 5


def worst_tokenizer_count(body: dict) -> int:
    """The most prompt tokens any real tokenizer makes of `body`: a token per UTF-8 byte of every text, the JSON of
    tool calls and tool definitions, 4 template tokens per message and 3 to prime the answer (OpenAI's rule)."""
    import json

    total = 3
    for message in body["messages"]:
        total += 4
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.encode())
        for call in message.get("tool_calls") or ():
            total += len(json.dumps(call["function"], ensure_ascii=False).encode())
    if body.get("tools"):
        total += len(json.dumps(body["tools"], ensure_ascii=False).encode())
    return total


def shapes() -> dict[str, dict]:
    rng = random.Random(17)
    weather = {"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {
        "c": {"type": "string"}}}}}
    return {
        "one_letter_words": {"messages": [{"role": "user", "content": " ".join("abcdefghij"[i % 10]
                                                                            for i in range(40))}]},
        "cjk": {"messages": [{"role": "user", "content": "漢字仮名交じり文と한국어" * 6}]},
        "emoji": {"messages": [{"role": "user", "content": "🎉👩‍👩‍👧‍👦🇯🇵" * 8}]},
        "punctuation": {"messages": [{"role": "user", "content": "!?;:.,()[]{}<>" * 10}]},
        "random_code_points": {"messages": [{"role": "user", "content": "".join(
            chr(rng.choice([rng.randint(0x21, 0x7E), rng.randint(0x370, 0x3FF), rng.randint(0x4E00, 0x9FFF),
                            rng.randint(0x1F300, 0x1F5FF)])) for _ in range(60))}]},
        "many_short_messages": {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "k"}
                                             for i in range(30)]},
        "tool_calls": {"tools": [weather], "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"c":"ä"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{}"}]},
    }


@pytest.mark.parametrize("shape", list(shapes()))
def test_bound_is_never_below_the_worst_tokenizer(shape: str) -> None:
    body = shapes()[shape]
    assert prompt_token_bound(body) >= worst_tokenizer_count(body)


def test_bound_over_random_text_never_undercounts() -> None:
    rng = random.Random(3)
    planes = [(0x20, 0x7E), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    for _ in range(300):
        text = "".join(chr(rng.randint(*rng.choice(planes))) for _ in range(rng.randint(0, 200)))
        body = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
        assert prompt_token_bound(body) >= 3 + 4 + len(text.encode("utf-8", "surrogatepass"))


@pytest.fixture(scope="module")
def upstream():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("credit-bound")
    config = {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
              "routing": {"retries": 0},
              "providers": [{"name": "oai", "type": "openai", "base_url": upstream.base_url + "/v1",
                             "api_key": upstream.api_key, "timeout": 10,
                             "models": [{"id": MODEL, "upstream": "gpt-4o-mini", "context_length": 128000,
                                         "pricing": {"prompt": PRICE, "completion": PRICE}}]}]}
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("shape", list(shapes()))
def test_100_concurrent_requests_never_overspend(gw, upstream, shape: str) -> None:
    body = {"model": MODEL, "max_tokens": MAX_TOKENS, **shapes()[shape]}
    billed = worst_tokenizer_count(body)
    upstream.reset()
    upstream.reply(*[Reply(text="ok", prompt_tokens=billed, completion_tokens=MAX_TOKENS) for _ in range(100)])
    made = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": f"bound-{shape}", "limit": LIMIT})
    key = made.json()["key"]

    def one(_: int) -> int:
        return httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json=body, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(100)))
    assert set(statuses) <= {200, 402}, statuses
    assert statuses.count(200) >= 1
    usage = httpx.get(gw.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]["usage"]
    assert usage == pytest.approx(statuses.count(200) * (billed + MAX_TOKENS) * PRICE / 1e6)
    assert usage <= LIMIT + 1e-12, f"{shape}: spent ${usage:.4f} of a ${LIMIT} limit"


# -- several workers: a limit that cannot be held is never served ---------------------------------------------------

def test_limits_with_several_workers_are_refused_by_every_path(upstream, tmp_path: Path) -> None:
    config = {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(tmp_path / "data")},
              "providers": [{"name": "oai", "type": "openai", "base_url": upstream.base_url + "/v1",
                             "api_key": upstream.api_key,
                             "models": [{"id": MODEL, "upstream": "gpt-4o-mini",
                                         "pricing": {"prompt": PRICE, "completion": PRICE}}]}]}
    gw = GatewayProcess(config, tmp_path, args=["--workers", "2"]).start()
    cli = [sys.executable, "-m", "crossroads", "keys", "--config", str(gw.config_path)]
    try:
        # The API refuses a limit...
        resp = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "api", "limit": 0.01})
        assert resp.status_code == 400 and "workers" in resp.json()["error"]["message"]
        # So are workspace, environment and member budgets (issue 16), and a workspace without one is made.
        resp = httpx.post(gw.url + "/api/v1/workspaces", headers=AUTH, json={"name": "t", "budget": {"limit": 1}})
        assert resp.status_code == 400 and "workers" in resp.json()["error"]["message"]
        assert httpx.post(gw.url + "/api/v1/workspaces", headers=AUTH, json={"name": "t"}).status_code == 201
        for path, body in (("/environments", {"name": "e", "budget": {"limit": 1}}),
                           ("/members", {"email": "m@example.com", "role": "member", "budget": {"limit": 1}})):
            resp = httpx.post(gw.url + "/api/v1/workspaces/t" + path, headers=AUTH, json=body)
            assert resp.status_code == 400 and "workers" in resp.json()["error"]["message"], resp.text
        # ...and so does the CLI, another process that only shares the store.
        refused = subprocess.run([*cli, "create", "--name", "cli", "--limit", "0.01"], capture_output=True,
                                 text=True, cwd=tmp_path, timeout=30)
        assert refused.returncode == 1, refused.stdout
        assert "--workers 2" in refused.stderr and "Traceback" not in refused.stderr
        made = subprocess.run([*cli, "create", "--name", "plain"], capture_output=True, text=True, cwd=tmp_path,
                              timeout=30)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        # A limit that got there anyway (edited by hand) is never served beyond: each worker refuses the key.
        with sqlite3.connect(tmp_path / "data" / "crossroads.db") as db:
            db.execute("UPDATE api_keys SET \"limit\" = 0.01, updated_at = CURRENT_TIMESTAMP WHERE name = 'plain'")
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
        upstream.reset()
        deadline = time.monotonic() + 10
        statuses: set[int] = set()
        while time.monotonic() < deadline:
            statuses = {httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).status_code
                        for _ in range(6)}  # new connections: both workers answer some
            if statuses == {503}:
                break
            time.sleep(0.3)
        assert statuses == {503}
        before = len(upstream.requests)
        resp = httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        error = resp.json()["error"]
        assert error["code"] == 503 and error["metadata"]["code"] == "credit_limit_unenforceable"
        assert len(upstream.requests) == before
    finally:
        assert gw.stop() == 0
    # Once that gateway has stopped, the CLI may set limits again (one worker will serve them).
    allowed = subprocess.run([*cli, "create", "--name", "later", "--limit", "0.01"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=30)
    assert allowed.returncode == 0, allowed.stderr
