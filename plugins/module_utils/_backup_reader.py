# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Random reads of one disk of one backup: what an NBD export of a backup (instant recovery) reads from.

The engine (``_backup/``) restores whole disks only. This reader follows the documented repository format
(docs/repository-format.md sections 7-9: index files, chunk map segments, blobs) through the engine's public
building blocks (``Repository.get``, its backend and codec, ``index``, ``manifest``, ``packs``, ``locks``) and never
calls a private method of ``Repository``. It checks what a restore checks: the manifest's segment digests against
its content digest when opened, each map segment against its digest when first read, and every chunk's
authentication tag and id (``BlobCodec.open``). While open it holds a shared repository lock, so a prune cannot
delete the packs it reads; the lock is refreshed as long operations do.

Meant to move into the engine as ``Repository.open_disk(backup_id, disk)`` (see the branch's report).
"""

from __future__ import annotations

import collections
import errno
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import Index, iter_index_raw
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import (
    MapSegment,
    chunk_count,
    chunk_length,
    combine_digests,
    segment_digest,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import BLOB_DATA, BLOB_MAP, pack_object_name

CACHE_CHUNKS = 64


def load_index(repo: t.Any) -> Index:
    """Every index file of the repository, as the format's section 7 describes (temporaries skipped)."""
    index = Index()
    for name, _size in repo.backend.list("index"):
        if ".tmp-" in name:
            continue
        try:
            blob = repo.backend.read(name)
        except FileNotFoundError:  # replaced by a concurrent rebuild: the new one is listed too
            continue
        plain = repo.codec.open_meta(b"index:" + name.encode("ascii"), blob, f"index file {name}")
        for pack, raw in iter_index_raw(plain, f"index file {name}"):
            index.add_raw(pack, raw)
    return index


class BackupDiskReader:
    """``size`` and ``pread(offset, length)`` over a backed-up disk; a hole reads as zeros.

    Raises (from the constructor) the engine's BackupNotFoundError / DiskNotFoundError / CorruptMetadataError /
    LockedError; ``pread`` raises OSError(EIO) naming the damaged chunk (``last_error`` keeps the message).
    """

    def __init__(self, repo: t.Any, backup_id: str, disk_name: str, operation: str = "serve a disk") -> None:
        self.repo = repo
        self.record = repo.get(backup_id)
        disk = self.record.disk(disk_name)
        if disk is None:
            raise backup_errors.DiskNotFoundError(
                f"Backup {backup_id} has no disk '{disk_name}'; it has: "
                f"{', '.join(d.name for d in self.record.disks)}.")
        self.disk = disk
        self.size = disk.size
        self.what = f"disk '{disk.name}' of backup {self.record.id}"
        if len(disk.segment_digests) != len(disk.segments) or \
                combine_digests([bytes.fromhex(d) for d in disk.segment_digests]) != disk.content_digest:
            raise backup_errors.CorruptMetadataError(f"The manifest of {self.what} is inconsistent (segment digests).")
        self.last_error: str | None = None
        self._mutex = threading.Lock()
        self._maps: dict[int, MapSegment | None] = {}
        self._chunks: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._lock = Lock(repo.backend, False, operation).acquire(getattr(repo, "lock_wait", 0.0))
        self._stop = threading.Event()
        try:
            self._index = load_index(repo)
        except BaseException:
            self._lock.release()
            raise
        # the lock refreshes itself (a timer thread in locks.Lock) for as long as the export runs

    def close(self) -> None:
        self._stop.set()
        self._lock.release()

    def __enter__(self) -> "BackupDiskReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ blobs
    def _blob(self, blob_type: int, blob_id: bytes, expected: int | None) -> bytes:
        loc = self._index.get(blob_id)
        if loc is None:
            raise backup_errors.CorruptChunkError(blob_id.hex(), "it is not in the index (missing data)")
        try:
            raw = self.repo.backend.read_range(pack_object_name(loc.pack), loc.offset, loc.length)
        except FileNotFoundError:
            raise backup_errors.CorruptChunkError(blob_id.hex(), "its pack file is missing", pack=loc.pack) from None
        try:
            return self.repo.codec.open(blob_type, blob_id, raw, expected)
        except backup_errors.IntegrityError as exc:
            raise backup_errors.CorruptChunkError(blob_id.hex(), str(exc), pack=loc.pack) from None

    def _segment(self, seg_no: int) -> MapSegment | None:
        if seg_no in self._maps:
            return self._maps[seg_no]
        disk = self.disk
        seg_id = disk.segments[seg_no]
        seg_map = None
        if seg_id is not None:
            seg_map = MapSegment.decode(self._blob(BLOB_MAP, bytes.fromhex(seg_id), None), f"{seg_id[:16]} of {self.what}")
            if seg_map.first != seg_no * disk.segment_chunks or seg_map.chunk_size != disk.chunk_size:
                raise backup_errors.CorruptMetadataError(f"The chunk map segment {seg_no} of {self.what} is misplaced.")
        check = segment_digest(seg_map, seg_no, disk.size, disk.chunk_size, disk.segment_chunks).hex()
        if check != disk.segment_digests[seg_no]:
            raise backup_errors.CorruptMetadataError(
                f"The chunk map segment {seg_no} of {self.what} does not match its digest in the manifest.")
        self._maps[seg_no] = seg_map
        return seg_map

    def _chunk(self, chunk: int) -> bytes:
        cached = self._chunks.get(chunk)
        if cached is not None:
            self._chunks.move_to_end(chunk)
            return cached
        disk = self.disk
        length = chunk_length(chunk, disk.size, disk.chunk_size)
        seg_map = self._segment(chunk // disk.segment_chunks)
        record = None if seg_map is None else seg_map.get(chunk)
        if record is None:
            return bytes(length)
        blob_id, _sha, stored_length = record
        if stored_length != length:
            raise backup_errors.CorruptMetadataError(f"The chunk map of {self.what} has a bad record for chunk {chunk}.")
        plain = self._blob(BLOB_DATA, blob_id, length)
        self._chunks[chunk] = plain
        if len(self._chunks) > CACHE_CHUNKS:
            self._chunks.popitem(last=False)
        return plain

    # ------------------------------------------------------------------ reads
    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only past the end of the disk)."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        csize = self.disk.chunk_size
        out = bytearray()
        with self._mutex:  # the codec's buffers and the caches are shared by the NBD connections' threads
            try:
                for chunk in range(offset // csize, min(chunk_count(self.size, csize), (end + csize - 1) // csize)):
                    start = chunk * csize
                    data = self._chunk(chunk)
                    out += data[max(offset, start) - start:min(end, start + len(data)) - start]
            except backup_errors.BackupError as exc:
                self.last_error = f"{self.what}, read of {length} bytes at offset {offset}: {exc}"
                raise OSError(errno.EIO, self.last_error) from exc
        return bytes(out)
