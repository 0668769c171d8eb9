"""Two instances, each with two worker processes, on one PostgreSQL and one Redis (issue 13's acceptance): credit and
rate limits hold across all four processes, key changes and Responses state travel between instances, and a killed
instance's reservations come back by themselves.

Needs CROSSROADS_TEST_POSTGRES_URL and CROSSROADS_TEST_REDIS_URL (`eval "$(scripts/ci-services.sh)"`); skips
without them, except under CI."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayProcess, new_postgres_database, redis_test_url
from tests.fakes.base import Fault
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MODEL = "openai/fleet"
PRICE = 100.0  # USD per million completion tokens; prompts are free, so a reservation is exactly the real cost
COMPLETION = 7  # what the fake upstream bills by default
COST = COMPLETION * PRICE / 1e6
LEASE = 2.0


def fleet_config(upstream: FakeOpenAI, data_dir: Path) -> dict:
    return {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir)},
            "accounting": {"durability": "strict", "reservation_lease": LEASE, "reconcile_interval": 1.0},
            "routing": {"retries": 0, "breaker": {"failure_threshold": 2}},
            "providers": [{"name": "oai", "type": "openai", "base_url": upstream.base_url + "/v1",
                           "api_key": upstream.api_key, "timeout": 30,
                           "models": [{"id": MODEL, "upstream": "gpt-4o-mini", "context_length": 128000,
                                       "pricing": {"prompt": 0, "completion": PRICE}}]}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def start_fleet(upstream: FakeOpenAI, database: str, mode: str, workdir: Path) -> list[GatewayProcess]:
    """Two instances of two workers on one PostgreSQL, with Redis ("redis") or without ("postgresql": credit limits
    are then held by PostgreSQL alone, gate/pg_credits.py)."""
    env = {"CROSSROADS_DATABASE_URL": database}
    if mode == "redis":
        env["CROSSROADS_REDIS_URL"] = redis_test_url()
    instances: list[GatewayProcess] = []
    try:
        for name in ("a", "b"):
            (workdir / name).mkdir(parents=True)
            gw = GatewayProcess(fleet_config(upstream, workdir / name / "data"), workdir / name,
                                args=["--workers", "2"], env=env)
            instances.append(gw.start(wait=False))
        for gw in instances:
            gw.wait_ready(timeout=60)
    except BaseException:
        for gw in instances:
            gw.stop()
        raise
    return instances


@pytest.fixture(scope="module")
def shared_fleets(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The module's fleets by mode, started when a test first asks for one (see `fleet`)."""
    fleets: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        def get(mode: str) -> list[GatewayProcess]:
            if mode not in fleets:
                database = stack.enter_context(new_postgres_database())
                instances = start_fleet(upstream, database, mode, tmp_path_factory.mktemp(f"fleet-{mode}"))
                stack.callback(lambda: [gw.stop() for gw in instances])
                fleets[mode] = instances
            return fleets[mode]

        yield {"get": get}


@pytest.fixture
def fleet(request: pytest.FixtureRequest, upstream: FakeOpenAI, shared_fleets: dict[str, Any],
          tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    """Two instances of two workers on one PostgreSQL, with Redis (the default) or, parametrised "postgresql",
    without. Tests whose requests only touch keys and workspaces of their own share the module's fleet of their mode;
    a test marked `fresh_fleet` (it kills an instance, opens a breaker or corrupts Redis's figures) gets its own."""
    mode = getattr(request, "param", "redis")
    if request.node.get_closest_marker("fresh_fleet") is None:
        instances = shared_fleets["get"](mode)
        upstream.reset()
        yield instances
        return
    instances = start_fleet(upstream, request.getfixturevalue("postgres_database"), mode, tmp_path)
    try:
        upstream.reset()
        yield instances
    finally:
        for gw in instances:
            gw.stop()


def new_key(gw: GatewayProcess, **fields) -> tuple[str, str]:
    made = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": f"k-{uuid.uuid4().hex[:6]}", **fields})
    assert made.status_code == 201, made.text
    time.sleep(1.0)  # every process of both instances knows of it within a second (keys are polled)
    return made.json()["key"], made.json()["data"]["hash"]


def chat(gw: GatewayProcess, key: str, **extra) -> httpx.Response:
    # A new connection each time, so that both workers of the instance get their share.
    return httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "max_tokens": COMPLETION,
                            "messages": [{"role": "user", "content": "hi"}], **extra}, timeout=60)


def key_info(gw: GatewayProcess, key: str) -> dict:
    return httpx.get(gw.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]


