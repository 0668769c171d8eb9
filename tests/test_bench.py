"""The benchmarks still run: each is started as its README says, for a second per cell, and its report checked for
every cell and no failed request. (Their numbers are not judged here: speed targets live in the benchmarks.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import redis_test_url

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.alone  # a load test on every core: the timing-bound tests must not run beside it


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_workers_bench_reports_every_cell() -> None:
    result = run_bench("bench/workers.py", "--duration", "1", "--concurrency", "4",
                       env={"CROSSROADS_TEST_REDIS_URL": redis_test_url()})
    assert result.returncode in (0, 1), result.stderr  # 1: the target not met, in a one-second run
    for cell in ("memory-1", "redis-1", "redis-2"):
        assert f"round 1 {cell}:" in result.stderr and "errors 0" in result.stderr, result.stderr
        assert f"| {cell} |" in result.stdout, result.stdout
    assert "--workers 2 / --workers 1 with the Redis ledger:" in result.stdout
    assert "Ceiling on this machine:" in result.stdout


def test_run_bench_reports_every_target() -> None:
    result = run_bench("bench/run.py", "--duration", "1", "--no-write", "--workloads", "plain", "--concurrency", "1")
    assert result.returncode in (0, 1), result.stderr
    for target in ("upstream", "floor", "gateway", "gw-quiet", "gw-strict"):
        assert f"| {target} | plain | 1 |" in result.stdout, result.stdout
    assert "## Targets" in result.stdout


def test_phases_bench_reports_every_server_and_phase() -> None:
    result = run_bench("bench/phases.py", "--rounds", "1", "--segment", "0.5")
    assert result.returncode == 0, result.stderr
    for server in ("floor", "gateway", "gw-quiet"):
        for phase in ("pre", "upstream", "post", "total", "client"):
            assert f"| {server} |" in result.stdout and f"| {phase} |" in result.stdout, result.stdout
    # Every request was stamped at all four points: as many samples as the client sent.
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 7 and cells[2] in ("total", "client"):
            rows[(cells[0], cells[2])] = int(cells[1].replace(",", ""))
    for server in ("floor", "gateway", "gw-quiet"):
        assert rows[(server, "total")] == rows[(server, "client")] > 100, rows
    assert "- gateway over the floor, p50 / p99 (µs):" in result.stdout
    assert "- client p99: gateway" in result.stdout
