"""In-process gateways: a real Crossroads server (crossroads.api.app.Gateway under uvicorn, set up as `crossroads
serve` sets it up) in a background thread of the test process, on its own event loop and a loopback port.

Tests reach it as they reach a `crossroads serve` process (tests/conftest.py's GatewayProcess): over real HTTP, with
httpx and the official SDKs, at `.url`; it has the same interface (`.url`, `.port`, `.config`, `.config_path`,
`.workdir`, `start()`, `wait_ready()`, `log()`, `stop()`), so a test that only needs a configured server swaps one
class for the other. What it saves is the process: an interpreter start and the imports (about a second each).

What `serve` does before serving, this does too: the configuration is written to `workdir/crossroads.yaml` and read
back by `load_config`; the store is migrated and the worker count recorded (cli.prepare_store without the instance
registration: see below); the socket is bound before anything starts; uvicorn gets the same options (cli.py
`uvicorn_options`: SlowClientProtocol with the head and body deadlines, uvloop, the graceful-shutdown bound, no server
or date header); lifespan start-up must complete before `start()` returns (the process is ready when /health answers,
which is after start-up too).

Process-wide state, and how each gateway keeps its own:
- Logging: a process configures the root logger (observability/logs.py `configure`); here one handler on the root
  logger hands each record to the gateway whose thread (or task, or `asyncio.to_thread` helper: they copy the
  context) emitted it, found by a context variable, formatted as `--log-format` says, into `workdir/gateway.log`;
  `log()` reads it, and `stop()` gives it to tests/secret_watch.py as GatewayProcess does. The `crossroads` logger is
  set to the lowest level a live gateway asks for. Access lines go through the `crossroads.access` logger (the
  batched writer of logs.ACCESS_LOG is pointed at a stream only by `configure`, which nothing here calls).
- Garbage collection: Gateway.startup freezes what is alive and raises the first-generation threshold, which in a
  process lasts as long as the gateway; here they are undone once it has started (the test process outlives it).
- Signals: uvicorn installs its handlers only on the main thread; these threads are not.
- The environment (`env=`): set while the gateway is built and started (what it reads then: the database URL, the
  Redis URL, the OTEL_* variables), under a lock, and restored afterwards. A gateway that reads a variable while
  serving needs a process (nothing here sets CROSSROADS_WORKERS nor CROSSROADS_INSTANCE_ID, which the instance
  registration uses: tests of several instances on one database, of `--workers N`, of signals, of the CLI's output and
  exit codes, and of a crash run real processes).
- Time (`clock=`): the gateway's breakers and retry waits read a `crossroads.routing.retry.Clock`; a `FakeClock`
  lets a test move time forward instead of sleeping through a cool-down or a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests import secret_watch

_GATEWAY: contextvars.ContextVar[GatewayServer | None] = contextvars.ContextVar("tests_gateway", default=None)
_START = threading.Lock()  # one gateway is set up at a time (the environment, the loggers' levels)
_LIVE: list[GatewayServer] = []
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def read_database_files(data_dir: Path) -> bytes:
    """The bytes of every SQLite file of a gateway's data directory (crossroads.db, -wal, -shm), read by another
    process. Opening and closing such a file here would drop every POSIX lock this process holds on it, those of an
    in-process gateway's connections included (SQLite guards only the descriptors it opened itself): the next
    process to close the database would then take itself for the last one, checkpoint and reset the WAL under the
    gateway, whose reads go stale and whose writes fail with "disk I/O error"."""
    files = sorted(str(path) for path in data_dir.glob("crossroads.db*"))
    assert files, f"no database in {data_dir}"
    return subprocess.run(["cat", *files], capture_output=True, check=True, timeout=30).stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _ToItsGateway(logging.Handler):
    """The root logger's handler for every in-process gateway: a record goes to the log of the gateway that emitted it
    (none: a record of the test itself, left to pytest's own capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        gateway = _GATEWAY.get()
        if gateway is not None and record.levelno >= gateway.level:
            gateway._write(record)


_HANDLER = _ToItsGateway()


def _set_levels() -> None:
    """The `crossroads` logger at the lowest level a live gateway logs at (INFO when none is live)."""
    level = min((gateway.level for gateway in _LIVE), default=logging.INFO)
    logging.getLogger("crossroads").setLevel(level)
    # As logs.configure does: uvicorn's lines reach the root logger, whatever configured uvicorn's loggers before.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level)


@contextlib.contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class FakeClock:
    """Time a test moves: `now()` is monotonic seconds that pass only by `advance` (or by a wait the gateway makes,
    which passes at once); give it as `clock=` to an in-process gateway. Thread-safe enough for one writer (the test)
    and readers on the gateway's loop: a float attribute."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.waits: list[float] = []  # every wait the gateway made through `sleep`, in seconds

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds

    async def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        self.time += delay
        await asyncio.sleep(0)

    def clock(self) -> Any:
        from crossroads.routing.retry import Clock

        return Clock(now=self.now, sleep=self.sleep)


class GatewayServer:
    """A Crossroads gateway served in this process (see the module docstring); GatewayProcess's interface."""

    def __init__(self, config: dict, workdir: Path, *, args: list[str] | None = None,
                 env: dict[str, str] | None = None, clock: FakeClock | None = None) -> None:
        from crossroads.cli import _parser

        options = _parser().parse_args(["serve", *(args or [])])
        if options.workers != 1:
            raise ValueError("--workers N needs a process (tests/conftest.py GatewayProcess)")
        server = config.setdefault("server", {})
        self.port = options.port or server.get("port") or free_port()
        server["port"] = self.port
        # A process resolves a relative data_dir in its working directory, the workdir.
        server["data_dir"] = str(workdir / server.get("data_dir", "data"))
        self.host = options.host or server.get("host") or "127.0.0.1"
        self.config = config
        self.workdir = workdir
        self.config_path = workdir / "crossroads.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "gateway.log"
        self.log_format = options.log_format or "json"  # a process's stderr is no terminal
        self.log_level = options.log_level
        self.level = _LEVELS[options.log_level]
        self.env = env
        self.fake_clock = clock
        self.gateway: Any = None
        self.server: Any = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_lock = threading.Lock()
        self._log: Any = None
        self._formatter: logging.Formatter | None = None
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- logging -------------------------------------------------------------------------------------------------
    def _write(self, record: logging.LogRecord) -> None:
        assert self._formatter is not None
        try:
            line = self._formatter.format(record)
        except Exception:  # noqa: BLE001 - as logging.Handler.handleError: a bad record never stops the gateway
            line = f"(unformattable record {record.msg!r})"
        with self._log_lock:
            if self._log is not None:
                self._log.write(line + "\n")

    def log(self) -> str:
        with self._log_lock:
            if self._log is not None:
                self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- life ----------------------------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> GatewayServer:
        """Build, migrate and serve; returns once lifespan start-up is complete (`wait` is GatewayProcess's: a
        gateway here is always waited for). Raises RuntimeError, with its log, when it cannot start."""
        from crossroads.observability.logs import JsonFormatter, TextFormatter

        self._formatter = JsonFormatter() if self.log_format == "json" else TextFormatter()
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        root = logging.getLogger()
        if _HANDLER not in root.handlers:
            root.addHandler(_HANDLER)
        thresholds = gc.get_threshold()
        with _START, _environment(self.env):
            _LIVE.append(self)
            _set_levels()
            ready = threading.Event()
            context = contextvars.copy_context()
            context.run(_GATEWAY.set, self)
            self._thread = threading.Thread(target=context.run, args=(self._serve, ready), daemon=True,
                                            name=f"gateway-{self.port}")
            self._thread.start()
            ready.wait()
            # What Gateway.startup did for a process's lifetime, undone for this one's.
            gc.unfreeze()
            gc.set_threshold(*thresholds)
        if self._failure is not None or self.server is None or not self.server.started:
            self._thread.join(15)
            self._finish()
            raise RuntimeError(f"gateway did not start: {self._failure!r}\n{self.log()}")
        return self

    def _serve(self, ready: threading.Event) -> None:
        """The gateway's thread: what `crossroads serve` does with one worker, on this thread's own event loop."""
        try:
            import uvicorn

            from crossroads.api.app import Gateway
            from crossroads.cli import _record_serving, uvicorn_options
            from crossroads.config import ensure_master_key, load_config
            from crossroads.store import database_url, migrate
            from crossroads.workers import bind_shared

            config = load_config(str(self.config_path))
            ensure_master_key(config)
            sock = bind_shared(self.host, self.port)
            # cli.prepare_store for one worker, less the instance registration (process-wide: see the docstring).
            migrate(database_url(config.server))
            _record_serving(config, 1)
            self.gateway = Gateway(config) if self.fake_clock is None else Gateway(config,
                                                                                  clock=self.fake_clock.clock())
            options = uvicorn_options(config, host=self.host, port=self.port, workers=1, log_level=self.log_level)
            self.server = uvicorn.Server(uvicorn.Config(self.gateway, **options))
            self.server.config.load()
            original_startup = self.server.startup

            async def startup(sockets: Any = None) -> None:
                self._loop = asyncio.get_running_loop()
                try:
                    await original_startup(sockets)
                finally:
                    ready.set()

            self.server.startup = startup
            try:
                self.server.run(sockets=[sock])
            finally:
                sock.close()
                with _START, _environment(self.env):  # what `serve` records as it stops, in the same environment
                    _record_serving(config, 0, only_if=1)
            self.returncode = 0 if self.server.started else 3
        except BaseException as exc:  # noqa: BLE001 - a start-up failure (uvicorn exits with SystemExit) is reported
            self._failure = exc
            self.returncode = 3 if isinstance(exc, SystemExit) else 1
        finally:
            ready.set()

    def wait_ready(self, timeout: float = 15.0) -> float:
        return 0.0  # `start` returns once the gateway serves

    def stop(self, timeout: float = 15.0) -> int | None:
        if self._thread is None:
            return None
        if self.server is not None:
            self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive() and self.server is not None:
            import traceback

            frame = sys._current_frames().get(self._thread.ident or 0)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
            try:
                for task in asyncio.all_tasks(self._loop) if self._loop is not None else ():
                    stack = task.get_stack()
                    where += f"\n{task!r}:\n" + ("".join(traceback.format_stack(stack[-1])) if stack else "")
            except RuntimeError:  # the set of tasks changed meanwhile
                pass
            print(f"harness: the gateway on port {self.port} did not stop within {timeout:g} s; forcing it; its "
                  f"thread is at:\n{where}", file=sys.stderr)
            self.server.force_exit = True
            self._thread.join(timeout)
        self._finish()
        secret_watch.check_log(self.log(), f"the gateway in {self.workdir}")
        return self.returncode

    def _finish(self) -> None:
        with _START:
            if self in _LIVE:
                _LIVE.remove(self)
            _set_levels()
        with self._log_lock:
            if self._log is not None:
                self._log.close()
                self._log = None


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns something true (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        time.sleep(interval)
