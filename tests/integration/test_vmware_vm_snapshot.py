# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_snapshot on VMware, run through the real ``ansible`` command against the project's vcsim (no libvirtd)."""

from __future__ import annotations

import os
import sys
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

pyVmomi = pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402  pylint: disable=wrong-import-position
from pyVmomi import vim  # noqa: E402  pylint: disable=wrong-import-position

VM = "DC0_H0_VM0"
Run = t.Callable[..., t.Dict[str, t.Any]]


@pytest.fixture
def sim() -> t.Iterator[Vcsim]:
    """A fresh simulator (own inventory) per test; it starts in about 0.2 s."""
    with Vcsim() as simulator:
        simulator.si = simulator.connect()
        yield simulator


def vm_obj(sim: Vcsim, name: str = VM) -> t.Any:
    content = sim.si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(v for v in view.view if v.name == name)
    finally:
        view.Destroy()


def tree(sim: Vcsim, name: str = VM) -> list[tuple[str, str, str | None]]:
    """(name, moid, parent moid) of every snapshot, depth first, straight from vSphere."""
    vm = vm_obj(sim, name)
    found: list[tuple[str, str, str | None]] = []

    def walk(nodes: t.Any, parent: str | None) -> None:
        for node in nodes:
            found.append((node.name, node.snapshot._moId, parent))  # pylint: disable=protected-access
            walk(node.childSnapshotList, node.snapshot._moId)  # pylint: disable=protected-access

    if vm.snapshot is not None:
        walk(vm.snapshot.rootSnapshotList, None)
    return found


def current(sim: Vcsim, name: str = VM) -> str | None:
    vm = vm_obj(sim, name)
    return vm.snapshot.currentSnapshot._moId if vm.snapshot else None  # pylint: disable=protected-access


def take(sim: Vcsim, name: str, vm: str = VM, memory: bool = False) -> str:
    task = vm_obj(sim, vm).CreateSnapshot_Task(name, "", memory, False)
    WaitForTask(task)
    return task.info.result._moId  # pylint: disable=protected-access


def moid_of(sim: Vcsim, snapshot: str) -> str:
    (moid,) = [m for n, m, _p in tree(sim) if n == snapshot]
    return moid


def revert(sim: Vcsim, moid: str) -> None:
    WaitForTask(vim.vm.Snapshot(moid, sim.si._stub).RevertToSnapshot_Task())  # pylint: disable=protected-access


def test_present_check_mode_then_real_then_idempotent(sim: Vcsim, ansible: Run) -> None:
    args = sim.module_args(vm_name=VM, snapshot_name="pre-patch", description="CHG-1")
    checked = ansible("vm_snapshot", args, check=True, diff=True)
    assert checked["changed"] and checked["_status"] == "ok", checked
    assert tree(sim) == []
    assert checked["snapshot"]["id"] is None and checked["snapshot"]["name"] == "pre-patch"
    assert "pre-patch" in checked["diff"]["after"]

    real = ansible("vm_snapshot", args)
    assert real["changed"] and real["consistency"] == "crash_consistent", real
    (name, moid, parent), = tree(sim)
    assert (name, parent) == ("pre-patch", None)
    assert real["snapshot"]["id"] == moid and real["snapshot"]["description"] == "CHG-1"
    assert real["snapshot"]["memory"] is False  # vSphere records a running VM's disk-only snapshot as poweredOff
    assert sorted(set(checked) - {"diff"}) == sorted(real)  # check mode returns the same keys

    again = ansible("vm_snapshot", args)
    assert not again["changed"] and again["snapshot"]["id"] == moid
    assert len(tree(sim)) == 1


def test_memory_on_running_vm_and_offline_vm(sim: Vcsim, ansible: Run) -> None:
    running = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="with-ram", memory=True))
    assert running["consistency"] == "memory" and running["snapshot"]["memory"] is True, running
    WaitForTask(vm_obj(sim).PowerOffVM_Task())
    back = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="with-ram", state="reverted"))
    assert back["changed"] and vm_obj(sim).runtime.powerState == "poweredOn", back  # RAM saved: resumes running
    WaitForTask(vm_obj(sim).PowerOffVM_Task())
    off = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="off", memory=True))
    assert off["consistency"] == "offline" and off["snapshot"]["vm_state"] == "shutoff", off
    assert any("no memory to save" in w for w in off.get("warnings", []))


