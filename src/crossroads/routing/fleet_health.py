"""The endpoints API's figures for the whole fleet: each process publishes its endpoints' figures to Redis, and
`GET /models/{author}/{slug}/endpoints` adds up every live process's.

Breakers stay per process (routing/health.py): each process ejects an endpoint on what its own attempts saw. That is
the unit that matches the evidence (one host's network path or DNS can fail while another's works) and keeps Redis
off the failure path: routing never waits on a shared store to decide where a request goes. What is shared is what
operators and clients read: uptime, latency and throughput over every process's attempts, and the worst breaker
status anywhere, so an endpoint ejected by one instance is visible through every instance.

Per process, under `prefix`: `{prefix}:p:{process id}` holds its figures (JSON, expires after three periods, so a
process that died drops out by itself) and `{prefix}:members` (a sorted set, score = last publication, Redis'
clock) lists the processes, so a reader needs no SCAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

from crossroads.gate.redis_client import redis_client
from crossroads.observability.logs import OncePer
from crossroads.routing.health import HealthBoard

log = logging.getLogger("crossroads")

PUBLISH_INTERVAL = 5.0  # seconds between a process's publications
READ_CACHE = 2.0  # seconds a process reuses what it read of the others

# KEYS: [1] the process's figures, [2] members. ARGV: [1] JSON, [2] lifetime ms, [3] process id.
_PUBLISH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
return 1
"""


def process_id() -> str:
    """This process, as other processes see it: the instance (or host) and the pid."""
    return f"{os.environ.get('CROSSROADS_INSTANCE_ID') or socket.gethostname()}:{os.getpid()}"


class FleetHealth:
    def __init__(self, url: str, board: HealthBoard, *, prefix: str = "crossroads:health",
                 interval: float = PUBLISH_INTERVAL) -> None:
        self.board = board
        self.prefix = prefix
        self.interval = interval
        self.me = process_id()
        self._redis: Any = redis_client(url)
        self._publish = self._redis.register_script(_PUBLISH_LUA)
        self._task: asyncio.Task[None] | None = None
        self._read_at = -READ_CACHE
        self._others: dict[tuple[str, str], list[dict]] = {}
        self._down = OncePer(log)

    async def publish(self) -> None:
        body = json.dumps(self.board.export(), separators=(",", ":"))
        await self._publish(keys=[f"{self.prefix}:p:{self.me}", f"{self.prefix}:members"],
                            args=[body, round(3 * self.interval * 1000), self.me])

    async def others(self) -> dict[tuple[str, str], list[dict]]:
        """Every other live process's figures, by (connection, upstream model); {} while Redis is unreachable (the
        endpoints API then shows this process's figures alone)."""
        if time.monotonic() - self._read_at < READ_CACHE:
            return self._others
        try:
            members = await self._redis.zrange(f"{self.prefix}:members", 0, -1)
            names = [m.decode() for m in members if m.decode() != self.me]
            bodies = await self._redis.mget([f"{self.prefix}:p:{name}" for name in names]) if names else []
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds
            self._down.warning("cannot read the fleet's endpoint figures from Redis (showing this process's): %s",
                               type(exc).__name__)
            return {}
        merged: dict[tuple[str, str], list[dict]] = {}
        for body in bodies:
            if body is None:  # expired: the process is gone
                continue
            for entry in json.loads(body):
                merged.setdefault((entry["connection"], entry["model"]), []).append(entry)
        self._others, self._read_at = merged, time.monotonic()
        return merged

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="crossroads-fleet-health")

    async def _run(self) -> None:
        while True:
            try:
                await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                self._down.warning("cannot publish this process's endpoint figures to Redis: %s",
                                   type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # leave at once rather than after three periods
            await self._redis.delete(f"{self.prefix}:p:{self.me}")
            await self._redis.zrem(f"{self.prefix}:members", self.me)
        closer = getattr(self._redis, "aclose", None) or self._redis.close
        await closer()
