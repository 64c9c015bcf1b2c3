# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The fleet retrieval read without pyVmomi's deserializer (vmware_fleet) gives exactly what pyVmomi gives.

Same vcsim, same inventory, both paths through the provider: VM identities, snapshot trees in several branches
(with memory, quiesced, nested children), sizes from layoutEx, disk chains and the consolidation flag, over
more than one page of results.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

pyVmomi = pytest.importorskip("pyVmomi")
from pyVim.task import WaitForTask  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware, vmware_fleet  # noqa: E402  pylint: disable=wrong-import-position


def report(provider: vmware.VmwareProvider) -> dict[str, t.Any]:
    """Everything vm_snapshot_info builds from the fleet retrieval, per VM."""
    out = {}
    for ref in provider.list_vms():
        snaps = provider.list_snapshots(ref)
        out[ref.id] = {"vm": dataclasses.asdict(ref), "snapshots": [dataclasses.asdict(s) for s in snaps],
                       "consolidation": dataclasses.asdict(provider.consolidation_status(ref, snaps))}
    return out


def open_provider(sim: Vcsim) -> vmware.VmwareProvider:
    vmware.load_sdk()
    provider = vmware.VmwareProvider(sim.module_args(), lambda _msg: None)
    provider.connect()
    return provider


def test_raw_fleet_retrieval_equals_pyvmomi(monkeypatch: pytest.MonkeyPatch) -> None:
    per_pool = vmware.PAGE_SIZE // 2 + 3  # more than one page
    with Vcsim(vms_per_pool=per_pool) as sim:
        si = sim.connect()
        view = si.content.viewManager.CreateContainerView(si.content.rootFolder, [pyVmomi.vim.VirtualMachine], True)
        machines = {m.name: m for m in view.view}
        one, two, off = machines["DC0_H0_VM0"], machines["DC0_C0_RP0_VM1"], machines["DC0_C0_RP0_VM2"]
        WaitForTask(one.CreateSnapshot_Task("base", "first", False, False))
        WaitForTask(one.CreateSnapshot_Task("with-ram", "memory", True, False))
        WaitForTask(one.RevertToCurrentSnapshot_Task())
        WaitForTask(one.snapshot.rootSnapshotList[0].snapshot.RevertToSnapshot_Task())
        WaitForTask(one.CreateSnapshot_Task("branch-b", "second branch", False, True))
        WaitForTask(one.CreateSnapshot_Task("child-of-b", "", False, False))
        WaitForTask(two.CreateSnapshot_Task("pre-patch", "<&> quoted \"text\"", False, False))
        removed = two.CreateSnapshot_Task("gone", "", False, False)
        WaitForTask(removed)
        WaitForTask(removed.info.result.RemoveSnapshot_Task(False, False))  # leaves consolidationNeeded set
        WaitForTask(off.PowerOffVM_Task())
        WaitForTask(off.CreateSnapshot_Task("offline", "", False, False))

        calls = []
        real = vmware_fleet.retrieve

        def counted(*args: t.Any, **kwargs: t.Any) -> t.Any:
            calls.append(args[3])
            return real(*args, **kwargs)

        monkeypatch.setattr(vmware_fleet, "retrieve", counted)
        raw_provider = open_provider(sim)
        raw = report(raw_provider)
        raw_provider.close()
        assert calls and calls[0] == vmware.VM_PROPERTIES  # the raw path did read the fleet

        def refuse(*_args: t.Any, **_kwargs: t.Any) -> t.Any:
            raise vmware_fleet.RawRetrievalError("forced: read through pyVmomi")

        monkeypatch.setattr(vmware_fleet, "retrieve", refuse)
        typed_provider = open_provider(sim)
        typed = report(typed_provider)
        typed_provider.close()

    assert len(raw) == 2 * per_pool  # the standalone host's and the cluster's pools
    assert raw == typed
    tree = {s["name"]: s for s in raw[one._moId]["snapshots"]}  # pylint: disable=protected-access
    assert tree["with-ram"]["memory"] and tree["branch-b"]["quiesced"] is not None
    assert tree["child-of-b"]["parent"] == tree["branch-b"]["id"] and tree["child-of-b"]["current"]
    assert tree["branch-b"]["parent"] == tree["with-ram"]["parent"] == tree["base"]["id"]
    assert raw[two._moId]["consolidation"]["needed"] is True  # pylint: disable=protected-access


def test_time_parsing_takes_any_fraction_and_zone() -> None:
    assert vmware_fleet.parse_time("2026-12-02T05:52:34.1Z").microsecond == 100000
    assert vmware_fleet.parse_time("2026-12-02T05:52:34.123456789Z").microsecond == 123456
    parsed = vmware_fleet.parse_time("2026-12-02T07:52:34+02:00")
    assert parsed.utcoffset().total_seconds() == 7200 and parsed.hour == 7


def test_a_fault_or_garbage_makes_the_raw_path_give_way() -> None:
    fault = (b'<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
             b"<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode></soapenv:Fault></soapenv:Body>"
             b"</soapenv:Envelope>")
    with pytest.raises(vmware_fleet.RawRetrievalError, match="fault"):
        vmware_fleet.parse_result(fault)
    with pytest.raises(vmware_fleet.RawRetrievalError, match="unreadable"):
        vmware_fleet.parse_result(b"<not xml")
