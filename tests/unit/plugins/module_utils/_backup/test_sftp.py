# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""SFTP backend against a real OpenSSH server on 127.0.0.1 (fixture ``sshd`` in conftest)."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import SFTPBackend, open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackendError,
    HostKeyError,
    InvalidArgumentError,
)
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


def test_accept_new_pins_into_the_default_known_hosts_and_then_refuses_another_key(
        sshd: t.Any, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproduced: with host key checking off and no known_hosts given, the key was never recorded, so any later
    key was accepted too."""
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.ssh/known_hosts is the file the check reads
    opts = {"key_filename": sshd.client_key, "host_key_policy": "accept_new"}
    open_backend(url(sshd, f"{sshd.root}/pin"), **opts).close()
    known = tmp_path / ".ssh" / "known_hosts"
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519" in known.read_text()
    assert oct(known.stat().st_mode & 0o777) == "0o600" and oct((tmp_path / ".ssh").stat().st_mode & 0o777) == "0o700"
    # the server "changes" its key: the pinned one no longer matches, accept_new or not
    line = known.read_text().split()
    known.write_text(f"{line[0]} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHt7e3t7e3t7e3t7e3t7e3t7e3t7e3t7e3t7e3t7e3t7\n")
    with pytest.raises(HostKeyError, match="does not match"):
        open_backend(url(sshd, f"{sshd.root}/pin"), **opts)


def test_accept_new_fails_when_the_key_cannot_be_pinned(sshd: t.Any, tmp_path: t.Any) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the known_hosts folder should be")
    with pytest.raises(HostKeyError, match="could not be recorded"):
        open_backend(url(sshd, f"{sshd.root}/pin2"), key_filename=sshd.client_key,
                     known_hosts=str(blocked / "known_hosts"), host_key_policy="accept_new")


def test_files_0600_and_folders_0700_whatever_the_umask(sshd: t.Any) -> None:
    old = os.umask(0o022)
    try:
        backend = open_backend(url(sshd, f"{sshd.root}/modes"), key_filename=sshd.client_key,
                               known_hosts=sshd.known_hosts)
        repo = Repository.init(backend, PASSPHRASE, chunk_size=4096, pack_size=1024 * 1024, kdf=FAST_KDF)
        repo.backup("vm", [DiskSource("vda", 10000, [(0, 10000, os.urandom(10000))])])
        repo.close()
    finally:
        os.umask(old)
    for folder, dirs, files in os.walk(f"{sshd.root}/modes"):
        assert os.stat(folder).st_mode & 0o077 == 0, folder
        for name in files:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o077 == 0, name
        assert dirs is not None


def test_password_in_the_url_is_refused_and_never_echoed() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        open_backend("sftp://backup:s3cret-pw@127.0.0.1:1/srv/vmsafe")
    assert "s3cret-pw" not in str(info.value) and "repository_password" in str(info.value)


class FreezableProxy:
    """A TCP forwarder to the sshd that can stop forwarding: a server that hangs mid-session."""

    def __init__(self, port: int) -> None:
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _addr = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set():
                time.sleep(0.05)
            try:
                dst.sendall(data)
            except OSError:
                return


def test_a_hung_server_fails_the_operation_within_the_timeout(sshd: t.Any, tmp_path: t.Any) -> None:
    """Reproduced: list() blocked for more than 20 s against a stopped server with timeout=5."""
    proxy = FreezableProxy(sshd.port)
    known = tmp_path / "known_hosts"
    known.write_text(open(sshd.known_hosts).read().replace(f"]:{sshd.port} ", f"]:{proxy.port} "))
    backend = open_backend(f"sftp://{sshd.user}@127.0.0.1:{proxy.port}{sshd.root}/hang", key_filename=sshd.client_key,
                           known_hosts=str(known), timeout=3)
    backend.make_dirs(["locks"])
    proxy.frozen.set()
    started = time.monotonic()
    with pytest.raises(BackendError):
        backend.list("locks")
    assert time.monotonic() - started < 15
