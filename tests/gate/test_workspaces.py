"""Workspaces, environments, members and budgets (issue 16) through a real gateway: the management API and who may
use it, VM-X's workspace paths with the official SDKs, the budget chain's 402s, scoped activity, the users CLI and
the migration of a single-account database."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.conftest import MASTER_KEY, GatewayServer

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]
PRICED = {"prompt": 1.0, "completion": 2.0}
MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def gw(fake_openai, fake_anthropic, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workspaces")
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
        "routing": {"retries": 0},
        "providers": [
            {"name": "oai", "type": "openai", "base_url": fake_openai.base_url + "/v1", "api_key": fake_openai.api_key,
             "models": [{"id": MODEL, "upstream": "gpt-4o-mini", "pricing": PRICED}]},
            {"name": "ant", "type": "anthropic", "base_url": fake_anthropic.base_url + "/v1",
             "api_key": fake_anthropic.api_key,
             "models": [{"id": "anthropic/claude-sonnet-4", "upstream": "claude-sonnet-4-20250514",
                         "pricing": PRICED}]},
            # Only the `owners` workspace's keys see this connection and the route below.
            {"name": "private", "type": "openai", "base_url": fake_openai.base_url + "/v1",
             "api_key": fake_openai.api_key, "workspace": "owners",
             "models": [{"id": "private/model", "upstream": "gpt-4o-mini", "pricing": PRICED}]},
        ],
        "routes": [{"name": "owners-route", "workspace": "owners",
                    "targets": [{"connection": "oai", "model": "gpt-4o-mini"}]}],
    }
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


def api(gw: GatewayServer, method: str, path: str, key: str = MASTER_KEY, **kwargs) -> httpx.Response:
    return httpx.request(method, gw.url + "/api/v1" + path, headers={"Authorization": f"Bearer {key}"}, timeout=20,
                         **kwargs)


def ok(resp: httpx.Response, status: int = 200) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()


def new_workspace(gw: GatewayServer, name: str, budget: dict | None = None, envs: tuple[str, ...] = ("dev", "prod")
                  ) -> dict:
    workspace = ok(api(gw, "POST", "/workspaces", json={"name": name, "budget": budget}), 201)["data"]
    for env in envs:
        ok(api(gw, "POST", f"/workspaces/{workspace['id']}/environments", json={"name": env}), 201)
    return ok(api(gw, "GET", f"/workspaces/{workspace['id']}"))["data"]


def new_key(gw: GatewayServer, key: str = MASTER_KEY, **fields) -> tuple[str, dict]:
    body = ok(api(gw, "POST", "/keys", key, json={"name": "k", **fields}), 201)
    return body["key"], body["data"]


def chat(gw: GatewayServer, key: str, path: str = "/api/v1/chat/completions", **extra) -> httpx.Response:
    return httpx.post(gw.url + path, headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": HELLO, "max_tokens": 10, **extra}, timeout=20)


def test_keys_live_in_the_default_workspace_unless_told(gw) -> None:
    workspaces = ok(api(gw, "GET", "/workspaces"))["data"]
    default = next(w for w in workspaces if w["name"] == "default")
    assert default["id"] == "default" and [e["name"] for e in default["environments"]] == ["default"]
    _, data = new_key(gw)
    assert (data["workspace_id"], data["environment_id"]) == ("default", "default")


def test_workspace_api_rejects_bad_input(gw) -> None:
    assert api(gw, "POST", "/workspaces", json={}).status_code == 400
    assert api(gw, "POST", "/workspaces", json={"name": "a/b"}).status_code == 400
    bad = api(gw, "POST", "/workspaces", json={"name": "bad", "budget": {"limit": -1}})
    assert bad.status_code == 400 and bad.json()["error"]["metadata"]["field"] == "budget.limit"
    assert api(gw, "POST", "/workspaces", json={"name": "bad", "budget": {"limit": 1, "limit_reset": "hourly"}}
               ).status_code == 400
    new_workspace(gw, "dup")
    assert api(gw, "POST", "/workspaces", json={"name": "dup"}).status_code == 409
    assert api(gw, "POST", "/workspaces/dup/environments", json={"name": "dev"}).status_code == 409
    assert api(gw, "GET", "/workspaces/nope").status_code == 404
    assert api(gw, "DELETE", "/workspaces/default").status_code == 400
    plain, _ = new_key(gw)
    assert api(gw, "GET", "/workspaces", plain).status_code == 403  # not a management key
    # Names and ids both address a workspace; a workspace with keys cannot be deleted.
    new_key(gw, workspace="dup", environment="dev")
    assert api(gw, "DELETE", "/workspaces/dup").status_code == 409
    empty = new_workspace(gw, "empty")
    ok(api(gw, "DELETE", f"/workspaces/{empty['id']}"))
    assert api(gw, "GET", "/workspaces/empty").status_code == 404


def test_a_management_key_manages_its_own_workspace_only(gw) -> None:
    a, b = new_workspace(gw, "team-a"), new_workspace(gw, "team-b")
    admin_a, admin_data = new_key(gw, workspace="team-a", management=True)
    assert admin_data["workspace_id"] == a["id"]
    plain_b, key_b = new_key(gw, workspace="team-b", environment="prod")
    # It sees its workspace only; the other one does not exist for it.
    assert [w["id"] for w in ok(api(gw, "GET", "/workspaces", admin_a))["data"]] == [a["id"]]
    assert api(gw, "GET", f"/workspaces/{b['id']}", admin_a).status_code == 404
    assert api(gw, "PATCH", "/workspaces/team-b", admin_a, json={"name": "mine"}).status_code == 404
    assert api(gw, "POST", "/workspaces/team-b/environments", admin_a, json={"name": "x"}).status_code == 404
    assert api(gw, "POST", "/workspaces", admin_a, json={"name": "another"}).status_code == 403
    assert api(gw, "PATCH", "/workspaces/team-a", admin_a, json={"budget": {"limit": 100}}).status_code == 403
    # Keys: made in its workspace (its default environment unless told), never in another's.
    _, made = new_key(gw, admin_a)
    assert made["workspace_id"] == a["id"] and made["environment_id"] == next(
        e["id"] for e in a["environments"] if e["name"] == "default")
    _, made_dev = new_key(gw, admin_a, environment="dev")
    assert made_dev["environment_id"] == next(e["id"] for e in a["environments"] if e["name"] == "dev")
    refused = api(gw, "POST", "/keys", admin_a, json={"name": "x", "workspace": "team-b"})
    assert refused.status_code == 403, refused.text
    listed = {k["hash"] for k in ok(api(gw, "GET", "/keys", admin_a))["data"]}
    assert {made["hash"], made_dev["hash"], admin_data["hash"]} <= listed and key_b["hash"] not in listed
    assert all(k["workspace_id"] == a["id"] for k in ok(api(gw, "GET", "/keys", admin_a))["data"])
    for method in ("GET", "PATCH", "DELETE"):
        resp = api(gw, method, f"/keys/{key_b['hash']}", admin_a, **({"json": {"disabled": True}}
                                                                       if method == "PATCH" else {}))
        assert resp.status_code == 404, (method, resp.text)
    assert ok(api(gw, "GET", f"/keys/{key_b['hash']}"))["data"]["disabled"] is False  # untouched
    # The master key filters by workspace.
    in_b = ok(api(gw, "GET", "/keys?workspace=team-b"))["data"]
    assert [k["hash"] for k in in_b] == [key_b["hash"]]
    # /credits: the workspace's budget and spend for its management key, the gateway's for the master key.
    key_a, _ = new_key(gw, admin_a)
    assert chat(gw, key_a).status_code == 200 and chat(gw, plain_b).status_code == 200
    ok(api(gw, "PATCH", "/workspaces/team-a", json={"budget": {"limit": 7}}))
    mine = ok(api(gw, "GET", "/credits", admin_a))["data"]
    everything = ok(api(gw, "GET", "/credits"))["data"]
    assert mine["total_credits"] == 7 and 0 < mine["total_usage"] < everything["total_usage"]


def test_a_management_key_cannot_raise_a_budget_above_the_ones_above_it(gw) -> None:
    new_workspace(gw, "capped", budget={"limit": 10, "limit_reset": "monthly"})
    admin, _ = new_key(gw, workspace="capped", management=True)
    over = api(gw, "POST", "/workspaces/capped/environments", admin, json={"name": "big", "budget": {"limit": 11}})
    assert over.status_code == 400 and over.json()["error"]["metadata"]["level"] == "workspace"
    ok(api(gw, "POST", "/workspaces/capped/environments", admin, json={"name": "small", "budget": {"limit": 2}}), 201)
    over_key = api(gw, "POST", "/keys", admin, json={"name": "x", "environment": "small", "limit": 3})
    assert over_key.status_code == 400 and over_key.json()["error"]["metadata"]["level"] == "environment"
    _, fits = new_key(gw, admin, environment="small", limit=2)
    assert api(gw, "PATCH", f"/keys/{fits['hash']}", admin, json={"limit": 5}).status_code == 400
    ok(api(gw, "PATCH", f"/keys/{fits['hash']}", json={"limit": 5}))  # the master key may (the chain still holds)


def test_keys_work_on_their_own_workspace_path_only(gw, fake_openai, fake_anthropic) -> None:
    new_workspace(gw, "path-a")
    new_workspace(gw, "path-b")
    key_a, data_a = new_key(gw, workspace="path-a", environment="dev")
    base = f"{gw.url}/v1/completion/path-a/dev"
    client = openai.OpenAI(base_url=base, api_key=key_a)
    completion = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert completion.choices[0].message.content
    assert client.responses.create(model=MODEL, input="hi").output_text
    message = anthropic.Anthropic(base_url=base + "/anthropic", api_key=key_a).messages.create(
        model="anthropic/claude-sonnet-4", max_tokens=20, messages=HELLO)
    assert message.content[0].text
    raw = httpx.post(base + "/anthropic/messages", headers={"x-api-key": key_a},
                     json={"model": "anthropic/claude-sonnet-4", "max_tokens": 20, "messages": HELLO})
    assert raw.status_code == 200, raw.text
    # Another workspace's or environment's path, or one that does not exist: 403, the same for each.
    for other in ("path-b/dev", "path-a/prod", "nope/dev"):
        with pytest.raises(openai.PermissionDeniedError):
            openai.OpenAI(base_url=f"{gw.url}/v1/completion/{other}", api_key=key_a).chat.completions.create(
                model=MODEL, messages=HELLO)
    # The master key on a workspace path is recorded there; the record says where every request was made.
    master = chat(gw, MASTER_KEY, "/v1/completion/path-b/prod/chat/completions")
    assert master.status_code == 200
    generation = ok(api(gw, "GET", f"/generation?id={master.json()['id']}"))["data"]
    b = ok(api(gw, "GET", "/workspaces/path-b"))["data"]
    assert generation["workspace_id"] == b["id"]
    assert generation["environment_id"] == next(e["id"] for e in b["environments"] if e["name"] == "prod")
    mine = ok(api(gw, "GET", f"/generation?id={completion.id}"))["data"]
    assert (mine["workspace_id"], mine["environment_id"]) == (data_a["workspace_id"], data_a["environment_id"])
    assert api(gw, "POST", "/keys").status_code != 404  # the plain paths are unchanged
    assert httpx.post(f"{gw.url}/v1/completion/nope/dev/chat/completions", headers=AUTH,
                      json={"model": MODEL, "messages": HELLO}).status_code == 404


def test_each_level_of_the_chain_refuses_with_its_name(gw) -> None:
    workspace = new_workspace(gw, "chain", budget={"limit": 0})
    member = ok(api(gw, "POST", "/workspaces/chain/members", json={"email": "Ann@Example.com", "role": "member"}),
                201)["data"]
    assert member["email"] == "ann@example.com"
    key, data = new_key(gw, workspace="chain", environment="dev", member="ann@example.com")
    assert data["creator_user_id"] == member["user_id"]

    def refusal() -> dict:
        resp = chat(gw, key)
        assert resp.status_code == 402, resp.text
        return resp.json()["error"]

    error = refusal()
    assert error["metadata"]["level"] == "workspace" and "'chain'" in error["message"]
    ok(api(gw, "PATCH", "/workspaces/chain", json={"budget": {"limit": 5}}))
    ok(api(gw, "PATCH", "/workspaces/chain/environments/dev", json={"budget": {"limit": 0}}))
    assert refusal()["metadata"]["level"] == "environment"
    ok(api(gw, "PATCH", "/workspaces/chain/environments/dev", json={"budget": None}))
    ok(api(gw, "PATCH", "/workspaces/chain/members/ann@example.com", json={"budget": {"limit": 0}}))
    assert refusal()["metadata"]["level"] == "member"
    ok(api(gw, "PATCH", f"/workspaces/chain/members/{member['user_id']}", json={"budget": None}))
    ok(api(gw, "PATCH", f"/keys/{data['hash']}", json={"limit": 0}))
    error = refusal()
    assert error["metadata"]["level"] == "key" and "the key has" in error["message"]
    ok(api(gw, "PATCH", f"/keys/{data['hash']}", json={"limit": None}))
    assert chat(gw, key).status_code == 200
    # What was spent shows on every level.
    shown = ok(api(gw, "GET", f"/workspaces/{workspace['id']}"))["data"]
    assert shown["budget"]["usage"] > 0 and shown["budget"]["limit_remaining"] < 5
    dev = next(e for e in shown["environments"] if e["name"] == "dev")
    assert dev["budget"]["usage"] == shown["budget"]["usage"]
    members = ok(api(gw, "GET", "/workspaces/chain/members"))["data"]
    assert members[0]["budget"]["usage"] == shown["budget"]["usage"]


def test_a_workspace_budget_holds_under_concurrency(gw) -> None:
    # Two keys share one small workspace budget: together they never spend past it.
    new_workspace(gw, "shared-budget", budget={"limit": 0.0005})
    keys = [new_key(gw, workspace="shared-budget", environment=env)[0] for env in ("dev", "prod")]

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {keys[i % 2]}"},
                            json={"model": MODEL, "messages": HELLO, "max_tokens": 100}) for i in range(100)))
        return [r.status_code for r in responses]

    statuses = asyncio.run(run())
    assert set(statuses) == {200, 402}, statuses
    time.sleep(0.2)
    spent = ok(api(gw, "GET", "/workspaces/shared-budget"))["data"]["budget"]
    assert 0 < spent["usage"] <= 0.0005


def test_members_api(gw) -> None:
    new_workspace(gw, "people")
    created = ok(api(gw, "POST", "/workspaces/people/members",
                     json={"email": "bob@example.com", "role": "admin", "budget": {"limit": 3, "limit_reset": "daily"}}),
                 201)["data"]
    assert created["role"] == "admin" and created["budget"]["limit"] == 3
    assert api(gw, "POST", "/workspaces/people/members", json={"email": "bob@example.com", "role": "member"}
               ).status_code == 409
    assert api(gw, "POST", "/workspaces/people/members", json={"email": "x@example.com", "role": "god"}
               ).status_code == 400
    assert api(gw, "POST", "/workspaces/people/members", json={"email": "not-an-email", "role": "member"}
               ).status_code == 400
    assert api(gw, "POST", "/workspaces/people/members", json={"email": "y@example.com", "password": "short"}
               ).status_code == 400
    ok(api(gw, "PATCH", "/workspaces/people/members/bob@example.com", json={"role": "viewer"}))
    assert [m["role"] for m in ok(api(gw, "GET", "/workspaces/people/members"))["data"]] == ["viewer"]
    # The same person may belong to another workspace too; removing them from one leaves the other.
    new_workspace(gw, "people-2")
    ok(api(gw, "POST", "/workspaces/people-2/members", json={"email": "bob@example.com", "role": "member"}), 201)
    _, owned = new_key(gw, workspace="people", member="bob@example.com")
    assert api(gw, "DELETE", "/workspaces/people/members/bob@example.com").status_code == 409  # owns a key
    ok(api(gw, "DELETE", f"/keys/{owned['hash']}"))
    ok(api(gw, "DELETE", "/workspaces/people/members/bob@example.com"))
    assert ok(api(gw, "GET", "/workspaces/people/members"))["data"] == []
    assert len(ok(api(gw, "GET", "/workspaces/people-2/members"))["data"]) == 1
    assert api(gw, "POST", "/keys", json={"name": "x", "workspace": "people", "member": "bob@example.com"}
               ).status_code == 404


def test_activity_and_generations_are_scoped_to_the_workspace(gw) -> None:
    new_workspace(gw, "act-a")
    new_workspace(gw, "act-b")
    admin_a, _ = new_key(gw, workspace="act-a", management=True)
    key_a, data_a = new_key(gw, workspace="act-a")
    key_b, data_b = new_key(gw, workspace="act-b")
    gen_a, gen_b = chat(gw, key_a).json()["id"], chat(gw, key_b).json()["id"]
    deadline = time.monotonic() + 5
    while api(gw, "GET", f"/generation?id={gen_b}").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ok(api(gw, "GET", f"/generation?id={gen_a}", admin_a))["data"]["key_hash"] == data_a["hash"]
    assert api(gw, "GET", f"/generation?id={gen_b}", admin_a).status_code == 404
    assert api(gw, "GET", f"/generation?id={gen_b}", key_a).status_code == 404
    time.sleep(1.2)  # the records reach the database (flush interval)
    hashes = {row["key_hash"] for row in ok(api(gw, "GET", "/activity", admin_a))["data"]}
    assert data_a["hash"] in hashes and data_b["hash"] not in hashes
    assert ok(api(gw, "GET", f"/activity?api_key_hash={data_b['hash']}", admin_a))["data"] == []
    every = {row["key_hash"] for row in ok(api(gw, "GET", "/activity"))["data"]}
    assert {data_a["hash"], data_b["hash"]} <= every


def test_users_cli_creates_an_administrator(gw) -> None:
    def users(*args: str, password: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "crossroads", "users", *args, "--config", str(gw.config_path)],
                              input=password, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "NO_COLOR": "1"})

    made = users("create", "--email", "Root@Example.com", "--admin", password="correct horse battery\n")
    assert made.returncode == 0, made.stderr
    assert "root@example.com" in made.stdout and "correct horse" not in made.stdout + made.stderr
    assert users("create", "--email", "root@example.com", password="another password\n").returncode != 0
    assert users("create", "--email", "short@example.com", password="short\n").returncode != 0
    listed = users("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"email": "root@example.com"' in listed.stdout and '"admin": true' in listed.stdout
    data_dir = yaml.safe_load(gw.config_path.read_text())["server"]["data_dir"]
    stored = sqlite3.connect(Path(data_dir) / "crossroads.db").execute(
        "SELECT password_hash FROM users WHERE email = 'root@example.com'").fetchone()[0]
    assert stored.startswith("$argon2id$")

    def sign_in(client: httpx.Client, password: str) -> int:
        return client.post("/signin", data={"email": "root@example.com", "password": password}).status_code

    with httpx.Client(base_url=gw.url, timeout=15) as before, httpx.Client(base_url=gw.url, timeout=15) as after:
        assert sign_in(before, "correct horse battery") == 303 and before.get("/").status_code == 200
        changed = users("set-password", "--email", "root@example.com", password="a brand new password\n")
        assert changed.returncode == 0 and "password set" in changed.stdout, changed.stderr
        assert before.get("/").status_code == 303  # signed out: the password changed
        assert sign_in(after, "correct horse battery") == 401 and sign_in(after, "a brand new password") == 303
        assert users("disable", "--email", "root@example.com").returncode == 0
        assert after.get("/").status_code == 303 and sign_in(after, "a brand new password") == 401
        assert users("enable", "--email", "root@example.com").returncode == 0
        assert sign_in(after, "a brand new password") == 303 and after.get("/").status_code == 200
    missing = users("disable", "--email", "nobody@example.com")
    assert missing.returncode != 0 and "no user" in missing.stderr


def test_migration_moves_a_single_account_database_into_the_default_workspace(tmp_path: Path) -> None:
    """A database made before workspaces (revision 0005), with keys and records, upgrades with nothing lost."""
    from crossroads.store.migrate import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0005")
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute("INSERT INTO api_keys (hash, name, label, \"limit\", disabled, is_management, created_at, updated_at, "
               "priority) VALUES ('h1', 'old key', 'sk-...', 5.0, 0, 0, '2026-01-01 00:00:00.000000', "
               "'2026-01-01 00:00:00.000000', 'normal')")
    for n, key_hash in enumerate(("h1", None)):
        db.execute("INSERT INTO generations (id, created_at, key_hash, model, api_type, streamed, cancelled, status, "
                   "tokens_prompt, tokens_completion, tokens_reasoning, tokens_cached, tokens_cache_write, cost) "
                   "VALUES (?, '2026-01-02 00:00:00.000000', ?, 'm', 'chat', 0, 0, 200, 1, 2, 0, 0, 0, 0.25)",
                   (f"gen-{n}", key_hash))
    db.commit()
    db.close()
    migrate(url)
    db = sqlite3.connect(tmp_path / "old.db")
    assert db.execute("SELECT name, \"limit\", workspace_id, environment_id, user_id FROM api_keys").fetchall() == [
        ("old key", 5.0, "default", "default", None)]
    assert db.execute("SELECT id, key_hash, workspace_id, cost FROM generations ORDER BY id").fetchall() == [
        ("gen-0", "h1", "default", 0.25), ("gen-1", None, None, 0.25)]
    assert db.execute("SELECT id, name FROM workspaces").fetchall() == [("default", "default")]
    assert db.execute("SELECT id, workspace_id, name FROM environments").fetchall() == [
        ("default", "default", "default")]


def test_connections_and_routes_of_a_workspace_serve_its_keys_only(gw) -> None:
    # At start the `owners` workspace did not exist yet: the operator was told.
    assert "connection private belongs to workspace 'owners', which does not exist" in gw.log()
    assert "route owners-route belongs to workspace 'owners'" in gw.log()
    new_workspace(gw, "owners")
    owner, _ = new_key(gw, workspace="owners")
    outsider, _ = new_key(gw)

    def listed(key: str) -> set[str]:
        return {m["id"] for m in ok(httpx.get(gw.url + "/api/v1/models", headers={"Authorization": f"Bearer {key}"})
                                    )["data"]}

    assert {"private/model", "owners-route", MODEL} <= listed(owner)
    assert MODEL in listed(outsider) and not {"private/model", "owners-route"} & listed(outsider)
    assert {"private/model", "owners-route"} <= listed(MASTER_KEY)
    for model in ("private/model", "owners-route"):
        assert chat(gw, owner, model=model).status_code == 200
        refused = chat(gw, outsider, model=model)
        assert refused.status_code == 404 and refused.json()["error"]["metadata"]["code"] == "model_not_found"
        assert chat(gw, MASTER_KEY, model=model).status_code == 200
    endpoints = "/api/v1/models/private/model/endpoints"
    assert httpx.get(gw.url + endpoints, headers={"Authorization": f"Bearer {owner}"}).status_code == 200
    assert httpx.get(gw.url + endpoints, headers={"Authorization": f"Bearer {outsider}"}).status_code == 404
    assert httpx.get(gw.url + endpoints, headers=AUTH).status_code == 200
    # The master key on another workspace's path sees what that workspace sees.
    assert chat(gw, MASTER_KEY, "/v1/completion/default/default/chat/completions", model="private/model"
                ).status_code == 404


def test_metrics_count_requests_and_cost_per_workspace(gw) -> None:
    def scrape() -> dict[str, float]:
        resp = httpx.get(gw.url + "/metrics")
        assert resp.status_code == 200, resp.text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in resp.text.splitlines()
                if line.startswith("crossroads_workspace_")}

    new_workspace(gw, "metered")
    key, _ = new_key(gw, workspace="metered")
    before = scrape()
    assert chat(gw, key).status_code == 200
    after = scrape()
    requests = 'crossroads_workspace_requests_total{status_class="2xx",workspace="metered"}'
    cost = 'crossroads_workspace_cost_usd_total{workspace="metered"}'
    assert after[requests] - before.get(requests, 0.0) == 1
    assert after[cost] - before.get(cost, 0.0) > 0


def test_openrouter_sdk_reads_workspaces(gw) -> None:
    """OpenRouter's own SDK lists, creates and reads workspaces against Crossroads (its Workspace model)."""
    from openrouter import OpenRouter

    with OpenRouter(api_key=MASTER_KEY, server_url=gw.url + "/api/v1") as client:
        made = client.workspaces.create(name="SDK Team", slug="sdk-team")
        assert made.data.name == "SDK Team" and made.data.slug == "sdk-team"
        assert client.workspaces.get(id=made.data.id).data.id == made.data.id
        listed = client.workspaces.list(limit=500)
        assert made.data.id in [w.id for w in listed.result.data] and listed.result.total_count >= 2
        first = client.workspaces.list(limit=1)
        assert len(first.result.data) == 1
    assert api(gw, "GET", "/workspaces?limit=0").status_code == 400


