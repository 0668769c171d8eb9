"""The repository's scripts as a user runs them: scripts/serve and scripts/crossroads (install only when
pyproject.toml changed; the README's commands work as written), scripts/test and scripts/ci-services.sh (the test
servers a run started are stopped when it ends; apt-get's output goes to a log file).

Each test runs the real scripts in a copy of the repository whose .venv holds stand-ins for pip, pytest, ruff and mypy that
record how they were called (a real install needs the network and minutes); the PostgreSQL and Redis servers are
real, in directories of their own."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_CROSSROADS = REPO / ".venv" / "bin" / "crossroads"

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for .venv/bin/python: records the call; `-m pip` succeeds, `-m pytest` reports the test servers it was
# given and exits with $FAKE_PYTEST_STATUS.
calls="$(dirname "$0")/../../calls.log"
echo "python $*" >> "$calls"
if [ "$1 $2" = "-m pytest" ]; then
  echo "pytest postgres=${CROSSROADS_TEST_POSTGRES_URL:-} redis=${CROSSROADS_TEST_REDIS_URL:-}" >> "$calls"
  exit "${FAKE_PYTEST_STATUS:-0}"
fi
"""


def make_checkout(tmp_path: Path, *, real_crossroads: bool = False) -> Path:
    """A copy of the repository's scripts and pyproject.toml with a complete-looking .venv of stand-ins."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", root / "scripts")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(REPO / "requirements.lock", root / "requirements.lock")
    bindir = root / ".venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python").write_text(FAKE_PYTHON)
    for checker in ("ruff", "mypy"):
        (bindir / checker).write_text(f'#!/usr/bin/env bash\necho "{checker} $*" >> "$(dirname "$0")/../../calls.log"\n')
    if real_crossroads:
        (bindir / "crossroads").symlink_to(REAL_CROSSROADS)
    else:
        (bindir / "crossroads").write_text(
            '#!/usr/bin/env bash\necho "crossroads $* (in $PWD)" >> "$(dirname "$0")/../../calls.log"\n')
    for tool in bindir.iterdir():
        tool.chmod(0o755)
    return root


def calls(root: Path) -> list[str]:
    path = root / "calls.log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CROSSROADS_")}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env={**environment, **(env or {})},
                          timeout=timeout)


def pip_installs(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("python -m pip install -e")]


# -- scripts/serve, scripts/crossroads -----------------------------------------------------------------------------------

def test_serve_installs_only_when_pyproject_changed(tmp_path: Path) -> None:
    root = make_checkout(tmp_path)
    first = run(["./scripts/serve", "--port", "9999"], cwd=root)
    assert first.returncode == 0, first.stderr
    lines = calls(root)
    assert pip_installs(lines) == ["python -m pip install -e ."]
    assert lines[-1] == f"crossroads serve --port 9999 (in {root})"
    # The first start says what it is doing (a long install is not silent) and keeps pip's output out of the way.
    assert "installing Crossroads into .venv" in first.stderr and "first install" in first.stderr
    assert len(first.stderr.strip().splitlines()) == 1, first.stderr
    # Later starts install nothing: no time, no network.
    for _ in range(2):
        again = run(["./scripts/serve"], cwd=root)
        assert again.returncode == 0 and again.stderr == "", again.stderr
        assert calls(root) == [f"crossroads serve (in {root})"]
    (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text() + "\n# changed\n")
    changed = run(["./scripts/serve"], cwd=root)
    assert "pyproject.toml or requirements.lock changed" in changed.stderr
    lines = calls(root)
    # The server's dependencies come from the lock, checked against its hashes, before the package itself.
    assert lines.index("python -m pip install --require-hashes -r requirements.lock") < \
        lines.index("python -m pip install -e .")
    (root / "requirements.lock").write_text((root / "requirements.lock").read_text() + "\n# changed\n")
    assert "requirements.lock changed" in run(["./scripts/serve"], cwd=root).stderr
    assert pip_installs(calls(root)) == ["python -m pip install -e ."]
    # scripts/test needs the test dependencies too: it installs them once, after which serve is content as well.
    tested = run(["./scripts/test"], cwd=root, env={"CROSSROADS_TEST_SERVICES": "0"})
    assert tested.returncode == 0, tested.stderr
    test_calls = calls(root)
    assert pip_installs(test_calls) == ['python -m pip install -e .[test]']
    # Style and types are checked before the tests run.
    checks = [line.split()[0] for line in test_calls if line.startswith(("ruff", "mypy", "pytest"))]
    assert checks == ["ruff", "mypy", "pytest"], test_calls
    assert run(["./scripts/test"], cwd=root, env={"CROSSROADS_TEST_SERVICES": "0"}).returncode == 0
    assert run(["./scripts/serve"], cwd=root).stderr == ""


def test_serve_resolves_a_relative_config_where_it_was_called(tmp_path: Path) -> None:
    root = make_checkout(tmp_path)
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    assert run([str(root / "scripts" / "serve"), "--config", "gw.yaml", "--port", "9"], cwd=elsewhere).returncode == 0
    assert calls(root)[-1] == f"crossroads serve --config {elsewhere / 'gw.yaml'} --port 9 (in {root})"
    assert run([str(root / "scripts" / "serve"), "--config=sub/gw.yaml"], cwd=elsewhere).returncode == 0
    assert calls(root)[-1] == f"crossroads serve --config={elsewhere / 'sub' / 'gw.yaml'} (in {root})"
    assert not pip_installs(calls(root))


def test_a_failed_install_is_reported_and_retried(tmp_path: Path) -> None:
    root = make_checkout(tmp_path)
    python = root / ".venv" / "bin" / "python"
    python.write_text(python.read_text().replace('if [ "$1 $2" = "-m pytest" ]',
                                                 'if [ "$3 $4" = "install -e" ]; then echo "pip: no network"; '
                                                 'exit 1; fi\nif [ "$1 $2" = "-m pytest" ]'))
    failed = run(["./scripts/serve"], cwd=root)
    assert failed.returncode == 1
    assert "the install failed" in failed.stderr and "pip: no network" in failed.stderr
    assert not [line for line in calls(root) if line.startswith("crossroads")]
    assert not (root / ".venv" / ".crossroads-installed").exists()  # the next start tries again


def test_scripts_crossroads_runs_the_venvs_command_where_it_is_called(tmp_path: Path) -> None:
    root = make_checkout(tmp_path, real_crossroads=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = run([str(root / "scripts" / "crossroads"), "--version"], cwd=elsewhere)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("crossroads ")
    # Run in the caller's directory: there is no store there, and it says so instead of making one.
    listed = run([str(root / "scripts" / "crossroads"), "keys", "list"], cwd=elsewhere)
    assert listed.returncode == 2
    assert f"store: sqlite:///{elsewhere}/data/crossroads.db" in listed.stderr and "no store" in listed.stderr
    assert not (elsewhere / "data").exists()


def test_the_readmes_crossroads_commands_work_as_written() -> None:
    readme = (REPO / "README.md").read_text()
    commands = [line.strip() for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
                for line in block.splitlines() if re.search(r"(^|\s|/)crossroads\s", line.strip().split("#")[0])]
    assert any("keys create" in c for c in commands) and any("keys update" in c for c in commands)
    for command in commands:
        # `crossroads` is not on PATH after ./scripts/serve: the README runs it through the wrapper.
        assert command.startswith("./scripts/crossroads "), command
    wrapper = REPO / "scripts" / "crossroads"
    assert wrapper.exists() and os.access(wrapper, os.X_OK)
    documented = set(re.findall(r"--[a-z][a-z-]*", readme))
    for flag in ("--json", "--limit", "--limit-reset", "--expires", "--models", "--rpm", "--tpm", "--priority",
                 "--disabled", "--enabled", "--port", "--config"):
        assert flag in documented, flag
    assert "prefix of at least 8" in readme and "${VAR:-}" in readme and "CROSSROADS_KEEP_SERVICES" in readme


# -- scripts/test, scripts/ci-services.sh ------------------------------------------------------------------------------

needs_servers = pytest.mark.skipif(
    not (shutil.which("redis-server") and (shutil.which("pg_config") or list(Path("/usr/lib/postgresql").glob("*/bin"))))
    and not os.environ.get("CI"), reason="PostgreSQL and Redis are not installed")


@pytest.fixture
def service_dirs() -> Iterator[dict[str, str]]:
    """Directories of this test's own servers (under /tmp, which the postgres user can reach); stopped afterwards.
    One such test at a time across pytest-xdist's workers (a lock file): each sets up a PostgreSQL cluster from
    nothing, the heaviest thing the suite does, and two at once on two cores have missed start-up deadlines."""
    with open("/tmp/crossroads-test-scripts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield from _service_dirs()


def _service_dirs() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    env = {"CROSSROADS_PG_DIR": f"/tmp/crossroads-t-{tag}-pg", "CROSSROADS_REDIS_DIR": f"/tmp/crossroads-t-{tag}-redis",
           "CROSSROADS_CI_INSTALL_LOG": f"/tmp/crossroads-t-{tag}-install.log"}
    yield env
    run([str(REPO / "scripts" / "ci-services.sh"), "stop"], cwd=REPO, env=env)
    Path(env["CROSSROADS_CI_INSTALL_LOG"]).unlink(missing_ok=True)


def servers_of(lines: list[str]) -> tuple[int, int]:
    [line] = [line for line in lines if line.startswith("pytest ")]
    found = re.fullmatch(r"pytest postgres=postgresql://postgres@127\.0\.0\.1:(\d+)/\w+ redis=redis://127\.0\.0\.1:(\d+)/0",
                         line)
    assert found, line
    return int(found.group(1)), int(found.group(2))


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@needs_servers
def test_scripts_test_stops_the_servers_it_started(tmp_path: Path, service_dirs: dict[str, str]) -> None:
    root = make_checkout(tmp_path)
    result = run(["./scripts/test", "-k", "something"], cwd=root, env={**service_dirs, "FAKE_PYTEST_STATUS": "3"})
    assert result.returncode == 3, result.stderr  # pytest's status is the script's
    lines = calls(root)
    assert "python -m pytest -q -n 2 --dist worksteal -k something" in lines
    pg_port, redis_port = servers_of(lines)
    assert not listening(pg_port) and not listening(redis_port)
    assert not Path(service_dirs["CROSSROADS_PG_DIR"]).exists()
    assert not Path(service_dirs["CROSSROADS_REDIS_DIR"]).exists()
    assert "stopped PostgreSQL" in result.stderr and "stopped Redis" in result.stderr


@needs_servers
def test_scripts_test_leaves_servers_it_did_not_start_or_was_told_to_keep(tmp_path: Path,
                                                                         service_dirs: dict[str, str]) -> None:
    root = make_checkout(tmp_path)
    kept = run(["./scripts/test"], cwd=root, env={**service_dirs, "CROSSROADS_KEEP_SERVICES": "1"})
    assert kept.returncode == 0, kept.stderr
    pg_port, redis_port = servers_of(calls(root))
    assert listening(pg_port) and listening(redis_port)
    # Running already (kept, or started by hand with eval "$(scripts/ci-services.sh)"): reused, and left running.
    reused = run(["./scripts/test"], cwd=root, env=service_dirs)
    assert reused.returncode == 0, reused.stderr
    assert servers_of(calls(root)) == (pg_port, redis_port)
    assert listening(pg_port) and listening(redis_port)
    assert "stopped" not in reused.stderr
    # By hand: the exports still come out for eval (the third line only says what this run started).
    by_hand = run(["bash", "-c", f'eval "$({REPO}/scripts/ci-services.sh)"; echo "$CROSSROADS_TEST_REDIS_URL"'],
                  cwd=tmp_path, env=service_dirs)
    assert by_hand.stdout.strip() == f"redis://127.0.0.1:{redis_port}/0"


@needs_servers
@pytest.mark.skipif(os.geteuid() != 0, reason="ci-services.sh installs packages only as root")
def test_install_output_goes_to_a_log_file(tmp_path: Path, service_dirs: dict[str, str]) -> None:
    # A PATH on which redis-server is missing, and an apt-get that talks a lot and then provides it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            if entry.name.startswith("redis") or entry.name == "apt-get" or (bindir / entry.name).exists():
                continue
            (bindir / entry.name).symlink_to(entry.path)
    (bindir / "apt-get").write_text(f"""#!/bin/sh
for i in 1 2 3; do echo "APT NOISE $i: Reading package lists..."; echo "APT NOISE $i on stderr" >&2; done
case " $* " in *" install "*) ln -sf {shutil.which("redis-server")} {bindir}/redis-server ;; esac
""")
    (bindir / "apt-get").chmod(0o755)
    result = run([str(REPO / "scripts" / "ci-services.sh")], cwd=tmp_path, env={**service_dirs, "PATH": str(bindir)})
    assert result.returncode == 0, result.stderr
    assert "APT NOISE" not in result.stderr + result.stdout
    log = service_dirs["CROSSROADS_CI_INSTALL_LOG"]
    [line] = [line for line in result.stderr.splitlines() if "apt-get" in line]
    assert line == f"ci-services: installing redis-server with apt-get (output in {log})"
    assert "APT NOISE 3: Reading package lists" in Path(log).read_text()
    assert "APT NOISE 3 on stderr" in Path(log).read_text()
    assert "CROSSROADS_SERVICES_STARTED=\"postgres redis\"" in result.stdout.splitlines()
