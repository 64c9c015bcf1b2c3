# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""VirtualBox backups and restores to a new VM, through VBoxManage.

A backup: take a temporary snapshot (``--live`` when the VM runs), clone each disk's frozen image to a flat file on
the host (``clonemedium --format RAW``; VirtualBox flattens the differencing chain), delete the temporary snapshot
(its changes merge back), then stream each flat file into the repository and delete it. VirtualBox has no
changed-block tracking, so every backup reads every byte; the repository stores only the chunks it does not hold yet.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import posixpath
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ProviderError, QuiesceFailed, VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.virtualbox import VirtualboxProvider

READ_PIECE = 4 * 1024 * 1024
SNAPSHOT_PREFIX = "vmsafe-backup-"


@dataclasses.dataclass
class VboxDisk:
    """One disk, cloned flat at the backup point into ``path`` on the host."""

    target: str
    size: int
    path: str
    session: VboxBackupSession

    def extents(self) -> t.Iterator[tuple[int, int, bytes]]:
        """Yield (offset, length, data) over the whole disk, in offset order."""
        offset = 0
        with self.session.provider.remote.open_read(self.path) as fh:
            while offset < self.size:
                if self.session.aborted.is_set():
                    raise ProviderError(f"Backup of disk {self.target} of VM '{self.session.vm.name}' was aborted.")
                data = fh.read(min(READ_PIECE, self.size - offset))
                if not data:
                    raise ProviderError(f"The clone of disk {self.target} of VM '{self.session.vm.name}' ended at "
                                        f"{offset} of {self.size} bytes.")
                yield offset, len(data), data
                offset += len(data)


@dataclasses.dataclass
class VboxBackupSession:
    """The flat clones of one backup point; close() deletes them (and the temporary snapshot, if still there)."""

    provider: VirtualboxProvider
    vm: VmRef
    consistency: str
    vm_definition: str
    disks: list[VboxDisk] = dataclasses.field(default_factory=list)
    clones: list[str] = dataclasses.field(default_factory=list)  # medium UUIDs registered by clonemedium
    snapshot: str | None = None
    checkpoint: str = ""  # no change tracking: nothing for the next backup to start from
    done: bool = False
    aborted: threading.Event = dataclasses.field(default_factory=threading.Event)

    def abort(self) -> None:
        self.aborted.set()

    def drop_snapshot(self) -> None:
        if self.snapshot is not None:
            self.provider.vbox(["snapshot", self.vm.id, "delete", self.snapshot],
                               f"delete the backup's temporary snapshot of VM '{self.vm.name}'", 3600)
            self.snapshot = None

    def close(self, success: bool) -> None:
        """Delete the flat clones and the temporary snapshot; best effort, warns."""
        if self.done:
            return
        self.done = True
        for uid in self.clones:
            try:
                self.provider.vbox(["closemedium", "disk", uid, "--delete"], f"delete backup clone {uid}", 600)
            except VmsafeError as exc:
                self.provider.warn(f"Could not delete the backup clone {uid} of VM '{self.vm.name}': {exc}. Remove it "
                                   f"with VBoxManage closemedium disk {uid} --delete.")
        try:
            self.drop_snapshot()
        except VmsafeError as exc:
            self.provider.warn(f"Could not delete the temporary snapshot of VM '{self.vm.name}': {exc}. Remove it "
                               f"with vmsafe.protect.vm_snapshot (state: absent, snapshot_id: {self.snapshot}).")


def definition(provider: VirtualboxProvider, data: dict[str, str], sizes: dict[str, int]) -> dict[str, t.Any]:
    """What define() needs to rebuild the VM: OS type, RAM, CPUs, controllers and where each disk sits."""
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.virtualbox import BUSES  # pylint: disable=import-outside-toplevel

    controllers = []
    index = 0
    while f"storagecontrollername{index}" in data:
        chip = data.get(f"storagecontrollertype{index}", "")
        controllers.append({"name": data[f"storagecontrollername{index}"], "type": chip, "bus": BUSES.get(chip, "sata"),
                            "ports": int(data.get(f"storagecontrollerportcount{index}", "1") or 1)})
        index += 1
    disks = [{"name": slot, "controller": ctl, "port": port, "device": dev, "size": sizes[slot]}
             for slot, ctl, port, dev, _uid in provider.attachments(data) if slot in sizes]
    return {"hypervisor": "virtualbox", "name": data.get("name"), "uuid": data.get("UUID"),
            "ostype": data.get("ostype", "Other"), "memory": int(data.get("memory", "0") or 0),
            "cpus": int(data.get("cpus", "1") or 1), "controllers": controllers, "disks": disks}


