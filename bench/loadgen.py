"""Fallback load generator (used by bench/run.py when `wrk` is not on PATH): an aiohttp client in its own process.

`python bench/loadgen.py URL BODY_FILE --connections N --duration S [--key K]` keeps N connections busy with
back-to-back POSTs for S seconds (reading each whole response) and prints one line `BENCHJSON {...}` with the same
fields as bench/wrk.lua. It is much slower than wrk, so at concurrency 32 it may be the bottleneck; CPU per request of
the server stays valid either way, since only the server process's CPU is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson


async def run(url: str, body: bytes, connections: int, duration: float, key: str | None) -> dict:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    size = 0
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        end = start + duration

        async def worker() -> None:
            nonlocal size
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        raw = await resp.read()
                        if resp.status >= 400:
                            errors["status"] += 1
                except TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientError:
                    errors["read"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                size += len(raw)

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> int:
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6)

    return {"requests": len(latencies), "duration_us": int(elapsed * 1e6), "bytes": size, "p50_us": pct(50),
            "p99_us": pct(99), "max_us": int(latencies[-1] * 1e6) if latencies else 0,
            "mean_us": sum(latencies) / len(latencies) * 1e6 if latencies else 0.0, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description="fallback HTTP load generator for bench/run.py")
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--key")
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args.url, body, args.connections, args.duration, args.key))
    else:
        result = uvloop.run(run(args.url, body, args.connections, args.duration, args.key))
    print("BENCHJSON " + orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
