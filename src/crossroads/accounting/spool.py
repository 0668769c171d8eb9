"""The local spool: generation records kept in files of `data_dir/spool/` while the database cannot take them.

The recorder writes records here when they could not be written by the end of the shutdown grace period, when its
bounded buffer is full during an outage (the oldest records go, so requests never wait for the database), and when
the database refuses a row for another reason than being unavailable. They are written to the database (replayed) at
the next start, and by a running process once its writes succeed again.

Files: ``generations-<pid>-<time_ns>-<random>.jsonl``, one JSON array per line (a record in column order, as
`store.rows.GenerationRecord`), appended and fsynced per write, so a crash in the middle of a write loses at most the
partial last line, which replay skips. Several processes may share `data_dir` (workers, a restart while the old
process still shuts down):

- a writer holds an exclusive `flock` on its file for as long as it has it open; the file is created under a hidden
  name, locked, and only then renamed into place, so no reader ever sees it unlocked before it is complete;
- a reader claims a file by taking the same lock without waiting (a file someone holds is skipped: its writer is
  alive, or another process is replaying it), checks that the name still leads to the file it locked (the previous
  holder removes a file before it unlocks it), and removes the file only once every record in it is committed. A
  process that dies releases its locks, so a file is never stranded.

Replay is idempotent (the store ignores ids it already has), so a file replayed twice (a crash after the commit and
before the removal) costs nothing but time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from crossroads.store.rows import GENERATION_COLUMNS, RECORD_COST, GenerationRecord
from crossroads.store.text import clean_record

log = logging.getLogger("crossroads.accounting")

PREFIX = "generations-"
SUFFIX = ".jsonl"
FILE_RECORDS = 50_000  # records per file: a replay removes its files one by one, so progress survives interruptions
_KEY_HASH = GENERATION_COLUMNS.index("key_hash")
_CREATED_AT = GENERATION_COLUMNS.index("created_at")
# Spool files outlive upgrades: a record written before the workspace columns (migration 0006) still reads.
_OLDEST_RECORD = GENERATION_COLUMNS.index("workspace_id")
_PLACE = slice(_OLDEST_RECORD, _OLDEST_RECORD + 3)  # workspace_id, environment_id, user_id


class Spool:
    """This process's spool writer, and the reader of every process's spool files. Not thread-safe: the recorder
    serialises its calls (and may run them in a worker thread)."""

    def __init__(self, directory: Path | str, *, file_records: int = FILE_RECORDS) -> None:
        self.directory = Path(directory)
        self.file_records = file_records
        self._fd: int | None = None
        self.path: Path | None = None  # the file this process writes to now (held locked)
        self._count = 0

    # -- writing ---------------------------------------------------------------------------------------------------
    def write(self, records: list[GenerationRecord]) -> Path:
        """Append `records` to this process's current file and fsync it; returns the file. Raises OSError."""
        if self._fd is None or self._count >= self.file_records:
            self._open()
        assert self._fd is not None and self.path is not None
        data = b"".join([_line(record) for record in records])
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self._count += len(records)
        return self.path

    def _open(self) -> None:
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        unique = f"{os.getpid()}-{time.time_ns()}-{secrets.token_hex(3)}"
        hidden = self.directory / f".new-{unique}"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # before the file has its real name: no reader can claim it from us
            path = self.directory / f"{PREFIX}{unique}{SUFFIX}"
            os.rename(hidden, path)
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        self._fd, self.path, self._count = fd, path, 0

    def close(self) -> None:
        """Close (and so unlock) the current file: from now on any process may replay it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self.path = None, None

    # -- reading ---------------------------------------------------------------------------------------------------
    def files(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        except OSError as exc:  # unreadable: nothing to replay from here, but serving must not stop over it
            log.error("cannot list the spool directory %s: %s", self.directory, exc)
            return []

    def claim(self) -> Iterator[SpoolFile]:
        """Each spool file nobody else holds, locked for the caller, who must `remove()` or `release()` it before
        asking for the next one."""
        for path in self.files():
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # replayed and removed by another process meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except (BlockingIOError, FileNotFoundError):
                same = False
            if not same:  # held by its writer or another reader, or already replayed and removed
                os.close(fd)
                continue
            yield SpoolFile(path, fd)

    def spend(self, starts: dict[str, datetime]) -> dict[tuple[Any, ...], dict[str, float]]:
        """Cost of every spooled record per place (key_hash, workspace_id, environment_id, user_id), in
        `Store.place_spend`'s shape ({"total": ..., name: cost since
        starts[name]}): spend the database does not know of yet, for the credit ledger at start-up. Files held by
        another process are counted too (a record counted twice only makes a limit stricter)."""
        since = {name: start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") for name, start in starts.items()}
        out: dict[tuple[Any, ...], dict[str, float]] = {}
        for path in self.files():
            try:
                with open(path, "rb") as file:
                    for line in file:
                        record = parse_line(line)
                        if record is None or not record[RECORD_COST] or not isinstance(record[_CREATED_AT], str):
                            continue
                        cost = float(record[RECORD_COST])
                        place = (record[_KEY_HASH], *record[_PLACE])
                        figures = out.setdefault(place, {"total": 0.0, **dict.fromkeys(since, 0.0)})
                        figures["total"] += cost
                        for name, start in since.items():
                            if record[_CREATED_AT] >= start:
                                figures[name] += cost
            except OSError as exc:
                log.warning("could not read spool file %s: %s", path, exc)
        return out


class SpoolFile:
    """A spool file claimed (locked) by this process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def batches(self, size: int) -> Iterator[list[GenerationRecord]]:
        """The file's records, `size` at a time; unreadable lines (a write a crash cut short) are skipped."""
        with os.fdopen(os.dup(self._fd), "rb") as file:  # a duplicate: closing it keeps our descriptor (and lock)
            file.seek(0)
            batch: list[GenerationRecord] = []
            for number, line in enumerate(file, 1):
                record = parse_line(line)
                if record is None:
                    log.warning("spool file %s: skipping unreadable line %d (a write cut short?)", self.path, number)
                    continue
                batch.append(record)
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def remove(self) -> None:
        """Delete the file (all its records are committed), then unlock it."""
        try:
            self.path.unlink(missing_ok=True)
            _fsync_directory(self.path.parent)
        finally:
            self.release()

    def release(self) -> None:
        """Unlock the file and leave it for a later replay."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _line(record: GenerationRecord) -> bytes:
    # Cleaned first: orjson refuses a lone surrogate, and the database would refuse a NUL at replay anyway. A value
    # orjson cannot write (a record the database refused may hold anything) is written as the stdlib can, or as text:
    # a spool write must not fail over one odd record.
    record = clean_record(record)
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return json.dumps(list(record), ensure_ascii=False, default=str).encode("utf-8", "replace") + b"\n"


def parse_line(line: bytes) -> GenerationRecord | None:
    try:
        values = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(values, list) or not _OLDEST_RECORD <= len(values) <= len(GENERATION_COLUMNS) \
            or not isinstance(values[0], str):
        return None
    if len(values) < len(GENERATION_COLUMNS):  # spooled by an older version: its missing columns are all nullable
        values += [None] * (len(GENERATION_COLUMNS) - len(values))
    return tuple(values)


def merge_spend(*sources: dict[Any, dict[str, float]]) -> dict[Any, dict[str, float]]:
    """Sum figures of the same shape (per key, per place)."""
    out: dict[Any, dict[str, float]] = {}
    for source in sources:
        for key_hash, figures in source.items():
            entry = out.setdefault(key_hash, {})
            for name, value in figures.items():
                entry[name] = entry.get(name, 0.0) + value
    return out


def _fsync_directory(directory: Path) -> None:
    """Make a file's creation, renaming or removal durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
