# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""KVM/QEMU through libvirt-python.

Internal snapshots live inside the qcow2 images (with RAM when the VM runs); external snapshots are
qcow2 overlays on top of the disk, merged back by block commit. libvirt 9 cannot revert external
snapshots, and reverting while external overlays or backup checkpoints exist damages them, so those
cases are refused with the fix in the message.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import shutil
import threading
import time
import traceback
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    Busy,
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
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider, Warn
from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import libvirt_backup
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt_host import KvmHost, is_local
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt_instant import LibvirtInstant

try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    LIBVIRT_IMPORT_ERROR = None

    def _quiet(_ctx: t.Any, _err: t.Any) -> None:
        """libvirt prints every error to stderr by default; we raise them instead."""

    libvirt.registerErrorHandler(_quiet, None)


def load_sdk() -> str | None:
    """libvirt-python is cheap to import and imported with this file; return its import traceback or None."""
    return LIBVIRT_IMPORT_ERROR


T = t.TypeVar("T")

_STATES = {
    0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended",
}
_ACTIVE_STATES = ("running", "blocked", "paused")
# How long to wait for a worker after its timeout was hit and the job was asked to abort.
_ABORT_GRACE = 60.0


def _err_text(exc: BaseException) -> str:
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    return str(exc)


def _err_code(exc: BaseException) -> int | None:
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        return exc.get_error_code()
    return None


def _looks_like_snapshot_overlay(layer: str, backing: str) -> bool:
    """Whether an overlay nobody tracks was made by a snapshot (libvirt names it ``<backing stem>.<snapshot>``).

    Anything else is a thin clone of a template or golden image, which may be shared by other VMs: merging it
    would change their base, so it is never reported as a leftover.
    """
    stem = os.path.splitext(os.path.basename(backing))[0]
    return os.path.dirname(layer) == os.path.dirname(backing) and os.path.basename(layer).startswith(stem + ".")


