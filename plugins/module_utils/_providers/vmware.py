# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""VMware vSphere (vCenter or a standalone ESXi host) through pyVmomi.

Every VM the connection sees is read with one container view and one property-collector retrieval
(followed through its continuation tokens): name, power state, the whole snapshot tree, the consolidation
flag and the file layout. Single-VM calls after a change re-read that VM only. Snapshot ids are the
snapshots' managed object ids (``snapshot-42``), because vSphere allows several snapshots with one name.
"""

from __future__ import annotations

import datetime
import difflib
import http.client
import json
import ssl
import time
import traceback
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    ConnectionFailed,
    InvalidArgument,
    OperationTimeout,
    ProviderError,
    QuiesceFailed,
    SnapshotNotFound,
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
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware_fleet

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware_backup

# pyVmomi is imported by load_sdk() when this provider is picked: every module ships every provider, and
# importing it up front would cost each libvirt or Hyper-V task ~0.1 s.
vim = vmodl = SmartConnect = Disconnect = None


def load_sdk() -> str | None:
    """Import pyVmomi; return the import traceback when it is missing, else None."""
    global vim, vmodl, SmartConnect, Disconnect  # pylint: disable=global-statement
    try:
        from pyVim.connect import Disconnect, SmartConnect  # pylint: disable=redefined-outer-name,import-outside-toplevel
        from pyVmomi import vim, vmodl  # pylint: disable=redefined-outer-name,import-outside-toplevel
    except ImportError:
        return traceback.format_exc()
    return None


_STATES = {"poweredOn": "running", "poweredOff": "shutoff", "suspended": "suspended"}
# Everything the fleet listing reads, per VM, in the one retrieval.
VM_PROPERTIES = [
    "name", "runtime.powerState", "config.uuid", "config.instanceUuid", "snapshot",
    "runtime.consolidationNeeded", "layoutEx.file", "layoutEx.snapshot", "layoutEx.disk",
]
# What find_vm needs: a light listing when no fleet listing was made.
ID_PROPERTIES = ["name", "runtime.powerState", "config.uuid", "config.instanceUuid"]
# Objects per page of RetrievePropertiesEx; the rest comes through ContinueRetrievePropertiesEx.
PAGE_SIZE = 500
# Faults vSphere reports when the guest cannot be quiesced (no or stopped VMware Tools, VSS failure).
_QUIESCE_FAULTS = ("ToolsUnavailable", "ApplicationQuiesceFault", "GuestOperationsUnavailable")


# -- pure conversions (unit-tested from recorded responses) -----------------------------------------


def _backups() -> t.Any:
    """The backup half of this provider, imported by the backup paths only: snapshot tasks need none of it."""
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware_backup  # pylint: disable=import-outside-toplevel,redefined-outer-name

    return vmware_backup


def _restores() -> t.Any:
    """The restore half of this provider (vm_restore only)."""
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware_restore  # pylint: disable=import-outside-toplevel

    return vmware_restore


def _parse_time(value: t.Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    return vmware_fleet.parse_time(str(value))


def snapshots_from_tree(roots: list[dict[str, t.Any]], current: str | None,
                        sizes: dict[str, int] | None = None) -> list[Snapshot]:
    """Flatten vSphere's rootSnapshotList (as plain dicts) into linked Snapshots, every branch included.

    Each node: ``snapshot`` (MoID), ``id`` (the per-VM integer id), ``name``, ``description``, ``createTime``,
    ``state``, ``quiesced``, ``childSnapshotList``. A snapshot holds memory when its recorded state is poweredOn
    (vSphere records poweredOff for a running VM's snapshot taken without memory). Returns oldest first.
    """
    sizes = sizes or {}
    found: list[Snapshot] = []
    stack: list[tuple[dict[str, t.Any], str | None]] = [(node, None) for node in roots]
    while stack:
        node, parent = stack.pop()
        moid = str(node["snapshot"])
        state = str(node.get("state") or "")
        found.append(Snapshot(
            id=moid, name=str(node.get("name") or ""), description=str(node.get("description") or ""),
            created=_parse_time(node["createTime"]), parent=parent, current=moid == current,
            memory=state == "poweredOn", quiesced=bool(node.get("quiesced")), kind="internal",
            size_bytes=sizes.get(moid), vm_state=_STATES.get(state, state),
            number=int(node["id"]) if node.get("id") is not None else None,
        ))
        stack.extend((child, moid) for child in node.get("childSnapshotList") or [])
    return tree.link(found)


def snapshot_sizes(layout_files: list[dict[str, t.Any]], layout_snapshots: list[dict[str, t.Any]]) -> dict[str, int]:
    """Bytes of each snapshot's own files (state and memory), from layoutEx; MoID -> bytes."""
    by_key = {int(f["key"]): int(f.get("size") or 0) for f in layout_files}
    sizes = {}
    for snap in layout_snapshots:
        keys = [int(snap.get("dataKey", -1)), int(snap.get("memoryKey", -1))]
        sizes[str(snap["key"])] = sum(by_key.get(k, 0) for k in keys if k >= 0)
    return sizes


def _moid(obj: t.Any) -> str:
    return str(obj._moId)  # pylint: disable=protected-access  # pyVmomi's public spelling of the MoID


def _tree_dicts(nodes: t.Any) -> list[dict[str, t.Any]]:
    return [{
        "snapshot": _moid(n.snapshot), "id": n.id, "name": n.name, "description": n.description,
        "createTime": n.createTime, "state": str(n.state), "quiesced": bool(n.quiesced),
        "childSnapshotList": _tree_dicts(n.childSnapshotList),
    } for n in nodes or []]


def _fault_text(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or getattr(exc, "localizedMessage", None)
    if msg:
        return str(msg)
    faults = getattr(exc, "faultMessage", None) or []
    texts = [m.message for m in faults if getattr(m, "message", None)]
    return "; ".join(texts) or type(exc).__name__


def _fault_name(exc: BaseException) -> str:
    return type(exc).__name__.rsplit(".", 1)[-1]


class VmwareProvider(HypervisorProvider):
    """One vSphere API session (vCenter or ESXi)."""

    name = "vmware"
    unique_snapshot_names = False

    def __init__(self, params: dict[str, t.Any], warn: Warn) -> None:
        super().__init__(params, warn)
        load_sdk()  # a no-op after the first call; create_provider() has reported a missing SDK already
        self.hostname: str = params.get("hostname") or ""
        self.port: int = int(params.get("port") or 443)
        # An HTTP proxy, as vmware.vmware and community.vmware take it: pyVmomi tunnels through it with CONNECT.
        self.proxy_host: str | None = params.get("proxy_host") or None
        self.proxy_port: int = int(params.get("proxy_port") or 80)
        self.si: t.Any = None
        self.content: t.Any = None
        self._vms: dict[str, dict[str, t.Any]] = {}  # MoID -> VM_PROPERTIES, from the last retrieval
        self._index: dict[str, dict[str, t.Any]] | None = None  # MoID -> ID_PROPERTIES (or more)
        self._listed = False  # whether _vms holds every VM

    # -- connection -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.hostname if self.port == 443 else f"{self.hostname}:{self.port}"

    def connect(self) -> None:
        if SmartConnect is None:  # the runner checks first; this guards direct use
            raise ConnectionFailed("The pyvmomi package is not installed: pip install pyvmomi.")
        if not self.hostname:
            raise ConnectionFailed("Failed to connect to vSphere: no hostname. Set the hostname option or the "
                                   "VMWARE_HOST environment variable to the vCenter or ESXi host.")
        validate = self.params.get("validate_certs", True)
        # pyVmomi silently skips verification for localhost/127.0.0.1 when given no context: always give one.
        context = ssl.create_default_context() if validate else None
        proxy = {"httpProxyHost": self.proxy_host, "httpProxyPort": self.proxy_port} if self.proxy_host else {}
        try:
            self.si = SmartConnect(host=self.hostname, port=self.port, user=self.params.get("username") or "",
                                   pwd=self.params.get("password") or "", sslContext=context,
                                   disableSslCertValidation=not validate,
                                   httpConnectionTimeout=int(self.params.get("connect_timeout") or 30), **proxy)
        except vim.fault.InvalidLogin as exc:
            raise ConnectionFailed(f"Failed to log in to vSphere host {self.host} as '{self.params.get('username')}': "
                                   f"{_fault_text(exc)}. Check username and password (VMWARE_USER, "
                                   f"VMWARE_PASSWORD).") from exc
        except ssl.SSLError as exc:
            raise ConnectionFailed(
                f"Failed to connect to vSphere host {self.host}: the TLS certificate was not accepted ({exc}). "
                f"Add the vCenter's CA to the trust store of the host that runs the module, or set "
                f"validate_certs: false if you accept the risk (lab use)."
            ) from exc
        except (OSError, vmodl.MethodFault) as exc:
            via = f" through proxy {self.proxy_host}:{self.proxy_port}" if self.proxy_host else ""
            check = " and proxy_host/proxy_port" if self.proxy_host else ""
            raise ConnectionFailed(f"Failed to connect to vSphere host {self.host}{via}: {_fault_text(exc)}. Check "
                                   f"hostname and port{check}, and that the vSphere API answers there.") from exc
        self.content = self.si.RetrieveContent()

    def close(self) -> None:
        if self.si is not None:
            try:
                # Logout through the content we hold: Disconnect() would fetch the service content once more.
                if self.content is not None:
                    self.content.sessionManager.Logout()
                else:
                    Disconnect(self.si)
            except (OSError, vmodl.MethodFault):
                pass
            self.si = None

    # -- retrieval --------------------------------------------------------------------------------

    def _root(self) -> t.Any:
        """The folder VMs are searched in: the datacenter/folder options, else the whole inventory."""
        datacenter, folder = self.params.get("datacenter"), self.params.get("folder")
        if not datacenter and not folder:
            return self.content.rootFolder
        index = self.content.searchIndex
        if folder and folder.startswith("/"):
            path = folder.strip("/")
        elif datacenter:
            path = f"{datacenter}/vm" + (f"/{folder.strip('/')}" if folder else "")
        else:
            raise InvalidArgument(f"folder '{folder}' is relative: give datacenter too, or a path from the root "
                                  f"such as '/DC0/vm/{folder}'.")
        found = index.FindByInventoryPath(path)
        if found is None:
            raise VmNotFound(f"Failed to find folder '{path}' on vSphere host {self.host}: it does not exist. Check "
                             f"the datacenter and folder options.")
        return found

    def _retrieve(self, objects: list[t.Any] | None, properties: list[str]) -> dict[str, dict[str, t.Any]]:
        """Read properties of the given VMs, or of every VM under the root (container view), in one request.

        Follows continuation tokens; returns MoID -> {property path: value, "_obj": the VM}.
        """
        pc = vmodl.query.PropertyCollector
        view = None
        found: dict[str, dict[str, t.Any]] = {}
        collector = self.content.propertyCollector
        try:
            if objects is None:
                view = self.content.viewManager.CreateContainerView(self._root(), [vim.VirtualMachine], True)
                try:
                    return vmware_fleet.retrieve(self._post, _moid(collector), _moid(view), properties, PAGE_SIZE)
                except (vmware_fleet.RawRetrievalError, OSError, http.client.HTTPException, ValueError, AttributeError):
                    pass  # pyVmomi reads it below, and reports a fault the way it always does
                object_set = [pc.ObjectSpec(obj=view, skip=True, selectSet=[
                    pc.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)])]
            else:
                object_set = [pc.ObjectSpec(obj=o, skip=False) for o in objects]
            spec = pc.FilterSpec(objectSet=object_set, propSet=[pc.PropertySpec(type=vim.VirtualMachine,
                                                                                pathSet=properties)])
            result = collector.RetrievePropertiesEx([spec], pc.RetrieveOptions(maxObjects=PAGE_SIZE))
            while result is not None:
                for content in result.objects or []:
                    props = {p.name: p.val for p in content.propSet or []}
                    props["_obj"] = content.obj
                    found[_moid(content.obj)] = props
                result = collector.ContinueRetrievePropertiesEx(result.token) if result.token else None
        except vmodl.fault.ManagedObjectNotFound as exc:
            raise VmNotFound(f"A VM disappeared from vSphere host {self.host} while it was read: "
                             f"{_fault_text(exc)}. Run again.") from exc
        except vmodl.MethodFault as exc:
            raise ProviderError(f"Failed to read VM properties on vmware host {self.host}: {_fault_text(exc)}") from exc
        finally:
            if view is not None:
                view.Destroy()
        return found

    def _post(self, body: bytes) -> bytes:
        """Send a SOAP body on pyVmomi's connection and session; return the answer (vmware_fleet parses it)."""
        stub = self.si._stub  # pylint: disable=protected-access
        headers = {"Cookie": stub.cookie, "SOAPAction": stub.versionId, "Content-Type": "text/xml; charset=UTF-8"}
        headers.update(getattr(stub, "_customHeaders", None) or {})
        conn = stub.GetConnection()
        try:
            conn.request("POST", stub.path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        stub.ReturnConnection(conn)
        if resp.status != 200:
            raise vmware_fleet.RawRetrievalError(f"HTTP {resp.status} {resp.reason}")
        return data

    def _list_all(self) -> dict[str, dict[str, t.Any]]:
        """Every VM with all of VM_PROPERTIES: one container view, one retrieval (plus continuations)."""
        if not self._listed:
            self._vms = self._retrieve(None, VM_PROPERTIES)
            self._index = self._vms
            self._listed = True
        return self._vms

    def _ids(self) -> dict[str, dict[str, t.Any]]:
        """Every VM with at least ID_PROPERTIES, for lookups: reuses a full listing when there is one."""
        if self._index is None:
            self._index = self._retrieve(None, ID_PROPERTIES)
        return self._index

    def _stale(self, vm: VmRef) -> None:
        """Forget what a write may have changed."""
        self._listed = False
        self._index = None
        self._vms.pop(vm.id, None)

    def _props(self, vm: VmRef, fresh: bool = False) -> dict[str, t.Any]:
        if fresh or vm.id not in self._vms:
            got = self._retrieve([vim.VirtualMachine(vm.id, self.si._stub)], VM_PROPERTIES)  # pylint: disable=protected-access
            if vm.id not in got:
                raise VmNotFound(f"VM '{vm.name}' ({vm.id}) is gone from vSphere host {self.host}.")
            self._vms[vm.id] = got[vm.id]
        return self._vms[vm.id]

    def _ref(self, moid: str, props: dict[str, t.Any]) -> VmRef:
        state = str(props.get("runtime.powerState") or "")
        return VmRef(id=moid, name=str(props.get("name") or moid), state=_STATES.get(state, state or "unknown"),
                     host=self.host)

    def _obj(self, vm: VmRef) -> t.Any:
        return vim.VirtualMachine(vm.id, self.si._stub)  # pylint: disable=protected-access

    # -- VMs --------------------------------------------------------------------------------------

    def find_vm(self, selector: VmSelector) -> VmRef:
        every = self._ids()
        if selector.id is not None:
            wanted = selector.id.lower()
            for moid, props in every.items():
                if wanted in (moid.lower(), str(props.get("config.uuid") or "").lower(),
                              str(props.get("config.instanceUuid") or "").lower()):
                    return self._ref(moid, props)
            raise VmNotFound(f"No VM with id '{selector.id}' on vSphere host {self.host} (searched {len(every)} "
                             f"VMs by MoID, BIOS UUID and instance UUID). Check vm_id and the datacenter/folder options.")
        matches = [(moid, props) for moid, props in every.items() if props.get("name") == selector.name]
        if len(matches) > 1:
            ids = ", ".join(sorted(m for m, _unused in matches))
            raise InvalidArgument(f"vSphere host {self.host} has {len(matches)} VMs named '{selector.name}' ({ids}). "
                                  f"Name the one you mean with vm_id, or narrow the search with datacenter/folder.")
        if not matches:
            names = [str(p.get("name")) for p in every.values()]
            close = difflib.get_close_matches(selector.name or "", names, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise VmNotFound(f"No VM '{selector.name}' on vSphere host {self.host}.{hint} It has {len(names)} VM(s) "
                             f"in the searched folder; check vm_name and the datacenter/folder options.")
        return self._ref(*matches[0])

    def list_vms(self) -> list[VmRef]:
        return sorted((self._ref(m, p) for m, p in self._list_all().items()), key=lambda v: (v.name, v.id))

    # -- snapshots --------------------------------------------------------------------------------

    def _snapshots_from(self, props: dict[str, t.Any]) -> list[Snapshot]:
        info = props.get("snapshot")
        if info is None:  # vSphere leaves snapshot unset, not empty, on a VM without snapshots
            return []
        files = [{"key": f.key, "size": f.size} for f in props.get("layoutEx.file") or []]
        layout = [{"key": _moid(s.key), "dataKey": s.dataKey, "memoryKey": s.memoryKey}
                  for s in props.get("layoutEx.snapshot") or []]
        current = _moid(info.currentSnapshot) if info.currentSnapshot is not None else None
        return snapshots_from_tree(_tree_dicts(info.rootSnapshotList), current, snapshot_sizes(files, layout))

    def list_snapshots(self, vm: VmRef) -> list[Snapshot]:
        return self._snapshots_from(self._props(vm))

    def _wait(self, task: t.Any, timeout: int, what: str) -> t.Any:
        """Wait for a vSphere task; return its result, raise the task's fault, or OperationTimeout."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            info = task.info
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                raise info.error
            if time.monotonic() > deadline:
                state = "it is still running on the host"
                if info.cancelable:
                    try:
                        task.CancelTask()
                        state = "cancellation was requested"
                    except vmodl.MethodFault as exc:
                        state = f"cancelling it failed too ({_fault_text(exc)})"
                raise OperationTimeout(
                    f"Timed out after {timeout} s waiting to {what} on vSphere host {self.host} (task {_moid(task)}, "
                    f"{info.progress or 0} %); {state}. Raise the timeout option if the host is slow, and check the "
                    f"VM's tasks in vCenter before retrying."
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _fail(self, verb: str, vm: VmRef, exc: BaseException) -> ProviderError:
        return ProviderError(f"Failed to {verb} of VM '{vm.name}' on vmware host {self.host}: {_fault_text(exc)}")

    def _run(self, start: t.Callable[[], t.Any], timeout: int, what: str, verb: str, vm: VmRef) -> t.Any:
        try:
            return self._wait(start(), timeout, what)
        except vmodl.MethodFault as exc:
            raise self._fail(verb, vm, exc) from exc
        finally:
            self._stale(vm)

    def create_snapshot(self, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
        running = vm.state == "running"
        warnings: list[str] = []
        memory = spec.memory and running
        quiesce = spec.quiesce and running and not memory
        if spec.memory and not running:
            warnings.append(f"VM '{vm.name}' is {vm.state}: there is no memory to save, so the snapshot holds disks only.")
        if spec.quiesce and spec.memory and running:
            warnings.append("quiesce is not applied with memory: true; the saved RAM state makes the snapshot "
                            "consistent already.")
        before = {s.id for s in self.list_snapshots(vm)}
        obj = self._obj(vm)
        consistency = "offline" if not running else "memory" if memory else "quiesced" if quiesce else "crash_consistent"

        def take(with_quiesce: bool) -> t.Any:
            try:
                return self._wait(obj.CreateSnapshot_Task(name=spec.name, description=spec.description,
                                                          memory=memory, quiesce=with_quiesce),
                                  timeout, f"create snapshot '{spec.name}' of VM '{vm.name}'")
            except OperationTimeout:
                self._cleanup_new(vm, spec.name, before)
                raise
            finally:
                self._stale(vm)

        try:
            created = take(quiesce)
        except vmodl.MethodFault as exc:
            self._cleanup_new(vm, spec.name, before)
            if not quiesce or (_fault_name(exc) not in _QUIESCE_FAULTS and "quiesc" not in _fault_text(exc).lower()):
                raise self._fail(f"create snapshot '{spec.name}'", vm, exc) from exc
            reason = _fault_text(exc)
            if spec.quiesce_fallback == "fail":
                raise QuiesceFailed(
                    f"Failed to quiesce VM '{vm.name}' for snapshot '{spec.name}' on vmware host {self.host}: {reason} "
                    f"No snapshot was taken. Install and start VMware Tools in the guest, or set quiesce_fallback: "
                    f"crash_consistent to accept a crash-consistent snapshot."
                ) from exc
            warnings.append(f"Could not quiesce VM '{vm.name}' ({reason}); took a crash-consistent snapshot instead "
                            f"because quiesce_fallback is crash_consistent.")
            consistency = "crash_consistent"
            try:
                created = take(False)
            except vmodl.MethodFault as exc2:
                self._cleanup_new(vm, spec.name, before)
                raise self._fail(f"create snapshot '{spec.name}'", vm, exc2) from exc2
        snaps = self.list_snapshots(vm)
        new_id = _moid(created) if created is not None else None
        snap = next((s for s in snaps if s.id == new_id), None)
        if snap is None:
            snap = next((s for s in snaps if s.id not in before and s.name == spec.name), None)
        if snap is None:
            raise SnapshotNotFound(f"Snapshot '{spec.name}' of VM '{vm.name}' was reported created by vSphere host "
                                   f"{self.host} but is not in its snapshot tree. Check the VM in vCenter.")
        for warning in warnings:
            self.warn(warning)
        return CreateResult(snapshot=snap, consistency=consistency, warnings=warnings)

    def _cleanup_new(self, vm: VmRef, name: str, before: set[str]) -> None:
        """Remove a snapshot a failed or timed-out create left behind, so nothing untracked remains."""
        try:
            left = [s for s in self._snapshots_from(self._props(vm, fresh=True)) if s.id not in before and s.name == name]
            for snap in left:
                self._wait(vim.vm.Snapshot(snap.id, self.si._stub).RemoveSnapshot_Task(  # pylint: disable=protected-access
                    removeChildren=False, consolidate=True), 600, f"remove the partial snapshot '{name}'")
                self.warn(f"Removed the partial snapshot '{name}' ({snap.id}) of VM '{vm.name}' after the failure.")
        except (vmodl.MethodFault, OperationTimeout, VmNotFound) as exc:
            self.warn(f"Snapshot '{name}' of VM '{vm.name}' may be left behind after the failure and could not be "
                      f"removed ({_fault_text(exc)}); remove it with vmsafe.protect.vm_snapshot state=absent.")
        finally:
            self._stale(vm)

    def _snapshot_obj(self, snapshot: Snapshot) -> t.Any:
        return vim.vm.Snapshot(snapshot.id, self.si._stub)  # pylint: disable=protected-access

    def revert_snapshot(self, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
        snap = self._snapshot_obj(snapshot)
        self._run(snap.RevertToSnapshot_Task, timeout, f"revert VM '{vm.name}' to '{snapshot.name}'",
                  f"revert to snapshot '{snapshot.name}' ({snapshot.id})", vm)

    def delete_snapshot(self, vm: VmRef, snapshot: Snapshot, children: bool, timeout: int) -> None:
        snap = self._snapshot_obj(snapshot)
        self._run(lambda: snap.RemoveSnapshot_Task(removeChildren=children, consolidate=True), timeout,
                  f"remove snapshot '{snapshot.name}' of VM '{vm.name}'",
                  f"remove snapshot '{snapshot.name}' ({snapshot.id})", vm)

    # -- consolidation ----------------------------------------------------------------------------

    def consolidation_status(self, vm: VmRef, snapshots: list[Snapshot] | None = None) -> ConsolidationStatus:
        props = self._props(vm)
        snaps = snapshots if snapshots is not None else self._snapshots_from(props)
        names = {f.key: (f.name, int(f.size or 0)) for f in props.get("layoutEx.file") or []}
        disks = []
        for disk in props.get("layoutEx.disk") or []:
            chain = [names.get(k, (str(k), 0))[0] for link in reversed(disk.chain or []) for k in link.fileKey[:1]]
            disks.append(Disk(target=str(disk.key), path=chain[0] if chain else "", format="vmdk", chain=chain,
                              allocation=sum(names.get(k, ("", 0))[1] for link in disk.chain or []
                                             for k in link.fileKey) or None))
        status = ConsolidationStatus(
            needed=False, disks=disks,
            chain_depth=max((len(d.chain) for d in disks), default=1 + max((s.depth for s in snaps), default=0)),
        )
        if props.get("runtime.consolidationNeeded"):
            status.leftovers.append(Leftover(
                kind="consolidation_needed", disk="all",
                detail="vSphere reports runtime.consolidationNeeded: delta disks of removed snapshots are still in "
                       "the chain (ConsolidateVMDisks merges them)"))
        status.reasons = [x.detail for x in status.leftovers]
        status.needed = bool(status.leftovers)
        return status

    def repair_leftover(self, vm: VmRef, leftover: Leftover, timeout: int) -> None:
        obj = self._obj(vm)
        self._run(obj.ConsolidateVMDisks_Task, timeout, f"consolidate the disks of VM '{vm.name}'",
                  "consolidate the disks", vm)

    # -- backups (snapshot + CBT + datastore HTTP; see vmware_backup) -----------------------------

    restore_format = "raw"  # vm_restore writes flat images, which define_restored_vm uploads

    @staticmethod
    def _backup_disks(config: t.Any) -> list[t.Any]:
        return [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]

    @staticmethod
    def _capacity(disk: t.Any) -> int:
        return int(disk.capacityInBytes or (disk.capacityInKB or 0) * 1024)

    def _datacenter(self, obj: t.Any) -> str:
        cursor = obj
        while cursor is not None and not isinstance(cursor, vim.Datacenter):
            cursor = cursor.parent
        if cursor is None:
            raise ProviderError(f"Could not find the datacenter of VM '{obj.name}' on vmware host {self.host}.")
        return cursor.name

    def _http(self) -> vmware_backup.DatastoreHttp:
        validate = self.params.get("validate_certs", True)
        context = ssl.create_default_context() if validate else ssl._create_unverified_context()  # pylint: disable=protected-access
        return _backups().DatastoreHttp(hostname=self.hostname, port=self.port,
                                        cookie=self.si._stub.cookie,  # pylint: disable=protected-access
                                        context=context, timeout=float(self.params.get("connect_timeout") or 30),
                                        proxy_host=self.proxy_host, proxy_port=self.proxy_port)

    def backup_base(self, vm: VmRef, last: dict[str, t.Any] | None) -> tuple[str | None, str]:
        if last is None:
            return None, "no earlier backup of this VM in the repository"
        obj = self._obj(vm)
        if not obj.config.changeTrackingEnabled:
            return None, "Changed Block Tracking is off on the VM (vm_backup turns it on; the next run is incremental)"
        try:
            ids = json.loads(last.get("checkpoint") or "")
        except ValueError:
            ids = None
        disks = self._backup_disks(obj.config)
        if not isinstance(ids, dict) or set(ids) != {str(d.key) for d in disks}:
            return None, f"the VM's disks changed ({', '.join(d.deviceInfo.label for d in disks)} now)"
        for disk in disks:
            before = last["disks"].get(disk.deviceInfo.label)
            if before is not None and before != self._capacity(disk):
                return None, f"{disk.deviceInfo.label} was resized from {before} to {self._capacity(disk)} bytes"
        return last["checkpoint"], "the change ids of the last backup are recorded for every disk"

    def backup_begin(self, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str) -> t.Any:
        obj = self._obj(vm)
        if not obj.config.changeTrackingEnabled:
            self._run(lambda: obj.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True)), 600,
                      f"turn on Changed Block Tracking of VM '{vm.name}'", "turn on Changed Block Tracking", vm)
            self.warn(f"Changed Block Tracking was off on VM '{vm.name}' and is now on: this backup reads every "
                      f"allocated area, the next ones only what changed.")
            since = None
        name = f"vmsafe-backup-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S%fZ}"
        created = self.create_snapshot(vm, SnapshotSpec(name=name, description="Taken by vmsafe.protect.vm_backup; "
                                                        "removed when the backup ends", memory=False, quiesce=quiesce,
                                                        quiesce_fallback=quiesce_fallback), 600)

        def remove() -> None:
            try:
                self.delete_snapshot(vm, created.snapshot, False, 600)
            except (ProviderError, OperationTimeout) as exc:
                self.warn(f"Could not remove the backup snapshot '{name}' of VM '{vm.name}': {exc}. Remove it with "
                          f"vmsafe.protect.vm_snapshot state=absent.")

        http = self._http()
        backups = _backups()
        try:
            snap = self._snapshot_obj(created.snapshot)
            config = snap.config
            datacenter = self._datacenter(obj)
            ids = json.loads(since) if since else {}

            def query(key: int, offset: int, change_id: str) -> t.Any:
                return obj.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=offset, changeId=change_id)

            disks = []
            stores = []
            for disk in self._backup_disks(config):
                backing = disk.backing
                if not backing.changeId:
                    raise ProviderError(f"{disk.deviceInfo.label} of VM '{vm.name}' has no change id in the backup "
                                        f"snapshot: Changed Block Tracking is not active on it (independent disk?).")
                datastore, _sep, path = backing.fileName.partition("] ")
                stores.append(datastore.lstrip("["))
                flat = path[:-len(".vmdk")] + "-flat.vmdk" if path.endswith(".vmdk") else path
                start = ids.get(str(disk.key), "*")
                if start != "*":
                    try:
                        query(disk.key, 0, start)
                    except vmodl.MethodFault as exc:
                        self.warn(f"Change id {start} of {disk.deviceInfo.label} is no longer valid "
                                  f"({_fault_text(exc)}); that disk is read in full this time.")
                        start = "*"
                disks.append(backups.VmwareDisk(
                    target=disk.deviceInfo.label, key=disk.key, size=self._capacity(disk),
                    url=backups.DatastoreHttp.url(datacenter, datastore.lstrip("["), flat),
                    change_id=backing.changeId, since=start, query=query, http=http))
            # the hardware (firmware, controllers, disk placement, network cards) a restore to a new VM rebuilds
            dc_obj = _restores().datacenter_of(vim, obj)
            groups = {net.key: net.name for net in dc_obj.network or []
                      if isinstance(net, vim.dvs.DistributedVirtualPortgroup)}
            definition = _restores().describe(vim, config, groups)
            definition.update({
                "name": obj.name, "guest_id": obj.config.guestId, "num_cpus": obj.config.hardware.numCPU,
                "memory_mb": obj.config.hardware.memoryMB, "datacenter": datacenter,
                "datastore": stores[0] if stores else None,
            })
        except (vmodl.MethodFault, ProviderError, ValueError) as exc:
            http.close()
            remove()
            if isinstance(exc, ProviderError):
                raise
            raise self._fail("read the backup snapshot", vm, exc) from exc
        return backups.VmwareBackupSession(
            vm=vm, checkpoint=backups.change_ids(disks), consistency=created.consistency,
            vm_definition=json.dumps(definition, sort_keys=True), disks=disks, remove_snapshot=remove, http=http)

    # -- restores (see vmware_restore) ------------------------------------------------------------

    restore_location = "remote"
    restore_options = frozenset({"keep_macs", "backup_id"})

    @property
    def sdk(self) -> tuple[t.Any, t.Any]:
        """pyVmomi's (vim, vmodl), for vmware_restore."""
        return vim, vmodl

    def obj(self, vm: VmRef) -> t.Any:
        return self._obj(vm)

    def http(self) -> vmware_backup.DatastoreHttp:
        return self._http()

    def wait(self, task: t.Any, timeout: int, what: str) -> t.Any:
        return self._wait(task, timeout, what)

    def run_task(self, start: t.Callable[[], t.Any], timeout: int, what: str, verb: str, vm: VmRef) -> t.Any:
        return self._run(start, timeout, what, verb, vm)

    @staticmethod
    def moid(obj: t.Any) -> str:
        return _moid(obj)

    def define_restored_vm(self, definition: str, name: str, disk_files: dict[str, tuple[str, str]],
                           start: bool, keep_macs: bool = False, backup_id: str = "") -> VmRef:
        """Upload the restored flat images and create a VM with the recorded hardware (new UUID; new MACs unless
        ``keep_macs``)."""
        return _restores().define(self, definition, name, disk_files, start, keep_macs, backup_id)

    def restored_from(self, vm: VmRef) -> str | None:
        return _restores().restored_from(self, vm)

    def vm_disks(self, vm: VmRef) -> dict[str, str]:
        return _restores().vm_disks(self, vm)

    def prepare_restore_in_place(self, vm: VmRef) -> None:
        _restores().check_shut_off(self, vm)

    def restore_paths(self, vm: VmRef, names: list[str], token: str) -> dict[str, str]:
        return _restores().restore_paths(self, vm, names, token)

    def restore_over_vm(self, vm: VmRef, disk_files: dict[str, str], paths: dict[str, str], timeout: int) -> None:
        _restores().restore_over(self, vm, disk_files, paths, timeout)

    @staticmethod
    def resource_pools(datacenter: t.Any) -> list[t.Any]:
        return VmwareProvider._resource_pools(datacenter)

    @staticmethod
    def _resource_pools(datacenter: t.Any) -> list[t.Any]:
        pools = []
        for entity in datacenter.hostFolder.childEntity:
            if hasattr(entity, "resourcePool") and entity.resourcePool is not None:
                pools.append(entity.resourcePool)
        return pools
