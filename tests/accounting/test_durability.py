"""Generation records survive a SIGTERM under load and a database outage; strict durability writes before answering.

Data loss (issue #17), against real PostgreSQL cut off by a TCP proxy: text PostgreSQL refuses (NUL) is recorded;
a SIGTERM during an outage spools the held records and the next start writes them (and counts their spend); batched
keeps answering during an outage, spooling what its buffer cannot hold; strict answers 503 instead of waiting."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayProcess, GatewayServer
from tests.fakes.base import Fault
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.tcpproxy import TcpProxy

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def config(upstream: FakeOpenAI, data_dir: Path, **accounting) -> dict:
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir), "shutdown_grace": 10},
        "accounting": accounting,
        "providers": [{"name": "oai", "type": "openai", "base_url": upstream.base_url + "/v1",
                       "api_key": upstream.api_key, "timeout": 10,
                       "models": [{"id": MODEL, "upstream": "gpt-4o-mini",
                                   "pricing": {"prompt": 1.0, "completion": 2.0}}]}],
    }


def chat(url: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx.Client(timeout=30) as client:
        resp = client.post(url + "/api/v1/chat/completions", headers=AUTH, json=body)
        resp.read()
        return resp


def sqlite_ids(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / "crossroads.db") as db:
        return {row[0] for row in db.execute("SELECT id FROM generations")}


def test_sigterm_under_load_loses_no_record(upstream, tmp_path) -> None:
    # Records would only reach the database at the next periodic flush, 60 s away: only the shutdown flush can
    # write them, so every record found afterwards proves it.
    upstream.reset()
    data_dir = tmp_path / "data"
    gw = GatewayProcess(config(upstream, data_dir, flush_interval=60), tmp_path).start()
    try:
        done = [chat(gw.url) for _ in range(10)]
        upstream.fault(*[Fault(delay=0.8) for _ in range(30)], *[Fault(chunk_delay=0.05) for _ in range(10)])
        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            slow = [pool.submit(chat, gw.url, stream=i >= 30) for i in range(40)]
            deadline = time.monotonic() + 5
            while len(upstream.requests) < 50:  # all 40 are in flight (a fixed sleep raced a loaded machine)
                assert time.monotonic() < deadline, f"only {len(upstream.requests) - 10} of 40 reached the upstream"
                time.sleep(0.02)
            gw.proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in slow]
        assert gw.proc.wait(20) == 0
    finally:
        gw.stop()
    # In-flight requests were allowed to finish inside the grace period.
    assert [a.status_code for a in answers] == [200] * 40
    ids = {r.headers["x-generation-id"] for r in [*done, *answers]}
    assert len(ids) == 50
    assert sqlite_ids(data_dir) == ids


def test_strict_durability_writes_before_the_response(upstream, tmp_path) -> None:
    upstream.reset()
    for mode, expect_written in (("strict", True), ("batched", False)):
        data_dir = tmp_path / mode
        workdir = tmp_path / f"{mode}-work"
        workdir.mkdir()
        gw = GatewayServer(config(upstream, data_dir, durability=mode, flush_interval=60), workdir).start()
        try:
            for stream in (False, True):
                resp = chat(gw.url, stream=stream)
                assert resp.status_code == 200
                written = resp.headers["x-generation-id"] in sqlite_ids(data_dir)
                assert written is expect_written, (mode, stream)
        finally:
            gw.stop()


def postgres_ids(url: str) -> set[str]:
    import asyncpg

    async def fetch() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            return {r["id"] for r in await conn.fetch("SELECT id FROM generations")}
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_database_outage_loses_no_record(upstream, tmp_path, postgres_database) -> None:
    upstream.reset()
    host_port = postgres_database.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    via_proxy = postgres_database.replace(host_port, f"127.0.0.1:{proxy.port}")
    gw = GatewayServer(config(upstream, tmp_path / "data", flush_interval=0.2), tmp_path,
                       env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        before = [chat(gw.url) for _ in range(5)]
        deadline = time.monotonic() + 10
        while postgres_ids(postgres_database) != {r.headers["x-generation-id"] for r in before}:
            assert time.monotonic() < deadline, "records not written while the database was up"
            time.sleep(0.1)

        proxy.down()
        during = [chat(gw.url, stream=i % 2 == 1) for i in range(20)]
        # Inference keeps working while the database is away, and the records can be read back from memory.
        assert [r.status_code for r in during] == [200] * 20
        probe = during[0].headers["x-generation-id"]
        got = httpx.get(gw.url + "/api/v1/generation", params={"id": probe}, headers=AUTH)
        assert got.status_code == 200 and got.json()["data"]["id"] == probe
        time.sleep(2.0)  # several flushes fail meanwhile
        proxy.up()

        expected = {r.headers["x-generation-id"] for r in [*before, *during]}
        deadline = time.monotonic() + 20
        while (found := postgres_ids(postgres_database)) != expected:
            assert time.monotonic() < deadline, f"{len(expected - found)} records missing after the outage"
            time.sleep(0.2)
        assert "held for retry" in gw.log()
    finally:
        gw.stop()
        proxy.close()


# --- data loss (issue #17) ------------------------------------------------------------------------------------------

@pytest.fixture
def proxied(postgres_database) -> Iterator[tuple[str, TcpProxy]]:  # noqa: ANN001
    """The test database's URL through a TCP proxy that can cut it off, and the proxy."""
    host_port = postgres_database.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    yield postgres_database.replace(host_port, f"127.0.0.1:{proxy.port}"), proxy
    proxy.close()


