"""What the shared stores cost per request: Redis (credit ledger, rate limiter) and PostgreSQL (generation records,
the per-process background queries), measured with the gateway's own code (docs/deploy.md uses these figures).

    eval "$(scripts/ci-services.sh)"          # a throwaway PostgreSQL and Redis
    .venv/bin/python bench/shared_stores.py   # every part, ~3 s per cell (about 2.5 minutes)
    .venv/bin/python bench/shared_stores.py redis --duration 5
    .venv/bin/python bench/shared_stores.py postgres --history 1000000

Parts: `redis` (the credit ledger's and the rate limiter's scripts), `postgres` (generation batches, the per-process
background queries, reconciliation over a history of `--history` records), `gateway` (one real `crossroads serve
--workers N` in front of bench/upstream.py, loaded by bench/loadgen.py with a key that has a credit limit and
rpm/tpm: Redis commands, Redis and PostgreSQL CPU per request, connections held). The gateway part writes its own
figures under `crossroads:*` in that Redis (use a Redis of its own) and its records in a database of its own.

`--redis URL` / `--postgres URL` default to CROSSROADS_TEST_REDIS_URL / CROSSROADS_TEST_POSTGRES_URL. Use a Redis
nobody else is using while it runs: the server's CPU (INFO cpu) and command counts (INFO commandstats) are read
before and after each cell, and every other client's commands would count too. The PostgreSQL part creates a
database of its own (`crossroads_ss_<random>`) in that server, migrates it, and drops it at the end; the server CPU
it reports is that of the benchmark's own backend processes (pg_stat_activity pids, /proc/<pid>/stat), so the
server must run on this host.

Load comes from one Python process (this one): a cell's rate is what one gateway-like client process achieves, which
on a small machine is bounded by the client's CPU, not the server's. The server's CPU per operation is therefore
reported too: 1 core / (server CPU per operation) is what one server core sustains.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crossroads.gate.credits import Budget, period_starts  # noqa: E402
from crossroads.gate.ratelimit import Limit, RedisLimiter  # noqa: E402
from crossroads.gate.shared_credits import RedisCreditLedger  # noqa: E402
from crossroads.store.rows import GenerationRow, InstanceRow, KeyRow, to_record  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def out(line: str = "") -> None:
    print(line, flush=True)


# -- Redis ------------------------------------------------------------------------------------------------------------


async def redis_info(client: Any) -> tuple[float, dict[str, tuple[int, int]], int]:
    """(server CPU seconds, {command: (calls, usec)}, connected clients)."""
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    clients = await client.info("clients")
    seconds = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    commands = {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}
    return seconds, commands, int(clients["connected_clients"])


def command_delta(before: dict, after: dict) -> dict[str, tuple[int, int]]:
    delta = {}
    for name, (calls, usec) in after.items():
        calls0, usec0 = before.get(name, (0, 0))
        if calls - calls0 > 0:
            delta[name] = (calls - calls0, usec - usec0)
    return delta


async def run_tasks(tasks: int, duration: float, body: Callable[[int], Awaitable[None]]) -> tuple[int, float, float]:
    """`tasks` coroutines each calling body(task index) in a loop for `duration` s: (operations, seconds, this
    process's CPU seconds)."""
    count = 0
    deadline = 0.0

    async def loop(index: int) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await body(index)
            count += 1

    deadline = time.monotonic() + duration
    started, cpu0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(loop(i) for i in range(tasks)))
    return count, time.monotonic() - started, time.process_time() - cpu0


async def redis_cell(client: Any, name: str, tasks: int, duration: float,
                     body: Callable[[int], Awaitable[None]], per_op: int = 1) -> dict[str, Any]:
    await run_tasks(min(tasks, 20), 0.3, body)  # warm-up: connections opened, scripts loaded
    cpu0, cmd0, _ = await redis_info(client)
    peak_clients = 0

    async def sample() -> None:
        nonlocal peak_clients
        while True:
            await asyncio.sleep(0.5)
            peak_clients = max(peak_clients, (await redis_info(client))[2])

    sampler = asyncio.get_running_loop().create_task(sample())
    count, seconds, client_cpu = await run_tasks(tasks, duration, body)
    sampler.cancel()
    cpu1, cmd1, _ = await redis_info(client)
    commands = command_delta(cmd0, cmd1)
    for noise in ("info", "ping"):
        commands.pop(noise, None)
    server_cpu = cpu1 - cpu0
    ops = count * per_op
    result = {"cell": name, "tasks": tasks, "ops": count, "per_s": count / seconds,
              "client_us": client_cpu / count * 1e6, "server_us": server_cpu / count * 1e6,
              "server_core": server_cpu / seconds, "clients": peak_clients, "commands": commands, "units": ops}
    script_calls = sum(calls for cmd, (calls, _) in commands.items() if cmd.startswith(("evalsha", "eval")))
    script_usec = sum(usec for cmd, (_, usec) in commands.items() if cmd.startswith(("evalsha", "eval")))
    result["scripts_per_op"] = script_calls / count if count else 0.0
    result["script_us"] = script_usec / script_calls if script_calls else 0.0
    out(f"| {name} | {tasks} | {count / seconds:,.0f} | {result['scripts_per_op']:.2f} | {result['script_us']:.1f} | "
        f"{result['server_us']:.1f} | {server_cpu / seconds * 100:.0f} % | {result['client_us']:.0f} | "
        f"{peak_clients} |")
    return result


