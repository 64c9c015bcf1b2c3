# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The simulated Hyper-V host: VMs, checkpoints, disks, and the shipped scripts it is willing to run.

A command is accepted only when it is ``powershell.exe -NoProfile -NonInteractive -EncodedCommand <b64>`` and
the decoded script equals one of the collection's scripts once its data block is taken out. The data block is
decoded as JSON and used as data only. Anything else raises ScriptRejected, which the server turns into a
SOAP fault and records, so the tests fail loudly when the provider and the simulator drift apart.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import re
import threading
import time
import typing as t
import uuid

from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_scripts as scripts

_BLOCK = re.compile(r"FromBase64String\('([A-Za-z0-9+/=]*)'\)")


class ScriptRejected(Exception):
    """The command is not one of the shipped scripts."""


class CmdletError(Exception):
    """What a cmdlet throws; ``reason`` is the .NET exception type name the script reports."""

    def __init__(self, message: str, reason: str = "RuntimeException") -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class Checkpoint:
    id: str
    name: str
    created: datetime.datetime
    parent: str | None
    snapshot_type: str
    state: str  # the VM's state saved with it: Running (memory) or Off


@dataclasses.dataclass
class Vm:
    id: str
    name: str
    state: str = "Running"
    checkpoint_type: str = "Production"
    current: str | None = None
    vss_works: bool = True
    checkpoints: dict[str, Checkpoint] = dataclasses.field(default_factory=dict)
    merging_until: float = 0.0

    def chain(self) -> list[str]:
        """The disk's chain, active image first: each checkpoint above the base added one AVHDX that the VM
        writes to from then on, so the chain is one AVHDX per checkpoint from the current one to the root."""
        paths = []
        cursor = self.current
        while cursor is not None:
            paths.append(f"C:\\Hyper-V\\{self.name}\\{self.name}_{cursor}.avhdx")
            cursor = self.checkpoints[cursor].parent if cursor in self.checkpoints else None
        return paths + [f"C:\\Hyper-V\\{self.name}\\{self.name}.vhdx"]


