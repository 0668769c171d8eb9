"""`crossroads serve --workers N`: N worker processes on one address, each accepting on a listening socket of its own.

uvicorn's own supervisor hands every worker one shared listening socket, and the workers race to accept: whichever
the kernel wakes first takes every connection waiting, so a burst of keep-alive connections (a load balancer's, a
client's pool) can all land on one worker while the others idle. Measured with 32 connections opened at once: one
worker at a whole core, the other at 1 %, in one run of three. Here each worker binds a socket of its own to the
address with SO_REUSEPORT, and the kernel spreads new connections over the listening sockets by a hash of the two
ends' addresses, whoever is awake.

The supervisor claims the address first with a socket that is bound, with SO_REUSEPORT, but never listens: the port
is taken (and port 0 resolved) before any worker starts, and a socket that does not listen is given no connections.
Only processes of the same user can join a SO_REUSEPORT address. The supervisor starts a new worker when one dies
(at once, or, for one that keeps dying within `STABLE_AFTER` seconds of its start, after a wait that doubles up to
`MAX_RESTART_DELAY`), and stops them all on SIGINT or SIGTERM, giving each its graceful shutdown. A worker that could
not start (exit status `STARTUP_FAILURE`: its app, or its socket, is broken and would break the same way again) stops
the whole server.

A worker that is alive but no longer serves (its event loop blocked: a deadlock, a runaway computation; or the
process stopped) would keep its listening socket, and the kernel would keep handing it new connections that nobody
answers. Each worker's event loop therefore writes the time into a shared heartbeat every `HEARTBEAT_EVERY` seconds
once it serves (and while it shuts down); a worker whose heartbeat is older than `--worker-timeout` seconds is killed
(SIGKILL, which also ends a stopped process) and replaced like one that died.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

log = logging.getLogger("crossroads")

STARTUP_FAILURE = 3  # uvicorn's exit status for a server that did not start
CHECK_INTERVAL = 0.5  # seconds between two looks at the workers
STOP_MARGIN = 5.0  # seconds a worker gets beyond the graceful shutdown before it is killed
STABLE_AFTER = 10.0  # seconds after which a worker that dies is replaced at once (younger: after a growing wait)
MAX_RESTART_DELAY = 30.0  # seconds, the longest wait before a worker that keeps dying young is started again
HEARTBEAT_EVERY = 0.5  # seconds between a serving worker's heartbeats
WORKER_TIMEOUT = 30.0  # default seconds without a heartbeat after which a worker is killed and replaced
APP = "crossroads.api.app:create_app"


def bind_shared(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound (not listening) to host:port; with `reuse_port`, other sockets of this user may bind the
    same address (each worker's)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_worker(options: dict[str, Any], host: str, port: int, heartbeat: Any = None) -> None:
    """One worker (in a process of its own): serve the gateway on a socket of its own bound to host:port, writing
    `time.monotonic()` into `heartbeat` (a shared double) from its event loop while it serves."""
    import asyncio

    import uvicorn

    class BeatingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if heartbeat is not None and not self.should_exit:
                loop = asyncio.get_running_loop()

                def beat() -> None:  # a timer, not a task: it beats through the graceful shutdown too
                    heartbeat.value = time.monotonic()
                    loop.call_later(HEARTBEAT_EVERY, beat)

                beat()

    config = uvicorn.Config(APP, factory=True, **options)
    config.configure_logging()
    try:
        sock = bind_shared(host, port, reuse_port=True)
    except OSError as exc:
        print(f"crossroads: worker {os.getpid()} cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)
    server = BeatingServer(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # a Ctrl-C that came before uvicorn took over the signal
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class Supervisor:
    """Starts `workers` processes running `run_worker`, keeps that many alive, and stops them on SIGINT/SIGTERM."""

    def __init__(self, options: dict[str, Any], host: str, port: int, workers: int, grace: float,
                 worker_timeout: float = WORKER_TIMEOUT) -> None:
        self.options = {name: value for name, value in options.items() if name not in ("host", "port", "workers")}
        self.host, self.port, self.workers, self.grace = host, port, workers, grace
        self.worker_timeout = worker_timeout
        self._spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of the parent's state
        self._stopping = threading.Event()
        # One shared double per worker slot: the monotonic time (system-wide on Linux) of its worker's last beat,
        # 0 until the worker serves.
        self._heartbeats = [self._spawn.RawValue("d", 0.0) for _ in range(workers)]

    def _start(self, index: int) -> Any:
        heartbeat = self._heartbeats[index]
        heartbeat.value = 0.0
        process = self._spawn.Process(target=run_worker, args=(self.options, self.host, self.port, heartbeat),
                                      name="crossroads-worker")
        process.start()
        return process

    def _hung_for(self, index: int, now: float) -> float | None:
        """Seconds since the slot's worker last beat, when that is more than the timeout (else None)."""
        beat = self._heartbeats[index].value
        return now - beat if beat and now - beat > self.worker_timeout else None

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping.set()

    def run(self) -> int:
        """Serve until a signal asks to stop (0), or until a worker cannot start (STARTUP_FAILURE)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        status = 0
        processes: list[Any] = [self._start(index) for index in range(self.workers)]
        started = [time.monotonic()] * self.workers  # when each slot's process started
        delays = [0.0] * self.workers  # the wait before the slot's next start, doubled while its workers die young
        restart_at: list[float | None] = [None] * self.workers
        try:
            while not self._stopping.wait(CHECK_INTERVAL):
                now = time.monotonic()
                for index, process in enumerate(processes):
                    if process is None:  # waiting out its delay
                        if now >= (restart_at[index] or now):
                            processes[index], started[index], restart_at[index] = self._start(index), now, None
                        continue
                    hung = None
                    if process.is_alive():
                        hung = self._hung_for(index, now)
                        if hung is None:
                            if now - started[index] >= STABLE_AFTER:
                                delays[index] = 0.0
                            continue
                        process.kill()  # SIGKILL: also ends a stopped process, which SIGTERM would not
                    process.join()
                    if process.exitcode == STARTUP_FAILURE:
                        log.error("worker %s could not start (see above); stopping the server", process.pid)
                        status = STARTUP_FAILURE
                        self._stopping.set()
                        break
                    # A worker that dies young again and again (a crash at its first request, memory exhausted) is
                    # started again after a wait that doubles each time, up to MAX_RESTART_DELAY: not in a tight loop.
                    lived = now - started[index]
                    delays[index] = min(MAX_RESTART_DELAY, delays[index] * 2 or CHECK_INTERVAL) \
                        if lived < STABLE_AFTER else 0.0
                    then = f" in {delays[index]:g} s" if delays[index] else ""
                    if hung is not None:
                        log.warning("worker %s stopped answering: its event loop has not run for %.1f s (more than "
                                    "--worker-timeout %g s; blocked, or the process stopped); killed it after %.1f s, "
                                    "starting another%s", process.pid, hung, self.worker_timeout, lived, then)
                    else:
                        log.warning("worker %s ended unexpectedly (%s) after %.1f s; starting another%s", process.pid,
                                    describe_exit(process.exitcode), lived, then)
                    if delays[index]:
                        processes[index], restart_at[index] = None, now + delays[index]
                    else:
                        processes[index], started[index] = self._start(index), now
        finally:
            self._stop([process for process in processes if process is not None])
        return status

    def _stop(self, processes: list[Any]) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.grace + STOP_MARGIN
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not stop within %g s; killing it", process.pid, self.grace + STOP_MARGIN)
                process.kill()
                process.join()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