def test_openrouter_sdk_manages_members_and_budgets(gw) -> None:
    """The SDK's bulk member calls and per-interval budgets, on a workspace named by its slug."""
    from openrouter import OpenRouter, errors

    new_workspace(gw, "Bulk Team", envs=())
    people = [ok(api(gw, "POST", "/workspaces/Bulk Team/members", json={"email": f"p{i}@bulk.test", "role": "viewer"}),
                 201)["data"]["user_id"] for i in range(2)]
    ok(api(gw, "DELETE", f"/workspaces/Bulk Team/members/{people[1]}"))
    ok(api(gw, "POST", "/workspaces", json={"name": "bulk-other"}), 201)
    ok(api(gw, "POST", "/workspaces/bulk-other/members", json={"email": "p9@bulk.test", "role": "member"}), 201)
    stranger = next(m["user_id"] for m in ok(api(gw, "GET", "/workspaces/bulk-other/members"))["data"])
    with OpenRouter(api_key=MASTER_KEY, server_url=gw.url + "/api/v1") as client:
        added = client.workspaces.bulk_add_members(id="bulk-team", user_ids=[people[0], people[1], stranger])
        assert added.added_count == 2 and {m.user_id for m in added.data} == {people[1], stranger}
        listed = client.workspaces.list_members(id="bulk-team")
        assert listed.result.total_count == 3 and {m.role for m in listed.result.data} == {"viewer", "member"}
        with pytest.raises(errors.OpenRouterError) as unknown:
            client.workspaces.bulk_add_members(id="bulk-team", user_ids=["no-such-user"])
        assert unknown.value.status_code == 404
        assert client.workspaces.bulk_remove_members(id="bulk-team", user_ids=[stranger, "nobody"]).removed_count == 1
        assert client.workspaces.list_budgets(workspace_ref="bulk-team").data == []
        made = client.workspaces.set_budget(workspace_ref="bulk-team", interval="monthly", limit_usd=25)
        assert made.data.limit_usd == 25 and made.data.reset_interval == "monthly"
        assert client.workspaces.get_budget(workspace_ref="bulk-team", interval="monthly").data.limit_usd == 25
        with pytest.raises(errors.OpenRouterError) as second:  # one budget per workspace: not silently replaced
            client.workspaces.set_budget(workspace_ref="bulk-team", interval="daily", limit_usd=5)
        assert second.value.status_code == 409 and "one budget per workspace" in second.value.body
        with pytest.raises(errors.OpenRouterError) as missing:
            client.workspaces.get_budget(workspace_ref="bulk-team", interval="daily")
        assert missing.value.status_code == 404
        assert client.workspaces.delete_budget(workspace_ref="bulk-team", interval="monthly").DELETED is True
        assert client.workspaces.list_budgets(workspace_ref="bulk-team").data == []
    workspace = ok(api(gw, "GET", "/workspaces/bulk-team"))["data"]
    assert workspace["budget"]["limit"] is None and workspace["members"] == 2
    # A workspace's management key manages members, but its workspace's budget is the master key's.
    admin, _ = new_key(gw, workspace="bulk-team", management=True)
    assert api(gw, "PUT", "/workspaces/bulk-team/budgets/daily", admin, json={"limit_usd": 1}).status_code == 403
    assert api(gw, "GET", "/workspaces/bulk-team/budgets", admin).status_code == 200
    assert api(gw, "POST", "/workspaces/bulk-other/members/add", admin, json={"user_ids": people}).status_code == 404
    assert api(gw, "PUT", "/workspaces/bulk-team/budgets/yearly", json={"limit_usd": 1}).status_code == 400
    assert api(gw, "PUT", "/workspaces/bulk-team/budgets/daily", json={"limit_usd": 0}).status_code == 400


