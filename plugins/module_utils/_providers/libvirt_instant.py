# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Instant recovery on libvirt: a VM whose disks are qcow2 overlays backed by NBD exports of a backup.

``start()`` defines (or redefines the shut-off original) and starts the VM on the overlays; ``migrate()`` copies each
disk's whole chain (overlay + backup) to a standalone local qcow2 image while the VM runs (``virDomainBlockCopy``
without SHALLOW, then a pivot), or with ``qemu-img convert`` while it is shut off; ``remove()`` destroys and
undefines an instant VM, or gives the original back its definition from before the recovery.
"""

from __future__ import annotations

import time
import typing as t
import xml.etree.ElementTree as ET

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    OperationTimeout,
    ProviderError,
    UnsupportedOperation,
    VmNotFound,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef, VmSelector
from ansible_collections.vmsafe.protect.plugins.module_utils._domain_xml import set_disk_sources

try:
    import libvirt
except ImportError:  # the provider reports the missing library before this is used
    libvirt = None

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt import LibvirtProvider


def _text(exc: BaseException) -> str:
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    return str(exc)


class LibvirtInstant:
    """Instant recovery through one libvirt connection (this machine's: the NBD server runs here)."""

    def __init__(self, provider: LibvirtProvider) -> None:
        if not provider.local:
            raise UnsupportedOperation(
                f"Failed to start an instant recovery on libvirt host {provider.uri}: the backup is served by an NBD "
                f"server on the machine the module runs on, and QEMU must reach its Unix socket. Run the task on the "
                f"KVM host (delegate_to) with uri qemu:///system.")
        self.provider = provider
        self.uri = provider.uri

    @property
    def conn(self) -> t.Any:
        return self.provider.conn

    def find(self, name: str) -> VmRef | None:
        """The VM named ``name``, or None."""
        try:
            return self.provider.find_vm(VmSelector(name=name))
        except VmNotFound:
            return None

    def _dom(self, vm: VmRef) -> t.Any:
        try:
            return self.conn.lookupByUUIDString(vm.id)
        except libvirt.libvirtError as exc:
            raise ProviderError(f"VM '{vm.name}' is gone from {self.uri}: {_text(exc)}") from exc

    def sources(self, vm: VmRef) -> dict[str, str]:
        """target -> active source file of each file disk (the running VM's view when it runs)."""
        root = ET.fromstring(self._dom(vm).XMLDesc(0))
        found = {}
        for node in root.findall("./devices/disk"):
            target, source = node.find("target"), node.find("source")
            if target is not None and source is not None and source.get("file"):
                found[t.cast(str, target.get("dev"))] = t.cast(str, source.get("file"))
        return found

    def ref(self, vm: VmRef) -> VmRef:
        return self.provider.find_vm(VmSelector(id=vm.id))

    # -- start ----------------------------------------------------------------------------------------------------
    def start_new(self, definition: str, name: str, overlays: t.Mapping[str, str]) -> VmRef:
        """Define a new VM (new UUID and MACs) from the backup's definition on ``overlays`` and start it."""
        return self.provider.define_restored_vm(definition, name, {d: (p, "qcow2") for d, p in overlays.items()},
                                                True)

    def original_definition(self, vm: VmRef) -> str:
        """The persistent definition of a VM (with secrets, so that it can be defined again as it was)."""
        dom = self._dom(vm)
        return t.cast(str, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))

    def start_over(self, vm: VmRef, overlays: t.Mapping[str, str]) -> VmRef:
        """Point the shut-off original's disks at ``overlays`` (name, UUID and MACs kept) and start it."""
        self.provider.prepare_restore_in_place(vm)  # refuses a running VM or one with snapshots
        root = ET.fromstring(self.original_definition(vm))
        set_disk_sources(root, {d: (p, "qcow2") for d, p in overlays.items()})
        try:
            dom = self.conn.defineXML(ET.tostring(root, encoding="unicode"))
            dom.create()
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to start VM '{vm.name}' from the backup on libvirt host {self.uri}: "
                                f"{_text(exc)}") from exc
        return self.ref(vm)

    def start(self, vm: VmRef) -> VmRef:
        try:
            self._dom(vm).create()
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to start VM '{vm.name}' on libvirt host {self.uri}: {_text(exc)}") from exc
        return self.ref(vm)

    # -- migrate ----------------------------------------------------------------------------------------------------
    def migrate_disk(self, vm: VmRef, disk: str, dest: str, timeout: float, copy_offline: t.Callable[[], None]) -> None:
        """Move ``disk`` of ``vm`` to the standalone local image ``dest`` (created here; must not exist).

        Running: a block copy of the whole chain, then a pivot; on timeout the job is cancelled and the VM stays on
        its overlay. Shut off: ``copy_offline()`` writes ``dest`` and the definition is pointed at it.
        Raises OperationTimeout, ProviderError.
        """
        dom = self._dom(vm)
        if not dom.isActive():
            copy_offline()
            self._point_definition(dom, vm, {disk: (dest, "qcow2")})
            return
        xml = f"<disk type='file'><source file='{_xml_attr(dest)}'/><driver type='qcow2'/></disk>"
        deadline = time.monotonic() + timeout
        try:
            dom.blockCopy(disk, xml, None, libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to copy disk {disk} of VM '{vm.name}' to {dest} on libvirt host {self.uri}: "
                                f"{_text(exc)}") from exc
        try:
            while True:  # the mirror is ready when it has copied everything and follows new writes
                info = dom.blockJobInfo(disk, 0)
                if not info:
                    raise ProviderError(f"The block copy of disk {disk} of VM '{vm.name}' ended before it was ready "
                                        f"(see /var/log/libvirt/qemu/{vm.name}.log); the VM still runs from the backup.")
                if info.get("end") and info.get("cur") == info.get("end"):
                    break
                if time.monotonic() > deadline:
                    dom.blockJobAbort(disk, 0)
                    raise OperationTimeout(
                        f"Timed out after {timeout:g} s copying disk {disk} of VM '{vm.name}' to {dest} "
                        f"({info.get('cur')} of {info.get('end')} bytes); the copy was cancelled and the VM still runs "
                        f"from the backup. Raise timeout and run state: migrated again.")
                time.sleep(0.1)
            dom.blockJobAbort(disk, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            while self.sources(vm).get(disk) != dest:
                if time.monotonic() > deadline + 30:
                    raise OperationTimeout(f"libvirt did not switch disk {disk} of VM '{vm.name}' to {dest} after the "
                                           f"pivot; check 'virsh domblklist {vm.name}'.")
                time.sleep(0.05)
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to move disk {disk} of VM '{vm.name}' to {dest} on libvirt host {self.uri}: "
                                f"{_text(exc)}") from exc
        # libvirt 9 rewrites the persistent definition on pivot; make sure, so a restart never reads the backup again
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        current = {n.find("target").get("dev"): n.find("source").get("file")
                   for n in root.findall("./devices/disk") if n.find("target") is not None and n.find("source") is not None}
        if current.get(disk) != dest:
            self._point_definition(dom, vm, {disk: (dest, "qcow2")})

    def _point_definition(self, dom: t.Any, vm: VmRef, disk_files: t.Mapping[str, tuple[str, str]]) -> None:
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
        set_disk_sources(root, disk_files)
        try:
            self.conn.defineXML(ET.tostring(root, encoding="unicode"))
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to point the definition of VM '{vm.name}' at "
                                f"{', '.join(p for p, _f in disk_files.values())}: {_text(exc)}") from exc

    # -- remove ----------------------------------------------------------------------------------------------------
    def remove(self, vm: VmRef, original: str | None) -> None:
        """Stop the instant VM; undefine it, or define the original as it was before the recovery."""
        dom = self._dom(vm)
        try:
            if dom.isActive():
                dom.destroy()
            if original is None:
                flags = (libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                         | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                dom.undefineFlags(flags)
            else:
                self.conn.defineXML(original)
        except libvirt.libvirtError as exc:
            raise ProviderError(f"Failed to remove the instant recovery VM '{vm.name}' on libvirt host {self.uri}: "
                                f"{_text(exc)}") from exc


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;").replace('"', "&quot;")
