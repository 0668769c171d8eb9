"""The multi-instance safety net: every `crossroads serve` registers itself in the database (table `instances`) and
its workers keep a heartbeat there, so that a second live instance on the same database, where either keeps its limits
in process memory (no CROSSROADS_REDIS_URL), refuses to start instead of letting each instance spend a key's whole
limit on its own. `crossroads serve --workers N` covers the processes of one host; this covers the hosts.

The serving process calls `claim` once, after migrating and before any worker starts, and passes the id it got to its
workers in CROSSROADS_INSTANCE_ID; each worker runs an `InstanceHeartbeat` (see `start_heartbeat`); a clean stop
unregisters the instance. An instance whose heartbeat is older than LIVE_AFTER seconds (SIGKILL, host loss, a
database it cannot reach) is forgotten; so is, at once, a registered instance whose process is gone from this very
host (the same kernel and PID namespace): a restart after a crash is not refused. Ages are measured by the database's
clock (store.Store: `live_instances`), so the hosts' clocks need not agree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any

from crossroads.store.loops import Stopping
from crossroads.store.rows import InstanceRow

HEARTBEAT_INTERVAL = 5.0  # seconds between two heartbeats of a worker
LIVE_AFTER = 20.0  # an instance whose newest heartbeat is older than this is dead
WARN_EVERY = 30.0  # at most one heartbeat warning per this many seconds (per worker)
INSTANCE_ID_VARIABLE = "CROSSROADS_INSTANCE_ID"  # set by the serving process for its workers

log = logging.getLogger("crossroads")


def pid_namespace() -> str | None:
    """Where this process's pid means something: the kernel's boot id and the PID namespace (Linux), None elsewhere.
    Containers of one host share the boot id but not the namespace; a host name alone could be shared by both."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}" if boot and namespace else None


def _process_gone(pid: int) -> bool:
    """Whether no process has this pid here (only meaningful for a pid of this PID namespace)."""
    if pid <= 0:
        return False  # 0 and negatives would address process groups
    if pid == os.getpid():
        return True  # an earlier run whose pid this process now has: this process registered under another id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists (another user's); anything else: assume it lives
        return False
    return False


def _describe(row: InstanceRow) -> str:
    age = row.heartbeat_age if row.heartbeat_age is not None else 0.0
    where = "in Redis (CROSSROADS_REDIS_URL)" if row.shared else "in process memory (no CROSSROADS_REDIS_URL)"
    return (f"host {row.host}, pid {row.pid}, {row.workers} worker(s), last heartbeat {age:.0f} s ago, limits "
            f"{where}")


def _problem(shared: bool, others: list[InstanceRow], live_after: float) -> str | None:
    """Why this instance cannot hold its limits beside `others` (the other live instances), or None."""
    forgotten = (f"An instance that stopped without unregistering (killed, or its host lost) is forgotten "
                 f"{live_after:g} s after its last heartbeat.")
    if not shared and others:
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        return (f"another Crossroads instance is serving this database: {_describe(others[0])}{more}. Without a "
                "shared store each instance keeps credit and rate limits in its own memory, so every instance would "
                "let a key spend its whole limit. Set CROSSROADS_REDIS_URL on every instance, pointing at one Redis "
                "shared by all of them (e.g. CROSSROADS_REDIS_URL=redis://redis.internal:6379/0), or stop the other "
                f"instance. {forgotten}")
    unshared = [row for row in others if not row.shared]
    if shared and unshared:
        more = f" (and {len(unshared) - 1} more)" if len(unshared) > 1 else ""
        return (f"another Crossroads instance serving this database keeps its limits in process memory: "
                f"{_describe(unshared[0])}{more}. It would let a key spend its whole limit whatever this instance "
                "counts in Redis. Set CROSSROADS_REDIS_URL on every instance, pointing at the one Redis this instance "
                f"uses, and restart that instance (or stop it). {forgotten}")
    return None


async def claim(store: Any, *, workers: int, shared: bool, live_after: float = LIVE_AFTER
                ) -> tuple[str, str | None]:
    """Register this instance; return its id, and why it must not serve beside the other live instances (None when
    it may). `shared`: this instance keeps its limits in a shared store (CROSSROADS_REDIS_URL is set). Refused: this
    instance is not shared and another instance is live, or another live instance is not shared. When a problem is
    returned the registration is removed again. Registering before looking means that of two instances starting at
    once, each sees the other (both may be refused; never both let through).

    Instances whose heartbeat is `live_after` seconds old are deleted; so are those of this host (same kernel and PID
    namespace) whose process is gone. Store errors propagate (StoreUnavailable...)."""
    namespace = pid_namespace()
    row = InstanceRow(id=secrets.token_hex(16), host=socket.gethostname() or "unknown", pid=os.getpid(),
                      workers=workers, shared=bool(shared), pid_namespace=namespace)
    await store.prune_instances(live_after)
    await store.register_instance(row)
    try:
        others = []
        for other in await store.live_instances(live_after):
            if other.id == row.id:
                continue
            if namespace is not None and other.pid_namespace == namespace and _process_gone(other.pid):
                await store.unregister_instance(other.id)  # died here without unregistering (killed, a crash)
                continue
            others.append(other)
        problem = _problem(bool(shared), others, live_after)
        if problem is not None:
            await store.unregister_instance(row.id)
    except Exception:
        with contextlib.suppress(Exception):
            await store.unregister_instance(row.id)
        raise
    return row.id, problem


class InstanceHeartbeat:
    """Keeps an instance's heartbeat fresh from one process (each worker runs one): `start()` in a running event loop,
    `await stop()` before the store is closed. Errors are logged (at most one warning per WARN_EVERY seconds), never
    raised. A registration that has vanished (it was thought dead and deleted) is not recreated: the heartbeat goes
    on, and a warning says so."""

    def __init__(self, store: Any, instance_id: str, *, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.store = store
        self.instance_id = instance_id
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = Stopping()
        self._warned_at: float | None = None

    def start(self) -> None:
        if self._task is None:
            self._stopping = Stopping()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="crossroads-instance-heartbeat")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await self._stopping.stop(task)  # between two beats (store/loops.py says why)

    async def beat(self) -> bool | None:
        """One heartbeat: True when written, False when the registration is gone, None when the store failed."""
        try:
            found = await self.store.heartbeat_instance(self.instance_id)
        except Exception as exc:  # a heartbeat must never take a worker down
            self._warn("could not write this instance's heartbeat (another instance may take it for dead after "
                       "%g s): %s", LIVE_AFTER, exc)
            return None
        if not found:
            self._warn("this instance's registration %s is gone from the database (it was taken for dead): a second "
                       "instance without a shared store would not be refused beside it", self.instance_id)
        return found

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.beat()
            await self._stopping.pause(self.interval)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(message, *args)


def start_heartbeat(store: Any) -> InstanceHeartbeat | None:
    """The heartbeat of the instance named by CROSSROADS_INSTANCE_ID (set by `crossroads serve`), started; None when
    the variable is not set (an application run some other way, e.g. in tests)."""
    instance_id = os.environ.get(INSTANCE_ID_VARIABLE)
    if not instance_id:
        return None
    heartbeat = InstanceHeartbeat(store, instance_id)
    heartbeat.start()
    return heartbeat