def limited_key(index: int, limit: float = 1e12) -> list[Budget]:
    """The budget chain of a key with a monthly limit (and no workspace budget)."""
    return [Budget("key", f"{index:064x}", limit, "monthly", f"bench {index}")]


def with_query(url: str, **params: Any) -> str:
    """`url` with query parameters added (redis-py reads e.g. max_connections from the URL)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: str(v) for k, v in params.items()})
    return urlunsplit(parts._replace(query=urlencode(query)))


async def pool_cap(url: str, tasks: int) -> None:
    """What `tasks` concurrent reservations get from one RedisCreditLedger built from `url` as the gateway builds it
    (redis-py's default pool)."""
    import redis

    ledger = RedisCreditLedger(url, lease=30.0, prefix=f"ssbench:{secrets.token_hex(4)}:cap")
    await ledger.reconcile({}, complete=True)
    keys = [limited_key(i) for i in range(tasks)]
    results = await asyncio.gather(*(ledger.reserve(k, 0.01, prompt_cost=0.0, completion_price=0.0) for k in keys),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    kinds = sorted({type(e).__name__ for e in errors})
    pool = ledger._redis.connection_pool
    out(f"Pool check: redis-py {redis.__version__}, {type(pool).__name__}(max_connections={pool.max_connections}) "
        f"per client as the gateway builds it; {tasks} reservations at once: {tasks - len(errors)} reserved, "
        f"{len(errors)} failed ({', '.join(kinds) or 'none'}).")
    out()
    await ledger.close()


async def redis_part(url: str, duration: float, tasks: int) -> None:
    import redis.asyncio as aioredis

    await pool_cap(url, tasks)
    if "max_connections" not in url:
        url = with_query(url, max_connections=4 * tasks)  # the cells below hold `tasks` commands in flight at once
    run = secrets.token_hex(4)
    client = aioredis.Redis.from_url(url)
    prefix = f"ssbench:{run}"
    out(f"## Redis ({url}, run prefix {prefix})")
    out()
    out("Server CPU is Redis' own (INFO cpu: user + sys) per operation; `script µs` is Redis' INFO commandstats time "
        "inside the scripts; client µs is this Python process's CPU per operation (the gateway's cost of the calls).")
    out()
    out("| cell | tasks | ops/s | scripts/op | script µs | server CPU µs/op | Redis core busy | client CPU µs/op | "
        "Redis clients |")
    out("|---|---|---|---|---|---|---|---|---|")
    ledger = RedisCreditLedger(url, lease=30.0, prefix=f"{prefix}:credit")
    await ledger.reconcile({}, complete=True)  # the "reconciled" marker: reservations are judged from here on
    many = [limited_key(i) for i in range(tasks)]

    async def pair_many(index: int) -> None:
        reservation = await ledger.reserve(many[index], 0.01, prompt_cost=0.001, completion_price=1e-6)
        await ledger.settle(reservation, 0.004)

    await redis_cell(client, "credit reserve+settle, one key per task", tasks, duration, pair_many)

    hot = limited_key(10**6)

    async def pair_hot(index: int) -> None:
        reservation = await ledger.reserve(hot, 0.01, prompt_cost=0.001, completion_price=1e-6)
        await ledger.settle(reservation, 0.004)

    await redis_cell(client, "credit reserve+settle, all tasks on one key", tasks, duration, pair_hot)

    # What a workspace budget adds: each task's own key under one workspace budget every task shares (the script
    # checks and holds both accounts).
    team = Budget("workspace", "ws:bench", 1e12, "monthly", "bench")
    chains = [[*many[index], team] for index in range(tasks)]

    async def pair_chain(index: int) -> None:
        reservation = await ledger.reserve(chains[index], 0.01, prompt_cost=0.001, completion_price=1e-6)
        await ledger.settle(reservation, 0.004)

    await redis_cell(client, "credit reserve+settle, one key per task + one shared workspace budget", tasks,
                     duration, pair_chain)

    # A key many requests of the fleet hold at once (long streams): each reservation of that key sums every open
    # reservation's amount (HVALS) in the script.
    for held in (1000, 10000):
        holder = RedisCreditLedger(url, lease=300.0, prefix=f"{prefix}:credit")
        key = limited_key(2 * 10**6 + held)
        for start in range(0, held, 100):
            await asyncio.gather(*(holder.reserve(key, 1e-6, prompt_cost=0.0, completion_price=0.0)
                                   for _ in range(min(100, held - start))))

        async def pair_held(index: int, key: list[Budget] = key) -> None:
            reservation = await ledger.reserve(key, 0.01, prompt_cost=0.001, completion_price=1e-6)
            await ledger.settle(reservation, 0.004)

        await redis_cell(client, f"credit reserve+settle, one key with {held} other reservations open", tasks,
                         duration, pair_held)
        await holder.close()

    limiter = RedisLimiter(url, prefix=f"{prefix}:rl")
    key_limits = [[Limit(f"key:{i}", rpm=10**9, tpm=10**12)] for i in range(tasks)]

    async def rate_many(index: int) -> None:
        limits = key_limits[index]
        decision = await limiter.acquire(limits, 400, "normal")
        assert decision.allowed
        await limiter.adjust(limits, -150)

    await redis_cell(client, "rate limit acquire+adjust (key rpm+tpm), one key per task", tasks, duration, rate_many)
    one = [Limit("key:hot", rpm=10**9, tpm=10**12)]

    async def rate_hot(index: int) -> None:
        decision = await limiter.acquire(one, 400, "normal")
        assert decision.allowed
        await limiter.adjust(one, -150)

    await redis_cell(client, "rate limit acquire+adjust (key rpm+tpm), all tasks on one key", tasks, duration,
                     rate_hot)
    both = [[Limit(f"key:{i}", rpm=10**9, tpm=10**12)] for i in range(tasks)]
    conn = [Limit("conn:upstream", rpm=10**9, tpm=10**12, priority_shares=True)]

    async def rate_key_and_connection(index: int) -> None:
        # What a request meets with key limits and a limited connection: two acquires, then one adjust for the
        # key's scopes and one for the connection's (Call._settle adjusts them together: one script).
        decision = await limiter.acquire(both[index], 400, "normal")
        assert decision.allowed
        decision = await limiter.acquire(conn, 400, "normal")
        assert decision.allowed
        await limiter.adjust(both[index] + conn, -150)

    await redis_cell(client, "rate limit: key rpm+tpm and connection rpm+tpm (2 acquire + 1 adjust)", tasks,
                     duration, rate_key_and_connection)
    out()

    # Per-process background work: lease renewal (every lease/3) with N reservations open, and reconciliation's Redis
    # side (every reconcile_interval) for N limited keys.
    out("Per-process background work (one round trip each):")
    out()
    out("| operation | size | wall ms | Redis CPU ms |")
    out("|---|---|---|---|")
    for count in (100, 1000):
        renewer = RedisCreditLedger(url, lease=30.0, prefix=f"{prefix}:credit")
        keys = [limited_key(3 * 10**6 + i) for i in range(100)]
        for start in range(0, count, 100):
            await asyncio.gather(*(renewer.reserve(keys[i % 100], 1e-6, prompt_cost=0.0, completion_price=0.0)
                                   for i in range(start, min(count, start + 100))))
        cpu0 = (await redis_info(client))[0]
        started = time.perf_counter()
        renewed = await renewer.renew()
        wall = time.perf_counter() - started
        cpu1 = (await redis_info(client))[0]
        out(f"| renew (lease renewal) | {renewed} reservations on 100 keys | {wall * 1000:.1f} | "
            f"{(cpu1 - cpu0) * 1000:.1f} |")
        await renewer.close()
    for count in (100, 1000):
        figures = {f"{4 * 10**6 + i:064x}": {"total": 12.5, "daily": 1.0, "weekly": 3.0, "monthly": 9.0}
                   for i in range(count)}
        cpu0 = (await redis_info(client))[0]
        started = time.perf_counter()
        await ledger.reconcile(figures, complete=False)
        wall = time.perf_counter() - started
        cpu1 = (await redis_info(client))[0]
        out(f"| reconcile, Redis side | {count} limited keys | {wall * 1000:.1f} | {(cpu1 - cpu0) * 1000:.1f} |")
    out()
    await full_speed(url, client, prefix)
    await burst_and_lease(url, prefix)
    await ledger.close()
    await limiter.close()
    # Remove what the run left (this run's keys and those of the pool check).
    cursor = 0
    while True:
        cursor, names = await client.scan(cursor, match="ssbench:*", count=1000)
        if names:
            await client.delete(*names)
        if cursor == 0:
            break
    await client.aclose()


async def full_speed(url: str, client: Any, prefix: str, requests: int = 150_000) -> None:
    """Each script alone at the rate Redis itself sustains: driven by redis-benchmark (a C client, 50 connections, no
    pipelining), so the client is not the limit. Skipped without redis-benchmark."""
    import shutil
    from urllib.parse import urlsplit

    from crossroads.gate import ratelimit, shared_credits

    binary = shutil.which("redis-benchmark")
    if binary is None:
        out("(redis-benchmark not found: the full-speed cells are skipped)")
        out()
        return
    parts = urlsplit(url)
    base = [binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379), "-c", "50", "-n",
            str(requests), "-r", "100000", "-q"]
    if parts.password:
        base += ["-a", parts.password]
    if parts.path.strip("/"):
        base += ["--dbnum", parts.path.strip("/")]
    p = f"{prefix}:rb"
    await client.set(f"{p}:reconciled", 1)
    scripts = {
        # One account per call (a key's chain without other budgets): KEYS marker + (spend, res, amt, rsum).
        "reserve": (shared_credits._RESERVE_LUA, [f"{p}:reconciled", f"{p}:m:__rand_int__", f"{p}:res:__rand_int__",
                                                 f"{p}:amt:__rand_int__", f"{p}:rsum:__rand_int__"],
                    ["30000", "0.01", "__rand_int__", "1000000000000"]),
        "settle": (shared_credits._SETTLE_LUA, [f"{p}:t:__rand_int__", f"{p}:d:__rand_int__", f"{p}:w:__rand_int__",
                                               f"{p}:m:__rand_int__", f"{p}:res:__rand_int__", f"{p}:amt:__rand_int__",
                                               f"{p}:rsum:__rand_int__"],
                   ["__rand_int__", "0.004", "172800", "691200", "2764800"]),
        "acquire (rpm+tpm)": (ratelimit._ACQUIRE_LUA, [f"{p}:rpm:__rand_int__", f"{p}:tpm:__rand_int__"],
                              ["60000", "1000000000", "1000000000", "1", "1000000000000", "1000000000000", "400"]),
        "adjust (tpm)": (ratelimit._ADJUST_LUA, [f"{p}:tpm:__rand_int__"], ["60000", "-150"]),
    }
    out("Each script alone at full speed (redis-benchmark: C client, 50 connections, no pipelining, keys spread "
        "over 100,000 random names):")
    out()
    out("| script | calls/s | Redis CPU µs/call | Redis core busy | script µs/call (commandstats) |")
    out("|---|---|---|---|---|")
    rates: dict[str, float] = {}
    for name, (source, keys, args) in scripts.items():
        sha = await client.script_load(source)
        await client.config_resetstat()
        cpu0 = (await redis_info(client))[0]
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(*base, "EVALSHA", sha, str(len(keys)), *keys, *args,
                                                       stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.DEVNULL)
        stdout, _ = await process.communicate()
        seconds = time.monotonic() - started
        cpu1, commands, _ = await redis_info(client)
        text = stdout.decode(errors="replace").replace("\r", "\n")
        found = [line for line in text.splitlines() if "requests per second" in line]
        rate = float(found[-1].split(":")[-1].split("requests")[0].strip().replace(",", "")) if found else 0.0
        rates[name] = rate
        calls, usec = commands.get("evalsha", (0, 0))
        out(f"| {name} | {rate:,.0f} | {(cpu1 - cpu0) / requests * 1e6:.1f} | "
            f"{(cpu1 - cpu0) / seconds * 100:.0f} % | {usec / calls if calls else 0:.1f} |")
    if rates.get("reserve") and rates.get("settle"):
        pair = 1 / (1 / rates["reserve"] + 1 / rates["settle"])
        out()
        out(f"A credit-limited request (reserve + settle) at these rates: {pair:,.0f} requests/s per Redis.")
    if rates.get("acquire (rpm+tpm)") and rates.get("adjust (tpm)"):
        pair = 1 / (1 / rates["acquire (rpm+tpm)"] + 1 / rates["adjust (tpm)"])
        out(f"A key with rpm+tpm (acquire + adjust): {pair:,.0f} requests/s per Redis.")
    out()


async def burst_and_lease(url: str, prefix: str) -> None:
    """The fixed window's edge (2x a limit within a few ms across a boundary) and a dead process's reservation coming
    back after its lease, both with the real code and a short window / lease."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    window = 2.0
    limiter = RedisLimiter(url, window=window, prefix=f"{prefix}:burst")
    limits = [Limit("key:burst", rpm=10)]
    await limiter.acquire([Limit("key:warm", rpm=10)], 1)  # script loaded, connection open
    seconds, micros = await client.time()
    now = seconds + micros / 1e6
    boundary = (int(now / window) + 1) * window
    if boundary - now < 0.3:  # too close: take the next one
        boundary += window
    await asyncio.sleep(boundary - now - 0.15)
    admitted: list[float] = []
    for _ in range(15):  # the end of one window
        decision = await limiter.acquire(limits, 1)
        if decision.allowed:
            admitted.append(time.monotonic())
    seconds, micros = await client.time()
    now = seconds + micros / 1e6
    await asyncio.sleep(max(0.0, boundary - now + 0.01))
    for _ in range(15):  # the start of the next
        decision = await limiter.acquire(limits, 1)
        if decision.allowed:
            admitted.append(time.monotonic())
    span = (admitted[-1] - admitted[0]) * 1000 if admitted else 0.0
    out(f"Fixed window edge (RedisLimiter, window {window:g} s, rpm-style limit 10): {len(admitted)} of 30 requests "
        f"admitted within {span:.0f} ms across one window boundary.")
    await limiter.close()

    lease = 1.0
    dead = RedisCreditLedger(url, lease=lease, prefix=f"{prefix}:lease")
    live = RedisCreditLedger(url, lease=lease, prefix=f"{prefix}:lease")
    await live.reconcile({}, complete=True)
    key = limited_key(7, limit=1.0)
    await dead.reserve(key, 1.0, prompt_cost=0.0, completion_price=0.0)  # the whole limit, never settled or renewed
    started = time.monotonic()
    refused = 0
    while True:
        try:
            await live.reserve(key, 0.5, prompt_cost=0.0, completion_price=0.0)
            break
        except Exception:  # noqa: BLE001 - the 402 while the dead process's reservation holds the limit
            refused += 1
            await asyncio.sleep(0.02)
    out(f"Lease: a reservation of the whole limit left by a process that never settles or renews it (lease "
        f"{lease:g} s): another process's reservation admitted after {time.monotonic() - started:.2f} s "
        f"({refused} refusals before).")
    out()
    await dead.close()
    await live.close()
    await client.aclose()


# -- PostgreSQL -------------------------------------------------------------------------------------------------------


def generation(n: int, key_hash: str | None) -> GenerationRow:
    """A record as a plain chat completion leaves it: one upstream attempt, the usual headers."""
    return GenerationRow(
        id=f"gen-{n}-{uuid.uuid4().hex[:20]}", created_at=datetime.now(UTC), key_hash=key_hash,
        model="openai/gpt-4o-mini", provider_name="openai", provider_type="openai", upstream_model="gpt-4o-mini",
        upstream_id=f"chatcmpl-{uuid.uuid4().hex[:24]}", api_type="chat", streamed=False, cancelled=False,
        status=200, finish_reason="stop", native_finish_reason="stop", tokens_prompt=812, tokens_completion=164,
        cost=0.0002202, latency_ms=930, generation_time_ms=921, ttft_ms=None, http_referer="https://app.example.com/",
        app_title="Example App", user=None, user_agent="OpenAI/Python 1.54.0",
        provider_responses=[{"provider_name": "openai", "model_permaslug": "openai/gpt-4o-mini", "status": 200,
                             "latency": 921.4, "error": None}], events=[])


class Backends:
    """CPU seconds of this benchmark's PostgreSQL backends (read from /proc: the server must run on this host)."""

    def __init__(self, admin: Any, database: str) -> None:
        self.admin = admin
        self.database = database

    async def cpu(self) -> float:
        pids = [row[0] for row in await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.database)]
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # noqa: ASYNC240 - tiny
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK


