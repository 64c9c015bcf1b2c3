# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The fast paths of vm_backup / vm_restore on a real libvirtd + QEMU.

vm_restore writes qcow2 images itself (no raw copy, no qemu-img convert): QEMU must read them as the disk at backup
time (qemu-img check and compare), sparse, for target image, new_vm and original. vm_backup begins the export on a
guessed base while the repository key is unlocked: a wrong guess and a failed open must leave the VM as it was.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
PASS = "correct horse battery staple"


@pytest.fixture
def repo(tmp_path):
    return {"repository": str(tmp_path / "repo"), "passphrase": PASS}


def _check_image(path: str) -> None:
    proc = subprocess.run(["qemu-img", "check", "--output=json", "-f", "qcow2", path], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert not report.get("corruptions") and not report.get("leaks"), report


def _same(first: tuple[str, str], second: tuple[str, str]) -> bool:
    """qemu-img compare of two (path, format) images; -U: one of them may be in use by a running VM."""
    proc = subprocess.run(["qemu-img", "compare", "-U", "-f", first[1], "-F", second[1], first[0], second[0]],
                          capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def _data_bytes(path: str) -> int:
    out = subprocess.run(["qemu-img", "map", "-U", "--output=json", "-f", "qcow2", path], capture_output=True,
                         text=True, check=True).stdout
    return sum(extent["length"] for extent in json.loads(out) if extent["data"])


def test_qcow2_restores_are_written_directly_sparse_and_equal(lab, ansible, repo, tmp_path):
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    vm = lab.vm(size_mib=96)
    lab.write(vm, 0x3C, 0, 3 * MiB)
    lab.write(vm, 0xA1, 70 * MiB + 4096, 2 * MiB)
    full = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert full["_status"] == "ok", full
    lab.write(vm, 0x5A, 30 * MiB, 512 * 1024)
    inc = ansible("vm_backup", dict(repo, vm_name=vm))
    assert inc["mode"] == "incremental", inc
    disk = (labvm.active_image(vm), "qcow2")

    dest = tmp_path / "image"
    dest.mkdir()
    restored = ansible("vm_restore", dict(repo, backup_id=inc["backup_id"], dest=str(dest), format="qcow2"))
    assert restored["_status"] == "ok", restored
    path = restored["files"][0]["path"]
    _check_image(path)
    assert _same(disk, (path, "qcow2"))
    # sparse: only the 5.5 MiB written (in whole 64 KiB chunks) hold data, of a 96 MiB disk
    assert 5.5 * MiB <= _data_bytes(path) <= 6 * MiB
    assert os.path.getsize(path) < 7 * MiB
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(dest)) == [os.path.basename(path)]  # no raw copy, no partial file left

    # the same backup restored as raw equals it too (the two formats agree byte for byte)
    raw_dest = tmp_path / "raw"
    raw_dest.mkdir()
    raw = ansible("vm_restore", dict(repo, backup_id=inc["backup_id"], dest=str(raw_dest), format="raw"))
    assert _same((raw["files"][0]["path"], "raw"), (path, "qcow2"))

    # target: new_vm gets a qcow2 disk written the same way, and the guest sees the data
    new_name = vm + "-copy"
    lab.names.append(new_name)
    made = ansible("vm_restore", dict(repo, backup_id=inc["backup_id"], target="new_vm", new_vm_name=new_name,
                                      dest=str(tmp_path / "image"), start=True))
    assert made["_status"] == "ok", made
    new_disk = [f["path"] for f in made["files"]][0]
    assert lab.check(new_name, 0x5A, 30 * MiB, 512 * 1024) and lab.check(new_name, 0xA1, 70 * MiB + 4096, 2 * MiB)
    assert _data_bytes(new_disk) <= 6 * MiB

    # target: original, over the shut-off VM's own qcow2 image
    lab.write(vm, 0x77, 0, 8 * MiB)
    lab.virsh("destroy", vm)
    done = ansible("vm_restore", dict(repo, backup_id=inc["backup_id"], target="original", force=True))
    assert done["_status"] == "ok", done
    _check_image(disk[0])
    assert _same(disk, (path, "qcow2"))
    assert done["files"][0]["format"] == "qcow2"


def test_a_wrong_guess_of_the_base_is_dropped(lab, ansible, repo, tmp_path):
    """Two repositories back up one VM: the newest vmsafe checkpoint is the other repository's, so the export begun
    on it is dropped with its checkpoint, and the backup is the full one the repository's record calls for."""
    vm = lab.vm(size_mib=32)
    lab.write(vm, 0x11, 0, MiB)
    other = {"repository": str(tmp_path / "other"), "passphrase": PASS}
    first = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    second = ansible("vm_backup", dict(other, vm_name=vm, init=True))
    assert first["_status"] == "ok" and second["_status"] == "ok", (first, second)
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [second["checkpoint"]]
    lab.write(vm, 0x22, 4 * MiB, MiB)
    again = ansible("vm_backup", dict(repo, vm_name=vm))
    assert again["_status"] == "ok", again
    assert again["mode"] == "full" and "is gone from the VM" in again["reason"]
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [again["checkpoint"]]
    assert "None" in lab.virsh("domjobinfo", vm)
    # and the right guess is kept: the next incremental builds on that checkpoint
    lab.write(vm, 0x33, 8 * MiB, MiB)
    inc = ansible("vm_backup", dict(repo, vm_name=vm))
    assert inc["mode"] == "incremental" and inc["parent"] == again["backup_id"], inc
    assert inc["bytes_read"] == MiB
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [inc["checkpoint"]]


def test_a_failed_open_ends_the_export_begun_early(lab, ansible, repo):
    vm = lab.vm(size_mib=32)
    lab.write(vm, 0x44, 0, MiB)
    first = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert first["_status"] == "ok", first
    wrong = ansible("vm_backup", dict(repo, vm_name=vm, passphrase="not the passphrase"))
    assert wrong["_status"] == "failed"
    assert lab.virsh("checkpoint-list", vm, "--name").split() == [first["checkpoint"]]
    assert "None" in lab.virsh("domjobinfo", vm)
    inc = ansible("vm_backup", dict(repo, vm_name=vm))
    assert inc["mode"] == "incremental" and inc["parent"] == first["backup_id"], inc
