# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""VMware backups against the project's vcsim: CBT full + incremental with content uploaded first, restores.

Disk content is uploaded to the disk's flat file through the datastore HTTP interface (as the tests' own set-up);
vm_backup must read it back through QueryChangedDiskAreas and HTTP byte ranges. Each backup restored to an image
equals the disk at that moment, the incremental reads only the changed 64 KiB blocks, and a restore to a new VM
creates a VM whose disk holds the same bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import ssl
import sys
import typing as t
import urllib.parse

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402  pylint: disable=wrong-import-position
from pyVmomi import vim  # noqa: E402  pylint: disable=wrong-import-position

VM = "DC0_H0_VM0"
MiB = 1024 * 1024
BLOCK = 64 * 1024
PASS = "vmware-backup-test-passphrase"  # test data, not a secret


@pytest.fixture
def sim() -> t.Iterator[Vcsim]:
    with Vcsim() as simulator:
        simulator.si = simulator.connect()
        yield simulator


def find(sim: Vcsim, name: str) -> t.Any:
    content = sim.si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next((v for v in view.view if v.name == name), None)
    finally:
        view.Destroy()


def flat_url(disk: t.Any) -> str:
    datastore, _sep, path = disk.backing.fileName.partition("] ")
    query = urllib.parse.urlencode({"dcPath": "DC0", "dsName": datastore.lstrip("[")})
    return f"/folder/{urllib.parse.quote(path.replace('.vmdk', '-flat.vmdk'))}?{query}"


def datastore(sim: Vcsim, method: str, url: str, body: bytes | None = None) -> bytes:
    conn = http.client.HTTPSConnection(sim.host, sim.port, context=ssl._create_unverified_context())  # pylint: disable=protected-access
    try:
        conn.request(method, url, body=body, headers={"Cookie": sim.si._stub.cookie})  # pylint: disable=protected-access
        answer = conn.getresponse()
        data = answer.read()
        assert answer.status in (200, 201, 204), (answer.status, data[:200])
        return data
    finally:
        conn.close()


def disk_of(vm: t.Any) -> t.Any:
    return next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))


def grow(sim: Vcsim, name: str, size: int) -> t.Any:
    """vcsim's VMs have 1 MiB disks: make the first one ``size`` bytes; return the VM."""
    vm = find(sim, name)
    disk = disk_of(vm)
    disk.capacityInKB = size // 1024
    disk.capacityInBytes = size
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=[
        vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)])))
    return find(sim, name)


def test_cbt_full_and_incremental_round_trip_and_restore_to_a_new_vm(ansible, sim, tmp_path):
    rng = random.Random(5)
    vm = grow(sim, VM, 8 * MiB)
    disk = disk_of(vm)
    capacity = int(disk.capacityInBytes or disk.capacityInKB * 1024)
    content = bytearray(rng.randbytes(3 * MiB) + bytes(2 * MiB) + rng.randbytes(MiB))
    datastore(sim, "PUT", flat_url(disk), bytes(content))
    repo = str(tmp_path / "repo")
    args = sim.module_args(vm_name=VM, repository=repo, passphrase=PASS)

    full = ansible("vm_backup", dict(args, init=True))
    assert full["_status"] == "ok", full.get("msg")
    assert full["mode"] == "full"
    assert any("Changed Block Tracking was off" in w for w in full.get("warnings", []))
    assert full["bytes_read"] == 4 * MiB  # the allocated (non-zero) areas, not the whole disk
    assert find(sim, VM).snapshot is None  # the backup snapshot is gone
    assert find(sim, VM).config.changeTrackingEnabled is True
    states = [bytes(content) + bytes(capacity - len(content))]

    for offset in (0, 2 * MiB + BLOCK, 5 * MiB + 3 * BLOCK):
        content[offset:offset + 4096] = rng.randbytes(4096)
    datastore(sim, "PUT", flat_url(disk), bytes(content))
    inc = ansible("vm_backup", args)
    assert inc["_status"] == "ok", inc.get("msg")
    assert inc["mode"] == "incremental", inc["reason"]
    assert inc["bytes_read"] == 3 * BLOCK
    assert find(sim, VM).snapshot is None
    states.append(bytes(content) + bytes(capacity - len(content)))

    for backup_id, expected in zip((full["backup_id"], inc["backup_id"]), states):
        restored = ansible("vm_restore", {"repository": repo, "passphrase": PASS, "backup_id": backup_id,
                                          "target": "image", "format": "raw", "dest": str(tmp_path)})
        assert restored["_status"] == "ok", restored.get("msg")
        with open(restored["files"][0]["path"], "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == hashlib.sha256(expected).hexdigest()
        os.unlink(restored["files"][0]["path"])

    new = ansible("vm_restore", sim.module_args(repository=repo, passphrase=PASS, backup_id=inc["backup_id"],
                                                target="new_vm", new_vm_name="restored01", dest=str(tmp_path)))
    assert new["_status"] == "ok", new.get("msg")
    clone = find(sim, "restored01")
    assert clone is not None and clone.config.uuid != vm.config.uuid
    clone_disk = disk_of(clone)
    assert int(clone_disk.capacityInBytes or clone_disk.capacityInKB * 1024) == capacity
    assert datastore(sim, "GET", flat_url(clone_disk)) == states[1]


def test_unknown_change_id_reads_that_disk_in_full_and_nothing_is_left(ansible, sim, tmp_path):
    vm = find(sim, VM)
    disk = disk_of(vm)
    datastore(sim, "PUT", flat_url(disk), b"\x11" * MiB)
    repo = str(tmp_path / "repo")
    args = sim.module_args(vm_name=VM, repository=repo, passphrase=PASS)
    assert ansible("vm_backup", dict(args, init=True))["mode"] == "full"
    sim.stop()  # change ids live in the simulator's memory: a new simulator (same inventory) knows none of them
    with Vcsim() as fresh:
        fresh.si = fresh.connect()
        disk2 = disk_of(find(fresh, VM))
        datastore(fresh, "PUT", flat_url(disk2), b"\x11" * MiB)
        WaitForTask(find(fresh, VM).ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)))
        again = ansible("vm_backup", fresh.module_args(vm_name=VM, repository=repo, passphrase=PASS))
        # the repository's last backup names change ids this vCenter never issued: same VM uuid, so auto tries an
        # incremental, finds the ids invalid, and reads the disk in full (with a warning), still correct
        assert again["_status"] == "ok", again.get("msg")
        assert any("no longer valid" in w for w in again.get("warnings", [])), (again["mode"], again["reason"], again.get("warnings"))
        assert again["bytes_read"] == MiB
        assert find(fresh, VM).snapshot is None
