# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Azure backups: an incremental snapshot set, read through time-limited SAS URLs, diffs from the page ranges.

One run: ``backup_begin`` takes a snapshot set tagged ``vmsafe-purpose: backup`` (not listed as a snapshot), and opens
a read SAS on each snapshot (BeginGetAccess). A full backup reads the pages Azure reports as written
(``list_page_ranges``); an incremental opens a SAS on the previous backup's snapshot of the same disk too and reads
only what ``get_page_range_diff_for_managed_disk`` reports changed between the two (cleared ranges become zeros).
Page lists are asked window by window, so a large fragmented disk never needs one huge answer. ``close`` revokes
every SAS (EndGetAccess), then drops the previous backup set on success - the new one is the next incremental's
base - or the new set on failure, so the previous base stays valid.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    OperationTimeout,
    ProviderError,
    QuiesceFailed,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure as az

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef

READ_PIECE = 4 * 1024 * 1024  # bytes per ranged GET (and per page upload: Azure's maximum)
DIFF_WINDOW = 4 * 1024 ** 3  # bytes of the disk asked per page-list call
SAS_SECONDS = 6 * 3600
BEGIN_SECONDS = 3600  # taking the backup set and opening its SAS URLs
blob = None  # azure.storage.blob, imported by _blob_sdk()


def _blob_sdk() -> t.Any:
    global blob  # pylint: disable=global-statement
    if blob is None:
        try:
            from azure.storage import blob  # pylint: disable=redefined-outer-name,import-outside-toplevel
        except ImportError as exc:
            raise ProviderError("Backups on Azure need azure-storage-blob: pip install azure-storage-blob.") from exc
    return blob


def backup_base(p: az.AzureProvider, vm: VmRef, last: dict[str, t.Any] | None) -> tuple[str | None, str]:
    """(set id of the last backup to diff against, why) or (None, why a full backup is needed)."""
    if last is None:
        return None, "no earlier backup of this VM in the repository"
    point = last.get("checkpoint")
    members = p.set_members(vm, purpose="backup").get(point or "", [])
    if not point or not members:
        return None, f"the snapshot set of the last backup ({point or 'none'}) is gone (a failed run, or removed by hand)"
    slots = p.vm_slots(p.vm_model(vm))
    by_slot = {(m.tags or {}).get(az.TAG_DISK): m for m in members}
    if set(slots) != set(last.get("disks", {})) or set(slots) != set(by_slot):
        return None, f"the VM's disks changed ({', '.join(sorted(slots))} now)"
    for slot, disk in slots.items():
        snap = by_slot[slot]
        if not az.same_id(snap.creation_data.source_resource_id, disk.managed_disk.id):
            return None, (f"disk {slot} is another managed disk than at the last backup ({disk.name}: a revert or a "
                          f"swap), so Azure has no page diff to it")
        if int(snap.disk_size_bytes or 0) != int(last["disks"][slot]):
            return None, f"disk {slot} was resized from {last['disks'][slot]} to {snap.disk_size_bytes} bytes"
    return point, f"snapshot set {point} of the last backup is intact"


