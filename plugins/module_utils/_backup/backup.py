# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Backup: cut the disks into chunks, store the new ones, and commit a manifest (one unit of the engine).

PRIVATE to this collection; no compatibility guarantees.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import os
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.chunker import (
    FULL,
    READ_BATCH,
    BufferPool,
    Extent,
    grouped,
    iter_chunks,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackupError,
    LockLostError,
    CorruptChunkError,
    DiskNotFoundError,
    InvalidArgumentError,
    SourceReadError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import (
    Index,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import (
    BackupRecord,
    combine_digests,
    segment_digest,
    DiskRecord,
    MapSegment,
    chunk_count,
    chunk_length,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    BLOB_DATA,
    BLOB_MAP,
    member_type,
)

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.prefetch import prefetched
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.sink import PackSink
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import utcnow

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository

#: groups of READ_BATCH chunks the read-ahead thread may have ready before this thread takes them
READ_AHEAD = 2


@dataclasses.dataclass
class DiskSource:
    """A disk to back up: ``extents`` yields sorted ``(offset, length, bytes-or-reader)``.

    For a full backup give the whole image (or its data extents: uncovered ranges are
    zero). For an incremental give only the changed extents; ``parent_disk`` names the
    disk in the parent backup when it differs from ``name``.
    """

    name: str
    size: int
    extents: t.Iterable[Extent]
    parent_disk: str | None = None


def _check_disks(disks: t.Sequence[DiskSource]) -> None:
    names = [d.name for d in disks]
    if not disks or len(set(names)) != len(names) or any(not n for n in names):
        raise InvalidArgumentError("Give at least one disk, each with a unique, non-empty name.")
    for disk in disks:
        if disk.size < 0:
            raise InvalidArgumentError(f"Disk '{disk.name}' has a negative size.")


# ------------------------------------------------------------------ backup
def backup(
    repo: "Repository",
    vm_name: str,
    disks: t.Sequence[DiskSource] | t.Callable[[], t.Sequence[DiskSource]],
    vm_definition: str | t.Callable[[], str] = "",
    tags: t.Mapping[str, str] | None = None,
    parent: str | None = None,
    time: datetime.datetime | None = None,
    finalize: t.Callable[[], t.Mapping[str, str]] | None = None,
) -> BackupRecord:
    """Back up the disks of a VM; returns the new backup's record.

    With ``parent``, each disk's extents are only the changed ones; the rest is taken
    from the parent's disk. ``finalize`` runs once every disk is read and stored, just before
    the backup is recorded; the tags it returns are added (a hypervisor that only names its
    change-tracking point after the read, such as Hyper-V's reference points). If it raises,
    nothing is recorded. ``disks`` and ``vm_definition`` may be callables: they are called once the
    repository is locked and its index loaded, so that a hypervisor's slow start of the export (run in
    another thread, the callable waiting for it) overlaps with that work. Raises InvalidArgumentError,
    BackupNotFoundError, LockedError, BackendError, CorruptChunkError (damaged parent data).
    """
    if not vm_name:
        raise InvalidArgumentError("vm_name must not be empty.")
    if not callable(disks):
        _check_disks(disks)
    when = time or utcnow()
    if when.tzinfo is None:
        raise InvalidArgumentError("The backup time must be timezone-aware (UTC).")
    started = utcnow()
    with repo.lock(False, "backup") as lock:
        index = repo.load_index()
        parent_record = repo.get(parent) if parent else None
        if callable(disks):
            disks = disks()
            _check_disks(disks)
        if parent_record is not None:
            for disk in disks:
                pname = disk.parent_disk or disk.name
                if parent_record.disk(pname) is None and disk.parent_disk is not None:
                    raise DiskNotFoundError(
                        f"The parent backup {parent} has no disk '{pname}'; available: "
                        f"{', '.join(d.name for d in parent_record.disks)}."
                    )
        sink = PackSink(repo, index)
        records = []
        stats = {"new_bytes": 0, "zero_chunks": 0, "chunks": 0, "read_bytes": 0}
        try:
            with concurrent.futures.ThreadPoolExecutor(repo.threads, thread_name_prefix="vmsafe-backup") as pool:
                for disk in disks:
                    pdisk = parent_record.disk(disk.parent_disk or disk.name) if parent_record else None
                    records.append(_backup_disk(repo, disk, pdisk, index, sink, pool, stats, lock))
            sink.close()
        except BaseException as exc:
            sink.abort()
            if isinstance(exc, BackupError) and not isinstance(exc, LockLostError):
                # a lost lock explains a storage error best: a GC that took our lock as stale removed our
                # temporary pack files (found by the concurrency model test)
                lock.check()
            raise
        extra_tags = dict(finalize()) if finalize is not None else {}
        stats["new_bytes"] = sink.bytes_stored
        stats["new_blobs"] = sink.blobs_stored
        stats["packs"] = len(sink.finished)
        stats["seconds"] = round((utcnow() - started).total_seconds(), 3)
        backup_id = f"{when.astimezone(datetime.timezone.utc):%Y%m%dT%H%M%SZ}-{os.urandom(4).hex()}"
        record = BackupRecord(
            id=backup_id,
            vm_name=vm_name,
            time=when,
            disks=records,
            tags={**dict(tags or {}), **extra_tags},
            parent=parent,
            vm_definition=vm_definition() if callable(vm_definition) else vm_definition,
            stats=stats,
        )
        repo.commit_backup(lock, sink.finished, record)
        return record


def _backup_disk(
    repo: "Repository",
    source: DiskSource,
    parent: DiskRecord | None,
    index: Index,
    sink: PackSink,
    pool: concurrent.futures.ThreadPoolExecutor,
    stats: dict[str, t.Any],
    lock: Lock,
) -> DiskRecord:
    size = source.size
    csize = repo.chunk_size
    seg_chunks = repo.segment_chunks
    nchunks = chunk_count(size, csize)
    zero_full = bytes(csize)
    codec = repo.codec
    what = f"disk '{source.name}'"
    parent_maps: "collections.OrderedDict[int, MapSegment | None]" = collections.OrderedDict()

    def parent_segment(seg: int) -> MapSegment | None:
        if parent is None or seg >= len(parent.segments) or parent.segments[seg] is None:
            return None
        if seg not in parent_maps:
            parent_maps[seg] = repo.read_map(t.cast(str, parent.segments[seg]), index, f"parent {what}")
            while len(parent_maps) > 2:
                parent_maps.popitem(last=False)
        return parent_maps[seg]

    def parent_plain(chunk: int, length: int) -> bytearray:
        """Parent content of a chunk resized to ``length`` (zeros when absent)."""
        seg = parent_segment(chunk // seg_chunks) if parent is not None else None
        rec = seg.get(chunk) if seg is not None and chunk < seg.first + seg.count else None
        if rec is None:
            return bytearray(length)
        try:
            data = bytearray(repo.read_blob(BLOB_DATA, rec[0], index, rec[2]))
        except CorruptChunkError as exc:
            exc.args = (f"{exc.args[0]} (while reading parent disk of {what} for an incremental backup)",)
            raise
        if len(data) < length:
            data.extend(bytes(length - len(data)))
        return data[:length]

    # ---- collection side: maps and digests, in chunk order. A segment's map is only loaded
    # ("materialised") when a changed chunk falls into it; untouched segments keep the parent's
    # id and digest, so an incremental costs in proportion to the change, not to the disk.
    segments: list[str | None] = []
    seg_digests: list[str] = []
    resized = parent is not None and parent.size != size
    state: dict[str, t.Any] = {"seg": -1, "map": None, "changed": False, "old_stored": 0}
    counters = {"stored": 0, "zero": 0, "delta": 0}

    def materialize() -> MapSegment:
        if state["map"] is None:
            seg = state["seg"]
            first = seg * seg_chunks
            count = min(seg_chunks, nchunks - first)
            new = MapSegment(first, count, csize)
            pseg = parent_segment(seg)
            if pseg is not None:
                keep = min(count, pseg.count)
                new.buf[: keep * 68] = pseg.buf[: keep * 68]
                if not resized:
                    state["old_stored"] = pseg.stored_count()
            state["map"] = new
        return t.cast(MapSegment, state["map"])

    def parent_has(seg: int) -> bool:
        return parent is not None and not resized and seg < len(parent.segments)

    def close_segment() -> None:
        seg = state["seg"]
        if state["map"] is None and resized:
            materialize()
        seg_map: MapSegment | None = state["map"]
        if seg_map is None or (not state["changed"] and parent_has(seg)):
            if parent_has(seg):
                pdisk = t.cast(DiskRecord, parent)
                segments.append(pdisk.segments[seg])
                seg_digests.append(pdisk.segment_digests[seg])
            else:
                segments.append(None)
                seg_digests.append(segment_digest(None, seg, size, csize, seg_chunks).hex())
            return
        # records copied from a parent of another size may have the wrong length: re-store them
        for chunk, _cid, _sha, length in list(seg_map.iter_stored()) if resized else ():
            want = chunk_length(chunk, size, csize)
            if length != want:
                data = parent_plain(chunk, want)
                if data == bytes(want):
                    seg_map.clear(chunk)
                else:
                    sha, cid = codec.hash_and_id(data)
                    if sink.claim(cid):
                        sink.put(BLOB_DATA, cid, codec.seal(BLOB_DATA, cid, data))
                    seg_map.set(chunk, cid, sha, want)
        stored = seg_map.stored_count()
        counters["stored"] += stored
        counters["delta"] += stored - state["old_stored"]
        seg_digests.append(segment_digest(seg_map, seg, size, csize, seg_chunks).hex())
        segments.append(None)
        if stored:
            # Hashing, compressing and encrypting a ~1 MiB map is GIL-free work: the pool does it while
            # this thread goes on cutting chunks; drain_maps() stores it and fills in the segment's id.
            sealing.append((len(segments) - 1, pool.submit(seal_map, seg_map.encode())))
            drain_maps(False)

    def seal_map(plain: bytes) -> tuple[bytes, bytearray | None]:
        _sha, cid = codec.hash_and_id(plain)
        return cid, codec.seal(BLOB_MAP, cid, plain) if sink.claim(cid) else None

    sealing: "collections.deque[tuple[int, concurrent.futures.Future]]" = collections.deque()

    def drain_maps(everything: bool) -> None:
        while sealing and (everything or len(sealing) > 2 or sealing[0][1].done()):
            slot, future = sealing.popleft()
            cid, blob = future.result()
            if blob is not None:
                sink.put(BLOB_MAP, cid, blob)
            segments[slot] = cid.hex()

    def advance_to(chunk: int) -> None:
        seg = chunk // seg_chunks
        while state["seg"] < seg:
            if state["seg"] >= 0:
                close_segment()
            state.update(seg=state["seg"] + 1, map=None, changed=False, old_stored=0)

    def collect(item: t.Any) -> None:
        chunk, length, result = item
        if isinstance(result, concurrent.futures.Future):
            result = result.result()
        advance_to(chunk)
        seg_map = materialize()
        old = seg_map.get(chunk)
        if result is None:
            counters["zero"] += 1
            if old is not None:
                seg_map.clear(chunk)
                state["changed"] = True
            return
        sha, cid, blob = result
        if blob is not None:
            sink.put(BLOB_DATA, cid, blob)
        if old is None or old[0] != cid or old[2] != length:
            seg_map.set(chunk, cid, sha, length)
            state["changed"] = True

    # ---- production side: chunks go to the thread pool in batches (one task per ~1 MiB),
    # because a task per 64 KiB chunk spends more time in executor hand-offs than in work
    batch_size = max(1, (1024 * 1024) // csize)
    window = repo.threads * 3
    # Chunks in use at once: the window of batches in the pool, the one being gathered here, the groups the
    # read-ahead thread has queued (READ_AHEAD, and one more waiting to be queued) and the one it is filling. Whole
    # chunks are read into slabs of READ_BATCH chunks (no copy); partial chunks and sources that hand over bytes
    # use single buffers. No deadlock: this thread submits what it gathered at the end of every group, so while it
    # waits for the reader it holds no buffer, and the workers give theirs back without waiting for anything.
    buffers = BufferPool((window + 2) * batch_size + READ_BATCH * (READ_AHEAD + 2) + 4, csize, slab_chunks=READ_BATCH)

    frame_slots = repo.frame_slots

    def work(batch: list[tuple[bytearray, int]]) -> tuple[list[tuple[bytes, bytes, bytearray | None]], list[t.Any]]:
        """Hash and seal a batch; new whole chunks that compress go into frames (format version 2), the rest alone."""
        results: list[tuple[bytes, bytes, bytearray | None]] = []
        framed: list[tuple[t.Any, bytes]] = []
        frames: list[tuple[list[bytes], bytearray]] = []
        try:
            for buf, length in batch:
                data: t.Any = buf if length == csize else memoryview(buf)[:length]
                sha, cid = codec.hash_and_id(data)
                blob = None
                if sink.claim(cid):
                    # the probe is asked once: its answer decides the frame and is handed to seal()
                    compress = codec.compressible(data) if frame_slots > 1 and length == csize else None
                    if compress:
                        framed.append((data, cid))
                    else:
                        blob = codec.seal(BLOB_DATA, cid, data, compress)
                results.append((sha, cid, blob))
            for start in range(0, len(framed), frame_slots):
                group = framed[start : start + frame_slots]
                frame = codec.seal_frame([data for data, _cid in group]) if len(group) > 1 else None
                if frame is not None:
                    frames.append(([cid for _data, cid in group], frame))
                else:
                    frames.extend(([cid], codec.seal(BLOB_DATA, cid, data, True)) for data, cid in group)
        finally:
            for buf, _length in batch:
                buffers.put(buf)
        return results, frames

    def collect_group(group: tuple[list[tuple[int, int, bool]], t.Any]) -> None:
        members, future = group
        results, frames = future.result() if future is not None else ((), ())
        for ids, blob in frames:
            if len(ids) == 1:
                sink.put(BLOB_DATA, ids[0], blob)
            else:
                sink.put_frame([(member_type(slot), cid) for slot, cid in enumerate(ids)], blob)
        results = iter(results)
        for chunk, length, is_zero in members:
            collect((chunk, length, None if is_zero else next(results)))

    pending: "collections.deque[t.Any]" = collections.deque()
    members: list[tuple[int, int, bool]] = []
    batch: list[tuple[bytearray, int]] = []
    pieces = 0

    def submit() -> None:
        nonlocal members, batch
        pending.append((members, pool.submit(work, batch) if batch else None))
        members, batch = [], []
        while len(pending) > window:
            collect_group(pending.popleft())

    def guarded(pieces: t.Iterator[t.Any]) -> t.Iterator[t.Any]:
        try:
            yield from pieces
        except OSError as exc:
            raise SourceReadError(
                f"Reading disk '{source.name}' failed: {exc.strerror or exc}. The backup was not recorded and "
                "earlier backups are untouched; check the disk source and run the backup again."
            ) from exc

    # The source is read (and cut into chunks) by a read-ahead thread, so its reads overlap this thread's work.
    reader = prefetched(grouped(iter_chunks(source.extents, size, csize, buffers, source.name)), READ_AHEAD,
                        name="vmsafe-read-disk")
    try:
        for group in guarded(reader):
            for piece in group:
                pieces += 1
                buf, length = piece.buf, piece.length
                if piece.kind != FULL:
                    base = parent_plain(piece.index, length)
                    for start, end in piece.intervals:
                        base[start:end] = buf[start:end]
                    buf[:length] = base
                stats["read_bytes"] += length
                # startswith: a memcmp for bytearrays and memoryviews alike (== on a memoryview compares item by item)
                if zero_full.startswith(buf if length == csize else memoryview(buf)[:length]):
                    buffers.put(buf)
                    members.append((piece.index, length, True))
                else:
                    members.append((piece.index, length, False))
                    batch.append((buf, length))
                if len(members) >= batch_size:
                    submit()
            if members:
                submit()
            if sink.error is not None:
                raise sink.error
    finally:
        buffers.close()  # a reader blocked for a buffer stops now (only matters when this loop failed)
        reader.close()
    while pending:
        collect_group(pending.popleft())
    if nchunks:
        advance_to(nchunks - 1)
        close_segment()
    drain_maps(True)
    stats["chunks"] += pieces
    stats["zero_chunks"] += counters["zero"]
    if parent is None or resized:
        stored_total = counters["stored"]
    else:
        stored_total = parent.stored_chunks + counters["delta"]
    return DiskRecord(
        name=source.name,
        size=size,
        chunk_size=csize,
        segment_chunks=seg_chunks,
        content_digest=combine_digests([bytes.fromhex(d) for d in seg_digests]),
        segments=segments,
        segment_digests=seg_digests,
        stored_chunks=stored_total,
        zero_chunks=nchunks - stored_total,
    )
