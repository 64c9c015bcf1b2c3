# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""VMware restore targets against the project's vcsim: a new VM with the recorded hardware, and over the original.

Disk content is uploaded to the disk's flat file through the datastore HTTP interface before the backup; each
restore is checked by reading the restored VM's flat file back. The new VM must have the backed-up VM's firmware
(EFI with secure boot), controller, disk placement, CPU/memory and network cards, with new MAC addresses unless
``keep_mac_addresses``; a restore over the original refuses a running VM, keeps its MACs, switches its disks to the
restored files and removes the old ones; a failure before the switch leaves the VM as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402  pylint: disable=wrong-import-position
from pyVmomi import vim  # noqa: E402  pylint: disable=wrong-import-position

from test_vmware_backup import datastore, disk_of, find, flat_url, grow  # noqa: E402  pylint: disable=wrong-import-position,import-error

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ProviderError  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmSelector  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware as vmware_provider  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware_backup  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware_restore  # noqa: E402  pylint: disable=wrong-import-position

VM = "DC0_H0_VM0"
MiB = 1024 * 1024
PASS = "vmware-restore-test-passphrase"  # test data, not a secret


@pytest.fixture
def sim() -> t.Iterator[Vcsim]:
    with Vcsim() as simulator:
        simulator.si = simulator.connect()
        yield simulator


def reconfigure(vm: t.Any, **spec: t.Any) -> None:
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(**spec)))


def power_off(vm: t.Any) -> None:
    if vm.runtime.powerState != "poweredOff":
        WaitForTask(vm.PowerOffVM_Task())


def nics(vm: t.Any) -> list[t.Any]:
    return sorted((d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)),
                  key=lambda d: type(d).__name__)


def prepared(sim: Vcsim, content: bytes) -> t.Any:
    """VM0 off, EFI with secure boot, 4 vCPUs in 2 sockets, 2 GiB, a second (vmxnet3) NIC, content on its disk."""
    vm = grow(sim, VM, 4 * MiB)
    power_off(vm)
    card = vim.vm.device.VirtualVmxnet3(key=-1, addressType="generated", backing=vim.vm.device.VirtualEthernetCard.
                                        NetworkBackingInfo(deviceName="VM Network"))
    reconfigure(vm, firmware="efi", bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True), numCPUs=4,
                numCoresPerSocket=2, memoryMB=2048,
                deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=card)])
    datastore(sim, "PUT", flat_url(disk_of(vm)), content)
    return find(sim, VM)


def test_new_vm_gets_the_recorded_hardware_and_new_macs_unless_asked(ansible, sim, tmp_path):
    content = random.Random(3).randbytes(MiB) + bytes(2 * MiB) + b"\x7f" * MiB
    vm = prepared(sim, content)
    original_macs = [n.macAddress for n in nics(vm)]
    assert len(original_macs) == 2
    repo = str(tmp_path / "repo")
    backup = ansible("vm_backup", sim.module_args(vm_name=VM, repository=repo, passphrase=PASS, init=True))
    assert backup["_status"] == "ok", backup.get("msg")
    args = sim.module_args(repository=repo, passphrase=PASS, backup_id=backup["backup_id"], target="new_vm",
                           new_vm_name="copy01", dest=str(tmp_path))

    check = ansible("vm_restore", args, check=True)
    assert check["_status"] == "ok" and check["changed"], check.get("msg")
    assert find(sim, "copy01") is None
    real = ansible("vm_restore", args)
    assert real["_status"] == "ok" and real["changed"], real.get("msg")
    assert set(check) - {"_rc", "invocation"} == set(real) - {"_rc", "invocation"}
    assert real["vm"]["name"] == "copy01"
    copy = find(sim, "copy01")
    assert copy.config.uuid != vm.config.uuid
    assert copy.config.firmware == "efi" and copy.config.bootOptions.efiSecureBootEnabled is True
    hw = copy.config.hardware
    assert (hw.numCPU, hw.numCoresPerSocket, hw.memoryMB) == (4, 2, 2048)
    disk = disk_of(copy)
    controller = next(d for d in hw.device if d.key == disk.controllerKey)
    assert isinstance(controller, vim.vm.device.ParaVirtualSCSIController) and controller.busNumber == 0
    assert disk.unitNumber == disk_of(vm).unitNumber
    assert datastore(sim, "GET", flat_url(disk)) == content
    cards = nics(copy)
    assert [type(c).__name__ for c in cards] == [type(c).__name__ for c in nics(vm)]
    assert isinstance(cards[0].backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo)
    assert cards[0].backing.port.portgroupKey == nics(vm)[0].backing.port.portgroupKey
    assert cards[1].backing.deviceName == "VM Network"
    assert not set(c.macAddress for c in cards) & set(original_macs)  # new MACs: the copy never clashes

    again = ansible("vm_restore", args)
    assert again["_status"] == "ok" and not again["changed"], again.get("msg")
    assert again["vm"]["id"] == real["vm"]["id"]

    kept = ansible("vm_restore", dict(args, new_vm_name="copy02", keep_mac_addresses=True))
    assert kept["_status"] == "ok", kept.get("msg")
    assert sorted(c.macAddress for c in nics(find(sim, "copy02"))) == sorted(original_macs)
    assert all(c.addressType == "manual" for c in nics(find(sim, "copy02")))

    taken = ansible("vm_restore", dict(args, new_vm_name="DC0_H0_VM1"))
    assert taken["_status"] == "failed" and "exists already" in taken["msg"]


