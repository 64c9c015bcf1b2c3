# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Restore-test records: authenticated, create-only, bound to their backup; prune, GC and verify live with them."""

from __future__ import annotations

import datetime
import os
import random
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import attest
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackupNotFoundError,
    InvalidArgumentError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy

UTC = datetime.timezone.utc


def backup(repo: Repository, vm: str, day: int, data: bytes) -> t.Any:
    return repo.backup(vm, [DiskSource("vda", len(data), [(0, len(data), data)])],
                       time=datetime.datetime(2026, 11, day, 2, 0, tzinfo=UTC))


@pytest.fixture
def two(repo: Repository) -> tuple[Repository, t.Any, t.Any]:
    rng = random.Random(7)
    return repo, backup(repo, "web01", 1, rng.randbytes(40 * 4096)), backup(repo, "web01", 2, rng.randbytes(40 * 4096))


def test_record_reads_back_with_its_probes_and_is_listed_per_vm(two: t.Any) -> None:
    repo, first, second = two
    probes = [{"type": "ssh", "ok": True, "seconds": 1.5}, {"type": "command", "ok": False, "output": ["a", "b"]}]
    rec = attest.record_test(repo, first.id, "failed", probes, duration=31.2, message="no answer", restored_as="x")
    other = attest.record_test(repo, second.id, "passed", [{"type": "tcp", "ok": True}], duration=12)
    records, problems = attest.list_tests(repo)
    assert problems == []
    expected = [(rec.id, first.id, "failed"), (other.id, second.id, "passed")]
    assert [(r.id, r.backup_id, r.result) for r in records] == expected
    assert records[0].probes[1]["output"] == "['a', 'b']" and records[0].duration == 31.2
    assert records[0].message == "no answer" and records[0].restored_as == "x" and records[0].vm_name == "web01"
    assert attest.list_tests(repo, "db01") == ([], [])
    # stored sealed: the plaintext is nowhere in the object
    raw = repo.backend.read(rec.object_name)
    assert b"no answer" not in raw and b"web01" not in raw


def test_record_of_a_missing_or_pruned_backup_is_refused(two: t.Any) -> None:
    repo, first, second = two
    with pytest.raises(BackupNotFoundError):
        attest.record_test(repo, "20261101T000000Z-00000000", "passed")
    repo.prune(RetentionPolicy(keep_last=1))
    with pytest.raises(BackupNotFoundError, match="no backup|pruned"):
        attest.record_test(repo, first.id, "passed")
    with pytest.raises(InvalidArgumentError, match="passed, failed"):
        attest.record_test(repo, second.id, "ok")
    assert attest.list_tests(repo) == ([], [])


def test_records_are_create_only_and_tampering_is_named_not_trusted(two: t.Any) -> None:
    repo, first, second = two
    rec = attest.record_test(repo, first.id, "failed")
    with pytest.raises(FileExistsError):  # the backend never replaces a record
        repo.backend.create_exclusive(rec.object_name, b"forged")
    # a passing record of the second backup copied over as if it were a record of the first
    good = attest.record_test(repo, second.id, "passed")
    moved = f"tests/{first.id}/{good.id}"
    repo.backend.create_exclusive(moved, repo.backend.read(good.object_name))
    # a flipped byte in the failed record
    blob = bytearray(repo.backend.read(rec.object_name))
    blob[-3] ^= 1
    path = repo.backend.local_path(rec.object_name)
    assert path is not None
    with open(path, "wb") as handle:
        handle.write(blob)
    records, problems = attest.list_tests(repo)
    assert [r.id for r in records] == [good.id] and records[0].backup_id == second.id
    assert len(problems) == 2 and all("restore-test record" in p for p in problems), problems


def test_prune_gc_and_verify_ignore_records_and_records_outlive_their_backup(two: t.Any, tmp_path: t.Any) -> None:
    repo, first, second = two
    rec = attest.record_test(repo, first.id, "passed")
    later = attest.record_test(repo, second.id, "failed")
    result = repo.prune(RetentionPolicy(keep_last=1))
    assert [r.id for r in result.pruned] == [first.id]
    assert repo.gc().packs_deleted == 0
    report = repo.verify(read_data=True)
    assert report.ok, report.errors
    records, _problems = attest.list_tests(repo)
    assert [r.id for r in records] == [rec.id, later.id]  # history stays
    target = str(tmp_path / "r.raw")
    repo.restore(second.id, "vda", target)
    assert os.path.getsize(target) == 40 * 4096
    # the pruned backup still shows in the history, from its tombstone
    assert [(b, vm) for b, vm, _w in attest.past_backups(repo)] == [(first.id, "web01")]


