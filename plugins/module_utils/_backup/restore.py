# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Restore: write one disk of a backup to a file or block device, every chunk checked first.

PRIVATE to this collection; no compatibility guarantees.
"""

from __future__ import annotations

import collections
import concurrent.futures
import mmap
import os
import secrets
import stat as stat_mod
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import (
    DIRECT_ALIGN,
    pwrite_all,
    reopen_direct,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    CorruptChunkError,
    DiskNotFoundError,
    IntegrityError,
    RestoreTargetError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import (
    Index,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import (
    BackupRecord,
    DiskRecord,
    chunk_count,
    chunk_length,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    BLOB_DATA,
    member_slot,
    pack_object_name,
)

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository


def _open_direct(fd: int, chunk_size: int) -> int | None:
    """Reopen ``fd`` with O_DIRECT for large aligned restore writes, or return None.

    Copying gigabytes into the page cache and flushing them later cost more than
    decrypting and decompressing here; direct writes of whole-chunk runs avoid both.
    Falls back to buffered writes where O_DIRECT is unsupported (tmpfs, other OSes).
    """
    return None if chunk_size % DIRECT_ALIGN else reopen_direct(fd)


# ------------------------------------------------------------------ restore
def restore(
    repo: "Repository",
    backup_id: str,
    disk_name: str,
    target: str | int,
    sparse: bool = True,
    layout: t.Any = None,
) -> dict[str, t.Any]:
    """Restore one disk to a file path, block device path or open file descriptor.

    Regular files are restored to ``<path>.vmsafe-partial`` and renamed when complete
    and verified, so a failed restore never leaves wrong data under the target name.
    With ``sparse`` zero chunks become holes in regular files; block devices always get
    zeros written. Every chunk is authenticated and hash-checked before it is written.
    ``layout`` (a regular file only) writes another image format directly: the engine asks its
    ``place(chunk, length)`` for each stored chunk's file offset (in chunk order, from one thread), zero chunks
    are skipped, and its ``finish(fd)`` writes the format's metadata before the final fsync (see qcow2.py).
    Returns statistics. Raises BackupNotFoundError, DiskNotFoundError, CorruptChunkError.
    """
    record = repo.get(backup_id)
    disk = record.disk(disk_name)
    if disk is None:
        raise DiskNotFoundError(
            f"Backup {backup_id} has no disk '{disk_name}'; it has: {', '.join(d.name for d in record.disks)}."
        )
    with repo.lock(False, "restore") as lock:
        index = repo.load_index()
        close_fd = False
        final_path = tmp_path = None
        if isinstance(target, int):
            fd = target
        else:
            try:
                if os.path.exists(target) and stat_mod.S_ISBLK(os.stat(target).st_mode):
                    fd = os.open(target, os.O_WRONLY)
                else:
                    if os.path.isdir(target):
                        raise IsADirectoryError(21, "Is a directory")
                    final_path = target
                    # an unpredictable name, created exclusively: a planted symlink or file is never followed
                    tmp_path = f"{target}.vmsafe-partial-{secrets.token_hex(6)}"
                    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except OSError as exc:
                raise RestoreTargetError(
                    f"Cannot open the restore target '{target}': {exc.strerror}. Give a file path (its directory "
                    "must exist and be writable) or a block device."
                ) from exc
            close_fd = True
        try:
            mode = os.fstat(fd).st_mode
            is_block = stat_mod.S_ISBLK(mode)
            if layout is not None and not stat_mod.S_ISREG(mode):
                raise RestoreTargetError(f"The restore target '{target}' must be a regular file for this format.")
            if stat_mod.S_ISREG(mode):
                os.ftruncate(fd, 0)
                if layout is None:
                    os.ftruncate(fd, disk.size)
                else:
                    layout.bind(fd)
            write_zeros = (is_block or not sparse) and layout is None
            direct_fd = _open_direct(fd, disk.chunk_size)
            try:
                result = _restore_into(repo, record, disk, index, fd, write_zeros, lock, direct_fd,
                                       layout.place if layout is not None else None)
                if direct_fd is not None:
                    os.fsync(direct_fd)
            finally:
                if direct_fd is not None:
                    os.close(direct_fd)
            if layout is not None:
                layout.finish(fd)
            os.fsync(fd)
        except BaseException as exc:
            if close_fd:
                os.close(fd)
                close_fd = False
            if tmp_path is not None:
                try:
                    os.unlink(tmp_path)
                except OSError:
                    pass
            if isinstance(exc, OSError):
                raise RestoreTargetError(
                    f"Writing the restore target '{target}' failed: {exc.strerror}. Check free space and "
                    "permissions; "
                    + ("the partial file was removed." if tmp_path else "the target holds incomplete data.")
                ) from exc
            raise
        finally:
            if close_fd:
                os.close(fd)
        if tmp_path is not None and final_path is not None:
            os.rename(tmp_path, final_path)
            dirfd = os.open(os.path.dirname(os.path.abspath(final_path)), os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        return result


def _restore_into(
    repo: "Repository",
    record: BackupRecord,
    disk: DiskRecord,
    index: Index,
    fd: int,
    write_zeros: bool,
    lock: Lock,
    direct_fd: int | None = None,
    place: t.Callable[[int, int], int] | None = None,
) -> dict[str, t.Any]:
    csize = disk.chunk_size
    codec = repo.codec
    zero = bytes(csize)
    written = 0

    local = threading.local()

    def work(batch: list[tuple[int, int, bytes, bytes, int, str, t.Any]]) -> int:
        # every chunk of the batch is checked before anything of the batch is written
        plains: list[tuple[int, t.Any]] = []  # (file offset, plaintext)
        frames: dict[tuple[str, int], bytes] = {}  # the frames of this batch, each opened once
        for chunk, pos, cid, raw, length, pack, loc in batch:
            try:
                if member_slot(loc.blob_type) is None:
                    plains.append((pos, codec.open(BLOB_DATA, cid, raw, length)))
                    continue
                frame = frames.get((pack, loc.offset))
                if frame is None:
                    frame = frames[(pack, loc.offset)] = codec.open_frame(raw)
                plains.append((pos, codec.member(frame, loc.blob_type, cid, length)))
            except IntegrityError as exc:
                raise CorruptChunkError(
                    cid.hex(), str(exc), record.id, disk.name, chunk, chunk * csize, pack
                ) from None
        i = 0
        while i < len(plains):
            pos, plain = plains[i]
            j = i
            if direct_fd is not None:
                while j < len(plains) and plains[j][0] == pos + (j - i) * csize and len(plains[j][1]) == csize:
                    j += 1
            if j == i:
                pwrite_all(fd, plain, pos)
                i += 1
                continue
            # a run of adjacent full chunks: one aligned O_DIRECT write, no page-cache copy
            buf = getattr(local, "buf", None)
            if buf is None or len(buf) < (j - i) * csize:  # a batch may run past batch_size to end with a frame
                buf = local.buf = mmap.mmap(-1, max(batch_size, j - i) * csize)
            for k in range(i, j):
                buf[(k - i) * csize : (k - i + 1) * csize] = plains[k][1]
            pwrite_all(t.cast(int, direct_fd), memoryview(buf)[: (j - i) * csize], pos)
            i = j
        return sum(len(p) for _c, p in plains)

    def zeros_until(start_chunk: int, end_chunk: int) -> None:
        for chunk in range(start_chunk, end_chunk):
            length = chunk_length(chunk, disk.size, csize)
            os.pwrite(fd, zero[:length], chunk * csize)

    def read_batch(items: list[tuple[int, int, bytes, int, t.Any]]) -> list[tuple[int, int, bytes, bytes, int, str, t.Any]]:
        """Read the stored blobs of a batch, one read per run of adjacent blobs in a pack (a frame's chunks share one)."""
        out: list[tuple[int, int, bytes, bytes, int, str, t.Any]] = []
        i = 0
        while i < len(items):
            j = i + 1
            loc = items[i][4]
            end = loc.offset + loc.length
            while j < len(items):
                here, before = items[j][4], items[j - 1][4]
                # the next blob in the pack, or the next chunk of the same frame
                if here.pack != loc.pack or (here.offset != end and (here.offset, here.length) != (before.offset, before.length)):
                    break
                end = here.offset + here.length
                j += 1
            try:
                data = repo.backend.read_range(pack_object_name(loc.pack), loc.offset, end - loc.offset)
            except FileNotFoundError:
                chunk, cid = items[i][0], items[i][2]
                raise CorruptChunkError(
                    cid.hex(), "its pack file is missing", record.id, disk.name, chunk, chunk * csize, loc.pack
                ) from None
            view = memoryview(data)
            for chunk, pos, cid, length, item_loc in items[i:j]:
                start = item_loc.offset - loc.offset
                out.append((chunk, pos, cid, view[start : start + item_loc.length], length, item_loc.pack, item_loc))
            i = j
        return out

    batch_size = max(1, (1024 * 1024) // csize)
    window = repo.threads * 3
    pending: "collections.deque[concurrent.futures.Future[int]]" = collections.deque()
    batch: list[tuple[int, int, bytes, int, t.Any]] = []
    next_chunk = 0
    nchunks = chunk_count(disk.size, csize)
    with concurrent.futures.ThreadPoolExecutor(repo.threads, thread_name_prefix="vmsafe-restore") as pool:

        def submit() -> None:
            nonlocal written, batch
            pending.append(pool.submit(work, read_batch(batch)))
            batch = []
            while len(pending) > window:
                written += pending.popleft().result()

        try:
            for chunk, cid, length in repo.disk_chunks(record, disk, index):
                loc = index.get(cid)
                if loc is None:
                    raise CorruptChunkError(
                        cid.hex(),
                        "it is missing from the repository",
                        record.id,
                        disk.name,
                        chunk,
                        chunk * csize,
                    )
                if write_zeros:
                    zeros_until(next_chunk, chunk)
                next_chunk = chunk + 1
                # a batch ends between frames, so that each frame is opened once
                if len(batch) >= batch_size and (loc.pack, loc.offset) != (batch[-1][4].pack, batch[-1][4].offset):
                    submit()
                batch.append((chunk, chunk * csize if place is None else place(chunk, length), cid, length, loc))
            if batch:
                submit()
            while pending:
                written += pending.popleft().result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    if write_zeros:
        zeros_until(next_chunk, nchunks)
    # disk_chunks() checked the content digest against the maps once the last segment was read
    return {"backup_id": record.id, "disk": disk.name, "size": disk.size, "bytes_written": written,
            "digest": disk.content_digest}
