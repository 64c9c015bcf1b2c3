# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""VirtualBox through VBoxManage, on this machine or on a remote host over SSH.

Snapshots: ``snapshot take/delete/restore/list --machinereadable``; names may repeat, so every operation after a
lookup names the snapshot by UUID. Creation times and saved states come from the machine's settings file (the
``.vbox`` XML that ``showvminfo`` names as CfgFile): ``list --machinereadable`` prints neither. Chains come from the
media registry (``list --long hdds``). VirtualBox restores a snapshot only on a VM that is powered off or saved; a
running VM is powered off first only when the task says so (``power_off``).

Verified against the project's fake VBoxManage only (tests/vbox_fake), see docs/virtualbox.md.
"""

from __future__ import annotations

import datetime
import difflib
import json
import posixpath
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    ConnectionFailed,
    OperationTimeout,
    ProviderError,
    QuiesceFailed,
    SnapshotNotFound,
    UnsupportedOperation,
    VmNotFound,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import (
    ConsolidationStatus,
    CreateResult,
    Disk,
    Leftover,
    Snapshot,
    SnapshotSpec,
    VmRef,
    VmSelector,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import virtualbox_cli as cli
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider, Warn

_STATES = {"running": "running", "paused": "paused", "poweroff": "shutoff", "aborted": "shutoff", "saved": "saved",
           "aborted-saved": "saved", "gurumeditation": "crashed", "livesnapshotting": "running",
           "onlinesnapshotting": "running", "deletingsnapshotlive": "running", "starting": "running",
           "stopping": "running", "saving": "running", "restoring": "running", "snapshotting": "shutoff",
           "deletingsnapshot": "shutoff", "restoringsnapshot": "shutoff", "settingup": "shutoff"}
_ONLINE = ("running", "paused", "crashed")
_NS = "{http://www.virtualbox.org/}"
_READ_ONLY = ("showvminfo", "list", "showmediuminfo", "--version")
# storagectl --add takes the bus; showvminfo prints the controller chip
BUSES = {"IntelAhci": "sata", "PIIX3": "ide", "PIIX4": "ide", "ICH6": "ide", "LsiLogic": "scsi", "BusLogic": "scsi",
         "LsiLogicSas": "sas", "NVMe": "pcie", "VirtioSCSI": "virtio", "I82078": "floppy", "USB": "usb"}


def load_sdk() -> str | None:
    """VBoxManage needs no Python SDK here (paramiko, for remote hosts, is imported when used)."""
    return None


def _parse_time(value: str) -> datetime.datetime:
    text = value.strip().replace("Z", "+00:00")
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


class VirtualboxProvider(HypervisorProvider):
    """VBoxManage on one VirtualBox host."""

    name = "virtualbox"
    unique_snapshot_names = False
    restore_format = "vmdk"  # vm_restore target new_vm: an image VirtualBox attaches as it is

    def __init__(self, params: dict[str, t.Any], warn: Warn) -> None:
        super().__init__(params, warn)
        self.vboxmanage: str = params.get("vboxmanage") or "VBoxManage"
        self.timeout = float(params.get("connect_timeout") or 30)
        hostname = params.get("hostname")
        if hostname:
            self.remote: cli.Host = cli.SshHost(
                hostname, int(params.get("port") or 22), params.get("username"), params.get("password"),
                params.get("ssh_key_file"), params.get("ssh_known_hosts"), bool(params.get("validate_certs", True)),
                self.timeout)
        else:
            self.remote = cli.LocalHost()
        self._media: list[dict[str, str]] | None = None
        self._info: dict[str, dict[str, str]] = {}  # showvminfo per VM, until the next command that changes anything

    @property
    def host(self) -> str:
        return self.remote.label

    @property
    def is_local(self) -> bool:
        return isinstance(self.remote, cli.LocalHost)

    def connect(self) -> None:
        if not isinstance(self.remote, cli.SshHost):
            return  # a missing local VBoxManage is reported by the first command
        self.remote.open()
        result = self.remote.run([self.vboxmanage, "--version"], self.timeout)
        if result.rc != 0:
            raise ConnectionFailed(f"Failed to run {self.vboxmanage} --version on virtualbox host {self.host}: "
                                   f"{(result.err or result.out).strip()[:500]}")

    def close(self) -> None:
        self.remote.close()

    # -- running VBoxManage -----------------------------------------------------------------------

    def vbox(self, args: list[str], verb: str, timeout: float | None = None) -> str:
        """Run VBoxManage with ``args``; return stdout. Raise VmNotFound/SnapshotNotFound/ProviderError naming
        ``verb``, or OperationTimeout."""
        limit = float(timeout if timeout is not None else self.timeout)
        if args[0] not in _READ_ONLY:
            self._info.clear()
            self._media = None
        try:
            result = self.remote.run([self.vboxmanage, *args], limit)
        except OperationTimeout as exc:
            raise OperationTimeout(f"Failed to {verb} on virtualbox host {self.host}: {exc} (timeout {limit:g} s). "
                                   f"VirtualBox may still finish the operation: check with vm_snapshot_info, and "
                                   f"raise timeout if the host is slow.") from exc
        if result.rc != 0:
            raise self._error(verb, result)
        return result.out

    def _error(self, verb: str, result: cli.Result) -> Exception:
        lines = [ln.replace("VBoxManage: error: ", "", 1).strip() for ln in (result.err + result.out).splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("Context:", "0%")) and "%..." not in ln]
        cause = "; ".join(lines)[:1500] or f"exit code {result.rc}"
        message = f"Failed to {verb} on virtualbox host {self.host}: {cause}"
        if "Could not find a registered machine" in cause:
            return VmNotFound(message + ". The VM was removed or renamed meanwhile.")
        if "Could not find a snapshot" in cause:
            return SnapshotNotFound(message + ". It was removed meanwhile; list them with vm_snapshot_info.")
        return ProviderError(message)

    # -- VMs --------------------------------------------------------------------------------------

    def info(self, vm_id: str, verb: str = "") -> dict[str, str]:
        """showvminfo --machinereadable as a dict; read once until a command changes something."""
        if vm_id not in self._info:
            out = self.vbox(["showvminfo", vm_id, "--machinereadable"], verb or f"read VM {vm_id}")
            data = dict(cli.parse_machinereadable(out))
            self._info[vm_id] = self._info[data.get("UUID", vm_id)] = data
        return self._info[vm_id]

    def _ref(self, data: dict[str, str]) -> VmRef:
        state = data.get("VMState", "")
        return VmRef(id=data["UUID"], name=data["name"], state=_STATES.get(state, state), host=self.host)

    def list_vms(self) -> list[VmRef]:
        names = cli.parse_vm_list(self.vbox(["list", "vms"], "list VMs"))
        found = []
        for _name, uuid in names:
            try:
                found.append(self._ref(self.info(uuid)))
            except VmNotFound:
                continue  # unregistered meanwhile
        return found

    def find_vm(self, selector: VmSelector) -> VmRef:
        listed = cli.parse_vm_list(self.vbox(["list", "vms"], "list VMs"))
        if selector.id is not None:
            found = [u for n, u in listed if u.lower() == selector.id.strip("{}").lower()]
        else:
            found = [u for n, u in listed if n == selector.name]
        if len(found) > 1:
            raise VmNotFound(f"VirtualBox host {self.host} has {len(found)} VMs named '{selector.name}' "
                             f"({', '.join(found)}); select one with vm_id.")
        if not found:
            close = difflib.get_close_matches(selector.name or selector.id or "", [n for n, _u in listed], n=3)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise VmNotFound(f"No VM {selector.describe()} on VirtualBox host {self.host}.{hint}")
        return self._ref(self.info(found[0], f"read VM {selector.describe()}"))

    # -- snapshots --------------------------------------------------------------------------------

    def _settings(self, data: dict[str, str]) -> dict[str, dict[str, str]]:
        """Snapshot UUID -> timeStamp, stateFile, description, from the machine's settings file ({} if unreadable)."""
        path = data.get("CfgFile", "")
        try:
            root = ET.fromstring(self.remote.read(path))
        except (OSError, ET.ParseError) as exc:
            self.warn(f"Could not read the settings file {path} of VM '{data.get('name')}' ({exc}); snapshot creation "
                      f"times are unknown and shown as now, so max_age removes none of them.")
            return {}
        found = {}
        for elem in root.iter(f"{_NS}Snapshot"):
            desc = elem.find(f"{_NS}Description")
            found[elem.get("uuid", "").strip("{}").lower()] = {
                "timeStamp": elem.get("timeStamp", ""), "stateFile": elem.get("stateFile", ""),
                "description": desc.text or "" if desc is not None else ""}
        return found

    def list_snapshots(self, vm: VmRef) -> list[Snapshot]:
        return self._snapshots(vm, self.info(vm.id, f"read VM '{vm.name}'"))

    def _snapshots(self, vm: VmRef, data: dict[str, str]) -> list[Snapshot]:
        result = self.remote.run([self.vboxmanage, "snapshot", vm.id, "list", "--machinereadable"], self.timeout)
        if result.rc != 0:
            if "does not have any snapshots" in result.out + result.err:
                return []
            raise self._error(f"list snapshots of VM '{vm.name}'", result)
        pairs = cli.parse_machinereadable(result.out)
        values = dict(pairs)
        settings = self._settings(data)
        now = datetime.datetime.now(datetime.timezone.utc)
        snaps = []
        for key, name in pairs:
            if not key.startswith("SnapshotName"):
                continue
            suffix = key[len("SnapshotName"):]
            uid = values.get(f"SnapshotUUID{suffix}", "")
            parent = values.get(f"SnapshotUUID{suffix.rpartition('-')[0]}") if suffix else None
            extra = settings.get(uid.lower(), {})
            created = _parse_time(extra["timeStamp"]) if extra.get("timeStamp") else now
            memory = bool(extra.get("stateFile"))
            snaps.append(Snapshot(
                id=uid, name=name, created=created,
                description=extra.get("description", values.get(f"SnapshotDescription{suffix}", "")),
                parent=parent, current=uid == values.get("CurrentSnapshotUUID"), memory=memory, quiesced=None,
                kind="internal", vm_state="running" if memory else "shutoff"))
        return tree.link(snaps)

    def create_snapshot(self, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
        if spec.disk_only:
            raise UnsupportedOperation("VirtualBox has no disk-only snapshot: every snapshot covers all disks, and the "
                                       "RAM of a running VM. Drop disk_only.")
        running = vm.state in _ONLINE
        warnings: list[str] = []
        if running and spec.quiesce:
            if spec.quiesce_fallback == "fail" and not spec.memory:
                raise QuiesceFailed(f"Failed to quiesce VM '{vm.name}' on virtualbox host {self.host}: VBoxManage "
                                    f"cannot freeze guest file systems. Set quiesce_fallback=crash_consistent, or "
                                    f"memory=true (VirtualBox saves the RAM of a running VM with every snapshot).")
            warnings.append(f"VirtualBox cannot quiesce VM '{vm.name}'; the snapshot saves its RAM instead, which "
                            f"makes it consistent on revert.")
        elif running and not spec.memory:
            warnings.append(f"VirtualBox saves the RAM of running VM '{vm.name}' with every snapshot; memory=false "
                            f"cannot be honoured.")
        args = ["snapshot", vm.id, "take", spec.name, "--description", spec.description]
        if running:
            args.append("--live")  # the VM keeps running while its RAM is saved
        before = {s.id for s in self.list_snapshots(vm)}
        try:
            out = self.vbox(args, f"take snapshot '{spec.name}' of VM '{vm.name}'", timeout)
        except (OperationTimeout, ProviderError):
            self._drop_new(vm, spec.name, before, timeout)
            raise
        uid = next((ln.rpartition("UUID:")[2].strip() for ln in out.splitlines() if "Snapshot taken" in ln), "")
        snaps = self.list_snapshots(vm)
        snap = next((s for s in snaps if s.id == uid), None) or next((s for s in reversed(snaps) if s.name == spec.name
                                                                      and s.current), None)
        if snap is None:
            raise ProviderError(f"VBoxManage took snapshot '{spec.name}' of VM '{vm.name}' (UUID {uid or 'unknown'}) "
                                f"but it is not in the VM's snapshot list.")
        consistency = "memory" if snap.memory and running else "offline" if not running else "crash_consistent"
        if vm.state == "saved":
            consistency = "memory"
        for warning in warnings:
            self.warn(warning)
        return CreateResult(snapshot=snap, consistency=consistency, warnings=warnings)

    def _drop_new(self, vm: VmRef, name: str, before: set[str], timeout: int) -> None:
        """After a failed or timed-out take: delete a snapshot of that name that was not there before; warns."""
        try:
            for snap in self.list_snapshots(vm):
                if snap.name == name and snap.id not in before:
                    self.vbox(["snapshot", vm.id, "delete", snap.id], f"delete the half-made snapshot '{name}' of VM "
                              f"'{vm.name}'", timeout)
        except (OperationTimeout, ProviderError) as exc:
            self.warn(f"Could not check for or delete a half-made snapshot '{name}' of VM '{vm.name}': {exc}")

    def revert_snapshot(self, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
        state = self._ref(self.info(vm.id, f"read VM '{vm.name}'")).state
        powered_off = False
        if state in _ONLINE:
            if not self.params.get("power_off"):
                raise UnsupportedOperation(
                    f"Failed to restore snapshot '{snapshot.name}' of VM '{vm.name}' on virtualbox host {self.host}: "
                    f"the VM is {state}, and VirtualBox restores snapshots only of a VM that is powered off or saved. "
                    f"Set power_off: true to power it off first (what the guest did not write to disk is lost), or "
                    f"shut the guest down.")
            self.vbox(["controlvm", vm.id, "poweroff"], f"power off VM '{vm.name}'", timeout)
            powered_off = True
        # restorecurrent when it is the current snapshot: the same operation, without a name lookup
        restore = ["restorecurrent"] if snapshot.current else ["restore", snapshot.id]
        self.vbox(["snapshot", vm.id, *restore], f"restore snapshot '{snapshot.name}' of VM '{vm.name}'", timeout)
        if powered_off and snapshot.memory:
            # The snapshot saved the running guest's RAM: starting resumes it where the snapshot was taken.
            self.vbox(["startvm", vm.id, "--type", "headless"], f"start VM '{vm.name}' from snapshot "
                      f"'{snapshot.name}'", timeout)

    def delete_snapshot(self, vm: VmRef, snapshot: Snapshot, children: bool, timeout: int) -> None:
        doomed = tree.descendants(self.list_snapshots(vm), snapshot.id) if children else []
        for snap in doomed + [snapshot]:
            self.vbox(["snapshot", vm.id, "delete", snap.id], f"delete snapshot '{snap.name}' of VM '{vm.name}'",
                      timeout)

    def rename_snapshot(self, vm: VmRef, snapshot: Snapshot, new_name: str, timeout: int) -> None:
        """``snapshot edit --name``; no module uses it yet."""
        self.vbox(["snapshot", vm.id, "edit", snapshot.id, "--name", new_name],
                  f"rename snapshot '{snapshot.name}' of VM '{vm.name}'", timeout)

    # -- media and consolidation ------------------------------------------------------------------

    def media(self, refresh: bool = False) -> dict[str, dict[str, str]]:
        """The media registry (``list --long hdds``): UUID -> record."""
        if self._media is None or refresh:
            self._media = cli.parse_records(self.vbox(["list", "--long", "hdds"], "list the media registry"))
        return {r["UUID"]: r for r in self._media if "UUID" in r}

    @staticmethod
    def attachments(data: dict[str, str]) -> list[tuple[str, str, int, int, str]]:
        """(slot, controller, port, device, medium UUID) of every attached medium, hard disks and DVDs alike."""
        found = []
        controllers = [v for k, v in data.items() if k.startswith("storagecontrollername")]
        for key, value in data.items():
            for ctl in controllers:
                prefix = f"{ctl}-ImageUUID-"
                if key.startswith(prefix):
                    port, _dash, device = key[len(prefix):].partition("-")
                    found.append((f"{ctl}-{port}-{device}", ctl, int(port), int(device), value))
        return found

    def disks(self, data: dict[str, str], media: dict[str, dict[str, str]]) -> list[Disk]:
        disks = []
        for slot, _ctl, _port, _dev, uid in self.attachments(data):
            if uid not in media:
                continue  # a DVD or floppy image
            chain, cursor, seen = [], uid, set()
            while cursor in media and cursor not in seen:
                seen.add(cursor)
                chain.append(media[cursor].get("Location", ""))
                cursor = media[cursor].get("Parent UUID", "base")
            top = media[uid]
            disks.append(Disk(target=slot, path=top.get("Location", ""), format=top.get("Storage format", ""),
                              chain=chain, virtual_size=_mbytes(top.get("Capacity")),
                              allocation=_mbytes(top.get("Size on disk"))))
        return disks

    def consolidation_status(self, vm: VmRef, snapshots: list[Snapshot] | None = None) -> ConsolidationStatus:
        data = self.info(vm.id, f"read VM '{vm.name}'")
        media = self.media(refresh=True)
        disks = self.disks(data, media)
        folders = tuple(f.rstrip("/") + "/" for f in (posixpath.dirname(data.get("CfgFile", "")),
                                                      data.get("SnapFldr", "")) if f)
        status = ConsolidationStatus(needed=False, chain_depth=max((len(d.chain) for d in disks), default=0),
                                     disks=disks)
        for uid, rec in media.items():
            location = rec.get("Location", "")
            in_use = bool(rec.get("In use by VMs"))
            used_by_vm = vm.id.lower() in rec.get("In use by VMs", "").lower()
            if not (used_by_vm or location.startswith(folders)):
                continue
            differencing = rec.get("Parent UUID", "base") not in ("base", "none")
            if rec.get("State") == "inaccessible":
                if in_use:
                    status.reasons.append(f"disk image {location} ({uid}) of VM '{vm.name}' is inaccessible (file "
                                          f"missing or unreadable); restore the file, vmsafe does not repair this")
                else:
                    status.leftovers.append(Leftover(
                        kind="inaccessible_medium", disk=uid, files=[location],
                        detail=f"registered image {location} is missing and in no VM's use; its registry entry is "
                               f"dropped"))
            elif differencing and not in_use and not rec.get("Child UUIDs"):
                status.leftovers.append(Leftover(
                    kind="orphaned_medium", disk=uid, files=[location], bytes=_mbytes(rec.get("Size on disk")),
                    detail=f"differencing image {location} belongs to no VM or snapshot (left by a failed snapshot "
                           f"operation); it is deleted"))
        status.reasons += [x.detail for x in status.leftovers]
        status.needed = bool(status.reasons)
        return status

    def repair_leftover(self, vm: VmRef, leftover: Leftover, timeout: int) -> None:
        rec = self.media(refresh=True).get(leftover.disk)
        if rec is None:
            return  # gone meanwhile
        if rec.get("In use by VMs") or rec.get("Child UUIDs"):
            raise UnsupportedOperation(f"Failed to repair {leftover.kind} {leftover.disk} of VM '{vm.name}' on "
                                       f"virtualbox host {self.host}: it is in use now; run again to re-check.")
        args = ["closemedium", "disk", leftover.disk]
        if leftover.kind == "orphaned_medium":
            args.append("--delete")
        elif leftover.kind != "inaccessible_medium":
            raise UnsupportedOperation(f"Unknown leftover kind {leftover.kind} on virtualbox host {self.host}.")
        self.vbox(args, f"close medium {leftover.files[0] if leftover.files else leftover.disk}", timeout)

    # -- backups (virtualbox_backup) --------------------------------------------------------------

    def backup_base(self, vm: VmRef, last: dict[str, t.Any] | None) -> tuple[str | None, str]:
        why = "no earlier backup of this VM in the repository" if last is None else "VirtualBox has no changed-block " \
              "tracking: every backup reads the whole disk, and deduplication stores only the chunks that changed"
        return None, why

    def backup_begin(self, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str) -> t.Any:
        from ansible_collections.vmsafe.protect.plugins.module_utils._providers import virtualbox_backup  # pylint: disable=import-outside-toplevel

        return virtualbox_backup.begin(self, vm, quiesce, quiesce_fallback)

    # -- restores ---------------------------------------------------------------------------------

    def define_restored_vm(self, definition: str, name: str, disk_files: dict[str, tuple[str, str]],
                           start: bool) -> VmRef:
        from ansible_collections.vmsafe.protect.plugins.module_utils._providers import virtualbox_backup  # pylint: disable=import-outside-toplevel

        return virtualbox_backup.define(self, json.loads(definition), name, disk_files, start)


def _mbytes(value: str | None) -> int | None:
    """``"4 MBytes"`` -> bytes; None when missing."""
    if not value:
        return None
    try:
        return int(value.split()[0]) << 20
    except ValueError:
        return None
