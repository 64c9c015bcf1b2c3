# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Application-consistent Azure snapshot sets: VM restore points.

With ``quiesce`` on a running VM, a set is a restore point (restorePointCollections/{collection}/restorePoints/{set
id}): Azure asks the VM agent to freeze the guest and snapshots every disk at one moment, as disk restore points. The
collection, ``vmsafe-<vm name>``, carries one tag per set (``vmsafe-set-<set id>``: name, time, description as JSON),
since restore points take no tags. A revert makes the new disks from the disk restore points (createOption Restore)
and swaps them in like any set. When Azure reports the point only crash consistent, ``quiesce_fallback`` decides:
``fail`` removes it and fails, ``crash_consistent`` keeps it and warns.
"""

from __future__ import annotations

import datetime
import json
import time
import types
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import OperationTimeout, ProviderError, QuiesceFailed
from ansible_collections.vmsafe.protect.plugins.module_utils._models import CreateResult, Snapshot
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure as az

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import SnapshotSpec, VmRef

TAG_PREFIX = "vmsafe-set-"
CONSISTENT = ("ApplicationConsistent", "FileSystemConsistent")


def is_restore_point(snapshot: Snapshot) -> bool:
    return bool(snapshot.files) and "/restorepoints/" in snapshot.files[0].lower()


def _where(p: az.AzureProvider, vm: VmRef) -> tuple[str, str]:
    return az.parse_id(vm.id)["group"], az.resource_name("vmsafe", vm.name[:70])


def _collection(p: az.AzureProvider, group: str, name: str, expand: bool = False) -> t.Any:
    try:
        return p.client.restore_point_collections.get(group, name, **({"expand": "restorePoints"} if expand else {}))
    except az.exceptions.ResourceNotFoundError:
        return None
    except az.exceptions.AzureError as exc:
        raise p.error(f"read restore point collection '{name}'", exc) from exc


def _put_collection(p: az.AzureProvider, model: t.Any, group: str, name: str, tags: dict[str, str]) -> None:
    p.call(f"update restore point collection '{name}'", p.client.restore_point_collections.create_or_update, group, name,
           {"location": model.location, "tags": tags, "properties": {"source": {"id": model.id}}})


def create(p: az.AzureProvider, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
    deadline = time.monotonic() + timeout
    model = p.vm_model(vm, fresh=True)
    p.vm_slots(model)  # refuses unmanaged and ephemeral disks
    group, name = _where(p, vm)
    existing = _collection(p, group, name)
    tags = dict((existing.tags or {}) if existing is not None else {})
    set_id = p.new_set_id()
    created = datetime.datetime.now(datetime.timezone.utc)
    tags[az.TAG_VM] = model.vm_id
    tags[TAG_PREFIX + set_id] = json.dumps({"n": spec.name, "t": created.isoformat(timespec="seconds"),
                                            "d": spec.description[:80]}, separators=(",", ":"))[:256]
    _put_collection(p, model, group, name, tags)
    verb = f"create restore point '{spec.name}' of VM '{vm.name}'"
    try:
        point = p.wait([p.begin(verb, p.client.restore_points.begin_create, group, name, set_id, {"properties": {}})],
                       deadline, "Remove it with state=absent if it appears later.")[0]
    except (ProviderError, OperationTimeout):
        tags.pop(TAG_PREFIX + set_id, None)
        _put_collection(p, model, group, name, tags)
        raise
    mode = az.text(point.consistency_mode)
    snap = _as_snapshot(point, tags, None)
    warnings: list[str] = []
    if mode not in CONSISTENT:
        why = (f"Azure made restore point '{spec.name}' of VM '{vm.name}' {mode or 'without a consistency mode'}: the "
               f"VM agent could not freeze the guest (is the agent running, and VSS or the Linux pre/post scripts "
               f"set up?)")
        if spec.quiesce_fallback == "fail":
            _delete(p, vm, snap, deadline)
            raise QuiesceFailed(f"{why}. It was removed; set quiesce_fallback=crash_consistent to keep such a point.")
        warnings.append(f"{why}; it is kept as a crash-consistent set.")
        p.warn(warnings[-1])
    if spec.memory:
        warnings.append("Azure restore points keep no memory.")
        p.warn(warnings[-1])
    return CreateResult(snapshot=snap, consistency="quiesced" if mode in CONSISTENT else "crash_consistent",
                        warnings=warnings)


def _as_snapshot(point: t.Any, tags: dict[str, str], current: str | None) -> Snapshot:
    try:
        meta = json.loads(tags.get(TAG_PREFIX + point.name) or "{}")
    except ValueError:
        meta = {}
    created = point.time_created or az._time(meta.get("t"))  # pylint: disable=protected-access
    if created.tzinfo is None:
        created = created.replace(tzinfo=datetime.timezone.utc)
    return Snapshot(id=point.name, name=meta.get("n") or point.name, created=created, description=meta.get("d", ""),
                    current=current == point.name, memory=False,
                    quiesced=az.text(point.consistency_mode) in CONSISTENT, kind="external", files=[point.id])


def list_sets(p: az.AzureProvider, vm: VmRef, current: str | None) -> list[Snapshot]:
    group, name = _where(p, vm)
    collection = _collection(p, group, name, expand=True)
    if collection is None or (collection.tags or {}).get(az.TAG_VM) != p.vm_model(vm).vm_id:
        return []
    return [_as_snapshot(point, collection.tags or {}, current) for point in collection.restore_points or []]


def _delete(p: az.AzureProvider, vm: VmRef, snapshot: Snapshot, deadline: float) -> None:
    group, name = _where(p, vm)
    p.wait([p.begin(f"remove restore point '{snapshot.name}' of VM '{vm.name}'", p.client.restore_points.begin_delete,
                    group, name, snapshot.id)], deadline, "Run the task again to remove it.")
    collection = _collection(p, group, name)
    if collection is not None and TAG_PREFIX + snapshot.id in (collection.tags or {}):
        tags = {k: v for k, v in collection.tags.items() if k != TAG_PREFIX + snapshot.id}
        _put_collection(p, p.vm_model(vm), group, name, tags)


def delete(p: az.AzureProvider, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
    _delete(p, vm, snapshot, time.monotonic() + timeout)


def members(p: az.AzureProvider, vm: VmRef, snapshot: Snapshot) -> dict[str | None, t.Any]:
    """Slot -> a stand-in for a set member (id, name, location, os type, tags) made from each disk restore point."""
    group, name = _where(p, vm)
    point = p.call(f"read restore point '{snapshot.name}'", p.client.restore_points.get, group, name, snapshot.id)
    meta = point.source_metadata
    profile = meta.storage_profile
    entries = [("os", profile.os_disk)] + [(f"lun{d.lun}", d) for d in profile.data_disks or []]
    slots = ",".join(slot for slot, _entry in entries)
    found: dict[str | None, t.Any] = {}
    for slot, entry in entries:
        dp_id = entry.disk_restore_point.id
        found[slot] = types.SimpleNamespace(
            id=dp_id, name=dp_id.rsplit("/", 1)[1], location=meta.location or p.vm_model(vm).location,
            provisioning_state="Succeeded", encryption_settings_collection=None,
            os_type=getattr(entry, "os_type", None) if slot == "os" else None, hyper_v_generation=None,
            tags={az.TAG_DISK: slot, az.TAG_DISKS: slots})
    return found
