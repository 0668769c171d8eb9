"""Several workers and the shared credit ledger (issue 13): plain-completion throughput of `serve --workers 2` against
one worker, with every request reserving credit in Redis, and the CPU each ledger costs per request.

    eval "$(scripts/ci-services.sh)"            # a Redis (CROSSROADS_TEST_REDIS_URL)
    .venv/bin/python bench/workers.py           # 10 s per cell; --duration S, --rounds N, --concurrency C

Cells (each a fresh gateway on its own SQLite file, the fake upstream of bench/upstream.py, a key with a credit limit
so that every request reserves and settles):

- memory-1: one worker, the in-process ledger (no Redis);
- redis-1: one worker, the Redis ledger (CROSSROADS_REDIS_URL);
- redis-2: `--workers 2`, the Redis ledger.

Reported: req/s, the gateway's CPU per request (every worker process added up), Redis' CPU per request, p50/p99. The
target: redis-2 at least 1.7x redis-1's req/s. The load generator and the fake upstream share the machine's cores
with the gateway, which caps what two workers can gain on a 2-core machine: the report says how much CPU they used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402 - bench/run.py: servers, load generation, CPU accounting

TARGET_RATIO = 1.7


def process_ticks(pid: int) -> dict[int, int]:
    """CPU ticks of a process and of each of its children (a supervisor and its workers), by pid."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ticks = {pid: bench.cpu_ticks(pid)}
    for child in children:
        with contextlib.suppress(OSError):
            ticks[int(child)] = bench.cpu_ticks(int(child))
    return ticks


