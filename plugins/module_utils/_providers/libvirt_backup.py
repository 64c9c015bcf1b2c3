# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""libvirt backups: a checkpoint per backup, an NBD export of each disk, and only the dirty extents.

A running VM (pull mode):
  1. ``backupBegin`` in pull mode with a new checkpoint (``vmsafe-<time>``), and, for an incremental,
     ``<incremental>`` naming the checkpoint of the previous backup. QEMU then exports each disk frozen at
     that instant over a Unix socket, plus a dirty bitmap of what changed since the previous checkpoint.
  2. We read over NBD only the allocated extents (full) or the dirty extents (incremental).
  3. ``abortJob`` ends a pull-mode job (that is the normal end). On failure the new checkpoint is deleted
     too, so the previous one stays the base of the next incremental.
  4. After success, older vmsafe checkpoints are deleted: only the one the next incremental needs remains.

A shut-off VM (no QEMU runs, and libvirt 9 makes no checkpoint of an inactive domain): the new checkpoint's
persistent bitmap is added to each qcow2 image with ``qemu-img bitmap`` and its record redefined in libvirt, then
each image is exported read-only by ``qemu-nbd`` (with ``--bitmap`` of the previous checkpoint for an incremental).
qemu-nbd's image lock keeps the VM from starting while it reads. The checkpoint is an ordinary libvirt checkpoint:
the next backup, running or not, builds on it.

