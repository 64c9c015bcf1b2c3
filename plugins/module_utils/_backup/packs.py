# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Pack files: many blobs in one file, with a header that lists them.

PRIVATE to this collection; no compatibility guarantees.

Layout of ``packs/<2 hex>/<64 hex>``::

    b"VMSPACK1"                     8-byte magic
    blob, blob, ...                 stored blobs (see crypto.BlobCodec)
    sealed header                   BlobCodec.seal_meta(b"pack:" + name, header)
    u32 little-endian               length of the sealed header
    b"VMSPEND1"                     8-byte magic

header = b"VMSPH001" | u32 count | count * (u8 type | 32-byte id | u64 offset | u32 length)

A *frame* (format version 2) is one stored blob holding several data chunks compressed together; each chunk in it
has its own entry, of type ``BLOB_MEMBER | slot``, with the frame's offset and length (see crypto.BlobCodec).
"""

from __future__ import annotations

import os
import struct
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import CorruptMetadataError

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import Backend, ObjectWriter
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import BlobCodec

PACK_MAGIC = b"VMSPACK1"
PACK_END = b"VMSPEND1"
HEADER_MAGIC = b"VMSPH001"
ENTRY = struct.Struct("<B32sQI")
TRAILER = struct.Struct("<I8s")

BLOB_DATA = 0
BLOB_MAP = 1
#: type of a data chunk stored in a frame: BLOB_MEMBER | slot, the chunk being bytes [slot * chunk_size,
#: (slot + 1) * chunk_size) of the frame's plaintext
BLOB_MEMBER = 0x80
#: at most this many chunks in one frame
MAX_FRAME_SLOTS = 64


def member_type(slot: int) -> int:
    """The entry type of the chunk at ``slot`` of a frame."""
    if not 0 <= slot < MAX_FRAME_SLOTS:
        raise ValueError(f"frame slot {slot} out of range")
    return BLOB_MEMBER | slot


def member_slot(blob_type: int) -> int | None:
    """The slot of a frame member's entry type, None for a blob stored on its own."""
    return blob_type & ~BLOB_MEMBER if blob_type & BLOB_MEMBER else None


def valid_type(blob_type: int) -> bool:
    return blob_type in (BLOB_DATA, BLOB_MAP) or BLOB_MEMBER <= blob_type < BLOB_MEMBER + MAX_FRAME_SLOTS


class PackEntry(t.NamedTuple):
    """One blob inside a pack."""

    blob_type: int
    blob_id: bytes
    offset: int
    length: int


def pack_object_name(pack_name: str) -> str:
    """Return the backend object name of a pack (its 64-hex name)."""
    return f"packs/{pack_name[:2]}/{pack_name}"


def new_pack_name() -> str:
    """Return a fresh random pack name."""
    return os.urandom(32).hex()


def encode_header(entries: t.Sequence[PackEntry]) -> bytes:
    parts = [HEADER_MAGIC, struct.pack("<I", len(entries))]
    parts.extend(ENTRY.pack(e.blob_type, e.blob_id, e.offset, e.length) for e in entries)
    return b"".join(parts)


def decode_header(data: bytes, what: str) -> list[PackEntry]:
    if len(data) < 12 or data[:8] != HEADER_MAGIC:
        raise CorruptMetadataError(f"The header of {what} is damaged (bad magic). Run verify and rebuild_index.")
    (count,) = struct.unpack_from("<I", data, 8)
    if len(data) != 12 + count * ENTRY.size:
        raise CorruptMetadataError(f"The header of {what} is damaged (bad length). Run verify and rebuild_index.")
    entries = [PackEntry(*ENTRY.unpack_from(data, 12 + i * ENTRY.size)) for i in range(count)]
    if not all(valid_type(e.blob_type) for e in entries):
        raise CorruptMetadataError(f"The header of {what} is damaged (unknown blob type). Run verify and rebuild_index.")
    return entries


