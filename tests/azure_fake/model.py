# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The state of the Azure fake: VMs, managed disks, snapshots and their pages, long-running operations, faults.

Rules taken from the Azure REST reference (DiskRP 2025-01-02, ComputeRP 2025-04-01) and the managed-disk docs,
as far as the collection relies on them:
- a managed disk or snapshot's content is a page blob of 512-byte pages; an incremental snapshot is a copy of the
  disk at that moment, in the disk's incremental family (the disk's uniqueId), and page-range diffs are only
  answered between two snapshots of one family;
- an OS disk may only be swapped while the VM is deallocated, by a disk with the same OS type, the
  same Hyper-V generation, in the VM's zone and region, that is not attached elsewhere; a disk attached to a VM
  cannot be deleted; a snapshot or disk being exported (an active SAS) cannot be deleted;
- long-running operations answer 202 (or 200/201 for VM updates) with Azure-AsyncOperation and Location headers and
  complete after a number of polls; their effect happens when they complete, and a failed one changes nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
import re
import threading
import typing as t
import uuid

PAGE = 512


class ArmError(Exception):
    """An ARM error answer: status, code, message (and headers such as Retry-After)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> dict[str, t.Any]:
        return {"error": {"code": self.code, "message": self.message}}


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


@dataclasses.dataclass
class Blob:
    """Pages of a disk or snapshot: page number -> (write version, 512 bytes); absent pages read as zeros."""

    size: int
    pages: dict[int, tuple[int, bytes]] = dataclasses.field(default_factory=dict)

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        first, last = offset // PAGE, (offset + length - 1) // PAGE
        if last - first > len(self.pages):
            items = ((n, p) for n, p in self.pages.items() if first <= n <= last)
        else:
            items = ((n, self.pages[n]) for n in range(first, last + 1) if n in self.pages)
        for number, (_ver, data) in items:
            start = number * PAGE
            lo, hi = max(start, offset), min(start + PAGE, offset + length)
            out[lo - offset:hi - offset] = data[lo - start:hi - start]
        return bytes(out)


@dataclasses.dataclass
class Op:
    """A long-running operation: ``action`` runs when it completes; an ArmError from it fails the operation."""

    id: str
    action: t.Callable[[], t.Any]
    polls_left: int
    status: str = "InProgress"
    error: dict[str, t.Any] | None = None
    result: t.Any = None
    fail: ArmError | None = None  # injected: the operation ends Failed with this error, changing nothing


@dataclasses.dataclass
class Fault:
    """An injected fault on requests whose ``"METHOD /path"`` matches ``pattern``."""

    pattern: str
    kind: str  # throttle | fail_op | error
    count: int = 1
    retry_after: int = 1
    status: int = 500
    code: str = "InternalServerError"
    message: str = "injected"


_versions = itertools.count(1)


class Cloud:
    """One subscription's Microsoft.Compute resources."""

    def __init__(self, subscription: str = "00000000-0000-0000-0000-0000000000aa", location: str = "westeurope",
                 client_id: str = "11111111-2222-3333-4444-555555555555", secret: str = "fake-Secret~1",
                 tenant: str = "22222222-3333-4444-5555-666666666666") -> None:
        self.lock = threading.RLock()
        self.subscription, self.location = subscription, location
        self.client_id, self.secret, self.tenant = client_id, secret, tenant
        self.tokens: set[str] = set()
        self.vms: dict[str, dict[str, t.Any]] = {}  # lower-case ARM id -> resource (with private "_power")
        self.disks: dict[str, dict[str, t.Any]] = {}
        self.snapshots: dict[str, dict[str, t.Any]] = {}
        self.blobs: dict[str, Blob] = {}  # lower-case ARM id -> pages
        self.sas: dict[str, tuple[str, str]] = {}  # signature -> (lower-case ARM id, access)
        self.ops: dict[str, Op] = {}
        self.faults: list[Fault] = []
        self.op_polls = 1  # InProgress answers before an operation completes
        self.retry_after = 0  # Retry-After on 202 answers and operation polls
        self.log: list[str] = []  # "METHOD /path" of every request
        self.throttled = 0
        self.bytes_served = 0  # disk bytes read through SAS URLs

    # -- ids ----------------------------------------------------------------------------------------

    def rid(self, group: str, kind: str, name: str) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{group}/providers/Microsoft.Compute/{kind}/{name}"

    @staticmethod
    def key(resource_id: str) -> str:
        return "/" + resource_id.strip("/").lower()

    def find(self, table: dict[str, dict[str, t.Any]], resource_id: str, what: str) -> dict[str, t.Any]:
        found = table.get(self.key(resource_id))
        if found is None:
            raise ArmError(404, "ResourceNotFound", f"The Resource '{resource_id.strip('/')}' was not found.")
        return found

    # -- seeding (what a test sets up) ---------------------------------------------------------------

    def add_disk(self, group: str, name: str, size_gb: int = 1, os_type: str | None = None, zones: list[str] | None = None,
                 sku: str = "Premium_LRS", encryption_set: str | None = None, generation: str = "V2",
                 size_bytes: int | None = None) -> dict[str, t.Any]:
        """A disk; ``size_bytes`` makes it smaller than Azure's 1 GiB minimum, to keep byte comparisons cheap."""
        disk_id = self.rid(group, "disks", name)
        size = size_bytes or size_gb * 1024 ** 3
        props: dict[str, t.Any] = {
            "creationData": {"createOption": "Empty"}, "diskSizeGB": size_gb, "diskSizeBytes": size,
            "uniqueId": str(uuid.uuid4()), "provisioningState": "Succeeded", "diskState": "Unattached",
            "timeCreated": now_iso(), "hyperVGeneration": generation,
            "encryption": ({"type": "EncryptionAtRestWithCustomerKey", "diskEncryptionSetId": encryption_set}
                           if encryption_set else {"type": "EncryptionAtRestWithPlatformKey"}),
        }
        if os_type:
            props["osType"] = os_type
        disk = {"id": disk_id, "name": name, "type": "Microsoft.Compute/disks", "location": self.location,
                "sku": {"name": sku, "tier": sku.split("_")[0]}, "properties": props, "tags": {}}
        if zones:
            disk["zones"] = list(zones)
        with self.lock:
            self.disks[self.key(disk_id)] = disk
            self.blobs[self.key(disk_id)] = Blob(size)
        return disk

    def add_vm(self, group: str, name: str, os_type: str = "Linux", data_luns: t.Sequence[int] = (0,), size_gb: int = 1,
               zones: list[str] | None = None, power: str = "running", encryption_set: str | None = None,
               size_bytes: int = 64 * 1024 * 1024) -> dict[str, t.Any]:
        os_disk = self.add_disk(group, f"{name}_OsDisk_1", size_gb, os_type=os_type, zones=zones,
                                encryption_set=encryption_set, size_bytes=size_bytes)
        data = [self.add_disk(group, f"{name}_DataDisk_{lun}", size_gb, zones=zones, encryption_set=encryption_set,
                              size_bytes=size_bytes) for lun in data_luns]
        vm_id = self.rid(group, "virtualMachines", name)
        vm = {
            "id": vm_id, "name": name, "type": "Microsoft.Compute/virtualMachines", "location": self.location,
            "tags": {},
            "properties": {
                "vmId": str(uuid.uuid4()), "hardwareProfile": {"vmSize": "Standard_B2s"},
                "storageProfile": {
                    "osDisk": {"osType": os_type, "name": os_disk["name"], "createOption": "FromImage",
                               "caching": "ReadWrite", "diskSizeGB": size_gb,
                               "managedDisk": {"id": os_disk["id"], "storageAccountType": "Premium_LRS"}},
                    "dataDisks": [{"lun": lun, "name": d["name"], "createOption": "Attach", "caching": "None",
                                   "diskSizeGB": size_gb, "managedDisk": {"id": d["id"], "storageAccountType": "Premium_LRS"}}
                                  for lun, d in zip(data_luns, data)],
                },
                "networkProfile": {"networkInterfaces": [
                    {"id": f"/subscriptions/{self.subscription}/resourceGroups/{group}/providers/Microsoft.Network/"
                           f"networkInterfaces/{name}-nic"}]},
                "provisioningState": "Succeeded", "timeCreated": now_iso(),
            },
            "_power": power,
        }
        if zones:
            vm["zones"] = list(zones)
        with self.lock:
            self.vms[self.key(vm_id)] = vm
            for disk in [os_disk] + data:
                self._attach(disk, vm)
        return vm

    def _attach(self, disk: dict[str, t.Any], vm: dict[str, t.Any] | None) -> None:
        if vm is None:
            disk.pop("managedBy", None)
            disk["properties"]["diskState"] = "Unattached"
        else:
            disk["managedBy"] = vm["id"]
            disk["properties"]["diskState"] = "Attached" if vm["_power"] == "running" else "Reserved"

    def write(self, disk_id: str, offset: int, data: bytes) -> None:
        """What the guest writes: 512-byte aligned."""
        assert offset % PAGE == 0 and len(data) % PAGE == 0, "writes are 512-byte aligned"
        blob = self.blobs[self.key(disk_id)]
        version = next(_versions)
        for i in range(0, len(data), PAGE):
            blob.pages[(offset + i) // PAGE] = (version, bytes(data[i:i + PAGE]))

    def read(self, disk_id: str, offset: int, length: int) -> bytes:
        return self.blobs[self.key(disk_id)].read(offset, length)

    def vm(self, group: str, name: str) -> dict[str, t.Any]:
        return self.find(self.vms, self.rid(group, "virtualMachines", name), "VM")

    def vm_disk_ids(self, vm: dict[str, t.Any]) -> dict[str, str]:
        profile = vm["properties"]["storageProfile"]
        found = {"os": profile["osDisk"]["managedDisk"]["id"]}
        found.update({f"lun{d['lun']}": d["managedDisk"]["id"] for d in profile["dataDisks"]})
        return found

    # -- faults ---------------------------------------------------------------------------------------

    def check_faults(self, line: str) -> Fault | None:
        """Raise for a throttle or error fault matching ``line``; return a fail_op fault for the caller."""
        with self.lock:
            for fault in self.faults:
                if fault.count > 0 and re.search(fault.pattern, line, re.IGNORECASE):
                    fault.count -= 1
                    if fault.kind == "throttle":
                        self.throttled += 1
                        raise ArmError(429, "TooManyRequests",
                                       "The request is being throttled as the limit has been reached for operation "
                                       "type - Write_30Min. For more information, see https://aka.ms/throttling.",
                                       {"Retry-After": str(fault.retry_after)})
                    if fault.kind == "error":
                        raise ArmError(fault.status, fault.code, fault.message)
                    return fault
        return None

    # -- long-running operations ------------------------------------------------------------------

    def start_op(self, action: t.Callable[[], t.Any], fault: Fault | None) -> Op:
        op = Op(id=str(uuid.uuid4()), action=action, polls_left=self.op_polls)
        if fault is not None:
            op.fail = ArmError(500, fault.code, fault.message)
        with self.lock:
            self.ops[op.id] = op
        return op

    def poll(self, op_id: str) -> Op:
        with self.lock:
            op = self.ops.get(op_id)
            if op is None:
                raise ArmError(404, "NotFound", f"Operation {op_id} was not found.")
            if op.status == "InProgress":
                if op.polls_left > 0:
                    op.polls_left -= 1
                else:
                    self._complete(op)
            return op

    def _complete(self, op: Op) -> None:
        try:
            if op.fail is not None:
                raise op.fail
            op.result = op.action()
            op.status = "Succeeded"
        except ArmError as exc:
            op.status = "Failed"
            op.error = exc.body()["error"]

    # -- disks and snapshots ----------------------------------------------------------------------

    def put_snapshot(self, snap_id: str, body: dict[str, t.Any]) -> tuple[dict[str, t.Any], t.Callable[[], t.Any]]:
        """Validate a snapshot PUT now; return (the resource as it is while created, what completes it)."""
        props = body.get("properties") or {}
        data = props.get("creationData") or {}
        option = data.get("createOption")
        if option not in ("Copy", "CopyStart"):
            raise ArmError(400, "InvalidParameter", f"createOption '{option}' is not supported by this fake.")
        source_id = data.get("sourceResourceId") or ""
        source_table = self.snapshots if "/snapshots/" in source_id.lower() else self.disks
        source = self.find(source_table, source_id, "source")
        location = body.get("location") or self.location
        if option == "Copy" and location.replace(" ", "").lower() != source["location"].replace(" ", "").lower():
            raise ArmError(409, "BadRequest", f"The source '{source_id}' is in region {source['location']}; a copy to "
                                              f"{location} needs createOption CopyStart.")
        if option == "CopyStart" and not source["properties"].get("incremental"):
            raise ArmError(400, "BadRequest", "CopyStart needs an incremental snapshot as its source.")
        name = snap_id.rstrip("/").rsplit("/", 1)[1]
        sprops = source["properties"]
        family = sprops.get("incrementalSnapshotFamilyId") if source_table is self.snapshots else sprops["uniqueId"]
        snap = {
            "id": snap_id, "name": name, "type": "Microsoft.Compute/snapshots", "location": location,
            "tags": dict(body.get("tags") or {}), "sku": {"name": "Standard_ZRS", "tier": "Standard"},
            "properties": {
                "creationData": {"createOption": option, "sourceResourceId": source_id,
                                 "sourceUniqueId": sprops["uniqueId"]},
                "incremental": bool(props.get("incremental")), "diskSizeGB": sprops["diskSizeGB"],
                "diskSizeBytes": sprops["diskSizeBytes"], "uniqueId": str(uuid.uuid4()),
                "encryption": copy.deepcopy(sprops.get("encryption")), "hyperVGeneration": sprops.get("hyperVGeneration"),
                "provisioningState": "Updating", "diskState": "Unattached",
            },
        }
        if sprops.get("osType"):
            snap["properties"]["osType"] = sprops["osType"]
        if snap["properties"]["incremental"]:
            snap["properties"]["incrementalSnapshotFamilyId"] = family
        if option == "CopyStart":
            snap["properties"]["completionPercent"] = 0.0
        pages = dict(self.blobs[self.key(source_id)].pages)
        size = sprops["diskSizeBytes"]

        def complete() -> None:
            with self.lock:
                snap["properties"].update(provisioningState="Succeeded", timeCreated=now_iso())
                if option == "CopyStart":
                    snap["properties"]["completionPercent"] = 100.0
                self.snapshots[self.key(snap_id)] = snap
                self.blobs[self.key(snap_id)] = Blob(size, pages)
        return snap, complete

    def put_disk(self, disk_id: str, body: dict[str, t.Any]) -> tuple[dict[str, t.Any], t.Callable[[], t.Any]]:
        props = body.get("properties") or {}
        data = props.get("creationData") or {}
        option = data.get("createOption")
        name = disk_id.rstrip("/").rsplit("/", 1)[1]
        location = body.get("location") or self.location
        new: dict[str, t.Any] = {"provisioningState": "Updating", "uniqueId": str(uuid.uuid4()), "timeCreated": now_iso(),
                                 "creationData": dict(data), "hyperVGeneration": props.get("hyperVGeneration") or "V2"}
        pages: dict[int, tuple[int, bytes]] = {}
        if option == "Copy":
            source_id = data.get("sourceResourceId") or ""
            source = self.find(self.snapshots if "/snapshots/" in source_id.lower() else self.disks, source_id, "source")
            if location.replace(" ", "").lower() != source["location"].replace(" ", "").lower():
                raise ArmError(409, "BadRequest", f"Source '{source_id}' is in region {source['location']}, the disk "
                                                  f"in {location}: copy the snapshot to that region first (CopyStart).")
            sprops = source["properties"]
            if sprops.get("provisioningState") != "Succeeded" or sprops.get("completionPercent", 100.0) < 100.0:
                raise ArmError(409, "OperationNotAllowed", f"Source '{source_id}' is not ready (copy in progress).")
            new.update(diskSizeGB=sprops["diskSizeGB"], diskSizeBytes=sprops["diskSizeBytes"],
                       hyperVGeneration=sprops.get("hyperVGeneration") or "V2", diskState="Unattached")
            if sprops.get("osType"):
                new["osType"] = sprops["osType"]
            pages = dict(self.blobs[self.key(source_id)].pages)
            new["encryption"] = props.get("encryption") or copy.deepcopy(sprops.get("encryption"))
        elif option == "Upload":
            upload = int(props.get("uploadSizeBytes") or 0)
            if upload < 20 * 1024 * 1024 + PAGE or (upload - PAGE) % (1024 * 1024):
                raise ArmError(400, "InvalidParameter", "uploadSizeBytes must be a whole number of MiB (at least 20 "
                                                        "MiB) plus 512 bytes for the VHD footer.")
            new.update(diskSizeBytes=upload - PAGE, diskSizeGB=-(-(upload - PAGE) // 1024 ** 3),
                       diskState="ReadyToUpload", encryption={"type": "EncryptionAtRestWithPlatformKey"})
            if props.get("osType"):
                new["osType"] = props["osType"]
        elif option == "Empty":
            size_gb = int(props.get("diskSizeGB") or 1)
            new.update(diskSizeGB=size_gb, diskSizeBytes=size_gb * 1024 ** 3, diskState="Unattached",
                       encryption=props.get("encryption") or {"type": "EncryptionAtRestWithPlatformKey"})
        else:
            raise ArmError(400, "InvalidParameter", f"createOption '{option}' is not supported by this fake.")
        disk = {"id": disk_id, "name": name, "type": "Microsoft.Compute/disks", "location": location,
                "tags": dict(body.get("tags") or {}), "sku": dict(body.get("sku") or {"name": "Premium_LRS"}),
                "properties": new}
        if body.get("zones"):
            disk["zones"] = list(body["zones"])
        size = new["diskSizeBytes"]

        def complete() -> None:
            with self.lock:
                new["provisioningState"] = "Succeeded"
                self.disks[self.key(disk_id)] = disk
                self.blobs[self.key(disk_id)] = Blob(size, pages)
        return disk, complete

    def delete(self, table: dict[str, dict[str, t.Any]], resource_id: str) -> t.Callable[[], t.Any] | None:
        """Validate a delete; None when there is nothing to delete (204)."""
        found = table.get(self.key(resource_id))
        if found is None:
            return None
        if found.get("managedBy"):
            raise ArmError(409, "OperationNotAllowed", f"Disk {found['name']} is attached to VM {found['managedBy']}.")
        if any(key == self.key(resource_id) for key, _access in self.sas.values()):
            raise ArmError(409, "OperationNotAllowed", f"{found['name']} has an active SAS; revoke access first.")

        def complete() -> None:
            with self.lock:
                table.pop(self.key(resource_id), None)
                self.blobs.pop(self.key(resource_id), None)
        return complete

    def grant(self, table: dict[str, dict[str, t.Any]], resource_id: str, body: dict[str, t.Any],
              base: str) -> t.Callable[[], t.Any]:
        found = self.find(table, resource_id, "resource")
        access = body.get("access") or "Read"
        state = found["properties"].get("diskState")
        if table is self.disks:
            if access == "Write" and state != "ReadyToUpload":
                raise ArmError(409, "OperationNotAllowed", f"Disk {found['name']} is not ready to upload.")
            if access == "Read" and found.get("managedBy") and state == "Attached":
                raise ArmError(409, "OperationNotAllowed", f"Disk {found['name']} is attached to a running VM.")
        signature = uuid.uuid4().hex
        kind = "snapshots" if table is self.snapshots else "disks"

        def complete() -> dict[str, t.Any]:
            with self.lock:
                self.sas[signature] = (self.key(resource_id), access)
                found["properties"]["diskState"] = "ActiveUpload" if access == "Write" else "ActiveSAS"
            expiry = (datetime.datetime.now(datetime.timezone.utc)
                      + datetime.timedelta(seconds=int(body.get("durationInSeconds") or 3600)))
            return {"accessSAS": f"{base}/md-{kind}/{found['properties']['uniqueId']}/abcd?sv=2018-03-28&sr=b"
                                 f"&se={expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}&sp={access[0].lower()}&sig={signature}"}
        return complete

    def revoke(self, table: dict[str, dict[str, t.Any]], resource_id: str) -> t.Callable[[], t.Any]:
        found = self.find(table, resource_id, "resource")

        def complete() -> None:
            with self.lock:
                for signature, (key, _access) in list(self.sas.items()):
                    if key == self.key(resource_id):
                        del self.sas[signature]
                props = found["properties"]
                if props.get("diskState") in ("ActiveSAS", "ActiveUpload", "ReadyToUpload"):
                    props["diskState"] = "Unattached"
        return complete

    # -- VMs ----------------------------------------------------------------------------------------

    def power(self, vm: dict[str, t.Any], action: str) -> t.Callable[[], t.Any]:
        state = {"start": "running", "deallocate": "deallocated", "powerOff": "stopped", "restart": "running"}[action]

        def complete() -> None:
            with self.lock:
                vm["_power"] = state
                for disk_id in self.vm_disk_ids(vm).values():
                    disk = self.disks.get(self.key(disk_id))
                    if disk is not None:
                        self._attach(disk, vm)
        return complete

    def patch_vm(self, vm: dict[str, t.Any], body: dict[str, t.Any]) -> t.Callable[[], t.Any]:
        """Validate a VM update as Azure does; return what applies it."""
        props = body.get("properties") or {}
        profile = props.get("storageProfile")
        tags = body.get("tags")
        changes: list[tuple[str, dict[str, t.Any]]] = []  # (slot, new disk)
        new_profile = copy.deepcopy(vm["properties"]["storageProfile"])
        if profile is not None:
            current = vm["properties"]["storageProfile"]
            if "osDisk" in profile:
                wanted = (profile["osDisk"].get("managedDisk") or {}).get("id")
                if wanted and self.key(wanted) != self.key(current["osDisk"]["managedDisk"]["id"]):
                    if vm["_power"] != "deallocated":
                        raise ArmError(409, "OperationNotAllowed", "The OS disk of a VM can only be swapped while the "
                                                                   "VM is stopped (deallocated).")
                    disk = self.find(self.disks, wanted, "disk")
                    self._check_swap(vm, disk, os_type=current["osDisk"].get("osType"))
                    changes.append(("os", disk))
                    new_profile["osDisk"]["managedDisk"]["id"] = disk["id"]
                    new_profile["osDisk"]["name"] = disk["name"]
            if "dataDisks" in profile:
                by_lun = {d["lun"]: d for d in current["dataDisks"]}
                result = []
                for entry in profile["dataDisks"]:
                    wanted = (entry.get("managedDisk") or {}).get("id")
                    old = by_lun.get(entry["lun"])
                    if wanted and (old is None or self.key(wanted) != self.key(old["managedDisk"]["id"])):
                        disk = self.find(self.disks, wanted, "disk")
                        self._check_swap(vm, disk, os_type=None)
                        changes.append((f"lun{entry['lun']}", disk))
                        blank = {"lun": entry["lun"], "caching": "None", "createOption": "Attach", "managedDisk": {}}
                        new = copy.deepcopy(old) if old else blank
                        new["managedDisk"]["id"] = disk["id"]
                        new["name"] = disk["name"]
                        result.append(new)
                    elif old is not None:
                        result.append(copy.deepcopy(old))
                new_profile["dataDisks"] = result

        def complete() -> None:
            with self.lock:
                old_ids = set(self.key(i) for i in self.vm_disk_ids(vm).values())
                vm["properties"]["storageProfile"] = new_profile
                if tags is not None:
                    vm["tags"] = dict(tags)
                new_ids = set(self.key(i) for i in self.vm_disk_ids(vm).values())
                for key in old_ids - new_ids:
                    if key in self.disks:
                        self._attach(self.disks[key], None)
                for key in new_ids:
                    if key in self.disks:
                        self._attach(self.disks[key], vm)
                vm["properties"]["provisioningState"] = "Succeeded"
        return complete

    def put_vm(self, vm_id: str, body: dict[str, t.Any]) -> tuple[dict[str, t.Any], t.Callable[[], t.Any]]:
        """Create a VM on existing managed disks (createOption Attach)."""
        props = copy.deepcopy(body.get("properties") or {})
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not nics:
            raise ArmError(400, "InvalidParameter", "A VM needs at least one network interface (networkProfile).")
        for nic in nics:
            for other in self.vms.values():
                used = [n["id"].lower() for n in other["properties"]["networkProfile"]["networkInterfaces"]]
                if nic["id"].lower() in used:
                    raise ArmError(400, "NicInUse", f"Network interface {nic['id']} is used by VM {other['id']}.")
        vm = {"id": vm_id, "name": vm_id.rsplit("/", 1)[1], "type": "Microsoft.Compute/virtualMachines",
              "location": body.get("location") or self.location, "tags": dict(body.get("tags") or {}),
              "properties": props, "_power": "running"}
        if body.get("zones"):
            vm["zones"] = list(body["zones"])
        profile = props["storageProfile"]
        disks = [self.find(self.disks, profile["osDisk"]["managedDisk"]["id"], "disk")]
        self._check_swap(vm, disks[0], os_type=profile["osDisk"].get("osType"))
        for entry in profile.get("dataDisks") or []:
            disks.append(self.find(self.disks, entry["managedDisk"]["id"], "disk"))
            self._check_swap(vm, disks[-1], os_type=None)
        props.update(vmId=str(uuid.uuid4()), provisioningState="Creating", timeCreated=now_iso())

        def complete() -> None:
            with self.lock:
                props["provisioningState"] = "Succeeded"
                self.vms[self.key(vm_id)] = vm
                for disk in disks:
                    self._attach(disk, vm)
        return vm, complete

    def _check_swap(self, vm: dict[str, t.Any], disk: dict[str, t.Any], os_type: str | None) -> None:
        if disk["properties"].get("diskState") in ("ReadyToUpload", "ActiveUpload", "ActiveSAS"):
            raise ArmError(409, "OperationNotAllowed", f"Disk {disk['name']} is {disk['properties']['diskState']}.")
        if disk.get("managedBy") and self.key(disk["managedBy"]) != self.key(vm["id"]):
            raise ArmError(409, "OperationNotAllowed", f"Disk {disk['name']} is attached to VM {disk['managedBy']}.")
        if disk["location"].replace(" ", "").lower() != vm["location"].replace(" ", "").lower():
            raise ArmError(409, "BadRequest", f"Disk {disk['name']} is in {disk['location']}, the VM in {vm['location']}.")
        if sorted(disk.get("zones") or []) != sorted(vm.get("zones") or []):
            raise ArmError(409, "BadRequest",
                           f"Disk {disk['name']} is in zone(s) {disk.get('zones') or 'none'} but VM {vm['name']} is in "
                           f"zone(s) {vm.get('zones') or 'none'}: a disk must be in the VM's zone to be attached.")
        if os_type is not None:
            if disk["properties"].get("osType") != os_type:
                raise ArmError(409, "OperationNotAllowed",
                               f"The OS type of disk {disk['name']} ({disk['properties'].get('osType') or 'none'}) does "
                               f"not match the OS type of VM {vm['name']} ({os_type}).")

    def instance_view(self, vm: dict[str, t.Any]) -> dict[str, t.Any]:
        power = vm["_power"]
        return {"statuses": [
            {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"},
            {"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"}]}

    def public(self, resource: dict[str, t.Any]) -> dict[str, t.Any]:
        return {k: copy.deepcopy(v) for k, v in resource.items() if not k.startswith("_")}