def begin(provider: VirtualboxProvider, vm: VmRef, quiesce: bool, quiesce_fallback: str) -> VboxBackupSession:
    data = provider.info(vm.id, f"read VM '{vm.name}'")
    media = provider.media(refresh=True)
    frozen = [(slot, uid) for slot, _c, _p, _d, uid in provider.attachments(data) if uid in media]
    if not frozen:
        raise ProviderError(f"VM '{vm.name}' on virtualbox host {provider.host} has no hard disk to back up.")
    running = vm.state in ("running", "paused")
    if running and quiesce:
        if quiesce_fallback == "fail":
            raise QuiesceFailed(f"Failed to quiesce VM '{vm.name}' on virtualbox host {provider.host}: VBoxManage "
                                f"cannot freeze guest file systems. Set quiesce_fallback=crash_consistent to back up "
                                f"the disks as a power cut would leave them.")
        provider.warn(f"VirtualBox cannot quiesce VM '{vm.name}': the backup is crash consistent.")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    session = VboxBackupSession(provider=provider, vm=vm, consistency="crash_consistent" if running else "offline",
                                vm_definition="")
    args = ["snapshot", vm.id, "take", SNAPSHOT_PREFIX + stamp, "--description",
            "Temporary snapshot of vmsafe.protect vm_backup; removed when the backup ends."]
    out = provider.vbox(args + (["--live"] if running else []), f"take the backup snapshot of VM '{vm.name}'", 3600)
    session.snapshot = next((ln.rpartition("UUID:")[2].strip() for ln in out.splitlines() if "Snapshot taken" in ln),
                            None)
    if not session.snapshot:
        raise ProviderError(f"VBoxManage printed no UUID for the backup snapshot of VM '{vm.name}': {out.strip()[:300]}")
    try:
        folder = posixpath.dirname(data["CfgFile"])
        sizes = {}
        for slot, uid in frozen:
            path = posixpath.join(folder, f".{SNAPSHOT_PREFIX}{stamp}-{slot}.raw")
            # The image the snapshot froze is read-only now; its clone flattens the whole differencing chain.
            cloned = provider.vbox(["clonemedium", "disk", uid, path, "--format", "RAW"],
                                   f"clone disk {slot} of VM '{vm.name}'", 6 * 3600)
            clone_id = next((ln.rpartition("UUID:")[2].strip() for ln in cloned.splitlines() if "UUID:" in ln), "")
            session.clones.append(clone_id or path)
            sizes[slot] = _capacity(provider, clone_id or path)
            session.disks.append(VboxDisk(target=slot, size=sizes[slot], path=path, session=session))
        session.vm_definition = json.dumps(definition(provider, data, sizes), sort_keys=True)
        session.drop_snapshot()  # the clones hold the backup point; the VM's chain is as short as before
    except BaseException:
        session.close(False)
        raise
    return session


def _capacity(provider: VirtualboxProvider, medium: str) -> int:
    out = provider.vbox(["showmediuminfo", "disk", medium], f"read medium {medium}")
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import virtualbox_cli  # pylint: disable=import-outside-toplevel

    for rec in virtualbox_cli.parse_records(out):
        if "Capacity" in rec:
            return int(rec["Capacity"].split()[0]) << 20
    raise ProviderError(f"showmediuminfo printed no capacity for medium {medium}.")


def define(provider: VirtualboxProvider, spec: dict[str, t.Any], name: str, disk_files: dict[str, tuple[str, str]],
           start: bool) -> VmRef:
    """createvm --register, controllers, disks (uploaded next to the new VM on a remote host), optionally start."""
    out = provider.vbox(["createvm", "--name", name, "--ostype", spec.get("ostype") or "Other", "--register"],
                        f"create VM '{name}'")
    uid = next((ln.partition(":")[2].strip() for ln in out.splitlines() if ln.startswith("UUID:")), "")
    cfg = next((ln.partition(":")[2].strip().strip("'") for ln in out.splitlines() if ln.startswith("Settings file:")),
               "")
    if not uid:
        raise ProviderError(f"VBoxManage createvm printed no UUID for VM '{name}': {out.strip()[:300]}")
    try:
        if spec.get("memory") or spec.get("cpus"):
            provider.vbox(["modifyvm", uid, "--memory", str(spec.get("memory") or 128), "--cpus",
                           str(spec.get("cpus") or 1)], f"set RAM and CPUs of VM '{name}'")
        for ctl in spec.get("controllers") or []:
            provider.vbox(["storagectl", uid, "--name", ctl["name"], "--add", ctl["bus"], "--controller", ctl["type"],
                           "--portcount", str(ctl["ports"])], f"add controller '{ctl['name']}' to VM '{name}'")
        for disk in spec.get("disks") or []:
            if disk["name"] not in disk_files:
                continue
            local = disk_files[disk["name"]][0]
            path = local
            if not provider.is_local:
                path = posixpath.join(posixpath.dirname(cfg), posixpath.basename(local))
                provider.remote.put(local, path)
            provider.vbox(["storageattach", uid, "--storagectl", disk["controller"], "--port", str(disk["port"]),
                           "--device", str(disk["device"]), "--type", "hdd", "--medium", path],
                          f"attach disk {disk['name']} to VM '{name}'")
        if start:
            provider.vbox(["startvm", uid, "--type", "headless"], f"start VM '{name}'", 600)
    except VmsafeError as exc:
        raise ProviderError(f"{exc}. VM '{name}' ({uid}) was created but is incomplete: remove it with VBoxManage "
                            f"unregistervm {uid} --delete before trying again.") from exc
    return provider._ref(provider.info(uid, f"read VM '{name}'"))  # pylint: disable=protected-access
