#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_instant_restore
short_description: Boot a VM directly from a backup (instant recovery), then move it to local storage
version_added: 0.2.0
description:
  - Instant recovery, as Veeam's "Instant VM Recovery" or Proxmox Backup Server's live-restore. The VM runs at once
    from the backup; its data moves to local storage later, while it runs.
  - O(state=running) serves the backup's disks read-only over NBD from the repository, with the collection's own NBD
    server run as a detached process that outlives the module. Each disk gets a local qcow2 overlay in O(dest) that
    takes the guest's writes. The module then starts the VM on the overlays (a new VM named O(name), or the
    shut-off original with O(target=original)) and returns as soon as the VM runs.
  - O(state=migrated) copies each disk's whole content (the backup plus the overlay) to a standalone local qcow2 image
    in O(dest) while the VM runs (libvirt block copy, then a pivot), one disk after another, each within O(timeout).
    It then stops the NBD server and removes the overlays and the recovery's state.
  - O(state=absent) cleans up an instant recovery that is not wanted any more, or that was abandoned (a failed run,
    a reboot of the host). It stops the NBD server and removes the overlays and the state; with O(remove_vm=true) it
    also destroys and undefines the instant VM (with O(target=original), the original gets its definition back from
    before the recovery).
  - While the backup is served, the NBD server holds a shared lock on the repository, so no prune or garbage
    collection can delete the data the VM still reads. M(vmsafe.protect.backup_prune) therefore waits (O(lock_timeout))
    and then fails until the recovery is migrated or removed.
  - The state of each recovery (pid and start time of the server, sockets, overlays, backup id) is kept in
    C(O(state_dir)/<name>/), with the server's log C(server.log) and a copy of the code it runs.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.connection
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_VMSAFE_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan and the same keys as a real run; starts, copies and removes nothing.
  diff_mode:
    support: full
    details:
      - Shows the recovery's state before and after (absent, running from the backup, on local storage).
  idempotent:
    support: full
    details:
      - A second O(state=running) for a recovery that runs reports no change; one whose server or VM stopped (a reboot)
        is started again. O(state=migrated) and O(state=absent) report no change when there is nothing left to do.
