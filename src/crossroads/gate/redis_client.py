"""One way to open Redis for every part of the gateway that uses it (rate limits, the credit ledger, fleet health),
and `ScriptBatch`, how the request path runs its Lua scripts there.

redis-py's default pool raises MaxConnectionsError as soon as its connections are all busy, which under a burst
would turn a healthy Redis into 503s. A blocking pool makes a request wait (boundedly) for a connection instead.
`?max_connections=N` in CROSSROADS_REDIS_URL overrides the size.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

MAX_CONNECTIONS = 256  # per process and per user of Redis
POOL_WAIT = 2.0  # seconds a command may wait for a free connection before it fails


def redis_client(url: str) -> Any:
    import redis.asyncio as aioredis  # imported here so the memory-only setup never needs the client

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT)
    return aioredis.Redis(connection_pool=pool)


class ScriptBatch:
    """Calls of one Lua script made during one turn of the event loop, sent to Redis together (one write, one pooled
    connection, the replies read in order): under load, each request then pays a future instead of a round trip of
    its own. The commands are encoded here and written straight to a pooled connection, without redis-py's pipeline
    object (its command stack, retry wrapper and per-command packing cost more than the script's own run in Redis).
    A call whose batch fails gets the batch's exception; a call Redis refuses gets its error."""

    def __init__(self, redis: Any, script: str) -> None:
        self._redis = redis
        self._script = redis.register_script(script)
        sha = self._script.sha.encode()
        self._command_head = b"$7\r\nEVALSHA\r\n$%d\r\n%s\r\n" % (len(sha), sha)
        self._pending: list[tuple[list[Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        pool = redis.connection_pool
        # redis-py before 6 names the command when taking a connection; later versions warn about it.
        wants_name = inspect.signature(pool.get_connection).parameters["command_name"].default \
            is inspect.Parameter.empty
        self._connection_args: tuple[str, ...] = ("EVALSHA",) if wants_name else ()

    def __call__(self, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:  # the first call of this turn sends the batch once the turn's other calls are in
            loop.call_soon(self._send)
        self._pending.append(([len(keys), *keys, *args], future))
        return future

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[tuple[list[Any], asyncio.Future[Any]]]) -> None:
        from redis.exceptions import NoScriptError

        try:
            replies = await self._run([arguments for arguments, _ in batch])
            missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:  # Redis restarted (or was flushed): load the script, then run again what did not run
                await self._redis.script_load(self._script.script)
                for index, reply in zip(missing, await self._run([batch[index][0] for index in missing]),
                                        strict=True):
                    replies[index] = reply
        except Exception as exc:  # noqa: BLE001 - every caller of the batch gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _run(self, calls: list[list[Any]]) -> list[Any]:
        """Run the script once per argument list on one pooled connection; the replies in order, an error reply as
        its exception. A connection left in doubt (cut, timed out, cancelled mid-read) is closed, not reused."""
        from redis.exceptions import ResponseError

        pool = self._redis.connection_pool
        connection = await pool.get_connection(*self._connection_args)
        try:
            await connection.send_packed_command(self._encode(calls), check_health=False)
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as refused:  # the reply was read: the connection is still in step
                    replies.append(refused)
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    def _encode(self, calls: list[list[Any]]) -> bytes:
        """The EVALSHA commands in Redis' protocol (RESP): an array of bulk strings each. Arguments are text or
        numbers, written as redis-py writes them (str() of an int or a float is its repr)."""
        parts: list[bytes] = []
        head = self._command_head
        for arguments in calls:
            parts.append(b"*%d\r\n" % (len(arguments) + 2))
            parts.append(head)
            for argument in arguments:
                data = argument.encode() if isinstance(argument, str) else argument if isinstance(argument, bytes) \
                    else str(argument).encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)
