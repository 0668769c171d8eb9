"""Throughput of the gateway before, during and after a PostgreSQL outage.

`python bench/outage.py --postgres URL [--durability batched|strict] [--before 5] [--outage 20] [--after 5]`

Starts the fake upstream (`upstream.py`), a loopback TCP proxy in front of PostgreSQL (`tests/fakes/tcpproxy.py`) and
`crossroads serve` on a fresh database reached through the proxy; drives it with a bounded concurrent loop of
non-streaming chat requests (aiohttp, `--concurrency` connections), cuts the proxy for `--outage` seconds, and prints
requests/s, statuses and latencies per phase. Afterwards it checks that every generation id answered 200 is in the
database (after giving the gateway time to write what it held). Everything runs on 127.0.0.1; the load generator
shares the machine with the gateway, so compare phases with each other rather than with bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_proxy(host: str, port: int, conn) -> None:
    """The proxy in a process of its own, so that its threads never take the load generator's CPU (or GIL)."""
    from tests.fakes.tcpproxy import TcpProxy

    proxy = TcpProxy(host, port)
    accepted = [0]
    listener = proxy._listener

    class Counting:  # counts the connections the gateway opens (the proxy's accept loop reads _listener each time)
        def accept(self):  # noqa: ANN202
            pair = listener.accept()
            accepted[0] += 1
            return pair

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(listener, name)

    proxy._listener = Counting()  # type: ignore[assignment]
    conn.send(proxy.port)
    while True:
        command = conn.recv()
        if command == "down":
            proxy.down()
        elif command == "up":
            proxy.up()
        elif command == "count":
            pass
        else:
            proxy.close()
            conn.send(accepted[0])
            return
        conn.send(accepted[0])


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        import multiprocessing

        self._conn, child = multiprocessing.Pipe()
        self._proc = multiprocessing.Process(target=run_proxy, args=(host, port, child), daemon=True)
        self._proc.start()
        self.port = self._conn.recv()

    def _do(self, command: str) -> int:
        self._conn.send(command)
        return self._conn.recv()

    def down(self) -> int:
        return self._do("down")

    def up(self) -> int:
        return self._do("up")

    def accepted(self) -> int:
        return self._do("count")

    def close(self) -> None:
        self._do("close")
        self._proc.join(5)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

MASTER_KEY = "sk-or-v1-" + "5" * 64
MODEL = "bench/model"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.monotonic()
        self.end = self.start
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self.cpu = 0.0  # the gateway's CPU seconds during the phase
        self.db_connections = 0  # connections the proxy accepted during the phase

    def line(self) -> str:
        seconds = max(self.end - self.start, 1e-9)
        done = sum(self.statuses.values())
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
        worst = lat[-1] * 1000 if lat else 0.0
        return (f"{self.name:8s} {seconds:5.1f} s  {done / seconds:8.1f} req/s  statuses {dict(sorted(self.statuses.items()))}"
                f"  p50 {p50:.1f} ms  max {worst:.1f} ms  gateway CPU {self.cpu / seconds * 100:.0f}%"
                f"  DB connections {self.db_connections / seconds:.1f}/s")


async def drive(url: str, concurrency: int, phases: list[Phase], stop: asyncio.Event, ids: set[str]) -> None:
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    async with session.post(url + "/api/v1/chat/completions", data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                        if status == 200:
                            ids.add(resp.headers["x-generation-id"])
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                phase = phases[-1]
                phase.statuses[status] = phase.statuses.get(status, 0) + 1
                phase.latencies.append(time.monotonic() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def start(upstream_port: int, config: Path, env: dict[str, str], log_path: Path) -> tuple:
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(upstream_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(log_path, "wb")  # noqa: SIM115 - closed when the run ends
    gateway = subprocess.Popen([sys.executable, "-m", "crossroads", "serve", "--config", str(config),
                                "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
    return upstream, gateway, log


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", default=os.environ.get("CROSSROADS_TEST_POSTGRES_URL"))
    parser.add_argument("--durability", default="batched", choices=("batched", "strict"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--outage", type=float, default=20.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--src", default=str(ROOT / "src"), help="the gateway's source tree (default: this one)")
    args = parser.parse_args()
    if not args.postgres:
        parser.error("--postgres (or CROSSROADS_TEST_POSTGRES_URL) is needed")

    name = f"crossroads_outage_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    db_url = args.postgres.rsplit("/", 1)[0] + "/" + name
    host_port = db_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = Proxy(host, int(port))
    via_proxy = db_url.replace(host_port, f"127.0.0.1:{proxy.port}")

    work = Path(tempfile.mkdtemp(prefix="crossroads-outage-"))
    upstream_port, gw_port = free_port(), free_port()
    config = work / "crossroads.yaml"
    config.write_text(f"""\
server: {{host: 127.0.0.1, port: {gw_port}, master_key: {MASTER_KEY}, data_dir: {work / 'data'}, shutdown_grace: 5}}
accounting: {{durability: {args.durability}}}
providers:
  - name: fake
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: sk-bench-upstream
    models: [{{id: {MODEL}, upstream: bench-model, pricing: {{prompt: 0.15, completion: 0.60}}}}]
""")
    env = {**os.environ, "CROSSROADS_DATABASE_URL": via_proxy, "PYTHONPATH": args.src}
    upstream, gateway, log = start(upstream_port, config, env, work / "gateway.log")
    url = f"http://127.0.0.1:{gw_port}"
    ids: set[str] = set()
    try:
        wait_http(f"http://127.0.0.1:{upstream_port}/health", upstream)
        wait_http(url + "/health", gateway)
        phases = [Phase("warm-up")]
        stop = asyncio.Event()
        load = asyncio.get_running_loop().create_task(drive(url, args.concurrency, phases, stop, ids))
        await asyncio.sleep(1.0)
        cpu, accepted = cpu_seconds(gateway.pid), proxy.accepted()
        for phase_name, seconds, action in (("before", args.before, None), ("outage", args.outage, proxy.down),
                                            ("after", args.after, proxy.up)):
            if action is not None:
                action()
            phases[-1].end = time.monotonic()
            phases.append(Phase(phase_name))
            await asyncio.sleep(seconds)
            phases[-1].end = time.monotonic()
            cpu, phases[-1].cpu = cpu_seconds(gateway.pid), cpu_seconds(gateway.pid) - cpu
            accepted, phases[-1].db_connections = proxy.accepted(), proxy.accepted() - accepted
        stop.set()
        await load
        print(f"durability {args.durability}, concurrency {args.concurrency}")
        for phase in phases[1:]:
            print(phase.line())
        conn = await asyncpg.connect(db_url)
        missing: set[str] = set()
        try:
            deadline = time.monotonic() + 30
            while True:
                stored = {r["id"] for r in await conn.fetch("SELECT id FROM generations")}
                missing = ids - stored
                if not missing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            await conn.close()
        print(f"answered 200: {len(ids)}; missing from the database: {len(missing)}")
        return 1 if missing else 0
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
        upstream.terminate()
        upstream.wait()
        proxy.close()
        log.close()
        admin = await asyncpg.connect(args.postgres)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        print(f"gateway log: {work / 'gateway.log'}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
