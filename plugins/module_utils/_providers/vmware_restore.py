# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""VMware restores: what a backup records of the VM's hardware, a new VM built from it, and a restore over the
shut-off original.

The backup's definition (JSON, written by ``describe`` at backup time) holds the CPU and memory, the guest OS id, the
hardware version, the firmware (BIOS or EFI, secure boot), the disk controllers the disks hang on (type, bus
number, bus sharing), each disk's controller and unit number, and the network cards (type, network or distributed
port group, MAC address and how it was assigned, connect at power on, wake on LAN). Backups made before these were
recorded hold only CPU, memory and disk sizes: a new VM made from them gets one paravirtual SCSI
controller, BIOS firmware and no network card, and the restore warns which of these it had to guess.

A restore over the original writes every disk to a new file next to the VM's files, and only when every upload is
complete switches the VM's disks to them in one ``ReconfigVM_Task`` (all devices at once, or none); the old files
are deleted afterwards. A failure before the switch leaves the VM as it was and removes the new files.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    InvalidArgument,
    OperationTimeout,
    ProviderError,
    UnsupportedOperation,
    VmNotFound,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef, VmSelector

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.vmware import VmwareProvider

# The controllers a disk can hang on, by pyVmomi class name (vim.vm.device.<name>).
CONTROLLER_TYPES = ("ParaVirtualSCSIController", "VirtualLsiLogicController", "VirtualLsiLogicSASController",
                    "VirtualBusLogicController", "VirtualAHCIController", "VirtualNVMEController",
                    "VirtualIDEController")
NIC_TYPES = ("VirtualVmxnet3", "VirtualVmxnet2", "VirtualVmxnet", "VirtualE1000e", "VirtualE1000", "VirtualPCNet32")
# vSphere gives every new VM two IDE controllers with these keys; a disk on IDE bus n uses 200 + n.
IDE_KEY = 200
MARK = "Restored by vmsafe.protect.vm_restore from backup "
_MARK_RE = re.compile(re.escape(MARK) + r"(\S+)")


def _kind(obj: t.Any) -> str:
    return type(obj).__name__.rsplit(".", 1)[-1]


def _capacity(disk: t.Any) -> int:
    return int(disk.capacityInBytes or (disk.capacityInKB or 0) * 1024)


def datacenter_of(vim: t.Any, obj: t.Any) -> t.Any:
    cursor = obj
    while cursor is not None and not isinstance(cursor, vim.Datacenter):
        cursor = cursor.parent
    return cursor


# -- what a backup records ----------------------------------------------------------------------------


def describe(vim: t.Any, config: t.Any, portgroups: dict[str, str]) -> dict[str, t.Any]:
    """Return the hardware part of a backup's definition, from a VM (or snapshot) config.

    ``portgroups`` maps distributed port group keys to names (recorded too, for a vCenter whose keys differ).
    """
    devices = list(config.hardware.device or [])
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    used = {d.controllerKey for d in disks}
    controllers = []
    for dev in devices:
        if isinstance(dev, vim.vm.device.VirtualController) and dev.key in used:
            controllers.append({"key": int(dev.key), "type": _kind(dev), "bus": int(dev.busNumber or 0),
                                "shared_bus": str(getattr(dev, "sharedBus", None) or "") or None})
    nics = []
    for dev in devices:
        if not isinstance(dev, vim.vm.device.VirtualEthernetCard):
            continue
        backing = dev.backing
        nic: dict[str, t.Any] = {
            "label": dev.deviceInfo.label if dev.deviceInfo else "", "type": _kind(dev),
            "mac": dev.macAddress, "address_type": dev.addressType,
            "start_connected": bool(dev.connectable.startConnected) if dev.connectable else True,
            "wake_on_lan": bool(dev.wakeOnLanEnabled),
        }
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
            key = backing.port.portgroupKey
            nic.update(backing="dvs", switch_uuid=backing.port.switchUuid, portgroup_key=key,
                       network=portgroups.get(key))
        elif isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            nic.update(backing="network", network=backing.deviceName)
        elif isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
            nic.update(backing="opaque", opaque_id=backing.opaqueNetworkId, opaque_type=backing.opaqueNetworkType)
        else:
            nic.update(backing=_kind(backing) if backing is not None else None)
        nics.append(nic)
    boot = config.bootOptions
    return {
        "definition_version": 2,
        "firmware": config.firmware or "bios",
        "secure_boot": bool(boot.efiSecureBootEnabled) if boot is not None else False,
        "hardware_version": config.version,
        "cores_per_socket": int(config.hardware.numCoresPerSocket or 1),
        "controllers": controllers,
        "nics": nics,
        "disks": [{"label": d.deviceInfo.label, "capacity": _capacity(d), "controller": int(d.controllerKey),
                   "unit": int(d.unitNumber or 0), "thin": bool(getattr(d.backing, "thinProvisioned", False))}
                  for d in disks],
    }


