# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Backup manifests, per-disk chunk maps and the disk content digest.

PRIVATE to this collection; no compatibility guarantees.

A disk of ``size`` bytes is cut into fixed chunks of ``chunk_size`` bytes aligned to
disk offsets (the last one may be short). Chunk ``i`` covers ``[i*chunk_size,
min((i+1)*chunk_size, size))``. The ordered chunk list is stored in *map segments*
of ``segment_chunks`` consecutive chunks; each segment is a blob (type 1) in a pack.
Unchanged segments are shared between backups, so an incremental backup stores only
the segments it touches.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import struct
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import CorruptMetadataError

MAP_MAGIC = b"VMSMAP01"
MAP_HEAD = struct.Struct("<8sQII")  # magic, first chunk index, chunk size, record count
RECORD = struct.Struct("<32s32sI")  # id, sha256(plaintext), length (0 = hole)
MANIFEST_VERSION = 1
DIGEST_ALGORITHM = "sha256-of-segment-sha256"


#: 1 PiB: larger "disks" in a manifest are damage or an attack (restore would create them sparse)
MAX_DISK_SIZE = 1 << 50
HEX64 = re.compile(r"[0-9a-f]{64}")
_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def path_component(name: str) -> str:
    """A VM or disk name from a manifest made safe to join into a file path (it may come from a forged manifest
    of an unencrypted repository): separators, control characters and dot names are replaced, length bounded."""
    safe = _BAD_NAME.sub("_", name)[:200]
    return "_" + safe if safe in ("", ".", "..") or safe.startswith(".") else safe


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_length(index: int, size: int, chunk_size: int) -> int:
    return min(chunk_size, size - index * chunk_size)


class MapSegment:
    """Records for chunks ``first .. first+count-1`` in one flat buffer (68 bytes each)."""

    __slots__ = ("first", "count", "chunk_size", "buf")

    def __init__(self, first: int, count: int, chunk_size: int, buf: bytearray | None = None) -> None:
        self.first = first
        self.count = count
        self.chunk_size = chunk_size
        self.buf = buf if buf is not None else bytearray(count * RECORD.size)

    def get(self, index: int) -> tuple[bytes, bytes, int] | None:
        """Return (id, sha256, length) of chunk ``index`` (absolute), or None for a hole."""
        pos = (index - self.first) * RECORD.size
        blob_id, sha, length = RECORD.unpack_from(self.buf, pos)
        if length == 0:
            return None
        return blob_id, sha, length

    def set(self, index: int, blob_id: bytes, sha: bytes, length: int) -> None:
        RECORD.pack_into(self.buf, (index - self.first) * RECORD.size, blob_id, sha, length)

    def clear(self, index: int) -> None:
        pos = (index - self.first) * RECORD.size
        self.buf[pos : pos + RECORD.size] = bytes(RECORD.size)

    def iter_stored(self) -> t.Iterator[tuple[int, bytes, bytes, int]]:
        """Yield (absolute index, id, sha256, length) of every non-hole chunk, in order."""
        first = self.first
        for i, (blob_id, sha, length) in enumerate(RECORD.iter_unpack(self.buf)):
            if length:
                yield first + i, blob_id, sha, length

    def stored_count(self) -> int:
        """Number of non-hole records (a record is a hole when its 4-byte length is zero).

        OR-ing the four length bytes of every record as big integers counts them without a Python loop
        over 16384 records, which an incremental does for every segment it touches.
        """
        count = len(self.buf) // RECORD.size
        if not count:
            return 0
        start = RECORD.size - 4
        merged = 0
        for k in range(4):
            merged |= int.from_bytes(self.buf[start + k::RECORD.size], "big")
        return count - merged.to_bytes(count, "big").count(0)

    def encode(self) -> bytes:
        return MAP_HEAD.pack(MAP_MAGIC, self.first, self.chunk_size, self.count) + bytes(self.buf)

    @classmethod
    def decode(cls, data: bytes, what: str) -> "MapSegment":
        if len(data) < MAP_HEAD.size:
            raise CorruptMetadataError(f"The chunk map {what} is damaged (too short).")
        magic, first, chunk_size, count = MAP_HEAD.unpack_from(data)
        if magic != MAP_MAGIC or len(data) != MAP_HEAD.size + count * RECORD.size:
            raise CorruptMetadataError(f"The chunk map {what} is damaged (bad header).")
        return cls(first, count, chunk_size, bytearray(data[MAP_HEAD.size :]))


_ZERO_SHA: dict[int, bytes] = {}


def zero_sha(length: int) -> bytes:
    """SHA-256 of ``length`` zero bytes (memoised: only a handful of lengths occur)."""
    digest = _ZERO_SHA.get(length)
    if digest is None:
        digest = _ZERO_SHA[length] = hashlib.sha256(bytes(length)).digest()
    return digest


def segment_digest(seg_map: "MapSegment | None", seg_no: int, size: int, chunk_size: int, segment_chunks: int) -> bytes:
    """SHA-256 over the SHA-256 of each chunk of segment ``seg_no`` (holes hash as zero chunks).

    ``seg_map`` None means the whole segment is holes.
    """
    first = seg_no * segment_chunks
    count = min(segment_chunks, chunk_count(size, chunk_size) - first)
    zero_full = zero_sha(chunk_size)
    if seg_map is None:
        parts = [zero_full] * count
    else:
        parts = [sha if length else zero_full for _bid, sha, length in RECORD.iter_unpack(seg_map.buf)]
    last = first + count - 1
    if count and chunk_length(last, size, chunk_size) != chunk_size and (seg_map is None or seg_map.get(last) is None):
        parts[-1] = zero_sha(chunk_length(last, size, chunk_size))  # a short last chunk that is a hole
    return hashlib.sha256(b"".join(parts)).digest()


