# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""SFTP backend against a real OpenSSH server on 127.0.0.1 (fixture ``sshd`` in conftest)."""

from __future__ import annotations

import os
import random
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import SFTPBackend, open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import BackendError, HostKeyError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    FAST_KDF,
    PASSPHRASE,
    make_image,
)


def url(sshd: t.Any, path: str) -> str:
    return f"sftp://{sshd.user}@{sshd.host}:{sshd.port}{path}"


def test_backup_restore_verify_prune_over_sftp(sshd: t.Any, tmp_path: t.Any) -> None:
    location = url(sshd, f"{sshd.root}/repo1")
    opts = {"key_filename": sshd.client_key, "known_hosts": sshd.known_hosts}
    backend = open_backend(location, **opts)
    assert isinstance(backend, SFTPBackend) and sshd.client_key not in repr(backend)
    repo = Repository.init(
        backend, passphrase=PASSPHRASE, chunk_size=4096, pack_size=1024 * 1024, segment_chunks=8, kdf=FAST_KDF
    )
    rng = random.Random(5)
    old = make_image(rng, 300_000)
    first = repo.backup("vm", [DiskSource("vda", len(old), [(0, len(old), old)])])
    new = bytearray(old)
    new[5000:9000] = os.urandom(4000)
    second = repo.backup("vm", [DiskSource("vda", len(new), [(5000, 4000, bytes(new[5000:9000]))])], parent=first.id)
    repo.close()

    repo = Repository.open(open_backend(location, **opts), PASSPHRASE)
    assert [r.id for r in repo.list()] == [first.id, second.id]
    for record, image in ((first, old), (second, bytes(new))):
        repo.restore(record.id, "vda", str(tmp_path / "out.raw"))
        assert (tmp_path / "out.raw").read_bytes() == image
    assert repo.verify(read_data=True).ok
    result = repo.prune(RetentionPolicy(keep_last=1))
    assert [r.id for r in result.pruned] == [first.id]
    repo.restore(second.id, "vda", str(tmp_path / "out.raw"))
    assert (tmp_path / "out.raw").read_bytes() == bytes(new)
    assert repo.verify(read_data=True).ok
    # objects really are on the server's filesystem, written atomically (no temporaries left)
    files = [f for _d, _s, fs in os.walk(f"{sshd.root}/repo1") for f in fs]
    assert "config" in files and not any(".tmp-" in f for f in files)
    repo.close()


def test_unknown_host_key_is_refused_by_default(sshd: t.Any, tmp_path: t.Any) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(HostKeyError, match="unknown") as info:
        open_backend(url(sshd, f"{sshd.root}/repo2"), key_filename=sshd.client_key, known_hosts=str(empty))
    assert "ssh-keyscan" in str(info.value)


def test_changed_host_key_is_refused(sshd: t.Any, tmp_path: t.Any) -> None:
    wrong = tmp_path / "known_hosts"
    # a syntactically valid but different ed25519 key for the same host and port
    wrong.write_text(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 " "AAAAC3NzaC1lZDI1NTE5AAAAIHt7e3t7e3t7e3t7e3t7e3t7e3t7e3t7e3t7e3t7e3t7\n"
    )
    with pytest.raises(HostKeyError, match="does not match"):
        open_backend(url(sshd, f"{sshd.root}/repo3"), key_filename=sshd.client_key, known_hosts=str(wrong))


def test_accept_new_policy_records_the_key(sshd: t.Any, tmp_path: t.Any) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    backend = open_backend(
        url(sshd, f"{sshd.root}/repo4"),
        key_filename=sshd.client_key,
        known_hosts=str(known),
        host_key_policy="accept_new",
    )
    backend.close()
    assert str(sshd.port) in known.read_text()
    open_backend(url(sshd, f"{sshd.root}/repo4"), key_filename=sshd.client_key, known_hosts=str(known)).close()


def test_bad_credentials_give_a_clear_error(sshd: t.Any, tmp_path: t.Any) -> None:
    with pytest.raises(BackendError) as info:
        open_backend(url(sshd, f"{sshd.root}/repo5"), password="not-the-password", known_hosts=sshd.known_hosts)
    assert "not-the-password" not in str(info.value)
