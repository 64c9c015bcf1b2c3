# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The simulated Hyper-V host: VMs, checkpoints, disks, and the shipped scripts it is willing to run.

A command is accepted only when it is ``powershell.exe -NoProfile -NonInteractive -EncodedCommand <b64>`` and
the decoded script equals one of the collection's scripts once its data block is taken out. The data block is
decoded as JSON and used as data only. Anything else raises ScriptRejected, which the server turns into a
SOAP fault and records, so the tests fail loudly when the provider and the simulator drift apart. A shipped
script is also checked against Microsoft's cmdlet and CIM reference (tests/hyperv_ref) before it runs: one that
uses an undocumented cmdlet, parameter, parameter-set mix, property or CIM argument is rejected the same way,
and payload values bound to enum parameters (Set-VM -CheckpointType) must be among the documented values.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import json
import re
import threading
import time
import typing as t
import uuid

from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_scripts as scripts
from hyperv_ref import check as reference  # tests/ is on sys.path wherever hyperv_sim is importable

_BLOCK = re.compile(r"FromBase64String\('([A-Za-z0-9+/=]*)'\)")


class ScriptRejected(Exception):
    """The command is not one of the shipped scripts, or the script disagrees with Microsoft's reference."""


@functools.lru_cache(maxsize=None)
def reference_check(text: str) -> tuple[tuple[reference.Finding, ...], tuple[reference.PayloadConstraint, ...]]:
    """What tests/hyperv_ref says about one script text: (findings, payload constraints); cached per text."""
    checker = reference.Checker(text).run()
    return tuple(checker.findings), tuple(checker.constraints)


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
    generation: int = 2
    # disks: target -> content; RCT: target -> {rct id: blocks written since that id was issued}
    disks: dict[str, bytearray] = dataclasses.field(default_factory=dict)
    rct: dict[str, dict[str, set[int]]] = dataclasses.field(default_factory=dict)
    # Recovery checkpoints (not listed by Get-VMSnapshot): id -> frozen disks, the RCT state at that moment,
    # and the RCT ids a reference point made from it will carry
    recovery: dict[str, dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    reference_points: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # id -> target -> rct id
    # hardware a backup records and a restore rebuilds
    memory_bytes: int = 1 << 30
    processors: int = 2
    secure_boot: str = "On"
    secure_boot_template: str = "MicrosoftWindows"
    notes: str = ""
    nics: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)  # name, switch, mac, dynamic_mac
    drive_paths: dict[str, str] = dataclasses.field(default_factory=dict)  # target -> image path (else the chain's)

    def drive_path(self, target: str) -> str:
        return self.drive_paths.get(target) or self.chain()[0]

    def chain(self) -> list[str]:
        """The disk's chain, active image first: each checkpoint above the base added one AVHDX that the VM
        writes to from then on, so the chain is one AVHDX per checkpoint from the current one to the root."""
        paths = []
        cursor = self.current
        while cursor is not None:
            paths.append(f"C:\\Hyper-V\\{self.name}\\{self.name}_{cursor}.avhdx")
            cursor = self.checkpoints[cursor].parent if cursor in self.checkpoints else None
        return paths + [f"C:\\Hyper-V\\{self.name}\\{self.name}.vhdx"]


def _drive(target: str) -> dict[str, t.Any]:
    """What Get-VMHardDiskDrive says of the drive named ``SCSI0:1``: controller type, number, location."""
    kind, number, location = t.cast(re.Match, re.fullmatch(r"([A-Z]+)(\d+):(\d+)", target)).groups()
    return {"target": target, "controller_type": kind, "controller_number": int(number),
            "controller_location": int(location)}


