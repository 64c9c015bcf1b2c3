# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Consolidation on VMware and the fleet listing (one retrieval, paged), against the project's vcsim."""

from __future__ import annotations

import os
import re
import sys
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

pyVmomi = pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402  pylint: disable=wrong-import-position
from pyVmomi import vim  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware  # noqa: E402  pylint: disable=wrong-import-position

VM = "DC0_H0_VM1"
Run = t.Callable[..., t.Dict[str, t.Any]]


def vm_obj(si: t.Any, name: str = VM) -> t.Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(v for v in view.view if v.name == name)
    finally:
        view.Destroy()


def test_consolidation_needed_detected_and_cleared(ansible: Run) -> None:
    with Vcsim() as sim:
        si = sim.connect()
        vm = vm_obj(si)
        task = vm.CreateSnapshot_Task("old", "", False, False)
        WaitForTask(task)
        # A removal without consolidation leaves the delta disks behind: vSphere sets consolidationNeeded.
        WaitForTask(task.info.result.RemoveSnapshot_Task(removeChildren=False, consolidate=False))
        assert vm.runtime.consolidationNeeded is True

        info = ansible("vm_snapshot_info", sim.module_args())
        assert info["summary"]["consolidation_needed"] == 1, info
        (entry,) = [v for v in info["vms"] if v["vm"]["name"] == VM]
        assert entry["consolidation_needed"] and entry["leftovers"][0]["kind"] == "consolidation_needed"
        assert "consolidationNeeded" in entry["consolidation_reasons"][0]

        args = sim.module_args(vm_name=VM)
        checked = ansible("snapshot_consolidate", args, check=True)
        assert checked["changed"] and checked["vms"][0]["merged"][0]["kind"] == "consolidation_needed", checked
        assert vm.runtime.consolidationNeeded is True  # check mode changed nothing

        real = ansible("snapshot_consolidate", args)
        assert real["changed"] and real["vms"][0]["consolidation_needed"] is False, real
        assert vm.runtime.consolidationNeeded is False
        again = ansible("snapshot_consolidate", args)
        assert not again["changed"], again
        after = ansible("vm_snapshot_info", sim.module_args())
        assert after["summary"]["consolidation_needed"] == 0


def test_consolidate_policy_removes_old_snapshots(ansible: Run) -> None:
    with Vcsim() as sim:
        si = sim.connect()
        vm = vm_obj(si)
        for name in ("keep-1", "pre-patch-1", "pre-patch-2", "pre-patch-3"):
            WaitForTask(vm.CreateSnapshot_Task(name, "", False, False))
        args = sim.module_args(vm_name=VM, name_pattern="^pre-patch", keep_last=1)
        result = ansible("snapshot_consolidate", args)
        removed = sorted(r["name"] for r in result["vms"][0]["removed"])
        assert result["changed"] and removed == ["pre-patch-1", "pre-patch-2"], result
        names = []

        def walk(nodes: t.Any) -> None:
            for node in nodes:
                names.append(node.name)
                walk(node.childSnapshotList)

        walk(vm.snapshot.rootSnapshotList)
        assert names == ["keep-1", "pre-patch-3"]
        assert not ansible("snapshot_consolidate", args)["changed"]


def test_fleet_info_is_one_paged_retrieval(ansible: Run) -> None:
    """More VMs than one page: every VM is reported, through one RetrievePropertiesEx and its continuation."""
    per_pool = vmware.PAGE_SIZE // 2 + 10  # two pools (standalone host, cluster) -> more than one page
    with Vcsim(vms_per_pool=per_pool, trace=True) as sim:
        si = sim.connect()
        WaitForTask(vm_obj(si, "DC0_C0_RP0_VM7").CreateSnapshot_Task("deep-in-page-two", "", False, False))
        before = sim.log()
        info = ansible("vm_snapshot_info", sim.module_args(name_pattern="^deep"))
        calls = sim.log()[len(before):]
    assert info["_status"] == "ok", info
    assert info["summary"]["vms"] == 2 * per_pool, info["summary"]
    assert [s["vm_name"] for s in info["snapshots"]] == ["DC0_C0_RP0_VM7"]
    # vcsim -trace logs each SOAP request body; the method is the first element in the Body.
    requests = [m.group(1) for part in calls.split("Request: ")[1:]
                for m in [re.search(r"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)", part)] if m]
    assert requests.count("RetrievePropertiesEx") == 1, requests
    assert requests.count("ContinueRetrievePropertiesEx") == 1, requests
    assert "CreateContainerView" in requests
