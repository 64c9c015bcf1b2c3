# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Backend factory and the local backend's atomic writes."""

from __future__ import annotations

import os
import typing as t

import pytest

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
