"""The directory where the workers of one `serve --workers N` keep their metric values (prometheus_client's
multiprocess mode), one per running instance.

All instances on one host may share `data_dir`. A single `data_dir/metrics-multiproc` would mix two instances'
counts in each other's /metrics, and the second one's start, which clears the directory so counts start at zero,
would wipe the first one's live values. So each instance gets `data_dir/metrics-multiproc/<pid>` (the pid of its
`serve` process) and holds an exclusive `flock` on the `.owner` file in it for as long as it runs. At start, every
instance directory whose lock can be taken belongs to an instance that has ended, and is removed.

A directory is made under a hidden name, locked, then renamed to its instance name, so another instance starting at
the same moment never finds it unlocked. Nothing here imports prometheus_client: it reads PROMETHEUS_MULTIPROC_DIR
when first imported, which the caller sets from this directory before any worker starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time

SUBDIRECTORY = "metrics-multiproc"
OWNER = ".owner"
ABANDONED_AFTER = 3600.0  # seconds after which a hidden directory of a start that never finished is removed

_held: list[int] = []  # the lock of this process's directory, held until the process ends


def claim_metrics_dir(data_dir: str) -> str:
    """This instance's empty metrics directory (absolute), locked for the life of this process; the directories of
    instances that have ended are removed first."""
    base = os.path.abspath(os.path.join(data_dir, SUBDIRECTORY))
    os.makedirs(base, exist_ok=True)
    _remove_ended(base)
    pending = os.path.join(base, f".new-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(pending)
    fd = os.open(os.path.join(pending, OWNER), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = os.path.join(base, str(os.getpid()))
    shutil.rmtree(path, ignore_errors=True)  # an ended instance's that had this pid (it was unlocked: see above)
    os.rename(pending, path)
    _held.append(fd)
    return path


def _remove_ended(base: str) -> None:
    for name in os.listdir(base):
        path = os.path.join(base, name)
        if name.endswith(".db"):  # values kept directly in the base directory (before instances had their own)
            with contextlib.suppress(OSError):
                os.remove(path)
            continue
        if not os.path.isdir(path):
            continue
        if name.startswith("."):  # being set up by an instance starting now, unless abandoned long ago
            with contextlib.suppress(OSError):
                if time.time() - os.stat(path).st_mtime > ABANDONED_AFTER:
                    shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            fd = os.open(os.path.join(path, OWNER), os.O_RDWR)
        except OSError:
            continue  # not an instance directory of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its instance is running
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