def redis_pid(url: str) -> int | None:
    """The pid of the Redis server behind `url`, when it runs on this machine."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def create_limited_key(base: str) -> str:
    body = json.dumps({"name": "bench-limited", "limit": 1_000_000.0}).encode()
    req = urllib.request.Request(base + "/api/v1/keys", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {bench.MASTER_KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["key"]


def run_cell(name: str, workers: int, redis_url: str | None, upstream: bench.Server, body_file: Path,
             concurrency: int, duration: float, workdir: Path) -> dict:
    port = bench.free_port()
    config = workdir / f"{name}.yaml"
    bench.write_gateway_config(config, port, upstream.port, workdir / f"{name}-data")
    env = {k: v for k, v in os.environ.items() if k not in ("CROSSROADS_REDIS_URL", "CROSSROADS_DATABASE_URL")}
    if redis_url:
        env["CROSSROADS_REDIS_URL"] = redis_url
    server = bench.Server(name, [bench.PYTHON, "-m", "crossroads", "serve", "--config", str(config), "--workers",
                                 str(workers), "--log-level", "warning"], port,
                          f"http://127.0.0.1:{port}/health", workdir / f"{name}.log")
    server.start(env)
    try:
        server.wait_ready()
        key = create_limited_key(f"http://127.0.0.1:{port}")
        time.sleep(1.2)  # every worker knows the key (keys are polled every 0.5 s)
        target = bench.Target("gateway", f"http://127.0.0.1:{port}/v1", server, key)
        bench.check_target(target, ["plain"])
        bench.load(target, "plain", body_file, concurrency, 2.0)  # warm-up
        pid = redis_pid(redis_url) if redis_url else None
        gateway_before = process_ticks(server.pid)
        redis_before = bench.cpu_ticks(pid) if pid else 0
        upstream_before = bench.cpu_ticks(upstream.pid)
        loadgen_before = bench.children_cpu_s()
        busy_before, total_before = bench.system_ticks()
        result = bench.load(target, "plain", body_file, concurrency, duration)
        busy_after, total_after = bench.system_ticks()
        loadgen_s = bench.children_cpu_s() - loadgen_before
        gateway_after = process_ticks(server.pid)
        redis_ticks = (bench.cpu_ticks(pid) - redis_before) if pid else 0
        upstream_ticks = bench.cpu_ticks(upstream.pid) - upstream_before
    finally:
        server.stop()
    requests = max(result["requests"], 1)
    seconds = result["duration_us"] / 1e6
    errors = {k: v for k, v in result["errors"].items() if v}
    # Each worker's share of the gateway's CPU (the supervisor, and multiprocessing's resource tracker, idle).
    per_process = sorted((gateway_after[p] - gateway_before.get(p, 0) for p in gateway_after), reverse=True)
    gateway_ticks = sum(per_process)
    machine_cores = os.cpu_count() or 1
    return {"cell": name, "workers": workers, "rps": result["requests"] / seconds,
            "gateway_cpu_ms": gateway_ticks / bench.CLK_TCK * 1000 / requests,
            "gateway_cores": gateway_ticks / bench.CLK_TCK / seconds,
            "worker_cores": [round(t / bench.CLK_TCK / seconds, 2) for t in per_process[:workers]],
            "redis_cpu_ms": redis_ticks / bench.CLK_TCK * 1000 / requests,
            "upstream_cpu_ms": upstream_ticks / bench.CLK_TCK * 1000 / requests,
            "loadgen_cpu_ms": loadgen_s * 1000 / requests,
            "machine_busy": (busy_after - busy_before) / max(total_after - total_before, 1) * machine_cores,
            "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000, "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--write-results", action="store_true",
                        help="also write the section of bench/RESULTS.md between the workers markers")
    args = parser.parse_args()
    redis_url = os.environ.get("CROSSROADS_TEST_REDIS_URL") or os.environ.get("CROSSROADS_REDIS_URL")
    if not redis_url:
        print('needs a Redis: eval "$(scripts/ci-services.sh)" (CROSSROADS_TEST_REDIS_URL)', file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="crossroads-bench-workers-"))
    upstream_port = bench.free_port()
    upstream = bench.Server("upstream", [bench.PYTHON, str(BENCH / "upstream.py"), "--port", str(upstream_port)],
                            upstream_port, f"http://127.0.0.1:{upstream_port}/stats", workdir / "upstream.log")
    body_file = workdir / "plain.json"
    body_file.write_bytes(bench.request_body(False))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    upstream.start(dict(os.environ))
    cells: dict[str, list[dict]] = {}
    try:
        upstream.wait_ready()
        for round_no in range(args.rounds):
            for name, workers, url in (("memory-1", 1, None), ("redis-1", 1, redis_url), ("redis-2", 2, redis_url)):
                cell = run_cell(name, workers, url, upstream, body_file, args.concurrency, args.duration, workdir)
                cells.setdefault(name, []).append(cell)
                print(f"round {round_no + 1} {name}: {cell['rps']:.0f} req/s, gateway {cell['gateway_cpu_ms']:.3f} "
                      f"ms/req ({cell['gateway_cores']:.2f} cores: {cell['worker_cores']}), redis "
                      f"{cell['redis_cpu_ms']:.3f}, upstream {cell['upstream_cpu_ms']:.3f}, load generator "
                      f"{cell['loadgen_cpu_ms']:.3f} ms/req; machine busy {cell['machine_busy']:.2f} cores; p50 "
                      f"{cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms, errors {cell['errors'] or 0}",
                      file=sys.stderr)
    finally:
        upstream.stop()

    def median(name: str, field: str) -> float:
        values = sorted(c[field] for c in cells[name])
        return values[len(values) // 2]

    ratio = median("redis-2", "rps") / median("redis-1", "rps")
    lines = [f"plain completion, concurrency {args.concurrency}, {args.duration:g} s per cell, median of "
             f"{args.rounds} round(s); every request reserves and settles credit",
             "", "| cell | req/s | gateway CPU ms/req | gateway cores used (per worker) | Redis CPU ms/req | "
                 "upstream CPU ms/req | load generator CPU ms/req | machine busy (cores) | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in cells:
        worker_cores = min(cells[name], key=lambda c: abs(c["rps"] - median(name, "rps")))["worker_cores"]
        lines.append(f"| {name} | {median(name, 'rps'):.0f} | {median(name, 'gateway_cpu_ms'):.3f} | "
                     f"{median(name, 'gateway_cores'):.2f} ({' + '.join(f'{c:.2f}' for c in worker_cores)}) | "
                     f"{median(name, 'redis_cpu_ms'):.3f} | {median(name, 'upstream_cpu_ms'):.3f} | "
                     f"{median(name, 'loadgen_cpu_ms'):.3f} | {median(name, 'machine_busy'):.2f} | "
                     f"{median(name, 'p50_ms'):.2f} | {median(name, 'p99_ms'):.2f} |")
    # What two workers could reach at most on this machine: its cores shared by the workers and by what serves each
    # request beside them (load generator, upstream, Redis), at the CPU per request measured with two workers.
    cores = os.cpu_count() or 1
    per_request_ms = sum(median("redis-2", f) for f in ("gateway_cpu_ms", "redis_cpu_ms", "upstream_cpu_ms",
                                                         "loadgen_cpu_ms"))
    ceiling = cores / (per_request_ms / 1000) / median("redis-1", "rps")
    lines += ["", f"--workers 2 / --workers 1 with the Redis ledger: {ratio:.2f}x (target {TARGET_RATIO:g}x: "
                  f"{'met' if ratio >= TARGET_RATIO else 'NOT MET'})",
              f"Ceiling on this machine: {cores} cores / {per_request_ms:.3f} ms of CPU per request (gateway, Redis, "
              f"upstream and load generator with two workers) = {ceiling:.2f}x redis-1's req/s",
              f"Redis ledger vs in-memory ledger, gateway CPU per request: "
              f"{median('redis-1', 'gateway_cpu_ms'):.3f} vs {median('memory-1', 'gateway_cpu_ms'):.3f} ms "
              f"(+{median('redis-1', 'gateway_cpu_ms') - median('memory-1', 'gateway_cpu_ms'):.3f} ms), plus "
              f"{median('redis-1', 'redis_cpu_ms'):.3f} ms in Redis"]
    print("\n".join(lines))
    if args.write_results:
        command = " ".join([".venv/bin/python bench/workers.py", *sys.argv[1:]])
        loadgen = "wrk -t1" if shutil.which("wrk") else "bench/loadgen.py (wrk not installed)"
        header = ["## Several workers and the Redis ledger (issue 13)", "",
                  f"Generated by `bench/workers.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
                  f"({bench.source_description(None)}; {cores} CPUs; load generator {loadgen}):", "", "```sh",
                  command, "```", "",
                  "Every request comes from a key with a credit limit, so each reserves and settles in the Redis "
                  "ledger (memory-1: the in-process ledger, for comparison). The load generator, the fake upstream "
                  "and Redis run on the same cores as the workers: two workers can serve at most the machine's cores "
                  "divided by the CPU that one request costs all of them together (the ceiling below), whatever the "
                  "gateway does. Each worker accepts on a socket of its own (crossroads/workers.py), so the load is "
                  "spread evenly (the per-worker cores).", ""]
        verdicts = [f"- {line}" for line in lines[-3:]]
        bench.write_marked_section("workers", "bench/workers.py",
                                   "\n".join(header + lines[:-3] + verdicts) + "\n")
        print(f"written to the workers section of {bench.RESULTS}", file=sys.stderr)
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
