"""The `alone` marker under pytest-xdist: a test that measures time under load runs while no other test does.

Registered by tests/conftest.py (which imports its hook); a plugin module of its own so that
tests/test_harness.py can run it on a generated suite."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """With several pytest-xdist workers (scripts/test runs two), a test marked `alone` has the machine to itself:
    its timing bounds (kill -9 under load, 200 slowloris connections, start-up) measure the gateway, not the other
    worker's load. Each test, with its fixtures' set-up and tear-down, holds the run's lock shared; an `alone` test
    holds it exclusively, so it starts when the other workers' current tests end and their next ones wait for it.
    The turnstile taken first gives the exclusive holder its turn (flock alone would let a stream of shared holders
    starve it)."""
    if not hasattr(item.config, "workerinput"):
        yield
        return
    # The run's temporary folder, shared by its workers (each has its own popen-gwN below it); pytest removes it.
    run_dir = item.config._tmp_path_factory.getbasetemp().parent  # type: ignore[attr-defined]
    with open(run_dir / "turnstile.lock", "a") as turnstile, open(run_dir / "machine.lock", "a") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if item.get_closest_marker("alone") is not None:
            fcntl.flock(machine, fcntl.LOCK_EX)
        else:
            fcntl.flock(machine, fcntl.LOCK_SH)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield  # closing the files releases both
