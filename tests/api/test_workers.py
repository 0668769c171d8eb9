"""`crossroads serve --workers N` (crossroads/workers.py): every worker accepts on a socket of its own, so connections
opened together spread over the workers; a worker that dies, or stops answering, is replaced; one that cannot start stops the server."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import orjson

from tests.api.test_server import MASTER_KEY, auth, chat_body, small_config
from tests.conftest import GatewayProcess, free_port
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import wait_for
from tests.observability.test_metrics import chat_requests_by_worker

CONNECTIONS = 32
BURSTS = 6


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing's resource tracker, also its child, is not one)."""
    children = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
    pids = []
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in command:
            pids.append(int(child))
    return pids


def wait_started(gw: GatewayProcess, workers: int, already: int = 0) -> None:
    """Until `workers` more workers than `already` said their application started (each then listens at once)."""
    wait_for(lambda: gw.log().count("Application startup complete") >= already + workers, 20)
    time.sleep(0.3)


def open_together(port: int, count: int) -> list[socket.socket]:
    """`count` connections whose handshakes are all under way at once (as a load balancer's or wrk's burst)."""
    connections = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        connections.append(sock)
    for sock in connections:
        select.select([], [sock], [], 10)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        sock.setblocking(True)
        sock.settimeout(10)
    return connections


def every_worker_answers(gw: GatewayProcess) -> None:
    """Eight requests on new connections each: whichever worker the kernel picks answers them all."""
    for _ in range(8):
        resp = httpx.post(gw.url + "/api/v1/chat/completions", json=chat_body(), headers=auth(), timeout=10)
        assert resp.status_code == 200, resp.text


def post_on(sock: socket.socket, port: int, body: bytes) -> None:
    """One chat completion on an open connection (kept alive), its answer read whole."""
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (port, MASTER_KEY.encode(), len(body), body))
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)


def test_connections_opened_together_spread_over_the_workers(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # uvicorn's own supervisor shares one listening socket: the worker woken first could take most connections of a
    # burst and keep them (kept alive), leaving the other idle. Each worker's own SO_REUSEPORT socket lets the kernel
    # spread them by address.
    data_dir = tmp_path / "data"
    gw = GatewayProcess(small_config(fake_openai, data_dir), tmp_path, args=["--workers", "2"]).start()
    try:
        wait_started(gw, 2)
        counters = data_dir / "metrics-multiproc"  # each worker's counts, in a file of its own
        body = orjson.dumps(chat_body())
        for burst in range(BURSTS):
            before = chat_requests_by_worker(counters)
            connections = open_together(gw.port, CONNECTIONS)
            try:
                for sock in connections:
                    post_on(sock, gw.port, body)
            finally:
                for sock in connections:
                    sock.close()
            # A request is counted just after its answer's last byte: the last few may still be on their way.
            expected = sum(before.values()) + CONNECTIONS
            wait_for(lambda: sum(chat_requests_by_worker(counters).values()) >= expected, 5)  # noqa: B023 - used at once
            after = chat_requests_by_worker(counters)
            served = sorted(after[pid] - before.get(pid, 0) for pid in after)
            assert sum(served) == CONNECTIONS, served
            # Spread by a hash, each worker's share of a burst is binomial(32, 1/2): fewer than 4 has a chance of
            # ~3e-6. With one shared socket, a burst fell mostly on one worker about once in four.
            assert len(served) == 2 and served[0] >= 4, (burst, served)
    finally:
        assert gw.stop() == 0
    assert "Traceback" not in gw.log()


def test_a_worker_that_dies_is_replaced_and_one_that_keeps_dying_young_waits_longer(fake_openai: FakeOpenAI,
                                                                                    tmp_path: Path) -> None:
    gw = GatewayProcess(small_config(fake_openai, tmp_path / "data"), tmp_path, args=["--workers", "2"]).start()
    try:
        assert gw.proc is not None
        wait_started(gw, 2)
        workers = worker_pids(gw.proc.pid)
        assert len(workers) == 2, workers
        victim = workers[0]
        for round_no, delay in enumerate(("0.5", "1"), start=1):  # each died a few seconds after its start
            os.kill(victim, signal.SIGKILL)
            warning = re.compile(rf"worker {victim} ended unexpectedly \(killed by SIGKILL\) after [0-9.]+ s; "
                                 rf"starting another in {re.escape(delay)} s")
            wait_for(lambda: warning.search(gw.log()), 10)  # noqa: B023
            wait_started(gw, 1, already=2 + round_no - 1)
            replaced = worker_pids(gw.proc.pid)
            assert len(replaced) == 2 and victim not in replaced and workers[1] in replaced, (workers, replaced)
            victim = next(pid for pid in replaced if pid != workers[1])
        every_worker_answers(gw)
    finally:
        assert gw.stop() == 0
    assert "Traceback" not in gw.log()


def test_a_worker_that_cannot_start_stops_the_server(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # The metrics port is taken by another program: every worker's start-up fails the same way, and restarting them
    # would loop forever. The server stops with uvicorn's start-up failure status and says why.
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    taken.listen()
    try:
        config = small_config(fake_openai, tmp_path / "data", metrics={"metrics_port": taken.getsockname()[1]})
        gw = GatewayProcess(config, tmp_path, args=["--workers", "2"]).start(wait=False)
        assert gw.proc is not None
        try:
            assert gw.proc.wait(30) == 3
        finally:
            gw.stop()
    finally:
        taken.close()
    log = gw.log()
    assert "cannot listen for metrics on 127.0.0.1" in log and "could not start" in log, log
    assert not worker_pids(gw.proc.pid)


def test_a_worker_that_stops_answering_is_killed_and_replaced(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    # A stopped process (or a blocked event loop) keeps its listening socket: the kernel would keep handing it
    # connections nobody answers. Its heartbeat goes stale and the supervisor kills and replaces it; the other
    # worker, idle but beating, is left alone.
    gw = GatewayProcess(small_config(fake_openai, tmp_path / "data"), tmp_path,
                        args=["--workers", "2", "--worker-timeout", "2"]).start()
    try:
        assert gw.proc is not None
        wait_started(gw, 2)
        workers = worker_pids(gw.proc.pid)
        assert len(workers) == 2, workers
        time.sleep(3)  # longer than the timeout: idle workers still beat
        assert "stopped answering" not in gw.log()
        victim, survivor = workers
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        warning = re.compile(rf"worker {victim} stopped answering: its event loop has not run for ([0-9.]+) s "
                             rf"\(more than --worker-timeout 2 s; blocked, or the process stopped\); killed it")
        wait_for(lambda: warning.search(gw.log()), 10)
        match = warning.search(gw.log())
        assert match is not None and 2 <= float(match.group(1)) < 4, match  # more than 2 s, shown to 0.1 s
        assert time.monotonic() - stopped_at < 5
        wait_started(gw, 1, already=2)
        replaced = worker_pids(gw.proc.pid)
        assert len(replaced) == 2 and victim not in replaced and survivor in replaced, (workers, replaced)
        assert not Path(f"/proc/{victim}").exists()
        every_worker_answers(gw)
    finally:
        assert gw.stop() == 0
    assert "Traceback" not in gw.log()
