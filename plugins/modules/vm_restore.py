#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_restore
short_description: Restore a VM backup to image files, to a new VM, or over the original VM
version_added: 0.1.0
description:
  - Restores a backup taken by M(vmsafe.protect.vm_backup). Every chunk is authenticated and hash-checked before it is
    written, and each disk's whole content is checked against the digest recorded at backup time.
  - V(image) writes sparse image files (V(raw), V(qcow2), V(vmdk) or V(vhdx)) into O(dest). It needs no hypervisor
    library (libvirt-python, pyVmomi, pywinrm), only C(qemu-img) and C(qemu-nbd) for formats other than V(raw)
    and for checking files made by an earlier run.
  - V(new_vm) writes the disks into O(dest) and defines a new VM from the stored definition (refused for an
    unencrypted repository, whose definitions are not authenticated), with a new name, UUID and MAC addresses
    (the backed-up ones with O(keep_mac_addresses)), optionally started. The new VM gets the backed-up VM's CPU and
    memory, firmware, disk controllers and network cards (see the notes per hypervisor). A VM named O(new_vm_name)
    that was not made by an earlier run from this backup is never touched; the task fails.
  - V(original) replaces the disks of the original VM, which must be shut off (a running VM is refused, also in check
    mode); it needs O(force=true). The VM keeps its own MAC addresses and settings. On VMware and Hyper-V each disk
    is first written to a new file on the host, and only when all are complete are the VM's disks switched to them;
    a failure before that leaves the VM as it was and removes the new files, and the old disk files are deleted
    after the switch.
  - Never overwrites a file it was not told to; a failed restore leaves no partial file under a final name.
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
      - Says what would be written where; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - V(image) and V(new_vm) report no change when the files they made still hold the backup (their content digest
        is checked, which reads their data once); a file holding anything else is never overwritten. For V(new_vm),
        a VM named O(new_vm_name) that uses exactly those files is the one an earlier run made, so nothing is done.
        V(original) restores every time.
options:
  backup_id:
    description:
      - The backup to restore. When unset, the newest backup of O(vm_name).
    type: str
  vm_name:
    description:
      - The VM whose newest backup to restore (with O(backup_id) unset), and the VM restored over with
        O(target=original). Defaults to the VM name recorded in the backup.
    type: str
  target:
    description:
      - Where to restore.
    type: str
    default: image
    choices: [image, new_vm, original]
  dest:
    description:
      - Directory for the restored image files (O(target=image) and O(target=new_vm)). It must exist.
      - With O(target=original) on VMware and Hyper-V, where the local raw images are written before they are uploaded
        (and deleted afterwards); a temporary directory when unset.
    type: path
  format:
    description:
      - Image format for O(target=image). V(new_vm) and V(original) use the hypervisor's own (qcow2 on libvirt,
        flat images uploaded to the datastore on VMware).
    type: str
    default: qcow2
    choices: [raw, qcow2, vmdk, vhdx]
  disks:
    description:
      - Only these disks (by target name, for example V(vda)). All disks when unset.
    type: list
    elements: str
  new_vm_name:
    description:
      - Name of the VM to create with O(target=new_vm).
    type: str
  start:
    description:
      - Start the new VM after defining it (O(target=new_vm)).
    type: bool
    default: false
  keep_mac_addresses:
    description:
      - Give the new VM's network cards the backed-up VM's MAC addresses (O(target=new_vm)). By default they get new
        ones, so the copy can run next to the original. Use it when the original is gone and the guest's network
        configuration or licences depend on the MACs. O(target=original) always keeps the VM's own.
      - Supported on libvirt, VMware and Hyper-V.
    type: bool
    default: false
    version_added: 0.1.0
  force:
    description:
      - Required for O(target=original), which replaces the VM's disks with the backup's.
    type: bool
    default: false
  timeout:
    description:
      - Seconds each image conversion may take.
    type: int
    default: 21600
