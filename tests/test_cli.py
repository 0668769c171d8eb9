"""The `crossroads` command as a real process: the key commands (options, store, hash prefixes, update, list, checks)
and what `crossroads serve` checks and prints at start-up (port, master key, ${VAR}, secrets, probe, log lines)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from crossroads.config import ServerConfig
from crossroads.store import KeyRow, Store, database_url, migrate
from tests.conftest import MASTER_KEY, GatewayProcess, free_port
from tests.fakes.base import Reply
from tests.fakes.openai_fake import FakeOpenAI

PRICING = {"prompt": 1.0, "completion": 2.0}
PG_URL = os.environ.get("CROSSROADS_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # Subprocesses inherit the environment: keep the machine's (and the test run's) settings out of it.
    for name in list(os.environ):
        if name.startswith("CROSSROADS_") or name.endswith("_API_KEY") or name == "OLLAMA_BASE_URL":
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


def config_for(fake: FakeOpenAI, data_dir: Path, **server: object) -> dict:
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir), **server},
        "providers": [{"name": "oai", "type": "openai", "base_url": fake.base_url + "/v1", "api_key": fake.api_key,
                       "timeout": 20, "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini",
                                                  "pricing": PRICING}]}],
    }


def crossroads(*args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crossroads", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def gw(fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("cli-gateway")
    proc = GatewayProcess(config_for(fake_openai, workdir / "data"), workdir).start()
    yield proc
    proc.stop()


def keys(gw: GatewayProcess, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`crossroads keys ARGS --config <the gateway's>`: the option after the subcommand."""
    return crossroads("keys", *args, "--config", str(gw.config_path), cwd=cwd or gw.workdir)


