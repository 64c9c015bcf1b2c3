# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Hyper-V restores: a new VM from the recorded hardware, or the shut-off original's drives switched to new images.

Each restored disk (a local raw image written by vm_restore) becomes a new dynamic VHDX on the host: ``New-VHD``
(which never overwrites a file), then the non-zero ranges are written through a mount of it, sent as the script's
stdin with WS-Man Send (a command line is too short for data). Then either ``restore_new_vm`` makes the VM
(generation, memory, processors, secure boot and its template, the drives at their recorded controller and location,
the network adapters on their switches with new MAC addresses unless asked to keep them, notes naming the backup),
or ``restore_switch`` points each drive of the original at its new VHDX, puts back the drives it switched when one
fails, and then destroys the VM's reference points (their RCT ids belong to the old files) and deletes the old
files. A failure before the switch, or of the new VM, removes the new VHDX files.

Backups made before firmware, drives and adapters were recorded restore with every disk on SCSI controller 0
(IDE 0 for generation 1), default firmware and no network adapter, and a warning saying so.

Verified against the project's simulator only (docs/hyperv.md).
"""

from __future__ import annotations

import base64
import json
import ntpath
import os
import re
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    InvalidArgument,
    UnsupportedOperation,
    VmsafeError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef, VmSelector

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.hyperv import HypervProvider

PIECE = 192 * 1024  # bytes per stdin line (sector multiple); base64 makes 256 KiB, well inside WinRM's envelope
SEND_LINES = 1  # lines per WS-Man Send
MARK = "Restored by vmsafe.protect.vm_restore from backup "
_MARK_RE = re.compile(re.escape(MARK) + r"(\S+)")
_TARGET_RE = re.compile(r"([A-Za-z]+)(\d+):(\d+)")


def _info(p: HypervProvider, vm: VmRef) -> dict[str, t.Any]:
    return p.run("restore_info", {"vm_id": vm.id}, f"read the drives of VM '{vm.name}'")


def vm_disks(p: HypervProvider, vm: VmRef) -> dict[str, str]:
    return {d["target"]: d["path"] for d in _info(p, vm)["drives"]}


def restored_from(p: HypervProvider, vm: VmRef) -> str | None:
    found = _MARK_RE.search(_info(p, vm).get("notes") or "")
    return found.group(1) if found else None


def check_shut_off(p: HypervProvider, vm: VmRef, info: dict[str, t.Any] | None = None) -> None:
    """Refuse unless the VM is Off and has no checkpoints (their AVHDX files sit on the drives being replaced)."""
    info = info or _info(p, vm)
    if info["state"] != "Off":
        raise UnsupportedOperation(
            f"Failed to restore over VM '{vm.name}' on hyperv host {p.host}: it is {info['state']}. target: original "
            f"replaces its disks and needs it shut off: shut it off (Stop-VM, or shut down the guest), then run "
            f"again; or restore to a new VM (target: new_vm).")
    if int(info.get("checkpoints") or 0):
        raise UnsupportedOperation(
            f"Failed to restore over VM '{vm.name}' on hyperv host {p.host}: it has {info['checkpoints']} "
            f"checkpoint(s) whose AVHDX files sit on the disks being replaced; remove them "
            f"(vmsafe.protect.vm_snapshot state=remove_all) or restore to a new VM (target: new_vm).")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def restore_paths(p: HypervProvider, vm: VmRef, names: list[str], token: str) -> dict[str, str]:
    current = vm_disks(p, vm)
    return {name: ntpath.join(ntpath.dirname(current[name]), f"{_safe(vm.name)}-{_safe(name)}-{token}.vhdx")
            for name in names}


def drive(target: str) -> dict[str, t.Any]:
    """``SCSI0:1`` -> controller type, number and location, as Add-/Get-VMHardDiskDrive take them."""
    found = _TARGET_RE.fullmatch(target)
    if found is None or found.group(1).upper() not in ("SCSI", "IDE"):
        raise InvalidArgument(f"Disk {target} of the backup names no IDE or SCSI controller location; restore it to "
                              f"an image (target: image) and attach it yourself.")
    return {"controller_type": found.group(1).upper(), "controller_number": int(found.group(2)),
            "controller_location": int(found.group(3))}


def _lines(local: str) -> t.Iterator[bytes]:
    """The non-zero pieces of a local raw image as stdin lines ``<offset> <base64>``, a few per Send."""
    batch: list[bytes] = []
    with open(local, "rb") as handle:
        offset = 0
        while True:
            data = handle.read(PIECE)
            if not data:
                break
            if len(data) % 512:
                data += bytes(512 - len(data) % 512)
            if data.count(0) != len(data):  # a new dynamic VHDX reads as zeros already
                batch.append(b"%d " % offset + base64.b64encode(data) + b"\n")
            if len(batch) >= SEND_LINES:
                yield b"".join(batch)
                batch = []
            offset += len(data)
    if batch:
        yield b"".join(batch)


def upload(p: HypervProvider, local: str, size: int, path: str, timeout: int) -> None:
    """Make ``path`` a new VHDX of ``size`` bytes holding the local raw image (New-VHD refuses an existing file)."""
    p.run("restore_write", {"path": path, "size": size}, f"write the restored disk {path}", timeout, stdin=_lines(local))


def remove(p: HypervProvider, paths: list[str], why: str) -> None:
    """Delete new VHDX files after a failure; warns when that fails too."""
    if not paths:
        return
    try:
        p.run("restore_remove", {"paths": paths}, f"remove the restored disks of {why}")
    except VmsafeError as exc:  # best effort: the error that stopped the restore is the one reported
        p.warn(f"Could not remove {', '.join(paths)} after {why}: {exc}. Delete them on the host.")


def restore_over(p: HypervProvider, vm: VmRef, disk_files: dict[str, str], paths: dict[str, str],
                 timeout: int) -> None:
    """New VHDX files first; the drives are switched only when all are complete (restore_switch)."""
    check_shut_off(p, vm)
    written: list[str] = []
    switched = False
    try:
        for name, local in disk_files.items():
            written.append(paths[name])
            upload(p, local, os.path.getsize(local), paths[name], timeout)
        drives = [dict(drive(name), path=paths[name]) for name in disk_files]
        p.run("restore_switch", {"vm_id": vm.id, "drives": drives},
              f"switch the drives of VM '{vm.name}' to the restored disks", timeout)
        switched = True
    finally:
        if not switched:
            remove(p, written, f"the failed restore over VM '{vm.name}' (the VM was left as it was)")


def define(p: HypervProvider, definition: str, name: str, disk_files: dict[str, tuple[str, str]], start: bool,
           keep_macs: bool, backup_id: str) -> VmRef:
    """Send the restored images into new VHDX files and make the VM from the recorded hardware."""
    spec = json.loads(definition or "{}")
    host = p.run("restore_host_info", {"name": name}, f"look for VM '{name}'")
    if host["vms"]:
        raise InvalidArgument(f"A VM named '{name}' already exists on hyperv host {p.host}; choose another "
                              f"new_vm_name.")
    generation = int(spec.get("generation") or 2)
    recorded = int(spec.get("definition_version") or 1) >= 2
    if not recorded:
        p.warn(f"Backup {backup_id} was made by an older vm_backup that did not record the VM's network adapters "
               f"(the new VM has none), firmware (Hyper-V's default secure boot settings are used) or drive "
               f"locations (every disk goes on {'SCSI' if generation == 2 else 'IDE'} controller 0); check the new "
               f"VM '{name}' before starting it.")
    places = {d["target"]: d for d in spec.get("drives") or []}
    drives = []
    for index, disk in enumerate(spec.get("disks") or []):
        target = disk["target"]
        if target not in disk_files:
            p.warn(f"Disk {target} of the backed-up VM was not restored (not in disks), so the new VM '{name}' does "
                   f"not have it.")
            continue
        keys = ("controller_type", "controller_number", "controller_location")
        in_order = spec.get("drives") or []
        if target in places:
            place = {k: places[target][k] for k in keys}
        elif recorded and len(in_order) == len(spec.get("disks") or []):
            # the frozen disks and the drives are listed in the same order, but a host may name the frozen disks
            # differently (docs/hyperv.md, the open question): the n-th disk goes where the n-th drive was
            place = {k: in_order[index][k] for k in keys}
        elif recorded:
            place = drive(target)
        else:
            place = {"controller_type": "SCSI" if generation == 2 else "IDE", "controller_number": 0,
                     "controller_location": index}
        drives.append(dict(place, target=target, path=ntpath.join(
            host["vhd_root"], f"{_safe(name)}-{_safe(target)}-{backup_id or 'restore'}.vhdx")))
    nics = [{"name": nic.get("name") or "Network Adapter", "switch": nic.get("switch") or "",
             "mac": nic.get("mac") if keep_macs else ""} for nic in spec.get("nics") or []]
    payload = {"name": name, "generation": generation, "memory_bytes": int(spec.get("memory_bytes") or 1 << 30),
               "processors": int(spec.get("processors") or 1), "notes": f"{MARK}{backup_id}", "nics": nics,
               "firmware": generation == 2 and bool(spec.get("secure_boot")),
               "secure_boot": spec.get("secure_boot") or "Off",
               "secure_boot_template": spec.get("secure_boot_template") or "", "start": start,
               "drives": [{k: d[k] for k in ("controller_type", "controller_number", "controller_location", "path")}
                          for d in drives]}
    written: list[str] = []
    made = None
    try:
        for entry in drives:
            local = disk_files[entry["target"]][0]
            written.append(entry["path"])
            upload(p, local, os.path.getsize(local), entry["path"], 21600)
        made = p.run("restore_new_vm", payload, f"create VM '{name}'", 600)
    finally:
        if made is None:
            remove(p, written, f"the failed restore of new VM '{name}'")
    return p.find_vm(VmSelector(id=str(made["id"])))
