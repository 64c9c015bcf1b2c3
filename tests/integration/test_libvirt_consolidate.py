# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_snapshot_info and snapshot_consolidate against the real libvirtd: policies, chains, leftovers, fleets."""

from __future__ import annotations

import os

import pytest

from it_helpers import age_snapshot  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
DAY = 86400


def test_external_chain_consolidates_while_running_and_keeps_data(lab, ansible):
    vm = lab.vm()
    lab.write(vm, 0x11, 0, MiB)
    for i in range(3):
        ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": f"ext-{i}", "disk_only": True})
        lab.write(vm, 0x21 + i, (i + 1) * 4 * MiB, MiB)
    assert len(lab.chain(vm)) == 4
    info = ansible("vm_snapshot_info", {"vm_name": vm})["vms"][0]
    assert info["chain_depth"] == 4 and info["snapshot_depth"] == 3 and info["consolidation_needed"] is False

    args = {"vm_name": vm, "name_pattern": "^ext-", "keep_last": 0, "max_depth": 2}
    checked = ansible("snapshot_consolidate", args, check=True)
    entry = checked["vms"][0]
    assert checked["changed"] and sorted(r["name"] for r in entry["removed"]) == ["ext-0", "ext-1", "ext-2"]
    assert entry["bytes_reclaimed"] > 3 * MiB  # the overlays hold the 3 MiB written after the snapshots
    assert any("disk chain of 4 images (max_depth 2)" in w for w in entry["warnings"])
    assert lab.snapshot_names(vm) == ["ext-0", "ext-1", "ext-2"] and len(lab.chain(vm)) == 4

    real = ansible("snapshot_consolidate", args)
    assert real["changed"] and real["summary"]["removed"] == 3 and real["summary"]["failed"] == 0, real["vms"]
    assert lab.snapshot_names(vm) == [] and len(lab.chain(vm)) == 1
    assert lab.virsh("domstate", vm).strip() == "running"
    assert lab.check(vm, 0x11, 0, MiB)
    for i in range(3):
        assert lab.check(vm, 0x21 + i, (i + 1) * 4 * MiB, MiB)
    assert ansible("snapshot_consolidate", args)["changed"] is False


def test_leftover_overlay_is_detected_and_merged(lab, ansible):
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "disk_only": True})
    lab.write(vm, 0x42, 8 * MiB, MiB)
    lab.virsh("snapshot-delete", vm, "ext", "--metadata")  # what a crashed tool leaves: an overlay nobody tracks
    info = ansible("vm_snapshot_info", {"vm_name": vm})
    assert info["summary"]["consolidation_needed"] == 1
    leftover = info["vms"][0]["leftovers"][0]
    assert leftover["kind"] == "untracked_overlay" and leftover["disk"] == "vda"

    checked = ansible("snapshot_consolidate", {"vm_name": vm}, check=True)
    assert checked["changed"] and checked["vms"][0]["merged"][0]["files"] == leftover["files"]
    assert len(lab.chain(vm)) == 2
    real = ansible("snapshot_consolidate", {"vm_name": vm})
    assert real["changed"] and real["vms"][0]["consolidation_needed"] is False
    assert len(lab.chain(vm)) == 1 and lab.check(vm, 0x42, 8 * MiB, MiB)
    assert ansible("vm_snapshot_info", {"vm_name": vm})["summary"]["consolidation_needed"] == 0


def test_leftover_on_a_shut_off_vm_is_merged_offline(lab, ansible):
    vm = lab.vm(start=False)
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "disk_only": True})
    lab.write(vm, 0x43, 0, MiB)
    lab.virsh("snapshot-delete", vm, "ext", "--metadata")
    assert ansible("snapshot_consolidate", {"vm_name": vm})["changed"]
    assert len(lab.chain(vm)) == 1 and lab.check(vm, 0x43, 0, MiB)
    lab.virsh("start", vm)  # the redefined domain still boots its merged disk
    assert lab.check(vm, 0x43, 0, MiB)


