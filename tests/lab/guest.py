# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Boot the small Debian guest of scripts/guest-image.sh as a libvirt VM reachable over SSH on 127.0.0.1.

    python tests/lab/guest.py boot NAME      prints: <ssh port> <private key path>
    python tests/lab/guest.py destroy NAME

Real guest kernels hang under this machine's nested KVM, so the domain is type 'qemu' (TCG). Networking is QEMU's
user mode with restrict=on (the guest reaches nothing outside) and one forward 127.0.0.1:<port> -> guest:22 on the
QEMU command line, so it survives a snapshot revert (which restarts QEMU).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import labvm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DOMAIN_XML = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image}/vmlinuz</kernel>
    <initrd>{image}/initrd.img</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet</cmdline>
  </os>
  <features><tcg><tb-cache unit='MiB'>64</tb-cache></tcg></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-disk0'/>
    </disk>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=vmsafenet,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=vmsafenet,addr=0x10'/>
  </qemu:commandline>
</domain>
"""


def image_dir() -> str:
    proc = subprocess.run([os.path.join(ROOT, "scripts", "guest-image.sh")], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/guest-image.sh failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_ssh(port: int, timeout: float = 180) -> float:
    """Wait for the SSH banner (user-mode networking accepts TCP before the guest listens); return seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.settimeout(5)
                if conn.recv(8).startswith(b"SSH-"):
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"no SSH banner on 127.0.0.1:{port} after {timeout:.0f} s")


def boot(name: str, disk: str | None = None) -> tuple[int, str]:
    """Define and start the guest; return (ssh port, key path).

    The root disk is a fresh overlay of the cached image, or ``disk`` (a qcow2 image, e.g. one restored from a backup).
    """
    image = image_dir()
    os.makedirs(labvm.VM_DIR, exist_ok=True)
    if disk is None:
        disk = os.path.join(labvm.VM_DIR, f"{name}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        os.path.join(image, "root.qcow2"), disk], check=True)
    port = free_port()
    conn = labvm.connect()
    try:
        xml = DOMAIN_XML.format(name=name, image=image, disk=disk, port=port,
                                console=os.path.join(labvm.VM_DIR, f"{name}.console.log"))
        conn.defineXML(xml).create()
    finally:
        conn.close()
    wait_for_ssh(port)
    return port, os.path.join(image, "id_ed25519")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "boot":
        port, key = boot(argv[1])
        print(port, key)
    elif len(argv) == 2 and argv[0] == "destroy":
        labvm.destroy(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