notes:
  - Restoring over the original VM drops its backup checkpoints, so its next backup is a full one (libvirt only).
  - On VMware, O(target=new_vm) uploads each restored disk through the datastore HTTP interface next to the new VM's
    files and creates the VM from the stored definition (new UUID and MACs) with its firmware (BIOS or EFI, secure
    boot), hardware version, cores per socket, disk controllers (type, bus, sharing), each disk at its controller
    and unit, and its network cards (type, network or distributed port group, connect at power on, wake on LAN). A
    network the datacenter lacks stops the task before anything is uploaded. O(target=original) uploads new disk
    files next to the VM's, switches the VM to them in one reconfiguration, deletes the old files and turns Changed
    Block Tracking off (the next vm_backup is a full one). Verified against vcsim only (see docs/vmware.md).
  - On Hyper-V, each restored disk becomes a new dynamic VHDX on the host, its data sent over WinRM (only the non-zero
    ranges). O(target=new_vm) puts them in the host's default virtual hard disk folder and creates the VM with the
    backed-up generation, memory, processors, secure boot setting and template, each drive at its controller and
    location, and the network adapters on their virtual switches. O(target=original) switches each drive to its new
    VHDX (putting back the ones switched when one fails), destroys the VM's backup reference points (the next
    vm_backup is a full one) and deletes the old VHDX files. Verified against the project's simulator only (see
    docs/hyperv.md).
  - Backups made before the firmware, controllers and network cards were recorded restore to a new VM with defaults
    there (no network card, BIOS or the host's default firmware, one SCSI controller) and a warning naming what was
    left out.
  - On VirtualBox, O(target=new_vm) writes VMDK files into O(dest) (uploaded over SFTP next to the new VM on a remote
    host) and creates the VM with C(VBoxManage createvm), C(storagectl) and C(storageattach). O(target=original) is not
    supported there. Verified against the project's fake VBoxManage only (see docs/virtualbox.md).
  - On Azure, O(target=new_vm) uploads each disk as a fixed VHD to a new managed disk in the backed-up VM's region
    and zone and creates the VM on them; it reuses the backed-up VM's network interfaces, which Azure allows only
    once that VM is gone, and otherwise fails naming the uploaded disks. O(target=original) is not supported there.
seealso:
  - module: vmsafe.protect.vm_backup
  - module: vmsafe.protect.backup_info
"""

EXAMPLES = r"""
- name: Restore the newest backup of web01 as a new VM and start it
  vmsafe.protect.vm_restore:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    vm_name: web01
    target: new_vm
    new_vm_name: web01-restored
    dest: /var/lib/libvirt/images
    start: true

- name: Rebuild a lost VMware VM from its newest backup, with its own MAC addresses
  vmsafe.protect.vm_restore:
    hypervisor: vmware
    hostname: vcenter.example.com
    username: svc-vmsafe@vsphere.local
    password: "{{ vcenter_password }}"
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    vm_name: web01
    target: new_vm
    new_vm_name: web01
    keep_mac_addresses: true
    dest: /srv/restore-staging

- name: Put a shut-off Hyper-V VM back to last night's backup
  vmsafe.protect.vm_restore:
    hypervisor: hyperv
    hostname: hv01.example.com
    username: EXAMPLE\svc-vmsafe
    password: "{{ hv_password }}"
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    vm_name: sql01
    target: original
    force: true

- name: Export one disk of a given backup as a VHDX file
  vmsafe.protect.vm_restore:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    backup_id: 20261123T020000Z-3f9a1c2e
    target: image
    format: vhdx
    disks: [vda]
    dest: /srv/export
"""

RETURN = r"""
backup_id:
  description: The backup restored.
  returned: success
  type: str
  sample: 20261123T020000Z-3f9a1c2e
files:
  description:
    - Per disk, the file written (or that would be), its format, size and the content digest it was checked against.
    - C(restored) is V(false) for a file an earlier run made that still holds exactly this disk (left as it is).
    - With O(target=original) on VMware and Hyper-V, C(path) is the disk's new file on the host (C([datastore] dir/file.vmdk)
      or the VHDX path); in check mode it names a file of the same form (each run picks a new name).
  returned: success
  type: list
  elements: dict
  sample:
    - disk: vda
      path: /srv/export/web01-vda-20261123T020000Z-3f9a1c2e.vhdx
      format: vhdx
      size: 21474836480
      digest: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      restored: true