def created_hash(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return re.search(r"hash=([0-9a-f]{64})", result.stdout).group(1)


def listed(gw: GatewayProcess) -> dict[str, dict]:
    result = keys(gw, "list", "--json")
    assert result.returncode == 0, result.stderr
    return {item["hash"]: item for item in json.loads(result.stdout)}


# -- options, store ----------------------------------------------------------------------------------------------------

def test_config_option_after_the_subcommand(gw: GatewayProcess, tmp_path: Path) -> None:
    made = crossroads("keys", "create", "--name", "after", "--config", str(gw.config_path), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    key_hash = created_hash(made)
    for args in (["keys", "list", "--config", str(gw.config_path)], ["keys", "--config", str(gw.config_path), "list"],
                 ["--config", str(gw.config_path), "keys", "list"]):
        result = crossroads(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert key_hash in result.stdout, args
    assert not (tmp_path / "data").exists()


def test_every_key_command_names_its_store(gw: GatewayProcess, tmp_path: Path) -> None:
    store = database_url(ServerConfig(data_dir=str(gw.workdir / "data")))
    made = keys(gw, "create", "--name", "named-store", cwd=tmp_path)
    key_hash = created_hash(made)
    for result in (made, keys(gw, "list", cwd=tmp_path), keys(gw, "disable", key_hash, cwd=tmp_path),
                   keys(gw, "update", key_hash, "--rpm", "5", cwd=tmp_path), keys(gw, "delete", key_hash, cwd=tmp_path)):
        assert result.returncode == 0, result.stderr
        assert f"store: {store}" in result.stderr.splitlines()
        assert store.startswith("sqlite:///") and store.endswith("/data/crossroads.db")


def test_a_missing_store_is_an_error_not_a_new_empty_one(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["keys", "list"], ["keys", "create", "--name", "x"], ["keys", "delete", "0" * 64]):
        result = crossroads(*args, cwd=elsewhere)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"store: sqlite:///{elsewhere}/data/crossroads.db" in result.stderr
        assert "no store at" in result.stderr and "crossroads serve" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (elsewhere / "data").exists(), args


@pytest.mark.skipif(not PG_URL and not os.environ.get("CI"),
                    reason="CROSSROADS_TEST_POSTGRES_URL not set (run: eval \"$(scripts/ci-services.sh)\")")
def test_a_postgresql_database_without_the_schema_is_a_missing_store(tmp_path: Path) -> None:
    assert PG_URL, "CROSSROADS_TEST_POSTGRES_URL is not set"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    name = f"crossroads_cli_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        env = {"CROSSROADS_DATABASE_URL": url}
        missing = crossroads("keys", "list", cwd=tmp_path, env=env)
        assert missing.returncode == 2, missing.stderr
        assert f"store: {url}" in missing.stderr and "holds no Crossroads store" in missing.stderr
        migrate(url)  # what `crossroads serve` does first
        made = crossroads("keys", "create", "--name", "pg", cwd=tmp_path, env=env)
        assert created_hash(made) in crossroads("keys", "list", cwd=tmp_path, env=env).stdout
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- hash prefixes -----------------------------------------------------------------------------------------------------

def test_hash_prefixes(gw: GatewayProcess) -> None:
    key_hash = created_hash(keys(gw, "create", "--name", "prefixed"))
    assert keys(gw, "disable", key_hash[:8]).returncode == 0
    assert listed(gw)[key_hash]["disabled"] is True
    assert keys(gw, "enable", key_hash[:12].upper()).returncode == 0
    assert listed(gw)[key_hash]["disabled"] is False
    assert keys(gw, "update", key_hash[:10], "--tpm", "1000").returncode == 0
    assert listed(gw)[key_hash]["tpm"] == 1000
    short = keys(gw, "disable", key_hash[:7])
    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    assert listed(gw)[key_hash]["disabled"] is False
    missing = keys(gw, "delete", "f" * 8 if not key_hash.startswith("f" * 8) else "0" * 8)
    assert missing.returncode == 1 and "no key with hash" in missing.stderr
    assert keys(gw, "delete", key_hash[:8]).returncode == 0
    assert key_hash not in listed(gw)


def test_an_ambiguous_prefix_is_refused(gw: GatewayProcess) -> None:
    # Two keys whose hashes share 9 characters (written straight into the store: real hashes would not collide).
    prefix = "abcdef012"
    hashes = [prefix + "0" * 55, prefix + "1" * 55]

    async def insert() -> None:
        store = await Store.open(database_url(ServerConfig(data_dir=str(gw.workdir / "data"))))
        try:
            for index, key_hash in enumerate(hashes):
                await store.insert_key(KeyRow(hash=key_hash, name=f"twin{index}", label="sk-or-v1-abc...000"))
        finally:
            await store.close()

    asyncio.run(insert())
    for action in ("disable", "delete"):
        result = keys(gw, action, prefix[:8])
        assert result.returncode == 1, result.stdout
        assert "ambiguous" in result.stderr and "matches 2 keys" in result.stderr
        assert hashes[0][:16] in result.stderr and hashes[1][:16] in result.stderr
    assert all(not listed(gw)[h]["disabled"] for h in hashes)
    assert keys(gw, "delete", hashes[0][:10]).returncode == 0  # one more character: unique
    assert keys(gw, "delete", hashes[1][:8]).returncode == 0
    assert not set(hashes) & set(listed(gw))


# -- update and list ---------------------------------------------------------------------------------------------------

def test_update_changes_only_what_is_given_and_list_shows_every_policy(gw: GatewayProcess) -> None:
    key_hash = created_hash(keys(gw, "create", "--name", "policy", "--limit", "2"))
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    updated = keys(gw, "update", key_hash[:8], "--limit", "7.5", "--limit-reset", "weekly", "--expires",
                   expires.isoformat(), "--models", "openai/*, google/gemini-2.5-flash", "--rpm", "60", "--tpm",
                   "5000", "--priority", "low", "--disabled")
    assert updated.returncode == 0, updated.stderr
    item = listed(gw)[key_hash]
    assert (item["limit"], item["limit_reset"], item["allowed_models"], item["rpm"], item["tpm"], item["priority"],
            item["disabled"], item["state"], item["name"]) == (
        7.5, "weekly", ["openai/*", "google/gemini-2.5-flash"], 60, 5000, "low", True, "disabled", "policy")
    assert item["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    assert item["is_management_key"] is False and item["usage"] == 0
    table = keys(gw, "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["HASH", "NAME", "LABEL", "LIMIT", "USAGE", "RESET", "EXPIRES", "MODELS", "RPM", "TPM",
                              "PRIORITY", "MANAGEMENT", "STATE"]
    [row] = [r.split() for r in rows if r.startswith(key_hash)]
    assert row[1:] == ["policy", item["label"], "7.5", "0", "weekly", item["expires_at"],
                       "openai/*,google/gemini-2.5-flash", "60", "5000", "low", "no", "disabled"]
    # Only what is given changes; `none` removes a setting.
    assert keys(gw, "update", key_hash, "--enabled", "--rpm", "none", "--models", "none", "--limit-reset",
                "none", "--expires", "none", "--name", "renamed").returncode == 0
    item = listed(gw)[key_hash]
    assert (item["limit"], item["limit_reset"], item["allowed_models"], item["rpm"], item["tpm"], item["priority"],
            item["disabled"], item["expires_at"], item["name"]) == (7.5, None, None, None, 5000, "low", False, None,
                                                                     "renamed")
    nothing = keys(gw, "update", key_hash)
    assert nothing.returncode == 1 and "nothing to update" in nothing.stderr
    bad = keys(gw, "update", key_hash, "--limit", "-1")
    assert bad.returncode == 1 and "--limit" in bad.stderr and "Traceback" not in bad.stderr
    both = keys(gw, "update", key_hash, "--enabled", "--disabled")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_update_is_applied_by_the_running_gateway(gw: GatewayProcess) -> None:
    made = keys(gw, "create", "--name", "live")
    key = made.stdout.strip().splitlines()[-1]
    key_hash = created_hash(made)
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    def status() -> int:
        return httpx.post(gw.url + "/api/v1/chat/completions", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {key}"}).status_code

    deadline = time.monotonic() + 5
    while status() != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert keys(gw, "update", key_hash[:8], "--models", "anthropic/*").returncode == 0
    deadline = time.monotonic() + 5
    while status() != 403 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status() == 403


def test_usage_is_the_keys_spend(gw: GatewayProcess, fake_openai: FakeOpenAI) -> None:
    made = keys(gw, "create", "--name", "spender", "--limit", "1", "--limit-reset", "daily")
    key = made.stdout.strip().splitlines()[-1]
    key_hash = created_hash(made)
    fake_openai.reply(Reply(text="x", prompt_tokens=1000, completion_tokens=500))
    deadline = time.monotonic() + 5
    while True:  # the gateway picks the new key up within a second
        resp = httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                          json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        if resp.status_code != 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.status_code == 200, resp.text
    cost = 1000 * PRICING["prompt"] / 1e6 + 500 * PRICING["completion"] / 1e6
    deadline = time.monotonic() + 5
    while listed(gw)[key_hash]["usage"] == 0 and time.monotonic() < deadline:
        time.sleep(0.3)  # records are written in batches
    item = listed(gw)[key_hash]
    assert item["usage"] == pytest.approx(cost) and item["usage_total"] == pytest.approx(cost)
    assert item["limit_remaining"] == pytest.approx(1 - cost)
    [row] = [r.split() for r in keys(gw, "list").stdout.splitlines() if r.startswith(key_hash)]
    assert float(row[4]) == pytest.approx(cost)


def test_update_applies_the_running_gateways_worker_rule(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(config_for(fake_openai, tmp_path / "data"), tmp_path, args=["--workers", "2"]).start()
    try:
        key_hash = created_hash(keys(gw, "create", "--name", "plain"))
        for option in (["--limit", "1"], ["--rpm", "10"], ["--tpm", "100"]):
            refused = keys(gw, "update", key_hash, *option)
            assert refused.returncode == 1, (option, refused.stdout)
            assert "--workers 2" in refused.stderr and "Traceback" not in refused.stderr
        assert keys(gw, "update", key_hash, "--priority", "high", "--limit", "none").returncode == 0
        item = listed(gw)[key_hash]
        assert (item["limit"], item["rpm"], item["tpm"], item["priority"]) == (None, None, None, "high")
    finally:
        assert gw.stop() == 0


# -- checks ------------------------------------------------------------------------------------------------------------

def test_expiry_in_the_past_is_refused(gw: GatewayProcess) -> None:
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    before = set(listed(gw))
    made = keys(gw, "create", "--name", "stale", "--expires", past)
    assert made.returncode == 1 and "--expires" in made.stderr and "in the past" in made.stderr
    assert set(listed(gw)) == before
    key_hash = created_hash(keys(gw, "create", "--name", "fresh"))
    changed = keys(gw, "update", key_hash, "--expires", "2001-01-01T00:00:00Z")
    assert changed.returncode == 1 and "in the past" in changed.stderr
    assert listed(gw)[key_hash]["expires_at"] is None


def test_a_duplicate_key_name_is_warned_about(gw: GatewayProcess) -> None:
    first = keys(gw, "create", "--name", "twin-name")
    assert first.returncode == 0 and "warning" not in first.stderr
    second = keys(gw, "create", "--name", "twin-name")
    assert second.returncode == 0, second.stderr
    assert "warning" in second.stderr and "already named 'twin-name'" in second.stderr
    assert created_hash(first)[:16] in second.stderr
    renamed = keys(gw, "update", created_hash(second), "--name", "twin-name")
    assert "warning" in renamed.stderr  # the other key still has the name
    other = keys(gw, "update", created_hash(second), "--name", "unique-name")
    assert other.returncode == 0 and "warning" not in other.stderr


def serve(tmp_path: Path, config: dict | str, *args: str, env: dict[str, str] | None = None,
          timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """A `crossroads serve` that is expected to stop by itself (refused configuration or arguments)."""
    path = tmp_path / "crossroads.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    try:
        return crossroads("serve", "--config", str(path), *args, cwd=tmp_path, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway started")


@pytest.mark.parametrize("source", ["file", "environment"])
def test_a_short_master_key_is_refused(tmp_path: Path, source: str) -> None:
    short = "sk-short-master-key-12345"  # 25 characters
    if source == "file":
        result = serve(tmp_path, {"server": {"master_key": short, "data_dir": str(tmp_path / "data")}})
    else:
        result = subprocess.run([sys.executable, "-m", "crossroads", "serve"], capture_output=True, text=True,
                                cwd=tmp_path, timeout=20, env={**os.environ, "CROSSROADS_MASTER_KEY": short})
    assert result.returncode == 2, result.stderr
    assert "at least 32 characters" in result.stderr and "Traceback" not in result.stderr
    assert ("server.master_key" if source == "file" else "CROSSROADS_MASTER_KEY") in result.stderr
    assert short not in result.stderr + result.stdout


@pytest.mark.parametrize("port", ["85616", "-1", "65536", "http"])
def test_port_flag_is_checked_like_server_port(tmp_path: Path, port: str) -> None:
    result = serve(tmp_path, {"server": {"master_key": MASTER_KEY, "data_dir": str(tmp_path / "data")}},
                   "--port", port)
    assert result.returncode == 2
    assert "--port" in result.stderr and ("between 0 and 65535" in result.stderr or "integer" in result.stderr)
    assert "Traceback" not in result.stderr


def test_port_zero_prints_the_port_bound(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(config_for(fake_openai, tmp_path / "data"), tmp_path, args=["--port", "0"])
    gw.start(wait=False)
    try:
        deadline = time.monotonic() + 10
        while not (found := re.search(r"listening on http://127\.0\.0\.1:(\d+)", gw.log())):
            assert time.monotonic() < deadline and gw.proc.poll() is None, gw.log()
            time.sleep(0.05)
        gw.port = int(found.group(1))
        assert gw.port != 0
        gw.wait_ready()
        resp = httpx.get(gw.url + "/api/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=5)
        assert resp.status_code == 200
    finally:
        assert gw.stop() == 0


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(tmp_path, {"server": {"master_key": MASTER_KEY, "data_dir": str(tmp_path / "data"),
                                             "port": port}})
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- configuration at start-up -----------------------------------------------------------------------------------------

def test_an_unset_variable_stops_start_up(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("CR_TEST_UNSET_KEY", raising=False)
    text = ("providers:\n  - {name: oai, type: openai, base_url: 'http://127.0.0.1:9/v1', api_key: '${CR_TEST_UNSET_KEY}',"
            " models: [{id: a/b}]}\n")
    result = serve(tmp_path, text)
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(tmp_path / "crossroads.yaml") in lines[0] and "providers[0].api_key" in lines[0]
    assert "${CR_TEST_UNSET_KEY}" in lines[0] and "not set" in lines[0] and "${CR_TEST_UNSET_KEY:-}" in lines[0]


@pytest.mark.parametrize(("field", "value"), [
    ("master_key", 12345678901234567890123456789012345),
    ("api_key", ["sk-proj-secret-value-4242"]),
    ("headers", {"X-Secret": ["secret-header-value-4242"]}),
    ("headers", ["Authorization: Bearer sk-proj-secret-value-4242"]),
])
def test_type_errors_never_print_secret_values(tmp_path: Path, field: str, value: object) -> None:
    config: dict = {"server": {"data_dir": str(tmp_path / "data")},
                    "providers": [{"name": "oai", "type": "openai", "base_url": "http://127.0.0.1:9/v1"}]}
    if field == "master_key":
        config["server"]["master_key"] = value
    else:
        config["providers"][0][field] = value
    result = serve(tmp_path, config)
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert ("server.master_key" if field == "master_key" else f"providers[0].{field}") in output
    assert "must be" in output
    for secret in ("1234567890", "secret-value-4242", "secret-header-value-4242"):
        assert secret not in output, output


# -- start-up ----------------------------------------------------------------------------------------------------------

def test_unreachable_connections_are_warned_about_in_the_background(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    config = config_for(fake_openai, tmp_path / "data")
    config["providers"].append({
        "name": "down", "type": "openai", "base_url": f"http://probe-user:probe-password@127.0.0.1:{closed}/v1",
        "api_key": "sk-down-secret-key", "headers": {"X-Token": "header-secret"},
        "models": [{"id": "down/model", "upstream": "model"}]})
    gw = GatewayProcess(config, tmp_path)
    started = time.monotonic()
    gw.start(wait=False)
    try:
        ready = gw.wait_ready(timeout=10)
        # A coarse bound on start-up, not a speed target (a loaded CI machine needs over two seconds to start one).
        assert ready < 6.0, f"ready after {time.monotonic() - started:.2f} s"
        deadline = time.monotonic() + 5
        while "is unreachable" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        time.sleep(0.3)
        log = gw.log()
        warnings = [line for line in log.splitlines() if "is unreachable" in line]
        assert len(warnings) == 1, warnings
        assert "connection down" in warnings[0] and f"127.0.0.1:{closed}" in warnings[0]
        for secret in ("probe-password", "probe-user", "sk-down-secret-key", "header-secret", fake_openai.api_key):
            assert secret not in log
    finally:
        assert gw.stop() == 0


def test_alembic_lines_are_debug(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    quiet = GatewayProcess(config_for(fake_openai, tmp_path / "a" / "data"), tmp_path / "a",
                           args=["--log-format", "text"]).start()
    assert quiet.stop() == 0
    assert not re.search(r" alembic\.\w", quiet.log()), quiet.log()
    (tmp_path / "b").mkdir()
    loud = GatewayProcess(config_for(fake_openai, tmp_path / "b" / "data"), tmp_path / "b",
                          args=["--log-level", "debug", "--log-format", "text"]).start()
    assert loud.stop() == 0
    alembic = [line for line in loud.log().splitlines() if re.search(r" alembic\.\w", line)]
    assert alembic and all(" DEBUG alembic" in line for line in alembic), alembic


def test_a_restart_says_where_the_master_key_is_kept(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = config_for(fake_openai, tmp_path / "data")
    del config["server"]["master_key"]
    first = GatewayProcess(config, tmp_path).start()
    assert first.stop() == 0
    key = (tmp_path / "data" / "master_key").read_text().strip()
    assert key in first.log()
    second = GatewayProcess(config, tmp_path).start()
    assert second.stop() == 0
    assert key not in second.log()
    assert f"master key: {tmp_path / 'data' / 'master_key'}" in second.log().splitlines()
    assert "store: sqlite:///" in second.log()


def test_workers_argument() -> None:
    from crossroads.cli import _parser

    parse = _parser().parse_args
    assert parse(["serve", "--workers", "3"]).workers == 3
    assert parse(["serve"]).workers == 1
    assert parse(["serve", "--workers", "auto"]).workers == len(os.sched_getaffinity(0))
    for bad in ("0", "-2", "many"):
        result = subprocess.run([sys.executable, "-m", "crossroads", "serve", "--workers", bad],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "--workers" in result.stderr and "Traceback" not in result.stderr


def test_worker_timeout_argument() -> None:
    from crossroads.cli import _parser

    parse = _parser().parse_args
    assert parse(["serve"]).worker_timeout is None  # the supervisor's default, workers.WORKER_TIMEOUT (30 s)
    assert parse(["serve", "--worker-timeout", "2.5"]).worker_timeout == 2.5
    for bad in ("0", "0.5", "-1", "inf", "nan", "soon"):
        result = subprocess.run([sys.executable, "-m", "crossroads", "serve", "--worker-timeout", bad],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (bad, result.stderr)
        assert "--worker-timeout" in result.stderr and "Traceback" not in result.stderr, result.stderr
    # With one process it does nothing, and says so (here before the configuration, missing on purpose, is read).
    result = subprocess.run([sys.executable, "-m", "crossroads", "serve", "--worker-timeout", "5", "--config",
                             "/nonexistent/crossroads.yaml"], capture_output=True, text=True, timeout=30)
    assert "note: --worker-timeout watches the workers of --workers above 1" in result.stderr, result.stderr
    result = subprocess.run([sys.executable, "-m", "crossroads", "serve", "--workers", "2", "--worker-timeout", "5",
                             "--config", "/nonexistent/crossroads.yaml"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "note:" not in result.stderr, result.stderr
