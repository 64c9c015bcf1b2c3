# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""libvirt pull-mode backups: a checkpoint per backup, QEMU's NBD export, and only the dirty extents.

One backup run:
  1. ``backupBegin`` in pull mode with a new checkpoint (``vmsafe-<time>``), and, for an incremental,
     ``<incremental>`` naming the checkpoint of the previous backup. QEMU then exports each disk frozen at
     that instant over a Unix socket, plus a dirty bitmap of what changed since the previous checkpoint.
  2. We read over NBD only the allocated extents (full) or the dirty extents (incremental).
  3. ``abortJob`` ends a pull-mode job (that is the normal end). On failure the new checkpoint is deleted
     too, so the previous one stays the base of the next incremental.
  4. After success, older vmsafe checkpoints are deleted: only the one the next incremental needs remains.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import queue
import tempfile
import threading
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.vmsafe.protect.plugins.module_utils import _nbd
from ansible_collections.vmsafe.protect.plugins.module_utils._prefetch import prefetched
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    Busy,
    ProviderError,
    QuiesceFailed,
    UnsupportedOperation,
)

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef

try:
    import libvirt
except ImportError:
    libvirt = None

CHECKPOINT_PREFIX = "vmsafe-"
OWNER_FILE = "owner.json"
SOCKET_DIR = "/run/vmsafe"
READ_CHUNK = 4 * 1024 * 1024
READ_AHEAD = 2  # batches of READ_CHUNK bytes read ahead while the engine works
FIRST_READ = 256 * 1024  # the first batch, doubling up to READ_CHUNK: the engine starts sooner


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

    def extents(self) -> t.Iterator[tuple[int, int, bytes]]:
        """Yield (offset, length, data) of what must be stored: dirty extents, or all data for a full."""
        if self.incremental:
            ranges = _nbd.dirty_extents(self.client, self.size, f"qemu:dirty-bitmap:backup-{self.target}")
        else:
            ranges = _nbd.allocated_extents(self.client, self.size)
        # Each batch has its own buffer, read by a thread while the engine works on the previous ones; a batch
        # the engine has copied out goes back to the reader (by the time the next is asked for, it has).
        spare: queue.SimpleQueue = queue.SimpleQueue()
        for batch in prefetched(_nbd.read_extent_batches(self.client, ranges, chunk=READ_CHUNK, spare=spare,
                                                         first=FIRST_READ), depth=READ_AHEAD):
            yield from batch
            spare.put(batch[0][2].obj)
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
        try:
            running = self.dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
        except libvirt.libvirtError:
            return
        if running:
            self.abort()

    def abort(self) -> None:
        """Stop the job from another thread (timeout): QEMU drops the export, so pending reads fail at once."""
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
            try:
                self.dom.checkpointLookupByName(self.checkpoint, 0).delete(0)
            except libvirt.libvirtError:
                pass
        else:
            for name in checkpoint_names(self.dom):
                if name.startswith(CHECKPOINT_PREFIX) and name != self.checkpoint:
                    try:
                        self.dom.checkpointLookupByName(name, 0).delete(0)
                    except libvirt.libvirtError as exc:
                        self.warn(f"Could not delete old checkpoint {name}: {exc}")
        for path in self.scratch_files:
            _remove_file(path)
        try:
            _remove_tree(self.scratch_dir)
        except OSError as exc:
            self.warn(f"Could not remove the backup job's folder {self.scratch_dir}: {exc}")


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


def recover_abandoned(dom: t.Any, vm: VmRef, warn: t.Callable[[str], None]) -> bool:
    """End a pull-mode backup job whose vmsafe process is gone; return True when one was ended.

    A killed vm_backup leaves QEMU exporting the disks, and every later job would wait for the state-change lock.
    The job's NBD socket sits in a folder of ours with an owner file: a dead owner pid means the job is abandoned.
    """
    try:
        root = ET.fromstring(dom.backupGetXMLDesc(0))
    except libvirt.libvirtError:
        return False  # not a backup job
    server = root.find("server")
    sock = server.get("socket", "") if server is not None else ""
    if not sock.startswith(SOCKET_DIR + "/"):
        return False  # not ours
    owner_path = os.path.join(os.path.dirname(sock), OWNER_FILE)
    try:
        with open(owner_path, encoding="utf-8") as handle:
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
    for path in owner.get("scratch", []):
        _remove_file(path)
    try:
        _remove_tree(os.path.dirname(sock))
    except OSError as exc:
        warn(f"Could not remove the abandoned backup job's folder {os.path.dirname(sock)}: {exc}")
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
        root = ET.fromstring(cp.getXMLDesc(0))
        dated.append((int(root.findtext("creationTime") or 0), cp.getName()))
    return [name for _when, name in sorted(dated)]