def left_out(spec: dict[str, t.Any]) -> list[str]:
    """What an older backup's definition does not record, so a VM made from it is guessed there."""
    if spec.get("definition_version", 1) >= 2:
        return []
    return ["network cards (the new VM has none)", "firmware (BIOS is used)",
            "disk controllers (one paravirtual SCSI controller is used)", "cores per socket", "hardware version"]


# -- a new VM from the definition ------------------------------------------------------------------


def _networks(vim: t.Any, datacenter: t.Any) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """(name -> network, distributed port group key -> port group) of a datacenter."""
    by_name: dict[str, t.Any] = {}
    by_key: dict[str, t.Any] = {}
    for net in datacenter.network or []:
        if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
            by_key[net.key] = net
            by_name.setdefault(net.name, net)
        else:
            by_name[net.name] = net
    return by_name, by_key


def nic_specs(vim: t.Any, spec: dict[str, t.Any], datacenter: t.Any, keep_macs: bool) -> list[t.Any]:
    """The network cards to add, on the recorded networks; raises InvalidArgument naming networks that are missing."""
    by_name, by_key = _networks(vim, datacenter)
    cards = []
    missing = []
    for index, nic in enumerate(spec.get("nics") or []):
        kind = nic.get("type") if nic.get("type") in NIC_TYPES else "VirtualVmxnet3"
        device = getattr(vim.vm.device, kind)(key=-(400 + index))
        if nic.get("backing") == "dvs":
            group = by_key.get(nic.get("portgroup_key")) or by_name.get(nic.get("network") or "")
            if group is None or not isinstance(group, vim.dvs.DistributedVirtualPortgroup):
                missing.append(f"distributed port group {nic.get('network') or nic.get('portgroup_key')}")
                continue
            device.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(switchUuid=group.config.distributedVirtualSwitch.uuid,
                                            portgroupKey=group.key))
        elif nic.get("backing") == "network":
            if nic.get("network") not in by_name:
                missing.append(f"network {nic.get('network')}")
                continue
            device.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=nic["network"])
        elif nic.get("backing") == "opaque":
            device.backing = vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo(
                opaqueNetworkId=nic.get("opaque_id"), opaqueNetworkType=nic.get("opaque_type"))
        else:
            missing.append(f"{nic.get('label') or 'a network card'} (backing {nic.get('backing')} is not restorable)")
            continue
        if keep_macs and nic.get("mac"):
            device.addressType = "manual"
            device.macAddress = nic["mac"]
        else:
            device.addressType = "generated"
        device.wakeOnLanEnabled = bool(nic.get("wake_on_lan"))
        device.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=bool(nic.get("start_connected", True)), allowGuestControl=True, connected=False)
        cards.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=device))
    if missing:
        raise InvalidArgument(f"The backed-up VM's network cards are on {', '.join(missing)}, which datacenter "
                              f"{datacenter.name} does not have. Create them (same name) before restoring, or restore "
                              f"to image files (target: image) and build the VM yourself.")
    return cards