def test_vm_by_uuid_and_by_moid(sim: Vcsim, ansible: Run) -> None:
    vm = vm_obj(sim)
    for vm_id in (vm.config.uuid, vm._moId):  # pylint: disable=protected-access
        result = ansible("vm_snapshot", sim.module_args(vm_id=vm_id, snapshot_name="by-id"))
        assert result["_status"] == "ok" and result["vm"]["name"] == VM, result
    assert [n for n, _m, _p in tree(sim)] == ["by-id"]
    missing = ansible("vm_snapshot", sim.module_args(vm_name="DC0_H0_VMO", snapshot_name="x"))
    assert missing["_status"] == "failed" and "Did you mean" in missing["msg"] and "'DC0_H0_VM0'" in missing["msg"]


def test_duplicate_names_need_snapshot_id(sim: Vcsim, ansible: Run) -> None:
    first = take(sim, "dup")
    second = take(sim, "dup")  # vSphere allows it
    result = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="dup", state="absent"))
    assert result["_status"] == "failed" and "snapshot_id" in result["msg"], result
    assert first in result["msg"] and second in result["msg"]
    assert len(tree(sim)) == 2  # nothing removed

    removed = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_id=first, state="absent"))
    assert removed["changed"] and removed["snapshot"]["id"] == first, removed
    assert [(n, m) for n, m, _p in tree(sim)] == [("dup", second)]


def test_snapshot_in_second_branch(sim: Vcsim, ansible: Run) -> None:
    base = take(sim, "base")
    take(sim, "branch-a")
    revert(sim, base)
    take(sim, "branch-b")
    take(sim, "branch-b-leaf")
    assert [p for n, _m, p in tree(sim) if n.startswith("branch-")] == [base, base, moid_of(sim, "branch-b")]

    info = ansible("vm_snapshot_info", sim.module_args(vm_name=VM))
    assert info["vms"][0]["snapshot_count"] == 4 and info["vms"][0]["snapshot_depth"] == 3, info

    found = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="branch-b-leaf"))
    assert not found["changed"] and found["snapshot"]["depth"] == 3, found
    reverted = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="branch-b", state="reverted"))
    assert reverted["changed"] and current(sim) == moid_of(sim, "branch-b"), reverted
    gone = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="branch-b-leaf", state="absent"))
    assert gone["changed"] and "branch-b-leaf" not in [n for n, _m, _p in tree(sim)]


def test_revert_check_mode_then_real(sim: Vcsim, ansible: Run) -> None:
    first = take(sim, "first")
    take(sim, "second")
    args = sim.module_args(vm_name=VM, snapshot_name="first", state="reverted")
    checked = ansible("vm_snapshot", args, check=True)
    assert checked["changed"] and current(sim) == moid_of(sim, "second")
    real = ansible("vm_snapshot", args)
    assert real["changed"] and current(sim) == first and real["snapshot"]["current"] is True, real
    # "first" was taken without memory: like vSphere, the revert leaves the VM powered off.
    assert vm_obj(sim).runtime.powerState == "poweredOff"
    missing = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="nope", state="reverted"))
    assert missing["_status"] == "failed" and "Existing snapshots: 'first', 'second'" in missing["msg"]


def test_remove_keeps_children_or_removes_them(sim: Vcsim, ansible: Run) -> None:
    a = take(sim, "a")
    take(sim, "b")
    take(sim, "c")
    kept = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="b", state="absent"))
    assert kept["changed"] and kept["removed"] == ["b"], kept
    assert [(n, p) for n, _m, p in tree(sim)] == [("a", None), ("c", a)]  # c moved up to a

    args = sim.module_args(vm_name=VM, snapshot_name="a", state="absent", remove_children=True)
    checked = ansible("vm_snapshot", args, check=True)
    assert checked["changed"] and sorted(checked["removed"]) == ["a", "c"] and len(tree(sim)) == 2
    real = ansible("vm_snapshot", args)
    assert real["changed"] and tree(sim) == [], real
    again = ansible("vm_snapshot", args)
    assert not again["changed"] and again["_status"] == "ok", again


def test_remove_all(sim: Vcsim, ansible: Run) -> None:
    take(sim, "a")
    take(sim, "b")
    args = sim.module_args(vm_name=VM, state="remove_all")
    checked = ansible("vm_snapshot", args, check=True)
    assert checked["changed"] and len(tree(sim)) == 2
    real = ansible("vm_snapshot", args)
    assert real["changed"] and sorted(real["removed"]) == ["a", "b"] and tree(sim) == [], real
    assert not ansible("vm_snapshot", args)["changed"]


