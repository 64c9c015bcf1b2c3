# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Unit-test fixtures: an in-memory provider behind the real interface, and a module runner."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import typing as t

import pytest

from ansible.module_utils import basic
try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19 (the floor of meta/runtime.yml): modules read basic._ANSIBLE_ARGS

    @contextlib.contextmanager
    def patch_module_args(args: dict[str, t.Any]) -> t.Iterator[None]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
            yield

from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import QuiesceFailed, VmNotFound
from ansible_collections.vmsafe.protect.plugins.module_utils._models import (
    ConsolidationStatus,
    CreateResult,
    Leftover,
    Snapshot,
    SnapshotSpec,
    VmRef,
    VmSelector,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import registry
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider

T0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)


class FakeProvider(HypervisorProvider):
    """In-memory hypervisor. Class-level state so the module's own instance sees what the test seeded."""

    name = "fake"
    vms: dict[str, dict[str, t.Any]] = {}
    writes = 0
    agent = False

    @classmethod
    def reset(cls) -> None:
        cls.vms, cls.writes, cls.agent = {}, 0, False

    @classmethod
    def seed(cls, vm_name: str, snapshots: t.Sequence[str | tuple[str, ...]] = (), state: str = "running") -> None:
        """snapshots: names (a chain, oldest first) or (name, parent, id) tuples for branches and duplicates."""
        snaps: list[Snapshot] = []
        previous = None
        for i, item in enumerate(snapshots):
            name, parent, sid = (item, previous, item) if isinstance(item, str) else item
            snaps.append(Snapshot(id=sid, name=name, parent=parent, created=T0 + datetime.timedelta(hours=i),
                                  memory=True, size_bytes=1000 * (i + 1)))
            previous = sid
        if snaps:
            snaps[-1].current = True
        cls.vms[vm_name] = {"ref": VmRef(id=f"id-{vm_name}", name=vm_name, state=state, host="fake"),
                            "snapshots": snaps, "leftovers": []}

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def host(self) -> str:
        return "fake"

    def find_vm(self, selector: VmSelector) -> VmRef:
        for vm in self.vms.values():
            if vm["ref"].name == selector.name or vm["ref"].id == selector.id:
                return vm["ref"]
        raise VmNotFound(f"No VM {selector.describe()} on fake host.")

    def list_vms(self) -> list[VmRef]:
        return [vm["ref"] for vm in self.vms.values()]

    def list_snapshots(self, vm: VmRef) -> list[Snapshot]:
        return tree.link([dataclasses.replace(s) for s in self.vms[vm.name]["snapshots"]])

    def create_snapshot(self, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
        if spec.quiesce and not spec.memory and not self.agent and spec.quiesce_fallback == "fail":
            raise QuiesceFailed("no agent")
        type(self).writes += 1
        snaps = self.vms[vm.name]["snapshots"]
        current = next((s for s in snaps if s.current), None)
        for s in snaps:
            s.current = False
        new = Snapshot(id=f"{spec.name}-{len(snaps)}", name=spec.name, created=T0 + datetime.timedelta(days=30),
                       parent=current.id if current else None, current=True, memory=spec.memory,
                       kind="external" if spec.disk_only else "internal")
        snaps.append(new)
        return CreateResult(snapshot=new, consistency="memory" if spec.memory else "crash_consistent")

    def revert_snapshot(self, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
        type(self).writes += 1
        for s in self.vms[vm.name]["snapshots"]:
            s.current = s.id == snapshot.id

    def delete_snapshot(self, vm: VmRef, snapshot: Snapshot, children: bool, timeout: int) -> None:
        type(self).writes += 1
        snaps = self.vms[vm.name]["snapshots"]
        gone = {snapshot.id} | ({d.id for d in tree.descendants(snaps, snapshot.id)} if children else set())
        for s in snaps:
            if s.parent in gone:
                s.parent = snapshot.parent
        self.vms[vm.name]["snapshots"] = [s for s in snaps if s.id not in gone]

    def consolidation_status(self, vm: VmRef, snapshots: list[Snapshot] | None = None) -> ConsolidationStatus:
        leftovers = list(self.vms[vm.name]["leftovers"])
        return ConsolidationStatus(needed=bool(leftovers), chain_depth=1 + len(leftovers), leftovers=leftovers,
                                   reasons=[x.detail for x in leftovers])

    def repair_leftover(self, vm: VmRef, leftover: Leftover, timeout: int) -> None:
        type(self).writes += 1
        self.vms[vm.name]["leftovers"].remove(leftover)


@pytest.fixture
def fake_provider(monkeypatch: pytest.MonkeyPatch) -> type[FakeProvider]:
    FakeProvider.reset()
    monkeypatch.setitem(registry.PROVIDERS, "libvirt", (lambda: (FakeProvider, None), "nothing"))
    return FakeProvider


class ModuleExit(Exception):
    def __init__(self, result: dict[str, t.Any]) -> None:
        super().__init__(result.get("msg", ""))
        self.result = result


def run_module(main: t.Callable[[], None], check_mode: bool = False, diff: bool = False,
               **args: t.Any) -> dict[str, t.Any]:
    """Run a module's main() in-process; return its result (``failed`` set when it called fail_json)."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)

    def _exit(self: t.Any, **kwargs: t.Any) -> None:
        raise ModuleExit(kwargs)

    def _fail(self: t.Any, msg: str, **kwargs: t.Any) -> None:
        raise ModuleExit(dict(kwargs, failed=True, msg=msg))

    with patch_module_args(args), pytest.MonkeyPatch.context() as mp:
        mp.setattr(basic.AnsibleModule, "exit_json", _exit)
        mp.setattr(basic.AnsibleModule, "fail_json", _fail)
        try:
            main()
        except ModuleExit as done:
            return json.loads(json.dumps(done.result, default=str))
    raise AssertionError("module returned without exit_json or fail_json")


@pytest.fixture
def run() -> t.Callable[..., dict[str, t.Any]]:
    """``run(module.main, check_mode=False, diff=False, **module_args)`` -> the module's result."""
    return run_module