def controller_specs(vim: t.Any, spec: dict[str, t.Any]) -> tuple[list[t.Any], dict[int, int]]:
    """The controllers to add and a map from each recorded controller key to the new VM's key.

    IDE controllers are not added: every new VM has two (keys 200 and 201).
    """
    adds = []
    keys: dict[int, int] = {}
    recorded = spec.get("controllers")
    if recorded is None:  # an older backup: one paravirtual SCSI controller, as earlier releases made
        recorded = [{"key": -1, "type": "ParaVirtualSCSIController", "bus": 0, "shared_bus": "noSharing"}]
    for index, ctl in enumerate(recorded):
        kind = ctl.get("type")
        if kind == "VirtualIDEController":
            keys[int(ctl["key"])] = IDE_KEY + int(ctl.get("bus") or 0)
            continue
        if kind not in CONTROLLER_TYPES:
            raise InvalidArgument(f"The backup records a disk controller of type {kind}, which vm_restore cannot "
                                  f"create; restore to image files (target: image) instead.")
        new_key = -(100 + index)
        device = getattr(vim.vm.device, kind)(key=new_key, busNumber=int(ctl.get("bus") or 0))
        if ctl.get("shared_bus") and hasattr(device, "sharedBus"):
            device.sharedBus = ctl["shared_bus"]
        adds.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=device))
        keys[int(ctl["key"])] = new_key
    return adds, keys


def _descriptor(sectors: int, flat: str, controller: str) -> bytes:
    backups = _backups()
    text = backups.DESCRIPTOR.format(sectors=sectors, flat=flat)
    if controller == "VirtualIDEController":
        text = text.replace('ddb.adapterType = "lsilogic"', 'ddb.adapterType = "ide"')
    return text.encode()


def _backups() -> t.Any:
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware_backup  # pylint: disable=import-outside-toplevel

    return vmware_backup


