# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Backend factory and the local backend's atomic writes."""

from __future__ import annotations

import errno
import os
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import backends
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend, open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import BackendError, InvalidArgumentError


@pytest.mark.parametrize("url", ["/srv/backups", "file:///srv/backups"])
def test_local_urls(url: str) -> None:
    backend = open_backend(url)
    assert isinstance(backend, LocalBackend) and backend.root == "/srv/backups"


@pytest.mark.parametrize(
    "url, options, message",
    [
        ("ftp://host/path", {}, "Unsupported"),
        ("s3://bucket/path", {"bogus": 1}, "Unknown S3 option"),
        ("sftp:///path", {}, "no host"),
        ("sftp://u@h/p", {"bogus": 1}, "Unknown SFTP option"),
        ("/srv/backups", {"password": "x"}, "no options"),
    ],
)
def test_bad_urls(url: str, options: dict[str, t.Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        open_backend(url, **options)


def test_sftp_password_in_url_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    # refused before any connection is tried (it belongs in repository_password), and never echoed
    with pytest.raises(InvalidArgumentError) as info:
        open_backend("sftp://user:s3cr3t@127.0.0.1:1/repo", timeout=2)
    assert "s3cr3t" not in str(info.value)


def test_atomic_writes_are_invisible_until_commit(tmp_path: t.Any) -> None:
    backend = LocalBackend(str(tmp_path))
    writer = backend.open_writer("packs/ab/abcd")
    writer.write(b"x" * 100)
    assert not backend.exists("packs/ab/abcd")
    assert any(".tmp-" in name for name, _s in backend.list("packs"))
    writer.commit()
    assert backend.read("packs/ab/abcd") == b"x" * 100
    assert backend.list("packs") == [("packs/ab/abcd", 100)]
    aborted = backend.open_writer("packs/ab/other")
    aborted.write(b"y")
    aborted.abort()
    assert backend.list("packs") == [("packs/ab/abcd", 100)]
    assert backend.read_range("packs/ab/abcd", 10, 5) == b"xxxxx"
    with pytest.raises(BackendError, match="Short read"):
        backend.read_range("packs/ab/abcd", 90, 20)
    with pytest.raises(FileNotFoundError):
        backend.read("nothing")
    with pytest.raises(InvalidArgumentError):
        backend.read("../escape")
    backend.delete("packs/ab/abcd")
    backend.delete("packs/ab/abcd")  # deleting twice is fine
    assert not os.path.exists(tmp_path / "packs" / "ab" / "abcd")


@pytest.mark.parametrize("url, message", [("", "path is empty"), ("file://", "path is empty")])
def test_empty_local_paths_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        open_backend(url)


def test_relative_path_is_local(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend("repo")
    assert isinstance(backend, LocalBackend) and backend.root == str(tmp_path / "repo")


def test_what_is_made_durable(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data, metadata, new pack folders (in their parent) and deletes are fsynced; lock objects are not (a lock
    protects running processes, which a crash of the machine ends), so no run pays for their fsyncs."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), str(tmp_path)))
        real_fsync(fd)

    backend = LocalBackend(str(tmp_path))
    backend.make_dirs(["packs", "locks", "snapshots", "tombstones"])
    monkeypatch.setattr(os, "fsync", fsync)
    backend.create_exclusive("locks/abc-000000", b"{}")
    backend.delete("locks/abc-000000")
    assert synced == [], "lock objects are written and removed without fsync"
    backend.create_exclusive("tombstones/lock-abc", b"{}")
    assert synced[0].startswith("tombstones/lock-abc.tmp-") and synced[1:] == ["tombstones"], synced
    synced.clear()
    writer = backend.open_writer("packs/ab/ab12")  # a new folder: its parent must learn of it durably
    writer.write(b"data")
    writer.commit()
    assert synced[0].startswith("packs/ab/ab12.tmp-") and synced[1:] == ["packs/ab", "packs"]
    synced.clear()
    backend.delete("snapshots/x")  # absent: nothing to do
    backend.write_atomic("snapshots/x", b"{}")
    backend.delete("snapshots/x")
    assert synced[-1] == "snapshots", "a delete is fsynced in its folder"


def test_write_many_appends_every_piece_in_order(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffered (no O_DIRECT here): one writev per batch of pieces; a short writev (allowed by POSIX) continues where
    it stopped."""
    monkeypatch.setattr(backends, "reopen_direct", lambda fd: None)
    backend = LocalBackend(str(tmp_path))
    backend.make_dirs(["packs"])
    parts = [os.urandom(n) for n in (10, 0, 70_000, 1, 5000)] + [bytearray(b"xyz"), memoryview(b"tail")]
    real_writev = os.writev

    def short_writev(fd: int, buffers: t.Sequence[t.Any]) -> int:
        return real_writev(fd, [memoryview(buffers[0])[:7]])  # never more than 7 bytes at a time

    writer = backend.open_writer("packs/ab/many")
    writer.write_many(parts[:3])
    monkeypatch.setattr(os, "writev", short_writev)
    writer.write_many(parts[3:])
    writer.commit()
    assert backend.read("packs/ab/many") == b"".join(bytes(p) for p in parts)


def _direct_spy(monkeypatch: pytest.MonkeyPatch, refuse: bool = False) -> list[tuple[int, int]]:
    """Record (offset, length) of every write through an O_DIRECT descriptor; ``refuse`` makes them fail with EINVAL."""
    direct: set[int] = set()
    seen: list[tuple[int, int]] = []
    real_reopen, real_pwrite = backends.reopen_direct, os.pwrite

    def reopen(fd: int) -> int | None:
        got = real_reopen(fd)
        if got is not None:
            direct.add(got)
        return got

    def pwrite(fd: int, data: t.Any, offset: int) -> int:
        if fd in direct:
            if refuse:
                raise OSError(errno.EINVAL, "Invalid argument")
            seen.append((offset, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(backends, "reopen_direct", reopen)
    monkeypatch.setattr(os, "pwrite", pwrite)
    return seen


def test_streamed_writes_go_to_the_disk_directly_in_aligned_blocks(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pack data bypasses the page cache (O_DIRECT): whole aligned blocks as they fill, the last partial block at commit
    through the ordinary descriptor; the object has exactly the bytes given, in order, across staging-buffer refills."""
    seen = _direct_spy(monkeypatch)
    backend = LocalBackend(str(tmp_path))
    backend.make_dirs(["packs"])
    sizes = [8, 65_565, 0, 1, backends.DIRECT_STAGE + 4095, 29, backends.DIRECT_STAGE * 2, 12_345]
    parts = [os.urandom(n) for n in sizes]
    writer = backend.open_writer("packs/ab/direct")
    writer.write_many(parts[:3])
    writer.write(parts[3])  # a plain write() after direct writes continues the same stream
    writer.write_many([bytearray(parts[4]), memoryview(parts[5])])
    writer.write_many(parts[6:])
    writer.commit()
    want = b"".join(parts)
    assert backend.read("packs/ab/direct") == want
    if backends.filesystem_type(str(tmp_path)) not in backends.DIRECT_FILESYSTEMS:
        pytest.skip(f"packs on {backends.filesystem_type(str(tmp_path))} are written through the page cache")
    assert all(offset % backends.DIRECT_ALIGN == 0 and length % backends.DIRECT_ALIGN == 0 for offset, length in seen)
    direct_bytes = sum(length for _offset, length in seen)
    assert direct_bytes == len(want) - len(want) % backends.DIRECT_ALIGN, "all but the last partial block went direct"
    assert [offset for offset, _length in seen] == sorted(offset for offset, _length in seen)


def test_a_refused_direct_write_falls_back_to_buffered(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """EINVAL from an O_DIRECT write (a filesystem or block size that does not take it): the same bytes and the rest of
    the object go through the page cache, and nothing is lost or doubled."""
    _direct_spy(monkeypatch, refuse=True)
    backend = LocalBackend(str(tmp_path))
    backend.make_dirs(["packs"])
    parts = [os.urandom(n) for n in (100_000, backends.DIRECT_STAGE + 1, 7)]
    writer = backend.open_writer("packs/ab/fallback")
    for part in parts:
        writer.write_many([part])
    writer.commit()
    assert backend.read("packs/ab/fallback") == b"".join(parts)


def test_an_aborted_direct_write_leaves_nothing(tmp_path: t.Any) -> None:
    backend = LocalBackend(str(tmp_path))
    backend.make_dirs(["packs"])
    writer = backend.open_writer("packs/ab/gone")
    writer.write_many([os.urandom(3 * backends.DIRECT_ALIGN + 5)])
    writer.abort()
    assert os.listdir(tmp_path / "packs" / "ab") == []


def test_only_local_block_filesystems_get_direct_writes(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository on NFS, SMB or FUSE writes packs through the page cache (direct writes there are synchronous
    round trips); the filesystem type comes from /proc/self/mountinfo."""
    assert backends.filesystem_type("/proc") == "proc"
    assert backends.filesystem_type(str(tmp_path / "absent")) is None
    seen = _direct_spy(monkeypatch)
    monkeypatch.setattr(backends, "filesystem_type", lambda path: "nfs4")
    backend = LocalBackend(str(tmp_path))
    backend.make_dirs(["packs"])
    data = os.urandom(3 * backends.DIRECT_STAGE + 17)
    writer = backend.open_writer("packs/ab/nfs")
    writer.write_many([data])
    writer.commit()
    assert backend.read("packs/ab/nfs") == data and seen == []


@pytest.mark.parametrize("head", [b"", b"x" * 5, b"y" * backends.DIRECT_ALIGN])
def test_plain_writes_before_streamed_ones_are_kept(tmp_path: t.Any, head: bytes) -> None:
    """write() then write_many(): the streamed part continues after what write() put there (aligned or not)."""
    backend = LocalBackend(str(tmp_path))
    backend.make_dirs(["packs"])
    body = os.urandom(2 * backends.DIRECT_STAGE + 3)
    writer = backend.open_writer("packs/ab/mixed")
    writer.write(head)
    writer.write_many([body])
    writer.commit()
    assert backend.read("packs/ab/mixed") == head + body