RCT_BLOCK = 64 * 1024  # the granularity the simulated change tracking reports


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
        self.max_processed = 4 << 20  # knob: GetVirtualDiskChanges covers at most this many bytes per call
        self.fail_read_after: int | None = None  # knob: backup_read fails after this many calls
        self.bytes_served = 0  # disk bytes returned by backup_read
        # restores: VHDX files made by New-VHD (path -> content), the host's virtual switches and default VHD folder
        self.files: dict[str, bytearray] = {}
        self.switches = {"vSwitch0", "Internal"}
        self.vhd_root = "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks"
        self.fail_switch_at: int | None = None  # knob: Set-VMHardDiskDrive fails on this drive (0-based)
        self.bytes_written = 0  # disk bytes received by restore_write

    def add_vm(self, name: str, state: str = "Running", vss_works: bool = True, disk_size: int = 0,
               disks: int = 1) -> Vm:
        vm = Vm(id=str(uuid.uuid4()).upper(), name=name, state=state, vss_works=vss_works)
        vm.nics = [{"name": "Network Adapter", "switch": "vSwitch0", "mac": self.new_mac(), "dynamic_mac": True}]
        for number in range(disks if disk_size else 0):
            target = f"SCSI0:{number}"
            vm.disks[target] = bytearray(disk_size)
            vm.rct[target] = {}
            if number:
                vm.drive_paths[target] = f"C:\\Hyper-V\\{name}\\{name}_{number}.vhdx"
        self.vms[vm.id] = vm
        return vm

    def write(self, vm: Vm, offset: int, data: bytes, target: str = "SCSI0:0") -> None:
        """The guest writes: content changes and every live RCT id records the blocks (test control, not a script)."""
        with self.lock:
            vm.disks[target][offset:offset + len(data)] = data
            blocks = range(offset // RCT_BLOCK, (offset + len(data) - 1) // RCT_BLOCK + 1)
            for changed in vm.rct[target].values():
                changed.update(blocks)

    @staticmethod
    def new_mac() -> str:
        """A MAC from Hyper-V's default dynamic range (00-15-5D-...), written as Hyper-V writes it."""
        return "00155D" + uuid.uuid4().hex[:6].upper()

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

    @staticmethod
    def reads_stdin(arguments: str) -> bool:
        """Whether the command is a shipped script that reads its stdin (it then runs when the stdin ends)."""
        args = arguments.split()
        try:
            script = base64.b64decode(args[-1], validate=True).decode("utf-16-le")
        except (ValueError, UnicodeDecodeError, IndexError):
            return False
        template = _BLOCK.sub(f"FromBase64String('{scripts.PAYLOAD_MARK}')", script, count=1)
        return any(scripts.SCRIPTS[name] == template for name in scripts.STDIN_SCRIPTS)

    def execute(self, command: str, arguments: str, stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
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
        # A real host would fail to bind a cmdlet, parameter or CIM argument the reference does not document: the
        # simulator refuses such a script before running its model of it.
        findings, constraints = reference_check(template)
        if findings:
            self._reject(f"script '{name}' disagrees with Microsoft's reference (tests/hyperv_ref): "
                         + "; ".join(str(f) for f in findings))
        with self.lock:
            self.executed.append(t.cast(str, name))
            self.payloads.append(payload)
            try:
                self._bind(constraints, payload)
                if name in scripts.STDIN_SCRIPTS:
                    data = getattr(self, f"_run_{name}")(payload, stdin or b"")
                else:
                    data = getattr(self, f"_run_{name}")(payload)
            except CmdletError as exc:
                out = {"ok": False, "error": str(exc), "reason": exc.reason}
                return json.dumps(out).encode(), b"", 1
        return json.dumps({"ok": True, "data": data}).encode(), b"", 0

    @staticmethod
    def _bind(constraints: tuple[reference.PayloadConstraint, ...], payload: dict[str, t.Any]) -> None:
        """Parameter binding of payload values the script passes to enum parameters, as the reference lists them.

        PowerShell binds enum names case-insensitively; the payload value is rewritten to the documented spelling.
        """
        for rule in constraints:
            value = str(payload.get(rule.key))
            match = next((a for a in rule.accepted if a.lower() == value.lower()), None)
            if match is None:
                raise CmdletError(f"Cannot bind parameter '{rule.parameter}' of {rule.cmdlet}: '{value}' is not one "
                                  f"of {', '.join(rule.accepted)}.", "ParameterBindingException")
            payload[rule.key] = match

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

    def _run_list_vms_checkpoints(self, payload: dict[str, t.Any]) -> list[dict[str, t.Any]]:
        return [dict(vm, checkpoints=self._run_list_checkpoints({"vm_id": vm["id"]})["checkpoints"])
                for vm in self._run_list_vms(payload)]

    def _run_list_checkpoints(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        snaps = sorted(vm.checkpoints.values(), key=lambda s: s.created)
        return {"current": vm.current or "", "state": vm.state, "checkpoints": [self._checkpoint_json(s) for s in snaps]}

    def _run_create_checkpoint(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        kind = payload["checkpoint_type"]  # already bound against Set-VM -CheckpointType's accepted values
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

    # -- backups: Recovery checkpoints, RCT, reference points ----------------------------------------

    @staticmethod
    def _disk_path(vm: Vm, checkpoint: str, target: str) -> str:
        return f"C:\\Hyper-V\\{vm.name}\\Recovery\\{checkpoint}\\{target.replace(':', '_')}.avhdx"

    def _frozen(self, path: str) -> tuple[Vm, dict[str, t.Any], str]:
        for vm in self.vms.values():
            for cp_id, cp in vm.recovery.items():
                for target in cp["disks"]:
                    if self._disk_path(vm, cp_id, target) == path:
                        return vm, cp, target
        raise CmdletError(f"The system cannot find the file specified: {path}", "ItemNotFoundException")

    def _run_list_reference_points(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        points = [{"id": rid, "rct": [rct[target] for target in sorted(rct)]} for rid, rct in vm.reference_points.items()]
        return {"reference_points": points,
                "disks": [{"target": target, "size": len(vm.disks[target])} for target in sorted(vm.disks)]}

    def _run_backup_begin(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        self._busy(vm)
        level = int(payload["consistency_level"])
        if level == 1 and vm.state == "Running" and not vm.vss_works:
            raise CmdletError(f"CreateSnapshot (Recovery) failed: '{vm.name}' could not initiate a checkpoint "
                              f"operation: the guest's Volume Shadow Copy Service failed.", "RuntimeException")
        cp_id = f"Microsoft:{uuid.uuid4()}".upper()
        pending = {target: f"rctX:{uuid.uuid4()}:0" for target in vm.disks}
        vm.recovery[cp_id] = {"disks": {target: bytes(data) for target, data in vm.disks.items()},
                              "changes": {target: {rid: set(blocks) for rid, blocks in vm.rct[target].items()}
                                          for target in vm.disks},
                              "pending": pending, "level": level}
        for target, rid in pending.items():
            vm.rct[target][rid] = set()  # tracking starts at the checkpoint, so nothing written after it is lost
        disks = [{"target": target, "path": self._disk_path(vm, cp_id, target), "size": len(vm.disks[target])}
                 for target in sorted(vm.disks)]
        gen2 = vm.generation == 2
        definition = {"definition_version": 2, "name": vm.name, "generation": vm.generation,
                      "memory_bytes": vm.memory_bytes, "processors": vm.processors,
                      "secure_boot": vm.secure_boot if gen2 else "", "secure_boot_template":
                      vm.secure_boot_template if gen2 else "", "disks": disks,
                      "drives": [_drive(target) for target in sorted(vm.disks)],
                      "nics": [dict(nic) for nic in vm.nics]}
        return {"checkpoint": cp_id, "consistency_level": level, "disks": disks, "definition": definition}

    def _run_backup_changes(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        _vm, cp, target = self._frozen(str(payload["path"]))
        changes = cp["changes"][target].get(str(payload["limit_id"]))
        if changes is None:
            raise CmdletError(f"GetVirtualDiskChanges failed with code 32773 (invalid parameter): unknown resilient "
                              f"change tracking id {payload['limit_id']}", "RuntimeException")
        size = len(cp["disks"][target])
        start = int(payload["byte_offset"])
        end = min(size, start + min(int(payload["byte_length"]), self.max_processed))
        offsets: list[int] = []
        lengths: list[int] = []
        for block in sorted(changes):
            lo, hi = max(start, block * RCT_BLOCK), min(end, (block + 1) * RCT_BLOCK)
            if lo >= hi:
                continue
            if offsets and offsets[-1] + lengths[-1] == lo:
                lengths[-1] += hi - lo
            else:
                offsets.append(lo)
                lengths.append(hi - lo)
        return {"processed": end - start, "offsets": offsets, "lengths": lengths}

    def _run_backup_read(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        _vm, cp, target = self._frozen(str(payload["path"]))
        if self.fail_read_after is not None:
            if self.fail_read_after <= 0:
                raise CmdletError("Mount-VHD: the disk is in use by another process.", "RuntimeException")
            self.fail_read_after -= 1
        data = cp["disks"][target]
        chunks = []
        for offset, length in payload["ranges"]:
            if offset < 0 or offset + length > len(data):
                raise CmdletError(f"short read at {offset}", "RuntimeException")
            chunks.append(base64.b64encode(data[offset:offset + length]).decode("ascii"))
            self.bytes_served += length
        return {"chunks": chunks}

    def _run_backup_convert(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        cp = vm.recovery.pop(str(payload["checkpoint"]), None)
        if cp is None:
            raise CmdletError(f"checkpoint not found: {payload['checkpoint']}", "ItemNotFoundException")
        ref_id = f"Microsoft:{uuid.uuid4()}".upper()
        vm.reference_points[ref_id] = dict(cp["pending"])
        return {"id": ref_id, "rct": [cp["pending"][target] for target in sorted(cp["pending"])]}

    def _run_backup_drop(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        item_id = str(payload["id"])
        if payload["kind"] == "checkpoint":
            cp = vm.recovery.pop(item_id, None)
            for target, rid in (cp or {}).get("pending", {}).items():
                vm.rct[target].pop(rid, None)
            return {"dropped": cp is not None}
        point = vm.reference_points.pop(item_id, None)
        for target, rid in (point or {}).items():
            vm.rct[target].pop(rid, None)
        return {"dropped": point is not None}

    # -- restores: new VHDX files, a new VM, switching the original's drives ---------------------------

    @staticmethod
    def _target(drive: dict[str, t.Any]) -> str:
        kind = str(drive["controller_type"])
        if kind not in ("IDE", "SCSI"):  # Add-VMHardDiskDrive -ControllerType takes IDE or SCSI
            raise CmdletError(f"Cannot bind parameter 'ControllerType': '{kind}' is not one of IDE, SCSI.",
                              "ParameterBindingException")
        return f"{kind}{int(drive['controller_number'])}:{int(drive['controller_location'])}"

    def _run_restore_info(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        return {"state": vm.state, "notes": vm.notes, "checkpoints": len(vm.checkpoints),
                "drives": [{"target": target, "path": vm.drive_path(target)} for target in sorted(vm.disks)],
                "vhd_root": self.vhd_root}

    def _run_restore_host_info(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        return {"vhd_root": self.vhd_root, "vms": [v.id for v in self.vms.values() if v.name == payload["name"]]}

    def _in_use(self, path: str) -> bool:
        return path in self.files or any(path == vm.drive_path(target) for vm in self.vms.values() for target in vm.disks)

    def _run_restore_write(self, payload: dict[str, t.Any], stdin: bytes) -> dict[str, t.Any]:
        path = str(payload["path"])
        if self._in_use(path):  # New-VHD never overwrites
            raise CmdletError(f"Failed to create the virtual hard disk. The file exists: {path}", "VirtualizationException")
        size = int(payload["size"])
        if size <= 0 or size % 512:
            raise CmdletError(f"New-VHD: the size {size} is not a multiple of 512 bytes.", "VirtualizationException")
        data = bytearray(size)
        written = 0
        for line in stdin.decode("ascii").splitlines():
            if not line.strip():
                continue
            offset_text, _sep, encoded = line.partition(" ")
            chunk = base64.b64decode(encoded)
            offset = int(offset_text)
            if offset % 512 or len(chunk) % 512 or offset + len(chunk) > size:
                # raw disk writes are whole sectors inside the disk
                raise CmdletError(f"write at {offset} of {len(chunk)} bytes is not inside whole sectors of the disk",
                                  "IOException")
            data[offset:offset + len(chunk)] = chunk
            written += len(chunk)
        self.files[path] = data
        self.bytes_written += written
        return {"path": path, "written": written}

    def _run_restore_remove(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        for path in payload["paths"]:
            self.files.pop(str(path), None)
        return {"removed": len(payload["paths"])}

    def _run_restore_new_vm(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        name = str(payload["name"])
        if any(v.name == name for v in self.vms.values()):
            raise CmdletError(f"A VM with this name exists already: {name}", "InvalidOperationException")
        generation = int(payload["generation"])
        vm = Vm(id=str(uuid.uuid4()).upper(), name=name, state="Off", generation=generation,
                memory_bytes=int(payload["memory_bytes"]), processors=int(payload["processors"]),
                notes=str(payload["notes"]), secure_boot="On" if generation == 2 else "",
                secure_boot_template="MicrosoftWindows" if generation == 2 else "")
        # everything is checked before the VM is kept: the script removes a half-made VM
        for nic in payload["nics"]:
            if nic.get("switch") and nic["switch"] not in self.switches:
                raise CmdletError(f"Add-VMNetworkAdapter: no virtual switch named '{nic['switch']}'.",
                                  "VirtualizationException")
            vm.nics.append({"name": str(nic["name"]), "switch": str(nic.get("switch") or ""),
                            "mac": str(nic.get("mac") or "") or self.new_mac(), "dynamic_mac": not nic.get("mac")})
        if payload.get("firmware"):
            if generation != 2:
                raise CmdletError("Set-VMFirmware: generation 1 VMs have no UEFI firmware.", "VirtualizationException")
            vm.secure_boot = str(payload["secure_boot"])
            if payload.get("secure_boot_template"):
                vm.secure_boot_template = str(payload["secure_boot_template"])
        for drive in payload["drives"]:
            target = self._target(drive)
            if generation == 2 and target.startswith("IDE"):
                raise CmdletError("Add-VMHardDiskDrive: generation 2 VMs have no IDE controller.",
                                  "VirtualizationException")
            path = str(drive["path"])
            if path not in self.files:
                raise CmdletError(f"The system cannot find the file specified: {path}", "ItemNotFoundException")
            vm.disks[target] = self.files[path]
            vm.drive_paths[target] = path
            vm.rct[target] = {}
        if payload.get("start"):
            vm.state = "Running"
        self.vms[vm.id] = vm
        return {"id": vm.id, "name": vm.name, "state": vm.state}

    def _run_restore_switch(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        vm = self._vm(payload)
        if vm.state != "Off":
            raise CmdletError(f"the VM is {vm.state}, not Off", "InvalidOperationException")
        if vm.checkpoints:
            raise CmdletError("the VM has checkpoints", "InvalidOperationException")
        plan = []
        for index, drive in enumerate(payload["drives"]):
            target = self._target(drive)
            if target not in vm.disks:
                raise CmdletError(f"Get-VMHardDiskDrive: the VM has no drive {target}", "ItemNotFoundException")
            path = str(drive["path"])
            if path not in self.files:
                raise CmdletError(f"The system cannot find the file specified: {path}", "ItemNotFoundException")
            if self.fail_switch_at == index:
                # the script puts the drives it switched back and rethrows: the VM is as it was
                raise CmdletError(f"Set-VMHardDiskDrive failed for {target}: the file is in use.",
                                  "VirtualizationException")
            plan.append((target, path))
        vm.reference_points.clear()
        for target, path in plan:
            old = vm.drive_path(target)
            self.files.pop(old, None)
            vm.disks[target] = self.files[path]
            vm.drive_paths[target] = path
            vm.rct[target] = {}
        return {"switched": [path for _target, path in plan], "state": vm.state}