Disks without a bitmap (raw files, LVM and other block devices) are backed up whole every time: a full backup
reads their data extents; inside an incremental (the VM's qcow2 disks have a base) they are given whole, holes
as zeros, so nothing of the parent backup's copy of them survives.

On a remote host (qemu+ssh://) every command and socket goes through the URI's SSH login (libvirt_host.KvmHost).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
import threading
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.vmsafe.protect.plugins.module_utils import _nbd
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import libvirt_image
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    Busy,
    ProviderError,
    QuiesceFailed,
    UnsupportedOperation,
)

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt_host import KvmHost

try:
    import libvirt
except ImportError:
    libvirt = None

CHECKPOINT_PREFIX = "vmsafe-"
OWNER_FILE = "owner.json"
SOCKET_DIR = "/run/vmsafe"
READ_CHUNK = 4 * 1024 * 1024
_ZEROS = memoryview(bytes(READ_CHUNK))
SHUTOFF_SHUTDOWN = 1  # VIR_DOMAIN_SHUTOFF_SHUTDOWN: the guest (or QEMU on request) shut down normally


@dataclasses.dataclass
class BackupDisk:
    """One disk of the VM as the backup sees it."""

    target: str
    path: str  # image file or block device on the KVM host
    fmt: str  # libvirt's driver type: qcow2, raw, ...
    kind: str  # file or block

    @property
    def tracks_changes(self) -> bool:
        """Only qcow2 images hold the persistent dirty bitmaps that checkpoints are made of."""
        return self.fmt == "qcow2"


def _zeros(start: int, end: int) -> t.Iterator[tuple[int, int, memoryview]]:
    while start < end:
        n = min(len(_ZEROS), end - start)
        yield start, n, _ZEROS[:n]
        start += n


@dataclasses.dataclass
class DiskExport:
    """One disk as the backup job exports it."""

    target: str
    size: int
    path: str
    incremental: bool
    client: t.Any = None
    on_read: t.Callable[[], None] | None = None  # called once every extent was read
    read: bool = False
    bitmap_context: str = ""  # the dirty bitmap's NBD context for an incremental (default: libvirt's name)
    whole: bool = False  # every byte, holes as zeros: a disk without change tracking inside an incremental

    def extents(self) -> t.Iterator[tuple[int, int, t.Any]]:
        """Yield (offset, length, data) of what must be stored: dirty extents, or all data for a full."""
        if self.incremental:
            ranges = _nbd.dirty_extents(self.client, self.size,
                                        self.bitmap_context or f"qemu:dirty-bitmap:backup-{self.target}")
        else:
            ranges = _nbd.allocated_extents(self.client, self.size)
        # The engine reads whole chunks from each range straight into its buffers (NbdRange.readinto_many: one
        # request per READ_BATCH chunks), in its read-ahead thread, while its other threads work on earlier data.
        pos = 0
        for offset, length in ranges:
            if self.whole:
                yield from _zeros(pos, offset)
                pos = offset + length
            yield offset, length, _nbd.NbdRange(self.client, offset)
        if self.whole:
            yield from _zeros(pos, self.size)
        self.read = True
        if self.on_read is not None:
            self.on_read()


@dataclasses.dataclass
class BackupSession:
    """An open pull-mode backup job; close() ends it and cleans up."""

    dom: t.Any
    vm: VmRef
    checkpoint: str
    since: str | None
    consistency: str
    vm_definition: str
    disks: list[DiskExport]
    socket_path: str
    scratch_dir: str
    warn: t.Callable[[str], None]  # the module's warnings, for what close() could not clean up
    scratch_files: list[str] = dataclasses.field(default_factory=list)
    done: bool = False
    ender: threading.Thread | None = None
    kvm: KvmHost | None = None  # the KVM host when it is not this machine (files and sockets are there)
    exports: list[t.Any] = dataclasses.field(default_factory=list)  # qemu-nbd exports of a shut-off VM
    images: list[str] = dataclasses.field(default_factory=list)  # images holding the checkpoints' bitmaps
    forwards: list[str] = dataclasses.field(default_factory=list)  # local ends of forwarded NBD sockets

    def disk_read(self) -> None:
        """Once every disk is read, end the export in a thread: it overlaps with the engine's commit (fsync)."""
        if self.ender is None and all(disk.read for disk in self.disks):
            self.ender = threading.Thread(target=self._end_job, name="vmsafe-end-job", daemon=True)
            self.ender.start()

    def _end_job(self) -> None:
        for disk in self.disks:
            if disk.client is not None:
                try:
                    disk.client.close()
                except (OSError, _nbd.NbdError):
                    pass
        for export in self.exports:
            export.close()
        if self.exports:
            return  # a shut-off VM: no libvirt job
        for local in self.forwards:
            try:
                t.cast("KvmHost", self.kvm).drop_socket(local)
            except ProviderError:
                pass
        self.forwards = []
        try:
            running = self.dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
        except libvirt.libvirtError:
            return
        if running:
            self.abort()

    def abort(self) -> None:
        """Stop the job from another thread (timeout): QEMU drops the export, so pending reads fail at once."""
        if self.exports:
            for disk in self.disks:
                if disk.client is not None:
                    try:
                        disk.client.close()
                    except (OSError, _nbd.NbdError):
                        pass
            return
        try:
            self.dom.abortJob()
        except libvirt.libvirtError:
            pass

    def close(self, success: bool) -> None:
        """End the job; on failure also drop the new checkpoint so the old base stays valid.

        Runs once: a second call (the module's cleanup after a failure elsewhere) must not drop the checkpoint of a
        backup that was committed. Removing our files never fails the backup: libvirt ends the job after abortJob
        returns and removes the NBD socket itself, while we list the folder.
        """
        if self.done:
            return
        self.done = True
        if self.ender is not None:
            self.ender.join()
        else:
            self._end_job()
        if not success:
            if self.checkpoint:
                delete_checkpoint(self.dom, self.checkpoint, self.images, self.kvm, lambda _msg: None)
        else:
            for name in checkpoint_names(self.dom):
                if name.startswith(CHECKPOINT_PREFIX) and name != self.checkpoint:
                    delete_checkpoint(self.dom, name, self.images, self.kvm, self.warn)
        if self.kvm is not None and self.kvm.remote:
            try:
                self.kvm.remove(self.scratch_files, self.scratch_dir)
            except OSError as exc:
                self.warn(f"Could not remove the backup job's folder {self.scratch_dir}: {exc}")
            return
        for path in self.scratch_files:
            _remove_file(path)
        try:
            _remove_tree(self.scratch_dir)
        except OSError as exc:
            self.warn(f"Could not remove the backup job's folder {self.scratch_dir}: {exc}")


def delete_checkpoint(dom: t.Any, name: str, images: list[str], kvm: KvmHost | None,
                      warn: t.Callable[[str], None]) -> None:
    """Delete a checkpoint with its bitmaps: through libvirt while the VM runs, else its record and then each
    image's bitmap with qemu-img (libvirt 9 deletes no checkpoint of an inactive domain)."""
    try:
        if dom.isActive():
            dom.checkpointLookupByName(name, 0).delete(0)
            return
        dom.checkpointLookupByName(name, 0).delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    except libvirt.libvirtError as exc:
        warn(f"Could not delete old checkpoint {name}: {exc}")
        return
    for image in images if kvm is not None else []:
        rc, _out, err = kvm.try_run(["qemu-img", "bitmap", "--remove", image, name], 60)
        if rc != 0 and "not found" not in err.lower():
            warn(f"Could not remove bitmap {name} from {image} ({err.strip()}); it only costs space: remove it "
                 f"with 'qemu-img bitmap --remove {image} {name}' while the VM is shut off.")


def _remove_file(path: str) -> None:
    """Unlink a file that libvirt may be removing at the same moment (a scratch file, the NBD socket)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_tree(path: str) -> None:
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return
    for entry in entries:
        _remove_file(os.path.join(path, entry))
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def recover_abandoned(dom: t.Any, vm: VmRef, warn: t.Callable[[str], None], kvm: KvmHost | None = None) -> bool:
    """End a pull-mode backup job whose vmsafe process is gone; return True when one was ended.

    A killed vm_backup leaves QEMU exporting the disks, and every later job would wait for the state-change lock.
    The job's NBD socket sits in a folder of ours with an owner file: a dead owner pid means the job is abandoned.
    On a remote host the owner file names the controller that ran it: only that controller can tell.
    """
    try:
        root = ET.fromstring(dom.backupGetXMLDesc(0))
    except libvirt.libvirtError:
        return False  # not a backup job
    server = root.find("server")
    sock = server.get("socket", "") if server is not None else ""
    if not sock.startswith(SOCKET_DIR + "/"):
        return False  # not ours
    folder = os.path.dirname(sock)
    remote = kvm is not None and kvm.remote
    if remote:
        owner = t.cast("KvmHost", kvm).read_json(os.path.join(folder, OWNER_FILE)) or {}
        alive = t.cast("KvmHost", kvm).process_alive(owner) if owner else False
        if alive is not False:
            return False  # the owner still runs, or ran on another controller: treat it as a real backup
    else:
        try:
            with open(os.path.join(folder, OWNER_FILE), encoding="utf-8") as handle:
                owner = json.load(handle)
            os.kill(int(owner["pid"]), 0)
            return False  # the owner still runs: a real concurrent backup
        except ProcessLookupError:
            pass
        except (OSError, ValueError, KeyError):
            owner = {}
    try:
        dom.abortJob()
    except libvirt.libvirtError:
        return False
    try:
        if remote:
            t.cast("KvmHost", kvm).remove(list(owner.get("scratch", [])), folder)
        else:
            for path in owner.get("scratch", []):
                _remove_file(path)
            _remove_tree(folder)
    except OSError as exc:
        warn(f"Could not remove the abandoned backup job's folder {folder}: {exc}")
    if owner.get("checkpoint"):
        try:
            # Its backup never reached the repository; the previous checkpoint stays the base.
            dom.checkpointLookupByName(owner["checkpoint"], 0).delete(0)
        except libvirt.libvirtError:
            pass
    warn(f"Ended an abandoned backup job of VM '{vm.name}' (its vm_backup process {owner.get('pid', '?')} is gone) "
         f"and removed its checkpoint; the repository was not changed by it.")
    return True


def checkpoint_names(dom: t.Any) -> list[str]:
    """The VM's checkpoints, oldest first."""
    try:
        cps = dom.listAllCheckpoints(0)
    except libvirt.libvirtError:
        return []
    dated = []
    for cp in cps:
        try:
            root = ET.fromstring(cp.getXMLDesc(0))
        except libvirt.libvirtError:
            # deleted since the listing: vm_backup ends an abandoned job (and drops its checkpoint) in one thread
            # while it reads the last backup's base in another
            continue
        dated.append((int(root.findtext("creationTime") or 0), cp.getName()))
    return [name for _when, name in sorted(dated)]


def guess_last(dom: t.Any) -> dict[str, t.Any] | None:
    """What the repository's last backup of this VM most likely recorded: the newest vmsafe checkpoint and the disks'
    sizes now (vm_backup's ``last_info``), or None without a vmsafe checkpoint.

    vm_backup starts the export from this guess while the repository key is still being unlocked, and keeps it only
    when the repository's real record gives the same base.
    """
    names = [name for name in checkpoint_names(dom) if name.startswith(CHECKPOINT_PREFIX)]
    if not names:
        return None
    sizes = {}
    for disk in backup_disks(dom):
        try:
            sizes[disk.target] = dom.blockInfo(disk.target)[0]
        except libvirt.libvirtError:
            return None
    return {"checkpoint": names[-1], "disks": sizes}


def backup_disks(dom: t.Any, warn: t.Callable[[str], None] | None = None) -> list[BackupDisk]:
    """The disks a backup covers: image files and block devices (LVM, ...), of any format.

    CD-ROMs and read-only disks are skipped; so are network disks (RBD, iSCSI, ...), with a warning when ``warn``
    is given: they are not read by this collection yet.
    """
    found = []
    for node in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk"):
        target, source, driver = node.find("target"), node.find("source"), node.find("driver")
        if node.get("device", "disk") != "disk" or node.find("readonly") is not None or target is None:
            continue
        kind = node.get("type", "file")
        path = (source.get("file") if kind == "file" else source.get("dev")) if source is not None else None
        if kind not in ("file", "block") or not path:
            if warn is not None:
                warn(f"Disk {target.get('dev', '?')} ({kind}) is not backed up: vmsafe backs up image files and "
                     f"block devices only.")
            continue
        found.append(BackupDisk(target=target.get("dev", ""), path=path, kind=kind,
                                fmt=driver.get("type", "raw") if driver is not None else "raw"))
    return found


def disk_targets(dom: t.Any) -> list[tuple[str, str, str]]:
    """(target, source file or device, format) of every disk a backup covers (see backup_disks)."""
    return [(d.target, d.path, d.fmt) for d in backup_disks(dom)]


def shutoff_consistency(dom: t.Any) -> tuple[str, str]:
    """(consistency, why) of a shut-off VM's disks, from libvirt's reason for its state."""
    reason = dom.state()[1]
    if reason == SHUTOFF_SHUTDOWN:
        return "shutdown", "the VM was shut down normally"
    names = {0: "for an unknown reason", 2: "by a forced power-off (destroy)", 3: "by a crash", 4: "by a save",
             5: "after a failure", 6: "by a snapshot revert", 7: "while libvirtd was down"}
    return "crash_consistent", f"the VM was stopped {names.get(reason, f'for reason {reason}')}"


def begin(dom: t.Any, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str,
          warn: t.Callable[[str], None], kvm: KvmHost | None = None) -> BackupSession:
    """Start a backup: a pull-mode job of a running VM, or qemu-nbd exports of a shut-off one's images.

    Raises Busy/UnsupportedOperation/QuiesceFailed/ProviderError.
    """
    if libvirt is None:
        raise ProviderError("The libvirt-python package is not installed: pip install libvirt-python.")
    disks = backup_disks(dom, warn)
    if not disks:
        raise UnsupportedOperation(f"VM '{vm.name}' has no disk to back up (image files and block devices are).")
    if kvm is not None:
        kvm.require(f"back up VM '{vm.name}'")
    if not dom.isActive():
        return begin_offline(dom, vm, since, disks, quiesce, quiesce_fallback, warn, t.cast("KvmHost", kvm))
    return begin_online(dom, vm, since, disks, quiesce, quiesce_fallback, warn, kvm)


def _new_checkpoint_name() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return f"{CHECKPOINT_PREFIX}{now:%Y%m%dT%H%M%S%f}Z"


def begin_online(dom: t.Any, vm: VmRef, since: str | None, disks: list[BackupDisk], quiesce: bool,
                 quiesce_fallback: str, warn: t.Callable[[str], None], kvm: KvmHost | None) -> BackupSession:
    """Start a pull-mode backup job of a running VM."""
    remote = kvm is not None and kvm.remote
    if dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        recover_abandoned(dom, vm, warn, kvm)
    if dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        raise Busy(f"VM '{vm.name}' has a job in progress (another backup, a migration or a save). Wait for it to "
                   f"finish, or abort it with 'virsh domjobabort {vm.name}', then retry.")
    tracked = [d for d in disks if d.tracks_changes]
    checkpoint = _new_checkpoint_name() if tracked else ""
    if remote:
        scratch_dir = t.cast("KvmHost", kvm).make_dir(SOCKET_DIR, f"backup-{vm.id[:8]}-")
    else:
        os.makedirs(SOCKET_DIR, mode=0o700, exist_ok=True)
        scratch_dir = tempfile.mkdtemp(prefix=f"backup-{vm.id[:8]}-", dir=SOCKET_DIR)
    socket_path = os.path.join(scratch_dir, "nbd.sock")

    backup = ET.Element("domainbackup", mode="pull")
    if since:
        ET.SubElement(backup, "incremental").text = since
    ET.SubElement(backup, "server", transport="unix", socket=socket_path)
    bdisks = ET.SubElement(backup, "disks")
    cp = ET.Element("domaincheckpoint")
    ET.SubElement(cp, "name").text = checkpoint
    ET.SubElement(cp, "description").text = "vmsafe.protect backup base; deleted by the next vm_backup"
    cdisks = ET.SubElement(cp, "disks")
    scratch_files: list[str] = []
    scratch_home = next((os.path.dirname(d.path) for d in disks if d.kind == "file"), "/var/tmp")
    for disk in disks:
        attrs = {"name": disk.target, "backup": "yes", "type": "file"}
        if since and not disk.tracks_changes:
            attrs["backupmode"] = "full"  # no bitmap to build on: this disk is read whole every time
        node = ET.SubElement(bdisks, "disk", **attrs)
        # The scratch file holds old data QEMU copies before the guest overwrites it during the backup: keep it
        # on the disk's own storage, not on /run (tmpfs, RAM). A block device's goes beside the VM's first image
        # file, or in /var/tmp (disk-backed by convention).
        scratch = os.path.join(os.path.dirname(disk.path) if disk.kind == "file" else scratch_home,
                               f".vmsafe-scratch-{disk.target}-{checkpoint or vm.id[:8]}")
        scratch_files.append(scratch)
        ET.SubElement(node, "scratch", file=scratch)
        ET.SubElement(cdisks, "disk", name=disk.target, checkpoint="bitmap" if disk.tracks_changes else "no")

    consistency = "crash_consistent"
    frozen = False
    warnings: list[str] = []
    if quiesce:
        try:
            dom.fsFreeze(None, 0)
            frozen = True
            consistency = "quiesced"
        except libvirt.libvirtError as exc:
            reason = exc.get_error_message()
            if quiesce_fallback == "fail":
                _drop_dir(kvm, scratch_dir)
                raise QuiesceFailed(
                    f"Failed to quiesce VM '{vm.name}' for the backup: {reason}. Nothing was backed up. Install and "
                    f"start qemu-guest-agent in the guest, or set quiesce_fallback: crash_consistent.") from exc
            warnings.append(f"Could not quiesce VM '{vm.name}' ({reason}); the backup is crash-consistent because "
                            f"quiesce_fallback is crash_consistent.")
    try:
        dom.backupBegin(ET.tostring(backup, encoding="unicode"),
                        ET.tostring(cp, encoding="unicode") if checkpoint else None, 0)
    except libvirt.libvirtError as exc:
        _drop_dir(kvm, scratch_dir)
        raise ProviderError(f"Failed to start the backup of VM '{vm.name}': {exc.get_error_message()}") from exc
    finally:
        if frozen:
            try:
                dom.fsThaw(None, 0)
            except libvirt.libvirtError as exc:
                warnings.append(f"Thawing VM '{vm.name}' failed: {exc.get_error_message()}; check the guest.")
    for warning in warnings:
        warn(warning)
    definition = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    session = BackupSession(dom=dom, vm=vm, checkpoint=checkpoint, since=since, consistency=consistency,
                            vm_definition=definition, disks=[], socket_path=socket_path, scratch_dir=scratch_dir,
                            scratch_files=scratch_files, warn=warn, kvm=kvm if remote else None,
                            images=[d.path for d in tracked])
    try:
        # Who owns this job: a later run finds it here if this process dies (kill -9, a lost controller).
        owner = {"pid": os.getpid(), "checkpoint": checkpoint, "scratch": scratch_files}
        if remote:
            t.cast("KvmHost", kvm).write_json(os.path.join(scratch_dir, OWNER_FILE), t.cast("KvmHost", kvm).owner_record(
                checkpoint=checkpoint, scratch=scratch_files))
        else:
            with open(os.path.join(scratch_dir, OWNER_FILE), "w", encoding="utf-8") as handle:
                json.dump(owner, handle)
        reach = t.cast("KvmHost", kvm).local_socket(socket_path) if remote else socket_path
        session.forwards = [reach] if remote else []
        for disk in disks:
            incremental = bool(since) and disk.tracks_changes
            contexts = [f"qemu:dirty-bitmap:backup-{disk.target}"] if incremental else ["base:allocation"]
            client = _nbd.NbdClient.connect_unix(reach, disk.target, contexts=contexts)
            session.disks.append(DiskExport(target=disk.target, size=client.size, path=disk.path,
                                            incremental=incremental, whole=bool(since) and not incremental,
                                            client=client, on_read=session.disk_read))
    except (OSError, _nbd.NbdError, ProviderError) as exc:
        session.close(success=False)
        raise ProviderError(f"Failed to read the backup export of VM '{vm.name}': {exc}") from exc
    return session


def _drop_dir(kvm: KvmHost | None, folder: str) -> None:
    if kvm is not None and kvm.remote:
        try:
            kvm.remove([], folder)
        except OSError:
            pass
    else:
        _remove_tree(folder)


def begin_offline(dom: t.Any, vm: VmRef, since: str | None, disks: list[BackupDisk], quiesce: bool,
                  quiesce_fallback: str, warn: t.Callable[[str], None], kvm: KvmHost) -> BackupSession:
    """Back up a shut-off VM from its image files: qemu-nbd exports, read-only, on the KVM host."""
    consistency, why = shutoff_consistency(dom)
    if quiesce and consistency != "shutdown":
        message = (f"VM '{vm.name}' is shut off and {why}: its disks are crash-consistent and there is no guest to "
                   f"quiesce.")
        if quiesce_fallback == "fail":
            raise QuiesceFailed(f"Failed to quiesce VM '{vm.name}' for the backup: {message} Nothing was backed up. "
                                f"Shut the guest down normally (or start it), or set quiesce_fallback: "
                                f"crash_consistent.")
        warn(f"{message} The backup is crash-consistent because quiesce_fallback is crash_consistent.")
    tracked = [d for d in disks if d.tracks_changes]
    checkpoint = _new_checkpoint_name() if tracked else ""
    folder = kvm.make_dir(SOCKET_DIR, f"backup-{vm.id[:8]}-")
    definition = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    session = BackupSession(dom=dom, vm=vm, checkpoint="", since=since, consistency=consistency,
                            vm_definition=definition, disks=[], socket_path="", scratch_dir=folder, warn=warn,
                            kvm=kvm, images=[d.path for d in tracked])
    try:
        if checkpoint:
            _add_offline_checkpoint(dom, vm, checkpoint, disks, kvm)
            session.checkpoint = checkpoint
        for disk in disks:
            incremental = bool(since) and disk.tracks_changes
            context = f"qemu:dirty-bitmap:{since}" if incremental else _nbd.BASE_ALLOCATION
            export = libvirt_image.export(kvm, disk.path, disk.fmt, folder, disk.target, [context],
                                          bitmap=since if incremental else None)
            session.exports.append(export)
            session.disks.append(DiskExport(target=disk.target, size=export.client.size, path=disk.path,
                                            incremental=incremental, whole=bool(since) and not incremental,
                                            client=export.client, on_read=session.disk_read, bitmap_context=context))
        # Started meanwhile? Then the images changed under the new checkpoint: do not pretend otherwise.
        if dom.isActive():
            raise Busy(f"VM '{vm.name}' was started while its shut-off backup began; run the backup again (it then "
                       f"backs up the running VM).")
    except BaseException:
        session.close(success=False)
        raise
    return session


def _add_offline_checkpoint(dom: t.Any, vm: VmRef, checkpoint: str, disks: list[BackupDisk], kvm: KvmHost) -> None:
    """Make a checkpoint of a shut-off VM: a persistent bitmap in each qcow2 image, then libvirt's record of it."""
    added: list[str] = []
    try:
        for disk in disks:
            if disk.tracks_changes:
                kvm.run(["qemu-img", "bitmap", "--add", disk.path, checkpoint], 60,
                        f"add the backup's dirty bitmap to {disk.path} of VM '{vm.name}'")
                added.append(disk.path)
        cp = ET.Element("domaincheckpoint")
        ET.SubElement(cp, "name").text = checkpoint
        ET.SubElement(cp, "description").text = "vmsafe.protect backup base; deleted by the next vm_backup"
        ET.SubElement(cp, "creationTime").text = str(int(datetime.datetime.now(datetime.timezone.utc).timestamp()))
        cdisks = ET.SubElement(cp, "disks")
        for disk in disks:
            attrs = {"checkpoint": "bitmap", "bitmap": checkpoint} if disk.tracks_changes else {"checkpoint": "no"}
            ET.SubElement(cdisks, "disk", name=disk.target, **attrs)
        try:
            dom.checkpointCreateXML(ET.tostring(cp, encoding="unicode"), libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE)
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to record checkpoint {checkpoint} of VM '{vm.name}': "
                                f"{exc.get_error_message()}") from exc
    except BaseException:
        for path in added:
            kvm.try_run(["qemu-img", "bitmap", "--remove", path, checkpoint], 60)
        raise
