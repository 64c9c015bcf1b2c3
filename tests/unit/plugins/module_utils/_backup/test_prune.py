# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Prune and garbage collection: deletion, repacking of half-empty packs, leftovers of crashed runs."""

from __future__ import annotations

import datetime
import os
import random
import shutil
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import pack_object_name
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import make_repo

UTC = datetime.timezone.utc


def repo_bytes(repo: Repository) -> int:
    return sum(size for _n, size in repo.backend.list("packs"))


def check_restores(repo: Repository, expected: dict[str, bytes], tmp: str) -> None:
    for backup_id, image in expected.items():
        target = os.path.join(tmp, "r.raw")
        repo.restore(backup_id, "vda", target)
        with open(target, "rb") as handle:
            assert handle.read() == image


def test_prune_repacks_half_empty_pack(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    rng = random.Random(1)
    old = rng.randbytes(100 * 4096)
    first = repo.backup(
        "vm", [DiskSource("vda", len(old), [(0, len(old), old)])], time=datetime.datetime(2026, 1, 1, tzinfo=UTC)
    )
    new = bytearray(old)
    new[: 70 * 4096] = rng.randbytes(70 * 4096)  # 70 % of the first pack becomes garbage after the prune
    second = repo.backup(
        "vm",
        [DiskSource("vda", len(new), [(0, 70 * 4096, bytes(new[: 70 * 4096]))])],
        parent=first.id,
        time=datetime.datetime(2026, 1, 2, tzinfo=UTC),
    )
    before = repo_bytes(repo)
    dry = repo.prune(RetentionPolicy(keep_last=1), dry_run=True)
    assert [r.id for r in dry.pruned] == [first.id] and len(repo.list()) == 2 and repo_bytes(repo) == before
    result = repo.prune(RetentionPolicy(keep_last=1))
    assert [r.id for r in result.pruned] == [first.id]
    assert [(k.record.id, k.reason) for k in result.kept] == [(second.id, "last #1")]
    assert result.packs_repacked == 1 and result.packs_written == 1
    assert repo_bytes(repo) < before - 60 * 4096
    assert len(repo.backend.list("index")) == 1
    check_restores(repo, {second.id: bytes(new)}, str(tmp_path))
    assert repo.verify(read_data=True).ok


def test_gc_removes_leftovers_of_crashed_runs(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    data = os.urandom(30 * 4096)
    record = repo.backup("vm", [DiskSource("vda", len(data), [(0, len(data), data)])])
    obj, _size = repo.backend.list("packs")[0]

    def crash() -> dict[str, str]:
        raise RuntimeError("the process died before its commit")

    with pytest.raises(RuntimeError):  # its packs are durable, but no index or manifest names them
        repo.backup("vm", [DiskSource("vda", 40 * 4096, [(0, 40 * 4096, os.urandom(40 * 4096))])], finalize=crash)
    leftovers = [n for n, _s in repo.backend.list("packs") if n != obj]
    assert leftovers
    stray = pack_object_name("ab" * 32)
    os.makedirs(os.path.dirname(repo.backend.local_path(stray)), exist_ok=True)
    shutil.copy(repo.backend.local_path(obj), repo.backend.local_path(stray))  # its header names another pack
    with open(repo.backend.local_path(obj) + ".tmp-123456", "wb") as handle:  # an interrupted write
        handle.write(b"partial")
    result = repo.gc()
    assert result.packs_deleted == len(leftovers)
    # a pack whose header does not open is never deleted by GC (it could hold the only copy of live data)
    assert result.unreadable_packs == ["ab" * 32]
    names = [n for n, _s in repo.backend.list("packs")]
    assert sorted(names) == sorted([obj, stray])
    check_restores(repo, {record.id: data}, str(tmp_path))
    assert repo.verify(read_data=True).ok


def test_prune_is_per_vm_and_keeps_shared_chunks(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    shared = os.urandom(20 * 4096)
    expected = {}
    for day in range(1, 4):
        for vm in ("a", "b"):
            image = shared + bytes([day]) * 4096
            rec = repo.backup(
                vm,
                [DiskSource("vda", len(image), [(0, len(image), image)])],
                time=datetime.datetime(2026, 1, day, tzinfo=UTC),
            )
            expected[rec.id] = (vm, day, image)
    result = repo.prune({"keep_daily": 2})
    assert sorted((expected[r.id][0], expected[r.id][1]) for r in result.pruned) == [("a", 1), ("b", 1)]
    left = {r.id: expected[r.id][2] for r in repo.list()}
    assert len(left) == 4
    check_restores(repo, left, str(tmp_path))
    assert repo.verify(read_data=True).ok
