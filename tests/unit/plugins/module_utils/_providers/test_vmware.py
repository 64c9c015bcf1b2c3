# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The pure parts of the VMware provider, from recorded vSphere responses (a branched snapshot tree)."""

from __future__ import annotations

import datetime
import json
import os
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import AmbiguousSnapshot, OperationTimeout
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware

pyVmomi = pytest.importorskip("pyVmomi")
from pyVmomi import vim  # noqa: E402  pylint: disable=wrong-import-position

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "vmware")


@pytest.fixture
def branched() -> dict[str, t.Any]:
    with open(os.path.join(FIXTURES, "snapshot_tree_branched.json"), encoding="utf-8") as handle:
        return json.load(handle)


def convert(data: dict[str, t.Any]) -> list[t.Any]:
    sizes = vmware.snapshot_sizes(data["layoutEx"]["file"], data["layoutEx"]["snapshot"])
    return vmware.snapshots_from_tree(data["rootSnapshotList"], data["currentSnapshot"], sizes)


def test_every_branch_is_flattened_and_linked(branched: dict[str, t.Any]) -> None:
    snaps = {s.id: s for s in convert(branched)}
    assert set(snaps) == {"snapshot-69", "snapshot-71", "snapshot-74", "snapshot-76"}
    assert snaps["snapshot-69"].parent is None and snaps["snapshot-69"].depth == 1
    assert snaps["snapshot-69"].children == ["snapshot-71", "snapshot-74"]
    assert snaps["snapshot-74"].children == ["snapshot-76"]
    assert (snaps["snapshot-76"].parent, snaps["snapshot-76"].depth) == ("snapshot-74", 3)
    assert [s.id for s in snaps.values() if s.current] == ["snapshot-76"]
    assert snaps["snapshot-69"].description == "golden image"
    assert snaps["snapshot-69"].created.tzinfo is not None


def test_memory_is_read_from_the_recorded_state(branched: dict[str, t.Any]) -> None:
    snaps = {s.name: s for s in convert(branched) if s.name != "pre-patch"}
    assert snaps["base"].memory is True and snaps["base"].vm_state == "running"
    assert snaps["branch-b-leaf"].memory is False


def test_sizes_come_from_layout(branched: dict[str, t.Any]) -> None:
    snaps = convert(branched)
    assert all(s.size_bytes and s.size_bytes > 0 for s in snaps)


def test_snapshot_in_second_branch_is_found_by_name_and_id(branched: dict[str, t.Any]) -> None:
    """vmware.vmware's recursive search stops in the first branch; ours must not."""
    snaps = convert(branched)
    leaf = tree.find(snaps, "branch-b-leaf", None, "DC0_H0_VM1")
    assert leaf is not None and leaf.id == "snapshot-76"
    second = tree.find(snaps, None, "snapshot-74", "DC0_H0_VM1")
    assert second is not None and second.description == "CHG-2"
    assert [s.id for s in tree.descendants(snaps, "snapshot-74")] == ["snapshot-76"]


def test_duplicate_names_are_ambiguous_and_list_the_ids(branched: dict[str, t.Any]) -> None:
    with pytest.raises(AmbiguousSnapshot) as info:
        tree.find(convert(branched), "pre-patch", None, "DC0_H0_VM1")
    assert "snapshot-71" in str(info.value) and "snapshot-74" in str(info.value) and "snapshot_id" in str(info.value)


@pytest.mark.parametrize("state, memory, vm_state", [
    ("poweredOn", True, "running"),     # taken with memory
    ("poweredOff", False, "shutoff"),   # VM off, or running VM without memory (vSphere records poweredOff)
    ("suspended", False, "suspended"),
])
def test_memory_follows_the_recorded_state(state: str, memory: bool, vm_state: str) -> None:
    node = {"snapshot": "snapshot-1", "name": "s", "createTime": "2026-11-01T00:00:00Z", "state": state,
            "quiesced": True, "childSnapshotList": []}
    (snap,) = vmware.snapshots_from_tree([node], None)
    assert (snap.memory, snap.vm_state, snap.quiesced, snap.current) == (memory, vm_state, True, False)
    assert snap.created == datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("files, layout, expected", [
    ([], [], {}),
    ([{"key": 1, "size": 10}, {"key": 2, "size": 300}], [{"key": "snapshot-1", "dataKey": 1, "memoryKey": 2}],
     {"snapshot-1": 310}),
    ([{"key": 1, "size": 10}], [{"key": "snapshot-1", "dataKey": 1, "memoryKey": -1}], {"snapshot-1": 10}),
    ([], [{"key": "snapshot-1", "dataKey": 5, "memoryKey": -1}], {"snapshot-1": 0}),
])
def test_snapshot_sizes(files: list[dict[str, t.Any]], layout: list[dict[str, t.Any]], expected: dict[str, int]) -> None:
    assert vmware.snapshot_sizes(files, layout) == expected


class FakeTask:
    """A vim.Task stand-in: info changes as the test says; CancelTask is recorded."""

    _moId = "task-9"

    def __init__(self, *infos: t.Any) -> None:
        self.infos = list(infos)
        self.cancelled = False

    @property
    def info(self) -> t.Any:
        return self.infos.pop(0) if len(self.infos) > 1 else self.infos[0]

    def CancelTask(self) -> None:  # noqa: N802  pylint: disable=invalid-name  # the vSphere method name
        self.cancelled = True


def info(state: str, **kwargs: t.Any) -> vim.TaskInfo:
    return vim.TaskInfo(state=state, cancelable=kwargs.pop("cancelable", True), **kwargs)


def provider() -> vmware.VmwareProvider:
    return vmware.VmwareProvider({"hostname": "vc01", "port": 443}, lambda _msg: None)


def test_wait_returns_the_result() -> None:
    assert provider()._wait(FakeTask(info("running"), info("success", result="done")), 5, "x") == "done"  # pylint: disable=protected-access


def test_wait_raises_the_task_fault_with_its_text() -> None:
    fault = vim.fault.ToolsUnavailable(msg="Cannot quiesce this virtual machine because VMware Tools is not running.")
    with pytest.raises(vim.fault.ToolsUnavailable) as got:
        provider()._wait(FakeTask(info("error", error=fault)), 5, "x")  # pylint: disable=protected-access
    assert "VMware Tools" in vmware._fault_text(got.value)  # pylint: disable=protected-access


def test_wait_times_out_cancels_and_says_so() -> None:
    task = FakeTask(info("running", progress=40))
    with pytest.raises(OperationTimeout) as got:
        provider()._wait(task, 0, "create snapshot 's' of VM 'web01'")  # pylint: disable=protected-access
    assert task.cancelled
    assert "Timed out after 0 s waiting to create snapshot 's' of VM 'web01' on vSphere host vc01" in str(got.value)
    assert "40 %" in str(got.value) and "cancellation was requested" in str(got.value)


def test_consolidation_needed_is_a_repairable_leftover() -> None:
    prov = provider()
    vm = VmRef(id="vm-42", name="web01", state="running")
    prov._vms["vm-42"] = {"runtime.consolidationNeeded": True, "snapshot": None}  # pylint: disable=protected-access
    status = prov.consolidation_status(vm)
    assert status.needed and [x.kind for x in status.leftovers] == ["consolidation_needed"]
    prov._vms["vm-42"] = {"runtime.consolidationNeeded": False, "snapshot": None}  # pylint: disable=protected-access
    assert not prov.consolidation_status(vm).needed
