# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Revert an Azure VM to a snapshot set by swapping disks.

Order, and what each failure leaves:

1. Check the set against the VM (complete, same region, same OS type and Hyper-V generation, same Azure Disk
   Encryption state) - a refusal changes nothing.
2. Create one new disk per snapshot of the set, in the VM's zone, with the SKU and encryption set of the disk it
   replaces - a failure removes the new disks; the VM was not touched.
3. Deallocate the VM if it runs - a failure removes the new disks and starts the VM again.
4. One VM update puts the new OS disk and data disks (by LUN) in place; Azure applies it whole or not at all - a
   refusal (OS type, zone, encryption) removes the new disks and starts the VM again with its own disks.
5. Tag the replaced disks (kept: the way back) and start the VM again if it ran.
"""

from __future__ import annotations

import datetime
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    OperationTimeout,
    ProviderError,
    UnsupportedOperation,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure as az

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import Snapshot, VmRef


class Revert:
    """One revert of one VM to one set."""

    def __init__(self, provider: az.AzureProvider, vm: VmRef, snapshot: Snapshot, deadline: float) -> None:
        self.p = provider
        self.vm = vm
        self.snapshot = snapshot
        self.deadline = deadline
        self.group = az.parse_id(vm.id)["group"]
        self.verb = f"revert VM '{vm.name}' to snapshot '{snapshot.name}'"
        self.created: list[str] = []  # names of the disks made for the swap

    def fail(self, message: str) -> UnsupportedOperation:
        return UnsupportedOperation(f"Failed to {self.verb} on azure host {self.p.host}: {message}")

    def run(self) -> None:
        p = self.p
        model = p.vm_model(self.vm, fresh=True)
        power = p.power_state(model)
        running = power in ("running", "starting")
        slots = p.vm_slots(model)
        members = {(m.tags or {}).get(az.TAG_DISK): m for m in p.set_members(self.vm).get(self.snapshot.id, [])
                   if not (m.tags or {}).get(az.TAG_COPY)}
        current = {slot: p.call(f"read disk {d.name}", p.client.disks.get, *self._where(d.managed_disk.id))
                   for slot, d in slots.items()}
        self.check(model, members, current)
        disks = self.create_disks(model, members, current)
        self.swap(model, running, power != "deallocated", slots, disks)
        self.keep_replaced(current, slots, members)
        if running:
            try:
                p.wait([p.begin(f"start VM '{self.vm.name}'", p.client.virtual_machines.begin_start, self.group,
                                self.vm.name)], self.deadline)
            except (ProviderError, OperationTimeout) as exc:
                raise ProviderError(f"VM '{self.vm.name}' now has the disks of snapshot '{self.snapshot.name}', but "
                                    f"starting it again failed: {exc} Start it by hand.") from exc

    @staticmethod
    def _where(resource_id: str) -> tuple[str, str]:
        ids = az.parse_id(resource_id)
        return ids["group"], ids["name"]

    def check(self, model: t.Any, members: dict[str | None, t.Any], current: dict[str, t.Any]) -> None:
        """Refuse, before anything changes, what Azure would refuse or what would lose data silently."""
        if not members:
            raise self.fail("the set has no snapshots left (removed meanwhile?).")
        wanted = set(((next(iter(members.values())).tags or {}).get(az.TAG_DISKS) or "").split(","))
        missing = sorted(wanted - set(members))
        if missing:
            raise self.fail(f"the set lacks the snapshot of disk(s) {', '.join(missing)} (a partial set); remove it "
                            f"with vmsafe.protect.snapshot_consolidate.")
        if "os" not in members:
            raise self.fail("the set has no snapshot of the OS disk.")
        for slot, snap in members.items():
            if snap.location.replace(" ", "").lower() != model.location.replace(" ", "").lower():
                raise self.fail(f"snapshot {snap.name} is in region {snap.location}, the VM in {model.location}.")
            if snap.provisioning_state != "Succeeded":
                raise self.fail(f"snapshot {snap.name} is {snap.provisioning_state}, not ready.")
            disk = current.get(slot)
            if disk is None:
                continue
            snap_ade = bool(getattr(snap.encryption_settings_collection, "enabled", False))
            disk_ade = bool(getattr(disk.encryption_settings_collection, "enabled", False))
            if snap_ade != disk_ade:
                raise self.fail(f"Azure Disk Encryption is {'on' if snap_ade else 'off'} in snapshot {snap.name} but "
                                f"{'on' if disk_ade else 'off'} on disk {disk.name}; Azure refuses to mix them.")
        os_snap = members["os"]
        snap_os, vm_os = az.text(os_snap.os_type), az.text(model.storage_profile.os_disk.os_type)
        if snap_os.lower() != vm_os.lower():
            raise self.fail(f"the OS type of the set's OS disk ({snap_os or 'none'}) is not the VM's ({vm_os}); Azure "
                            f"swaps an OS disk only for one of the same OS type.")
        gen_snap, gen_now = az.text(os_snap.hyper_v_generation), az.text(getattr(current["os"], "hyper_v_generation", None))
        if gen_snap and gen_now and gen_snap != gen_now:
            raise self.fail(f"the set's OS disk is Hyper-V generation {gen_snap}, the VM's {gen_now}.")
        extra = sorted(set(current) - set(members))
        if extra:
            self.p.warn(f"VM '{self.vm.name}' has disk(s) {', '.join(extra)} that snapshot '{self.snapshot.name}' does "
                        f"not cover; they are left as they are.")

    def create_disks(self, model: t.Any, members: dict[str | None, t.Any], current: dict[str, t.Any]) -> dict[str, t.Any]:
        p = self.p
        pollers: list[tuple[str, t.Any]] = []
        requests: list[tuple[str, t.Any, dict[str, t.Any]]] = []
        slots = sorted(s for s in members if s)
        for slot in slots:
            snap = members[slot]
            like = current.get(slot)
            name = az.resource_name(model.name[:40], slot, self.snapshot.id, "r")
            body: dict[str, t.Any] = {
                "location": model.location,
                "sku": {"name": like.sku.name if like is not None and like.sku else "Premium_LRS"},
                "tags": {az.TAG_VM: model.vm_id, "vmsafe-restored-from-set": self.snapshot.id, az.TAG_SET: self.snapshot.name},
                "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": snap.id}},
            }
            if model.zones:
                body["zones"] = list(model.zones)
            encryption = getattr(like, "encryption", None)
            if encryption is not None and getattr(encryption, "disk_encryption_set_id", None):
                body["properties"]["encryption"] = {"type": encryption.type,
                                                    "diskEncryptionSetId": encryption.disk_encryption_set_id}
            requests.append((name, snap, body))
        try:
            for name, snap, body in requests:
                self.created.append(name)
                pollers.append(p.begin(f"{self.verb}: create disk {name} from snapshot {snap.name}",
                                       p.client.disks.begin_create_or_update, self.group, name, body))
            made = p.wait(pollers, self.deadline, "The VM was not changed.")
        except (ProviderError, OperationTimeout):
            if len(pollers) < len(requests):
                try:
                    p.wait(pollers, self.deadline)
                except (ProviderError, OperationTimeout):
                    pass
            self.cleanup()
            raise
        disks = dict(zip(slots, made))
        for slot, disk in disks.items():
            if sorted(disk.zones or []) != sorted(model.zones or []):
                self.cleanup()
                raise self.fail(f"new disk {disk.name} is in zone(s) {disk.zones or 'none'} but the VM in "
                                f"{model.zones or 'none'}; nothing was swapped.")
        return disks

    def cleanup(self) -> None:
        self.p._remove_quietly(self.group, self.created, "disks")  # pylint: disable=protected-access
        self.created = []

    def _start_again(self) -> str:
        p = self.p
        try:
            p.wait([p.begin(f"start VM '{self.vm.name}' again", p.client.virtual_machines.begin_start, self.group,
                            self.vm.name)], time.monotonic() + max(120.0, self.deadline - time.monotonic()))
        except (ProviderError, OperationTimeout) as exc:
            return f" Starting it again failed too: {exc}"
        return " It was started again."

    def swap(self, model: t.Any, running: bool, allocated: bool, slots: dict[str, t.Any], disks: dict[str, t.Any]) -> None:
        p = self.p
        if allocated:  # a stopped VM still holds its hardware; Azure swaps an OS disk only once it is deallocated
            try:
                p.wait([p.begin(f"{self.verb}: deallocate VM '{self.vm.name}'", p.client.virtual_machines.begin_deallocate,
                                self.group, self.vm.name)], self.deadline)
            except (ProviderError, OperationTimeout) as exc:
                self.cleanup()
                raise ProviderError(f"{exc} The VM keeps its own disks.{self._start_again() if running else ''}") from exc
        os_disk = disks["os"]
        data = []
        for slot in sorted(set(slots) | set(disks), key=lambda s: (s != "os", len(s), s)):
            if slot == "os":
                continue
            old = slots.get(slot)
            new = disks.get(slot)
            entry = {"lun": int(slot[3:]), "createOption": "Attach",
                     "caching": (old.caching if old is not None else None) or "None",
                     "name": new.name if new is not None else old.name,
                     "managedDisk": {"id": new.id if new is not None else old.managed_disk.id}}
            data.append(entry)
        tags = dict(model.tags or {})
        tags[az.TAG_CURRENT] = self.snapshot.id
        body = {"tags": tags, "properties": {"storageProfile": {
            "osDisk": {"name": os_disk.name, "managedDisk": {"id": os_disk.id}}, "dataDisks": data}}}
        try:
            p.wait([p.begin(f"{self.verb}: swap the disks of VM '{self.vm.name}'", p.client.virtual_machines.begin_update,
                            self.group, self.vm.name, body)], self.deadline)
        except OperationTimeout as exc:
            raise OperationTimeout(f"{exc} Check VM '{self.vm.name}' (its OS disk should be {os_disk.name}) before "
                                   f"starting it; disks {', '.join(self.created)} were made for the swap.") from exc
        except ProviderError as exc:
            self.cleanup()
            started = self._start_again() if running else ""
            raise ProviderError(f"{exc} Azure refused the disk swap, so VM '{self.vm.name}' keeps its own disks; the "
                                f"new disks were removed.{started}") from exc

    def keep_replaced(self, current: dict[str, t.Any], slots: dict[str, t.Any], members: dict[str | None, t.Any]) -> None:
        """Tag the disks the swap took out (kept until snapshot_consolidate removes them)."""
        p = self.p
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        model = p.vm_model(self.vm)
        for slot, disk in current.items():
            if slot not in members:
                continue
            tags = {**(disk.tags or {}), az.TAG_REPLACED: model.vm_id, az.TAG_REPLACED_BY: self.snapshot.name,
                    az.TAG_REPLACED_AT: now, az.TAG_DISK: slot}
            try:
                p.wait([p.begin(f"tag replaced disk {disk.name}", p.client.disks.begin_update, *self._where(disk.id),
                                {"tags": tags})], self.deadline)
            except (ProviderError, OperationTimeout) as exc:
                p.warn(f"Disk {disk.name} was replaced by the revert but could not be tagged ({exc}); it is kept, and "
                       f"snapshot_consolidate will not find it: remove it by hand when it is no longer needed.")
        p.vm_model(self.vm, fresh=True)