@dataclasses.dataclass
class AzureDisk:
    """One snapshot of the backup set, read through its SAS."""

    target: str
    size: int
    sas: str
    previous_sas: str | None
    verify: t.Any
    stopped: threading.Event

    def client(self) -> t.Any:
        return _blob_sdk().BlobClient.from_blob_url(self.sas, connection_verify=self.verify, max_single_get_size=READ_PIECE)

    def ranges(self, client: t.Any) -> list[tuple[int, int, bool]]:
        """(offset, length, is_data) to store, sorted: written pages, and cleared ones (zeros) for an incremental."""
        found: list[tuple[int, int, bool]] = []
        for start in range(0, self.size, DIFF_WINDOW):
            length = min(DIFF_WINDOW, self.size - start)
            if self.previous_sas:
                pages, cleared = client.get_page_range_diff_for_managed_disk(self.previous_sas, offset=start,
                                                                             length=length)
            else:
                pages, cleared = [{"start": r.start, "end": r.end} for r in
                                  client.list_page_ranges(offset=start, length=length)], []
            found += [(r["start"], r["end"] - r["start"] + 1, True) for r in pages]
            found += [(r["start"], r["end"] - r["start"] + 1, False) for r in cleared]
        clipped = []
        for offset, length, data in sorted(found):
            length = min(length, self.size - offset)  # the export's last page is the VHD footer, not disk data
            if length > 0:
                clipped.append((offset, length, data))
        return clipped

    def extents(self) -> t.Iterator[tuple[int, int, bytes]]:
        client = self.client()
        try:
            for offset, length, data in self.ranges(client):
                end = offset + length
                while offset < end:
                    if self.stopped.is_set():
                        raise ProviderError(f"The backup of disk {self.target} was aborted.")
                    step = min(READ_PIECE, end - offset)
                    piece = client.download_blob(offset=offset, length=step).readall() if data else bytes(step)
                    if len(piece) != step:
                        raise ProviderError(f"Reading disk {self.target} at {offset} returned {len(piece)} bytes "
                                            f"instead of {step}.")
                    yield offset, step, piece
                    offset += step
        finally:
            client.close()


@dataclasses.dataclass
class AzureBackupSession:
    """An open Azure backup: the new backup set and the SAS URLs opened on it (and on the previous set)."""

    provider: az.AzureProvider
    vm: VmRef
    checkpoint: str  # the new backup set's id
    previous: str | None
    consistency: str
    vm_definition: str
    disks: list[AzureDisk]
    new_ids: list[str]
    previous_ids: list[str]
    opened: list[str]  # snapshot ids with an open SAS
    stopped: threading.Event
    done: bool = False

    def abort(self) -> None:
        self.stopped.set()

    def close(self, success: bool) -> None:
        if self.done:
            return
        self.done = True
        p = self.provider
        deadline = time.monotonic() + BEGIN_SECONDS
        try:
            p.wait([p.begin(f"revoke the SAS of {az.parse_id(i)['name']}", p.client.snapshots.begin_revoke_access,
                            az.parse_id(i)["group"], az.parse_id(i)["name"]) for i in self.opened], deadline)
        except (ProviderError, OperationTimeout) as exc:
            p.warn(f"Could not revoke the read SAS of the backup snapshots of VM '{self.vm.name}': {exc} They expire "
                   f"by themselves after {SAS_SECONDS // 3600} h.")
        doomed = self.previous_ids if success else self.new_ids
        if doomed:
            try:
                p.delete_set(self.vm, doomed, f"remove backup snapshot set of VM '{self.vm.name}'", deadline)
            except (ProviderError, OperationTimeout) as exc:
                p.warn(f"Could not remove the {'previous' if success else 'new'} backup snapshot set of VM "
                       f"'{self.vm.name}': {exc} Remove the snapshots tagged vmsafe-purpose=backup by hand.")


def _grant(p: az.AzureProvider, ids: list[str], deadline: float) -> list[str]:
    pollers = [p.begin(f"open a read SAS on snapshot {az.parse_id(i)['name']}", p.client.snapshots.begin_grant_access,
                       az.parse_id(i)["group"], az.parse_id(i)["name"],
                       {"access": "Read", "durationInSeconds": SAS_SECONDS}) for i in ids]
    return [r.access_sas for r in p.wait(pollers, deadline)]