def _upload(p: VmwareProvider, http: t.Any, datacenter: str, path: str, local: str, capacity: int,
            controller: str, uploaded: list[str]) -> None:
    """Upload a flat image and its descriptor as ``path`` ("[ds] dir/name.vmdk"); record each file as it starts."""
    backups = _backups()
    datastore, _sep, rel = path.partition("] ")
    datastore = datastore.lstrip("[")
    flat = rel[:-len(".vmdk")] + "-flat.vmdk"
    uploaded.append(f"[{datastore}] {flat}")
    with open(local, "rb") as handle:
        http.request("PUT", backups.DatastoreHttp.url(datacenter, datastore, flat), body=handle,
                     headers={"Content-Length": str(os.path.getsize(local)), "Content-Type": "application/octet-stream"})
    uploaded.append(path)
    http.request("PUT", backups.DatastoreHttp.url(datacenter, datastore, rel),
                 body=_descriptor(capacity // 512, posixpath.basename(flat), controller),
                 headers={"Content-Type": "text/plain"})


def define(p: VmwareProvider, definition: str, name: str, disk_files: dict[str, tuple[str, str]], start: bool,
           keep_macs: bool, backup_id: str) -> VmRef:
    """Upload the restored flat images next to a new VM's files and create the VM from the recorded hardware."""
    vim = p.sdk[0]
    spec = json.loads(definition or "{}")
    try:
        p.find_vm(VmSelector(name=name))
    except VmNotFound:
        pass
    else:
        raise InvalidArgument(f"A VM named '{name}' already exists on vmware host {p.host}; choose another "
                              f"new_vm_name.")
    datastore = spec.get("datastore") or ""
    datacenter = next((dc for dc in p.si.RetrieveContent().rootFolder.childEntity
                       if isinstance(dc, vim.Datacenter) and dc.name == spec.get("datacenter")), None)
    if datacenter is None or not datastore:
        raise InvalidArgument(f"The backup's definition names datacenter {spec.get('datacenter')!r} and datastore "
                              f"{datastore!r}, which vmware host {p.host} does not have.")
    guessed = left_out(spec)
    if guessed:
        p.warn(f"Backup {backup_id} was made by an older vm_backup that did not record the VM's "
               f"{', '.join(guessed)}; check the new VM '{name}' before starting it.")
    devices, keys = controller_specs(vim, spec)
    kinds = {new: next((c.get("type") for c in spec.get("controllers") or [] if keys.get(int(c["key"])) == new),
                       "ParaVirtualSCSIController") for new in keys.values()}
    devices += nic_specs(vim, spec, datacenter, keep_macs)  # before any upload: a missing network stops it here
    http = p.http()
    uploaded: list[str] = []
    done = False
    try:
        for index, disk in enumerate(spec.get("disks") or []):
            if disk["label"] not in disk_files:
                p.warn(f"Disk {disk['label']} of the backed-up VM was not restored (not in disks), so the new VM "
                       f"'{name}' does not have it.")
                continue
            local, _fmt = disk_files[disk["label"]]
            controller = keys.get(int(disk.get("controller", -1)), next(iter(keys.values())))
            unit = int(disk["unit"]) if "unit" in disk else index + (1 if index >= 7 else 0)
            path = f"[{datastore}] {name}/{name}_{index}.vmdk"
            _upload(p, http, datacenter.name, path, local, int(disk["capacity"]), kinds.get(controller, ""), uploaded)
            backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName=path, diskMode="persistent",
                                                                    thinProvisioned=bool(disk.get("thin")))
            devices.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualDisk(
                key=-(200 + index), controllerKey=controller, unitNumber=unit,
                capacityInBytes=int(disk["capacity"]), capacityInKB=int(disk["capacity"]) // 1024, backing=backing)))
        config = vim.vm.ConfigSpec(
            name=name, guestId=spec.get("guest_id") or "otherGuest64", numCPUs=spec.get("num_cpus") or 1,
            memoryMB=spec.get("memory_mb") or 1024, files=vim.vm.FileInfo(vmPathName=f"[{datastore}] {name}/"),
            deviceChange=devices, annotation=f"{MARK}{backup_id}")
        if "firmware" in spec:
            config.firmware = spec["firmware"]
            if spec["firmware"] == "efi":
                config.bootOptions = vim.vm.BootOptions(efiSecureBootEnabled=bool(spec.get("secure_boot")))
        if spec.get("cores_per_socket"):
            config.numCoresPerSocket = int(spec["cores_per_socket"])
        if spec.get("hardware_version"):
            config.version = spec["hardware_version"]
        pool = next(iter(p.resource_pools(datacenter)), None)
        if pool is None:
            raise ProviderError(f"Datacenter {datacenter.name} on vmware host {p.host} has no resource pool.")
        ref = VmRef(id="", name=name, state="", host=p.host)
        created = p.run_task(lambda: datacenter.vmFolder.CreateVM_Task(config=config, pool=pool), 600,
                             f"create VM '{name}'", "create the restored VM", ref)
        done = True
    finally:
        http.close()
        if not done:
            _delete(p, datacenter, uploaded, f"the restore of new VM '{name}' failed")
    vm = p.find_vm(VmSelector(id=p.moid(created)))
    if start:
        p.run_task(created.PowerOnVM_Task, 600, f"power on VM '{name}'", "power on the restored VM", vm)
        vm = p.find_vm(VmSelector(id=vm.id))
    return vm


def restored_from(p: VmwareProvider, vm: VmRef) -> str | None:
    found = _MARK_RE.search(p.obj(vm).config.annotation or "")
    return found.group(1) if found else None


# -- over the original -----------------------------------------------------------------------------


def _disks(p: VmwareProvider, obj: t.Any) -> dict[str, t.Any]:
    return {d.deviceInfo.label: d for d in obj.config.hardware.device if isinstance(d, p.sdk[0].vm.device.VirtualDisk)}


def check_shut_off(p: VmwareProvider, vm: VmRef) -> t.Any:
    """Refuse unless the VM is powered off and has no snapshots; return its managed object."""
    obj = p.obj(vm)
    state = str(obj.runtime.powerState)
    if state != "poweredOff":
        raise UnsupportedOperation(
            f"Failed to restore over VM '{vm.name}' on vmware host {p.host}: it is {state}. target: original replaces "
            f"its disks and needs it shut off: shut it off (shut down the guest, or power it off), then run again; or "
            f"restore to a new VM (target: new_vm).")
    if obj.snapshot is not None:
        names = [s.name for s in obj.snapshot.rootSnapshotList or []]
        raise UnsupportedOperation(
            f"Failed to restore over VM '{vm.name}' on vmware host {p.host}: it has snapshots ({', '.join(names)}) "
            f"whose delta disks sit on the disks being replaced; remove them (vmsafe.protect.vm_snapshot "
            f"state=remove_all) or restore to a new VM (target: new_vm).")
    return obj


def vm_disks(p: VmwareProvider, vm: VmRef) -> dict[str, str]:
    return {label: disk.backing.fileName for label, disk in _disks(p, p.obj(vm)).items()}


def restore_paths(p: VmwareProvider, vm: VmRef, names: list[str], token: str) -> dict[str, str]:
    current = vm_disks(p, vm)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", vm.name)
    paths = {}
    for index, name in enumerate(names):
        datastore, _sep, rel = current[name].partition("] ")
        paths[name] = f"{datastore}] {posixpath.join(posixpath.dirname(rel), f'{stem}_vmsafe-{token}_{index}.vmdk')}"
    return paths


def _delete(p: VmwareProvider, datacenter: t.Any, files: list[str], why: str) -> None:
    """Delete datastore files, best effort: a file that is not there is fine, any other failure is a warning."""
    manager = p.si.RetrieveContent().fileManager
    left = []
    for name in files:
        try:
            p.wait(manager.DeleteDatastoreFile_Task(name=name, datacenter=datacenter), 600, f"delete {name}")
        except p.sdk[0].fault.FileNotFound:
            continue
        except (p.sdk[1].MethodFault, OperationTimeout) as exc:
            left.append(f"{name} ({getattr(exc, 'msg', None) or exc})")
    if left:
        p.warn(f"After {why}, these datastore files could not be deleted: {'; '.join(left)}. Delete them in the "
               f"datastore browser.")


def restore_over(p: VmwareProvider, vm: VmRef, disk_files: dict[str, str], paths: dict[str, str],
                 timeout: int) -> None:
    """Upload each restored disk to its new file, switch the VM's disks in one reconfiguration, delete the old."""
    vim = p.sdk[0]
    obj = check_shut_off(p, vm)
    current = _disks(p, obj)
    datacenter = datacenter_of(vim, obj)
    kinds = {d.key: _kind(d) for d in obj.config.hardware.device if isinstance(d, vim.vm.device.VirtualController)}
    http = p.http()
    uploaded: list[str] = []
    old: list[str] = []
    switched = False
    try:
        edits = []
        for name, local in disk_files.items():
            disk = current[name]
            before = str(disk.backing.fileName)
            old += [before[:-len(".vmdk")] + "-flat.vmdk", before] if before.endswith(".vmdk") else [before]
            size = os.path.getsize(local)
            _upload(p, http, datacenter.name, paths[name], local, size, kinds.get(disk.controllerKey, ""), uploaded)
            disk.backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=paths[name], diskMode=disk.backing.diskMode or "persistent",
                thinProvisioned=bool(getattr(disk.backing, "thinProvisioned", False)))
            disk.capacityInBytes = size
            disk.capacityInKB = size // 1024
            edits.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk))
        http.close()
        # One task for every disk: vSphere applies a reconfiguration whole or not at all. Change tracking is turned
        # off, so the next vm_backup is a full one instead of asking the new files for the old files' change ids.
        p.run_task(lambda: obj.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=edits, changeTrackingEnabled=False)),
                   timeout, f"switch the disks of VM '{vm.name}' to the restored ones",
                   "switch the VM's disks to the restored ones", vm)
        switched = True
    finally:
        http.close()
        if not switched:
            _delete(p, datacenter, uploaded, f"the failed restore over VM '{vm.name}' (the VM was left as it was)")
    _delete(p, datacenter, old, f"the restore over VM '{vm.name}' (it now uses the restored disks)")