@pytest.mark.parametrize("fleet", ["redis", "postgresql"], indirect=True)
def test_a_credit_limit_holds_across_two_instances_of_two_workers(fleet: list[GatewayProcess]) -> None:
    a, b = fleet
    allowed = 20
    key, _ = new_key(a, limit=allowed * COST)

    def one(index: int) -> int:
        return chat(fleet[index % 2], key).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(one, range(200)))
    assert set(statuses) <= {200, 402}, statuses
    # A reservation is exactly the real cost here, so the fleet admits what one process would: the limit's worth.
    assert statuses.count(200) == allowed
    for gw in fleet:  # every instance sees the fleet's figures
        info = key_info(gw, key)
        assert info["usage"] == pytest.approx(allowed * COST)
        assert info["limit_remaining"] == pytest.approx(0.0, abs=1e-9)
    generations = httpx.get(b.url + "/api/v1/activity", headers=AUTH).json()["data"]
    assert sum(row["requests"] for row in generations) >= allowed


@pytest.mark.parametrize("fleet", ["redis", "postgresql"], indirect=True)
def test_hierarchical_budgets_hold_across_two_instances(fleet: list[GatewayProcess]) -> None:
    """Workspace -> environment -> member -> key, 100 concurrent requests over both instances from keys sharing
    those budgets: each level admits exactly its worth and none is overspent (issue 16)."""
    a, b = fleet

    def api(method: str, path: str, **body) -> dict:
        resp = httpx.request(method, a.url + "/api/v1" + path, headers=AUTH, json=body or None, timeout=20)
        assert resp.status_code in (200, 201), resp.text
        return resp.json()["data"]

    name = f"team-{uuid.uuid4().hex[:6]}"
    api("POST", "/workspaces", name=name, budget={"limit": 30 * COST})
    api("POST", f"/workspaces/{name}/environments", name="prod", budget={"limit": 24 * COST})
    api("POST", f"/workspaces/{name}/members", email=f"{name}@example.com", role="member",
        budget={"limit": 18 * COST})
    member_keys = [new_key(a, workspace=name, environment="prod", member=f"{name}@example.com", limit=12 * COST)[0]
                   for _ in range(2)]
    prod_key, _ = new_key(b, workspace=name, environment="prod")
    other_key, _ = new_key(b, workspace=name)  # the default environment: only the workspace's budget above it
    keys = [*member_keys, prod_key, other_key]

    def one(index: int) -> tuple[int, int, str | None]:
        resp = chat(fleet[index % 2], keys[index % 4])
        level = resp.json()["error"]["metadata"].get("level") if resp.status_code == 402 else None
        return index % 4, resp.status_code, level

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(100)))
    assert {status for _, status, _ in results} <= {200, 402}, results
    served = [sum(1 for k, status, _ in results if k == which and status == 200) for which in range(4)]
    assert served[0] <= 12 and served[1] <= 12  # each member key's own limit
    assert served[0] + served[1] <= 18  # the member's budget
    assert served[0] + served[1] + served[2] <= 24  # the environment's
    assert sum(served) == 30  # the workspace's, exactly: every request reserves its real cost
    assert {level for _, status, level in results if status == 402} <= {"key", "member", "environment", "workspace"}
    workspace = httpx.get(b.url + f"/api/v1/workspaces/{name}", headers=AUTH).json()["data"]
    assert workspace["budget"]["usage"] == pytest.approx(30 * COST)
    assert workspace["budget"]["limit_remaining"] == pytest.approx(0.0, abs=1e-9)
    prod = next(e for e in workspace["environments"] if e["name"] == "prod")
    assert prod["budget"]["usage"] <= 24 * COST + 1e-9


def test_rpm_is_counted_once_for_the_fleet(fleet: list[GatewayProcess]) -> None:
    a, b = fleet
    key, _ = new_key(b, rpm=10)
    if datetime.now(UTC).second > 45:  # the window is a calendar minute: do not straddle two
        time.sleep(61 - datetime.now(UTC).second)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: chat(fleet[i % 2], key).status_code, range(40)))
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses


def test_a_key_disabled_on_one_instance_is_refused_by_the_other_within_a_second(fleet: list[GatewayProcess]) -> None:
    a, b = fleet
    key, key_hash = new_key(a)
    assert chat(b, key).status_code == 200
    changed = httpx.patch(a.url + f"/api/v1/keys/{key_hash}", headers=AUTH, json={"disabled": True})
    assert changed.status_code == 200
    changed_at = time.monotonic()
    while (status := chat(b, key).status_code) == 200 and time.monotonic() - changed_at < 5:
        time.sleep(0.05)
    took = time.monotonic() - changed_at
    assert status == 401 and took <= 1.0, (status, took)
    # Once the second is over, both workers of B refuse it (new connections land on either): the first refusal may
    # come from the worker that polled first.
    time.sleep(max(0.0, 1.0 - (time.monotonic() - changed_at)))
    assert {chat(b, key).status_code for _ in range(6)} == {401}


