# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Frames (format version 2): several new chunks compressed together, each chunk still its own blob to every reader."""

from __future__ import annotations

import collections
import os
import random
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.config import encode_config, new_config, parse_config
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import BlobCodec, KeyMaterial
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    CorruptChunkError,
    IntegrityError,
    InvalidArgumentError,
    RepositoryFormatError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import Index
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    BLOB_DATA,
    BLOB_MAP,
    member_slot,
    member_type,
    pack_object_name,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    FAST_KDF,
    PASSPHRASE,
    make_image,
    make_repo,
)


def text_image(seed: int, size: int) -> bytes:
    """Text from a small vocabulary with 16 random bytes every 512 (as the benchmark image): no chunk repeats, and
    chunks compressed together find more than each on its own."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _i in range(rng.randint(3, 10))) for _w in range(500)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _i in range(12)) + b"\n"
    for pos in range(0, size, 512):
        out[pos : pos + 16] = rng.randbytes(16)
    return bytes(out[:size])


def backup_image(repo: Repository, vm: str, image: bytes, parent: str | None = None, extents: t.Any = None) -> t.Any:
    return repo.backup(vm, [DiskSource("vda", len(image), extents or [(0, len(image), image)])], parent=parent)


def restored(repo: Repository, backup_id: str, tmp_path: t.Any) -> bytes:
    out = tmp_path / f"{backup_id}.raw"
    repo.restore(backup_id, "vda", str(out))
    return out.read_bytes()


def entry_kinds(repo: Repository) -> collections.Counter:
    return collections.Counter(
        "member" if member_slot(e.blob_type) is not None else e.blob_type
        for entries in repo.load_index().packs().values() for e in entries
    )


def framed_entries(repo: Repository) -> list[tuple[str, t.Any]]:
    return [(pack, e) for pack, entries in repo.load_index().packs().items() for e in entries
            if member_slot(e.blob_type) is not None]


def test_new_repositories_store_frames_and_store_less_than_version_1(tmp_path: t.Any) -> None:
    image = text_image(1, 2 * 1024 * 1024) + bytes(256 * 1024) + os.urandom(300_000)
    stored = {}
    for version in (1, 2):
        repo = make_repo(str(tmp_path / f"v{version}"), chunk_size=65536, format_version=version)
        assert repo.config["version"] == version
        record = backup_image(repo, "vm", image)
        stored[version] = record.stats["new_bytes"]
        kinds = entry_kinds(repo)
        assert bool(kinds["member"]) == (version == 2), kinds
        assert restored(repo, record.id, tmp_path) == image
        report = repo.verify(read_data=True)
        assert report.ok and report.chunks_checked == len(image[: 2 * 1024 * 1024]) // 65536 + 5
    # 32 text chunks in frames of 16 against 32 alone; the random and zero data is stored the same way
    assert stored[2] < stored[1] - 20_000, stored


def test_restore_batches_that_run_on_to_the_end_of_a_frame(tmp_path: t.Any) -> None:
    """A zero chunk first puts the backup's frames (16 chunks, zeros counted) across the restore's batches (16 stored
    chunks): a batch runs on to the end of its last frame, and its direct write of 31 chunks must fit the buffer
    (vm_restore failed with "mmap slice assignment is wrong size" in the benchmark)."""
    repo = make_repo(str(tmp_path / "repo"), chunk_size=65536)
    image = bytes(65536) + text_image(11, 40 * 65536)
    record = backup_image(repo, "vm", image)
    assert len({e.offset for _p, e in framed_entries(repo)}) == 3
    assert restored(repo, record.id, tmp_path) == image


def test_frames_hold_whole_compressible_chunks_only(tmp_path: t.Any) -> None:
    """Random (incompressible) 64 KiB chunks and a disk's short last chunk are stored alone."""
    repo = make_repo(str(tmp_path / "repo"), chunk_size=65536)
    image = os.urandom(4 * 65536) + text_image(2, 4 * 65536) + text_image(3, 1000)
    record = backup_image(repo, "vm", image)
    members = framed_entries(repo)
    assert len(members) == 4 and len({(e.offset, e.length) for _p, e in members}) == 1
    assert sorted(member_slot(e.blob_type) for _p, e in members) == [0, 1, 2, 3]
    assert entry_kinds(repo)[BLOB_DATA] == 5
    assert restored(repo, record.id, tmp_path) == image


