# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Fixtures for the backup engine tests: cheap repositories, image helpers, a real sshd."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup import _s3server
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import make_repo


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: slow tests; the full versions run only with VMSAFE_LONG_TESTS=1")


@pytest.fixture
def repo(tmp_path: t.Any) -> t.Iterator[Repository]:
    r = make_repo(str(tmp_path / "repo"))
    yield r
    r.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SSHServer(t.NamedTuple):
    host: str
    port: int
    user: str
    client_key: str
    known_hosts: str
    root: str


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[SSHServer]:
    """A real OpenSSH server on 127.0.0.1 with internal-sftp and key authentication."""
    binary = "/usr/sbin/sshd"
    if not os.path.exists(binary):
        pytest.skip("OpenSSH server not installed (/usr/sbin/sshd missing): apt-get install openssh-server")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen not installed: apt-get install openssh-client")
    tmp = tmp_path_factory.mktemp("sshd")
    host_key = tmp / "host_ed25519"
    client_key = tmp / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = tmp / "authorized_keys"
    authorized.write_text((tmp / "client_ed25519.pub").read_text())
    port = _free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    log = open(tmp / "sshd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"sshd did not start: {(tmp / 'sshd.log').read_text()}")
        time.sleep(0.05)
    pub = (tmp / "host_ed25519.pub").read_text().split()
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    root = tmp / "storage"
    root.mkdir()
    import getpass

    try:
        yield SSHServer("127.0.0.1", port, getpass.getuser(), str(client_key), str(known), str(root))
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Any]:
    """A real SeaweedFS S3 server (weed server -s3) on 127.0.0.1 free ports, admin and backup-only identities."""
    yield from _s3server.serve("seaweedfs", tmp_path_factory)


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Any]:
    """``rclone serve s3`` on a 127.0.0.1 free port: ignores If-None-Match, needs checksums 'when_required'."""
    yield from _s3server.serve("rclone", tmp_path_factory)
