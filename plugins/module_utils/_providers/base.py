# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""The interface every hypervisor provider implements.

Providers raise VmsafeError subclasses. They never call fail_json and never read module.params;
what they need comes in as arguments, and warnings go through the ``warn`` callback.
"""

from __future__ import annotations

import abc
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import UnsupportedOperation, VmNotFound

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import (
        ConsolidationStatus,
        CreateResult,
        Leftover,
        Snapshot,
        SnapshotSpec,
        VmRef,
        VmSelector,
    )

Warn = t.Callable[[str], None]
# AnsibleModule.run_command: providers run host commands (qemu-img, ssh) only through it, as argv lists.
RunCommand = t.Callable[..., t.Tuple[int, str, str]]


class HypervisorProvider(abc.ABC):
    """One open connection to one hypervisor host (or vCenter)."""

    name: t.ClassVar[str]
    # Whether two snapshots of one VM may carry the same name (libvirt: no, vSphere and Hyper-V: yes).
    unique_snapshot_names: t.ClassVar[bool] = False

    # Set by the runner after construction: the module's run_command, for commands on this machine.
    run_command: RunCommand | None = None

    def __init__(self, params: dict[str, t.Any], warn: Warn) -> None:
        self.params = params
        self.warn = warn

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection; raise ConnectionFailed with the host and the cause."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; never raises."""

    @property
    @abc.abstractmethod
    def host(self) -> str:
        """A printable name of the host, for messages."""

    @abc.abstractmethod
    def find_vm(self, selector: VmSelector) -> VmRef:
        """Return the VM; raise VmNotFound listing close matches."""

    @abc.abstractmethod
    def list_vms(self) -> list[VmRef]:
        """Return every VM the connection can see."""

    @abc.abstractmethod
    def list_snapshots(self, vm: VmRef) -> list[Snapshot]:
        """Return the VM's snapshots, linked (children, depth), oldest first."""

    def list_vms_with_snapshots(self) -> list[tuple[VmRef, list[Snapshot]]]:
        """Return every VM with its snapshots, in as few requests as the hypervisor allows (inventories, reports).

        vSphere reads both in its one fleet retrieval already; Hyper-V overrides this with one command.
        """
        found = []
        for vm in self.list_vms():
            try:
                found.append((vm, self.list_snapshots(vm)))
            except VmNotFound:
                continue  # deleted between the listing and this read: no longer part of the fleet
        return found

    @abc.abstractmethod
    def create_snapshot(self, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
        """Create a snapshot; on any failure, leave no snapshot behind."""

    @abc.abstractmethod
    def revert_snapshot(self, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
        """Make the VM's disks (and RAM, if saved) what they were at the snapshot."""

    @abc.abstractmethod
    def delete_snapshot(self, vm: VmRef, snapshot: Snapshot, children: bool, timeout: int) -> None:
        """Delete the snapshot (its data merged into what depends on it), with its children if asked."""

    @abc.abstractmethod
    def consolidation_status(self, vm: VmRef, snapshots: list[Snapshot] | None = None) -> ConsolidationStatus:
        """Return whether the VM's disks need consolidation and why (leftovers, chain depth, jobs)."""

    @abc.abstractmethod
    def repair_leftover(self, vm: VmRef, leftover: Leftover, timeout: int) -> None:
        """Merge or drop one leftover found by consolidation_status()."""

    # -- backups (optional: providers that cannot back up keep these defaults) -------------------

    def backup_base(self, vm: VmRef, last: dict[str, t.Any] | None) -> tuple[str | None, str]:
        """Return (the change-tracking reference to back up from, or None for a full backup, and why)."""
        raise UnsupportedOperation(f"Backups are not supported on {self.name} yet.")

    def backup_begin(self, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str) -> t.Any:
        """Open a backup session: ``.disks`` (``target``, ``size``, ``extents()``), ``.checkpoint``,
        ``.consistency``, ``.vm_definition``, and ``.close(success)``."""
        raise UnsupportedOperation(f"Backups are not supported on {self.name} yet.")

    # -- restores (optional, same rule) ------------------------------------------------------------

    # "local": vm_restore writes the VM's image files itself (libvirt). "remote": the VM's disks live on the
    # hypervisor's storage; vm_restore writes local raw images that the provider uploads (VMware, Hyper-V).
    restore_location: t.ClassVar[str] = "local"
    # Keyword options define_restored_vm takes beyond the base ones (keep_macs, backup_id).
    restore_options: t.ClassVar[t.FrozenSet[str]] = frozenset()

    def restored_from(self, vm: VmRef) -> str | None:
        """Return the backup id a VM made by define_restored_vm was restored from (remote providers), else None."""
        return None

    def restore_paths(self, vm: VmRef, names: list[str], token: str) -> dict[str, str]:
        """Return disk name -> where restore_over_vm will write that disk's new image on the host (remote only).

        ``token`` makes the names unique per run, so a new image never lands on a file the VM uses.
        """
        raise UnsupportedOperation(f"Restoring over a VM's disks is not supported on {self.name} yet.")

    def restore_over_vm(self, vm: VmRef, disk_files: dict[str, str], paths: dict[str, str], timeout: int) -> None:
        """Replace the VM's disks by the restored local raw images (remote only): each is written to a new image on
        the host (``paths``), and only once every one is complete are the VM's disks switched to them in one
        reconfiguration; the old images are deleted after that. On any failure before the switch the VM is left as
        it was and the new images are removed."""
        raise UnsupportedOperation(f"Restoring over a VM's disks is not supported on {self.name} yet.")

    def vm_disks(self, vm: VmRef) -> dict[str, str]:
        """Return disk name (as stored in backups) -> where its current image lives, for target: original."""
        raise UnsupportedOperation(f"Restoring over a VM's disks is not supported on {self.name} yet.")

    def prepare_restore_in_place(self, vm: VmRef) -> None:
        """Refuse unless the VM can have its disks replaced (shut off, no snapshots); drop change tracking."""
        raise UnsupportedOperation(f"Restoring over a VM's disks is not supported on {self.name} yet.")

    def define_restored_vm(self, definition: str, name: str, disk_files: dict[str, tuple[str, str]],
                           start: bool) -> VmRef:
        """Create a new VM (new name, id, MACs) from a backed-up definition and the restored local disk files.

        ``disk_files`` maps disk name -> (local path, format); providers whose storage is remote upload them.
        """
        raise UnsupportedOperation(f"Restoring to a new VM is not supported on {self.name} yet.")

    # -- instant recovery (optional, same rule) -----------------------------------------------------------------

    def instant_recovery(self) -> t.Any:
        """Return the provider's instant-recovery helper (see ``libvirt_instant.LibvirtInstant``)."""
        raise UnsupportedOperation(
            f"Instant recovery is not supported on {self.name}: restore with vmsafe.protect.vm_restore "
            f"(target: new_vm or original) instead, or recover into a libvirt/KVM host.")