def test_previous_response_id_continues_on_the_other_instance(fleet: list[GatewayProcess],
                                                              upstream: FakeOpenAI) -> None:
    a, b = fleet
    key, _ = new_key(a)
    headers = {"Authorization": f"Bearer {key}"}
    first = httpx.post(a.url + "/api/v1/responses", headers=headers,
                       json={"model": MODEL, "input": "My name is Ada.", "store": True})
    assert first.status_code == 200, first.text
    upstream.reset()
    second = httpx.post(b.url + "/api/v1/responses", headers=headers,
                        json={"model": MODEL, "input": "What is my name?", "previous_response_id": first.json()["id"]})
    assert second.status_code == 200, second.text
    sent = upstream.last.json["messages"]
    assert any("My name is Ada." in str(message.get("content")) for message in sent), sent
    fetched = httpx.get(b.url + f"/api/v1/responses/{first.json()['id']}", headers=headers)
    assert fetched.status_code == 200 and fetched.json()["id"] == first.json()["id"]


@pytest.mark.fresh_fleet
def test_an_endpoint_ejected_by_one_instance_shows_in_every_instance(fleet: list[GatewayProcess],
                                                                     upstream: FakeOpenAI) -> None:
    a, b = fleet
    key, _ = new_key(a)
    for _ in range(3):
        assert chat(b, key).status_code == 200
    upstream.fault(*[Fault(status=500) for _ in range(6)])
    for _ in range(6):  # 6 failures over A's two workers: at least one worker's breaker (threshold 2) opens
        assert chat(a, key).status_code >= 500
    deadline = time.monotonic() + 15  # each process publishes every 5 s
    while time.monotonic() < deadline:
        endpoint = httpx.get(b.url + "/api/v1/models/openai/fleet/endpoints", headers=AUTH).json()["data"]
        endpoint = endpoint["endpoints"][0]
        # Each process publishes on its own schedule: wait until all four have since their requests.
        if endpoint["status"] == -10 and endpoint["uptime_last_5m"] == pytest.approx(100 * 3 / 9, abs=0.01):
            break
        time.sleep(0.5)
    assert endpoint["status"] == -10, endpoint  # B's own breakers are closed: the ejection is A's
    # Uptime counts every process's attempts: B's 3 successes and A's 6 failures.
    assert endpoint["uptime_last_5m"] == pytest.approx(100 * 3 / 9, abs=0.01), endpoint
    assert endpoint["latency_last_30m"] is not None


def test_a_dashboard_session_and_its_new_key_travel_between_instances(fleet: list[GatewayProcess]) -> None:
    import re

    a, b = fleet
    signed = httpx.post(a.url + "/signin", data={"key": MASTER_KEY, "next": "/keys"})
    assert signed.status_code == 303, signed.text[:300]
    cookies = signed.cookies
    page = httpx.get(b.url + "/keys", cookies=cookies)  # signed in through A, known to B
    assert page.status_code == 200 and "Sign out" in page.text, page.text[:300]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    created = httpx.post(a.url + "/keys", cookies=cookies, data={"csrf": csrf, "name": "from-a"})
    assert created.status_code == 303
    shown = httpx.get(b.url + "/keys", cookies=cookies)  # the once-shown key, shown by the other instance
    key = re.search(r'aria-label="New API key" readonly value="([^"]+)"', shown.text).group(1)
    assert key.startswith("sk-or-v1-")
    assert "New API key" not in httpx.get(a.url + "/keys", cookies=cookies).text  # once
    assert httpx.post(b.url + "/signout", cookies=cookies, data={"csrf": csrf}).status_code == 303
    assert httpx.get(a.url + "/keys", cookies=cookies).status_code == 303  # signed out everywhere


