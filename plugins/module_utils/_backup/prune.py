# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Prune and garbage collection: drop the backups a policy does not keep, then the data nothing uses.

PRIVATE to this collection; no compatibility guarantees.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import (
    Index,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import (
    BackupRecord,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    PackEntry,
    pack_object_name,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import (
    Kept,
    RetentionPolicy,
    select_prunable,
)

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.sink import PackSink
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import utcnow

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository


REPACK_THRESHOLD = 0.5


@dataclasses.dataclass
class PruneResult:
    """Result of Repository.prune()."""

    kept: list[Kept]
    pruned: list[BackupRecord]
    dry_run: bool
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0


# ------------------------------------------------------------------ prune and GC
def prune(repo: "Repository",
    policy: RetentionPolicy | t.Mapping[str, t.Any],
    dry_run: bool = False,
    now: datetime.datetime | None = None,
    vm_name: str | None = None,
) -> PruneResult:
    """Delete the backups the policy does not keep (per VM), then garbage-collect.

    Takes an exclusive lock: raises LockedError while a backup, restore or another
    prune runs. Raises InvalidArgumentError for a policy that keeps nothing.
    """
    if not isinstance(policy, RetentionPolicy):
        policy = RetentionPolicy.from_mapping(policy)
    when = now or utcnow()
    with repo.lock(True, "prune") as lock:
        records = repo.list(vm_name)
        by_vm: dict[str, list[BackupRecord]] = {}
        for record in records:
            by_vm.setdefault(record.vm_name, []).append(record)
        kept: list[Kept] = []
        pruned: list[BackupRecord] = []
        for vm in sorted(by_vm):
            keep, drop = select_prunable(by_vm[vm], policy, when)
            kept.extend(keep)
            pruned.extend(drop)
        result = PruneResult(kept=kept, pruned=pruned, dry_run=dry_run)
        if dry_run:
            return result
        for record in pruned:
            repo.backend.delete(repo.manifest_name(record.id))
        _gc(repo, result, lock)
        return result


def gc(repo: "Repository") -> PruneResult:
    """Remove data no backup uses and repack half-empty packs (exclusive lock)."""
    with repo.lock(True, "gc") as lock:
        result = PruneResult(kept=[], pruned=[], dry_run=False)
        _gc(repo, result, lock)
        return result


def _gc(repo: "Repository", result: PruneResult, lock: Lock) -> None:
    # A damaged index must stop GC: its packs would look unused and be deleted.
    index = repo.load_index()
    old_index_files = list(repo.index_files)
    used: set[bytes] = set()
    seen_maps: set[str] = set()
    for record in repo.list():
        for disk in record.disks:
            for seg_id in disk.segments:
                if seg_id is None or seg_id in seen_maps:
                    continue
                seen_maps.add(seg_id)
                used.add(bytes.fromhex(seg_id))
                seg_map = repo.read_map(seg_id, index, f"disk '{disk.name}' of backup {record.id}")
                for _chunk, cid, _sha, _length in seg_map.iter_stored():
                    used.add(cid)
    stored = {obj.rsplit("/", 1)[-1]: (obj, size) for obj, size in repo.backend.list("packs") if ".tmp-" not in obj}
    packs = index.packs()
    keep: dict[str, list[PackEntry]] = {}
    delete: list[str] = []
    repack: list[tuple[str, list[PackEntry]]] = []
    for pack, entries in packs.items():
        if pack not in stored:
            continue  # already gone; its entries are dropped from the new index
        live = [e for e in entries if e.blob_id in used]
        if not live:
            delete.append(pack)
        elif len(live) < len(entries) and sum(e.length for e in live) < REPACK_THRESHOLD * stored[pack][1]:
            # Only packs that hold garbage: a small pack's header would otherwise make it look half empty
            # forever, and every prune would rewrite it.
            repack.append((pack, live))
        else:
            keep[pack] = entries
    # packs on storage that no index lists: leftovers of crashed runs (we hold the exclusive lock)
    orphans = [obj for name, (obj, _s) in stored.items() if name not in packs]
    new_packs: dict[str, list[PackEntry]] = {}
    if repack:
        sink = PackSink(repo, Index())
        try:
            for pack, live in repack:
                obj = pack_object_name(pack)
                for entry in sorted(live, key=lambda e: e.offset):
                    raw = repo.backend.read_range(obj, entry.offset, entry.length)
                    sink.put(entry.blob_type, entry.blob_id, raw)
            sink.close()
        except BaseException:
            sink.abort()
            raise
        new_packs = dict(sink.finished)
        result.packs_written = len(new_packs)
    if delete or repack or orphans or len(old_index_files) > 1:
        combined = dict(keep)
        combined.update(new_packs)
        repo.write_index(combined)  # durable before anything is deleted
        for name in old_index_files:
            repo.backend.delete(name)
        for pack in delete + [p for p, _l in repack]:
            result.bytes_freed += stored[pack][1]
            repo.backend.delete(stored[pack][0])
        for obj in orphans:
            result.bytes_freed += stored[obj.rsplit("/", 1)[-1]][1]
            repo.backend.delete(obj)
        result.packs_deleted = len(delete) + len(orphans)
        result.packs_repacked = len(repack)
    for directory in ("packs", "index", "snapshots"):
        for name, _size in repo.backend.list(directory):
            if ".tmp-" in name:
                repo.backend.delete(name)
    repo._index = None
