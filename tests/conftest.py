"""Shared fixtures: fake upstream servers on loopback and a real Crossroads server process in front of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest
import pytest_asyncio
import yaml

from tests import secret_watch
from tests.fakes import oidc_provider
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import FakeUpstream
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import FakeClock, GatewayServer, free_port
from tests.machine_share import pytest_runtest_protocol  # noqa: F401  (the `alone` marker's hook)

__all__ = ["FakeClock", "GatewayProcess", "GatewayServer", "free_port"]

MASTER_KEY = "sk-or-v1-" + "7" * 64
# What the suite's gateways are given and must never give back (tests/secret_watch.py); tests/team.py adds its password.
secret_watch.watch(MASTER_KEY, FakeOpenAI().api_key or "", FakeAnthropic().api_key or "", FakeGemini().api_key or "",
                   oidc_provider.CLIENT_SECRET)
# The recorded provider traffic beside the project (../shared/reference; CROSSROADS_REFERENCE names another place).
# Without it the replay tests skip on a developer's machine; under CI (where shared/ is laid beside the clone) its
# absence fails the run instead of quietly skipping them.
REFERENCE = Path(os.environ.get("CROSSROADS_REFERENCE") or Path(__file__).resolve().parents[2] / "shared" / "reference")
RECORDED = REFERENCE / "recorded"


def pytest_configure(config: pytest.Config) -> None:
    secret_watch.install()
    if os.environ.get("CI") and not RECORDED.is_dir():
        raise pytest.UsageError(f"the recorded provider traffic is missing ({RECORDED}): the replay tests would skip; "
                                "lay shared/ beside the project or set CROSSROADS_REFERENCE to its reference folder")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: its leaks go to the controller (below), which reports them
        workeroutput["secret_leaks"] = list(secret_watch.leaks)
    secret_watch.report(session)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist's controller: a worker is done; its leaks count for the whole run."""
    secret_watch.leaks.extend(getattr(node, "workeroutput", {}).get("secret_leaks", []))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """With --cov (scripts/coverage), one line: how much of src/crossroads the run covered (pytest-cov's own report
    is off: `--cov-report=`)."""
    controller = getattr(config.pluginmanager.getplugin("_cov"), "cov_controller", None)
    if controller is None or controller.cov is None or hasattr(config, "workerinput"):
        return
    import io

    from coverage.exceptions import CoverageException

    try:
        total = controller.cov.report(file=io.StringIO())
    except CoverageException as exc:  # e.g. no data: nothing of crossroads ran in this process
        terminalreporter.write_line(f"coverage: {exc}")
        return
    terminalreporter.write_line(f"coverage: {total:.1f}% of src/crossroads (lines run in the test process; gateway "
                                "processes are not measured)")


