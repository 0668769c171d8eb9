"""Crossroads benchmark: the gateway against a bare pass-through (the floor) and the upstream itself.

    .venv/bin/python bench/run.py [--duration S] [--quick] [--no-write] [--py-spy OUT.svg]

Starts, each as its own process on a free 127.0.0.1 port: the fake upstream (bench/upstream.py), the floor
(bench/floor.py) and the gateway (`python -m crossroads serve --config <generated yaml>`). For each target (upstream
direct, floor, gateway) x workload (plain completion, 40-chunk stream) x concurrency (1, 32) it drives load for
--duration seconds with wrk (or bench/loadgen.py when wrk is missing) and records requests/s, p50/p99 latency and the
CPU milliseconds per request of the SERVER process (utime+stime from /proc/<pid>/stat before and after, divided by the
completed requests). It also reads the gateway's resident memory at idle after start-up. It prints a markdown report
and writes it to bench/RESULTS.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
MASTER_KEY = "sk-bench-master-key-0123456789"
MODEL = "bench/model"
STREAM_CONTENT_CHUNKS = 40
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCIES = (1, 32)
WORKLOADS = ("plain", "stream")

# Targets (rows of the report): CPU per request at most 2x the floor's, added p50 at concurrency 1 at most 0.5 ms,
# resident memory at idle under 100 MB.
CPU_RATIO_TARGET = 2.0
ADDED_P50_TARGET_MS = 0.5
IDLE_RSS_TARGET_MB = 100.0


def request_body(stream: bool) -> bytes:
    return json.dumps({
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 64,
        "temperature": 0.7,
        "stream": stream,
    }, separators=(",", ":")).encode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the ")" that ends the command name; utime and stime are fields 14 and 15 of the whole line.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    health: str
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Target:
    name: str
    url: str
    server: Server
    key: str | None = None


@dataclass
class Cell:
    target: str
    workload: str
    concurrency: int
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu_ms: float = 0.0
    upstream_cpu_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def write_gateway_config(path: Path, port: int, upstream_port: int, data_dir: Path) -> None:
    path.write_text(f"""\
# Generated by bench/run.py
server:
  host: 127.0.0.1
  port: {port}
  master_key: {MASTER_KEY}
  data_dir: {data_dir}
  shutdown_grace: 1
providers:
  - name: fake
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: sk-bench-upstream
    discover: false
    models:
      - id: {MODEL}
        upstream: bench-model
        context_length: 128000
        max_completion_tokens: 16384
        pricing: {{prompt: 0.15, completion: 0.60}}
