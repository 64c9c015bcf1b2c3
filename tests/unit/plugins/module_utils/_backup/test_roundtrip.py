# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""restore(backup(x)) == x, full and incremental, byte for byte (property tests)."""

from __future__ import annotations

import io
import os
import random
import tempfile
import threading
import typing as t

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.chunker import FileRange, file_extents
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import InvalidArgumentError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import disk_digest
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository

from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    PASSPHRASE,
    make_image,
    make_repo,
)

CHUNK = 4096


def restore_bytes(repo: Repository, backup_id: str, disk: str, directory: str, sparse: bool = True) -> bytes:
    target = os.path.join(directory, f"restored-{backup_id}-{disk}")
    repo.restore(backup_id, disk, target, sparse=sparse)
    with open(target, "rb") as handle:
        data = handle.read()
    os.unlink(target)
    return data


def data_extents(image: bytes, granularity: int = 512) -> list[tuple[int, int, bytes]]:
    """Only the non-zero runs (like a hypervisor's allocation map), at ``granularity``."""
    extents: list[tuple[int, int, bytes]] = []
    for pos in range(0, len(image), granularity):
        block = image[pos : pos + granularity]
        if block.count(0) == len(block):
            continue
        if extents and extents[-1][0] + extents[-1][1] == pos:
            off, length, _data = extents[-1]
            extents[-1] = (off, length + len(block), image[off : pos + len(block)])
        else:
            extents.append((pos, len(block), block))
    return extents


segments = st.lists(
    st.tuples(st.sampled_from(["zero", "random", "text"]), st.integers(min_value=1, max_value=3 * CHUNK + 7)),
    max_size=12,
)


def build(parts: list[tuple[str, int]], seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    for kind, length in parts:
        if kind == "zero":
            out += bytes(length)
        elif kind == "random":
            out += rng.randbytes(length)
        else:
            out += (b"abcabcabd" * (length // 9 + 1))[:length]
    return bytes(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=segments,
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["whole", "data", "reader", "files"]),
    encryption=st.sampled_from(["aes-256-gcm", "none"]),
)
def test_full_roundtrip(parts: list[tuple[str, int]], seed: int, mode: str, encryption: str) -> None:
    image = build(parts, seed)
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(os.path.join(tmp, "repo"), encryption=encryption)
        if mode == "whole":
            extents: t.Any = [(0, len(image), image)] if image else []
        elif mode == "data":
            extents = data_extents(image)
        elif mode == "reader":
            extents = [(0, len(image), io.BytesIO(image))] if image else []
        path = os.path.join(tmp, "img")
        with open(path, "wb") as handle:
            handle.write(image)
        fd = os.open(path, os.O_RDONLY)
        try:
            if mode == "files":  # readers that fill many buffers at once: whole chunks go into slabs
                extents = [(off, length, FileRange(fd, off)) for off, length, _data in data_extents(image)]
            record = repo.backup("vm", [DiskSource("vda", len(image), extents)])
        finally:
            os.close(fd)
        assert restore_bytes(repo, record.id, "vda", tmp) == image
        assert record.disks[0].content_digest == disk_digest(path, CHUNK, 8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=segments,
    seed=st.integers(0, 2**16),
    writes=st.lists(
        st.tuples(st.floats(0, 1), st.integers(1, 2 * CHUNK + 3), st.sampled_from(["random", "zero"])), max_size=8
    ),
    grow=st.sampled_from([0, 0, 0, 1, -1]),
)
def test_incremental_equals_new_image(
    parts: list[tuple[str, int]], seed: int, writes: list[tuple[float, int, str]], grow: int
) -> None:
    old = build(parts, seed)
    rng = random.Random(seed + 1)
    new = bytearray(old)
    if grow > 0:
        new += rng.randbytes(rng.randint(1, 2 * CHUNK))
    elif grow < 0 and new:
        del new[rng.randint(0, len(new)) :]
    changed: list[tuple[int, int]] = []
    if grow > 0:
        changed.append((len(old), len(new) - len(old)))
    for where, length, kind in writes:
        if not new:
            break
        off = int(where * (len(new) - 1))
        length = min(length, len(new) - off)
        new[off : off + length] = rng.randbytes(length) if kind == "random" else bytes(length)
        changed.append((off, length))
    # merge into sorted non-overlapping extents, as a dirty bitmap would report
    changed.sort()
    merged: list[list[int]] = []
    for off, length in changed:
        if merged and off <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], off + length - merged[-1][0])
        else:
            merged.append([off, length])
    extents = [(off, length, bytes(new[off : off + length])) for off, length in merged]
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(os.path.join(tmp, "repo"))
        first = repo.backup("vm", [DiskSource("vda", len(old), [(0, len(old), old)] if old else [])])
        second = repo.backup("vm", [DiskSource("vda", len(new), extents)], parent=first.id)
        assert restore_bytes(repo, second.id, "vda", tmp) == bytes(new)
        assert restore_bytes(repo, first.id, "vda", tmp) == old
        assert repo.verify(read_data=True).ok
        path = os.path.join(tmp, "new.img")
        with open(path, "wb") as handle:
            handle.write(new)
        assert second.disks[0].content_digest == disk_digest(path, CHUNK, 8)


