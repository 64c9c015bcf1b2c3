# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Prune and garbage collection: drop the backups a policy does not keep, then the data nothing uses.

PRIVATE to this collection; no compatibility guarantees.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import BackupError, CorruptMetadataError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import (
    Index,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import locks as locks_unit
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import (
    BackupRecord,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    PackEntry,
    member_slot,
    pack_object_name,
    read_pack_header,
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
    #: packs whose header could not be read and that no index lists: kept, named by verify
    unreadable_packs: list[str] = dataclasses.field(default_factory=list)
    #: blobs backups use that no readable pack holds (damaged data dropped by repair, or lost packs)
    missing_blobs: int = 0
    #: manifests removed again because a tombstone says they were pruned before
    replayed_removed: list[str] = dataclasses.field(default_factory=list)
    #: incomplete writes of dead writers removed (S3 multipart uploads)
    uploads_aborted: int = 0
    #: restore-test records of pruned backups removed for their age
    test_records_removed: int = 0


# ------------------------------------------------------------------ prune and GC
def prune(
    repo: "Repository",
    policy: RetentionPolicy | t.Mapping[str, t.Any],
    dry_run: bool = False,
    now: datetime.datetime | None = None,
    vm_name: str | None = None,
    test_records_days: float = 400.0,
) -> PruneResult:
    """Delete the backups the policy does not keep (per VM), then garbage-collect.

    Restore-test records (attest.py) of pruned backups older than ``test_records_days`` go too (0: never), except
    each VM's newest passing one.

    Takes an exclusive lock: raises LockedError while a backup, restore or another
    prune runs. Raises InvalidArgumentError for a policy that keeps nothing.
    """
    if not isinstance(policy, RetentionPolicy):
        policy = RetentionPolicy.from_mapping(policy)
    when = now or utcnow()
    # a dry run deletes nothing: a shared lock lets it run beside backups
    with repo.lock(not dry_run, "prune") as lock:
        # manifests that came back after their prune (replayed, or a prune that was interrupted) never count
        # towards the policy; a real prune removes them again
        _errors, replayed = repo.history_problems()
        records = [r for r in repo.list(vm_name) if r.id not in replayed]
        by_vm: dict[str, list[BackupRecord]] = {}
        for record in records:
            by_vm.setdefault(record.vm_name, []).append(record)
        kept: list[Kept] = []
        pruned: list[BackupRecord] = []
        for vm in sorted(by_vm):
            keep, drop = select_prunable(by_vm[vm], policy, when)
            kept.extend(keep)
            pruned.extend(drop)
        result = PruneResult(kept=kept, pruned=pruned, dry_run=dry_run, replayed_removed=list(replayed))
        if dry_run:
            return result
        for backup_id in replayed:
            repo.forget(lock, repo.get(backup_id))
        for record in pruned:
            repo.forget(lock, record)
        if test_records_days > 0:
            from ansible_collections.vmsafe.protect.plugins.module_utils._backup import attest

            result.test_records_removed = len(attest.expire_tests(repo, lock, test_records_days, when))
        _gc(repo, result, lock)
        return result


def gc(repo: "Repository") -> PruneResult:
    """Remove data no backup uses and repack half-empty packs (exclusive lock).

    Manifests that are not backups (replayed after their prune, or written under a lock that was broken before
    their journal entry) go first, as in prune: their data may already be collected, and a GC that reads them
    would stop (a used blob without a location).
    """
    with repo.lock(True, "gc") as lock:
        _errors, replayed = repo.history_problems()
        for backup_id in replayed:
            repo.forget(lock, repo.get(backup_id))
        result = PruneResult(kept=[], pruned=[], dry_run=False, replayed_removed=list(replayed))
        _gc(repo, result, lock)
        return result


def _stored_bytes(entries: t.Iterable[PackEntry]) -> int:
    """Bytes the entries' blobs take (the chunks of a frame share its bytes)."""
    return sum(length for _offset, length in {(e.offset, e.length) for e in entries})


def _used_blobs(repo: "Repository", index: Index) -> set[bytes]:
    """Every blob a manifest uses: its map segments and their chunks. A damaged manifest or map raises (a GC that
    cannot see what is used must not delete anything)."""
    used: set[bytes] = set()
    seen_maps: set[str] = set()
    for record in repo.list(include_pruned=True):
        for disk in record.disks:
            for seg_id in disk.segments:
                if seg_id is None or seg_id in seen_maps:
                    continue
                seen_maps.add(seg_id)
                used.add(bytes.fromhex(seg_id))
                seg_map = repo.read_map(seg_id, index, f"disk '{disk.name}' of backup {record.id}")
                for _chunk, cid, _sha, _length in seg_map.iter_stored():
                    used.add(cid)
    return used


def _gc(repo: "Repository", result: PruneResult, lock: Lock) -> None:
    """Delete the packs nothing uses, repack half-empty ones, merge the index files.

    INVARIANT (what GC may delete): a pack is deleted only when (a) we hold the exclusive lock and check() passes
    right before the first delete, (b) every blob that any manifest uses has a location in a pack that exists and
    stays, or no unreadable pack remains that might hold it (otherwise GC stops and names them), and (c) the pack holds no used blob,
    judged from the index for indexed packs and from the pack's own header for packs no index lists. A pack
    whose header cannot be read is never deleted when no index describes it (it may hold the only copy of live
    data; verify names it). The new index is durable before anything is deleted.
    """
    index = repo.load_index()  # a damaged index raises here: its packs would look unused
    old_index_files = list(repo.index_files)
    stored = {obj.rsplit("/", 1)[-1]: (obj, size) for obj, size in repo.backend.list("packs") if ".tmp-" not in obj}
    packs = {pack: entries for pack, entries in index.packs().items() if pack in stored}
    # packs no index lists: leftovers of crashed runs, or packs whose index entries were lost; read them first
    unindexed: dict[str, list[PackEntry]] = {}
    unreadable: list[str] = []
    for name, (_obj, size) in stored.items():
        if name not in packs:
            try:
                unindexed[name] = read_pack_header(repo.backend, repo.codec, name, size)
            except (BackupError, FileNotFoundError):
                unreadable.append(name)
    # maps may sit in a pack no index lists (lost index files): read them through the pack headers too
    lookup = Index()
    for name, entries in list(packs.items()) + list(unindexed.items()):
        lookup.add_pack(name, entries)
    used = _used_blobs(repo, lookup)
    located = {e.blob_id for entries in packs.values() for e in entries}
    for name, entries in unindexed.items():
        # the only copy of live data: index what of it verifies (never a blob repair dropped as damaged)
        rescued = [e for e in entries if e.blob_id in used and e.blob_id not in located and repo.blob_intact(name, e)]
        if rescued:
            packs[name] = rescued
            located.update(e.blob_id for e in rescued)
    missing = used - located
    result.missing_blobs = len(missing)
    if missing and unreadable:
        sample = ", ".join(sorted(b.hex()[:16] for b in missing)[:5])
        raise CorruptMetadataError(
            f"Garbage collection stopped before deleting anything: {len(missing)} blob(s) that backups use are in no "
            f"readable pack of the repository at {repo.backend.location} (e.g. {sample}), and {len(unreadable)} "
            f"pack(s) have a damaged header ({', '.join(sorted(unreadable)[:3])}) and may hold them. Restore those "
            "packs from a copy of the repository, or run repair (verify with repair: true), then prune again."
        )
    keep: dict[str, list[PackEntry]] = {}
    delete: list[str] = []
    repack: list[tuple[str, list[PackEntry]]] = []
    for pack, entries in packs.items():
        live = [e for e in entries if e.blob_id in used]
        if not live:
            delete.append(pack)
        elif len(live) < len(entries) and _stored_bytes(live) < REPACK_THRESHOLD * stored[pack][1]:
            # Only packs that hold garbage: a small pack's header would otherwise make it look half empty
            # forever, and every prune would rewrite it.
            repack.append((pack, live))
        else:
            keep[pack] = entries
    orphans = [stored[name][0] for name in unindexed if name not in packs]
    result.unreadable_packs = sorted(unreadable)
    new_packs: dict[str, list[PackEntry]] = {}
    if repack:
        sink = PackSink(repo, Index())
        try:
            for pack, live in repack:
                obj = pack_object_name(pack)
                # the live chunks of a frame share its place: the frame is copied once, listing only them
                for (offset, length), group in itertools.groupby(
                    sorted(live, key=lambda e: (e.offset, e.length)), key=lambda e: (e.offset, e.length)
                ):
                    members = list(group)
                    raw = repo.backend.read_range(obj, offset, length)
                    if member_slot(members[0].blob_type) is None:
                        for entry in members:
                            sink.put(entry.blob_type, entry.blob_id, raw)
                    else:
                        sink.put_frame([(e.blob_type, e.blob_id) for e in members], raw)
            sink.close()
        except BaseException:
            sink.abort()
            raise
        new_packs = dict(sink.finished)
        result.packs_written = len(new_packs)
    reindexed = any(name in packs for name in unindexed)
    if delete or repack or orphans or reindexed or len(old_index_files) > 1:
        combined = dict(keep)
        combined.update(new_packs)
        lock.check()
        repo.write_index(combined)  # durable before anything is deleted
        lock.check()
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
    lock.check()
    for directory in ("packs", "index", "snapshots"):
        for name, _size in repo.backend.list(directory):
            if ".tmp-" in name:
                repo.backend.delete(name)
    # incomplete uploads: none can be a live writer's (we hold the exclusive lock), and only those older than a
    # lock takes to become stale, by the storage's clock, are touched
    result.uploads_aborted = repo.backend.abort_incomplete_writes(lock.name, locks_unit.STALE_SECONDS)
    repo._index = None