""")


def post(url: str, body: bytes, key: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_target(target: Target) -> None:
    """One request of each kind, checked, so a misconfigured target never produces fast-but-wrong numbers."""
    status, raw = post(target.url, request_body(False), target.key)
    if status != 200:
        raise RuntimeError(f"{target.name}: plain completion got HTTP {status}: {raw[:500]!r}")
    data = json.loads(raw)
    if not data.get("choices") or not data["choices"][0]["message"].get("content"):
        raise RuntimeError(f"{target.name}: plain completion has no content: {raw[:500]!r}")
    if target.name == "gateway" and not data.get("usage", {}).get("cost"):
        raise RuntimeError(f"gateway: plain completion has no cost in usage: {raw[:500]!r}")
    status, raw = post(target.url, request_body(True), target.key)
    if status != 200:
        raise RuntimeError(f"{target.name}: stream got HTTP {status}: {raw[:500]!r}")
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        raise RuntimeError(f"{target.name}: stream does not end with [DONE]: {raw[-300:]!r}")
    chunks = [json.loads(e) for e in events[:-1]]
    content = [c for c in chunks if c.get("choices") and c["choices"][0].get("delta", {}).get("content")]
    if len(content) != STREAM_CONTENT_CHUNKS:
        raise RuntimeError(f"{target.name}: stream has {len(content)} content chunks, expected "
                           f"{STREAM_CONTENT_CHUNKS}")
    if target.name == "gateway" and not any((c.get("usage") or {}).get("cost") for c in chunks):
        raise RuntimeError("gateway: stream has no usage chunk with a cost")


def load(target: Target, body_file: Path, connections: int, duration: float) -> dict:
    wrk = shutil.which("wrk")
    if wrk:
        argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s",
                str(BENCH / "wrk.lua"), target.url, "--", str(body_file), target.key or ""]
    else:
        argv = [PYTHON, str(BENCH / "loadgen.py"), target.url, str(body_file), "--connections", str(connections),
                "--duration", str(duration)]
        if target.key:
            argv += ["--key", target.key]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            return json.loads(line[len("BENCHJSON "):])
    raise RuntimeError(f"load generator failed for {target.name} (rc {out.returncode}):\n{out.stdout}\n{out.stderr}")


def measure(target: Target, upstream: Server, workload: str, connections: int, duration: float,
            body_files: dict[str, Path]) -> Cell:
    server_before = cpu_ticks(target.server.pid)
    upstream_before = cpu_ticks(upstream.pid)
    result = load(target, body_files[workload], connections, duration)
    server_ticks = cpu_ticks(target.server.pid) - server_before
    upstream_ticks = cpu_ticks(upstream.pid) - upstream_before
    requests = result["requests"]
    cell = Cell(target=target.name, workload=workload, concurrency=connections, requests=requests,
                seconds=result["duration_us"] / 1e6, p50_ms=result["p50_us"] / 1000, p99_ms=result["p99_us"] / 1000,
                errors={k: v for k, v in result["errors"].items() if v})
    if requests:
        cell.server_cpu_ms = server_ticks / CLK_TCK * 1000 / requests
        cell.upstream_cpu_ms = upstream_ticks / CLK_TCK * 1000 / requests
    return cell


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for dist in ("uvicorn", "uvloop", "httptools", "aiohttp", "orjson"):
        try:
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
        except Exception:  # noqa: BLE001 - informational only
            pass
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        loadgen = (out.stdout or out.stderr).splitlines()[0].split(" [")[0] if (out.stdout or out.stderr) else "wrk"
        loadgen += " (-t1)"
    else:
        loadgen = "bench/loadgen.py (aiohttp; wrk not found)"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip() or "?",
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(versions),
        "loadgen": loadgen,
    }


def fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def report(cells: list[Cell], idle_rss: float, loaded_rss: float, info: dict[str, str], command: str,
           duration: float) -> tuple[str, dict[str, bool]]:
    by = {(c.target, c.workload, c.concurrency): c for c in cells}
    lines = [
        "# Crossroads benchmark results",
        "",
        f"Generated by `bench/run.py` on {info['date']}. See `bench/README.md` for what each number means.",
        "",
        "## Machine",
        "",
        f"- CPUs (nproc): {info['nproc']}; CPU model: {info['cpu']}",
        f"- Memory: {info['memory']}; kernel: {info['kernel']}",
        f"- Python {info['python']}; {info['packages']}",
        f"- Load generator: {info['loadgen']}; every process on the same machine, traffic on 127.0.0.1 only",
        "",
        "## Command",
        "",
        "```sh",
        command,
        "```",
        "",
        f"{duration:g} s of load per cell. Plain = one non-streaming chat completion; stream = 40 content chunks + "
        "finish chunk + usage chunk + [DONE].",
        "",
        "## Results",
        "",
        "| target | workload | conc | req/s | p50 ms | p99 ms | server CPU ms/req | upstream CPU ms/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        upstream_cpu = "(same)" if c.target == "upstream" else fmt(c.upstream_cpu_ms)
        lines.append(f"| {c.target} | {c.workload} | {c.concurrency} | {c.rps:,.0f} | {fmt(c.p50_ms)} | "
                     f"{fmt(c.p99_ms)} | {fmt(c.server_cpu_ms)} | {upstream_cpu} | {c.error_count or ''} |")
    lines += ["", "## Targets", ""]

    verdict: dict[str, bool] = {}
    # 1. CPU per request, gateway / floor, every workload and concurrency.
    ratios = []
    for workload in WORKLOADS:
        for conc in CONCURRENCIES:
            g, f = by.get(("gateway", workload, conc)), by.get(("floor", workload, conc))
            if g and f and f.server_cpu_ms:
                ratios.append((workload, conc, g.server_cpu_ms, f.server_cpu_ms, g.server_cpu_ms / f.server_cpu_ms))
    ok = bool(ratios) and all(r[4] <= CPU_RATIO_TARGET for r in ratios)
    verdict["cpu"] = ok
    lines.append(f"1. **Gateway CPU per request at most {CPU_RATIO_TARGET:g}x the floor's: "
                 f"{'met' if ok else 'NOT MET'}**")
    for workload, conc, g_ms, f_ms, ratio in ratios:
        lines.append(f"   - {workload}, concurrency {conc}: {fmt(g_ms)} ms vs {fmt(f_ms)} ms = {ratio:.2f}x")
    # 2. Added p50 latency at concurrency 1.
    added = []
    for workload in WORKLOADS:
        g, f, u = (by.get((t, workload, 1)) for t in ("gateway", "floor", "upstream"))
        if g and f and u:
            added.append((workload, g.p50_ms - u.p50_ms, g.p50_ms - f.p50_ms))
    ok = bool(added) and all(a[1] <= ADDED_P50_TARGET_MS for a in added)
    verdict["latency"] = ok
    lines.append(f"2. **Gateway's added p50 latency at concurrency 1 at most {ADDED_P50_TARGET_MS:g} ms "
                 f"(gateway p50 - upstream-direct p50): {'met' if ok else 'NOT MET'}**")
    for workload, vs_upstream, vs_floor in added:
        lines.append(f"   - {workload}: +{fmt(vs_upstream)} ms over upstream direct; "
                     f"{'+' if vs_floor >= 0 else ''}{fmt(vs_floor)} ms over the floor")
    # 3. Idle RSS.
    ok = idle_rss < IDLE_RSS_TARGET_MB
    verdict["rss"] = ok
    lines.append(f"3. **Gateway resident memory at idle under {IDLE_RSS_TARGET_MB:g} MB: {'met' if ok else 'NOT MET'}**")
    lines.append(f"   - VmRSS after start-up (idle): {idle_rss:.1f} MB; after the whole run: {loaded_rss:.1f} MB")
    lines.append("")
    return "\n".join(lines), verdict


def profile(target: Target, body_file: Path, duration: float, out: str) -> None:
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not os.path.exists(spy):
        print("py-spy not found; install it with `.venv/bin/pip install py-spy`", file=sys.stderr)
        return
    fmt_arg = "speedscope" if out.endswith(".json") else "flamegraph"
    spy_proc = subprocess.Popen([spy, "record", "--pid", str(target.server.pid), "--rate", "500", "--duration",
                                 str(int(duration)), "--format", fmt_arg, "--output", out, "--nonblocking"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)  # let py-spy attach
        load(target, body_file, 32, duration)
        spy_proc.wait(timeout=duration + 30)
    finally:
        if spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait()
    print(f"py-spy profile of the gateway under plain-completion load written to {out}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against the floor and the upstream itself")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per cell (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 s per cell and a shorter warm-up (a smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print the report but leave bench/RESULTS.md alone")
    parser.add_argument("--py-spy", metavar="OUT", help="afterwards, record the gateway with py-spy during plain "
                                                       "load at concurrency 32 (OUT.svg flamegraph or OUT.json "
                                                       "speedscope)")
    args = parser.parse_args()
    duration = 3.0 if args.quick and args.duration == 10.0 else float(max(1, round(args.duration)))  # wrk: whole s
    warmup = 1.0 if args.quick else 2.0

    tmp = Path(tempfile.mkdtemp(prefix="crossroads-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSROADS_")}
    env["PYTHONUNBUFFERED"] = "1"
    up_port, floor_port, gw_port = free_port(), free_port(), free_port()
    while len({up_port, floor_port, gw_port}) < 3:
        floor_port, gw_port = free_port(), free_port()
    config = tmp / "gateway.yaml"
    write_gateway_config(config, gw_port, up_port, tmp / "data")
    upstream = Server("upstream", [PYTHON, str(BENCH / "upstream.py"), "--port", str(up_port)], up_port,
                      f"http://127.0.0.1:{up_port}/health", tmp / "upstream.log")
    floor = Server("floor", [PYTHON, str(BENCH / "floor.py"), "--port", str(floor_port), "--upstream",
                             f"http://127.0.0.1:{up_port}/v1"], floor_port,
                   f"http://127.0.0.1:{floor_port}/health", tmp / "floor.log")
    gateway = Server("gateway", [PYTHON, "-m", "crossroads", "serve", "--config", str(config), "--log-level",
                                 "warning"], gw_port, f"http://127.0.0.1:{gw_port}/health", tmp / "gateway.log")
    servers = [upstream, floor, gateway]
    body_files = {"plain": tmp / "plain.json", "stream": tmp / "stream.json"}
    body_files["plain"].write_bytes(request_body(False))
    body_files["stream"].write_bytes(request_body(True))

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        for server in servers:
            server.start(env)
        for server in servers:
            server.wait_ready()
        time.sleep(1.0)
        idle_rss = rss_mb(gateway.pid)
        print(f"gateway idle RSS: {idle_rss:.1f} MB", file=sys.stderr)
        targets = [
            Target("upstream", f"http://127.0.0.1:{up_port}/v1/chat/completions", upstream),
            Target("floor", f"http://127.0.0.1:{floor_port}/v1/chat/completions", floor),
            Target("gateway", f"http://127.0.0.1:{gw_port}/api/v1/chat/completions", gateway, MASTER_KEY),
        ]
        for target in targets:
            check_target(target)
        cells: list[Cell] = []
        for target in targets:
            for workload in WORKLOADS:
                load(target, body_files[workload], 32, warmup)  # warm-up, not recorded
                for conc in CONCURRENCIES:
                    cell = measure(target, upstream, workload, conc, duration, body_files)
                    cells.append(cell)
                    print(f"{cell.target:9} {cell.workload:6} c={cell.concurrency:<3} {cell.rps:9,.0f} req/s  "
                          f"p50 {cell.p50_ms:7.3f} ms  p99 {cell.p99_ms:7.3f} ms  "
                          f"cpu {cell.server_cpu_ms:.3f} ms/req  errors {cell.error_count}", file=sys.stderr)
                    if cell.error_count:
                        print(f"  errors: {cell.errors}", file=sys.stderr)
        loaded_rss = rss_mb(gateway.pid)
        command = ".venv/bin/python bench/run.py" + (" --quick" if args.quick else "") + (
            f" --duration {args.duration:g}" if args.duration != 10.0 else "")
        text, verdict = report(cells, idle_rss, loaded_rss, machine(), command, duration)
        print(text)
        if not args.no_write:
            (BENCH / "RESULTS.md").write_text(text)
            print(f"written to {BENCH / 'RESULTS.md'}", file=sys.stderr)
        if args.py_spy:
            profile(targets[2], body_files["plain"], max(duration, 5.0), args.py_spy)
        return 0 if all(verdict.values()) else 1
    finally:
        for server in reversed(servers):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"could not stop {server.name}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
