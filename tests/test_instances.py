"""The multi-instance safety net (crossroads/instances.py): instances register in the database and keep a heartbeat;
a second live instance on one database, where either keeps its limits in process memory, refuses to start.

Store and `claim` tests run on SQLite and on PostgreSQL (when CROSSROADS_TEST_POSTGRES_URL is set, e.g. by
`eval "$(scripts/ci-services.sh)"`); the end-to-end tests start real `crossroads serve` processes on one SQLite file."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossroads import cli, instances
from crossroads.gate.keys import multiprocess_policy_problem
from crossroads.instances import LIVE_AFTER, InstanceHeartbeat, claim, pid_namespace, start_heartbeat
from crossroads.store import KeyRow, Store, migrate
from crossroads.store.rows import InstanceRow
from tests.conftest import MASTER_KEY, POSTGRES_URL, GatewayProcess, free_port
from tests.fakes.openai_fake import FakeOpenAI

BACKENDS = [
    "sqlite",
    # Under CI a missing server is a failure (the postgres_database fixture fails), never a silent skip.
    pytest.param("postgres", marks=pytest.mark.skipif(
        not POSTGRES_URL and not os.environ.get("CI"),
        reason="CROSSROADS_TEST_POSTGRES_URL not set (run: eval \"$(scripts/ci-services.sh)\")")),
]
ENVIRONMENT = ("CROSSROADS_REDIS_URL", "CROSSROADS_DATABASE_URL", "CROSSROADS_INSTANCE_ID", "CROSSROADS_CONFIG",
               "CROSSROADS_WORKERS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gateways started here inherit the environment: no shared store, database or instance id but the test's own.
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database of the test's own."""
    url = (f"sqlite:///{tmp_path / 'db' / 'crossroads.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_database"))
    migrate(url)
    return url


def row(id: str, *, host: str = "web-2", pid: int = 4242, workers: int = 1, shared: bool = False,
        age: float | None = None, pid_namespace: str | None = None) -> InstanceRow:
    """An instance row; `age`: its heartbeat that many seconds old (written as it is)."""
    heartbeat = None if age is None else datetime.now(UTC) - timedelta(seconds=age)
    return InstanceRow(id=id, host=host, pid=pid, workers=workers, shared=shared, pid_namespace=pid_namespace,
                       heartbeat_at=heartbeat)


async def live_ids(store: Store, max_age: float = LIVE_AFTER) -> list[str]:
    return [r.id for r in await store.live_instances(max_age)]


# -- the store --------------------------------------------------------------------------------------------------------

