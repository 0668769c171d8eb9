"""tests/harness.py itself: an in-process gateway is set up as `crossroads serve` sets one up, keeps its own log, and
leaves the test process as it found it."""

from __future__ import annotations

import gc
import json
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import MASTER_KEY, FakeClock, GatewayServer
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def small_config(fake: FakeOpenAI) -> dict:
    return {"server": {"host": "127.0.0.1", "master_key": MASTER_KEY},
            "routing": {"retries": 1, "breaker": {"failure_threshold": 1, "cooldown": 30}},
            "providers": [{"name": "oai", "type": "openai", "base_url": fake.base_url + "/v1", "api_key": fake.api_key,
                           "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini"}]}]}


def access_paths(gw: GatewayServer) -> list[str]:
    return [line["path"] for line in map(json.loads, gw.log().splitlines()) if line["logger"] == "crossroads.access"]


def test_each_gateway_logs_its_own_requests_only(fake_openai, tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = GatewayServer(small_config(fake_openai), tmp_path / "a").start()
    second = GatewayServer(small_config(fake_openai), tmp_path / "b", args=["--log-level", "warning"]).start()
    try:
        assert httpx.get(first.url + "/api/v1/models", headers=AUTH).status_code == 200
        assert httpx.get(second.url + "/api/v1/key", headers=AUTH).status_code == 200
        logging.getLogger("crossroads").warning("a line of the test itself")
    finally:
        assert first.stop() == 0 and second.stop() == 0
    assert access_paths(first) == ["/api/v1/models"]
    assert access_paths(second) == []  # it logs warnings and worse only
    assert "a line of the test itself" not in first.log() + second.log()
    # The data_dir is the workdir's (a process's relative ./data), migrated as `serve` migrates it.
    assert (tmp_path / "a" / "data" / "crossroads.db").exists()


def test_the_process_is_left_as_it_was(fake_openai, tmp_path) -> None:
    thresholds, environment = gc.get_threshold(), dict(os.environ)
    gw = GatewayServer(small_config(fake_openai), tmp_path, env={"CROSSROADS_TEST_HARNESS": "1"}).start()
    try:
        assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0  # Gateway.startup's undone
        assert "CROSSROADS_TEST_HARNESS" not in os.environ  # set only while it started
    finally:
        gw.stop()
    assert dict(os.environ) == environment


def test_workers_need_a_process(fake_openai, tmp_path) -> None:
    with pytest.raises(ValueError, match="process"):
        GatewayServer(small_config(fake_openai), tmp_path, args=["--workers", "2"])


def test_a_fake_clock_times_backoffs_and_cooldowns(fake_openai, tmp_path) -> None:
    from tests.fakes.base import Fault

    clock = FakeClock()
    gw = GatewayServer(small_config(fake_openai), tmp_path, clock=clock).start()
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    try:
        fake_openai.fault(Fault(status=429, headers={"Retry-After": "4"}))
        assert httpx.post(gw.url + "/api/v1/chat/completions", headers=AUTH, json=body).status_code == 200
        assert clock.waits == [4.0] and clock.now() == 1004.0  # the backoff waited on the clock, not in real time
        fake_openai.fault(Fault(status=500))  # the threshold: ejected, so not retried
        assert httpx.post(gw.url + "/api/v1/chat/completions", headers=AUTH, json=body).status_code == 502
        assert gw.gateway.services.health.ejected("oai", "gpt-4o-mini")
        clock.advance(30)
        assert not gw.gateway.services.health.ejected("oai", "gpt-4o-mini")  # cooled down on the clock
    finally:
        gw.stop()


def test_a_gateway_that_cannot_start_says_why(tmp_path) -> None:
    config = {"server": {"master_key": MASTER_KEY}, "providers": [{"name": "x", "type": "no-such-type"}]}
    with pytest.raises(RuntimeError, match="did not start"):
        GatewayServer(config, tmp_path).start()


# -- the suite's own plumbing (tests/__init__.py, tests/machine_share.py) ------------------------------------------------

def test_the_test_clients_share_one_tls_context() -> None:
    with httpx.Client() as first, httpx.Client() as second, httpx.Client(verify=False) as unverified:
        contexts = [client._transport._pool._ssl_context for client in (first, second, unverified)]  # type: ignore
    assert contexts[0] is contexts[1]
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname
    assert contexts[2] is not contexts[0] and contexts[2].verify_mode == ssl.CERT_NONE


GENERATED_SUITE = '''
import os
import time

import pytest


def record(name):
    start = time.monotonic()
    time.sleep(0.3)
    with open(os.environ["RUNS_LOG"], "a") as log:
        log.write(f"{name} {start} {time.monotonic()}\\n")


@pytest.mark.alone
@pytest.mark.parametrize("i", range(2))
def test_alone(i):
    record(f"alone{i}")


@pytest.mark.parametrize("i", range(8))
def test_shared(i):
    record(f"shared{i}")
'''


def test_an_alone_test_runs_while_no_other_test_does(tmp_path) -> None:
    (tmp_path / "test_generated.py").write_text(GENERATED_SUITE)
    runs = tmp_path / "runs.log"
    env = {**os.environ, "RUNS_LOG": str(runs), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.machine_share",
                           "-n", "2", "--dist", "worksteal", "-o", "markers=alone", "--rootdir", str(tmp_path),
                           str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    spans = {name: (float(start), float(end)) for name, start, end in map(str.split, runs.read_text().splitlines())}
    assert len(spans) == 10

    def overlap(a: str, b: str) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    shared = [name for name in spans if name.startswith("shared")]
    for alone in ("alone0", "alone1"):
        assert not [other for other in spans if other != alone and overlap(alone, other)], spans
    # The two workers did run tests side by side: without the lock the alone tests would have overlapped too.
    assert any(overlap(a, b) for a in shared for b in shared if a != b), spans