def disk_targets(dom: t.Any) -> list[tuple[str, str, str]]:
    """(target, source file, format) of every file-backed disk (cdroms and read-only disks skipped)."""
    found = []
    for node in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk"):
        target, source, driver = node.find("target"), node.find("source"), node.find("driver")
        if node.get("device", "disk") != "disk" or node.find("readonly") is not None:
            continue
        if target is None or source is None or not source.get("file"):
            continue
        found.append((target.get("dev", ""), source.get("file", ""), driver.get("type", "raw") if driver is not None else "raw"))
    return found


def begin(dom: t.Any, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str,
          warn: t.Callable[[str], None]) -> BackupSession:
    """Start a pull-mode backup job; raise Busy/UnsupportedOperation/QuiesceFailed/ProviderError."""
    if libvirt is None:
        raise ProviderError("The libvirt-python package is not installed: pip install libvirt-python.")
    if not dom.isActive():
        raise UnsupportedOperation(
            f"Failed to back up VM '{vm.name}': it is shut off, and libvirt backs up running VMs only (QEMU serves "
            f"the disks and tracks the changes). Start it and run again; the guest may stay at its boot prompt.")
    if dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        recover_abandoned(dom, vm, warn)
    if dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        raise Busy(f"VM '{vm.name}' has a job in progress (another backup, a migration or a save). Wait for it to "
                   f"finish, or abort it with 'virsh domjobabort {vm.name}', then retry.")
    disks = disk_targets(dom)
    if not disks:
        raise UnsupportedOperation(f"VM '{vm.name}' has no file-backed disk to back up.")
    now = datetime.datetime.now(datetime.timezone.utc)
    checkpoint = f"{CHECKPOINT_PREFIX}{now:%Y%m%dT%H%M%S%f}Z"
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
    for target, _path, fmt in disks:
        scratch_files.append(os.path.join(os.path.dirname(_path), f".vmsafe-scratch-{target}-{checkpoint}"))
        if fmt != "qcow2":
            raise UnsupportedOperation(
                f"VM '{vm.name}' disk {target} is {fmt}: incremental backups need qcow2 disks (the dirty bitmaps live "
                f"in the image). Convert the disk to qcow2.")
        disk = ET.SubElement(bdisks, "disk", name=target, backup="yes", type="file")
        # The scratch file holds old data QEMU copies before the guest overwrites it during the backup: keep it
        # on the disk's own storage, not on /run (tmpfs, RAM).
        ET.SubElement(disk, "scratch", file=os.path.join(os.path.dirname(_path), f".vmsafe-scratch-{target}-{checkpoint}"))
        ET.SubElement(cdisks, "disk", name=target, checkpoint="bitmap")

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
                _remove_tree(scratch_dir)
                raise QuiesceFailed(
                    f"Failed to quiesce VM '{vm.name}' for the backup: {reason}. Nothing was backed up. Install and "
                    f"start qemu-guest-agent in the guest, or set quiesce_fallback: crash_consistent.") from exc
            warnings.append(f"Could not quiesce VM '{vm.name}' ({reason}); the backup is crash-consistent because "
                            f"quiesce_fallback is crash_consistent.")
    try:
        dom.backupBegin(ET.tostring(backup, encoding="unicode"), ET.tostring(cp, encoding="unicode"), 0)
    except libvirt.libvirtError as exc:
        _remove_tree(scratch_dir)
        raise ProviderError(f"Failed to start the backup of VM '{vm.name}': {exc.get_error_message()}") from exc
    finally:
        if frozen:
            try:
                dom.fsThaw(None, 0)
            except libvirt.libvirtError as exc:
                warnings.append(f"Thawing VM '{vm.name}' failed: {exc.get_error_message()}; check the guest.")
    for warning in warnings:
        warn(warning)
    # Who owns this job: a later run finds it here if this process dies (kill -9, a lost controller).
    with open(os.path.join(scratch_dir, OWNER_FILE), "w", encoding="utf-8") as handle:
        json.dump({"pid": os.getpid(), "checkpoint": checkpoint, "scratch": scratch_files}, handle)
    definition = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    session = BackupSession(dom=dom, vm=vm, checkpoint=checkpoint, since=since, consistency=consistency,
                            vm_definition=definition, disks=[], socket_path=socket_path, scratch_dir=scratch_dir,
                            scratch_files=scratch_files, warn=warn)
    try:
        for target, path, _fmt in disks:
            contexts = [f"qemu:dirty-bitmap:backup-{target}"] if since else ["base:allocation"]
            client = _nbd.NbdClient.connect_unix(socket_path, target, contexts=contexts)
            session.disks.append(DiskExport(target=target, size=client.size, path=path, incremental=bool(since),
                                            client=client, on_read=session.disk_read))
    except (OSError, _nbd.NbdError) as exc:
        session.close(success=False)
        raise ProviderError(f"Failed to read the backup export of VM '{vm.name}': {exc}") from exc
    return session
