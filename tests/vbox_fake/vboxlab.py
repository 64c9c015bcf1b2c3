# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Test helpers around the fake VBoxManage: machines with real disk content, guest writes, aging, the argv log,
and a real OpenSSH server on 127.0.0.1 (own port, host key and authorized key) to reach it remotely."""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# the provider's parser reads showvminfo here too (tests/conftest.py links the checkout there)
sys.path.append(os.environ.get("VMSAFE_COLLECTIONS_PATH") or os.path.join(HERE, "..", "..", ".lab", "collections"))

import fake_vboxmanage  # noqa: E402  pylint: disable=wrong-import-position,import-error

MIB = 1024 * 1024


class VBoxLab:
    """One fake VirtualBox host: its own VBOX_USER_HOME, VBoxManage and image folder."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.home = os.path.join(root, "home")
        self.images = os.path.join(root, "images")
        os.makedirs(self.images, exist_ok=True)
        self.vboxmanage = fake_vboxmanage.install(os.path.join(root, "bin"), self.home)

    def vb(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.vboxmanage, *args], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"VBoxManage {args} failed: {proc.stderr}")
        return proc

    def make_vm(self, name: str, size_mib: int = 8, running: bool = False, seed: int = 1) -> str:
        """A VM with one SATA disk (VDI) holding deterministic non-zero data; return its UUID."""
        raw = os.path.join(self.images, f"{abs(hash(name))}-{seed}.raw")
        rng = random.Random(f"{name}-{seed}")
        with open(raw, "wb") as fh:
            for block in range(size_mib):  # incompressible data, every third MiB zero
                fh.write(rng.randbytes(MIB) if block % 3 else b"\0" * MIB)
        vdi = raw[:-4] + ".vdi"
        subprocess.run(["qemu-img", "convert", "-q", "-O", "vdi", raw, vdi], check=True)
        os.unlink(raw)
        out = self.vb("createvm", "--name", name, "--ostype", "Debian_64", "--register").stdout
        uid = next(line.split()[1] for line in out.splitlines() if line.startswith("UUID:"))
        self.vb("storagectl", uid, "--name", "SATA", "--add", "sata", "--portcount", "2")
        self.vb("storageattach", uid, "--storagectl", "SATA", "--port", "0", "--device", "0", "--type", "hdd",
                "--medium", vdi)
        if running:
            self.vb("startvm", uid, "--type", "headless")
        return uid

    def info(self, vm: str) -> dict[str, str]:
        from ansible_collections.vmsafe.protect.plugins.module_utils._providers import virtualbox_cli  # pylint: disable=import-outside-toplevel

        return dict(virtualbox_cli.parse_machinereadable(self.vb("showvminfo", vm, "--machinereadable").stdout))

    def state(self, vm: str) -> str:
        return self.info(vm)["VMState"]

    def current_disk(self, vm: str) -> str:
        return self.info(vm)["SATA-0-0"]

    def write(self, vm: str, offset: int, pattern: int, length: int = 64 * 1024) -> None:
        """What a guest writing to its disk does: change the current state's image."""
        subprocess.run(["qemu-io", "-c", f"write -P {pattern} {offset} {length}", self.current_disk(vm)],
                       check=True, capture_output=True)

    def content(self, vm: str) -> str:
        """sha256 of the disk as the guest sees it now (the whole differencing chain, flattened)."""
        flat = os.path.join(self.root, "flat.raw")
        subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", self.current_disk(vm), flat], check=True)
        try:
            return file_sha(flat)
        finally:
            os.unlink(flat)

    def age(self, vm_uuid: str, snapshot_name: str, seconds: int) -> None:
        """Make a snapshot look older (its settings-file timeStamp), as if taken ``seconds`` earlier."""
        fake = fake_vboxmanage.Fake(self.home)
        fake.load()
        vm = fake.s["vms"][vm_uuid]
        for snap in vm["snapshots"].values():
            if snap["name"] == snapshot_name:
                then = datetime.datetime.strptime(snap["timestamp"], "%Y-%m-%dT%H:%M:%SZ") - datetime.timedelta(
                    seconds=seconds)
                snap["timestamp"] = then.strftime("%Y-%m-%dT%H:%M:%SZ")
        fake.save()

    def orphan(self, vm_uuid: str) -> str:
        """Register a differencing image in the VM's folder that nothing uses (a failed operation's leftover)."""
        fake = fake_vboxmanage.Fake(self.home)
        fake.load()
        vm = fake.s["vms"][vm_uuid]
        base = fake.s["media"][next(iter(vm["attach"].values()))]
        while base["parent"]:
            base = fake.s["media"][base["parent"]]
        med = fake.new_diff(vm, base)
        fake.save()
        return t.cast(str, med["location"])

    def argv_log(self) -> list[list[str]]:
        with open(os.path.join(self.home, "argv.log"), encoding="utf-8") as fh:
            return [json.loads(line)["argv"] for line in fh]

    def media_count(self) -> int:
        return self.vb("list", "hdds").stdout.count("\nParent UUID:") + self.vb("list", "hdds").stdout.startswith(
            "Parent UUID:")


def file_sha(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


class SSHServer(t.NamedTuple):
    port: int
    user: str
    client_key: str
    known_hosts: str


def start_sshd(tmp: str) -> tuple[subprocess.Popen, SSHServer]:
    """A real OpenSSH server on 127.0.0.1 (free port, own host key, key authentication only)."""
    host_key, client_key = os.path.join(tmp, "host_ed25519"), os.path.join(tmp, "client_ed25519")
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    authorized = os.path.join(tmp, "authorized_keys")
    with open(client_key + ".pub", encoding="utf-8") as src, open(authorized, "w", encoding="utf-8") as dst:
        dst.write(src.read())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = os.path.join(tmp, "sshd_config")
    with open(config, "w", encoding="utf-8") as fh:
        fh.write(f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {tmp}/sshd.pid\n"
                 f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                 "PubkeyAuthentication yes\nPermitRootLogin yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
    os.makedirs("/run/sshd", exist_ok=True)
    log = open(os.path.join(tmp, "sshd.log"), "wb")  # noqa: SIM115  pylint: disable=consider-using-with
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config], stdout=log, stderr=log)
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
            raise AssertionError(f"sshd did not start: {open(os.path.join(tmp, 'sshd.log')).read()}")
        time.sleep(0.05)
    with open(host_key + ".pub", encoding="utf-8") as fh:
        kind, key = fh.read().split()[:2]
    known = os.path.join(tmp, "known_hosts")
    with open(known, "w", encoding="utf-8") as fh:
        fh.write(f"[127.0.0.1]:{port} {kind} {key}\n")
    return proc, SSHServer(port, getpass.getuser(), client_key, known)
