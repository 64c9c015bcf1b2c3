# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The engine writes qcow2 images directly: QEMU reads them back as the disk (qemu-img check, compare, map)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import qcow2
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import restore as restore_unit
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.chunker import file_extents
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import CorruptChunkError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource

from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import make_image, make_repo

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")

MIB = 1024 * 1024


def _image(path: str, size: int, pieces: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in pieces:
            handle.seek(offset)
            handle.write(data)


def _backup_and_restore(tmp_path: t.Any, raw: str, chunk_size: int) -> str:
    repo = make_repo(str(tmp_path / f"repo-{chunk_size}"), chunk_size=chunk_size, segment_chunks=64)
    try:
        fd = os.open(raw, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            record = repo.backup("vm", [DiskSource("vda", size, file_extents(fd, size))])
        finally:
            os.close(fd)
        out = str(tmp_path / f"restored-{chunk_size}.qcow2")
        disk = record.disk("vda")
        restore_unit.restore(repo, record.id, "vda", out, layout=qcow2.Qcow2Layout(disk.size, disk.chunk_size))
    finally:
        repo.close()
    return out


def _check(raw: str, image: str) -> None:
    check = subprocess.run(["qemu-img", "check", "--output=json", image], capture_output=True, text=True, check=False)
    report = json.loads(check.stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, image], capture_output=True,
                             text=True, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr


@pytest.mark.parametrize("chunk_size", [4096, 65536, 4 * MIB])
def test_restored_qcow2_equals_the_disk(tmp_path: t.Any, chunk_size: int) -> None:
    """Mixed data, zero runs, a last chunk shorter than the others; 4 KiB chunks span several L2 tables and 4 MiB
    chunks several (2 MiB) clusters each."""
    rng = random.Random(chunk_size)
    size = 9 * MIB + 3 * 512
    raw = str(tmp_path / "disk.img")
    _image(raw, size, [(0, make_image(rng, 300000)), (3 * MIB - 100, rng.randbytes(5000)),
                       (8 * MIB, make_image(rng, size - 8 * MIB))])
    image = _backup_and_restore(tmp_path, raw, chunk_size)
    _check(raw, image)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True, text=True,
                                     check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == size
    assert info["cluster-size"] == min(chunk_size, 2 * MIB)


def test_zero_chunks_take_no_space(tmp_path: t.Any) -> None:
    """A 1.5 GiB disk (three L2 regions of 64 KiB clusters) with 300 KB of data: the image holds only that data."""
    rng = random.Random(7)
    size = 1536 * MIB + 512
    pieces = [(0, rng.randbytes(100000)), (512 * MIB - 4096, rng.randbytes(8192)), (700 * MIB, rng.randbytes(100000)),
              (size - 1000, rng.randbytes(1000))]
    raw = str(tmp_path / "sparse.img")
    _image(raw, size, pieces)
    image = _backup_and_restore(tmp_path, raw, 65536)
    _check(raw, image)
    mapped = json.loads(subprocess.run(["qemu-img", "map", "--output=json", image], capture_output=True, text=True,
                                       check=True).stdout)
    allocated = sum(e["length"] for e in mapped if e["data"])
    assert allocated <= 8 * 65536  # 2 + 2 (across 512 MiB) + 2 + 2 (the tail) chunks at most, far from 1.5 GiB
    assert os.path.getsize(image) < 2 * MIB  # data + header + 3 L2 tables + L1 + refcounts


def test_failed_restore_leaves_no_image(tmp_path: t.Any) -> None:
    """A damaged chunk fails the restore before the header is written; the partial file is removed."""
    rng = random.Random(3)
    raw = str(tmp_path / "disk.img")
    _image(raw, 2 * MIB, [(0, rng.randbytes(2 * MIB))])
    repo = make_repo(str(tmp_path / "repo"), chunk_size=65536, segment_chunks=64)
    try:
        fd = os.open(raw, os.O_RDONLY)
        record = repo.backup("vm", [DiskSource("vda", 2 * MIB, file_extents(fd, 2 * MIB))])
        os.close(fd)
        packs = [os.path.join(root, name) for root, _dirs, names in os.walk(str(tmp_path / "repo" / "packs"))
                 for name in names]
        pack = max(packs, key=os.path.getsize)  # the data (2 MiB of random bytes), not the small map
        with open(pack, "r+b") as handle:  # flip a byte in its middle: that blob fails authentication
            handle.seek(os.path.getsize(pack) // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
        out = str(tmp_path / "out.qcow2")
        with pytest.raises(CorruptChunkError):
            restore_unit.restore(repo, record.id, "vda", out, layout=qcow2.Qcow2Layout(2 * MIB, 65536))
    finally:
        repo.close()
    assert not [name for name in os.listdir(tmp_path) if name.startswith("out.qcow2")]


def test_unsupported_shapes_fall_back() -> None:
    assert qcow2.supported(65536, 4096 * MIB)
    assert not qcow2.supported(65536, 4096 * MIB + 100)  # QEMU images are whole sectors
    assert not qcow2.supported(256, MIB)
    with pytest.raises(ValueError):
        qcow2.Qcow2Layout(100, 65536)