async def test_register_heartbeat_live_unregister(store: Store) -> None:
    await store.register_instance(row("a", host="web-1", pid=101, workers=4, shared=True, pid_namespace="boot/ns"))
    await store.register_instance(row("b", age=60))  # a heartbeat a minute old
    [a] = await store.live_instances(LIVE_AFTER)
    assert (a.id, a.host, a.pid, a.workers, a.shared, a.pid_namespace) == ("a", "web-1", 101, 4, True, "boot/ns")
    assert a.started_at is not None and a.started_at.tzinfo is not None
    assert a.heartbeat_at is not None and abs(a.heartbeat_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert a.heartbeat_age is not None and 0 <= a.heartbeat_age < 5
    both = await store.live_instances(120)
    assert [r.id for r in both] == ["a", "b"]  # newest heartbeat first
    b = both[1]
    assert b.shared is False and b.pid_namespace is None
    assert b.heartbeat_age == pytest.approx(60, abs=5)

    assert await store.heartbeat_instance("b") is True
    assert sorted(await live_ids(store)) == ["a", "b"]
    assert (await store.live_instances(LIVE_AFTER))[0].id == "b"
    assert await store.heartbeat_instance("nobody") is False

    assert await store.unregister_instance("a") is True
    assert await store.unregister_instance("a") is False
    assert await live_ids(store) == ["b"]
    assert await store.heartbeat_instance("a") is False  # a vanished row is not recreated


async def test_live_after_and_prune_use_the_age_given(store: Store) -> None:
    await store.register_instance(row("fresh"))
    await store.register_instance(row("ten", age=10))
    await store.register_instance(row("old", age=LIVE_AFTER + 5))
    assert await live_ids(store) == ["fresh", "ten"]
    assert await live_ids(store, 5) == ["fresh"]
    assert await store.prune_instances(LIVE_AFTER) == 1
    assert await live_ids(store, 3600) == ["fresh", "ten"]
    assert await store.prune_instances(5) == 1
    assert await live_ids(store, 3600) == ["fresh"]


async def test_a_duplicate_id_is_refused(store: Store) -> None:
    await store.register_instance(row("same"))
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        await store.register_instance(row("same"))


# -- claim ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each claim as if made on a host of its own: claims made in this one process would otherwise judge each other by
    pid, and find this process's pid registered by an earlier run, i.e. dead."""
    monkeypatch.setattr(instances, "pid_namespace", lambda: None)


@pytest.mark.usefixtures("elsewhere")
async def test_a_second_instance_without_a_shared_store_is_refused(store: Store) -> None:
    first, problem = await claim(store, workers=2, shared=False)
    assert problem is None
    second, problem = await claim(store, workers=1, shared=False)
    assert problem is not None and second != first
    me = (await store.live_instances(LIVE_AFTER))[0]
    for part in ("CROSSROADS_REDIS_URL", f"host {me.host}", f"pid {os.getpid()}", "2 worker(s)", "s ago",
                 "in process memory", f"forgotten {LIVE_AFTER:g} s after its last heartbeat"):
        assert part in problem, (part, problem)
    assert await live_ids(store) == [first]  # the refused one did not stay registered


@pytest.mark.usefixtures("elsewhere")
async def test_a_shared_instance_beside_one_without_is_refused(store: Store) -> None:
    await store.register_instance(row("memory", host="web-9", pid=999))
    mine, problem = await claim(store, workers=1, shared=True)
    assert problem is not None
    assert "host web-9, pid 999" in problem and "keeps its limits in process memory" in problem
    assert "CROSSROADS_REDIS_URL" in problem
    assert await live_ids(store) == ["memory"]


@pytest.mark.usefixtures("elsewhere")
async def test_shared_instances_may_serve_together(store: Store) -> None:
    first, problem = await claim(store, workers=2, shared=True)
    assert problem is None
    second, problem = await claim(store, workers=2, shared=True)
    assert problem is None
    assert sorted(await live_ids(store)) == sorted([first, second])
    # ...but not beside a third that keeps its limits in memory, whichever starts last.
    third, problem = await claim(store, workers=1, shared=False)
    assert problem is not None and "and 1 more" in problem
    assert third not in await live_ids(store)


@pytest.mark.usefixtures("elsewhere")
async def test_a_dead_instance_is_forgotten(store: Store) -> None:
    await store.register_instance(row("dead", host="gone", age=LIVE_AFTER + 1))  # SIGKILL, host lost...
    mine, problem = await claim(store, workers=1, shared=False)
    assert problem is None
    assert await live_ids(store, 3600) == [mine]  # deleted, not just ignored
    # A heartbeat just inside the window still counts; the window is claim's to choose.
    await store.unregister_instance(mine)
    await store.register_instance(row("quiet", age=LIVE_AFTER - 5))
    _, problem = await claim(store, workers=1, shared=False)
    assert problem is not None and "host web-2" in problem
    _, problem = await claim(store, workers=1, shared=False, live_after=LIVE_AFTER - 10)
    assert problem is None


async def test_an_instance_whose_process_is_gone_from_this_host_is_forgotten_at_once(store: Store) -> None:
    namespace = pid_namespace()
    if namespace is None:
        pytest.skip("no PID namespace to tell processes of this host by")
    ended = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await ended.wait()
    await store.register_instance(row("crashed", pid=ended.pid, pid_namespace=namespace))  # a fresh heartbeat
    await store.register_instance(row("elsewhere", pid=ended.pid, pid_namespace="other-boot/pid:[1]", shared=True))
    mine, problem = await claim(store, workers=1, shared=True)
    assert problem is None
    assert sorted(await live_ids(store)) == sorted(["elsewhere", mine])  # another kernel's pid: not judged here
    await store.unregister_instance(mine)
    # A process that is still there holds its registration.
    running = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        await store.register_instance(row("running", pid=running.pid, pid_namespace=namespace))
        _, problem = await claim(store, workers=1, shared=True)
        assert problem is not None and f"pid {running.pid}" in problem
    finally:
        running.kill()
        await running.wait()


async def test_a_refused_claim_leaves_nothing_when_the_store_fails(store: Store, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    async def broken(max_age_s: float) -> list[InstanceRow]:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(store, "live_instances", broken)
    with pytest.raises(RuntimeError):
        await claim(store, workers=1, shared=False)
    monkeypatch.undo()
    assert await live_ids(store) == []


# -- the heartbeat ----------------------------------------------------------------------------------------------------

async def test_the_heartbeat_keeps_an_instance_live(store: Store) -> None:
    await store.register_instance(row("beating", age=LIVE_AFTER + 30))
    heartbeat = InstanceHeartbeat(store, "beating", interval=0.05)
    heartbeat.start()
    try:
        for _ in range(100):
            if await live_ids(store) == ["beating"]:
                break
            await asyncio.sleep(0.05)
        assert await live_ids(store) == ["beating"]
        before = (await store.live_instances(LIVE_AFTER))[0].heartbeat_at
        await asyncio.sleep(0.3)
        assert (await store.live_instances(LIVE_AFTER))[0].heartbeat_at > before
    finally:
        await heartbeat.stop()
    await heartbeat.stop()  # twice is harmless


class FailingStore:
    def __init__(self, answer: Any, calls: int) -> None:
        self.answer = answer
        self.calls = 0
        self.until = calls
        self.called = asyncio.Event()  # set once heartbeat_instance has been called `calls` times

    async def heartbeat_instance(self, id: str) -> bool:
        self.calls += 1
        if self.calls >= self.until:
            self.called.set()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_heartbeat_errors_are_warned_at_most_every_30_s_and_never_raised(caplog: pytest.LogCaptureFixture
                                                                               ) -> None:
    failing = FailingStore(ConnectionError("database unreachable"), 10)
    heartbeat = InstanceHeartbeat(failing, "x", interval=0.01)
    with caplog.at_level(logging.WARNING, logger="crossroads"):
        heartbeat.start()
        await asyncio.wait_for(failing.called.wait(), 10)
        assert heartbeat._task is not None and not heartbeat._task.done()
        await heartbeat.stop()
    warnings = [r for r in caplog.records if "heartbeat" in r.getMessage()]
    assert len(warnings) == 1 and "database unreachable" in warnings[0].getMessage()
    assert warnings[0].name == "crossroads" and warnings[0].levelno == logging.WARNING


async def test_a_vanished_registration_is_warned_and_the_heartbeat_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    gone = FailingStore(False, 5)
    heartbeat = InstanceHeartbeat(gone, "vanished", interval=0.01)
    with caplog.at_level(logging.WARNING, logger="crossroads"):
        assert await heartbeat.beat() is False
        heartbeat.start()
        await asyncio.wait_for(gone.called.wait(), 10)
        await heartbeat.stop()
    assert [r.getMessage() for r in caplog.records].count(
        "this instance's registration vanished is gone from the database (it was taken for dead): a second "
        "instance without a shared store would not be refused beside it") == 1


async def test_start_heartbeat_reads_the_instance_id_from_the_environment(store: Store,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert start_heartbeat(store) is None
    await store.register_instance(row("from-env", age=LIVE_AFTER + 30))
    monkeypatch.setenv(instances.INSTANCE_ID_VARIABLE, "from-env")
    heartbeat = start_heartbeat(store)
    assert heartbeat is not None and heartbeat.instance_id == "from-env"
    try:
        for _ in range(100):
            if await live_ids(store) == ["from-env"]:
                break
            await asyncio.sleep(0.02)
        assert await live_ids(store) == ["from-env"]  # the first beat comes at once
    finally:
        await heartbeat.stop()


# -- several workers with a shared store --------------------------------------------------------------------------------

def test_a_credit_limit_needs_one_worker_only_without_a_shared_store() -> None:
    assert multiprocess_policy_problem({"limit": 5.0}, workers=2, shared_counters=True) is None
    problem = multiprocess_policy_problem({"limit": 5.0}, workers=2, shared_counters=False)
    assert problem is not None and "CROSSROADS_REDIS_URL" in problem
    assert multiprocess_policy_problem({"limit": 5.0}, workers=1, shared_counters=False) is None
    assert multiprocess_policy_problem({"rpm": 10}, workers=2, shared_counters=True) is None
    assert multiprocess_policy_problem({"rpm": 10}, workers=2, shared_counters=False) is not None


def test_prepare_store_allows_workers_with_credit_limits_when_redis_is_set(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from crossroads.config import load_config

    path = tmp_path / "crossroads.yaml"
    path.write_text(yaml.safe_dump({"server": {"master_key": MASTER_KEY, "data_dir": str(tmp_path / "data")}}))
    config = load_config(str(path))
    url = f"sqlite:///{tmp_path / 'data' / 'crossroads.db'}"
    migrate(url)

    async def add_limited_key() -> None:
        store = await Store.open(url)
        try:
            await store.insert_key(KeyRow(hash="c" * 64, name="capped", label="sk-or-v1-ccc...ccc", limit=5.0))
        finally:
            await store.close()

    asyncio.run(add_limited_key())
    monkeypatch.setenv(instances.INSTANCE_ID_VARIABLE, "restored afterwards")
    problem = cli.prepare_store(config, 2)
    assert problem is not None and "credit limits" in problem and "CROSSROADS_REDIS_URL" in problem
    monkeypatch.setenv("CROSSROADS_REDIS_URL", "redis://127.0.0.1:1/0")  # not reached by prepare_store
    assert cli.prepare_store(config, 2) is None
    instance_id = os.environ[instances.INSTANCE_ID_VARIABLE]
    with sqlite3.connect(tmp_path / "data" / "crossroads.db") as db:
        rows = db.execute("SELECT id, pid, workers, shared FROM instances").fetchall()
        assert rows == [(instance_id, os.getpid(), 2, 1)]
    cli._record_serving(config, 0, only_if=2, instance_id=instance_id)
    with sqlite3.connect(tmp_path / "data" / "crossroads.db") as db:
        assert db.execute("SELECT count(*) FROM instances").fetchone() == (0,)
        assert db.execute("SELECT value FROM meta WHERE name = 'serve_workers'").fetchone() == (0,)


# -- real `crossroads serve` processes on one database ---------------------------------------------------------------

def config_for(fake: FakeOpenAI, data_dir: Path) -> dict:
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir), "port": free_port()},
        "providers": [{"name": "oai", "type": "openai", "base_url": fake.base_url + "/v1", "api_key": fake.api_key,
                       "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini"}]}],
    }