def backup_begin(p: az.AzureProvider, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str) -> t.Any:
    running = vm.state == "running"
    if quiesce and running:
        if quiesce_fallback == "fail":
            raise QuiesceFailed(f"Failed to back up VM '{vm.name}' on azure host {p.host}: application-consistent "
                                f"backups (restore points) are not supported by this collection yet. Set "
                                f"quiesce_fallback=crash_consistent.")
        p.warn("Application-consistent backups (restore points) are not supported yet; the backup is crash consistent.")
    deadline = time.monotonic() + BEGIN_SECONDS
    set_id = p.new_set_id()
    tags = {az.TAG_SET: "vmsafe-backup", az.TAG_PURPOSE: "backup", az.TAG_TIME: az.datetime.datetime.now(
        az.datetime.timezone.utc).isoformat(), az.TAG_STATE: vm.state}
    members = p.snapshot_disks(vm, tags, set_id, deadline, "take the backup snapshots")
    new_ids = [m.id for m in members]
    opened: list[str] = []
    stopped = threading.Event()
    session = AzureBackupSession(provider=p, vm=vm, checkpoint=set_id, previous=since,
                                 consistency="crash_consistent" if running else "offline",
                                 vm_definition=json.dumps(p.vm_model(vm).as_dict(), sort_keys=True, default=str),
                                 disks=[], new_ids=new_ids, previous_ids=[], opened=opened, stopped=stopped)
    try:
        previous = {}
        if since:
            old = p.set_members(vm, purpose="backup").get(since, [])
            previous = {(m.tags or {}).get(az.TAG_DISK): m for m in old}
            session.previous_ids = [m.id for m in old]
        slots = [(m.tags or {}).get(az.TAG_DISK) for m in members]
        sas = _grant(p, new_ids, deadline)
        opened.extend(new_ids)
        prev_ids = [previous[s].id for s in slots] if since else []
        prev_sas = _grant(p, prev_ids, deadline) if since else [None] * len(slots)
        opened.extend(prev_ids)
        session.disks = [AzureDisk(target=str(slot), size=int(m.disk_size_bytes), sas=url, previous_sas=prev,
                                   verify=p.verify, stopped=stopped)
                         for slot, m, url, prev in zip(slots, members, sas, prev_sas)]
    except BaseException:
        session.close(False)
        raise
    return session


# -- restore to new managed disks ---------------------------------------------------------------------