def kill_instance(gw: GatewayProcess) -> None:
    """SIGKILL the supervisor first (so it cannot start new workers), then its workers: a host lost at once."""
    assert gw.proc is not None
    children = subprocess.run(["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(gw.proc.pid, signal.SIGKILL)
    for pid in children:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    gw.proc.wait(10)


@pytest.mark.parametrize("fleet", ["redis", "postgresql"], indirect=True)
@pytest.mark.fresh_fleet
def test_a_killed_instance_releases_its_reservations_and_loses_no_answered_record(
        fleet: list[GatewayProcess], upstream: FakeOpenAI) -> None:
    a, b = fleet
    limit = 1.0
    key, _ = new_key(b, limit=limit)
    # Six requests that hang upstream, on A: their reservations are what A holds when it dies.
    upstream.fault(*[Fault(delay=30) for _ in range(6)])
    hanging = [threading.Thread(target=lambda: _quietly(chat, a, key), daemon=True) for _ in range(6)]
    for thread in hanging:
        thread.start()
    deadline = time.monotonic() + 10
    while len(upstream.requests) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(upstream.requests) == 6
    # Meanwhile, ordinary requests keep being answered by A: every 200 must have its record (strict durability).
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                resp = chat(a, key)
            except httpx.HTTPError:
                continue
            if resp.status_code == 200:
                answered.append(resp.json()["id"])

    loaders = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for thread in loaders:
        thread.start()
    time.sleep(1.0)
    held = key_info(b, key)
    assert held["limit_remaining"] <= limit - 6 * COST + 1e-9  # the hanging six are reserved
    kill_instance(a)
    killed_at = time.monotonic()
    stop.set()
    for thread in loaders:
        thread.join(10)
    assert answered, "A answered nothing before it was killed"
    # Within the lease (plus one renewal tick), the fleet gets the dead instance's reservations back.
    expected = None
    while time.monotonic() - killed_at < LEASE + 3:
        info = key_info(b, key)
        expected = limit - info["usage"]
        if info["limit_remaining"] == pytest.approx(expected, abs=1e-9):
            break
        time.sleep(0.1)
    assert info["limit_remaining"] == pytest.approx(expected, abs=1e-9), info
    assert time.monotonic() - killed_at <= LEASE + 3
    missing = [gid for gid in answered
               if httpx.get(b.url + "/api/v1/generation", params={"id": gid}, headers=AUTH).status_code != 200]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no record"
    # And the records agree with the ledger: the usage B shows is what the records of that key add up to.
    assert key_info(b, key)["usage"] == pytest.approx(len(answered) * COST, rel=0.2)


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except httpx.HTTPError:
        pass


@pytest.mark.fresh_fleet
def test_drift_in_redis_is_corrected_from_the_records(fleet: list[GatewayProcess]) -> None:
    import redis

    a, b = fleet
    key, key_hash = new_key(a, limit=1.0)
    for _ in range(3):
        assert chat(a, key).status_code == 200
    assert key_info(b, key)["usage"] == pytest.approx(3 * COST)
    client = redis.Redis.from_url(redis_test_url())
    total = f"crossroads:credit:{key_hash}:t"
    try:
        assert float(client.get(total)) == pytest.approx(3 * COST)
        client.delete(total)  # Redis forgot the key's spend; no request settles anything from here on
        deadline = time.monotonic() + 5
        # A reconciliation that read the records before the last requests were written may land first (with less):
        # the next one brings the rest.
        while float(client.get(total) or 0) != pytest.approx(3 * COST) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert float(client.get(total) or 0) == pytest.approx(3 * COST)  # reconciled from the records (every 1 s)
        assert key_info(b, key)["usage"] == pytest.approx(3 * COST)
        assert key_info(a, key)["limit_remaining"] == pytest.approx(1.0 - 3 * COST)
    finally:
        client.close()


@pytest.mark.parametrize("fail_open", [False, True])
def test_without_its_redis_a_limited_key_is_refused_and_the_others_are_served(upstream: FakeOpenAI, tmp_path: Path,
                                                                             fail_open: bool) -> None:
    with socket.socket() as sock:  # a port nobody listens on: Redis is down from the start
        sock.bind(("127.0.0.1", 0))
        dead_redis = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    config = fleet_config(upstream, tmp_path / "data")
    config["routing"]["rate_limits_fail_open"] = fail_open
    # A process: the warning read below is logged once per 30 s per process (gate/admission.py), not per gateway.
    gw = GatewayProcess(config, tmp_path, env={"CROSSROADS_REDIS_URL": dead_redis}).start()
    try:
        limited, _ = new_key(gw, limit=1.0)
        rated, _ = new_key(gw, rpm=5)
        free, _ = new_key(gw)
        upstream.reset()
        refused = chat(gw, limited)  # credit limits always fail closed
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["metadata"]["code"] == "credit_ledger_unavailable" and "credit limit" in error["message"]
        assert not upstream.requests  # nothing went upstream that could not be counted
        assert chat(gw, free).status_code == 200  # keys without a limit never need Redis
        rate_limited = chat(gw, rated)
        if fail_open:
            assert rate_limited.status_code == 200 and "x-ratelimit-limit" not in rate_limited.headers
        else:
            assert rate_limited.status_code == 503
            assert rate_limited.json()["error"]["metadata"]["code"] == "rate_limit_store_unavailable"
        info = key_info(gw, limited)  # figures come from the records while Redis is away
        assert info["usage"] == 0.0 and info["limit_remaining"] == 1.0
    finally:
        gw.stop()
    log = gw.log()
    assert "credit ledger (Redis) unavailable" in log and "Traceback" not in log
    assert ("WITHOUT rate limits" in log) == fail_open