vm:
  description:
    - The VM defined (O(target=new_vm)) or restored over (O(target=original)).
    - In check mode with O(target=new_vm), the VM that would be defined, with an empty C(id).
  returned: when O(target) is not V(image)
  type: dict
  sample: {"id": "6c7f1e0a-0d55-4b8e-9d2f-3a4c5b6d7e8f", "name": "web01-restored", "state": "running", "host": "qemu:///system"}
plan:
  description: What the module did or would do.
  returned: success
  type: list
  elements: str
  sample: ["restore disk vda of 20261123T020000Z-3f9a1c2e to /srv/export/web01-vda-20261123T020000Z-3f9a1c2e.vhdx (vhdx)"]
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 12.7
applied:
  description:
    - When the module failed part-way, the steps of RV(plan) that had completed before the failure, in order. Files
      they wrote are complete restores; a disk whose restore failed left nothing under its final name.
  returned: failure
  type: list
  elements: str
  sample: []
"""

import os
import secrets
import stat
import tempfile
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import qcow2
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import restore as restore_unit
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import path_component
from ansible_collections.vmsafe.protect.plugins.module_utils._changes import Step
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import connection_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument, OperationTimeout, VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmSelector
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt_host import KvmHost
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt_image import image_digest
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import open_repository, repository_spec, wrap
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet

EXTENSIONS = {"raw": "img", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx"}
QEMU_FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx"}


class RestoreTask(ProviderTask):
    """Restore one backup."""

    repo: t.Any = None
    _host: KvmHost | None = None
    _local: dict[str, str]
    _scratch_dir: str | None = None

    @classmethod
    def needs_provider(cls, params: dict[str, t.Any]) -> bool:
        return params["target"] != "image"

    def plan(self, changes: ChangeSet) -> None:
        p = self.params
        self.repo = open_repository(p)
        try:
            if p["backup_id"]:
                self.record = self.repo.get(p["backup_id"])
            else:
                records = self.repo.list(p["vm_name"])
                if not records:
                    raise InvalidArgument(f"Repository {p['repository']} has no backup of VM '{p['vm_name']}'; "
                                          f"list them with vmsafe.protect.backup_info.")
                self.record = records[-1]
        except backup_errors.BackupError as exc:
            raise wrap(exc, p["repository"]) from exc
        names = p["disks"] or [d.name for d in self.record.disks]
        unknown = [n for n in names if self.record.disk(n) is None]
        if unknown:
            raise InvalidArgument(f"Backup {self.record.id} has no disk {', '.join(unknown)}; it has "
                                  f"{', '.join(d.name for d in self.record.disks)}.")
        self.vm = None
        self._local = {}  # target: original on VMware/Hyper-V: disk -> local raw image to upload
        formats: dict[str, str] = {}
        self.files: list[dict[str, t.Any]] = []
        target = p["target"]
        # a new or original VM gets the format its hypervisor takes (qcow2 for libvirt, flat images for VMware)
        fmt = p["format"] if target == "image" else getattr(self.provider, "restore_format", "qcow2")
        remote = target != "image" and self.provider.restore_location == "remote"
        self._check_restore_options(target)
        if target == "original":
            paths, formats = self._plan_original(names, remote)
        else:
            if not p["dest"] or not os.path.isdir(p["dest"]):
                raise InvalidArgument(f"dest must be an existing directory for target: {target}, got {p['dest']!r}.")
            if target == "new_vm" and not p["new_vm_name"]:
                raise InvalidArgument("target: new_vm needs new_vm_name, the name of the VM to create.")
            if target == "new_vm" and self.repo.encryption == "none":
                # the stored definition becomes a VM on this host: in an unencrypted repository nothing authenticates
                # it, so whoever can write the repository could plant devices, emulator paths or QEMU arguments
                raise InvalidArgument(
                    f"Backup {self.record.id} is in an unencrypted repository, whose VM definitions are not "
                    "authenticated: target: new_vm would define whatever the repository holds. Restore to image "
                    "files (target: image) and define the VM yourself, or keep backups in an encrypted repository.")
            # names from a manifest (and new_vm_name) are made safe path components: never a separator or '..'
            stem = path_component(p["new_vm_name"] if target == "new_vm" else self.record.vm_name)
            paths = {n: os.path.join(p["dest"], f"{stem}-{path_component(n)}-{self.record.id}.{EXTENSIONS[fmt]}")
                     for n in names}
        defined = target == "new_vm" and self._defined_already(paths)
        if defined:
            # The VM an earlier run made, on these files: they are its disks now (a running guest writes to them),
            # so there is nothing to restore and no digest to compare.
            done = set(names)
        else:
            done = self._already_restored(paths, fmt) if target != "original" else set()
        for name in names:
            disk = self.record.disk(name)
            disk_fmt = formats.get(name, fmt) if target == "original" else fmt
            entry = {"disk": name, "path": paths[name], "format": disk_fmt if disk_fmt in QEMU_FORMATS else "raw",
                     "size": disk.size, "digest": disk.content_digest, "restored": name not in done}
            self.files.append(entry)
            if name not in done and target == "original" and remote:
                self._local[name] = os.path.join(p["dest"] or self._scratch(), f".{os.path.basename(paths[name])}.raw")
                changes.step(f"restore disk {name} of {self.record.id} to {self._local[name]} (raw, to upload)",
                             lambda e=dict(entry, path=self._local[name]): self._restore_disk(e))
            elif name not in done:
                changes.step(f"restore disk {name} of {self.record.id} to {paths[name]} ({fmt})",
                             lambda e=entry: self._restore_disk(e))
        if target == "original" and remote:
            changes.step(f"upload the restored disks of VM '{self.vm.name}' to {', '.join(paths.values())}, switch the "
                         f"VM to them and delete its old disks", self._replace_remote)
        elif target == "original":
            # Checked first, before any disk is touched.
            changes.steps.insert(0, Step(f"check VM '{self.vm.name}' is shut off and drop its backup checkpoints",
                                         lambda: self.provider.prepare_restore_in_place(self.vm)))
        if target == "new_vm" and not defined:
            changes.step(f"define VM '{p['new_vm_name']}' from the backup's definition"
                         f"{' and start it' if p['start'] else ''}", self._define)

    def _already_restored(self, paths: dict[str, str], fmt: str) -> set[str]:
        """Disks whose file exists and holds exactly the backup's disk (same size and content digest).

        A second identical run then changes nothing; a file holding anything else is never overwritten.
        Raises InvalidArgument for such a file.
        """
        done = set()
        for name, path in paths.items():
            if not os.path.exists(path):
                continue
            disk = self.record.disk(name)
            try:
                size, digest = image_digest(self.host, path, QEMU_FORMATS[fmt], disk.chunk_size, disk.segment_chunks,
                                            self._scratch())
            except VmsafeError as exc:
                raise InvalidArgument(f"Refusing to overwrite {path}: it exists and could not be read as a {fmt} "
                                      f"image ({exc}). Remove it or choose another dest.") from exc
            if size != disk.size or digest != disk.content_digest:
                raise InvalidArgument(f"Refusing to overwrite {path}: it exists and does not hold disk {name} of backup "
                                      f"{self.record.id} (content digest {digest[:16]}..., the backup's "
                                      f"{disk.content_digest[:16]}...). Remove it or choose another dest.")
            done.add(name)
        return done

    def _plan_original(self, names: list[str], remote: bool) -> tuple[dict[str, str], dict[str, str]]:
        """Checks for target: original; return (disk -> where it is written, disk -> format to keep).

        Raises InvalidArgument without force, for a VM that is not shut off, or that lacks a disk of the backup.
        """
        p = self.params
        formats: dict[str, str] = {}
        if not p["force"]:
            raise InvalidArgument("target: original replaces the VM's disks with the backup's: set force: true to "
                                  "confirm, or restore to a new VM (target: new_vm) or to image files first.")
        self.vm = self.provider.find_vm(VmSelector(name=p["vm_name"] or self.record.vm_name))
        if self.vm.state != "shutoff":
            # checked here too, so check mode says it; the provider checks again right before the switch
            raise InvalidArgument(
                f"Failed to restore over VM '{self.vm.name}' on {self.provider.name} host {self.provider.host}: it "
                f"is {self.vm.state}. target: original replaces its disks and needs it shut off: shut it off "
                f"(shut down the guest), then run again; or restore to a new VM (target: new_vm).")
        current = self.provider.vm_disks(self.vm)
        missing = [n for n in names if n not in current]
        if missing:
            raise InvalidArgument(f"VM '{self.vm.name}' has no disk {', '.join(missing)} any more; restore to a new "
                                  f"VM instead.")
        if remote:
            if p["dest"] and not os.path.isdir(p["dest"]):
                raise InvalidArgument(f"dest must be an existing directory (for the local images uploaded to the "
                                      f"host), got {p['dest']!r}.")
            # the new images on the host; local raw images are written first (in dest, else a scratch folder)
            self.provider.prepare_restore_in_place(self.vm)
            paths = self.provider.restore_paths(self.vm, names, secrets.token_hex(4))
        else:
            paths = {n: current[n] for n in names}
            # Each disk keeps its own format (a raw file or a block device stays raw).
            formats = getattr(self.provider, "vm_disk_formats", lambda _vm: {})(self.vm)
        return paths, formats

    def _check_restore_options(self, target: str) -> None:
        """Refuse options the provider cannot honour (keep_mac_addresses) before anything is done."""
        if target == "new_vm" and self.params["keep_mac_addresses"] \
                and "keep_macs" not in self.provider.restore_options:
            raise InvalidArgument(f"keep_mac_addresses is not supported on {self.provider.name}: the new VM always gets "
                                  f"new MAC addresses there.")

    def _defined_already(self, paths: dict[str, str]) -> bool:
        """Whether the VM of target: new_vm exists already, on exactly these restored files.

        On VMware and Hyper-V the VM's disks are on the host: the VM is the one an earlier run made when it records
        being restored from this very backup (its annotation or notes).
        """
        try:
            vm = self.provider.find_vm(VmSelector(name=self.params["new_vm_name"]))
        except VmsafeError:
            return False
        if self.provider.restore_location == "remote":
            made_from = self.provider.restored_from(vm)
            if made_from != self.record.id:
                raise InvalidArgument(f"A VM named '{vm.name}' exists already on {self.provider.name} host "
                                      f"{self.provider.host}" + (f" (restored from backup {made_from})" if made_from
                                                                 else "") + "; choose another new_vm_name.")
            self.vm = vm
            return True
        if sorted(self.provider.vm_disks(vm).values()) != sorted(paths.values()):
            raise InvalidArgument(f"A VM named '{vm.name}' exists already and does not use the restored files "
                                  f"{', '.join(sorted(paths.values()))}; choose another new_vm_name.")
        self.vm = vm
        return True

    @property
    def host(self) -> KvmHost:
        """This machine, for qemu-img and qemu-nbd (through the module's run_command)."""
        if self._host is None:
            self._host = KvmHost("qemu:///system", self.module.run_command)
        return self._host

    def _scratch(self) -> str:
        if self._scratch_dir is None:
            self._scratch_dir = tempfile.mkdtemp(prefix="vmsafe-restore-")
        return self._scratch_dir

    def _restore_disk(self, entry: dict[str, t.Any]) -> None:
        final = entry["path"]
        try:
            if entry["format"] == "raw" and os.path.exists(final) and stat.S_ISBLK(os.stat(final).st_mode):
                self.repo.restore(self.record.id, entry["disk"], final)  # a block device (LVM): written in place
                return
            if entry["format"] == "raw":
                tmp = final + ".vmsafe-restore"
                self.repo.restore(self.record.id, entry["disk"], tmp, sparse=True)
                os.replace(tmp, final)
                return
            disk = self.record.disk(entry["disk"])
            on_device = os.path.exists(final) and stat.S_ISBLK(os.stat(final).st_mode)
            if entry["format"] == "qcow2" and qcow2.supported(disk.chunk_size, disk.size) and not on_device:
                # the engine writes the qcow2 image itself: data clusters in disk order, zero chunks left out,
                # metadata last; written to a partial file and renamed over the final name when complete
                restore_unit.restore(self.repo, self.record.id, entry["disk"], final,
                                     layout=qcow2.Qcow2Layout(disk.size, disk.chunk_size))
                return
            raw = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.vmsafe-raw")
            self.repo.restore(self.record.id, entry["disk"], raw, sparse=True)
        except backup_errors.BackupError as exc:
            raise wrap(exc, self.params["repository"]) from exc
        # an unpredictable name (qemu-img would follow a link planted at a fixed one), and 0600 before the file
        # gets its final name (qemu-img creates it with the umask's 0644)
        partial = f"{final}.vmsafe-partial-{secrets.token_hex(6)}"
        try:
            self.host.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", QEMU_FORMATS[entry["format"]], raw, partial],
                          self.params["timeout"], f"convert disk {entry['disk']} to {entry['format']}")
            os.chmod(partial, 0o600)
            os.replace(partial, final)
        except OperationTimeout as exc:
            raise OperationTimeout(f"Timed out after {self.params['timeout']} s converting disk {entry['disk']} to "
                                   f"{entry['format']}; nothing was left under {final}.") from exc
        finally:
            for path in (raw, partial):
                if os.path.exists(path):
                    os.unlink(path)

    def _define(self) -> None:
        p = self.params
        disk_files = {f["disk"]: (f["path"], f["format"]) for f in self.files}
        options = {"keep_macs": p["keep_mac_addresses"], "backup_id": self.record.id}
        self.vm = self.provider.define_restored_vm(
            self.record.vm_definition, p["new_vm_name"], disk_files, p["start"],
            **{k: v for k, v in options.items() if k in self.provider.restore_options})

    def _replace_remote(self) -> None:
        """Upload the local images to new files on the host and switch the VM to them (VMware, Hyper-V)."""
        try:
            self.provider.restore_over_vm(self.vm, dict(self._local), {f["disk"]: f["path"] for f in self.files},
                                          self.params["timeout"])
        finally:
            for path in self._local.values():
                if os.path.exists(path):
                    os.unlink(path)
        self.vm = self.provider.find_vm(VmSelector(id=self.vm.id))

    def cleanup(self) -> None:
        if self.repo is not None:
            self.repo.close()
        if self._scratch_dir is not None:
            for entry in os.listdir(self._scratch_dir):
                os.unlink(os.path.join(self._scratch_dir, entry))
            os.rmdir(self._scratch_dir)

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        result: dict[str, t.Any] = {"backup_id": self.record.id, "files": self.files, "plan": changes.plan}
        if self.vm is not None:
            result["vm"] = self.vm.to_dict()
        elif self.params["target"] == "new_vm":  # check mode: the VM that would be made (no id yet)
            result["vm"] = {"id": "", "name": self.params["new_vm_name"], "host": self.provider.host,
                            "state": "running" if self.params["start"] else "shutoff"}
        return result


def main() -> None:
    spec = connection_spec().merge(repository_spec()).update_argspec(
        backup_id={"type": "str"},
        vm_name={"type": "str"},
        target={"type": "str", "default": "image", "choices": ["image", "new_vm", "original"]},
        dest={"type": "path"},
        format={"type": "str", "default": "qcow2", "choices": ["raw", "qcow2", "vmdk", "vhdx"]},
        disks={"type": "list", "elements": "str"},
        new_vm_name={"type": "str"},
        start={"type": "bool", "default": False},
        force={"type": "bool", "default": False},
        keep_mac_addresses={"type": "bool", "default": False},
        timeout={"type": "int", "default": 21600},
    ).update(required_one_of=[["backup_id", "vm_name"]])
    run_module(spec, RestoreTask)


if __name__ == "__main__":
    main()