def post_chat(url: str, *, stream: bool = False, user: str | None = None, timeout: float = 30,
              key: str = MASTER_KEY) -> httpx.Response:
    body: dict = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if user is not None:
        body["user"] = user
    with httpx.Client(timeout=timeout) as client:
        resp = client.post(url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body)
        resp.read()
        return resp


def postgres_rows(url: str, sql: str) -> list[tuple]:
    import asyncpg

    async def fetch() -> list[tuple]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def wait_for_ids(url: str, expected: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not expected <= (found := postgres_ids(url)):
        assert time.monotonic() < deadline, f"{len(expected - found)} of {len(expected)} records missing"
        time.sleep(0.1)


def spool_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "spool").glob("generations-*.jsonl"))


def test_nul_in_request_text_is_recorded_on_postgres(upstream, tmp_path, postgres_database) -> None:
    """PostgreSQL refuses NUL in text: such a record used to be dropped (a paid request unbilled, even with strict
    durability) and such a key name answered 500. Now NUL is stored as U+FFFD."""
    upstream.reset()
    for mode in ("batched", "strict"):
        workdir = tmp_path / mode
        workdir.mkdir()
        gw = GatewayServer(config(upstream, workdir / "data", durability=mode, flush_interval=0.1), workdir,
                           env={"CROSSROADS_DATABASE_URL": postgres_database}).start()
        try:
            answers = [post_chat(gw.url, user=f"{mode}\u0000{i}", stream=i % 2 == 1) for i in range(6)]
            assert [a.status_code for a in answers] == [200] * 6
            ids = {a.headers["x-generation-id"] for a in answers}
            if mode == "strict":
                assert ids <= postgres_ids(postgres_database)  # committed before each answer
            wait_for_ids(postgres_database, ids, 10)
            users = {u for (u,) in postgres_rows(postgres_database, "SELECT \"user\" FROM generations")}
            assert {f"{mode}\ufffd{i}" for i in range(6)} <= users
            created = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": f"{mode}\u0000key"})
            assert created.status_code == 201, created.text
            assert created.json()["data"]["name"] == f"{mode}\ufffdkey"
            assert "dropping" not in gw.log() and "refused by the database" not in gw.log()
        finally:
            gw.stop()


def test_sigterm_during_outage_spools_records_and_the_next_start_writes_them(upstream, tmp_path, proxied,
                                                                             postgres_database) -> None:
    via_proxy, proxy = proxied
    direct = postgres_database  # the same database, not through the proxy
    upstream.reset()
    data_dir = tmp_path / "data"
    grace = 2
    settings = config(upstream, data_dir, flush_interval=0.2)
    settings["server"]["shutdown_grace"] = grace
    first = tmp_path / "first"
    first.mkdir()
    gw = GatewayProcess(settings, first, env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        key = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "plain"}).json()["key"]
        # On PostgreSQL without Redis, credit limits are held in the database (gate/pg_credits.py).
        limited = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "limited", "limit": 100})
        limited_key = limited.json()["key"]
        before = [post_chat(gw.url, key=key) for _ in range(5)] + [post_chat(gw.url, key=limited_key)]
        assert [r.status_code for r in before] == [200] * 6
        wait_for_ids(direct, {r.headers["x-generation-id"] for r in before}, 10)
        usage = httpx.get(gw.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]["usage"]
        assert usage > 0  # 5 requests, each billed the same (the fake answers every one alike)
        proxy.down()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            during = list(pool.map(lambda i: post_chat(gw.url, stream=i % 3 == 0, key=key), range(40)))
        assert [r.status_code for r in during] == [200] * 40
        # A key with a limit cannot be counted while its ledger is away: refused (fail closed), never overspent.
        refused = post_chat(gw.url, key=limited_key)
        assert refused.status_code == 503
        assert refused.json()["error"]["metadata"]["code"] == "credit_ledger_unavailable"
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(grace + 10) == 0
        assert time.monotonic() - started < grace + 5
    finally:
        gw.stop()
    held = {r.headers["x-generation-id"] for r in during}
    files = spool_files(data_dir)
    assert files, gw.log()
    spooled = {line.split(b'"', 2)[1].decode() for path in files for line in path.read_bytes().splitlines()}
    assert spooled == held
    assert "kept in the spool file" in gw.log()

    proxy.up()
    second = tmp_path / "second"
    second.mkdir()
    del settings["server"]["port"]
    gw = GatewayProcess(settings, second, env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        wait_for_ids(direct, held | {r.headers["x-generation-id"] for r in before}, 15)
        # Every spooled record counts once the spool is replayed (a key's figures come from the records here).
        again = httpx.get(gw.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}).json()["data"]["usage"]
        assert again == pytest.approx(usage * (5 + 40) / 5)
        deadline = time.monotonic() + 5
        while spool_files(data_dir):
            assert time.monotonic() < deadline, "spool files left after the replay"
            time.sleep(0.1)
    finally:
        gw.stop()