class LibvirtProvider(HypervisorProvider):
    """One libvirt connection (qemu:///system, qemu+ssh://user@host/system, ...)."""

    name = "libvirt"
    unique_snapshot_names = True

    def __init__(self, params: dict[str, t.Any], warn: Warn) -> None:
        super().__init__(params, warn)
        self.uri: str = params.get("uri") or "qemu:///system"
        self.conn: t.Any = None
        # Local when the URI names no host: then image files can be inspected directly.
        self.local = is_local(self.uri)
        self._qemu_img_cache: dict[str, dict[str, t.Any]] = {}
        self._kvm: KvmHost | None = None

    @property
    def kvm(self) -> KvmHost:
        """The KVM host, for qemu-img, qemu-nbd and the NBD sockets (over SSH for qemu+ssh:// URIs)."""
        if self._kvm is None:
            self._kvm = KvmHost(self.uri, self.run_command)
        return self._kvm

    # -- connection -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.uri

    def connect(self) -> None:
        if libvirt is None:  # the runner checks first; this guards direct use
            raise ConnectionFailed("The libvirt-python package is not installed: pip install libvirt-python.")
        timeout = float(self.params.get("connect_timeout") or 30)
        try:
            self.conn = self._call(lambda: libvirt.open(self.uri), timeout, f"connect to {self.uri}")
        except OperationTimeout as exc:
            raise ConnectionFailed(f"Failed to connect to libvirt at '{self.uri}': no answer within {timeout:g} s. "
                                   f"Check that the host is reachable and libvirtd runs there.") from exc
        except libvirt.libvirtError as exc:
            raise ConnectionFailed(
                f"Failed to connect to libvirt at '{self.uri}': {_err_text(exc)}. Check that libvirtd runs on that "
                f"host (scripts/lab.sh start for the local lab), that the URI is right (qemu:///system, "
                f"qemu+ssh://user@host/system) and that this user may connect."
            ) from exc

    def close(self) -> None:
        if self._kvm is not None:
            self._kvm.close()
        if self.conn is not None:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _call(fn: t.Callable[[], T], timeout: float, what: str, abort: t.Callable[[], None] | None = None) -> T:
        """Run a blocking libvirt call in a worker thread and wait at most ``timeout`` seconds.

        On timeout, ``abort`` asks the hypervisor to stop the job, and we wait for the worker to end so
        that no operation is still running when we report. Raises OperationTimeout, or what fn raised.
        """
        box: dict[str, t.Any] = {}

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # pylint: disable=broad-except  # re-raised in the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=work, name=f"vmsafe: {what}", daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            aborted = False
            if abort is not None:
                try:
                    abort()
                    aborted = True
                except Exception:  # pylint: disable=broad-except  # abort is best effort; we report the timeout
                    aborted = False
            worker.join(_ABORT_GRACE)
            took = time.monotonic() - started
            if worker.is_alive():
                state = f"it is still running after {took:.1f} s"
            elif "error" in box:
                state = f"the hypervisor stopped it{' (aborted)' if aborted else ''} after {took:.1f} s"
            else:
                state = f"the hypervisor finished it only after {took:.1f} s"
            raise OperationTimeout(
                f"Timed out after {timeout:g} s waiting to {what}; {state}. Raise the timeout option if the host is "
                f"slow, and check the VM's state before retrying."
            )
        if "error" in box:
            raise box["error"]
        return t.cast(T, box.get("value"))

    def _domain(self, vm: VmRef) -> t.Any:
        try:
            return self.conn.lookupByUUIDString(vm.id)
        except libvirt.libvirtError as exc:
            raise VmNotFound(f"VM '{vm.name}' ({vm.id}) is gone from {self.uri}: {_err_text(exc)}") from exc

    def _ref(self, dom: t.Any) -> VmRef:
        state = _STATES.get(dom.state()[0], "unknown")
        return VmRef(id=dom.UUIDString(), name=dom.name(), state=state, host=self.uri)

    def _fail(self, verb: str, vm: VmRef, exc: BaseException) -> ProviderError:
        return ProviderError(f"Failed to {verb} of VM '{vm.name}' on libvirt host {self.uri}: {_err_text(exc)}")

    def _ensure_idle(self, dom: t.Any, vm: VmRef) -> None:
        """Fail fast when a job holds the VM: libvirt would block for 30 s and then fail obscurely."""
        if _STATES.get(dom.state()[0]) not in _ACTIVE_STATES:
            return
        try:
            job = dom.jobInfo()
        except libvirt.libvirtError:
            job = [0]
        if job and job[0] != libvirt.VIR_DOMAIN_JOB_NONE:
            raise Busy(
                f"VM '{vm.name}' has a job in progress (a backup, migration or save). Wait for it to finish, or "
                f"abort it with 'virsh domjobabort {vm.name}', then retry."
            )
        for disk in self._disks(dom):
            if disk.block_job:
                raise Busy(
                    f"VM '{vm.name}' disk {disk.target} has a block job in progress ({disk.block_job['type']}, "
                    f"{disk.block_job['percent']} %). Wait for it, or run vmsafe.protect.snapshot_consolidate to "
                    f"finish it, then retry."
                )

    # -- VMs --------------------------------------------------------------------------------------

    def find_vm(self, selector: VmSelector) -> VmRef:
        try:
            if selector.id is not None:
                dom = self.conn.lookupByUUIDString(selector.id)
            else:
                dom = self.conn.lookupByName(selector.name)
        except libvirt.libvirtError as exc:
            if _err_code(exc) not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                raise ProviderError(f"Failed to look up VM {selector.describe()} on {self.uri}: {_err_text(exc)}") from exc
            names = [d.name() for d in self.conn.listAllDomains()]
            close = difflib.get_close_matches(selector.name or "", names, n=3) if selector.name else []
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise VmNotFound(
                f"No VM {selector.describe()} on libvirt host {self.uri}.{hint} "
                f"It has {len(names)} VM(s); check vm_name/vm_id and the uri option."
            ) from exc
        return self._ref(dom)

    def list_vms(self) -> list[VmRef]:
        refs = []
        for dom in self.conn.listAllDomains():
            try:
                refs.append(self._ref(dom))
            except libvirt.libvirtError as exc:
                if _err_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                # undefined between the listing and this look: a VM that is gone is not part of the fleet
        return sorted(refs, key=lambda v: v.name)

    # -- disks ------------------------------------------------------------------------------------

    def _qemu_img_info(self, path: str, chain: bool = False) -> t.Any:
        key = f"{path}|{chain}"
        if key not in self._qemu_img_cache:
            if not self.local or not shutil.which("qemu-img") or not os.path.exists(path):
                return None
            cmd = ["qemu-img", "info", "-U", "--output=json"] + (["--backing-chain"] if chain else []) + [path]
            rc, out, _err = self.kvm.try_run(cmd, 60)
            if rc != 0:
                return None
            self._qemu_img_cache[key] = json.loads(out)
        return self._qemu_img_cache[key]

    def _disks(self, dom: t.Any) -> list[Disk]:
        """Return the VM's file-backed disks with their backing chains (active layer first)."""
        root = ET.fromstring(dom.XMLDesc(0))
        disks = []
        for node in root.findall("./devices/disk"):
            if node.get("device", "disk") != "disk":
                continue
            target = node.find("target")
            source = node.find("source")
            if target is None or source is None or not source.get("file"):
                continue
            driver = node.find("driver")
            disk = Disk(target=target.get("dev", ""), path=source.get("file", ""),
                        format=driver.get("type", "") if driver is not None else "")
            chain = [disk.path]
            store = node.find("backingStore")
            while store is not None and store.find("source") is not None:
                chain.append(store.find("source").get("file", ""))
                store = store.find("backingStore")
            if len(chain) == 1:
                # Shut-off domains do not carry the chain in their XML: ask qemu-img when we can.
                info = self._qemu_img_info(disk.path, chain=True)
                if info:
                    chain = [layer.get("filename") for layer in info]
            disk.chain = chain
            if self.local and os.path.exists(disk.path):
                stat = os.statvfs(os.path.dirname(disk.path) or ".")
                disk.storage_free_bytes = stat.f_bavail * stat.f_frsize
                try:
                    capacity, allocation, _physical = dom.blockInfo(disk.target)
                    disk.virtual_size, disk.allocation = capacity, allocation
                except libvirt.libvirtError:
                    disk.allocation = os.stat(disk.path).st_blocks * 512
            if _STATES.get(dom.state()[0]) in _ACTIVE_STATES:
                try:
                    job = dom.blockJobInfo(disk.target, 0)
                except libvirt.libvirtError:
                    job = {}
                if job:
                    kinds = {1: "pull", 2: "copy", 3: "commit", 4: "active_commit", 5: "backup"}
                    end = job.get("end") or 0
                    disk.block_job = {
                        "type": kinds.get(job.get("type", 0), "unknown"),
                        "cur": job.get("cur", 0), "end": end,
                        "percent": int(100 * job.get("cur", 0) / end) if end else 0,
                        "ready": bool(end) and job.get("cur") == end,
                    }
            disks.append(disk)
        return disks

    # -- snapshots --------------------------------------------------------------------------------

    def _parse_snapshot(self, snap: t.Any) -> Snapshot:
        root = ET.fromstring(snap.getXMLDesc(0))
        memory = root.find("memory")
        parent = root.find("parent/name")
        files = [d.find("source").get("file", "") for d in root.findall("disks/disk")
                 if d.get("snapshot") == "external" and d.find("source") is not None]
        created = datetime.datetime.fromtimestamp(int(root.findtext("creationTime") or 0), tz=datetime.timezone.utc)
        name = root.findtext("name") or snap.getName()
        return Snapshot(
            id=name, name=name, created=created, description=root.findtext("description") or "",
            parent=parent.text if parent is not None else None,
            current=bool(snap.isCurrent()),
            memory=memory is not None and memory.get("snapshot") in ("internal", "external"),
            kind="external" if files or (memory is not None and memory.get("snapshot") == "external") else "internal",
            vm_state=root.findtext("state") or "", files=files,
        )

    def list_snapshots(self, vm: VmRef) -> list[Snapshot]:
        dom = self._domain(vm)
        self._qemu_img_cache.clear()  # images change with every snapshot operation
        try:
            snaps = [self._parse_snapshot(s) for s in dom.listAllSnapshots(0)]
        except libvirt.libvirtError as exc:
            raise self._fail("list the snapshots", vm, exc) from exc
        self._fill_sizes(dom, snaps)
        return tree.link(snaps)

    def _fill_sizes(self, dom: t.Any, snaps: list[Snapshot]) -> None:
        """Bytes each snapshot holds: its overlay files (external) or its saved RAM (internal).

        Internal snapshots share clusters with the live image, which qemu does not attribute, so their
        size is the saved memory state only. Remote hosts: unknown (None).
        """
        if not self.local:
            return
        internal: dict[str, int] = {}
        for disk in self._disks(dom):
            info = self._qemu_img_info(disk.chain[-1] if disk.chain else disk.path) or {}
            for entry in info.get("snapshots", []):
                internal[entry["name"]] = internal.get(entry["name"], 0) + int(entry.get("vm-state-size", 0))
        for snap in snaps:
            if snap.kind == "external":
                snap.size_bytes = sum(os.stat(f).st_blocks * 512 for f in snap.files if os.path.exists(f))
            elif snap.name in internal:
                snap.size_bytes = internal[snap.name]

    def _lookup_snapshot(self, dom: t.Any, vm: VmRef, snapshot: Snapshot) -> t.Any:
        try:
            return dom.snapshotLookupByName(snapshot.id, 0)
        except libvirt.libvirtError as exc:
            raise SnapshotNotFound(f"Snapshot '{snapshot.name}' of VM '{vm.name}' is gone: {_err_text(exc)}") from exc

    def _snapshot_xml(self, dom: t.Any, spec: SnapshotSpec) -> str:
        root = ET.Element("domainsnapshot")
        ET.SubElement(root, "name").text = spec.name
        if spec.description:
            ET.SubElement(root, "description").text = spec.description
        if spec.disk_only:
            ET.SubElement(root, "memory", snapshot="no")
            disks = ET.SubElement(root, "disks")
            dom_root = ET.fromstring(dom.XMLDesc(0))
            for node in dom_root.findall("./devices/disk"):
                target = node.find("target")
                if target is None:
                    continue
                mode = "external" if node.get("device", "disk") == "disk" and node.find("readonly") is None else "no"
                ET.SubElement(disks, "disk", name=target.get("dev", ""), snapshot=mode)
        return ET.tostring(root, encoding="unicode")

    def create_snapshot(self, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
        dom = self._domain(vm)
        self._ensure_idle(dom, vm)
        running = vm.state in _ACTIVE_STATES
        warnings: list[str] = []
        flags = 0
        if spec.disk_only:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        else:
            raw = [d.target for d in self._disks(dom) if d.format and d.format != "qcow2"]
            if raw:
                raise UnsupportedOperation(
                    f"Failed to snapshot VM '{vm.name}': internal snapshots need qcow2 disks, and {', '.join(raw)} "
                    f"is not qcow2. Use disk_only: true for an external snapshot, or convert the disk."
                )
            if running and not spec.memory:
                raise UnsupportedOperation(
                    f"Failed to snapshot VM '{vm.name}': libvirt takes an internal snapshot of a running VM only "
                    f"together with its memory. Set memory: true (revertable, resumes the running guest), "
                    f"disk_only: true (external, merged later; libvirt cannot revert it), or shut the VM off first."
                )
        if not running and libvirt_backup.checkpoint_names(dom):
            raise UnsupportedOperation(
                f"Failed to snapshot VM '{vm.name}': it is shut off and has backup checkpoints, and libvirt cannot "
                f"snapshot a shut-off VM while checkpoints exist. Start the VM (running VMs can be snapshotted with "
                f"checkpoints), or take the snapshot after the VM's next start."
            )
        if spec.memory and not running:
            warnings.append(f"VM '{vm.name}' is {vm.state}: there is no memory to save, so the snapshot holds disks only.")

        if not running:
            consistency = "offline"
        elif spec.memory:
            consistency = "memory"
            if spec.quiesce:
                warnings.append("quiesce is not applied with memory: true; the saved RAM state makes the snapshot "
                                "consistent already, and a frozen guest would resume frozen after a revert.")
        else:
            consistency = "crash_consistent"
        if spec.quiesce and running and spec.disk_only:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
            consistency = "quiesced"

        xml = self._snapshot_xml(dom, spec)
        before = set(dom.snapshotListNames(0))
        try:
            self._create(dom, vm, xml, flags, timeout)
        except libvirt.libvirtError as exc:
            self._cleanup_new(dom, vm, spec.name, before)
            if not flags & libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE:
                raise self._fail(f"create snapshot '{spec.name}'", vm, exc) from exc
            reason = _err_text(exc)
            if spec.quiesce_fallback == "fail":
                raise QuiesceFailed(
                    f"Failed to quiesce VM '{vm.name}' for snapshot '{spec.name}': {reason}. No snapshot was taken. "
                    f"Install and start qemu-guest-agent in the guest (with a guest-agent channel in the domain), "
                    f"or set quiesce_fallback: crash_consistent to accept a crash-consistent snapshot."
                ) from exc
            warnings.append(f"Could not quiesce VM '{vm.name}' ({reason}); took a crash-consistent snapshot instead "
                            f"because quiesce_fallback is crash_consistent.")
            consistency = "crash_consistent"
            try:
                self._create(dom, vm, xml, flags & ~libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE, timeout)
            except libvirt.libvirtError as exc2:
                self._cleanup_new(dom, vm, spec.name, before)
                raise self._fail(f"create snapshot '{spec.name}'", vm, exc2) from exc2
        except BaseException:
            self._cleanup_new(dom, vm, spec.name, before)
            raise
        snaps = self.list_snapshots(vm)
        created = tree.require(snaps, spec.name, None, vm.name)
        if consistency == "quiesced":
            created.quiesced = True
        for warning in warnings:
            self.warn(warning)
        return CreateResult(snapshot=created, consistency=consistency, warnings=warnings)

    def _create(self, dom: t.Any, vm: VmRef, xml: str, flags: int, timeout: int) -> None:
        self._call(lambda: dom.snapshotCreateXML(xml, flags), timeout,
                   f"create a snapshot of VM '{vm.name}'", abort=dom.abortJob)

    def _cleanup_new(self, dom: t.Any, vm: VmRef, name: str, before: set[str]) -> None:
        """Remove a snapshot that a failed or timed-out create left behind, so nothing untracked remains."""
        try:
            if name in before or name not in dom.snapshotListNames(0):
                return
            snap = dom.snapshotLookupByName(name, 0)
            self._call(lambda: snap.delete(0), _ABORT_GRACE, f"remove the partial snapshot '{name}'")
            self.warn(f"Removed the partial snapshot '{name}' of VM '{vm.name}' after the failure.")
        except (libvirt.libvirtError, OperationTimeout) as exc:
            self.warn(f"Snapshot '{name}' of VM '{vm.name}' may be left behind after the failure and could not be "
                      f"removed ({exc}); remove it with vmsafe.protect.vm_snapshot state=absent.")

    def revert_snapshot(self, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
        dom = self._domain(vm)
        self._ensure_idle(dom, vm)
        if snapshot.kind == "external":
            raise UnsupportedOperation(
                f"Failed to revert VM '{vm.name}' to snapshot '{snapshot.name}': it is an external (disk-only) "
                f"snapshot, and libvirt cannot revert external snapshots. Take internal snapshots (memory: true, "
                f"or with the VM shut off) for rollback points, or restore from a backup."
            )
        externals = [s.name for s in self.list_snapshots(vm) if s.kind == "external"]
        if externals:
            raise UnsupportedOperation(
                f"Failed to revert VM '{vm.name}' to snapshot '{snapshot.name}': the VM also has external snapshots "
                f"({', '.join(externals)}) whose overlays libvirt would orphan. Remove them first (state: absent, "
                f"which merges them), then revert."
            )
        checkpoints = libvirt_backup.checkpoint_names(dom)
        foreign = [c for c in checkpoints if not c.startswith(libvirt_backup.CHECKPOINT_PREFIX)]
        if foreign:
            raise UnsupportedOperation(
                f"Failed to revert VM '{vm.name}' to snapshot '{snapshot.name}': the VM has checkpoints that vmsafe did "
                f"not create ({', '.join(foreign)}), and reverting would leave their dirty bitmaps inconsistent. "
                f"Delete them first (virsh checkpoint-delete), then revert."
            )
        if checkpoints:
            # Our own backup checkpoints: a revert would make their bitmaps lie, so drop them; the next
            # vm_backup sees no base checkpoint and takes a full backup (and says why).
            self._drop_checkpoints(dom, vm, checkpoints)
            self.warn(f"Deleted the backup checkpoint(s) of VM '{vm.name}' before reverting, so that no backup "
                      f"relies on bitmaps the revert would invalidate; the next vm_backup will be a full backup.")
        snap = self._lookup_snapshot(dom, vm, snapshot)
        try:
            try:
                self._call(lambda: dom.revertToSnapshot(snap, 0), timeout, f"revert VM '{vm.name}' to '{snapshot.name}'")
            except libvirt.libvirtError as exc:
                if _err_code(exc) != libvirt.VIR_ERR_SNAPSHOT_REVERT_RISKY:
                    raise
                # The snapshot was taken in a state libvirt cannot resume without restarting QEMU; the user asked.
                self._call(lambda: dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE), timeout,
                           f"revert VM '{vm.name}' to '{snapshot.name}'")
        except libvirt.libvirtError as exc:
            raise self._fail(f"revert to snapshot '{snapshot.name}'", vm, exc) from exc

    def _drop_checkpoints(self, dom: t.Any, vm: VmRef, names: list[str]) -> None:
        """Delete checkpoints, newest first. A shut-off VM's checkpoints cannot be deleted by libvirt: drop their
        records and remove their bitmaps from the images with qemu-img (local hosts)."""
        active = dom.isActive()
        images = [d.path for d in self._disks(dom)] if not active else []
        for name in reversed(names):
            try:
                flags = 0 if active else libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
                dom.checkpointLookupByName(name, 0).delete(flags)
            except libvirt.libvirtError as exc:
                raise self._fail(f"delete backup checkpoint '{name}'", vm, exc) from exc
            if not active and self.local:
                for image in images:
                    # A bitmap left in the image would only cost space; ignore "not found".
                    self.kvm.try_run(["qemu-img", "bitmap", "--remove", image, name], 60)

    def delete_snapshot(self, vm: VmRef, snapshot: Snapshot, children: bool, timeout: int) -> None:
        dom = self._domain(vm)
        self._ensure_idle(dom, vm)
        snap = self._lookup_snapshot(dom, vm, snapshot)
        if children:
            # One by one, deepest first, so that external children are merged the same careful way.
            for child in tree.descendants(self.list_snapshots(vm), snapshot.id):
                self.delete_snapshot(vm, child, False, timeout)
        flags = 0
        if snapshot.kind == "external" and snapshot.files:
            # We merge external overlays ourselves (block commit, pivot when active) and then drop the record:
            # libvirt 9 refuses to delete an external snapshot whose parent is internal, and cannot delete one
            # whose overlays a revert has orphaned.
            disks = self._disks(dom)
            live = [(d.target, f) for d in disks for f in d.chain[:-1] if f in snapshot.files]
            if not live:
                self.warn(f"Snapshot '{snapshot.name}' of VM '{vm.name}' is external and its overlay(s) "
                          f"{', '.join(snapshot.files)} are no longer in use: removed its record only; delete those "
                          f"files after checking nothing else uses them.")
            for target, overlay in live:
                self._merge_overlay(dom, vm, target, overlay, timeout)
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
        try:
            self._call(lambda: snap.delete(flags), timeout, f"delete snapshot '{snapshot.name}' of VM '{vm.name}'")
        except libvirt.libvirtError as exc:
            raise self._fail(f"delete snapshot '{snapshot.name}'", vm, exc) from exc

    # -- consolidation ----------------------------------------------------------------------------

    def consolidation_status(self, vm: VmRef, snapshots: list[Snapshot] | None = None) -> ConsolidationStatus:
        dom = self._domain(vm)
        snaps = snapshots if snapshots is not None else self.list_snapshots(vm)
        disks = self._disks(dom)
        tracked = {f for s in snaps if s.kind == "external" for f in s.files}
        in_chain = {f for d in disks for f in d.chain}
        status = ConsolidationStatus(needed=False, chain_depth=max((len(d.chain) for d in disks), default=0),
                                     disks=disks)
        for disk in disks:
            if disk.block_job:
                status.leftovers.append(Leftover(
                    kind="block_job", disk=disk.target,
                    detail=f"{disk.block_job['type']} block job at {disk.block_job['percent']} %"
                           f"{' (ready to pivot)' if disk.block_job['ready'] else ''}"))
            for index, layer in enumerate(disk.chain[:-1]):
                if layer not in tracked and _looks_like_snapshot_overlay(layer, disk.chain[index + 1]):
                    size = os.stat(layer).st_blocks * 512 if self.local and os.path.exists(layer) else None
                    status.leftovers.append(Leftover(
                        kind="untracked_overlay", disk=disk.target, files=[layer], bytes=size,
                        detail=f"overlay {layer} belongs to no snapshot (left by a failed or metadata-only removal)"))
        for snap in snaps:
            if snap.kind == "external" and snap.files and not set(snap.files) & in_chain:
                status.leftovers.append(Leftover(
                    kind="stale_snapshot_metadata", disk=",".join(sorted({os.path.basename(f) for f in snap.files})),
                    snapshot=snap.name, files=list(snap.files),
                    detail=f"external snapshot '{snap.name}' points at overlays the VM no longer uses"))
        status.reasons = [x.detail for x in status.leftovers]
        status.needed = bool(status.leftovers)
        return status

    def repair_leftover(self, vm: VmRef, leftover: Leftover, timeout: int) -> None:
        dom = self._domain(vm)
        if leftover.kind == "stale_snapshot_metadata":
            snap = dom.snapshotLookupByName(leftover.snapshot, 0)
            try:
                snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
            except libvirt.libvirtError as exc:
                raise self._fail(f"forget stale snapshot '{leftover.snapshot}'", vm, exc) from exc
            return
        if leftover.kind == "block_job":
            raise UnsupportedOperation(
                f"VM '{vm.name}' disk {leftover.disk} has a {leftover.detail}; vmsafe does not take over jobs it did "
                f"not start. Wait for it or abort it with 'virsh blockjob {vm.name} {leftover.disk} --abort'."
            )
        self._merge_overlay(dom, vm, leftover.disk, leftover.files[0], timeout)

    def _merge_overlay(self, dom: t.Any, vm: VmRef, target: str, overlay: str, timeout: int) -> None:
        """Block-commit one overlay into the image below it, pivoting when it is the active layer."""
        disk = next((d for d in self._disks(dom) if d.target == target), None)
        if disk is None or overlay not in disk.chain[:-1]:
            return  # merged meanwhile
        index = disk.chain.index(overlay)
        base = disk.chain[index + 1]
        if vm.state not in _ACTIVE_STATES:
            self._merge_offline(dom, vm, disk, overlay, base, index, timeout)
            return
        deadline = time.monotonic() + timeout
        try:
            if index == 0:
                dom.blockCommit(target, base, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
                self._wait_job(dom, vm, target, deadline, timeout, until_ready=True)
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                self._wait_job(dom, vm, target, deadline, timeout, until_ready=False)
            else:
                dom.blockCommit(target, base, overlay, 0, 0)
                self._wait_job(dom, vm, target, deadline, timeout, until_ready=False)
            # The job can be gone a moment before libvirt has rewritten the disk's chain (more so on a busy host):
            # wait for the chain itself, so the next merge plans on the real chain.
            while overlay in next((d.chain for d in self._disks(dom) if d.target == target), []):
                if time.monotonic() > deadline:
                    raise OperationTimeout(f"Timed out after {timeout} s waiting for libvirt to drop {overlay} from "
                                           f"disk {target} of VM '{vm.name}' after the merge; check 'virsh domblklist'.")
                time.sleep(0.05)
        except libvirt.libvirtError as exc:
            raise self._fail(f"merge overlay {overlay} of disk {target}", vm, exc) from exc
        if self.local and os.path.exists(overlay) and overlay not in {f for d in self._disks(dom) for f in d.chain}:
            os.unlink(overlay)

    def _wait_job(self, dom: t.Any, vm: VmRef, target: str, deadline: float, timeout: int, until_ready: bool) -> None:
        while True:
            job = dom.blockJobInfo(target, 0)
            if not job:
                return
            if until_ready and job.get("end") and job.get("cur") == job.get("end"):
                return
            if time.monotonic() > deadline:
                try:
                    dom.blockJobAbort(target, 0)
                    state = "the block job was cancelled; the disk chain is unchanged"
                except libvirt.libvirtError as exc:
                    state = f"cancelling the block job failed too ({_err_text(exc)})"
                raise OperationTimeout(
                    f"Timed out after {timeout} s merging disk {target} of VM '{vm.name}'; {state}. "
                    f"Raise the timeout option and run again."
                )
            time.sleep(0.05)

    def _merge_offline(self, dom: t.Any, vm: VmRef, disk: Disk, overlay: str, base: str, index: int,
                       timeout: int) -> None:
        """Merge with qemu-img while the VM is shut off (block jobs need a running QEMU)."""
        if not self.local or not shutil.which("qemu-img"):
            raise UnsupportedOperation(
                f"VM '{vm.name}' is shut off and its images are on a remote host: start the VM so libvirt can merge "
                f"disk {disk.target} with a block commit, then run again."
            )
        self.kvm.run(["qemu-img", "commit", "-q", overlay], timeout, f"merge {overlay} into {base}")
        if index == 0:
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
            for node in root.findall("./devices/disk"):
                target = node.find("target")
                source = node.find("source")
                if target is not None and source is not None and target.get("dev") == disk.target:
                    source.set("file", base)
                    for store in node.findall("backingStore"):
                        node.remove(store)
            self.conn.defineXML(ET.tostring(root, encoding="unicode"))
        os.unlink(overlay)

    # -- backups ----------------------------------------------------------------------------------

    def _image_chain(self, path: str) -> list[dict[str, t.Any]]:
        """qemu-img's view of an image and its backing chain (top first), on the KVM host; [] when unreadable."""
        if not self.kvm.reachable:
            return []
        rc, out, _err = self.kvm.try_run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path], 60)
        if rc != 0:
            return []
        try:
            return t.cast("list[dict[str, t.Any]]", json.loads(out))
        except ValueError:
            return []

    def backup_base(self, vm: VmRef, last: dict[str, t.Any] | None) -> tuple[str | None, str]:
        dom = self._domain(vm)
        disks = libvirt_backup.backup_disks(dom)
        tracked = [d for d in disks if d.tracks_changes]
        if last is None:
            return None, "no earlier backup of this VM in the repository"
        if not tracked:
            kinds = ", ".join(f"{d.target} is {d.fmt}" for d in disks)
            return None, f"no disk of this VM keeps a dirty bitmap ({kinds}; only qcow2 does): every backup is full"
        checkpoint = last.get("checkpoint")
        names = libvirt_backup.checkpoint_names(dom)
        if not checkpoint or checkpoint not in names:
            return None, (f"the checkpoint of the last backup ({checkpoint or 'none'}) is gone from the VM "
                          f"(a revert, a failed run or a manual deletion)")
        if {d.target for d in disks} != set(last.get("disks", {})):
            return None, f"the VM's disks changed ({', '.join(sorted(d.target for d in disks))} now)"
        active = dom.isActive()
        for disk in disks:
            try:
                size = dom.blockInfo(disk.target)[0]
            except libvirt.libvirtError:
                size = None
            if size is not None and size != last["disks"][disk.target]:
                return None, f"disk {disk.target} was resized from {last['disks'][disk.target]} to {size} bytes"
        for disk in tracked:
            chain = self._image_chain(disk.path)
            top = {b.get("name"): b.get("flags", []) for b in
                   (chain[0] if chain else {}).get("format-specific", {}).get("data", {}).get("bitmaps", [])}
            flags = top.get(checkpoint, [])
            if "inconsistent" in flags:
                return None, f"the dirty bitmap of disk {disk.target} is inconsistent (QEMU stopped uncleanly)"
            if active or not self.kvm.reachable:
                continue
            # Shut off: qemu-nbd reads the bitmap from the image itself, so it must be there, whole and enabled.
            if checkpoint not in top or "auto" not in flags or "in-use" in flags:
                return None, (f"disk {disk.target} ({disk.path}) has no usable dirty bitmap {checkpoint} "
                              f"(flags: {', '.join(flags) or 'missing'})")
            lower = [layer.get("filename") for layer in chain[1:] if checkpoint in
                     {b.get("name") for b in layer.get("format-specific", {}).get("data", {}).get("bitmaps", [])}]
            if lower:
                return None, (f"disk {disk.target} got a snapshot overlay after the last backup, so its changes are "
                              f"tracked in several images ({', '.join(lower)}); a shut-off VM is then backed up in "
                              f"full (a running one incrementally)")
        how = "" if active else "; the VM is shut off, so its images are read with qemu-nbd"
        return checkpoint, f"checkpoint {checkpoint} of the last backup is intact{how}"

    def backup_base_guess(self, vm: VmRef) -> dict[str, t.Any] | None:
        """The last backup's ``last`` record as it most likely is, before the repository is open (see guess_last)."""
        return libvirt_backup.guess_last(self._domain(vm))

    def backup_begin(self, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str) -> t.Any:
        self._qemu_img_cache.clear()
        return libvirt_backup.begin(self._domain(vm), vm, since, quiesce, quiesce_fallback, self.warn, self.kvm)

    # -- restore ----------------------------------------------------------------------------------

    def vm_disks(self, vm: VmRef) -> dict[str, str]:
        """target -> active image path (or block device) of each disk a backup covers."""
        return {target: path for target, path, _fmt in libvirt_backup.disk_targets(self._domain(vm))}

    def vm_disk_formats(self, vm: VmRef) -> dict[str, str]:
        """target -> image format (qcow2, raw, ...) of each disk a backup covers: a restore in place keeps it."""
        return {target: fmt for target, _path, fmt in libvirt_backup.disk_targets(self._domain(vm))}

    restore_options = frozenset({"keep_macs"})

    def define_restored_vm(self, definition: str, name: str, disk_files: dict[str, tuple[str, str]],
                           start: bool, keep_macs: bool = False) -> VmRef:
        """Define a new VM from a backed-up definition: new name, new UUID, new MACs (unless ``keep_macs``),
        restored disk files.

        ``disk_files`` maps target -> (path, format). Raises UnsupportedOperation when the name is taken.
        """
        try:
            self.conn.lookupByName(name)
        except libvirt.libvirtError:
            pass
        else:
            raise UnsupportedOperation(f"A VM named '{name}' already exists on {self.uri}; choose another new_vm_name "
                                       f"or restore to the original VM with target: original.")
        root = ET.fromstring(definition)
        root.find("name").text = name
        for tag in ("uuid", "metadata"):
            for node in root.findall(tag):
                root.remove(node)
        for iface in root.findall("./devices/interface"):
            for mac in [] if keep_macs else iface.findall("mac"):
                iface.remove(mac)  # libvirt generates a new MAC, so the copy never clashes with the original
        devices = root.find("devices")
        for node in root.findall("./devices/disk"):
            target = node.find("target")
            if target is None or target.get("dev") not in disk_files:
                if node.get("device", "disk") == "disk" and node.find("source") is not None and devices is not None:
                    # a disk that was not restored must not stay in the copy: it would point at the original VM's
                    # image, and two VMs would write one disk
                    devices.remove(node)
                    self.warn(f"Disk {target.get('dev') if target is not None else '?'} of the backed-up VM was not "
                              f"restored (not in disks), so the new VM '{name}' does not have it.")
                continue
            path, fmt = disk_files[target.get("dev")]
            source = node.find("source")
            if source is None:
                source = ET.SubElement(node, "source")
            source.attrib.clear()
            source.set("file", path)
            node.set("type", "file")
            driver = node.find("driver")
            if driver is not None:
                driver.set("type", fmt)
            for store in node.findall("backingStore"):
                node.remove(store)
        try:
            dom = self.conn.defineXML(ET.tostring(root, encoding="unicode"))
            if start:
                dom.create()
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to define the restored VM '{name}' on {self.uri}: {_err_text(exc)}") from exc
        return self._ref(dom)

    def prepare_restore_in_place(self, vm: VmRef) -> None:
        """Refuse unless the VM is shut off and has no snapshots; drop its backup checkpoints' records.

        The restored images carry no dirty bitmaps, so the next vm_backup takes a full backup.
        """
        dom = self._domain(vm)
        if dom.isActive():
            raise UnsupportedOperation(f"VM '{vm.name}' is running: shut it off before restoring over its disks.")
        snaps = dom.snapshotListNames(0)
        if snaps:
            raise UnsupportedOperation(
                f"VM '{vm.name}' has snapshots ({', '.join(snaps)}) that live in or on top of the disks being "
                f"replaced; remove them (vmsafe.protect.vm_snapshot state=remove_all) or restore to a new VM.")
        for name in libvirt_backup.checkpoint_names(dom):
            try:
                dom.checkpointLookupByName(name, 0).delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
            except libvirt.libvirtError as exc:
                raise self._fail(f"drop the record of checkpoint '{name}'", vm, exc) from exc

    # -- instant recovery -------------------------------------------------------------------------------

    def instant_recovery(self) -> LibvirtInstant:
        """The helper that boots VMs from NBD-served backups and moves them to local storage (this host only)."""
        return LibvirtInstant(self)
