"""One way to open Redis for every part of the gateway that uses it (rate limits, the credit ledger, fleet health).

redis-py's default pool raises MaxConnectionsError as soon as its connections are all busy, which under a burst
would turn a healthy Redis into 503s. A blocking pool makes a request wait (boundedly) for a connection instead.
`?max_connections=N` in CROSSROADS_REDIS_URL overrides the size.
"""

from __future__ import annotations

from typing import Any

MAX_CONNECTIONS = 256  # per process and per user of Redis
POOL_WAIT = 2.0  # seconds a command may wait for a free connection before it fails


def redis_client(url: str) -> Any:
    import redis.asyncio as aioredis  # imported here so the memory-only setup never needs the client

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT)
    return aioredis.Redis(connection_pool=pool)