class GatewayProcess:
    """`crossroads serve` in a subprocess, with its output captured to a file for assertions: for what needs a process
    (signals, `--workers N`, a crash, the CLI's output and exit codes, several instances on one database). A test
    that needs a configured server only uses tests/harness.py's GatewayServer, the same interface in this process."""

    def __init__(self, config: dict, workdir: Path, *, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = config.get("server", {}).get("port") or free_port()
        config.setdefault("server", {})["port"] = self.port
        self.config_path = workdir / "crossroads.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "gateway.log"
        self.args = args or []
        self.env = env
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> GatewayProcess:
        env = {**os.environ, **(self.env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crossroads", "serve", "--config", str(self.config_path), *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> float:
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        secret_watch.check_log(self.log(), f"the gateway in {self.workdir}")
        return self.proc.returncode


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_local() -> Iterator[FakeOpenAI]:
    """An OpenAI-compatible server with no key and no catalog entries (a vLLM/Ollama stand-in)."""
    fake = FakeOpenAI(api_key=None, models=["llama-3.2-3b", "qwen2.5-7b"]).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini().start()
    yield fake
    fake.stop()


PRICING = {"prompt": 1.0, "completion": 2.0, "input_cache_read": 0.5, "input_cache_write": 1.25}
# provider type -> (model id, connection name, fake fixture) in the shared gateway's configuration
PROVIDERS = {
    "openai": ("openai/gpt-4o-mini", "oai", "fake_openai"),
    "anthropic": ("anthropic/claude-sonnet-4", "ant", "fake_anthropic"),
    "gemini": ("google/gemini-2.5-flash", "gem", "fake_gemini"),
}


def assert_ends_with_done(gateway: GatewayProcess, path: str, body: dict) -> None:
    """POST a streaming request raw: a 200 text/event-stream of data events and comments ending with [DONE]."""
    with httpx.stream("POST", gateway.url + path, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=20,
                      json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith(("data: ", ":")) for e in events)


def expected_cost(prompt: int, completion: int) -> float:
    return round(prompt * PRICING["prompt"] / 1e6 + completion * PRICING["completion"] / 1e6, 12)


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    """The official openai SDK pointed at the shared gateway."""
    return openai.OpenAI(base_url=gateway.url + "/api/v1", api_key=MASTER_KEY, max_retries=0, timeout=20)


@pytest.fixture(params=list(PROVIDERS))
def target(request: pytest.FixtureRequest, gateway: GatewayProcess) -> tuple[str, str, FakeUpstream]:
    """Each provider type in turn: (model id, connection name, its fake upstream, reset)."""
    model, connection, fake_name = PROVIDERS[request.param]
    fake = request.getfixturevalue(fake_name)
    fake.reset()
    return model, connection, fake


def gateway_config(fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, fake_gemini: FakeGemini,
                   fake_local: FakeOpenAI, data_dir: Path) -> dict:
    return {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(data_dir),
                   "keepalive_interval": 0.3, "max_body_bytes": 2 * 1024 * 1024,
                   "media": {"allow": ["127.0.0.0/8"]}},
        # The shared gateway checks how each failure reaches the client: no retries, and a breaker that never opens
        # (a test's injected failures must not eject a connection for the tests after it). tests/routing/test_routing.py
        # runs its own gateways with the defaults.
        "routing": {"retries": 0, "breaker": {"failure_threshold": 1000000}},
        "providers": [
            {"name": "oai", "type": "openai", "base_url": fake_openai.base_url + "/v1", "api_key": fake_openai.api_key,
             "timeout": 5,
             "models": [{"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini", "context_length": 128000,
                         "max_completion_tokens": 16384, "pricing": PRICING,
                         "input_modalities": ["text", "image", "file"]}]},
            {"name": "ant", "type": "anthropic", "base_url": fake_anthropic.base_url + "/v1",
             "api_key": fake_anthropic.api_key, "timeout": 5,
             "models": [{"id": "anthropic/claude-sonnet-4", "upstream": "claude-sonnet-4-20250514",
                         "pricing": PRICING}]},
            {"name": "gem", "type": "gemini", "base_url": fake_gemini.base_url + "/v1beta",
             "api_key": fake_gemini.api_key, "timeout": 5,
             "models": [{"id": "google/gemini-2.5-flash", "upstream": "gemini-2.5-flash", "pricing": PRICING}]},
            {"name": "local", "type": "openai", "base_url": fake_local.base_url + "/v1", "timeout": 5},
            {"name": "slow", "type": "openai", "base_url": fake_openai.base_url + "/v1", "api_key": fake_openai.api_key,
             "timeout": 1, "models": [{"id": "test/slow", "upstream": "gpt-4o-mini"}]},
        ],
    }


@pytest.fixture(scope="session")
def gateway(fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, fake_gemini: FakeGemini, fake_local: FakeOpenAI,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    workdir = tmp_path_factory.mktemp("gateway")
    proc = GatewayServer(gateway_config(fake_openai, fake_anthropic, fake_gemini, fake_local, workdir / "data"),
                          workdir).start()
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(request: pytest.FixtureRequest) -> None:
    # Every test starts with empty queues and recordings on whichever fakes it uses.
    for name in ("fake_openai", "fake_anthropic", "fake_gemini", "fake_local"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


def _redis_database_per_worker() -> None:
    """Under pytest-xdist (scripts/test runs `-n 2`) each worker gets a database of its own in the test Redis (1, 2,
    ...; the suite alone uses 0): tests flush theirs and count the keys in it. Set before any test module reads the
    variable."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    url = os.environ.get("CROSSROADS_TEST_REDIS_URL")
    if url and worker.startswith("gw") and worker[2:].isdigit():
        os.environ["CROSSROADS_TEST_REDIS_URL"] = urlunsplit(urlsplit(url)._replace(path=f"/{int(worker[2:]) + 1}"))


_redis_database_per_worker()
POSTGRES_URL = os.environ.get("CROSSROADS_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("CROSSROADS_TEST_REDIS_URL")


def redis_test_url() -> str:
    """The test Redis (CROSSROADS_TEST_REDIS_URL); the test skips without one, except under CI, where it fails."""
    if not REDIS_URL:
        if os.environ.get("CI"):
            pytest.fail("CROSSROADS_TEST_REDIS_URL is not set: CI must start Redis with scripts/ci-services.sh")
        pytest.skip('CROSSROADS_TEST_REDIS_URL not set (run: eval "$(scripts/ci-services.sh)")')
    return REDIS_URL


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh database in the test PostgreSQL server, dropped afterwards."""
    with new_postgres_database() as url:
        yield url


@contextlib.contextmanager
def new_postgres_database() -> Iterator[str]:
    """The `postgres_database` fixture's database, for fixtures of a wider scope."""
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("CROSSROADS_TEST_POSTGRES_URL is not set in CI")
        pytest.skip('CROSSROADS_TEST_POSTGRES_URL not set (run: eval "$(scripts/ci-services.sh)")')
    import asyncpg

    name = f"crossroads_outage_{uuid.uuid4().hex[:10]}"
    admin_url = POSTGRES_URL.rsplit("/", 1)[0] + "/postgres"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- credit ledgers (tests/gate/test_shared_credits.py, tests/gate/test_pg_credits.py) ----------------------------------------

def key_chain(row: Any) -> list[Any]:
    """The budget chain of a key row alone: its own limit."""
    from crossroads.gate.credits import Budget

    return [Budget("key", row.hash, row.limit, row.limit_reset)]


async def count_admitted(book: Any, row: Any, count: int, amount: float = 1.0) -> int:
    """How many of `count` concurrent reservations of `amount` the ledger `book` admits (the others get 402); `row` is
    a key row (its chain: its own limit) or a budget chain."""
    from crossroads.errors import GatewayError

    chain = row if isinstance(row, list | tuple) else key_chain(row)

    async def one() -> int:
        try:
            await book.reserve(chain, amount, prompt_cost=0, completion_price=0)
            return 1
        except GatewayError:
            return 0

    return sum(await asyncio.gather(*(one() for _ in range(count))))


async def results_of_processes(target: Callable[..., None], args: tuple, processes: int = 4) -> list[Any]:
    """Run `target(*args, queue)` in `processes` fresh interpreters at once and collect what each puts on the queue."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    workers = [spawn.Process(target=target, args=(*args, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    collected = [await asyncio.to_thread(results.get, timeout=60) for _ in workers]
    for worker in workers:
        worker.join(10)
    return collected


@pytest_asyncio.fixture(loop_scope="function")
async def store(url: str) -> AsyncIterator[Any]:
    """A Store on the test module's `url` fixture (a migrated database)."""
    from crossroads.store import Store

    opened = await Store.open(url)
    try:
        yield opened
    finally:
        await opened.close()