def vhd_footer(size: int) -> bytes:
    """The 512-byte footer of a fixed VHD of ``size`` data bytes (what Azure's disk upload expects last)."""
    import struct  # pylint: disable=import-outside-toplevel

    cylinders, heads, sectors = _geometry(size // 512)
    fields = struct.pack(">8sIIQI4sI4sQQHBBII16sB", b"conectix", 2, 0x00010000, 0xFFFFFFFFFFFFFFFF, 0, b"vmsf",
                         0x000A0000, b"Wi2k", size, size, cylinders, heads, sectors, 2, 0, b"\0" * 16, 0)
    footer = bytearray(fields.ljust(512, b"\0"))
    footer[64:68] = struct.pack(">I", (~sum(footer) & 0xFFFFFFFF))
    return bytes(footer)


def _geometry(total: int) -> tuple[int, int, int]:
    """CHS geometry of the VHD specification's algorithm."""
    total = min(total, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        sectors, heads = 255, 16
        cyl_heads = total // sectors
    else:
        sectors = 17
        cyl_heads = total // sectors
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            sectors, heads = 31, 16
            cyl_heads = total // sectors
        if cyl_heads >= heads * 1024:
            sectors, heads = 63, 16
            cyl_heads = total // sectors
    return cyl_heads // heads, heads, sectors


def upload_disk(p: az.AzureProvider, group: str, location: str, name: str, path: str, os_type: str | None,
                zones: list[str] | None, deadline: float) -> t.Any:
    """Create managed disk ``name`` from the raw image ``path`` (upload of a fixed VHD); return its model."""
    import os  # pylint: disable=import-outside-toplevel

    size = os.path.getsize(path)
    mib = 1024 * 1024
    padded = max(20 * mib, -(-size // mib) * mib)  # Azure takes whole MiB, at least 20
    props: dict[str, t.Any] = {"creationData": {"createOption": "Upload"}, "uploadSizeBytes": padded + 512}
    if os_type:
        props["osType"] = os_type
    body: dict[str, t.Any] = {"location": location, "sku": {"name": "Premium_LRS"}, "properties": props,
                              "tags": {"vmsafe-restored-from": os.path.basename(path)}}
    if zones:
        body["zones"] = list(zones)
    p.wait([p.begin(f"create disk {name} for upload", p.client.disks.begin_create_or_update, group, name, body)], deadline)
    url = p.wait([p.begin(f"open a write SAS on disk {name}", p.client.disks.begin_grant_access, group, name,
                          {"access": "Write", "durationInSeconds": SAS_SECONDS})], deadline)[0].access_sas
    client = _blob_sdk().BlobClient.from_blob_url(url, connection_verify=p.verify)
    try:
        with open(path, "rb") as image:
            offset = 0
            while True:
                piece = image.read(READ_PIECE)
                if not piece:
                    break
                if len(piece) % 512:
                    piece += bytes(512 - len(piece) % 512)
                if piece.strip(b"\0"):  # a new disk reads as zeros: send only what is not
                    client.upload_page(piece, offset=offset, length=len(piece))
                offset += len(piece)
        client.upload_page(vhd_footer(padded), offset=padded, length=512)
    except Exception:
        p.wait([p.begin(f"close the upload of disk {name}", p.client.disks.begin_revoke_access, group, name)], deadline)
        raise
    finally:
        client.close()
    p.wait([p.begin(f"close the upload of disk {name}", p.client.disks.begin_revoke_access, group, name)], deadline)
    return p.call(f"read disk {name}", p.client.disks.get, group, name)


def define_restored_vm(p: az.AzureProvider, definition: str, name: str, disk_files: dict[str, tuple[str, str]],
                       start: bool) -> t.Any:
    """Upload each restored disk to a new managed disk and create VM ``name`` on them (same size, region, zone)."""
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmSelector  # pylint: disable=import-outside-toplevel

    source = json.loads(definition)
    group = p.group or az.parse_id(source["id"])["group"]
    location, zones = source["location"], source.get("zones")
    profile = source["properties"]["storageProfile"]
    deadline = time.monotonic() + 6 * 3600
    made = {}
    for slot, (path, _fmt) in sorted(disk_files.items()):
        os_type = profile["osDisk"].get("osType") if slot == "os" else None
        made[slot] = upload_disk(p, group, location, az.resource_name(name[:50], slot), path, os_type, zones, deadline)
    if "os" not in made:
        raise ProviderError(f"Backup has no OS disk among {', '.join(made)}; a VM needs one. The disks were uploaded "
                            f"as {', '.join(d.name for d in made.values())}.")
    nics = [{"id": n["id"]} for n in (source["properties"].get("networkProfile") or {}).get("networkInterfaces") or []]
    body: dict[str, t.Any] = {
        "location": location,
        "tags": {"vmsafe-restored-from-vm": source.get("name", "")},
        "properties": {
            "hardwareProfile": source["properties"]["hardwareProfile"],
            "storageProfile": {
                "osDisk": {"osType": profile["osDisk"].get("osType"), "createOption": "Attach", "name": made["os"].name,
                           "managedDisk": {"id": made["os"].id}},
                "dataDisks": [{"lun": int(s[3:]), "createOption": "Attach", "name": d.name, "managedDisk": {"id": d.id}}
                              for s, d in sorted(made.items()) if s != "os"]},
            # The original VM's network interfaces: free once that VM is gone (the disaster case); Azure refuses
            # them (NicInUse) while it still exists, and this collection makes no network resources.
            "networkProfile": {"networkInterfaces": nics},
        },
    }
    if zones:
        body["zones"] = zones
    hint = (f"Its disks were uploaded as {', '.join(d.name for d in made.values())}; the new VM reuses the "
            f"backed-up VM's network interfaces, which must be free (that VM deleted). Otherwise create the VM from "
            f"these disks yourself (for example azure.azcollection.azure_rm_virtualmachine).")
    try:
        creating = p.begin(f"create VM '{name}'", p.client.virtual_machines.begin_create_or_update, group, name, body)
    except ProviderError as exc:
        raise ProviderError(f"{exc} {hint}") from exc
    p.wait([creating], deadline, hint)
    vm = p.find_vm(VmSelector(name=name))
    if not start and vm.state == "running":
        p.wait([p.begin(f"deallocate VM '{name}'", p.client.virtual_machines.begin_deallocate, group, name)], deadline)
        vm = p.find_vm(VmSelector(name=name))
    return vm
