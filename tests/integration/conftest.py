# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Integration fixtures: the real libvirtd of scripts/lab.sh, throwaway VMs, and modules run by real Ansible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import labvm  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def libvirtd() -> str:
    """Start (or reuse) the lab's libvirtd; the tests need it, so a failure to start is a failure, not a skip."""
    proc = subprocess.run([os.path.join(ROOT, "scripts", "lab.sh"), "start"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, f"scripts/lab.sh start failed:\n{proc.stderr}"
    return proc.stdout.strip()


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=os.environ["VMSAFE_COLLECTIONS_PATH"],
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "tests", "integration", "callback_plugins"),
        ANSIBLE_STDOUT_CALLBACK="result_json",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_DEPRECATION_WARNINGS="false",
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    return env


def run_ansible(module: str, args: dict[str, t.Any], check: bool = False, diff: bool = False) -> dict[str, t.Any]:
    """Run one module through the ``ansible`` command, as a user would; return the host's result."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m", f"vmsafe.protect.{module}",
           "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=False, timeout=600)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"ansible printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc
    result = out[0]
    result["_rc"] = proc.returncode
    return result


@pytest.fixture
def ansible() -> t.Callable[..., dict[str, t.Any]]:
    return run_ansible


class Lab:
    """Makes throwaway VMs and removes them (with every snapshot and file) at the end of the test."""

    def __init__(self) -> None:
        self.prefix = f"vmsafe-it-{uuid.uuid4().hex[:6]}-"
        self.names: list[str] = []

    def vm(self, suffix: str = "vm", **kwargs: t.Any) -> str:
        name = self.prefix + suffix
        labvm.create(name, **kwargs)
        self.names.append(name)
        return name

    write = staticmethod(labvm.write)
    check = staticmethod(labvm.check)

    @staticmethod
    def virsh(*args: str) -> str:
        return subprocess.run(["virsh", "-q", "-c", labvm.URI, *args], capture_output=True, text=True,
                              check=True).stdout

    def snapshot_names(self, name: str) -> list[str]:
        return sorted(self.virsh("snapshot-list", name, "--name").split())

    def chain(self, name: str) -> list[str]:
        info = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", labvm.active_image(name)],
                              capture_output=True, text=True, check=True).stdout
        return [layer["filename"] for layer in json.loads(info)]

    def cleanup(self) -> None:
        for name in self.names:
            labvm.destroy(name)


@pytest.fixture
def lab(libvirtd: str) -> t.Iterator[Lab]:
    env = Lab()
    try:
        yield env
    finally:
        env.cleanup()


def age_snapshot(lab_: Lab, vm: str, snapshot: str, seconds: int) -> None:
    """Make a snapshot look ``seconds`` older by redefining its record with an older creationTime."""
    import re  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    xml = lab_.virsh("snapshot-dumpxml", vm, snapshot, "--security-info")
    created = int(re.search(r"<creationTime>(\d+)</creationTime>", xml).group(1))
    xml = xml.replace(f"<creationTime>{created}</creationTime>", f"<creationTime>{created - seconds}</creationTime>")
    current = lab_.virsh("snapshot-current", vm, "--name").strip() == snapshot if lab_.snapshot_names(vm) else False
    with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as handle:
        handle.write(xml)
    try:
        lab_.virsh("snapshot-create", vm, handle.name, "--redefine", *(["--current"] if current else []))
    finally:
        os.unlink(handle.name)


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
