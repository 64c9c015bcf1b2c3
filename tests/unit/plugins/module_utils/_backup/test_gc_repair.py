# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""GC never deletes live data it cannot see; repair drops damaged entries and the next backup heals them."""

from __future__ import annotations

import os
import random
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import pack_object_name
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import make_image, make_repo
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup.test_integrity import (
    data_blob_of,
    first_stored_chunk,
    flip,
)


def backup_image(repo: Repository, vm: str, image: bytes) -> t.Any:
    return repo.backup(vm, [DiskSource("vda", len(image), [(0, len(image), image)])])


def restored(repo: Repository, backup_id: str, tmp_path: t.Any) -> bytes:
    out = tmp_path / f"{backup_id}.raw"
    repo.restore(backup_id, "vda", str(out))
    return out.read_bytes()


def test_flipped_trailer_then_rebuild_index_then_prune_keeps_live_data(tmp_path: t.Any) -> None:
    """Reproduced: a flipped byte in a pack trailer (blobs intact), rebuild_index (as the error message advised)
    and a routine prune deleted the pack; restore of a live backup then failed."""
    repo = make_repo(str(tmp_path / "repo"))
    image = make_image(random.Random(5), 200_000)
    keep = backup_image(repo, "vm", image)
    backup_image(repo, "old", os.urandom(50_000))
    index = repo.load_index()
    pack = next(iter(index.packs()))
    path = repo.backend.local_path(pack_object_name(pack))
    flip(path, os.path.getsize(path) - 3)  # inside the header's length trailer
    repo.rebuild_index()
    result = repo.prune(RetentionPolicy(keep_last=1), vm_name="old")
    assert result.pruned == [] and os.path.exists(path)
    repo.prune(RetentionPolicy(keep_last=1))
    assert os.path.exists(path), "a pack with a damaged header that holds live data must never be deleted"
    assert restored(repo, keep.id, tmp_path) == image


def test_lost_index_files_are_rebuilt_from_packs_by_gc_not_deleted(tmp_path: t.Any) -> None:
    """Packs that no index lists are read before GC deletes anything: the ones that hold live data stay."""
    repo = make_repo(str(tmp_path / "repo"))
    image = make_image(random.Random(6), 120_000)
    record = backup_image(repo, "vm", image)
    for name, _size in repo.backend.list("index"):
        repo.backend.delete(name)  # every index file lost
    result = repo.gc()
    assert result.packs_deleted == 0
    assert restored(repo, record.id, tmp_path) == image
    assert repo.verify(read_data=True).ok


def test_repair_then_next_backup_heals_a_flipped_bit(tmp_path: t.Any) -> None:
    """Reproduced: after one flipped bit a new full backup deduplicated against the damaged chunk (new_blobs 0)
    and could not be restored either."""
    repo = make_repo(str(tmp_path / "repo"))
    image = make_image(random.Random(7), 150_000)
    first = backup_image(repo, "vm", image)
    path, offset, cid = data_blob_of(repo, first, first_stored_chunk(first, repo))
    flip(path, offset)
    assert not repo.verify(read_data=True).ok
    repaired = repo.repair()
    assert repaired.entries_dropped == 1 and cid in {d.chunk_id for d in repaired.report.damaged}
    second = backup_image(repo, "vm", image)  # the source still has the good data
    assert second.stats["new_blobs"] >= 1, "the damaged chunk must be stored again, not deduplicated"
    assert restored(repo, second.id, tmp_path) == image
    assert restored(repo, first.id, tmp_path) == image, "the older backup is healed by the same id"
    assert repo.verify(read_data=True).ok
    # a second repair rebuilds the index from the packs, which hold the damaged copy *and* the good one: it must
    # keep the good one (found flaky through backup_verify: the rebuilt index sometimes chose the damaged copy)
    for _round in range(3):
        again = repo.repair()
        assert again.entries_dropped == 0 and again.report.ok, again
        assert restored(repo, first.id, tmp_path) == image
    repo.prune(RetentionPolicy(keep_last=1))  # GC after repair works and keeps the healed copy
    assert restored(repo, second.id, tmp_path) == image


def test_a_replayed_manifest_is_reported_and_removed_again_by_prune(tmp_path: t.Any) -> None:
    """Reproduced: an old manifest could be put back into snapshots/ undetected."""
    repo = make_repo(str(tmp_path / "repo"))
    old = backup_image(repo, "vm", os.urandom(30_000))
    saved = repo.backend.read(f"snapshots/{old.id}")
    new = backup_image(repo, "vm", os.urandom(30_000))
    repo.prune(RetentionPolicy(keep_last=1))
    assert [r.id for r in repo.list()] == [new.id]
    assert repo.verify().ok
    repo.backend.write_atomic(f"snapshots/{old.id}", saved)  # replayed from an old copy of the repository
    report = repo.verify()
    assert not report.ok and any(old.id in e and "replayed" in e for e in report.errors)
    assert [r.id for r in repo.list()] == [new.id]  # a pruned backup is not offered for restore
    assert [r.id for r in repo.list(include_pruned=True)] == [old.id, new.id]
    dry = repo.prune(RetentionPolicy(keep_last=1), dry_run=True)
    assert dry.replayed_removed == [old.id] and [k.record.id for k in dry.kept] == [new.id]
    repo.prune(RetentionPolicy(keep_last=1))
    assert [r.id for r in repo.list()] == [new.id] and repo.verify(read_data=True).ok


def test_a_manifest_removed_outside_prune_is_reported(tmp_path: t.Any) -> None:
    """Reproduced: a manifest could be hidden (deleted) undetected."""
    repo = make_repo(str(tmp_path / "repo"))
    first = backup_image(repo, "vm", os.urandom(30_000))
    backup_image(repo, "vm", os.urandom(30_000))
    repo.backend.delete(f"snapshots/{first.id}")
    report = repo.verify()
    assert not report.ok and any(first.id in e and "outside prune" in e for e in report.errors)


def test_a_prune_killed_between_tombstone_and_deletion_is_no_error_and_the_next_prune_finishes_it(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    old = backup_image(repo, "vm", os.urandom(30_000))
    new = backup_image(repo, "vm", os.urandom(30_000))
    # what a prune killed right after writing its tombstone leaves: tombstone, manifest and journal entry
    repo.backend.write_atomic(f"tombstones/{old.id}", repo._seal_entry("tombstones", old))  # pylint: disable=protected-access
    assert repo.verify(read_data=True).ok
    assert repo.prune(RetentionPolicy(keep_last=5)).replayed_removed == [old.id]  # the next prune finishes it
    assert [r.id for r in repo.list()] == [new.id]
    assert repo.verify(read_data=True).ok
