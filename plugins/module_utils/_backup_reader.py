# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Random reads of one disk of one backup: what an NBD export of a backup (instant recovery, backup_files) reads.

The engine (``_backup/``) restores whole disks only; this reader reads any range through the engine's public
core: ``Repository.get`` (the manifest), ``Repository.load_index``, ``Repository.disk_chunks`` (the chunk-map check
restore and verify share), ``Repository.read_map`` and ``Repository.read_blob`` (every chunk's authentication tag and
id). When opened it runs the whole chunk-map check once (map segments against the manifest's digests, placement,
record lengths, chunk ids, the content digest), so a damaged map fails at once rather than in the middle of a VM's
boot; afterwards map segments are read again lazily, by id, which authenticates them as the same content.

While open it holds a shared repository lock (``Repository.lock``), so a prune cannot delete the packs it reads; the
lock refreshes itself (a timer thread in ``locks.Lock``) for as long as the reader is open. Several readers (the disks
of one VM) can share one index and one lock: pass ``index`` and ``lock``; the reader then never releases that lock.
"""

from __future__ import annotations

import collections
import errno
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import MapSegment, chunk_count, chunk_length
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import BLOB_DATA

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import Index
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository

CACHE_CHUNKS = 64


class BackupDiskReader:
    """``size`` and ``pread(offset, length)`` over a backed-up disk; a hole reads as zeros.

    Raises (from the constructor) the engine's BackupNotFoundError / DiskNotFoundError / CorruptMetadataError /
    LockedError; ``pread`` raises OSError(EIO) naming the damaged chunk (``last_error`` keeps the message).
    """

    def __init__(self, repo: Repository, backup_id: str, disk_name: str, operation: str = "serve a disk",
                 index: Index | None = None, lock: Lock | None = None) -> None:
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
        self.last_error: str | None = None
        self._mutex = threading.Lock()
        self._maps: dict[int, MapSegment | None] = {}
        self._chunks: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._own_lock = lock is None
        self.lock = repo.lock(False, operation) if lock is None else lock
        try:
            self._index = repo.load_index() if index is None else index
            for _stored in repo.disk_chunks(self.record, disk, self._index):
                pass  # the check only: it raises CorruptMetadataError on the first problem
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._own_lock:
            self.lock.release()

    def __enter__(self) -> "BackupDiskReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the chunk map
    def _segment(self, seg_no: int) -> MapSegment | None:
        if seg_no not in self._maps:
            seg_id = self.disk.segments[seg_no]
            # checked by disk_chunks() when opened; read by id, so the blob's authentication proves it the same
            self._maps[seg_no] = None if seg_id is None else self.repo.read_map(seg_id, self._index, self.what)
        return self._maps[seg_no]

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
        plain = self.repo.read_blob(BLOB_DATA, record[0], self._index, length)
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
