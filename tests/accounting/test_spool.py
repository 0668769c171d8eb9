"""The local spool of generation records (accounting/spool.py): files held by their writer, claimed by one reader at a
time (also across processes), a write cut short, spend for the credit ledger."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import orjson

from crossroads.accounting.spool import Spool, merge_spend
from crossroads.store.rows import GENERATION_COLUMNS, GenerationRow, to_record


def record(n: int, *, key_hash: str | None = None, cost: float = 0.0, created: datetime | None = None,
           user: str | None = None) -> tuple:
    return to_record(GenerationRow(id=f"gen-{n}", created_at=created or datetime.now(UTC), key_hash=key_hash,
                                   model="m", provider_name="p", provider_type="openai", upstream_model="u",
                                   upstream_id=None, cost=cost, user=user))


def claimed_ids(spool: Spool) -> list[list[str]]:
    """Claim every file there is and release it again: the ids in each."""
    out = []
    for file in spool.claim():
        out.append([r[0] for batch in file.batches(1000) for r in batch])
        file.release()
    return out


def test_a_file_is_held_by_its_writer_then_claimed_by_one_reader(tmp_path: Path) -> None:
    writer, reader, other = Spool(tmp_path), Spool(tmp_path), Spool(tmp_path)
    path = writer.write([record(1), record(2)])
    writer.write([record(3)])
    assert path.name.startswith(f"generations-{__import__('os').getpid()}-") and path.suffix == ".jsonl"
    assert claimed_ids(reader) == []  # its writer still has it open
    writer.close()
    claim = next(reader.claim())
    assert [r[0] for batch in claim.batches(2) for r in batch] == ["gen-1", "gen-2", "gen-3"]
    assert [len(batch) for batch in claim.batches(2)] == [2, 1]
    assert claimed_ids(other) == []  # held by the reader replaying it
    claim.remove()
    assert claimed_ids(other) == [] and reader.files() == []
    assert not list(tmp_path.iterdir())  # no hidden leftovers either


def test_a_write_cut_short_loses_only_its_partial_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.write([record(1, key_hash="k", cost=1.5), record(2, key_hash="k", cost=2.0)])
    spool.close()
    with open(path, "ab") as file:  # a crash in the middle of the next write
        file.write(b'["gen-3","2025-01-01 00:00')
    assert claimed_ids(spool) == [["gen-1", "gen-2"]]
    assert spool.spend({})[("k", None, None, None)]["total"] == 3.5


def test_records_are_cleaned_and_files_rotate(tmp_path: Path) -> None:
    spool = Spool(tmp_path, file_records=2)
    spool.write([record(1, user="a\x00b"), record(2, user="c\ud800d")])  # orjson alone would refuse the surrogate
    spool.write([record(3)])
    spool.close()
    assert len(spool.files()) == 2
    users = []
    for file in spool.claim():
        users += [r[GENERATION_COLUMNS.index("user")] for batch in file.batches(10) for r in batch]
        file.release()
    assert users == ["a\ufffdb", "c\ufffdd", None]


def test_spend_per_key_and_period(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    day = datetime(2025, 3, 12, tzinfo=UTC)
    month = datetime(2025, 3, 1, tzinfo=UTC)
    spool.write([record(1, key_hash="a", cost=1.0, created=day),
                 record(2, key_hash="a", cost=2.0, created=datetime(2025, 3, 11, 23, 59, tzinfo=UTC)),
                 record(3, key_hash="a", cost=4.0, created=datetime(2025, 2, 28, tzinfo=UTC)),
                 record(4, key_hash=None, cost=8.0, created=day),
                 record(5, key_hash="b", cost=0.0, created=day)])
    spend = spool.spend({"daily": day, "monthly": month})
    a, master = ("a", None, None, None), (None, None, None, None)
    assert spend == {a: {"total": 7.0, "daily": 1.0, "monthly": 3.0}, master: {"total": 8.0, "daily": 8.0,
                                                                               "monthly": 8.0}}
    assert merge_spend({a: {"total": 1.0, "daily": 0.5}}, spend)[a] == {"total": 8.0, "daily": 1.5,
                                                                        "monthly": 3.0}


def test_spend_per_place_and_lines_spooled_before_workspaces(tmp_path: Path) -> None:
    """Spend is per (key, workspace, environment, member); a line written by a version without the workspace columns
    (migration 0006) still reads, its place unknown."""
    spool = Spool(tmp_path)
    placed = list(record(1, key_hash="a", cost=1.0))
    placed[GENERATION_COLUMNS.index("workspace_id"):] = ["ws1", "env1", "u1"]
    path = spool.write([tuple(placed)])
    spool.close()
    old = orjson.dumps(list(record(2, key_hash="a", cost=2.0))[:GENERATION_COLUMNS.index("workspace_id")])
    with open(path, "ab") as file:
        file.write(old + b"\n")
    assert spool.spend({}) == {("a", "ws1", "env1", "u1"): {"total": 1.0}, ("a", None, None, None): {"total": 2.0}}
    records = [r for file in spool.claim() for batch in file.batches(10) for r in batch]
    assert [r[0] for r in records] == ["gen-1", "gen-2"] and len(records[1]) == len(GENERATION_COLUMNS)


def _replayer(directory: str, out: str, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    claimed = []
    for file in Spool(directory).claim():
        claimed.append(file.path.name)
        list(file.batches(100))
        file.remove()
    Path(out).write_text("\n".join(claimed))


def test_two_processes_replaying_at_once_take_each_file_once(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    names = set()
    for n in range(40):
        spool = Spool(spool_dir)
        names.add(spool.write([record(n)]).name)
        spool.close()
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    procs = [context.Process(target=_replayer, args=(str(spool_dir), str(tmp_path / f"out{i}"), start))
             for i in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    taken = [set(filter(None, (tmp_path / f"out{i}").read_text().split("\n"))) for i in range(2)]
    assert not taken[0] & taken[1]  # never both
    assert taken[0] | taken[1] == names  # and none left behind
    assert Spool(spool_dir).files() == []