def test_quiesce_fallback(sim: Vcsim, ansible: Run) -> None:
    """vcsim (our overlay) fails a quiesced snapshot like vSphere when VMware Tools is not running."""
    failed = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="q", quiesce=True))
    assert failed["_status"] == "failed" and "Failed to quiesce VM 'DC0_H0_VM0'" in failed["msg"], failed
    assert "VMware Tools" in failed["msg"] and "No snapshot was taken" in failed["msg"]
    assert tree(sim) == []

    crash = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="q", quiesce=True,
                                                   quiesce_fallback="crash_consistent"))
    assert crash["changed"] and crash["consistency"] == "crash_consistent", crash
    assert any("crash-consistent snapshot instead" in w for w in crash.get("warnings", []))
    assert [n for n, _m, _p in tree(sim)] == ["q"]

    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="SET.guest.toolsRunningStatus",
                                                                 value="guestToolsRunning")])
    WaitForTask(vm_obj(sim).ReconfigVM_Task(spec))
    quiesced = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="q2", quiesce=True))
    assert quiesced["consistency"] == "quiesced" and quiesced["snapshot"]["quiesced"] is True, quiesced


def test_connection_errors(sim: Vcsim, ansible: Run) -> None:
    args = sim.module_args(vm_name=VM, snapshot_name="x")
    del args["validate_certs"]  # the default is true: vcsim's self-signed certificate must be refused
    refused = ansible("vm_snapshot", args)
    assert refused["_status"] == "failed" and "TLS certificate was not accepted" in refused["msg"], refused
    wrong = ansible("vm_snapshot", sim.module_args(vm_name=VM, snapshot_name="x", password="wrong"))
    assert wrong["_status"] == "failed" and "Failed to log in to vSphere host" in wrong["msg"], wrong
    assert "wrong" not in wrong["msg"]
    assert tree(sim) == []


def test_environment_variables(sim: Vcsim, ansible: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (("VMWARE_HOST", sim.host), ("VMWARE_PORT", str(sim.port)), ("VMWARE_USER", sim.username),
                       ("VMWARE_PASSWORD", sim.password), ("VMWARE_VALIDATE_CERTS", "false"),
                       ("VMSAFE_HYPERVISOR", "vmware")):
        monkeypatch.setenv(key, value)
    result = ansible("vm_snapshot", {"vm_name": VM, "snapshot_name": "env"})
    assert result["changed"] and result["_status"] == "ok", result


def test_datacenter_and_folder_scope(sim: Vcsim, ansible: Run) -> None:
    scoped = ansible("vm_snapshot_info", sim.module_args(datacenter="DC0"))
    assert scoped["summary"]["vms"] == 4, scoped
    absolute = ansible("vm_snapshot", sim.module_args(folder="/DC0/vm", vm_name=VM, snapshot_name="scoped"))
    assert absolute["changed"] and absolute["vm"]["name"] == VM, absolute
    relative = ansible("vm_snapshot", sim.module_args(folder="vm", vm_name=VM, snapshot_name="x"))
    assert relative["_status"] == "failed" and "give datacenter too" in relative["msg"], relative
    nowhere = ansible("vm_snapshot_info", sim.module_args(datacenter="DC0", folder="missing"))
    assert nowhere["_status"] == "failed" and "Failed to find folder 'DC0/vm/missing'" in nowhere["msg"], nowhere


def test_timeout_cancels_the_task_and_leaves_no_snapshot(ansible: Run) -> None:
    """With -task-delay, vcsim queues VM tasks like a busy host; the module's timeout cancels them."""
    import time  # pylint: disable=import-outside-toplevel

    with Vcsim(extra=["-task-delay", "2500"]) as slow:
        slow.si = slow.connect()
        result = ansible("vm_snapshot", slow.module_args(vm_name=VM, snapshot_name="slow", timeout=1))
        assert result["_status"] == "failed", result
        assert "Timed out after 1 s waiting to create snapshot 'slow' of VM 'DC0_H0_VM0'" in result["msg"]
        assert "cancellation was requested" in result["msg"]
        time.sleep(3)  # past the task's start: a canceled task never runs
        assert tree(slow) == []

        ok = ansible("vm_snapshot", slow.module_args(vm_name=VM, snapshot_name="patient", timeout=30))
        assert ok["changed"] and ok["snapshot"]["name"] == "patient", ok


def test_standalone_esxi(ansible: Run) -> None:
    """vcsim -esx: one ESXi host without vCenter (ha-datacenter); lookup, create and the fleet report work there."""
    with Vcsim(extra=["-esx"]) as esx:
        esx.si = esx.connect()
        made = ansible("vm_snapshot", esx.module_args(vm_name="ha-host_VM0", snapshot_name="on-esxi"))
        assert made["changed"] and made["snapshot"]["id"].startswith("snapshot-"), made
        assert [n for n, _m, _p in tree(esx, "ha-host_VM0")] == ["on-esxi"]
        info = ansible("vm_snapshot_info", esx.module_args())
        assert info["summary"]["vms"] == 2 and info["summary"]["snapshots"] == 1, info
