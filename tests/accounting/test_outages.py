"""The shared stores go away under load, and each documented policy holds (issue 15).

- PostgreSQL cut off for 20 s while clients keep sending (batched durability): every client is served throughout,
  and once the database is back, every answered request has its generation record.
- PostgreSQL cut off under load with strict durability: every answer is a 200 or a clear 503
  (`accounting_store_unavailable`), and every 200 has its record.
- Redis cut off under load: keys with a credit limit or a rate limit are refused with 503 while it is away (limits
  fail closed, the default), keys without limits are served throughout, and the limited keys are served again once
  it is back.

The stores are real servers (scripts/ci-services.sh); a TCP proxy (tests/fakes/tcpproxy.py) cuts the gateway off
from them while they keep running, as a network partition or a restart looks from the gateway. Load is a few
client threads sending steadily, each request on a new connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.accounting.test_durability import AUTH, MODEL, postgres_ids
from tests.accounting.test_durability import config as durability_config
from tests.conftest import MASTER_KEY, GatewayProcess, redis_test_url
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.tcpproxy import TcpProxy


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def config(upstream: FakeOpenAI, data_dir: Path, **accounting: object) -> dict:
    """tests/accounting/test_durability.py's gateway, its records flushed every 0.2 s."""
    return durability_config(upstream, data_dir, **{"flush_interval": 0.2, **accounting})


def proxy_to(url: str) -> tuple[TcpProxy, str]:
    """A cut-off-able proxy to the server of `url`, and `url` through it."""
    host_port = url.split("@", 1)[1] if "@" in url else url.split("://", 1)[1]
    host_port = host_port.split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    return proxy, url.replace(host_port, f"127.0.0.1:{proxy.port}")


@dataclass
class Answer:
    at: float
    status: int
    generation: str | None
    code: str | None  # error.metadata.code of an error answer


@dataclass
class Load:
    """Client threads sending requests back to back until stopped; what each got, with when it was sent."""

    send: Callable[[str], httpx.Response]
    keys: list[str]
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, per_key: int = 2) -> Load:
        for key in self.keys:
            self.answers[key] = []
            for _ in range(per_key):
                thread = threading.Thread(target=self._run, args=(key,), daemon=True)
                thread.start()
                self.threads.append(thread)
        return self

    def _run(self, key: str) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                resp = self.send(key)
            except httpx.HTTPError as exc:  # a connection the gateway dropped: never acceptable here
                self.answers[key].append(Answer(sent, -1, None, type(exc).__name__))
                continue
            error = resp.json().get("error") if resp.status_code != 200 else None
            self.answers[key].append(Answer(sent, resp.status_code, resp.headers.get("x-generation-id"),
                                            ((error or {}).get("metadata") or {}).get("code")))
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def chat_sender(gw: GatewayProcess) -> Callable[[str], httpx.Response]:
    def send(key: str) -> httpx.Response:
        return httpx.post(gw.url + "/api/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    return send


def outage(load: Load, proxy: TcpProxy, *, before: float, away: float, after: float) -> tuple[float, float]:
    """Cut the proxy off `away` seconds while `load` runs (for `before` seconds first and `after` them after);
    when it went down and came back."""
    time.sleep(before)
    proxy.down()
    went_down = time.monotonic()
    time.sleep(away)
    proxy.up()
    came_back = time.monotonic()
    time.sleep(after)
    load.finish()
    return went_down, came_back


def test_postgres_away_for_20_s_under_load_loses_no_record(upstream, tmp_path, postgres_database) -> None:
    proxy, via_proxy = proxy_to(postgres_database)
    gw = GatewayProcess(config(upstream, tmp_path / "data"), tmp_path,
                        env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        load = Load(chat_sender(gw), [MASTER_KEY]).start(per_key=4)
        went_down, _ = outage(load, proxy, before=1.0, away=20.0, after=1.0)
        answers = load.answers[MASTER_KEY]
        during = [a for a in answers if went_down + 0.5 < a.at < went_down + 19.5]
        assert len(during) > 100, "the load did not keep going while the database was away"
        assert {a.status for a in answers} == {200}, {(a.status, a.code) for a in answers if a.status != 200}
        expected = {a.generation for a in answers}
        deadline = time.monotonic() + 30
        while missing := expected - postgres_ids(postgres_database):
            assert time.monotonic() < deadline, f"{len(missing)} of {len(expected)} records missing after the outage"
            time.sleep(0.3)
    finally:
        gw.stop()
        proxy.close()
    assert "Traceback" not in gw.log()


def test_postgres_away_under_load_with_strict_durability(upstream, tmp_path, postgres_database) -> None:
    proxy, via_proxy = proxy_to(postgres_database)
    gw = GatewayProcess(config(upstream, tmp_path / "data", durability="strict"), tmp_path,
                        env={"CROSSROADS_DATABASE_URL": via_proxy}).start()
    try:
        load = Load(chat_sender(gw), [MASTER_KEY]).start(per_key=4)
        went_down, came_back = outage(load, proxy, before=1.0, away=5.0, after=3.0)
        answers = load.answers[MASTER_KEY]
        refused = [a for a in answers if a.status != 200]
        assert refused, "nothing was refused while records could not be written"
        assert {(a.status, a.code) for a in refused} == {(503, "accounting_store_unavailable")}
        assert any(a.status == 200 for a in answers if a.at > came_back + 1.5), "not served again after the outage"
        assert not [a for a in answers if a.status == 200 and went_down + 1.0 < a.at < came_back - 0.5]
        answered = {a.generation for a in answers if a.status == 200}
        assert answered <= postgres_ids(postgres_database)  # strict: recorded before the answer, nothing to wait for
    finally:
        gw.stop()
        proxy.close()
    assert "Traceback" not in gw.log()


def test_redis_away_under_load_refuses_limited_keys_and_serves_the_rest(upstream, tmp_path) -> None:
    proxy, via_proxy = proxy_to(redis_test_url())
    gw = GatewayProcess(config(upstream, tmp_path / "data"), tmp_path,
                        env={"CROSSROADS_REDIS_URL": via_proxy}).start()
    try:
        def key(**fields: object) -> str:
            made = httpx.post(gw.url + "/api/v1/keys", headers=AUTH, json={"name": "outage", **fields})
            assert made.status_code == 201, made.text
            return made.json()["key"]

        limited, rated, free = key(limit=100.0), key(rpm=100000), key()
        time.sleep(1.2)  # key changes reach the request path within a second
        load = Load(chat_sender(gw), [limited, rated, free]).start()
        went_down, came_back = outage(load, proxy, before=1.5, away=4.0, after=4.0)
        by_key = load.answers
        assert {a.status for a in by_key[free]} == {200}, "a key without limits needs no Redis"
        for limited_key, code in ((limited, "credit_ledger_unavailable"), (rated, "rate_limit_store_unavailable")):
            answers = by_key[limited_key]
            assert {(a.status, a.code) for a in answers if a.status != 200} == {(503, code)}
            middle = [a for a in answers if went_down + 1.5 < a.at < came_back - 0.5]
            assert middle and {a.status for a in middle} == {503}, "a limit was not held while Redis was away"
            assert any(a.status == 200 for a in answers if a.at > came_back + 2.0), "not served after Redis returned"
    finally:
        gw.stop()
        proxy.close()
    assert "Traceback" not in gw.log()
