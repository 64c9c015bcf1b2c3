# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Bad input against the real libvirtd: each error names the problem and the fix, and leaves nothing behind."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.libvirt


def failed(result):
    assert result["_status"] == "failed", result
    return result["msg"]


def test_unknown_vm_suggests_close_names(lab, ansible):
    vm = lab.vm("web")
    msg = failed(ansible("vm_snapshot", {"vm_name": vm + "x", "snapshot_name": "s", "memory": True}))
    assert f"No VM '{vm}x' on libvirt host qemu:///system" in msg and f"Did you mean '{vm}'" in msg


def test_unknown_snapshot_lists_the_existing_ones(lab, ansible):
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "real", "memory": True})
    msg = failed(ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ghost", "state": "reverted"}))
    assert "no snapshot with name 'ghost'. Existing snapshots: 'real'" in msg
    # absent of a missing snapshot is simply nothing to do
    assert ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ghost", "state": "absent"})["changed"] is False


def test_libvirt_refuses_duplicate_names_so_present_is_idempotent(lab, ansible):
    """libvirt keeps names unique; duplicate-name handling is covered with the fake provider in the unit tests."""
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "same", "memory": True})
    assert ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "same", "memory": True})["changed"] is False
    assert lab.snapshot_names(vm) == ["same"]


def test_revert_to_external_snapshot_is_refused(lab, ansible):
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "disk_only": True})
    msg = failed(ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "state": "reverted"}))
    assert "external (disk-only) snapshot" in msg and "cannot revert" in msg
    assert lab.snapshot_names(vm) == ["ext"] and len(lab.chain(vm)) == 2


def test_revert_with_external_snapshots_present_is_refused(lab, ansible):
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "int", "memory": True})
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "ext", "disk_only": True})
    msg = failed(ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "int", "state": "reverted"}))
    assert "also has external snapshots (ext)" in msg and "Remove them first" in msg


def test_quiesce_without_agent_fails_cleanly(lab, ansible):
    vm = lab.vm()
    args = {"vm_name": vm, "snapshot_name": "q", "disk_only": True, "quiesce": True}
    msg = failed(ansible("vm_snapshot", args))
    assert "Failed to quiesce" in msg and "qemu-guest-agent" in msg and "quiesce_fallback: crash_consistent" in msg
    assert lab.snapshot_names(vm) == [] and len(lab.chain(vm)) == 1  # nothing left behind


def test_quiesce_fallback_reports_crash_consistency(lab, ansible):
    vm = lab.vm()
    args = {"vm_name": vm, "snapshot_name": "q", "disk_only": True, "quiesce": True,
            "quiesce_fallback": "crash_consistent"}
    result = ansible("vm_snapshot", args)
    assert result["changed"] and result["consistency"] == "crash_consistent"
    assert any("Could not quiesce" in w for w in result.get("warnings", []))
    assert lab.snapshot_names(vm) == ["q"]


def test_running_vm_internal_snapshot_needs_memory(lab, ansible):
    vm = lab.vm()
    msg = failed(ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "nomem"}))
    assert "only together with its memory" in msg and "memory: true" in msg and "disk_only: true" in msg
    assert lab.snapshot_names(vm) == []


def test_invalid_older_than(lab, ansible):
    msg = failed(ansible("vm_snapshot_info", {"older_than": "a week"}))
    assert "Invalid older_than 'a week'" in msg and "'7d'" in msg


def test_unreachable_uri(libvirtd, ansible):
    msg = failed(ansible("vm_snapshot_info", {"uri": "qemu+tcp://127.0.0.1:1/system", "connect_timeout": 10}))
    assert "Failed to connect to libvirt at 'qemu+tcp://127.0.0.1:1/system'" in msg and "libvirtd runs" in msg


def test_timeout_is_reported_not_success(lab, ansible):
    vm = lab.vm(memory_mib=512)
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "t", "memory": True})
    result = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "t", "state": "reverted", "timeout": 1})
    msg = failed(result)
    assert "Timed out after 1 s waiting to revert" in msg and "Raise the timeout option" in msg
    assert result["applied"] == []