class HyperVHost:
    """The model. Thread-safe: the HTTP server runs one thread per connection."""

    def __init__(self) -> None:
        self.vms: dict[str, Vm] = {}
        self.lock = threading.Lock()
        self.merge_seconds = 0.0  # knob: how long the merge after Remove-VMSnapshot takes
        self.slow: dict[str, float] = {}  # knob: script name -> seconds before its output is ready
        self.executed: list[str] = []  # names of the scripts run
        self.rejected: list[str] = []  # why commands were refused
        self.payloads: list[dict[str, t.Any]] = []

    def add_vm(self, name: str, state: str = "Running", vss_works: bool = True) -> Vm:
        vm = Vm(id=str(uuid.uuid4()).upper(), name=name, state=state, vss_works=vss_works)
        self.vms[vm.id] = vm
        return vm

    def vm_by_name(self, name: str) -> Vm:
        return next(v for v in self.vms.values() if v.name == name)

    def checkpoint(self, vm: Vm, name: str, age_seconds: int = 0, kind: str = "Standard") -> Checkpoint:
        """Seed a checkpoint directly (as if made earlier), under the current one."""
        snap = Checkpoint(id=str(uuid.uuid4()).upper(), name=name,
                          created=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age_seconds),
                          parent=vm.current, snapshot_type="Standard",
                          state=vm.state if kind == "Standard" else "Off")
        vm.checkpoints[snap.id] = snap
        vm.current = snap.id
        return snap

    # -- the command line -------------------------------------------------------------------------

    def execute(self, command: str, arguments: str) -> tuple[bytes, bytes, int]:
        """Run one command; return (stdout, stderr, exit code). Raises ScriptRejected for anything not shipped."""
        args = arguments.split()
        if command != "powershell.exe" or args[:3] != ["-NoProfile", "-NonInteractive", "-EncodedCommand"] \
                or len(args) != 4:
            self._reject(f"unexpected command line: {command} {arguments[:200]}")
        try:
            script = base64.b64decode(args[3], validate=True).decode("utf-16-le")
        except (ValueError, UnicodeDecodeError):
            self._reject("-EncodedCommand is not UTF-16LE base64")
        blocks = _BLOCK.findall(script)
        if len(blocks) != 1:
            self._reject(f"script has {len(blocks)} data blocks, expected exactly 1")
        template = script.replace(f"FromBase64String('{blocks[0]}')", f"FromBase64String('{scripts.PAYLOAD_MARK}')")
        name = next((n for n, text in scripts.SCRIPTS.items() if text == template), None)
        if name is None:
            self._reject("the script is not one the collection ships (text differs): "
                         + script[:300].replace("\n", "\\n"))
        try:
            payload = json.loads(base64.b64decode(blocks[0]).decode("utf-8"))
        except ValueError:
            self._reject("the data block is not base64 JSON")
        if not isinstance(payload, dict):
            self._reject("the data block is not a JSON object")
        with self.lock:
            self.executed.append(t.cast(str, name))
            self.payloads.append(payload)
            try:
                data = getattr(self, f"_run_{name}")(payload)
            except CmdletError as exc:
                out = {"ok": False, "error": str(exc), "reason": exc.reason}
                return json.dumps(out).encode(), b"", 1
        return json.dumps({"ok": True, "data": data}).encode(), b"", 0

    def _reject(self, why: str) -> t.NoReturn:
        self.rejected.append(why)
        raise ScriptRejected(f"hyperv simulator: REJECTED: {why}")

    # -- the shipped scripts, as the cmdlets would run them ------------------------------------------

    def _vm(self, payload: dict[str, t.Any]) -> Vm:
        vm = self.vms.get(str(payload.get("vm_id")))
        if vm is None:
            raise CmdletError(f"VM not found: {payload.get('vm_id')}", "ItemNotFoundException")
        return vm

    def _snap(self, vm: Vm, payload: dict[str, t.Any]) -> Checkpoint:
        snap = vm.checkpoints.get(str(payload.get("snapshot_id")))
        if snap is None:
            raise CmdletError(f"checkpoint not found: {payload.get('snapshot_id')}", "ItemNotFoundException")
        return snap

    @staticmethod
    def _checkpoint_json(snap: Checkpoint) -> dict[str, t.Any]:
        return {"id": snap.id, "name": snap.name, "created": snap.created.strftime("%Y-%m-%dT%H:%M:%S.%f0Z"),
                "parent": snap.parent or "", "snapshot_type": snap.snapshot_type, "state": snap.state, "notes": ""}

    def _busy(self, vm: Vm) -> None:
        if vm.merging_until > time.monotonic():
            raise CmdletError(f"The operation cannot be performed while the virtual machine '{vm.name}' is "
                              f"merging disks.", "VirtualizationException")

    def _run_list_vms(self, payload: dict[str, t.Any]) -> list[dict[str, t.Any]]:
        return [{"id": v.id, "name": v.name, "state": v.state, "checkpoint_type": v.checkpoint_type,
                 "current": v.current or ""} for v in self.vms.values()]

    def _run_list_checkpoints(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        snaps = sorted(vm.checkpoints.values(), key=lambda s: s.created)
        return {"current": vm.current or "", "state": vm.state, "checkpoints": [self._checkpoint_json(s) for s in snaps]}

    def _run_create_checkpoint(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        kind = payload["checkpoint_type"]
        if kind not in ("Standard", "Production", "ProductionOnly", "Disabled"):
            raise CmdletError(f"Cannot bind parameter 'CheckpointType': '{kind}'", "ParameterBindingException")
        self._busy(vm)
        production = kind in ("Production", "ProductionOnly") and vm.state == "Running"
        if production and not vm.vss_works:
            if kind == "ProductionOnly":
                raise CmdletError(f"Checkpoint operation failed for '{vm.name}'. Could not create auto virtual hard "
                                  f"disk: the guest's Volume Shadow Copy Service failed.", "VirtualizationException")
            production = False  # Production falls back to a standard checkpoint
        snap = Checkpoint(id=str(uuid.uuid4()).upper(), name=str(payload["name"]),
                          created=datetime.datetime.now(datetime.timezone.utc), parent=vm.current,
                          snapshot_type="Standard", state="Off" if production else vm.state)
        vm.checkpoints[snap.id] = snap
        vm.current = snap.id
        return self._checkpoint_json(snap)

    def _run_restore_checkpoint(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        snap = self._snap(vm, payload)
        self._busy(vm)
        vm.current = snap.id
        vm.state = snap.state if snap.state in ("Running", "Off") else "Off"
        return {"state": vm.state}

    def _run_remove_checkpoint(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        snap = self._snap(vm, payload)
        self._busy(vm)
        doomed = {snap.id}
        if payload.get("children"):
            grew = True
            while grew:
                more = {s.id for s in vm.checkpoints.values() if s.parent in doomed} - doomed
                grew = bool(more)
                doomed |= more
        for sid in doomed:
            vm.checkpoints.pop(sid)
        for other in vm.checkpoints.values():
            while other.parent in doomed:
                other.parent = snap.parent
        if vm.current in doomed:
            vm.current = snap.parent
        vm.merging_until = time.monotonic() + self.merge_seconds
        return {"removed": snap.id}

    def _run_rename_checkpoint(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        snap = self._snap(vm, payload)
        snap.name = str(payload["new_name"])
        return self._checkpoint_json(snap)

    def _run_disk_status(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        merging = vm.merging_until > time.monotonic()
        chain = [{"path": p, "format": "VHDX", "size": 10 << 30, "file_size": 4 << 20} for p in vm.chain()]
        return {"state": vm.state, "status": "Merging disks (40%)" if merging else "Operating normally",
                "operational": ["Ok", "MergingDisks"] if merging else ["Ok"],
                "disks": [{"target": "SCSI0:0", "chain": chain}]}
