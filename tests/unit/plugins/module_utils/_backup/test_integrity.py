# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Damage is detected and named; restore refuses rather than writes wrong data; keys stay secret."""

from __future__ import annotations

import hashlib
import json
import glob
import os
import random
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend, open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import default_kdf
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackupError,
    CorruptChunkError,
    CorruptMetadataError,
    InvalidArgumentError,
    PassphraseRequiredError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    RestoreTargetError,
    SourceReadError,
    WrongPassphraseError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import pack_object_name
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    PASSPHRASE,
    make_image,
    make_repo,
)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x10]))


@pytest.fixture
def two_backups(tmp_path: t.Any) -> tuple[Repository, list[t.Any], list[bytes]]:
    repo = make_repo(str(tmp_path / "repo"))
    rng = random.Random(11)
    images = [make_image(rng, 150_000), make_image(rng, 90_000)]
    records = [
        repo.backup(f"vm{i}", [DiskSource("vda", len(img), [(0, len(img), img)])]) for i, img in enumerate(images)
    ]
    return repo, records, images


def data_blob_of(repo: Repository, record: t.Any, chunk: int) -> tuple[str, int, str]:
    index = repo.load_index()
    disk = record.disks[0]
    seg = repo.read_map(disk.segments[chunk // disk.segment_chunks], index, "test")
    cid, _sha, _length = seg.get(chunk)
    loc = index.get(cid)
    return repo.backend.local_path(pack_object_name(loc.pack)), loc.offset + loc.length // 2, cid.hex()


def first_stored_chunk(record: t.Any, repo: Repository) -> int:
    index = repo.load_index()
    disk = record.disks[0]
    for seg_id in disk.segments:
        if seg_id:
            return next(repo.read_map(seg_id, index, "test").iter_stored())[0]
    raise AssertionError("no stored chunk")


def test_flipped_bit_in_pack_is_named_and_restore_refuses(two_backups: t.Any, tmp_path: t.Any) -> None:
    repo, records, images = two_backups
    chunk = first_stored_chunk(records[0], repo)
    path, offset, cid = data_blob_of(repo, records[0], chunk)
    flip(path, offset)
    report = repo.verify(read_data=True)
    assert not report.ok
    named = [(d.backup_id, d.disk_name, d.chunk_index) for d in report.damaged if d.chunk_id == cid]
    assert (records[0].id, "vda", chunk) in named
    target = tmp_path / "restored.raw"
    with pytest.raises(CorruptChunkError) as info:
        repo.restore(records[0].id, "vda", str(target))
    message = str(info.value)
    assert records[0].id in message and "vda" in message and f"#{chunk}" in message
    assert not target.exists() and not glob.glob(f"{target}.vmsafe-partial*")
    # the other backup does not use that chunk and still restores
    repo.restore(records[1].id, "vda", str(target))
    assert target.read_bytes() == images[1]


def test_structure_verify_without_read_data_is_ok_on_data_damage(two_backups: t.Any) -> None:
    repo, records, _images = two_backups
    path, offset, _cid = data_blob_of(repo, records[0], first_stored_chunk(records[0], repo))
    flip(path, offset)
    assert repo.verify().ok  # structure is fine: only read_data decrypts
    assert not repo.verify(read_data=True).ok


def test_flipped_bit_in_index_is_detected(two_backups: t.Any, tmp_path: t.Any) -> None:
    repo, records, images = two_backups
    name = repo.backend.list("index")[0][0]
    flip(repo.backend.local_path(name), 20)
    with pytest.raises(CorruptMetadataError, match="index file") as info:
        repo.restore(records[0].id, "vda", str(tmp_path / "x.raw"))
    assert "rebuild_index" in str(info.value)
    report = repo.verify()
    assert not report.ok and any("index" in e for e in report.errors)
    repo.backend.delete(name)
    assert repo.rebuild_index() >= 1
    for record, image in zip(records, images):
        repo.restore(record.id, "vda", str(tmp_path / "x.raw"))
        assert (tmp_path / "x.raw").read_bytes() == image
    assert repo.verify(read_data=True).ok


def test_flipped_bit_in_manifest_is_named(two_backups: t.Any) -> None:
    repo, records, _images = two_backups
    flip(repo.backend.local_path(f"snapshots/{records[1].id}"), 30)
    with pytest.raises(CorruptMetadataError, match=records[1].id):
        repo.get(records[1].id)
    report = repo.verify()
    assert not report.ok and any(records[1].id in e for e in report.errors)
    assert repo.verify(records[0].id).ok


def test_flipped_bit_in_pack_header_is_detected(two_backups: t.Any) -> None:
    repo, _records, _images = two_backups
    obj, size = repo.backend.list("packs")[0]
    flip(repo.backend.local_path(obj), size - 30)
    report = repo.verify(read_data=True)
    assert not report.ok and any("header" in e for e in report.errors)


def test_truncated_pack_is_reported(two_backups: t.Any) -> None:
    repo, _records, _images = two_backups
    obj, size = repo.backend.list("packs")[0]
    os.truncate(repo.backend.local_path(obj), size // 2)
    report = repo.verify()
    assert any("truncated" in e for e in report.errors)


def test_wrong_and_missing_passphrase(tmp_path: t.Any) -> None:
    make_repo(str(tmp_path / "repo"))
    with pytest.raises(WrongPassphraseError) as info:
        Repository.open(LocalBackend(str(tmp_path / "repo")), "wrong passphrase 123")
    assert "Wrong passphrase" in str(info.value) and "wrong passphrase 123" not in str(info.value)
    with pytest.raises(PassphraseRequiredError):
        Repository.open(LocalBackend(str(tmp_path / "repo")), None)


def test_default_kdf_roundtrip(tmp_path: t.Any) -> None:
    kdf = default_kdf()
    assert kdf["name"] == "argon2id" and kdf["memory_kib"] >= 19 * 1024
    Repository.init(LocalBackend(str(tmp_path / "repo")), passphrase="pw-default")
    doc = json.loads((tmp_path / "repo" / "keys" / "repokey").read_text())
    assert doc["kdf"]["name"] == kdf["name"] and "pw-default" not in json.dumps(doc)
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), "pw-default")
    assert repo.encryption == "aes-256-gcm"


def test_no_plain_content_hashes_or_secrets_on_storage(tmp_path: t.Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    data = os.urandom(4096 * 5)
    repo.backup("secret-vm-name", [DiskSource("vda", len(data), [(0, len(data), data)])], tags={"t": "secret-tag"})
    stored = b"".join(
        open(os.path.join(d, f), "rb").read() for d, _s, files in os.walk(tmp_path / "repo") for f in files
    )
    for i in range(5):
        assert hashlib.sha256(data[i * 4096 : (i + 1) * 4096]).digest() not in stored
        assert data[i * 4096 : i * 4096 + 64] not in stored
    assert b"secret-vm-name" not in stored and b"secret-tag" not in stored
    assert PASSPHRASE.encode() not in stored
    for text in (repr(repo), repr(repo.codec), repr(repo.backend)):
        assert PASSPHRASE not in text and "KeyMaterial(" not in text


def test_encryption_none_is_explicit(tmp_path: t.Any) -> None:
    with pytest.raises(InvalidArgumentError, match="passphrase"):
        Repository.init(LocalBackend(str(tmp_path / "a")))
    with pytest.raises(InvalidArgumentError, match="none"):
        Repository.init(LocalBackend(str(tmp_path / "b")), passphrase="x", encryption="none")
    repo = Repository.init(LocalBackend(str(tmp_path / "c")), encryption="none")
    data = b"plain" * 3000
    record = repo.backup("vm", [DiskSource("vda", len(data), [(0, len(data), data)])])
    assert not (tmp_path / "c" / "keys" / "repokey").exists()
    reopened = Repository.open(LocalBackend(str(tmp_path / "c")))
    reopened.restore(record.id, "vda", str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == data
    path, offset, _cid = data_blob_of(reopened, record, 0)
    flip(path, offset)
    with pytest.raises(CorruptChunkError):
        reopened.restore(record.id, "vda", str(tmp_path / "out2"))


def test_init_and_open_errors(tmp_path: t.Any) -> None:
    with pytest.raises(RepositoryNotFoundError):
        Repository.open(open_backend(str(tmp_path / "nothing")), "x")
    make_repo(str(tmp_path / "repo"))
    with pytest.raises(RepositoryExistsError):
        make_repo(str(tmp_path / "repo"))
    with pytest.raises(InvalidArgumentError, match="chunk_size"):
        make_repo(str(tmp_path / "r2"), chunk_size=5000)
    with pytest.raises(InvalidArgumentError, match="Unsupported repository URL scheme"):
        open_backend("ftp://host/x")  # s3:// is a backend now


def test_every_error_is_a_backup_error() -> None:
    import inspect

    from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors

    classes = [c for _n, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) > 10 and all(issubclass(c, BackupError) for c in classes)


def test_source_read_error_records_nothing(repo: Repository) -> None:
    class Failing:
        def readinto(self, buf: t.Any) -> int:
            raise OSError(5, "Input/output error")

    with pytest.raises(SourceReadError, match="vda.*Input/output error"):
        repo.backup("vm", [DiskSource("vda", 8192, [(0, 8192, Failing())])])
    assert repo.list() == []
    assert repo.verify().ok


def test_restore_target_errors_are_clear(two_backups: t.Any, tmp_path: t.Any) -> None:
    repo, records, _images = two_backups
    with pytest.raises(RestoreTargetError, match="directory"):
        repo.restore(records[0].id, "vda", str(tmp_path))
    with pytest.raises(RestoreTargetError, match="Cannot open"):
        repo.restore(records[0].id, "vda", str(tmp_path / "missing-dir" / "x.raw"))


def test_restore_never_follows_a_planted_link_at_the_partial_name(tmp_path: t.Any) -> None:
    """Reproduced: restore followed a symlink planted at its predictable '<target>.vmsafe-partial' name."""
    repo = make_repo(str(tmp_path / "repo"))
    data = os.urandom(20000)
    record = repo.backup("vm", [DiskSource("vda", len(data), [(0, len(data), data)])])
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "out.raw"
    os.symlink(victim, f"{target}.vmsafe-partial")
    repo.restore(record.id, "vda", str(target))
    assert victim.read_bytes() == b"precious" and target.read_bytes() == data
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_default_key_derivation_is_memory_hard_and_stronger_than_before() -> None:
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import default_kdf, kdf_for_memory

    kdf = default_kdf()
    if kdf["name"] == "argon2id":
        # RFC 9106's t and p; 32 MiB x 3 passes is 2.5x the earlier 19 MiB x 2 (docs/repository-format.md §3)
        assert kdf["memory_kib"] >= 32768 and kdf["iterations"] >= 3 and kdf["lanes"] >= 4
        assert kdf_for_memory(64)["memory_kib"] == 65536
    else:
        assert kdf["n"] * kdf["r"] * 128 >= 32 * 1024 * 1024
        assert kdf_for_memory(64)["n"] * kdf["r"] * 128 == 64 * 1024 * 1024


def test_names_from_a_manifest_become_safe_path_components() -> None:
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import path_component

    for name in ("../../etc/cron.d/x", "/etc/passwd", "..", ".", "a\x00b", "vm\nname", ""):
        safe = path_component(name)
        assert "/" not in safe and "\x00" not in safe and "\n" not in safe and safe not in ("", ".", "..")
        assert not safe.startswith(".")
    assert path_component("web01") == "web01" and path_component("vda") == "vda"