#: blobs are handed to the storage about 1 MiB at a time (one writev instead of ~30 writes: each write gives up
#: the GIL and waits to get it back, which made the pack writer the bottleneck of a full backup)
WRITE_BATCH = 1024 * 1024


class PackWriter:
    """Writes one pack file. Not thread-safe: one writer thread owns it."""

    def __init__(self, backend: "Backend", codec: "BlobCodec") -> None:
        self.name = new_pack_name()
        self._codec = codec
        self._writer: "ObjectWriter" = backend.open_writer(pack_object_name(self.name))
        self._pending: list[bytes | bytearray | memoryview] = [PACK_MAGIC]
        self._pending_bytes = len(PACK_MAGIC)
        self.size = len(PACK_MAGIC)
        self.entries: list[PackEntry] = []

    def add(self, blob_type: int, blob_id: bytes, blob: bytes | bytearray | memoryview) -> PackEntry:
        """Append a blob (kept until about WRITE_BATCH bytes are pending: it must not be modified afterwards)."""
        entry = PackEntry(blob_type, blob_id, self.size, len(blob))
        self._pending.append(blob)
        self._pending_bytes += len(blob)
        if self._pending_bytes >= WRITE_BATCH:
            self._flush()
        self.size += len(blob)
        self.entries.append(entry)
        return entry

    def add_frame(self, members: t.Sequence[tuple[int, bytes]], blob: bytes | bytearray | memoryview) -> list[PackEntry]:
        """Append a frame; ``members`` are the (entry type, id) of the chunks in it (GC copies a frame with only
        its live chunks listed). One entry per chunk, all with the frame's place."""
        first = self.add(members[0][0], members[0][1], blob)
        more = [PackEntry(blob_type, cid, first.offset, first.length) for blob_type, cid in members]
        self.entries[-1:] = more
        return more

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_many(self._pending)
            self._pending, self._pending_bytes = [], 0

    def finish(self) -> int:
        """Write the header, fsync and publish the pack. Returns the final size."""
        self.write_header()
        self.commit()
        return self.size

    def write_header(self) -> None:
        """Append the sealed header and trailer (the pack is not yet durable nor visible)."""
        header = self._codec.seal_meta(b"pack:" + self.name.encode("ascii"), encode_header(self.entries))
        self._pending += [header, TRAILER.pack(len(header), PACK_END)]
        self._flush()
        self.size += len(header) + TRAILER.size

    def commit(self) -> None:
        """fsync and rename to the final name (may run in another thread than the writes)."""
        self._writer.commit()

    def abort(self) -> None:
        self._pending = []
        self._writer.abort()


def read_pack_header(
    backend: "Backend", codec: "BlobCodec", pack_name: str, size: int | None = None
) -> list[PackEntry]:
    """Read and check the header of a pack. Raises CorruptMetadataError or FileNotFoundError."""
    obj = pack_object_name(pack_name)
    what = f"pack {pack_name}"
    if size is None:
        size = backend.size(obj)
    if size < len(PACK_MAGIC) + TRAILER.size:
        raise CorruptMetadataError(f"The {what} is truncated ({size} bytes). Run prune to remove it after verify.")
    header_len, magic = TRAILER.unpack(backend.read_range(obj, size - TRAILER.size, TRAILER.size))
    if magic != PACK_END or header_len > size - len(PACK_MAGIC) - TRAILER.size:
        raise CorruptMetadataError(f"The {what} has a damaged trailer. Run verify and rebuild_index.")
    sealed = backend.read_range(obj, size - TRAILER.size - header_len, header_len)
    plain = codec.open_meta(b"pack:" + pack_name.encode("ascii"), sealed, f"header of {what}")
    entries = decode_header(plain, what)
    limit = size - TRAILER.size - header_len
    for entry in entries:
        if entry.offset < len(PACK_MAGIC) or entry.offset + entry.length > limit:
            raise CorruptMetadataError(f"The header of {what} lists a blob outside the pack. Run rebuild_index.")
    return entries
