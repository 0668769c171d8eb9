"""The metrics directory of one `serve --workers N` instance (observability/multiproc.py): its own, locked while it
runs; what instances that ended left is removed, what a running one holds is not. (Two real instances on one data_dir:
tests/observability/test_metrics.py.)"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossroads.observability import multiproc


@pytest.fixture
def released() -> Iterator[None]:
    """Give back the locks this test's claims took (a real instance holds its lock until it ends)."""
    yield
    while multiproc._held:
        os.close(multiproc._held.pop())


def instance_dir(base: Path, name: str, *, owner: bool = True) -> Path:
    path = base / name
    path.mkdir(parents=True)
    (path / "counter_1.db").write_bytes(b"values")
    if owner:
        (path / multiproc.OWNER).write_bytes(b"")
    return path


def test_an_instance_gets_a_locked_directory_of_its_own_and_ended_ones_go(tmp_path: Path, released: None) -> None:
    base = tmp_path / multiproc.SUBDIRECTORY
    ended = instance_dir(base, "4000001")  # its lock is free: its instance has ended
    running = instance_dir(base, "4000002")  # locked below, as its instance would hold it
    foreign = instance_dir(base, "notes", owner=False)  # no lock file: not ours to remove
    starting = instance_dir(base, ".new-4000003-abcd")  # another instance's start under way
    abandoned = instance_dir(base, ".new-4000004-abcd")  # a start that never finished, long ago
    old = time.time() - multiproc.ABANDONED_AFTER - 60
    os.utime(abandoned, (old, old))
    (base / "counter_9.db").write_bytes(b"kept in the base directory by an earlier version")
    holder = os.open(running / multiproc.OWNER, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        path = Path(multiproc.claim_metrics_dir(str(tmp_path)))
        assert path == base / str(os.getpid())
        assert sorted(entry.name for entry in path.iterdir()) == [multiproc.OWNER]  # empty: counts start at zero
        assert not ended.exists() and not abandoned.exists() and not (base / "counter_9.db").exists()
        assert running.exists() and foreign.exists() and starting.exists()
        # Its own lock is held: a second claim (another instance) leaves the directory alone.
        (path / "counter_2.db").write_bytes(b"live values")
        probe = os.open(path / multiproc.OWNER, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(probe)
        multiproc._remove_ended(str(base))
        assert (path / "counter_2.db").exists() and running.exists()
    finally:
        os.close(holder)
    # Once its instance has ended (the lock given back), the next start removes it.
    multiproc._remove_ended(str(base))
    assert not running.exists() and path.exists()
