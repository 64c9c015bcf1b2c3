# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The project's vcsim overlay itself, through pyVmomi: each fix and added method behaves as the vSphere API says."""

from __future__ import annotations

import os
import sys
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

pyVmomi = pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402  pylint: disable=wrong-import-position
from pyVmomi import vim, vmodl  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def si() -> t.Iterator[t.Any]:
    with Vcsim() as sim:
        yield sim.connect()


def vm(si: t.Any, name: str) -> t.Any:
    return si.RetrieveContent().searchIndex.FindByInventoryPath(f"DC0/vm/{name}")


def test_unset_property_reads_as_none_and_capabilities_are_set(si: t.Any) -> None:
    machine = vm(si, "DC0_H0_VM0")
    assert machine.snapshot is None  # stock vcsim panicked here (bug 1)
    assert machine.runtime.consolidationNeeded is False  # stock: unset (bug 4)
    caps = machine.capability
    assert caps.snapshotOperationsSupported and caps.quiescedSnapshotsSupported and caps.changeTrackingSupported


def test_snapshot_tasks_report_the_vm_and_rename_works(si: t.Any) -> None:
    machine = vm(si, "DC0_H0_VM1")
    task = machine.CreateSnapshot_Task("a", "", False, False)
    WaitForTask(task)
    snap = task.info.result
    snap.RenameSnapshot(name="renamed", description="new text")
    node = machine.snapshot.rootSnapshotList[0]
    assert (node.name, node.description) == ("renamed", "new text")
    remove = snap.RemoveSnapshot_Task(removeChildren=False, consolidate=False)
    WaitForTask(remove)  # stock vcsim: TypeError in pyVmomi, the entity was the snapshot (bug 2)
    assert remove.info.entity == machine and machine.snapshot is None
    assert machine.runtime.consolidationNeeded is True
    WaitForTask(machine.ConsolidateVMDisks_Task())
    assert machine.runtime.consolidationNeeded is False


def test_create_snapshot_ex_and_memory(si: t.Any) -> None:
    machine = vm(si, "DC0_C0_RP0_VM0")
    WaitForTask(machine.CreateSnapshotEx_Task(name="disk-only", memory=False))
    WaitForTask(machine.CreateSnapshot_Task("with-ram", "", True, False))
    root = machine.snapshot.rootSnapshotList[0]
    assert (root.name, root.state) == ("disk-only", "poweredOff")
    assert (root.childSnapshotList[0].name, root.childSnapshotList[0].state) == ("with-ram", "poweredOn")
    with pytest.raises(vim.fault.ToolsUnavailable):
        WaitForTask(machine.CreateSnapshotEx_Task(name="q", memory=False, quiesceSpec=vim.vm.GuestQuiesceSpec(timeout=5)))
    WaitForTask(machine.RemoveAllSnapshots_Task())


def test_retrieval_pages_with_continuation(si: t.Any) -> None:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
            pc.TraversalSpec(name="v", path="view", skip=False, type=vim.view.ContainerView)])],
        propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])])
    result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions(maxObjects=3))
    pages = [len(result.objects)]
    names = [o.propSet[0].val for o in result.objects]
    while result.token:
        result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        pages.append(len(result.objects))
        names += [o.propSet[0].val for o in result.objects]
    view.Destroy()
    assert pages == [3, 1] and len(set(names)) == 4
    with pytest.raises(vmodl.fault.InvalidArgument):
        content.propertyCollector.ContinueRetrievePropertiesEx("no-such-token")