def test_stale_external_record_after_revert_is_dropped(lab, ansible):
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "int", "memory": True})
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "disk_only": True})
    lab.virsh("snapshot-revert", vm, "int")  # raw virsh allows it, and orphans ext's overlay
    info = ansible("vm_snapshot_info", {"vm_name": vm})["vms"][0]
    assert [x["kind"] for x in info["leftovers"]] == ["stale_snapshot_metadata"]
    assert ansible("snapshot_consolidate", {"vm_name": vm})["changed"]
    assert lab.snapshot_names(vm) == ["int"]
    assert ansible("vm_snapshot_info", {"vm_name": vm})["vms"][0]["consolidation_needed"] is False


def test_age_policy_with_protection_across_the_fleet(lab, ansible):
    web, db = lab.vm("web"), lab.vm("db")
    # this test's own snapshot names: host-wide policies run while other tests (xdist) age their own snapshots
    tag = lab.prefix.strip("-").rsplit("-", 1)[-1]
    pre, golden = f"pre-patch{tag}", f"golden{tag}"
    for vm in (web, db):
        for name in (f"{pre}-old", f"{golden}-keep", f"{pre}-new"):
            ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": name, "memory": True})
        age_snapshot(lab, vm, f"{pre}-old", 10 * DAY)
        age_snapshot(lab, vm, f"{golden}-keep", 40 * DAY)

    old = ansible("vm_snapshot_info", {"older_than": "7d", "name_pattern": f"^{pre}"})
    ours = sorted((s["vm_name"], s["name"]) for s in old["snapshots"] if s["vm_name"] in (web, db))
    assert ours == [(db, f"{pre}-old"), (web, f"{pre}-old")]
    aged = next(s for s in old["snapshots"] if s["vm_name"] == web)
    assert 10 * DAY <= aged["age_seconds"] < 10 * DAY + 600
    deep = ansible("vm_snapshot_info", {"vm_name": web, "min_depth": 3})["snapshots"]
    assert [s["name"] for s in deep] == [f"{pre}-new"]
    big = ansible("vm_snapshot_info", {"vm_name": web, "larger_than": "1GiB"})["snapshots"]
    assert big == []

    # Over the whole host a policy needs name_pattern (or all_snapshots); other VMs of the shared lab are not ours.
    args = {"max_age": "7d", "name_pattern": f"^({pre}|{golden})", "protect_pattern": "keep"}
    checked = ansible("snapshot_consolidate", args, check=True)
    planned = sorted((v["vm"]["name"], r["name"]) for v in checked["vms"] for r in v["removed"]
                     if v["vm"]["name"] in (web, db))
    assert planned == [(db, f"{pre}-old"), (web, f"{pre}-old")]
    ansible("snapshot_consolidate", args)
    for vm in (web, db):
        assert lab.snapshot_names(vm) == [f"{golden}-keep", f"{pre}-new"]
    assert ansible("snapshot_consolidate", args)["changed"] is False


def test_external_snapshot_over_an_internal_parent_is_merged(lab, ansible):
    """libvirt 9 itself refuses this deletion; the collection merges the overlay and drops the record."""
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "pre-patch", "memory": True})
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "nightly", "disk_only": True})
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "nightly-2", "disk_only": True})
    lab.write(vm, 0x61, 0, MiB)
    removed = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "nightly", "state": "absent",
                                      "remove_children": True})
    assert removed["removed"] == ["nightly-2", "nightly"]
    assert lab.snapshot_names(vm) == ["pre-patch"] and len(lab.chain(vm)) == 1
    assert lab.check(vm, 0x61, 0, MiB)
    # the internal rollback point still works after the merge
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "pre-patch", "state": "reverted"})
    assert lab.check(vm, 0x00, 0, MiB)


def test_thin_clone_of_a_template_is_not_a_leftover(lab, ansible, tmp_path):
    """A VM whose disk is a qcow2 overlay on a shared golden image must never be 'consolidated' into it."""
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    vm = lab.vm(start=False)
    image = labvm.active_image(vm)
    golden = str(tmp_path / "golden.qcow2")
    os.rename(image, golden)
    import subprocess  # pylint: disable=import-outside-toplevel

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", golden, image], check=True)
    info = ansible("vm_snapshot_info", {"vm_name": vm})["vms"][0]
    assert info["chain_depth"] == 2 and info["consolidation_needed"] is False and info["leftovers"] == []
    assert ansible("snapshot_consolidate", {"vm_name": vm})["changed"] is False
    assert len(lab.chain(vm)) == 2 and os.path.exists(golden)
