# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Integration fixtures: the real libvirtd of scripts/lab.sh, throwaway VMs, and modules run by real Ansible."""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from it_helpers import Lab, run_ansible  # noqa: E402  pylint: disable=wrong-import-position,import-error


@pytest.fixture(scope="session")
def libvirtd() -> str:
    """Start (or reuse) the lab's libvirtd; the tests need it, so a failure to start is a failure, not a skip."""
    proc = subprocess.run([os.path.join(ROOT, "scripts", "lab.sh"), "start"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"scripts/lab.sh start failed:\n{proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture
def ansible() -> t.Callable[..., dict[str, t.Any]]:
    return run_ansible


@pytest.fixture
def lab(libvirtd: str) -> t.Iterator[Lab]:
    env = Lab()
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture(scope="session")
def guest(libvirtd: str) -> t.Iterator[dict[str, t.Any]]:
    """One booted Debian guest (scripts/guest-image.sh, TCG) shared by every end-to-end test of the session.

    Yields name, port (SSH forwarded on 127.0.0.1) and key (root's private key).
    """
    sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))
    import guest as guestlab  # pylint: disable=import-outside-toplevel,import-error
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    name = f"vmsafe-guest-{os.getpid()}"
    try:
        port, key = guestlab.boot(name)
        yield {"name": name, "port": port, "key": key}
    finally:
        labvm.destroy(name)


@pytest.fixture(scope="session")
def ssh_uri(tmp_path_factory: pytest.TempPathFactory, libvirtd: str) -> t.Iterator[str]:
    """A real OpenSSH server on 127.0.0.1 and a qemu+ssh:// URI that reaches this host's libvirtd through it."""
    import shutil  # pylint: disable=import-outside-toplevel
    import socket  # pylint: disable=import-outside-toplevel
    import time  # pylint: disable=import-outside-toplevel

    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.path.exists(sshd), "openssh-server is missing: run scripts/lab.sh install"
    tmp = tmp_path_factory.mktemp("sshd")
    os.chmod(tmp, 0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client")], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client.pub").read_text())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(tmp / "sshd_config")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    if conn.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.05)
        yield (f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={tmp / 'client'}&no_verify=1&no_tty=1"
               f"&known_hosts={tmp / 'known_hosts'}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
