# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The blob index: where each blob lives (pack, offset, length).

PRIVATE to this collection; no compatibility guarantees.

Index files ``index/<64 hex>`` are sealed metadata objects (context ``b"index:" + name``)
holding::

    b"VMSIDX01" | u32 pack count | per pack: 32-byte pack name | u32 entry count |
                  entries (u8 type | 32-byte id | u64 offset | u32 length)

Several index files may list the same blob (after an interrupted prune); any
listed location is valid. The index can always be rebuilt from the pack headers.
"""

from __future__ import annotations

import struct
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import CorruptMetadataError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import ENTRY, PackEntry

INDEX_MAGIC = b"VMSIDX01"


class Location(t.NamedTuple):
    """Where a blob is stored."""

    pack: str
    offset: int
    length: int
    blob_type: int


class Index:
    """In-memory map blob id -> location. Pack names are interned in a list."""

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        # id -> (pack number, offset, length, type); tuples of small ints keep this compact
        self._entries: dict[bytes, tuple[int, int, int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._entries

    def _intern(self, pack: str) -> int:
        number = self._pack_no.get(pack)
        if number is None:
            number = len(self._packs)
            self._packs.append(pack)
            self._pack_no[pack] = number
        return number

    def add(self, pack: str, entry: PackEntry) -> None:
        self._entries[entry.blob_id] = (self._intern(pack), entry.offset, entry.length, entry.blob_type)

    def add_pack(self, pack: str, entries: t.Iterable[PackEntry]) -> None:
        number = self._intern(pack)
        for entry in entries:
            self._entries[entry.blob_id] = (number, entry.offset, entry.length, entry.blob_type)

    def add_raw(self, pack: str, entries: bytes | memoryview) -> None:
        """Add packed index entries (u8 type | id | u64 offset | u32 length) without per-entry objects."""
        number = self._intern(pack)
        target = self._entries
        for blob_type, blob_id, offset, length in ENTRY.iter_unpack(entries):
            target[blob_id] = (number, offset, length, blob_type)

    def get(self, blob_id: bytes) -> Location | None:
        value = self._entries.get(blob_id)
        if value is None:
            return None
        return Location(self._packs[value[0]], value[1], value[2], value[3])

    def ids(self) -> t.Iterator[bytes]:
        return iter(self._entries)

    def packs(self) -> dict[str, list[PackEntry]]:
        """Return pack name -> entries currently mapped to that pack."""
        result: dict[str, list[PackEntry]] = {}
        for blob_id, (number, offset, length, blob_type) in self._entries.items():
            result.setdefault(self._packs[number], []).append(PackEntry(blob_type, blob_id, offset, length))
        return result


def encode_index(packs: t.Mapping[str, t.Sequence[PackEntry]]) -> bytes:
    parts = [INDEX_MAGIC, struct.pack("<I", len(packs))]
    for pack, entries in packs.items():
        parts.append(bytes.fromhex(pack))
        parts.append(struct.pack("<I", len(entries)))
        parts.extend(ENTRY.pack(e.blob_type, e.blob_id, e.offset, e.length) for e in entries)
    return b"".join(parts)


def iter_index_raw(data: bytes, what: str) -> t.Iterator[tuple[str, memoryview]]:
    """Yield (pack name, packed entries) of an index file's plaintext. Raises CorruptMetadataError."""
    view = memoryview(data)
    try:
        if bytes(view[:8]) != INDEX_MAGIC:
            raise ValueError("bad magic")
        (npacks,) = struct.unpack_from("<I", data, 8)
        pos = 12
        parts = []
        for _unused in range(npacks):
            pack = bytes(view[pos : pos + 32]).hex()
            (count,) = struct.unpack_from("<I", data, pos + 32)
            pos += 36
            end = pos + count * ENTRY.size
            if end > len(data):
                raise ValueError("truncated")
            parts.append((pack, view[pos:end]))
            pos = end
        if pos != len(data):
            raise ValueError("trailing data")
    except (ValueError, struct.error) as exc:
        raise CorruptMetadataError(
            f"The {what} is damaged ({exc}). Run rebuild_index to recreate it from the packs."
        ) from None
    return iter(parts)


def decode_index(data: bytes, what: str) -> dict[str, list[PackEntry]]:
    """Parse an index file's plaintext. Raises CorruptMetadataError."""
    try:
        if data[:8] != INDEX_MAGIC:
            raise ValueError("bad magic")
        (npacks,) = struct.unpack_from("<I", data, 8)
        pos = 12
        result: dict[str, list[PackEntry]] = {}
        for _unused in range(npacks):
            pack = data[pos : pos + 32].hex()
            (count,) = struct.unpack_from("<I", data, pos + 32)
            pos += 36
            end = pos + count * ENTRY.size
            if end > len(data):
                raise ValueError("truncated")
            result[pack] = [PackEntry(*ENTRY.unpack_from(data, pos + i * ENTRY.size)) for i in range(count)]
            pos = end
        if pos != len(data):
            raise ValueError("trailing data")
        return result
    except (ValueError, struct.error) as exc:
        raise CorruptMetadataError(
            f"The {what} is damaged ({exc}). Run rebuild_index to recreate it from the packs."
        ) from None
