# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The mechanism instant recovery (issue 18, part c) will use, proven on the real libvirtd + QEMU before the module.

A VM runs from a local qcow2 overlay whose backing file is a backup served read-only over NBD by
``vmsafe-recover serve`` (in a venv without Ansible); the guest's writes land in the overlay; ``virsh blockcopy
--pivot`` then moves the whole disk to local storage while the VM runs, the NBD server is stopped, and the VM keeps
running from a local image whose content is the backup plus the guest's writes.
"""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from recovery_helpers import CLI, engine_venv, plain_env  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
SIZE = 16 * MiB
PASS = "instant-test-passphrase"  # test data, not a secret
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{overlay}'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-disk0'/>
    </disk>
  </devices>
</domain>
"""


def test_vm_runs_from_an_nbd_served_backup_then_moves_to_local_storage(lab, tmp_path):
    import labvm  # pylint: disable=import-outside-toplevel,import-error  # tests/lab, on sys.path via it_helpers

    image = bytearray(SIZE)
    image[0:2 * MiB] = b"\xab" * (2 * MiB)
    image[8 * MiB:9 * MiB] = b"\x17" * MiB
    repo = Repository.init(open_backend(str(tmp_path / "repo")), passphrase=PASS)
    try:
        backup_id = repo.backup("instant-vm", [DiskSource("vda", SIZE, [(0, SIZE, bytes(image))])]).id
    finally:
        repo.close()

    sock, overlay, local = tmp_path / "vda.sock", tmp_path / "overlay.qcow2", tmp_path / "local.qcow2"
    env = plain_env(VMSAFE_PASSPHRASE=PASS, VMSAFE_REPOSITORY=str(tmp_path / "repo"))
    server = subprocess.Popen([engine_venv(), CLI, "serve", "--backup", backup_id, "--socket", str(sock)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "serving disk vda" in server.stdout.readline()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", f"nbd+unix:///vda?socket={sock}",
                        str(overlay), str(SIZE)], check=True, capture_output=True)
        name = lab.prefix + "instant"
        lab.names.append(name)
        (tmp_path / "domain.xml").write_text(DOMAIN_XML.format(name=name, overlay=overlay))
        lab.virsh("define", str(tmp_path / "domain.xml"))
        lab.virsh("start", name)
        assert "protocol='nbd'" in lab.virsh("dumpxml", name)  # libvirt sees the backup as the backing store
        assert lab.check(name, 0xAB, 0, 2 * MiB)  # read through the overlay from the backup
        lab.write(name, 0x5A, 4 * MiB, 64 * 1024)  # the guest writes: into the local overlay
        # the migrate step: copy the whole chain to a local image and switch the running VM to it
        lab.virsh("blockcopy", name, "vda", str(local), "--format", "qcow2", "--wait", "--pivot", "--transient-job")
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err  # no read failed
    assert not sock.exists()
    assert lab.virsh("domstate", name).strip() == "running"
    assert "protocol='nbd'" not in lab.virsh("dumpxml", name) and labvm.active_image(name) == str(local)
    assert lab.check(name, 0x5A, 4 * MiB, 64 * 1024) and lab.check(name, 0x17, 8 * MiB, MiB)
    info = subprocess.run(["qemu-img", "info", "-U", str(local)], capture_output=True, text=True, check=True).stdout
    assert "backing file" not in info
    raw = tmp_path / "local.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(local), str(raw)], check=True, capture_output=True)
    image[4 * MiB:4 * MiB + 64 * 1024] = b"\x5a" * (64 * 1024)
    assert raw.read_bytes() == bytes(image)  # the backup plus the guest's write, nothing else