def gateway(fake: FakeOpenAI, tmp_path: Path, name: str, env: dict[str, str] | None = None) -> GatewayProcess:
    """A gateway of its own (config, log, port) on the one store in tmp_path/data."""
    workdir = tmp_path / name
    workdir.mkdir()
    return GatewayProcess(copy.deepcopy(config_for(fake, tmp_path / "data")), workdir, env=env)


def registered(tmp_path: Path) -> list[tuple[str, int, int]]:
    with sqlite3.connect(tmp_path / "data" / "crossroads.db") as db:
        return db.execute("SELECT host, pid, shared FROM instances").fetchall()


def test_a_second_instance_on_one_database_refuses_to_start(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    first = gateway(fake_openai, tmp_path, "first").start()
    try:
        assert first.proc is not None
        assert [pid for _, pid, _ in registered(tmp_path)] == [first.proc.pid]
        with sqlite3.connect(tmp_path / "data" / "crossroads.db") as db:  # the worker beats from its start-up on
            started, beat = db.execute("SELECT started_at, heartbeat_at FROM instances").fetchone()
        assert beat > started
        second = gateway(fake_openai, tmp_path, "second")
        second.start(wait=False)
        assert second.proc is not None
        assert second.proc.wait(30) == 2
        second.stop()
        log = second.log()
        assert "CROSSROADS_REDIS_URL" in log and f"pid {first.proc.pid}" in log, log
        assert "another Crossroads instance is serving this database" in log and "Traceback" not in log
        assert [pid for _, pid, _ in registered(tmp_path)] == [first.proc.pid]
    finally:
        assert first.stop() == 0
    assert registered(tmp_path) == []  # a clean stop unregisters
    third = gateway(fake_openai, tmp_path, "third").start()
    assert third.stop() == 0


def test_a_killed_instance_does_not_block_a_restart_on_its_host(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    if pid_namespace() is None:
        pytest.skip("no PID namespace to tell processes of this host by")
    first = gateway(fake_openai, tmp_path, "first").start()
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.stop()
    assert len(registered(tmp_path)) == 1  # left behind, heartbeat fresh
    again = gateway(fake_openai, tmp_path, "again").start()  # not refused: that pid is gone from this host
    try:
        assert again.proc is not None
        assert [pid for _, pid, _ in registered(tmp_path)] == [again.proc.pid]
    finally:
        assert again.stop() == 0


def test_instances_sharing_redis_serve_together(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    from tests.conftest import redis_test_url

    env = {"CROSSROADS_REDIS_URL": redis_test_url()}
    first = gateway(fake_openai, tmp_path, "first", env=env).start()
    try:
        second = gateway(fake_openai, tmp_path, "second", env=env).start()
        try:
            assert sorted(shared for _, _, shared in registered(tmp_path)) == [1, 1]
            # One without Redis is refused beside them.
            third = gateway(fake_openai, tmp_path, "third")
            third.start(wait=False)
            assert third.proc is not None and third.proc.wait(30) == 2
            third.stop()
            assert "CROSSROADS_REDIS_URL" in third.log() and "and 1 more" in third.log(), third.log()
        finally:
            assert second.stop() == 0
    finally:
        assert first.stop() == 0
    assert registered(tmp_path) == []
