# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The pack sink: sealed blobs go into pack files on a writer thread, fsynced and published on a syncer thread.

PRIVATE to this collection; no compatibility guarantees.
"""

from __future__ import annotations

import queue
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import (
    Index,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    PackEntry,
    PackWriter,
)

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository


class PackSink:
    """Collects sealed blobs into pack files.

    A writer thread appends blobs to the current pack (bounded queue); a syncer thread
    fsyncs and renames finished packs, so the pipeline does not stall on fsync.
    ``finished`` lists only durable packs.
    """

    def __init__(self, repo: "Repository", index: Index) -> None:
        self._repo = repo
        self._index = index
        self._queue: "queue.Queue[t.Any]" = queue.Queue(maxsize=64)
        self._sync_queue: "queue.Queue[PackWriter | None]" = queue.Queue(maxsize=2)
        self._claimed: set[bytes] = set()
        self._claim_lock = threading.Lock()
        self.error: BaseException | None = None
        self.finished: list[tuple[str, list[PackEntry]]] = []
        self.bytes_stored = 0
        self.blobs_stored = 0
        self._aborting = False
        self._thread = threading.Thread(target=self._run, name="vmsafe-pack-writer", daemon=True)
        self._syncer = threading.Thread(target=self._sync, name="vmsafe-pack-sync", daemon=True)
        self._thread.start()
        self._syncer.start()
        self._closed = False

    def claim(self, blob_id: bytes) -> bool:
        """Return True if the caller must store ``blob_id`` (not yet stored nor claimed)."""
        if blob_id in self._index:
            return False
        with self._claim_lock:
            if blob_id in self._claimed:
                return False
            self._claimed.add(blob_id)
            return True

    def put(self, blob_type: int, blob_id: bytes, blob: bytes | bytearray) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((blob_type, blob_id, blob))

    def put_frame(self, members: t.Sequence[tuple[int, bytes]], blob: bytes | bytearray) -> None:
        """Store a frame (BlobCodec.seal_frame); ``members`` are the (entry type, id) of the chunks to list."""
        if self.error is not None:
            raise self.error
        self._queue.put((None, members, blob))

    def _sync(self) -> None:
        while True:
            pack = self._sync_queue.get()
            if pack is None:
                return
            if self.error is not None or self._aborting:
                pack.abort()
                continue
            try:
                pack.commit()
                self.finished.append((pack.name, pack.entries))
            except BaseException as exc:  # pylint: disable=broad-except  # re-raised in the caller's thread
                self.error = exc
                pack.abort()

    def _run(self) -> None:
        pack: PackWriter | None = None
        limit = self._repo.pack_size
        item: t.Any = None
        while True:
            item = self._queue.get()
            if isinstance(item, str):
                break
            if self.error is not None:
                continue  # keep draining so producers never block
            try:
                if pack is None:
                    pack = PackWriter(self._repo.backend, self._repo.codec)
                if item[0] is None:
                    pack.add_frame(item[1], item[2])
                    self.blobs_stored += len(item[1])
                else:
                    pack.add(*item)
                    self.blobs_stored += 1
                self.bytes_stored += len(item[2])
                if pack.size >= limit:
                    pack.write_header()
                    self._sync_queue.put(pack)
                    pack = None
            except BaseException as exc:  # pylint: disable=broad-except  # re-raised in the caller's thread
                self.error = exc
                if pack is not None:
                    pack.abort()
                    pack = None
        if pack is not None:
            if item == "commit" and self.error is None:
                try:
                    pack.write_header()
                    self._sync_queue.put(pack)
                except BaseException as exc:  # pylint: disable=broad-except  # re-raised in close()
                    self.error = exc
                    pack.abort()
            else:
                pack.abort()
        self._sync_queue.put(None)

    def close(self) -> None:
        """Finish the last pack and wait until every pack is durable. Raises the writer's error."""
        if not self._closed:
            self._closed = True
            self._queue.put("commit")
            self._thread.join()
            self._syncer.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._aborting = True
            self._queue.put("abort")
            self._thread.join()
            self._syncer.join()