def test_the_key_endpoint_lists_every_budget_above_the_key(gw) -> None:
    """GET /key's `budgets` (OpenRouter's KeyBudget objects, read by its SDK): each level with a limit, with the
    current period's spend, and the one with the least left as `effective_budget`."""
    from openrouter import OpenRouter

    new_workspace(gw, "layers", budget={"limit": 50, "limit_reset": "monthly"})
    ok(api(gw, "PATCH", "/workspaces/layers/environments/dev", json={"budget": {"limit": 20, "limit_reset": "daily"}}))
    ok(api(gw, "POST", "/workspaces/layers/members", json={"email": "lay@example.com", "role": "member",
                                                            "budget": {"limit": 30, "limit_reset": "weekly"}}), 201)
    key, data = new_key(gw, workspace="layers", environment="dev", member="lay@example.com", limit=10)
    assert chat(gw, key).status_code == 200
    with OpenRouter(api_key=key, server_url=gw.url + "/api/v1") as client:
        shown = client.api_keys.get_current_key_metadata().data
    by_scope = {b.scope: b for b in shown.budgets}
    assert set(by_scope) == {"key_limit", "environment", "member", "workspace"}
    assert [b.limit_usd for b in shown.budgets] == [10, 20, 30, 50]  # the order the chain checks them
    assert by_scope["environment"].reset_interval == "daily" and by_scope["environment"].resets_at is not None
    assert by_scope["key_limit"].reset_interval is None and by_scope["key_limit"].resets_at is None
    spent = by_scope["key_limit"].spend_usd
    assert spent > 0 and all(b.spend_usd == spent for b in shown.budgets)
    assert by_scope["workspace"].budget_id is not None and by_scope["member"].budget_id is None
    assert shown.effective_budget.scope == "key_limit" and shown.effective_budget.remaining_usd == 10 - spent
    # The master key has no budget above it.
    assert ok(api(gw, "GET", "/key"))["data"]["budgets"] == []
    assert data["limit"] == 10


def test_concurrent_creates_of_one_name_get_one_201_and_409s(gw) -> None:
    """Between the in-memory name check and the insert another request may take the name: the database's unique
    index decides, and the loser gets the same 409 as a late request (it was a 500)."""
    import concurrent.futures

    def create(path: str, name: str) -> int:
        return httpx.post(gw.url + path, headers=AUTH, json={"name": name}, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for round_ in range(3):
            statuses = list(pool.map(create, ["/api/v1/workspaces"] * 12, [f"race-{round_}"] * 12))
            assert sorted(set(statuses)) in ([201], [201, 409]) and statuses.count(201) == 1, statuses
            statuses = list(pool.map(create, [f"/api/v1/workspaces/race-{round_}/environments"] * 12,
                                     ["staging"] * 12))
            assert sorted(set(statuses)) in ([201], [201, 409]) and statuses.count(201) == 1, statuses