def test_sparse_restore_makes_holes(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    size = 64 * CHUNK * 16
    image = bytearray(size)
    image[5 * CHUNK : 6 * CHUNK] = os.urandom(CHUNK)
    image[-3:] = b"end"
    record = repo.backup("vm", [DiskSource("vda", size, [(0, size, bytes(image))])])
    target = tmp_path / "out.raw"
    repo.restore(record.id, "vda", str(target))
    assert target.read_bytes() == bytes(image)
    assert os.stat(target).st_blocks * 512 < size // 4, "zero chunks must be holes"
    dense = tmp_path / "dense.raw"
    repo.restore(record.id, "vda", str(dense), sparse=False)
    assert dense.read_bytes() == bytes(image)
    assert os.stat(dense).st_blocks * 512 >= size


def test_restore_to_fd_and_file_source(tmp_path: t.Any) -> None:
    rng = random.Random(3)
    image = make_image(rng, 200_003)
    src = tmp_path / "src.raw"
    src.write_bytes(image)
    repo = make_repo(str(tmp_path / "repo"))
    fd = os.open(src, os.O_RDONLY)
    try:
        record = repo.backup(
            "vm", [DiskSource("vda", len(image), file_extents(fd))], tags={"k": "v"}, vm_definition="<domain/>"
        )
    finally:
        os.close(fd)
    out = tmp_path / "out.raw"
    with open(out, "wb") as handle:
        repo.restore(record.id, "vda", handle.fileno())
    assert out.read_bytes() == image
    listed = Repository.open(LocalBackend(str(tmp_path / "repo")), PASSPHRASE).list()
    assert [r.id for r in listed] == [record.id]
    assert listed[0].tags == {"k": "v"} and listed[0].vm_definition == "<domain/>"
    assert listed[0].disks[0].size == len(image)


def test_file_extents_skips_holes(tmp_path: t.Any) -> None:
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
        handle.seek(4 * 1024 * 1024)
        handle.write(b"x" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(file_extents(fd))
        assert sum(length for _o, length, _r in extents) < 1024 * 1024
        assert any(off <= 4 * 1024 * 1024 < off + length for off, length, _r in extents)
        assert isinstance(extents[0][2], FileRange)
    finally:
        os.close(fd)


def test_multiple_disks_and_dedup(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    data = os.urandom(40 * CHUNK)
    first = repo.backup(
        "vm", [DiskSource("a", len(data), [(0, len(data), data)]), DiskSource("b", len(data), [(0, len(data), data)])]
    )
    assert first.stats["new_blobs"] <= 40 + 10  # the second disk is deduplicated against the first
    again = repo.backup("vm", [DiskSource("a", len(data), [(0, len(data), data)])])
    assert again.stats["new_bytes"] < 10_000  # only a map segment or nothing
    for rec in (first, again):
        assert restore_bytes(repo, rec.id, "a", str(tmp_path)) == data


@pytest.mark.parametrize(
    "extents, message",
    [
        ([(10, 5, b"12345"), (12, 5, b"12345")], "sorted"),
        ([(0, 5, b"1234")], "announces"),
        ([(95, 10, b"0123456789")], "beyond"),
    ],
)
def test_bad_extents_are_refused(repo: Repository, extents: t.Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        repo.backup("vm", [DiskSource("vda", 100, extents)])
    assert repo.list() == []


def test_incremental_reads_only_touched_segments(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(str(tmp_path / "repo"))  # 8 chunks of 4 KiB per map segment
    image = os.urandom(CHUNK * 8 * 20)  # 20 segments
    first = repo.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])])
    reads: list[str] = []
    original = Repository.read_map

    def counting(self: Repository, seg_id: str, *args: t.Any) -> t.Any:
        reads.append(seg_id)
        return original(self, seg_id, *args)

    monkeypatch.setattr(Repository, "read_map", counting)
    change = os.urandom(100)
    second = repo.backup("vm", [DiskSource("vda", len(image), [(CHUNK * 8 * 7 + 5, 100, change)])], parent=first.id)
    assert len(reads) == 1, "only the changed segment's parent map may be read"
    assert sum(a != b for a, b in zip(first.disks[0].segments, second.disks[0].segments)) == 1
    assert second.stats["new_blobs"] == 2  # the changed chunk and its segment
    new = bytearray(image)
    new[CHUNK * 8 * 7 + 5 : CHUNK * 8 * 7 + 105] = change
    assert restore_bytes(repo, second.id, "vda", str(tmp_path)) == bytes(new)
    assert second.disks[0].stored_chunks == 160


def test_restore_without_direct_io(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffered path (filesystems without O_DIRECT) restores the same bytes."""
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup import restore as restore_unit

    monkeypatch.setattr(restore_unit, "_open_direct", lambda fd, chunk_size: None)
    repo = make_repo(str(tmp_path / "repo"))
    image = make_image(random.Random(9), 123_457)
    record = repo.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])])
    assert restore_bytes(repo, record.id, "vda", str(tmp_path)) == image


def test_fragmented_extents_read_into_slabs_neither_stall_nor_mix_up(tmp_path: t.Any) -> None:
    """Extents of two chunks, the second of them zero: every slab keeps one chunk out while the engine works, so a
    pool that counted slabs rather than chunks would run dry and stall. The backup finishes and restores exactly."""
    chunks = 3000
    image = bytearray(chunks * CHUNK)
    rng = random.Random(5)
    for start in range(0, chunks, 2):
        image[start * CHUNK:(start + 1) * CHUNK] = rng.randbytes(CHUNK)
    path = tmp_path / "img"
    path.write_bytes(image)
    repo = make_repo(str(tmp_path / "repo"))
    fd = os.open(path, os.O_RDONLY)
    result: list[t.Any] = []

    def run() -> None:
        extents = [(start * CHUNK, 2 * CHUNK, FileRange(fd, start * CHUNK)) for start in range(0, chunks, 2)]
        result.append(repo.backup("vm", [DiskSource("vda", len(image), extents)]))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(120)
    os.close(fd)
    assert not worker.is_alive(), "the backup stalled"
    assert result and restore_bytes(repo, result[0].id, "vda", str(tmp_path)) == bytes(image)
    assert result[0].disks[0].zero_chunks == chunks // 2