async def pg_cell(backends: Backends, name: str, duration: float, op: Callable[[], Awaitable[int]],
                  unit: str = "call") -> dict[str, Any]:
    """Run op() back to back for `duration` s (each returns how many units it did)."""
    await op()  # warm-up: the connection is open, statements prepared
    cpu0 = await backends.cpu()
    started, client0 = time.monotonic(), time.process_time()
    calls = units = 0
    while time.monotonic() - started < duration:
        units += await op()
        calls += 1
    seconds = time.monotonic() - started
    client = time.process_time() - client0
    cpu1 = await backends.cpu()
    server = cpu1 - cpu0
    result = {"cell": name, "calls": calls, "units": units, "ms": seconds / calls * 1000, "units_s": units / seconds,
              "server_us": server / units * 1e6, "client_us": client / units * 1e6,
              "server_core": server / seconds}
    out(f"| {name} | {seconds / calls * 1000:.2f} | {units / seconds:,.0f} {unit}s/s | {result['server_us']:.1f} | "
        f"{result['client_us']:.1f} |")
    return result


async def postgres_part(url: str, duration: float, history: int) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    from crossroads.store import Store, migrate
    from crossroads.store.engine import async_url

    base = make_url(url)
    plain = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"crossroads_ss_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(plain)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = base.set(database=name).render_as_string(hide_password=False)
    store: Store | None = None
    try:
        settings = {row[0]: row[1] for row in await admin.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'server_version', "
            "'max_connections', 'shared_buffers')")}
        out(f"## PostgreSQL ({async_url(url).render_as_string(hide_password=True)}, database {name})")
        out()
        out("Server settings: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())))
        out()
        await asyncio.to_thread(migrate, database_url)
        store = await Store.open(database_url)
        backends = Backends(admin, name)
        # 100 keys, 20 of them with a credit limit: the key cache's poll reads api_keys (count, newest updated_at).
        hashes = [f"{i:064x}" for i in range(100)]
        for i, key_hash in enumerate(hashes):
            await store.insert_key(KeyRow(hash=key_hash, name=f"k{i}", label="sk-or-v1-000...000",
                                          limit=100.0 if i < 20 else None, limit_reset="monthly" if i < 20 else None))
        out("Server CPU: the benchmark's own backend processes (/proc/<pid>/stat, 10 ms ticks). Every call through "
            "the Store's pool is 6 round trips: the pool's pre-ping (BEGIN, ';', ROLLBACK), then BEGIN, the "
            "statement, COMMIT or ROLLBACK.")
        out()
        out("| operation | ms per call | rate (one client, back to back) | server CPU µs per unit | "
            "client CPU µs per unit |")
        out("|---|---|---|---|---|")
        template = to_record(generation(0, hashes[0]))
        counter = 0

        def batch(size: int) -> list[tuple]:
            nonlocal counter
            rows = []
            for _ in range(size):
                counter += 1
                rows.append((f"gen-{counter}-{secrets.token_hex(10)}", datetime.now(UTC).strftime(
                    "%Y-%m-%d %H:%M:%S.%f"), hashes[counter % 100], *template[3:]))
            return rows

        for size in (1, 10, 50, 500):
            async def insert(size: int = size) -> int:
                await store.insert_generations(batch(size))
                return size

            await pg_cell(backends, f"insert_generations, batch {size}", duration, insert, unit="row")

        async def poll() -> int:
            await store.keys_version()
            return 1

        await pg_cell(backends, "keys_version (key cache poll), 100 keys", duration, poll)
        await admin_in(database_url, "INSERT INTO api_keys (hash, name, label, disabled, is_management, created_at, "
                                     "updated_at, priority) SELECT 'e' || lpad(to_hex(g), 63, '0'), 'k' || g, 'l', false, "
                                     "false, now(), now(), 'normal' FROM generate_series(1, 9900) AS g; "
                                     "ANALYZE api_keys")
        await pg_cell(backends, "keys_version (key cache poll), 10,000 keys", duration, poll)
        await store.register_instance(InstanceRow(id="bench", host="bench", pid=os.getpid(), workers=1, shared=True))

        async def beat() -> int:
            await store.heartbeat_instance("bench")
            return 1

        await pg_cell(backends, "heartbeat_instance", duration, beat)
        history_items = [{"role": "user", "content": "Summarise the attached notes in three bullet points. " * 8},
                         {"type": "message", "role": "assistant", "content": [
                             {"type": "output_text", "text": "- first point\n- second point\n- third point " * 6}]}]
        response = {"id": "resp_x", "object": "response", "status": "completed", "model": "openai/gpt-4o-mini",
                    "output": history_items[1:], "usage": {"input_tokens": 812, "output_tokens": 164}}

        async def put() -> int:
            await store.put_response(f"resp_{secrets.token_hex(12)}", hashes[1], history_items, response)
            return 1

        await pg_cell(backends, "put_response (Responses API, store: true)", duration, put)
        out()

        # What a row costs on disk, from the rows written above.
        rows, size = await pg_size(database_url)
        out(f"Table `generations`: {rows:,} rows, {size / rows:,.0f} bytes per row (table + indexes + TOAST).")
        out()

        # Reconciliation: key_spend over the limited keys, against a history of `history` records (written here with
        # one INSERT ... SELECT, the same columns as above, spread over 30 days and the 100 keys).
        conn = await asyncpg.connect(base.set(drivername="postgresql", database=name)
                                     .render_as_string(hide_password=False))
        started = time.monotonic()
        await conn.execute(
            """INSERT INTO generations (id, created_at, key_hash, model, provider_name, provider_type, upstream_model,
                 upstream_id, api_type, streamed, cancelled, status, finish_reason, native_finish_reason, tokens_prompt,
                 tokens_completion, tokens_reasoning, tokens_cached, tokens_cache_write, cost, latency_ms,
                 generation_time_ms, http_referer, app_title, user_agent, provider_responses, events)
               SELECT 'hist-' || g, now() - (g % 2592000) * interval '1 second', lpad(to_hex(g % 100), 64, '0'),
                 'openai/gpt-4o-mini', 'openai', 'openai', 'gpt-4o-mini', 'chatcmpl-' || g, 'chat', false, false, 200,
                 'stop', 'stop', 812, 164, 0, 0, 0, 0.0002202, 930, 921, 'https://app.example.com/', 'Example App',
                 'OpenAI/Python 1.54.0',
                 '[{"provider_name": "openai", "model_permaslug": "openai/gpt-4o-mini", "status": 200}]'::json, NULL
               FROM generate_series(1, $1) AS g""", history)
        await conn.execute("VACUUM ANALYZE generations")  # as autovacuum leaves a table: hint bits set
        out(f"History for reconciliation: {history:,} records written in {time.monotonic() - started:.1f} s "
            f"(INSERT ... SELECT), spread over 100 keys and 30 days.")
        out()
        starts = period_starts(datetime.now(UTC))
        limited = hashes[:20]
        plans: dict[tuple[bool, int], str] = {}
        for parallel in (True, False):
            if not parallel:
                await conn.execute("SET max_parallel_workers_per_gather = 0")
            for keys in (1, 5, 20):
                text = "\n".join(row[0] for row in await conn.fetch(
                    "EXPLAIN SELECT key_hash, sum(cost), sum(CASE WHEN created_at >= $1 THEN cost ELSE 0 END) "
                    "FROM generations WHERE key_hash = ANY($2) GROUP BY key_hash", starts["monthly"], limited[:keys]))
                plans[parallel, keys] = (
                    "parallel seq scan" if "Parallel Seq Scan" in text else "seq scan" if "Seq Scan" in text
                    else "parallel bitmap heap scan" if "Parallel Bitmap Heap Scan" in text
                    else "bitmap heap scan" if "Bitmap Heap Scan" in text else "index scan")
        await conn.close()
        for parallel in (True, False):
            if not parallel:
                # All of a query's CPU in the one backend measured (parallel workers are processes that exit).
                await admin.execute(f'ALTER DATABASE "{name}" SET max_parallel_workers_per_gather = 0')
                await store.close()
                store = await Store.open(database_url)
            out("key_spend as reconciliation runs it (" + (
                "parallel query as the server is configured: wall time is right, server CPU counts the leader only)"
                if parallel else "max_parallel_workers_per_gather = 0: all of its CPU in the backend measured)"))
            out()
            out("| operation | ms per call | rate | server CPU µs per unit | client CPU µs per unit |")
            out("|---|---|---|---|---|")
            current = store
            for keys in (1, 5, 20):
                async def spend(keys: int = keys, current: Store = current) -> int:
                    await current.key_spend(starts, limited[:keys])
                    return 1

                await pg_cell(backends, f"key_spend of {keys} limited key(s), {keys * history // 100:,} of their "
                                        f"records in {history:,} ({plans[parallel, keys]})", min(duration, 5.0), spend)

            async def spend_all(current: Store = current) -> int:
                await current.key_spend(starts)
                return 1

            await pg_cell(backends, f"key_spend of every key (process start-up), {history:,} records",
                          min(duration, 5.0), spend_all)
            out()
    finally:
        if store is not None:
            await store.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def admin_in(database_url: str, sql: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(make_url(database_url).set(drivername="postgresql")
                                 .render_as_string(hide_password=False))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def pg_size(database_url: str) -> tuple[int, int]:
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(make_url(database_url).set(drivername="postgresql")
                                 .render_as_string(hide_password=False))
    try:
        await conn.execute("VACUUM ANALYZE generations")
        rows = await conn.fetchval("SELECT count(*) FROM generations")
        size = await conn.fetchval("SELECT pg_total_relation_size('generations')")
        return int(rows), int(size)
    finally:
        await conn.close()


# -- one real gateway ---------------------------------------------------------------------------------------------------


async def gateway_part(pg_url: str, redis_url: str, workers: int, duration: float, connections: int) -> None:
    """`crossroads serve --workers N` on its own PostgreSQL database and the Redis given, in front of bench/upstream.py,
    driven by bench/loadgen.py with a key that has a credit limit and rpm/tpm: what it holds at idle and what each
    request costs Redis and PostgreSQL (the servers' CPU, the commands, the rows)."""
    import json
    import signal
    import subprocess
    import tempfile
    import urllib.request

    import asyncpg
    import redis.asyncio as aioredis
    from sqlalchemy.engine import make_url

    root = Path(__file__).resolve().parents[1]  # noqa: ASYNC240 - before anything runs
    sys.path.insert(0, str(root / "bench"))
    import run as bench  # bench/run.py: the gateway configuration every benchmark uses

    python = sys.executable
    free_port = bench.free_port
    master = bench.MASTER_KEY

    def call(method: str, url: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, method=method,
                                         headers={"Authorization": f"Bearer {master}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    base = make_url(pg_url).set(drivername="postgresql")
    name = f"crossroads_ss_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(base.render_as_string(hide_password=False))
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = base.set(database=name).render_as_string(hide_password=False)
    client = aioredis.Redis.from_url(redis_url)
    backends = Backends(admin, name)
    processes: list[subprocess.Popen] = []
    work = Path(tempfile.mkdtemp(prefix="crossroads-ss-"))
    try:
        upstream_port, port = free_port(), free_port()
        processes.append(subprocess.Popen(  # noqa: ASYNC220 - started before anything is measured
            [python, str(root / "bench" / "upstream.py"), "--port", str(upstream_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        config = work / "gateway.yaml"
        bench.write_gateway_config(config, port, upstream_port, work / "data")
        env = dict(os.environ, CROSSROADS_DATABASE_URL=database_url, CROSSROADS_REDIS_URL=redis_url)
        env.pop("CROSSROADS_MASTER_KEY", None)
        log = (work / "gateway.log").open("w")
        gateway = subprocess.Popen(  # noqa: ASYNC220 - started before anything is measured
            [python, "-m", "crossroads", "serve", "--config", str(config), "--workers", str(workers), "--log-level",
             "warning"], cwd=root, env=env, stdout=log, stderr=log)
        processes.append(gateway)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                call("GET", url + "/health/ready")
                break
            except Exception:  # noqa: BLE001 - not up yet
                await asyncio.sleep(0.1)
        key = call("POST", url + "/api/v1/keys", {"name": "bench", "limit": 1000, "limit_reset": "monthly",
                                                   "rpm": 10**8, "tpm": 10**9})["key"]
        await asyncio.sleep(2)
        out(f"## One gateway: `crossroads serve --workers {workers}`, PostgreSQL + Redis, a key with a credit limit "
            "and rpm/tpm")
        out()
        idle = 10.0
        commands0 = (await redis_info(client))[1]
        await asyncio.sleep(idle)
        _, commands1, clients = await redis_info(client)
        background = {k: v[0] for k, v in command_delta(commands0, commands1).items() if k not in ("info",)}
        connections_idle = await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name)
        out(f"Idle {idle:.0f} s: {connections_idle} PostgreSQL connections, {clients} Redis clients (this script's "
            f"included), Redis commands: {background or 'none'}.")
        body = work / "body.json"
        body.write_text(json.dumps({"model": "bench/model", "max_tokens": 64, "messages": [
            {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]}))
        db = await asyncpg.connect(database_url)
        rows0 = await db.fetchval("SELECT count(*) FROM generations")
        redis_cpu0, commands0, _ = await redis_info(client)
        pg_cpu0 = await backends.cpu()
        load = await asyncio.create_subprocess_exec(
            python, str(root / "bench" / "loadgen.py"), url + "/api/v1/chat/completions", str(body), "--connections",
            str(connections), "--duration", str(duration), "--key", key, stdout=asyncio.subprocess.PIPE)
        peak_pg = peak_redis = 0
        while load.returncode is None:
            try:
                await asyncio.wait_for(load.wait(), 0.5)
            except TimeoutError:
                pass
            peak_pg = max(peak_pg, await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name))
            peak_redis = max(peak_redis, (await redis_info(client))[2])
        pg_cpu1 = await backends.cpu()
        result = json.loads((await load.stdout.read()).decode().split("BENCHJSON", 1)[1])
        await asyncio.sleep(2.5)  # the last batch written, the last settlements landed
        redis_cpu1, commands1, _ = await redis_info(client)
        rows = await db.fetchval("SELECT count(*) FROM generations") - rows0
        await db.close()
        requests = int(result["requests"])
        delta = command_delta(commands0, commands1)
        scripts = sum(calls for cmd, (calls, _) in delta.items() if cmd.startswith("evalsha"))
        out(f"Load: {requests:,} requests in {duration:g} s ({requests / duration:,.0f}/s, {connections} connections, "
            f"errors {sum(result['errors'].values())}); {rows:,} generation rows written.")
        redis_us = (redis_cpu1 - redis_cpu0) / requests * 1e6
        pg_us = (pg_cpu1 - pg_cpu0) / requests * 1e6
        out(f"Per request: {scripts / requests:.2f} Redis scripts (EVALSHA), Redis CPU {redis_us:.0f} µs, PostgreSQL "
            f"backend CPU {pg_us:.1f} µs (the background queries of the window included); peak {peak_pg} PostgreSQL "
            f"connections, {peak_redis} Redis clients.")
        out()
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        await client.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=("all", "redis", "postgres", "gateway"), default="all")
    parser.add_argument("--redis", default=os.environ.get("CROSSROADS_TEST_REDIS_URL"))
    parser.add_argument("--postgres", default=os.environ.get("CROSSROADS_TEST_POSTGRES_URL"))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell (default 3)")
    parser.add_argument("--tasks", type=int, default=200, help="concurrent tasks in the Redis cells (default 200)")
    parser.add_argument("--history", type=int, default=1_000_000,
                        help="generation records behind the reconciliation query (default 1,000,000)")
    parser.add_argument("--workers", type=int, default=2, help="the gateway part's --workers (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="the gateway part's client connections")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out(f"# Shared stores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start")
    out()
    if args.part in ("all", "redis"):
        if not args.redis:
            parser.error("no Redis: --redis URL or CROSSROADS_TEST_REDIS_URL")
        asyncio.run(redis_part(args.redis, args.duration, args.tasks))
    if args.part in ("all", "postgres"):
        if not args.postgres:
            parser.error("no PostgreSQL: --postgres URL or CROSSROADS_TEST_POSTGRES_URL")
        asyncio.run(postgres_part(args.postgres, args.duration, args.history))
    if args.part in ("all", "gateway"):
        if not args.postgres or not args.redis:
            parser.error("the gateway part needs both PostgreSQL and Redis")
        asyncio.run(gateway_part(args.postgres, args.redis, args.workers, max(args.duration, 5.0), args.connections))


if __name__ == "__main__":
    main()