def test_batched_keeps_answering_during_an_outage_and_spools_what_memory_cannot_hold(upstream, tmp_path, proxied,
                                                                                     postgres_database) -> None:
    via_proxy, proxy = proxied
    direct = postgres_database  # the same database, not through the proxy
    upstream.reset()
    data_dir = tmp_path / "data"
    gw = GatewayServer(config(upstream, data_dir, flush_interval=0.2, max_pending=20), tmp_path,
                       env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        before = [post_chat(gw.url) for _ in range(5)]
        wait_for_ids(direct, {r.headers["x-generation-id"] for r in before}, 10)
        proxy.down()
        during, slowest = [], 0.0
        with httpx.Client(timeout=10) as client:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(120):
                started = time.monotonic()
                resp = client.post(gw.url + "/api/v1/chat/completions", headers=AUTH, json=body)
                slowest = max(slowest, time.monotonic() - started)
                during.append(resp)
        assert [r.status_code for r in during] == [200] * 120
        assert slowest < 1.0  # nobody waits for the database
        assert spool_files(data_dir), "a full buffer spools its oldest records"
        assert "written to the spool" in gw.log()
        proxy.up()
        # Back: the held records are written, then the spooled ones, and the spool is emptied.
        wait_for_ids(direct, {r.headers["x-generation-id"] for r in [*before, *during]}, 15)
        deadline = time.monotonic() + 5
        while spool_files(data_dir):
            assert time.monotonic() < deadline, "spool files left after the replay"
            time.sleep(0.1)
    finally:
        gw.stop()


def test_strict_refuses_with_503_while_records_cannot_be_written(upstream, tmp_path, proxied,
                                                                 postgres_database) -> None:
    via_proxy, proxy = proxied
    direct = postgres_database  # the same database, not through the proxy
    upstream.reset()
    gw = GatewayServer(config(upstream, tmp_path / "data", durability="strict"), tmp_path,
                       env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        ok = [post_chat(gw.url) for _ in range(3)]
        assert [r.status_code for r in ok] == [200] * 3
        # A stream in flight when the database goes away cannot commit its record: it ends with the error chunk.
        upstream.fault(Fault(chunk_delay=0.1))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(post_chat, gw.url, stream=True)
            time.sleep(0.3)
            proxy.down()
            started = time.monotonic()
            stream = streaming.result()
        assert time.monotonic() - started < 4
        assert stream.status_code == 200
        last = [e for e in stream.text.split("\n\n") if e.startswith("data: {")][-1]
        error = json.loads(last[len("data: "):])["error"]
        assert error["code"] == 503 and error["metadata"]["code"] == "accounting_store_unavailable"
        # From now on requests are refused before they go upstream, quickly.
        calls_before = len(upstream.requests)
        for stream_flag in (False, True, False):
            started = time.monotonic()
            refused = post_chat(gw.url, stream=stream_flag)
            assert time.monotonic() - started < 1.5
            assert refused.status_code == 503
            body = refused.json()["error"]
            assert body["code"] == 503 and body["metadata"]["code"] == "accounting_store_unavailable"
            assert "strict durability refuses requests it cannot record" in body["message"]
        assert len(upstream.requests) == calls_before
        proxy.up()
        deadline = time.monotonic() + 10
        while (back := post_chat(gw.url)).status_code != 200:
            assert time.monotonic() < deadline, back.text
            time.sleep(0.2)
        # Everything answered 200 is recorded, and so is the stream that ended in error (as what the client saw).
        answered = {r.headers["x-generation-id"] for r in [*ok, back]}
        assert answered <= postgres_ids(direct)
        stream_id = stream.headers["x-generation-id"]
        wait_for_ids(direct, {stream_id}, 10)
        [(status,)] = postgres_rows(direct, f"SELECT status FROM generations WHERE id = '{stream_id}'")
        assert status == 503
    finally:
        gw.stop()