def test_incremental_takes_partial_chunks_from_a_parent_frame(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    image = make_image(random.Random(3), 300_000)
    full = backup_image(repo, "vm", image)
    assert framed_entries(repo)
    changed = bytearray(image)
    extents = []
    for offset in (100, 5000, 70_001, 299_990):
        patch = os.urandom(7)
        changed[offset : offset + 7] = patch
        extents.append((offset, 7, patch))
    incr = backup_image(repo, "vm", bytes(changed), parent=full.id, extents=extents)
    assert restored(repo, incr.id, tmp_path) == bytes(changed)
    assert restored(repo, full.id, tmp_path) == image


def test_read_blob_opens_a_frame_once_for_its_chunks(tmp_path: t.Any, monkeypatch: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    image = text_image(4, 64 * 4096)
    backup_image(repo, "vm", image)
    index = repo.load_index()
    members = sorted(framed_entries(repo), key=lambda pe: (pe[1].offset, pe[1].blob_type))
    frames = {(pack, entry.offset) for pack, entry in members}
    assert len(members) == 64 and 1 < len(frames) < 64
    chunks = {repo.codec.hash_and_id(image[i : i + 4096])[1]: image[i : i + 4096] for i in range(0, len(image), 4096)}
    opened = []
    real = repo.codec.open_frame
    monkeypatch.setattr(repo.codec, "open_frame", lambda blob: opened.append(1) or real(blob))
    for _pack, entry in members:
        assert repo.read_blob(BLOB_DATA, entry.blob_id, index, 4096) == chunks[entry.blob_id]
    assert len(opened) == len(frames)


def test_gc_copies_a_frame_once_listing_only_its_live_chunks(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    old = text_image(5, 256 * 4096)  # four frames of 64 chunks
    backup_image(repo, "old", old)
    backup_image(repo, "old", os.urandom(4096))
    keep_image = old[: 5 * 4096] + text_image(6, 20 * 4096)  # shares the first five chunks of the first frame
    keep = backup_image(repo, "keep", keep_image)
    shared = {e.blob_id: e for _p, e in framed_entries(repo)}
    result = repo.prune(RetentionPolicy(keep_last=1), vm_name="old")
    assert len(result.pruned) == 1
    result = repo.gc() if not result.packs_repacked else result
    assert result.packs_repacked >= 1
    members = framed_entries(repo)
    by_place = collections.defaultdict(list)
    for pack, entry in members:
        by_place[(pack, entry.offset)].append(entry)
    first_frame = [entries for entries in by_place.values() if len(entries) == 5]
    assert len(first_frame) == 1, {k: len(v) for k, v in by_place.items()}
    assert sorted(member_slot(e.blob_type) for e in first_frame[0]) == [0, 1, 2, 3, 4]
    assert all(shared[e.blob_id].blob_type == e.blob_type for e in first_frame[0])
    assert restored(repo, keep.id, tmp_path) == keep_image
    assert repo.verify(read_data=True).ok


def test_rebuild_index_restores_the_entries_of_frames(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    image = make_image(random.Random(7), 400_000)
    record = backup_image(repo, "vm", image)
    before = sorted((p, tuple(e)) for p, e in framed_entries(repo))
    for name, _size in repo.backend.list("index"):
        repo.backend.delete(name)
    repo.rebuild_index()
    assert sorted((p, tuple(e)) for p, e in framed_entries(repo)) == before and before
    assert restored(repo, record.id, tmp_path) == image


def flip_in_first_frame(repo: Repository) -> tuple[str, list[t.Any]]:
    pack, entry = framed_entries(repo)[0]
    members = [e for p, e in framed_entries(repo) if p == pack and e.offset == entry.offset]
    path = repo.backend.local_path(pack_object_name(pack))
    with open(path, "r+b") as handle:
        handle.seek(entry.offset + entry.length // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    return pack, members


@pytest.mark.parametrize("encryption", ["aes-256-gcm", "none"])
def test_a_damaged_frame_names_every_chunk_in_it(tmp_path: t.Any, encryption: str) -> None:
    repo = make_repo(str(tmp_path / "repo"), encryption=encryption)
    image = make_image(random.Random(8), 300_000)
    record = backup_image(repo, "vm", image)
    _pack, members = flip_in_first_frame(repo)
    report = repo.verify(read_data=True)
    damaged = {d.chunk_id for d in report.damaged}
    ids = {e.blob_id.hex() for e in members}
    assert len(members) > 1 and damaged and damaged <= ids
    if encryption != "none":
        assert damaged == ids  # the frame fails authentication: every chunk in it is named

    with pytest.raises(CorruptChunkError):
        restored(repo, record.id, tmp_path)


def codec_and_frame(encrypted: bool = True) -> tuple[BlobCodec, list[bytes], list[bytes], bytearray]:
    codec = BlobCodec(KeyMaterial.generate() if encrypted else None, 2, 4096)
    chunks = [text_image(seed, 4096) for seed in range(10, 14)]
    ids = [codec.hash_and_id(c)[1] for c in chunks]
    return codec, chunks, ids, codec.seal_frame(chunks)


def test_codec_frame_members_check_their_own_ids() -> None:
    codec, chunks, ids, frame = codec_and_frame()
    for slot, (chunk, cid) in enumerate(zip(chunks, ids)):
        assert codec.open(member_type(slot), cid, bytes(frame), 4096) == chunk
    # another chunk's slot, a slot past the end, a wrong length, a frame read as a single blob
    with pytest.raises(IntegrityError, match="does not match its id"):
        codec.open(member_type(1), ids[0], bytes(frame))
    with pytest.raises(IntegrityError, match="no chunk at slot 4"):
        codec.open(member_type(4), ids[0], bytes(frame))
    with pytest.raises(IntegrityError, match="wrong length"):
        codec.open(member_type(0), ids[0], bytes(frame), 4000)
    with pytest.raises(IntegrityError, match="authentication"):
        codec.open(BLOB_DATA, ids[0], bytes(frame))
    # a single blob presented as a frame
    single = codec.seal(BLOB_DATA, ids[0], chunks[0])
    with pytest.raises(IntegrityError, match="authentication"):
        codec.open(member_type(0), ids[0], bytes(single))


def test_codec_frames_of_another_repository_or_swapped_frames_do_not_open() -> None:
    codec, _chunks, ids, frame = codec_and_frame()
    other, _c, _i, other_frame = codec_and_frame()
    with pytest.raises(IntegrityError, match="authentication"):
        codec.open_frame(bytes(other_frame))
    # an authentic frame in the place of another: the chunk ids catch it
    second = codec.seal_frame([text_image(seed, 4096) for seed in range(20, 22)])
    with pytest.raises(IntegrityError, match="does not match its id"):
        codec.open(member_type(0), ids[0], bytes(second))


def test_codec_refuses_a_frame_that_expands_past_the_limit_or_is_not_whole_chunks() -> None:
    import zstandard  # pylint: disable=import-outside-toplevel

    codec = BlobCodec(None, 2, 4096)
    bomb = b"\x01" + zstandard.ZstdCompressor().compress(bytes(4096 * (codec.frame_slots + 1)))
    with pytest.raises(IntegrityError, match="more than"):
        codec.open_frame(bomb)
    # the same for a single blob: a stated size is checked before anything is allocated (found with frames)
    huge = b"\x01" + zstandard.ZstdCompressor().compress(bytes(50_000_000))
    with pytest.raises(IntegrityError, match="states a size of 50000000 bytes"):
        codec.open(BLOB_DATA, bytes(32), huge, 4096)
    with pytest.raises(IntegrityError, match="states a size of 50000000 bytes"):
        codec.open(BLOB_DATA, bytes(32), huge)
    unsized = b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(bytes(50_000_000))
    with pytest.raises(IntegrityError, match="decompression failed"):
        codec.open(BLOB_DATA, bytes(32), unsized, 4096)
    ragged = b"\x01" + zstandard.ZstdCompressor().compress(bytes(4096 * 2 + 10))
    with pytest.raises(IntegrityError, match="not whole chunks"):
        codec.open_frame(ragged)
    # random chunks gain nothing in a frame: stored alone, so that a damaged byte costs one chunk
    assert codec.seal_frame([os.urandom(4096) for _i in range(8)]) is None
    with pytest.raises(ValueError):
        codec.seal_frame([bytes(4096)])
    with pytest.raises(ValueError):
        codec.seal_frame([bytes(4096), bytes(100)])


def test_a_map_whose_index_entry_says_frame_member_is_damage(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    image = make_image(random.Random(9), 100_000)
    record = backup_image(repo, "vm", image)
    index = repo.load_index()
    seg_id = bytes.fromhex(next(s for s in record.disks[0].segments if s))
    loc = index.get(seg_id)
    forged = Index()
    for pack, entries in index.packs().items():
        forged.add_pack(pack, [e._replace(blob_type=member_type(0)) if e.blob_id == seg_id else e for e in entries])
    assert loc is not None and loc.blob_type == BLOB_MAP
    with pytest.raises(CorruptChunkError, match="chunk in a frame"):
        repo.read_blob(BLOB_MAP, seg_id, forged)


def test_format_versions(tmp_path: t.Any) -> None:
    with pytest.raises(InvalidArgumentError, match="format version"):
        new_config("none", 4096, 8, 1 << 20, 2, version=3)
    config = new_config("none", 4096, 8, 1 << 20, 2)
    assert config["version"] == 2
    config["version"] = 3
    with pytest.raises(RepositoryFormatError, match="supports versions 1, 2. Upgrade vmsafe.protect"):
        parse_config(encode_config(config, None), "here")
    # a repository made before frames is read and written without them
    repo = make_repo(str(tmp_path / "v1"), format_version=1)
    image = make_image(random.Random(10), 200_000)
    record = backup_image(repo, "vm", image)
    reopened = Repository.open(LocalBackend(str(tmp_path / "v1")), PASSPHRASE)
    assert reopened.frame_slots == 1 and not framed_entries(reopened)
    assert restored(reopened, record.id, tmp_path) == image
    assert Repository.init(LocalBackend(str(tmp_path / "v2")), PASSPHRASE, kdf=FAST_KDF).frame_slots == 16
