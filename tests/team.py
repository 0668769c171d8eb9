"""A company on one gateway, for the dashboard's workspace tests (HTTP and browser): two workspaces with two
environments each, a connection of each workspace's own, people with every role, keys, and one request per key.

    alpha: ann (owner), mo (member), vi (viewer); keys "alpha-ops" (the workspace's) and "mo-key" (mo's)
    beta:  bo (member); key "bo-key" (bo's)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests import secret_watch
from tests.conftest import MASTER_KEY, GatewayServer

PASSWORD = "correct horse battery"
secret_watch.watch(PASSWORD)
PRICED = {"prompt": 1.0, "completion": 2.0}
PEOPLE = {"ann@alpha.test": ("alpha", "owner"), "mo@alpha.test": ("alpha", "member"),
          "vi@alpha.test": ("alpha", "viewer"), "bo@beta.test": ("beta", "member")}


def team_config(fake_openai: Any, workdir: Path) -> dict:
    upstream = {"type": "openai", "base_url": fake_openai.base_url + "/v1", "api_key": fake_openai.api_key}
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
        "routing": {"retries": 0},
        "accounting": {"flush_interval": 0.2},
        "providers": [
            {"name": "shared", **upstream,
             "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini", "pricing": PRICED}]},
            {"name": "alpha-only", **upstream, "workspace": "alpha",
             "models": [{"id": "alpha/secret-model", "upstream": "gpt-4o-mini", "pricing": PRICED}]},
            {"name": "beta-only", **upstream, "workspace": "beta",
             "models": [{"id": "beta/secret-model", "upstream": "gpt-4o-mini", "pricing": PRICED}]},
        ],
    }


def api(gw: GatewayServer, method: str, path: str, key: str = MASTER_KEY, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.url + "/api/v1" + path, headers={"Authorization": f"Bearer {key}"}, timeout=20,
                         **kwargs)


def ok(resp: httpx.Response, status: int = 200) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()


def build_team(gw: GatewayServer) -> dict[str, Any]:
    """Make the company through the management API; return its keys (plaintext and hash) and one generation id per
    key."""
    for workspace in ("alpha", "beta"):
        ok(api(gw, "POST", "/workspaces", json={"name": workspace}), 201)
        for env in ("dev", "prod"):
            ok(api(gw, "POST", f"/workspaces/{workspace}/environments", json={"name": env}), 201)
    for email, (workspace, role) in PEOPLE.items():
        ok(api(gw, "POST", f"/workspaces/{workspace}/members",
               json={"email": email, "role": role, "password": PASSWORD}), 201)
    world: dict[str, Any] = {"keys": {}, "generations": {}}
    for name, workspace, env, member, model in (
            ("alpha-ops", "alpha", "prod", None, "alpha/secret-model"),
            ("mo-key", "alpha", "dev", "mo@alpha.test", "openai/gpt-4o-mini"),
            ("bo-key", "beta", "dev", "bo@beta.test", "beta/secret-model")):
        body = {"name": name, "workspace": workspace, "environment": env, **({"member": member} if member else {})}
        created = ok(api(gw, "POST", "/keys", json=body), 201)
        world["keys"][name] = {"key": created["key"], "hash": created["data"]["hash"]}
        resp = httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {created['key']}"},
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
                          timeout=20)
        assert resp.status_code == 200, resp.text
        world["generations"][name] = resp.json()["id"]
    deadline = time.monotonic() + 10  # the records reach the database (flush interval)
    while time.monotonic() < deadline:
        if all(api(gw, "GET", f"/generation?id={g}").status_code == 200 for g in world["generations"].values()):
            break
        time.sleep(0.1)
    return world


def start_company(fake_openai: Any, workdir: Path) -> tuple[GatewayServer, dict[str, Any]]:
    """A gateway with the company built in it (stop the process when done)."""
    proc = GatewayServer(team_config(fake_openai, workdir), workdir).start()
    try:
        return proc, build_team(proc)
    except BaseException:
        proc.stop()
        raise