def test_over_the_original_refuses_running_then_switches_disks_and_keeps_macs(ansible, sim, tmp_path):
    content = random.Random(4).randbytes(2 * MiB) + bytes(2 * MiB)
    vm = prepared(sim, content)
    macs = [n.macAddress for n in nics(vm)]
    old_url = flat_url(disk_of(vm))
    old_name = disk_of(vm).backing.fileName
    repo = str(tmp_path / "repo")
    backup = ansible("vm_backup", sim.module_args(vm_name=VM, repository=repo, passphrase=PASS, init=True))
    assert backup["_status"] == "ok", backup.get("msg")
    datastore(sim, "PUT", old_url, b"\xee" * (4 * MiB))  # the disk changes after the backup
    args = sim.module_args(repository=repo, passphrase=PASS, backup_id=backup["backup_id"], target="original",
                           force=True)

    WaitForTask(vm.PowerOnVM_Task())
    running = ansible("vm_restore", args, check=True)  # said in check mode already
    assert running["_status"] == "failed" and "shut it off" in running["msg"], running.get("msg")
    power_off(vm)

    check = ansible("vm_restore", args, check=True)
    assert check["_status"] == "ok" and check["changed"], check.get("msg")
    assert datastore(sim, "GET", old_url) == b"\xee" * (4 * MiB)
    real = ansible("vm_restore", args)
    assert real["_status"] == "ok" and real["changed"], real.get("msg")
    after = find(sim, VM)
    new_disk = disk_of(after)
    assert new_disk.backing.fileName == real["files"][0]["path"] != old_name
    assert "_vmsafe-" in check["files"][0]["path"]  # a new file each run, next to the VM's files
    assert datastore(sim, "GET", flat_url(new_disk)) == content
    assert [n.macAddress for n in nics(after)] == macs  # the original keeps its own MACs
    assert after.config.changeTrackingEnabled is False  # the next backup is a full one
    with pytest.raises(AssertionError):
        datastore(sim, "GET", old_url)  # the old disk file is gone
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".raw")]

    nxt = ansible("vm_backup", sim.module_args(vm_name=VM, repository=repo, passphrase=PASS))
    assert nxt["_status"] == "ok" and nxt["mode"] == "full", nxt.get("msg")

    WaitForTask(after.CreateSnapshot_Task(name="keep", memory=False, quiesce=False))
    snapped = ansible("vm_restore", args, check=True)
    assert snapped["_status"] == "failed" and "has snapshots" in snapped["msg"]


def provider(sim: Vcsim, warnings: list[str]) -> vmware_provider.VmwareProvider:
    vmware_provider.load_sdk()
    p = vmware_provider.VmwareProvider(sim.module_args(), warnings.append)
    p.connect()
    return p