def combine_digests(segment_digests: t.Sequence[bytes]) -> str:
    """The disk's content digest: SHA-256 over the segment digests, in order."""
    return hashlib.sha256(b"".join(segment_digests)).hexdigest()


def disk_digest(path: str, chunk_size: int, segment_chunks: int) -> str:
    """Compute the content digest a manifest stores for a disk, from an image file."""
    digests = []
    with open(path, "rb") as handle:
        while True:
            inner = hashlib.sha256()
            count = 0
            while count < segment_chunks:
                data = handle.read(chunk_size)
                if not data:
                    break
                inner.update(hashlib.sha256(data).digest())
                count += 1
            if not count:
                break
            digests.append(inner.digest())
    return combine_digests(digests)


@dataclasses.dataclass
class DiskRecord:
    """One disk in a backup."""

    name: str
    size: int
    chunk_size: int
    segment_chunks: int
    content_digest: str
    segments: list[str | None]
    segment_digests: list[str] = dataclasses.field(default_factory=list)
    stored_chunks: int = 0
    zero_chunks: int = 0

    def to_json(self) -> dict[str, t.Any]:
        return {
            "name": self.name,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "segment_chunks": self.segment_chunks,
            "content_digest": {"algorithm": DIGEST_ALGORITHM, "value": self.content_digest},
            "segments": self.segments,
            "segment_digests": self.segment_digests,
            "stored_chunks": self.stored_chunks,
            "zero_chunks": self.zero_chunks,
        }

    @classmethod
    def from_json(cls, doc: t.Mapping[str, t.Any]) -> "DiskRecord":
        record = cls(
            name=str(doc["name"]),
            size=int(doc["size"]),
            chunk_size=int(doc["chunk_size"]),
            segment_chunks=int(doc["segment_chunks"]),
            content_digest=str(doc["content_digest"]["value"]),
            segments=[None if s is None else str(s) for s in doc["segments"]],
            segment_digests=[str(d) for d in doc["segment_digests"]],
            stored_chunks=int(doc.get("stored_chunks", 0)),
            zero_chunks=int(doc.get("zero_chunks", 0)),
        )
        if not record.name or "\x00" in record.name:
            raise ValueError("empty disk name")
        if not 0 <= record.size <= MAX_DISK_SIZE:
            raise ValueError(f"disk size {record.size} outside 0..{MAX_DISK_SIZE}")
        if not 4096 <= record.chunk_size <= 1 << 24 or record.chunk_size & (record.chunk_size - 1):
            raise ValueError(f"chunk size {record.chunk_size}")
        if not 1 <= record.segment_chunks <= 1 << 20:
            raise ValueError(f"segment size {record.segment_chunks}")
        for value in record.segment_digests + [record.content_digest] + [s for s in record.segments if s]:
            if not HEX64.fullmatch(value):
                raise ValueError("a digest or segment id is not 64 hex digits")
        return record


@dataclasses.dataclass
class BackupRecord:
    """A backup as listed by Repository.list(). ``time`` is timezone-aware UTC."""

    id: str
    vm_name: str
    time: datetime.datetime
    disks: list[DiskRecord]
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    parent: str | None = None
    vm_definition: str = ""
    stats: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    #: token of the lock the manifest was committed under ("" in manifests made before it was recorded)
    lock: str = ""

    @property
    def size(self) -> int:
        """Total virtual size of all disks."""
        return sum(d.size for d in self.disks)

    def disk(self, name: str) -> DiskRecord | None:
        for disk in self.disks:
            if disk.name == name:
                return disk
        return None

    def to_json(self) -> dict[str, t.Any]:
        return {
            "version": MANIFEST_VERSION,
            "id": self.id,
            "vm_name": self.vm_name,
            "time": self.time.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "tags": dict(self.tags),
            "parent": self.parent,
            "vm_definition": self.vm_definition,
            "size": self.size,
            "disks": [d.to_json() for d in self.disks],
            "stats": dict(self.stats),
            **({"lock": self.lock} if self.lock else {}),
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, what: str) -> "BackupRecord":
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unsupported manifest version {doc.get('version')}")
            when = parse_time(doc["time"])
            record = cls(
                id=str(doc["id"]),
                vm_name=str(doc["vm_name"]),
                time=when,
                disks=[DiskRecord.from_json(d) for d in doc["disks"]],
                tags={str(k): str(v) for k, v in doc.get("tags", {}).items()},
                parent=doc.get("parent"),
                vm_definition=str(doc.get("vm_definition", "")),
                stats=dict(doc.get("stats", {})),
                lock=str(doc.get("lock", "")),
            )
            if not record.vm_name:
                raise ValueError("empty VM name")
            if len({d.name for d in record.disks}) != len(record.disks):
                raise ValueError("two disks of the same name")
            return record
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise CorruptMetadataError(f"The {what} is damaged ({exc}); that backup cannot be restored.") from None


def utcnow() -> datetime.datetime:
    """The time backups are stamped with: now, in UTC."""
    return datetime.datetime.now(datetime.timezone.utc)


def parse_time(text: str) -> datetime.datetime:
    """A manifest's time, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, as an aware UTC datetime. Raises ValueError/TypeError.

    fromisoformat when the text has exactly that shape (it avoids importing _strptime: start-up time), strptime
    (which names the mismatch) otherwise.
    """
    if isinstance(text, str) and len(text) == 27 and text[10] == "T" and text[19] == "." and text[20:26].isdigit() \
            and text[-1] == "Z":
        when = datetime.datetime.fromisoformat(text[:-1])
    else:
        when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return when.replace(tzinfo=datetime.timezone.utc)