def test_expire_keeps_present_backups_and_the_newest_pass(repo: Repository) -> None:
    rng = random.Random(3)
    ids = [backup(repo, "web01", day, rng.randbytes(8 * 4096)).id for day in (1, 2, 3)]
    old = datetime.datetime(2026, 11, 4, tzinfo=UTC)
    passes = [attest.record_test(repo, i, "passed", time=old + datetime.timedelta(hours=n))
              for n, i in enumerate(ids[:2])]
    failed = attest.record_test(repo, ids[0], "failed", time=old)
    kept_backup = attest.record_test(repo, ids[2], "failed", time=old)
    repo.prune(RetentionPolicy(keep_last=1))
    now = old + datetime.timedelta(days=500)
    with repo.lock(True, "prune") as lock:
        assert attest.expire_tests(repo, lock, older_than_days=600, now=now) == []
        removed = attest.expire_tests(repo, lock, older_than_days=400, now=now)
    assert sorted(removed) == sorted([passes[0].object_name, failed.object_name])
    left = {r.id for r in attest.list_tests(repo)[0]}
    assert left == {passes[1].id, kept_backup.id}  # newest pass of web01, and the record of the kept backup


def test_prune_expires_old_test_records_of_pruned_backups(repo: Repository) -> None:
    rng = random.Random(4)
    ids = [backup(repo, "web01", day, rng.randbytes(8 * 4096)).id for day in (1, 2, 3)]
    old = datetime.datetime(2026, 11, 4, tzinfo=UTC)
    first = attest.record_test(repo, ids[0], "passed", time=old)
    second = attest.record_test(repo, ids[1], "passed", time=old + datetime.timedelta(hours=1))
    later = old + datetime.timedelta(days=500)
    kept = repo.prune(RetentionPolicy(keep_last=1), now=later, test_records_days=0)  # 0: records stay
    assert kept.test_records_removed == 0 and len(attest.list_tests(repo)[0]) == 2
    backup(repo, "web01", 4, rng.randbytes(8 * 4096))
    result = repo.prune(RetentionPolicy(keep_last=1), now=later)
    assert result.test_records_removed == 1  # the older pass; the newest pass of web01 stays
    assert {r.id for r in attest.list_tests(repo)[0]} == {second.id} and first.id != second.id
    assert repo.verify(read_data=True).ok


def test_record_size_is_bounded(two: t.Any) -> None:
    repo, first, _second = two
    with pytest.raises(InvalidArgumentError, match="KiB"):
        attest.record_test(repo, first.id, "failed", message="x" * (70 * 1024))


def _rec(backup_id: str, vm: str, result: str) -> attest.TestRecord:
    return attest.TestRecord(id="20261130T000000Z-" + "0" * 16, backup_id=backup_id, vm_name=vm,
                             time=datetime.datetime(2026, 11, 30, tzinfo=UTC), result=result, duration=1.0)


def test_night_strip_states() -> None:
    def at(day: int, hour: int = 2) -> datetime.datetime:
        return datetime.datetime(2026, 11, day, hour, tzinfo=UTC)

    backups = [("b1", "web", at(26)), ("b2", "web", at(27)), ("b3", "web", at(28)), ("b3x", "web", at(28, 5)),
               ("b4", "web", at(29)), ("d1", "db", at(30)), ("old", "web", at(1))]
    tests = [_rec("b2", "web", "passed"), _rec("b3", "web", "failed"), _rec("b3x", "web", "passed"),
             _rec("b4", "web", "failed"), _rec("gone", "web", "passed")]
    strip = attest.night_strip(backups, tests, nights=5, today=datetime.date(2026, 11, 30),
                               kept={"b2", "b3", "b3x", "b4", "d1"})
    assert sorted(strip) == ["db", "web"]
    assert [d["date"][-2:] for d in strip["web"]] == ["26", "27", "28", "29", "30"]
    assert [d["state"] for d in strip["web"]] == ["backed_up", "proven", "proven", "failed", "missing"]
    assert strip["web"][2]["backups"] == 2 and strip["web"][2]["tests_failed"] == 1
    assert [d["state"] for d in strip["db"]] == ["missing"] * 4 + ["backed_up"]
    assert strip["web"][0]["details"] == ["backup b1: not tested (pruned since)"]
    assert strip["web"][2]["details"] == ["backup b3: restore test failed", "backup b3x: restore test passed"]


def test_storage_series_accumulates_stored_bytes_and_dedup(repo: Repository) -> None:
    rng = random.Random(5)
    data = rng.randbytes(16 * 4096)
    first = backup(repo, "a", 1, data)
    second = backup(repo, "b", 3, data)  # same data: stores (almost) nothing new
    series = attest.storage_series(repo.list(), nights=4, today=datetime.date(2026, 11, 4))
    assert [s["date"][-2:] for s in series] == ["01", "02", "03", "04"]
    assert series[0]["stored_bytes"] == first.stats["new_bytes"] > 16 * 4096
    assert series[1] == dict(series[0], date="2026-11-02")
    assert series[2]["data_bytes"] == 2 * 16 * 4096
    assert series[2]["stored_bytes"] == first.stats["new_bytes"] + second.stats["new_bytes"]
    assert series[2]["dedup_ratio"] > 1.9 * series[0]["dedup_ratio"]
    assert attest.storage_series([], nights=2, today=datetime.date(2026, 11, 4))[0]["dedup_ratio"] is None
    assert attest.packs_bytes(repo) >= series[-1]["stored_bytes"]