options:
  name:
    description:
      - Name of the VM that runs from the backup. With O(target=new_vm) a new VM of this name is defined (new UUID
        and MAC addresses); with O(target=original) the existing, shut-off VM of this name is started on the backup.
      - Names the recovery for O(state=migrated) and O(state=absent) too.
    type: str
    required: true
  backup_id:
    description:
      - The backup to boot from. When unset, the newest backup of O(vm_name).
      - For a recovery that already runs, a different O(backup_id) is an error (migrate or remove it first).
    type: str
  vm_name:
    description:
      - The VM whose newest backup to boot from, when O(backup_id) is unset. Defaults to O(name).
    type: str
  state:
    description:
      - V(running) boots the VM from the backup; V(migrated) moves it to local storage and ends the recovery;
        V(absent) removes the recovery.
    type: str
    default: running
    choices: [running, migrated, absent]
  target:
    description:
      - V(new_vm) defines a new VM from the definition stored with the backup. V(original) starts the existing,
        shut-off VM O(name) on the backup's disks instead of its own (which are left untouched); needs O(force=true).
    type: str
    default: new_vm
    choices: [new_vm, original]
  force:
    description:
      - Required for O(target=original), which replaces the VM's disks in its definition by the backup's.
    type: bool
    default: false
  dest:
    description:
      - Directory for the overlays (which take the guest's writes while it runs from the backup) and for the local
        images O(state=migrated) writes (C(<name>-<disk>-<backup id>.qcow2)). It must exist. Required with
        O(state=running); later states use the one recorded then.
    type: path
  state_dir:
    description:
      - Directory for the state of the recoveries (one folder per O(name), holding the NBD server's sockets, status,
        log and code). Unix socket paths are limited to 107 bytes, so keep it short.
    type: path
    default: /var/lib/vmsafe/instant
  remove_vm:
    description:
      - With O(state=absent), destroy and undefine the instant VM (O(target=original) - give the original its
        definition back). Without it, a recovery whose VM still uses the overlays is refused.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for the NBD server to serve (besides O(lock_timeout)), and for the copy of each disk with
        O(state=migrated).
    type: int
    default: 600
notes:
  - Supported on libvirt/KVM only, with the module running on the KVM host (O(uri=qemu:///system), or C(delegate_to)
    the host). Other hypervisors fail with "Instant recovery is not supported on <hypervisor>".
  - The VM reads the backup through the repository (decrypted, decompressed, authenticated chunk by chunk), so it
    runs slower than from local disks until it is migrated; data it has read once are cached by the guest.
  - If the NBD server's repository lock goes stale (the repository - an sftp:// or s3:// one - could not be reached
    for 15 minutes to refresh it, or someone removed it with break_lock), the server records C(lock=lost) and takes a
    new lock as soon as it can; a prune that ran in between may have deleted data of the backup, and the guest then
    gets I/O errors reading blocks it had not read before. The C(lock) of RV(server) shows it. Migrate promptly.
  - A reboot of the host stops the NBD server; O(state=running) again starts it (and the VM) as before, from the
    recorded state. A VM that kept running while its server died (killed) has lost its disks' backing store and
    gets I/O errors; O(state=running) starts the server again, but QEMU does not reconnect, so restart that VM too.
seealso:
  - module: vmsafe.protect.vm_restore
  - module: vmsafe.protect.vm_backup
  - module: vmsafe.protect.backup_info
"""

EXAMPLES = r"""
- name: Boot web01 from its newest backup, as a new VM, at once
  vmsafe.protect.vm_instant_restore:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    name: web01-instant
    vm_name: web01
    dest: /var/lib/libvirt/images

- name: Boot the shut-off original web01 from a given backup
  vmsafe.protect.vm_instant_restore:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    name: web01
    backup_id: 20261123T020000Z-3f9a1c2e
    target: original
    force: true
    dest: /var/lib/libvirt/images

- name: Move it to local storage while it runs, and end the recovery
  vmsafe.protect.vm_instant_restore:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    name: web01-instant
    state: migrated

- name: Throw away an abandoned instant recovery, VM included
  vmsafe.protect.vm_instant_restore:
    repository: /backup/vmsafe
    name: web01-instant
    state: absent
    remove_vm: true
"""

RETURN = r"""
vm:
  description: The VM of the recovery (none when it does not exist, or would only be made outside check mode).
  returned: success
  type: dict
  sample: {"id": "6c7f1e0a-0d55-4b8e-9d2f-3a4c5b6d7e8f", "name": "web01-instant", "state": "running", "host": "qemu:///system"}
backup_id:
  description: The backup the VM runs from (or ran from); none when there is no recovery.
  returned: success
  type: str
  sample: 20261123T020000Z-3f9a1c2e
state_dir:
  description: The folder holding this recovery's state, server log and sockets.
  returned: success
  type: str
  sample: /var/lib/vmsafe/instant/web01-instant
disks:
  description:
    - Per disk, the overlay taking the writes, the NBD export it reads the backup from, the local image the migrate
      step writes, and whether the VM runs from that local image.
  returned: success
  type: list
  elements: dict
  sample:
    - disk: vda
      size: 21474836480
      overlay: /var/lib/libvirt/images/web01-instant-vda-instant.qcow2
      nbd: nbd+unix:///vda?socket=/var/lib/vmsafe/instant/web01-instant/vda.sock
      path: /var/lib/libvirt/images/web01-instant-vda-20261123T020000Z-3f9a1c2e.qcow2
      migrated: false
server:
  description:
    - The NBD server serving the backup. C(lock) is V(held) while its shared repository lock protects the backup from
      prune, V(lost) when it went stale, V(retaken) after a new one was taken. C(read_errors) counts reads the server
      answered with EIO (damaged or deleted data). Empty when no server runs.
  returned: success
  type: dict
  sample: {"pid": 41235, "alive": true, "lock": "held", "read_errors": 0, "last_error": null,
           "log": "/var/lib/vmsafe/instant/web01-instant/server.log"}
plan:
  description: What the module did or would do.
  returned: success
  type: list
  elements: str
  sample: ["start the NBD server for backup 20261123T020000Z-3f9a1c2e (disks vda)"]
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 2.4
applied:
  description:
    - When the module failed part-way, the steps of RV(plan) that had completed before the failure; run
      O(state=absent) to clean up, or the same task again.
  returned: failure
  type: list
  elements: str
  sample: ["start the NBD server for backup 20261123T020000Z-3f9a1c2e (disks vda)"]
"""

import datetime
import json
import os
import shutil
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import path_component
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import connection_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument, ProviderError
from ansible_collections.vmsafe.protect.plugins.module_utils import _instant_server as server
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import (
    backend_options,
    open_repository,
    repository_spec,
    wrap,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet

STATE_FILE = "instant.json"
SOCKET_MAX = 107


class InstantRestoreTask(ProviderTask):
    """Run a VM from a backup, move it to local storage, or remove the recovery."""

    repo: t.Any = None

    def plan(self, changes: ChangeSet) -> None:
        p = self.params
        self.helper = self.provider.instant_recovery()
        self.folder = os.path.join(p["state_dir"], path_component(p["name"]))
        self.state: dict[str, t.Any] | None = self._load_state()
        self.vm = self._vm()
        changes.before = self._describe()
        getattr(self, f"_plan_{p['state']}")(changes)
        changes.after = self._describe(after=p["state"], changes=changes)

    # -- what is there ------------------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, t.Any] | None:
        try:
            with open(os.path.join(self.folder, STATE_FILE), encoding="utf-8") as handle:
                return t.cast("dict[str, t.Any]", json.load(handle))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"The state of the instant recovery '{self.params['name']}' in {self.folder} is "
                                  f"unreadable ({exc}); remove that folder after checking no NBD server of it runs "
                                  f"(server.json has its pid).") from exc

    def _save_state(self) -> None:
        partial = os.path.join(self.folder, STATE_FILE + ".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(self.state, handle, indent=1)
        os.replace(partial, os.path.join(self.folder, STATE_FILE))

    def _vm(self) -> t.Any:
        if self.state and self.state.get("vm_id"):
            found = self.helper.find(self.params["name"])
            return found if found is not None and found.id == self.state["vm_id"] else None
        return self.helper.find(self.params["name"])

    def _status(self) -> dict[str, t.Any]:
        status = server.read_status(self.folder) or {}
        return status

    def _server_alive(self) -> bool:
        status = self._status()
        return status.get("state") == "serving" and server.alive(status.get("pid"), status.get("start"))

    def _on_overlays(self) -> bool:
        """Whether the recovery's VM still runs from (or is defined on) one of its overlays."""
        if self.vm is None or not self.state:
            return False
        overlays = {d["overlay"] for d in self.state["disks"]}
        return bool(overlays & set(self.helper.sources(self.vm).values()))

    def _describe(self, after: str | None = None, changes: ChangeSet | None = None) -> str:
        """The recovery as --diff shows it: now (``after`` None) or once the plan for state ``after`` is applied."""
        name = self.params["name"]
        if after is None:
            recovery = f"running from backup {self.state['backup_id']}" if self.state else "none"
            served = self.state is not None and self._server_alive()
            vm = self.vm is not None
        elif after == "running":
            recovery = f"running from backup {self.state['backup_id'] if self.state else self.record.id}"
            served, vm = True, True
        else:
            recovery, served = "none", False
            removed = after == "absent" and any(s.description.startswith("destroy VM") for s in changes.steps)
            vm = self.vm is not None and not (removed and self.state and self.state.get("target") == "new_vm")
        return f"name: {name}\nrecovery: {recovery}\nnbd_server: {'serving' if served else 'none'}\nvm_defined: {vm}\n"

    # -- state: running ---------------------------------------------------------------------------------------
    def _plan_running(self, changes: ChangeSet) -> None:
        p = self.params
        if self.state is not None:
            if p["backup_id"] and p["backup_id"] != self.state["backup_id"]:
                raise InvalidArgument(
                    f"An instant recovery of VM '{p['name']}' from backup {self.state['backup_id']} exists already "
                    f"({self.folder}); finish it (state: migrated) or remove it (state: absent) before booting backup "
                    f"{p['backup_id']}.")
            if not self._server_alive():
                changes.step(f"start the NBD server again for backup {self.state['backup_id']} (it was not running)",
                             self._start_server)
            if self.state.get("vm_id") is None:
                self._resume(changes)  # an earlier run failed before the VM was started: finish its steps
            elif self.vm is None:
                raise InvalidArgument(
                    f"The VM of the instant recovery '{p['name']}' is gone (undefined outside this module); remove the "
                    f"recovery with state: absent and run again.")
            elif self.vm.state != "running":
                changes.step(f"start VM '{p['name']}' on its overlays", lambda: self.helper.start(self.vm))
            return
        self._open_backup()
        if not p["dest"] or not os.path.isdir(p["dest"]):
            raise InvalidArgument(f"dest must be an existing directory for the overlays of the instant recovery, got "
                                  f"{p['dest']!r}.")
        if p["target"] == "original":
            if not p["force"]:
                raise InvalidArgument(f"target: original starts the existing VM '{p['name']}' on the backup's disks "
                                      f"instead of its own: set force: true to confirm, or boot a new VM "
                                      f"(target: new_vm) under another name.")
            if self.vm is None:
                raise InvalidArgument(f"There is no VM named '{p['name']}' to start on the backup (target: original); "
                                      f"use target: new_vm to define it from the backup.")
            if self.vm.state != "shutoff":
                raise InvalidArgument(f"VM '{p['name']}' is {self.vm.state}: shut it off first (target: original "
                                      f"replaces its disks with the backup's while it is off).")
        elif self.vm is not None:
            raise InvalidArgument(f"A VM named '{p['name']}' exists already on {self.provider.host}; choose another "
                                  f"name, or boot that VM itself from the backup with target: original and force: true.")
        stem = path_component(p["name"])
        disks = []
        for disk in self.record.disks:
            sock = os.path.join(self.folder, f"{path_component(disk.name)}.sock")
            if len(sock) > SOCKET_MAX:
                raise InvalidArgument(f"The NBD socket path {sock} is longer than the {SOCKET_MAX} bytes a Unix socket "
                                      f"allows; choose a shorter state_dir.")
            disks.append({
                "disk": disk.name, "size": disk.size, "socket": sock,
                "overlay": os.path.join(p["dest"], f"{stem}-{path_component(disk.name)}-instant.qcow2"),
                "path": os.path.join(p["dest"], f"{stem}-{path_component(disk.name)}-{self.record.id}.qcow2"),
            })
        taken = [f for d in disks for f in (d["overlay"], d["path"]) if os.path.exists(f)]
        if taken:
            raise InvalidArgument(f"Refusing to overwrite {', '.join(taken)}: remove it or choose another dest or name.")
        self.new_state = {
            "name": p["name"], "target": p["target"], "backup_id": self.record.id, "vm_name": self.record.vm_name,
            "repository": p["repository"], "dest": p["dest"], "disks": disks, "vm_id": None,
            "original_definition": None, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        names = ", ".join(d["disk"] for d in disks)
        changes.step(f"create {self.folder} with a copy of the NBD server's code", self._make_folder)
        changes.step(f"start the NBD server for backup {self.record.id} (disks {names}), holding a shared lock on "
                     f"{p['repository']}", self._start_server)
        for disk in disks:
            changes.step(f"create overlay {disk['overlay']} on the backup's disk {disk['disk']}",
                         lambda d=disk: self._make_overlay(d))
        what = (f"point the shut-off VM '{p['name']}' at the overlays and start it" if p["target"] == "original"
                else f"define VM '{p['name']}' from the backup's definition on the overlays and start it")
        changes.step(what, self._start_vm)

    def _resume(self, changes: ChangeSet) -> None:
        """Plan the steps an earlier run of this recovery did not reach (overlays, the VM)."""
        p = self.params
        self.params = dict(p, backup_id=self.state["backup_id"])
        try:
            self._open_backup()
        finally:
            self.params = p
        for disk in self.state["disks"]:
            if not os.path.exists(disk["overlay"]):
                changes.step(f"create overlay {disk['overlay']} on the backup's disk {disk['disk']}",
                             lambda d=disk: self._make_overlay(d))
        changes.step(f"start VM '{p['name']}' on the overlays", self._start_vm)

    def _open_backup(self) -> None:
        p = self.params
        self.repo = open_repository(p)
        try:
            if p["backup_id"]:
                self.record = self.repo.get(p["backup_id"])
            else:
                records = self.repo.list(p["vm_name"] or p["name"])
                if not records:
                    raise InvalidArgument(f"Repository {p['repository']} has no backup of VM "
                                          f"'{p['vm_name'] or p['name']}'; give backup_id, or vm_name (list them with "
                                          f"vmsafe.protect.backup_info).")
                self.record = records[-1]
        except backup_errors.BackupError as exc:
            raise wrap(exc, p["repository"]) from exc

    def _make_folder(self) -> None:
        os.makedirs(self.params["state_dir"], mode=0o700, exist_ok=True)
        os.makedirs(self.folder, mode=0o700, exist_ok=False)
        self.state = self.new_state
        self._save_state()

    def _start_server(self) -> None:
        p = self.params
        if self.repo is None:  # a restart: check the repository and passphrase here, where errors are reported
            self.repo = open_repository(p)
        code = os.path.join(self.folder, "code")
        if os.path.isdir(code):
            shutil.rmtree(code)
        server.copy_code(code)
        config = {
            "repository": p["repository"], "backend_options": backend_options(p), "passphrase": p["passphrase"],
            "lock_wait": p["lock_timeout"], "backup_id": self.state["backup_id"], "vm": p["name"],
            "disks": [{"name": d["disk"], "socket": d["socket"]} for d in self.state["disks"]],
        }
        for disk in self.state["disks"]:
            if os.path.exists(disk["socket"]):
                os.unlink(disk["socket"])  # left by a server that was killed (a reboot)
        try:
            server.spawn(self.folder, code, config, p["timeout"] + p["lock_timeout"])
        except RuntimeError as exc:
            raise ProviderError(f"Failed to serve backup {self.state['backup_id']} for the instant recovery of VM "
                                f"'{p['name']}': {exc}") from exc

    def _make_overlay(self, disk: dict[str, t.Any]) -> None:
        backing = f"nbd+unix:///{disk['disk']}?socket={disk['socket']}"
        self.provider.kvm.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing, disk["overlay"],
                               str(disk["size"])], self.params["timeout"], f"create overlay {disk['overlay']}")
        os.chmod(disk["overlay"], 0o600)

    def _start_vm(self) -> None:
        overlays = {d["disk"]: d["overlay"] for d in self.state["disks"]}
        if self.state["target"] == "original":
            self.state["original_definition"] = self.helper.original_definition(self.vm)
            self._save_state()
            self.vm = self.helper.start_over(self.vm, overlays)
        else:
            self.vm = self.helper.start_new(self.record.vm_definition, self.params["name"], overlays)
        self.state["vm_id"] = self.vm.id
        self._save_state()

    # -- state: migrated --------------------------------------------------------------------------------------
    def _plan_migrated(self, changes: ChangeSet) -> None:
        p = self.params
        if self.state is None:
            if self.vm is None:
                raise InvalidArgument(f"There is no instant recovery named '{p['name']}' in {p['state_dir']} and no VM "
                                      f"of that name: nothing to migrate. Check name and state_dir.")
            return  # migrated already (its state is gone once it is)
        if self.vm is None:
            raise InvalidArgument(f"The VM of the instant recovery '{p['name']}' is gone; remove the recovery with "
                                  f"state: absent.")
        sources = self.helper.sources(self.vm)
        pending = [d for d in self.state["disks"] if sources.get(d["disk"]) != d["path"]]
        if pending and not self._server_alive():
            changes.step(f"start the NBD server again for backup {self.state['backup_id']} (it was not running)",
                         self._start_server)
        for disk in pending:
            if os.path.exists(disk["path"]):
                raise InvalidArgument(f"Refusing to overwrite {disk['path']} (the local image of disk {disk['disk']}): "
                                      f"remove it and run again.")
            changes.step(f"copy disk {disk['disk']} of VM '{p['name']}' to {disk['path']} and switch the VM to it",
                         lambda d=disk: self._migrate(d))
        self._plan_release(changes)

    def _migrate(self, disk: dict[str, t.Any]) -> None:
        def offline() -> None:
            partial = disk["path"] + ".vmsafe-partial"
            self.provider.kvm.run(["qemu-img", "convert", "-q", "-O", "qcow2", disk["overlay"], partial],
                                  self.params["timeout"], f"copy disk {disk['disk']} to {disk['path']}")
            os.chmod(partial, 0o600)
            os.replace(partial, disk["path"])

        self.helper.migrate_disk(self.vm, disk["disk"], disk["path"], self.params["timeout"], offline)
        self.vm = self.helper.ref(self.vm)

    def _plan_release(self, changes: ChangeSet) -> None:
        """Stop the server (when it runs), then remove the overlays and the state folder."""
        status = self._status()
        if server.alive(status.get("pid"), status.get("start")):
            changes.step(f"stop the NBD server (pid {status['pid']}) and release its repository lock",
                         lambda: server.stop(status.get("pid"), status.get("start")))
        changes.step(f"remove the overlays and {self.folder}", self._remove_files)

    def _remove_files(self) -> None:
        for disk in self.state["disks"]:
            for path in (disk["overlay"], disk["socket"], disk["path"] + ".vmsafe-partial"):
                if os.path.exists(path):
                    os.unlink(path)
        shutil.rmtree(self.folder)

    # -- state: absent ----------------------------------------------------------------------------------------
    def _plan_absent(self, changes: ChangeSet) -> None:
        p = self.params
        if self.state is None:
            return
        if self._on_overlays():
            if not p["remove_vm"]:
                then = (" and give the original its definition back" if self.state["target"] == "original"
                        else " and undefine it")
                raise InvalidArgument(
                    f"VM '{p['name']}' still runs from the backup (its disks are the recovery's overlays): set "
                    f"remove_vm: true to destroy it{then}, or keep it with state: migrated.")
            original = self.state.get("original_definition") if self.state["target"] == "original" else None
            what = "give it back its definition from before the recovery" if original else "undefine it"
            changes.step(f"destroy VM '{p['name']}' and {what}", lambda: self.helper.remove(self.vm, original))
        self._plan_release(changes)

    # -- results ----------------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.repo is not None:
            self.repo.close()

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        state = self.state if self.state is not None else getattr(self, "new_state", None)
        exists = os.path.isdir(self.folder) and os.path.exists(os.path.join(self.folder, STATE_FILE))
        disks = []
        sources = self.helper.sources(self.vm) if self.vm is not None and self.helper.find(self.params["name"]) else {}
        for disk in (state or {}).get("disks", []):
            disks.append({"disk": disk["disk"], "size": disk["size"], "overlay": disk["overlay"],
                          "nbd": f"nbd+unix:///{disk['disk']}?socket={disk['socket']}", "path": disk["path"],
                          "migrated": sources.get(disk["disk"]) == disk["path"]})
        status = self._status() if exists else {}
        served = bool(status) and server.alive(status.get("pid"), status.get("start"))
        srv = {"pid": status.get("pid"), "alive": served, "lock": status.get("lock"),
               "read_errors": status.get("read_errors", 0), "last_error": status.get("last_error"),
               "log": os.path.join(self.folder, server.LOG_FILE)} if status else {}
        vm = self.helper.find(self.params["name"])
        return {
            "vm": vm.to_dict() if vm is not None else None,
            "backup_id": state["backup_id"] if state else None,
            "state_dir": self.folder,
            "disks": disks,
            "server": srv,
            "plan": changes.plan,
        }


def main() -> None:
    spec = connection_spec().merge(repository_spec()).update_argspec(
        name={"type": "str", "required": True},
        backup_id={"type": "str"},
        vm_name={"type": "str"},
        state={"type": "str", "default": "running", "choices": ["running", "migrated", "absent"]},
        target={"type": "str", "default": "new_vm", "choices": ["new_vm", "original"]},
        force={"type": "bool", "default": False},
        dest={"type": "path"},
        state_dir={"type": "path", "default": "/var/lib/vmsafe/instant"},
        remove_vm={"type": "bool", "default": False},
        timeout={"type": "int", "default": 600},
    ).update(required_if=[["state", "running", ["dest"]]])
    run_module(spec, InstantRestoreTask)


if __name__ == "__main__":
    main()