@pytest.mark.parametrize("fail_at", ["upload", "switch"])
def test_a_failure_before_the_switch_leaves_the_original_as_it_was(sim, tmp_path, monkeypatch, fail_at):
    vm = prepared(sim, b"\x42" * (4 * MiB))
    before = disk_of(vm).backing.fileName
    local = tmp_path / "disk.raw"
    local.write_bytes(b"\x99" * (4 * MiB))
    warnings: list[str] = []
    p = provider(sim, warnings)
    try:
        ref = p.find_vm(VmSelector(name=VM))
        label = disk_of(vm).deviceInfo.label
        paths = p.restore_paths(ref, [label], "t0")
        if fail_at == "upload":
            real_request = vmware_backup.DatastoreHttp.request

            def request(self: t.Any, method: str, url: str, *args: t.Any, **kwargs: t.Any) -> bytes:
                if method == "PUT" and "-flat.vmdk" not in url:
                    raise ProviderError("injected: the descriptor upload failed")
                return real_request(self, method, url, *args, **kwargs)

            monkeypatch.setattr(vmware_backup.DatastoreHttp, "request", request)
        else:
            real_run = p.run_task

            def run_task(start: t.Any, timeout: int, what: str, verb: str, vm_ref: t.Any) -> t.Any:
                if what.startswith("switch the disks"):
                    raise ProviderError("injected: the reconfiguration failed")
                return real_run(start, timeout, what, verb, vm_ref)

            monkeypatch.setattr(p, "run_task", run_task)
        with pytest.raises(ProviderError, match="injected"):
            p.restore_over_vm(ref, {label: str(local)}, paths, 60)
        monkeypatch.undo()
    finally:
        p.close()
    vm = find(sim, VM)
    assert disk_of(vm).backing.fileName == before
    assert datastore(sim, "GET", flat_url(disk_of(vm))) == b"\x42" * (4 * MiB)
    new_flat = paths[label].partition("] ")[2].replace(".vmdk", "-flat.vmdk")
    with pytest.raises(AssertionError):  # the uploaded file was removed again
        datastore(sim, "GET", f"/folder/{new_flat}?dcPath=DC0&dsName=LocalDS_0")
    assert not warnings


def test_an_older_backup_without_hardware_restores_with_a_warning_of_what_was_left_out(sim, tmp_path):
    vm = find(sim, VM)
    disk = disk_of(vm)
    local = tmp_path / "disk.raw"
    local.write_bytes(b"\x13" * MiB)
    datastore_name = disk.backing.fileName.partition("] ")[0].lstrip("[")
    old = {"name": VM, "guest_id": "otherGuest64", "num_cpus": 1, "memory_mb": 64, "datacenter": "DC0",
           "datastore": datastore_name, "disks": [{"label": "disk-x", "capacity": MiB}]}
    warnings: list[str] = []
    p = provider(sim, warnings)
    try:
        ref = p.define_restored_vm(json.dumps(old), "oldcopy", {"disk-x": (str(local), "raw")}, False,
                                   backup_id="20260101T000000Z-00000000")
        assert p.restored_from(ref) == "20260101T000000Z-00000000"
    finally:
        p.close()
    assert any("did not record" in w and "network cards" in w and "firmware" in w for w in warnings), warnings
    copy = find(sim, "oldcopy")
    assert nics(copy) == []
    assert isinstance(next(d for d in copy.config.hardware.device if d.key == disk_of(copy).controllerKey),
                      vim.vm.device.ParaVirtualSCSIController)
    assert hashlib.sha256(datastore(sim, "GET", flat_url(disk_of(copy)))).hexdigest() == \
        hashlib.sha256(b"\x13" * MiB).hexdigest()


def test_describe_records_controllers_nics_and_firmware_from_a_config():
    config = vim.vm.ConfigInfo(firmware="efi", version="vmx-19",
                               bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True),
                               hardware=vim.vm.VirtualHardware(numCoresPerSocket=2, device=[
                                   vim.vm.device.VirtualLsiLogicSASController(
                                       key=1000, busNumber=1, sharedBus="noSharing"),
                                   vim.vm.device.VirtualAHCIController(key=15000, busNumber=0),
                                   vim.vm.device.VirtualDisk(
                                       key=2001, controllerKey=1000, unitNumber=3, capacityInBytes=MiB,
                                       deviceInfo=vim.Description(label="Hard disk 1", summary=""),
                                       backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(thinProvisioned=True)),
                                   vim.vm.device.VirtualE1000e(
                                       key=4000, macAddress="00:50:56:aa:bb:cc", addressType="assigned",
                                       deviceInfo=vim.Description(label="Network adapter 1", summary=""),
                                       backing=vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo(
                                           opaqueNetworkId="ls-1", opaqueNetworkType="nsx.LogicalSwitch")),
                               ]))
    found = vmware_restore.describe(vim, config, {})
    assert found["firmware"] == "efi" and found["secure_boot"] is True and found["hardware_version"] == "vmx-19"
    # the SATA controller has no disk on it, so it is not recorded
    assert found["controllers"] == [{"key": 1000, "type": "VirtualLsiLogicSASController", "bus": 1,
                                     "shared_bus": "noSharing"}]
    assert found["disks"] == [{"label": "Hard disk 1", "capacity": MiB, "controller": 1000, "unit": 3, "thin": True}]
    assert found["nics"][0]["backing"] == "opaque" and found["nics"][0]["mac"] == "00:50:56:aa:bb:cc"
    assert vmware_restore.left_out(found) == [] and len(vmware_restore.left_out({"disks": []})) == 5
