"""Where a request's time goes at concurrency 1, gateway against floor (issue 13's tail target): each server stamps
every request (bench/phase_probe/sitecustomize.py) at four points of the HTTP stack both share, which splits its time
into three phases:

- pre: the request's first bytes in, to the first bytes written upstream (parsing, authentication, limits, routing,
  building the upstream request);
- upstream: from there to the upstream answer's first bytes (the fake upstream's own time, loopback, and whatever
  else the server's event loop or another of its threads was doing meanwhile);
- post: from there to the answer's last byte handed to the socket (reading and translating the answer, accounting).

    .venv/bin/python bench/phases.py                 # 4 rounds of 2 s per server; --rounds N, --segment S
    .venv/bin/python bench/phases.py --write-results # also write the phases section of bench/RESULTS.md

The servers take turns in short segments (floor, gateway, gateway without logs and metrics, then again), so that a
change in the machine's load during the run weighs on each alike; each one's samples are pooled over the rounds. The
client is a plain socket sending the plain-completion request of bench/run.py on one kept-alive connection and
reading each answer whole; it measures the latency it sees as well.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402 - bench/run.py: servers, configuration, request bodies

PHASES = ("pre", "upstream", "post", "total")
PROBE = BENCH / "phase_probe"
WARM_UP = 1500  # requests per server before measuring


class Client:
    """One kept-alive connection sending the same POST and reading each answer whole."""

    def __init__(self, port: int, path: bytes, body: bytes) -> None:
        self.request = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (path, bench.MASTER_KEY.encode(), len(body), body))
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def one(self) -> None:
        self.sock.sendall(self.request)
        data = b""
        while True:
            part = self.sock.recv(65536)
            if not part:
                raise RuntimeError("the server closed the connection")
            data += part
            head_end = data.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {data[:200]!r}")
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", data[:head_end + 2]).group(1))
            if len(data) - head_end - 4 >= length:
                return

    def run(self, seconds: float) -> list[float]:
        """Latencies (ms) of back-to-back requests for `seconds`."""
        latencies = []
        end = time.perf_counter() + seconds
        while True:
            started = time.perf_counter()
            self.one()
            finished = time.perf_counter()
            latencies.append((finished - started) * 1000)
            if finished > end:
                return latencies

    def close(self) -> None:
        self.sock.close()


class Probed:
    """A server started with the probe, its client, and the samples taken so far."""

    def __init__(self, name: str, server: bench.Server, out: Path, path: bytes, body: bytes) -> None:
        self.name, self.server, self.out = name, server, out
        self.client = Client(server.port, path, body)
        self.latencies: list[float] = []
        self.phases: list[list[int]] = []

    def collect(self) -> list[list[int]]:
        """The samples the probe took since the last collection (asks it to write them, then reads them)."""
        self.out.unlink(missing_ok=True)
        os.kill(self.server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not self.out.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the probe wrote nothing (is bench/phase_probe on its path?)")
            time.sleep(0.01)
        return json.loads(self.out.read_text())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def report(servers: list[Probed], rounds: int, segment: float) -> str:
    lines = [f"Concurrency 1, plain completion, {rounds} rounds of {segment:g} s per server taking turns; each "
             "server's samples pooled. Microseconds, as the server's own stamps see them (client: as the client "
             "sees the whole request).", "",
             "| server | requests | phase | p50 | p90 | p99 | p99.9 |", "|---|---|---|---|---|---|---|"]
    table: dict[tuple[str, str], dict[float, float]] = {}
    for server in servers:
        columns = {phase: [sample[index] for sample in server.phases] for index, phase in enumerate(PHASES)}
        columns["client"] = [latency * 1000 for latency in server.latencies]
        for phase, values in columns.items():
            quantiles = {q: percentile(values, q) for q in (0.5, 0.9, 0.99, 0.999)}
            table[(server.name, phase)] = quantiles
            lines.append(f"| {server.name} | {len(values):,} | {phase} | "
                         + " | ".join(f"{quantiles[q]:,.0f}" for q in (0.5, 0.9, 0.99, 0.999)) + " |")
    lines.append("")
    names = [server.name for server in servers]
    if "floor" in names:
        for other in (name for name in names if name != "floor"):
            lines.append(f"- {other} over the floor, p50 / p99 (µs): " + "; ".join(
                f"{phase} +{table[(other, phase)][0.5] - table[('floor', phase)][0.5]:,.0f} / "
                f"+{table[(other, phase)][0.99] - table[('floor', phase)][0.99]:,.0f}"
                for phase in (*PHASES, "client")))
        gateway, floor = table.get(("gateway", "client")), table[("floor", "client")]
        if gateway is not None:
            lines.append(f"- client p99: gateway {gateway[0.99] / 1000:.3f} ms vs floor {floor[0.99] / 1000:.3f} ms = "
                         f"{gateway[0.99] / floor[0.99]:.2f}x (p50 {gateway[0.5] / floor[0.5]:.2f}x)")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--segment", type=float, default=2.0, help="seconds per server per round (default 2)")
    parser.add_argument("--write-results", action="store_true",
                        help="also write the section of bench/RESULTS.md between the phases markers")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crossroads-phases-"))
    body = bench.request_body(False)
    env = {name: value for name, value in os.environ.items() if not name.startswith("CROSSROADS_")}
    path = os.pathsep.join(part for part in (str(PROBE), env.get("PYTHONPATH")) if part)
    up_port, floor_port, gw_port, quiet_port = (bench.free_port() for _ in range(4))
    upstream = bench.Server("upstream", [bench.PYTHON, str(BENCH / "upstream.py"), "--port", str(up_port)], up_port,
                            f"http://127.0.0.1:{up_port}/health", tmp / "upstream.log")
    floor = bench.Server("floor", [bench.PYTHON, str(BENCH / "floor.py"), "--port", str(floor_port), "--upstream",
                                   f"http://127.0.0.1:{up_port}/v1"], floor_port,
                         f"http://127.0.0.1:{floor_port}/health", tmp / "floor.log")
    bench.write_gateway_config(tmp / "gateway.yaml", gw_port, up_port, tmp / "data")
    gateway = bench.Server("gateway", [bench.PYTHON, "-m", "crossroads", "serve", "--config", str(tmp / "gateway.yaml")],
                           gw_port, f"http://127.0.0.1:{gw_port}/health", tmp / "gateway.log")
    bench.write_gateway_config(tmp / "quiet.yaml", quiet_port, up_port, tmp / "data-quiet", metrics=False)
    quiet = bench.Server("gw-quiet", [bench.PYTHON, "-m", "crossroads", "serve", "--config", str(tmp / "quiet.yaml"),
                                      "--log-level", "warning"], quiet_port, f"http://127.0.0.1:{quiet_port}/health",
                         tmp / "quiet.log")
    started: list[bench.Server] = []
    servers: list[Probed] = []
    try:
        upstream.start(env)
        started.append(upstream)
        upstream.wait_ready()
        for server, route in ((floor, b"/v1/chat/completions"), (gateway, b"/api/v1/chat/completions"),
                              (quiet, b"/api/v1/chat/completions")):
            out = tmp / f"{server.name}.phases.json"
            server.start({**env, "PYTHONPATH": path, "CROSSROADS_BENCH_PHASES": str(out)})
            started.append(server)
            server.wait_ready()
            servers.append(Probed(server.name, server, out, route, body))
        for probed in servers:
            for _ in range(WARM_UP):
                probed.client.one()
            probed.collect()  # the warm-up's samples are dropped
        for number in range(1, args.rounds + 1):
            for probed in servers:
                probed.latencies += probed.client.run(args.segment)
                probed.phases += probed.collect()
            print(f"round {number} of {args.rounds} done", file=sys.stderr)
    finally:
        for probed in servers:
            probed.client.close()
        for server in reversed(started):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    section = report(servers, args.rounds, args.segment)
    print(section)
    if args.write_results:
        bench.write_marked_section("phases", "bench/phases.py", "## Where the time goes at concurrency 1 "
                                   "(bench/phases.py)\n\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
