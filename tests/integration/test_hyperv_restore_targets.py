# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Hyper-V restore targets against the WinRM simulator: a new VM with the recorded hardware, and over the original.

Known bytes are written into the simulated disks (a test control of the simulator); a restore sends the backup's
data into new VHDX files through the shipped scripts (stdin over WS-Man Send), and the simulated VM's disks must
then equal the backup byte for byte. Every script the collection sends is checked by the simulator against
Microsoft's reference (tests/hyperv_ref) and refused when it disagrees.
"""

from __future__ import annotations

import hashlib
import json
import random

from test_hyperv_vm_snapshot import NASTY_VM, conn, server, sim  # noqa: F401  pylint: disable=unused-import,import-error

MiB = 1024 * 1024
PASS = "hyperv-restore-test-passphrase"  # test data, not a secret


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def backed_up(ansible, sim, tmp_path, name: str = "app01", disks: int = 2) -> tuple:
    rng = random.Random(21)
    vm = sim.host.add_vm(name, state="Off", disk_size=4 * MiB, disks=disks)
    vm.memory_bytes, vm.processors, vm.secure_boot_template = 3 << 30, 4, "MicrosoftUEFICertificateAuthority"
    vm.nics.append({"name": "Backend", "switch": "Internal", "mac": "00155DAABBCC", "dynamic_mac": False})
    for target in vm.disks:
        sim.host.write(vm, rng.randrange(0, 3 * MiB), rng.randbytes(MiB), target)
    repo = str(tmp_path / "repo")
    backup = ansible("vm_backup", conn(sim, vm_name=name, repository=repo, passphrase=PASS, init=True))
    assert backup["_status"] == "ok", backup.get("msg")
    return vm, repo, backup, {target: digest(data) for target, data in vm.disks.items()}


def test_new_vm_gets_the_recorded_hardware_and_new_macs_unless_asked(ansible, sim, tmp_path):
    vm, repo, backup, digests = backed_up(ansible, sim, tmp_path)
    args = conn(sim, repository=repo, passphrase=PASS, backup_id=backup["backup_id"], target="new_vm",
                new_vm_name="app01-copy", dest=str(tmp_path))

    check = ansible("vm_restore", args, check=True)
    assert check["_status"] == "ok" and check["changed"], check.get("msg")
    assert len(sim.host.vms) == 1 and not sim.host.files
    real = ansible("vm_restore", args)
    assert real["_status"] == "ok" and real["changed"], real.get("msg")
    assert set(check) - {"_rc", "invocation"} == set(real) - {"_rc", "invocation"}
    copy = sim.host.vm_by_name("app01-copy")
    assert real["vm"]["id"] == copy.id != vm.id
    assert (copy.generation, copy.memory_bytes, copy.processors) == (2, 3 << 30, 4)
    assert (copy.secure_boot, copy.secure_boot_template) == ("On", "MicrosoftUEFICertificateAuthority")
    assert {t: digest(d) for t, d in copy.disks.items()} == digests  # both disks, at their recorded locations
    assert [(n["name"], n["switch"]) for n in copy.nics] == [(n["name"], n["switch"]) for n in vm.nics]
    assert not {n["mac"] for n in copy.nics} & {n["mac"] for n in vm.nics}  # new MACs
    assert all(n["dynamic_mac"] for n in copy.nics)
    # only the non-zero data crossed WinRM (1 MiB written per disk, in 192 KiB pieces)
    assert sim.host.bytes_written <= 2 * (MiB + 2 * 192 * 1024)

    again = ansible("vm_restore", args)
    assert again["_status"] == "ok" and not again["changed"], again.get("msg")
    assert len(sim.host.vms) == 2

    kept = ansible("vm_restore", dict(args, new_vm_name="app01-dr", keep_mac_addresses=True))
    assert kept["_status"] == "ok", kept.get("msg")
    dr = sim.host.vm_by_name("app01-dr")
    assert [n["mac"] for n in dr.nics] == [n["mac"] for n in vm.nics]
    assert not any(n["dynamic_mac"] for n in dr.nics)

    taken = ansible("vm_restore", dict(args, new_vm_name="app01"))
    assert taken["_status"] == "failed" and "exists already" in taken["msg"]

    sim.host.switches.discard("Internal")  # a host without the recorded switch: nothing is left behind
    files = dict(sim.host.files)
    missing = ansible("vm_restore", dict(args, new_vm_name="app01-elsewhere"))
    assert missing["_status"] == "failed" and "Internal" in missing["msg"]
    assert sim.host.files.keys() == files.keys() and len(sim.host.vms) == 3


def test_over_the_original_refuses_running_survives_a_failed_switch_then_switches_and_keeps_macs(ansible, sim,
                                                                                                 tmp_path):
    vm, repo, backup, digests = backed_up(ansible, sim, tmp_path, name=NASTY_VM)
    macs = [n["mac"] for n in vm.nics]
    old_paths = {t: vm.drive_path(t) for t in vm.disks}
    for target in vm.disks:
        sim.host.write(vm, 0, b"\xee" * MiB, target)  # the disks change after the backup
    changed = {t: digest(d) for t, d in vm.disks.items()}
    args = conn(sim, repository=repo, passphrase=PASS, backup_id=backup["backup_id"], target="original", force=True)

    vm.state = "Running"
    running = ansible("vm_restore", args)
    assert running["_status"] == "failed" and "shut it off" in running["msg"], running.get("msg")
    vm.state = "Off"

    sim.host.fail_switch_at = 1  # the second drive's Set-VMHardDiskDrive fails: the script puts the first back
    failed = ansible("vm_restore", args)
    assert failed["_status"] == "failed" and "Set-VMHardDiskDrive failed" in failed["msg"]
    assert {t: digest(d) for t, d in vm.disks.items()} == changed
    assert {t: vm.drive_path(t) for t in vm.disks} == old_paths
    assert sim.host.files == {}  # both new VHDX files were removed again
    assert vm.reference_points  # and the backup chain is intact
    sim.host.fail_switch_at = None

    check = ansible("vm_restore", args, check=True)
    assert check["_status"] == "ok" and check["changed"], check.get("msg")
    assert not sim.host.files and {t: vm.drive_path(t) for t in vm.disks} == old_paths
    real = ansible("vm_restore", args)
    assert real["_status"] == "ok" and real["changed"], real.get("msg")
    assert {t: digest(d) for t, d in vm.disks.items()} == digests
    assert sorted(vm.drive_path(t) for t in vm.disks) == sorted(f["path"] for f in real["files"])
    assert not set(old_paths.values()) & set(sim.host.files)  # the old files are deleted
    assert [n["mac"] for n in vm.nics] == macs
    assert vm.reference_points == {}  # the next backup is a full one
    nxt = ansible("vm_backup", conn(sim, vm_name=NASTY_VM, repository=repo, passphrase=PASS))
    assert nxt["_status"] == "ok" and nxt["mode"] == "full", nxt.get("msg")

    sim.host.checkpoint(vm, "keep")
    snapped = ansible("vm_restore", args, check=True)
    assert snapped["_status"] == "failed" and "checkpoint" in snapped["msg"]


def test_an_older_backup_without_hardware_restores_with_a_warning(ansible, sim, tmp_path):
    vm = sim.host.add_vm("app01", state="Off", disk_size=MiB)
    sim.host.write(vm, 4096, b"\x5a" * 8192)
    backup_id = "20260101T000000Z-0123abcd"
    # what an older vm_backup recorded: no firmware, drives or adapters
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv as hv  # pylint: disable=import-outside-toplevel

    hv.load_sdk()
    warnings: list[str] = []
    provider = hv.HypervProvider(conn(sim, validate_certs=True), warnings.append)
    provider.connect()
    try:
        old = {"name": vm.name, "generation": 2, "memory_bytes": 1 << 30, "processors": 2,
               "disks": [{"target": "SCSI0:0", "path": "x", "size": MiB}]}
        local = tmp_path / "disk.raw"
        local.write_bytes(bytes(vm.disks["SCSI0:0"]))
        ref = provider.define_restored_vm(json.dumps(old), "oldcopy", {"SCSI0:0": (str(local), "raw")}, False,
                                          backup_id=backup_id)
        assert provider.restored_from(ref) == backup_id
    finally:
        provider.close()
    assert any("did not record" in w and "network adapters" in w for w in warnings), warnings
    copy = sim.host.vm_by_name("oldcopy")
    assert copy.nics == [] and digest(copy.disks["SCSI0:0"]) == digest(vm.disks["SCSI0:0"])
