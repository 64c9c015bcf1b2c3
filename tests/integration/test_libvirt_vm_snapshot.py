# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_snapshot against a real libvirtd + QEMU: disk content is checked through QEMU itself."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024


def test_snapshot_overwrite_revert_restores_the_old_bytes(lab, ansible):
    vm = lab.vm()
    lab.write(vm, 0xAB, 0, MiB)
    lab.write(vm, 0x5A, 32 * MiB, 64 * 1024)
    args = {"vm_name": vm, "snapshot_name": "pre-patch", "memory": True, "description": "CHG-1"}

    checked = ansible("vm_snapshot", args, check=True)
    assert checked["changed"] and checked["snapshot"]["id"] is None
    assert lab.snapshot_names(vm) == []  # check mode created nothing

    made = ansible("vm_snapshot", args, diff=True)
    assert made["changed"] and made["consistency"] == "memory"
    assert made["snapshot"]["memory"] is True and made["snapshot"]["kind"] == "internal"
    assert made["snapshot"]["description"] == "CHG-1" and made["snapshot"]["current"] is True
    assert made["diff"] == {"before": "(no snapshots)\n", "after": "- pre-patch (internal, memory, current)\n"}
    assert set(checked) - {"_rc"} == set(made) - {"_rc", "diff"}
    assert lab.snapshot_names(vm) == ["pre-patch"]

    again = ansible("vm_snapshot", args)
    assert again["changed"] is False and again["plan"] == []

    lab.write(vm, 0xCD, 0, MiB)  # the "patch"
    lab.write(vm, 0xEE, 32 * MiB, 64 * 1024)
    assert lab.check(vm, 0xCD, 0, MiB)

    reverted = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "pre-patch", "state": "reverted"})
    assert reverted["changed"] and reverted["vm"]["name"] == vm
    assert lab.check(vm, 0xAB, 0, MiB), "revert did not bring the old bytes back"
    assert lab.check(vm, 0x5A, 32 * MiB, 64 * 1024)
    assert lab.virsh("domstate", vm).strip() == "running"


def test_remove_check_real_again(lab, ansible):
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "one", "memory": True})
    args = {"vm_name": vm, "snapshot_name": "one", "state": "absent"}
    checked = ansible("vm_snapshot", args, check=True)
    assert checked["changed"] and checked["removed"] == ["one"] and lab.snapshot_names(vm) == ["one"]
    real = ansible("vm_snapshot", args)
    assert real["changed"] and real["snapshots"] == [] and lab.snapshot_names(vm) == []
    assert ansible("vm_snapshot", args)["changed"] is False


def test_remove_all_on_a_branched_tree(lab, ansible):
    vm = lab.vm()
    for name in ("a", "b"):
        ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": name, "memory": True})
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "a", "state": "reverted"})
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "c", "memory": True})  # second branch under a
    tree = {s["name"]: s["parent"] for s in ansible("vm_snapshot_info", {"vm_name": vm})["snapshots"]}
    assert tree == {"a": None, "b": "a", "c": "a"}
    args = {"vm_name": vm, "state": "remove_all"}
    checked = ansible("vm_snapshot", args, check=True)
    assert sorted(checked["removed"]) == ["a", "b", "c"] and lab.snapshot_names(vm) == ["a", "b", "c"]
    real = ansible("vm_snapshot", args)
    assert real["changed"] and lab.snapshot_names(vm) == []
    assert ansible("vm_snapshot", args)["changed"] is False


def test_shut_off_vm_snapshot_is_offline_consistent(lab, ansible):
    vm = lab.vm(start=False)
    lab.write(vm, 0x77, 0, MiB)
    made = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "cold"})
    assert made["changed"] and made["consistency"] == "offline" and made["snapshot"]["memory"] is False
    lab.write(vm, 0x00, 0, MiB)
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "cold", "state": "reverted"})
    assert lab.check(vm, 0x77, 0, MiB)


def test_vm_by_uuid(lab, ansible):
    vm = lab.vm()
    uuid = lab.virsh("domuuid", vm).strip()
    made = ansible("vm_snapshot", {"vm_id": uuid, "snapshot_name": "by-id", "memory": True})
    assert made["changed"] and made["vm"]["name"] == vm and made["vm"]["id"] == uuid


def test_disk_only_snapshot_then_remove_merges_and_keeps_data(lab, ansible):
    vm = lab.vm()
    lab.write(vm, 0x11, 0, MiB)
    made = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "disk_only": True})
    assert made["changed"] and made["snapshot"]["kind"] == "external" and made["consistency"] == "crash_consistent"
    assert len(lab.chain(vm)) == 2
    lab.write(vm, 0x22, 4 * MiB, MiB)  # lands in the overlay
    removed = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "state": "absent"})
    assert removed["changed"] and lab.snapshot_names(vm) == []
    assert len(lab.chain(vm)) == 1
    assert lab.check(vm, 0x11, 0, MiB) and lab.check(vm, 0x22, 4 * MiB, MiB)
    assert lab.virsh("domstate", vm).strip() == "running"
