#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_snapshot
short_description: Create, revert and remove VM snapshots
version_added: 0.1.0
description:
  - Makes a named snapshot of a VM exist or not exist, reverts a VM to a snapshot, or removes all snapshots.
  - Snapshots are rollback points, not backups; they live on the same storage as the disk. Remove them within hours
    or days with O(state=absent) or M(vmsafe.protect.snapshot_consolidate); use M(vmsafe.protect.vm_backup) for copies
    that survive the loss of the host.
  - Idempotent for O(state=present), O(state=absent) and O(state=remove_all). O(state=reverted) always reverts,
    because no hypervisor can tell whether the VM changed since the last revert.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.connection
  - vmsafe.protect.proxy
  - vmsafe.protect.vm_selector
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_VMSAFE
attributes:
  check_mode:
    support: full
    details:
      - Returns the same keys as a real run, with the planned steps in RV(plan) and the predicted snapshot.
  diff_mode:
    support: full
    details:
      - Shows the VM's snapshot tree before and after.
  idempotent:
    support: partial
    details:
      - O(state=reverted) always reverts and reports a change.
options:
  state:
    description:
      - V(present) creates the snapshot if none has that name.
      - V(absent) removes the snapshot (its data is merged into what depends on it).
      - V(reverted) reverts the VM to the snapshot. V(revert) means the same (the word of C(community.vmware)).
      - V(remove_all) removes every snapshot of the VM.
    type: str
    default: present
    choices: [present, absent, reverted, revert, remove_all]
  snapshot_name:
    description:
      - Name of the snapshot. Required for O(state=present).
      - When several snapshots share the name, the module fails and lists their ids; use O(snapshot_id) then.
    type: str
    aliases: [snapshot]
  snapshot_id:
    description:
      - Id of the snapshot, as returned in the C(id) of RV(snapshot). On libvirt the id is the name.
      - On VMware, vSphere's integer snapshot id (C(number) of RV(snapshot)) is accepted too, as C(vmware.vmware)
        and C(community.vmware) take it in their O(snapshot_id), for example V(3).
      - Mutually exclusive with O(snapshot_name).
    type: str
  description:
    description:
      - Description stored with a new snapshot (for example the change ticket).
    type: str
    default: ""
  memory:
    description:
      - Include the VM's RAM, so that a revert resumes the running guest where it was.
      - O(memory_dump) is the name C(vmware.vmware) and C(community.vmware) use for it.
      - On libvirt, an internal snapshot of a running VM always needs O(memory=true) (or use O(disk_only=true)).
    type: bool
    default: false
    aliases: [memory_dump]
  quiesce:
    description:
      - Freeze the guest file systems through the guest agent while the disks are captured.
      - Applies to running VMs and disk-only snapshots; with O(memory=true) the RAM state makes the snapshot
        consistent already and O(quiesce) is not applied (a warning says so).
    type: bool
    default: false
  quiesce_fallback:
    description:
      - What to do when the guest cannot be quiesced (no guest agent, agent not answering).
      - V(fail) fails without leaving a snapshot. V(crash_consistent) takes the snapshot anyway and reports
        RV(consistency=crash_consistent) with a warning.
    type: str
    default: fail
    choices: [fail, crash_consistent]
  disk_only:
    description:
      - Take an external, disk-only snapshot (a qcow2 overlay on each disk). Fast and works on any disk format,
        but libvirt 9 cannot revert it; remove it (merging the overlay) with O(state=absent).
    type: bool
    default: false
  copy_to_location:
    description:
      - For O(hypervisor=azure) and O(state=present), also copy each snapshot of the new set to this Azure region
        (incremental snapshot copy, C(CopyStart)) and wait until the copies are complete, within O(timeout).
      - The copies carry the set's tags, so they are listed with the set and removed with it.
    type: str
    version_added: 0.1.0
  remove_children:
    description:
      - With O(state=absent), remove the snapshot's descendants too. Otherwise they are kept and re-parented.
    type: bool
    default: false
  power_off:
    description:
      - With O(state=reverted) on VirtualBox, power off a running VM before restoring the snapshot (VirtualBox restores
        only a VM that is powered off or saved); what the guest did not write to disk is lost. When the snapshot holds
        the VM's RAM, the VM is started again and resumes where the snapshot was taken.
      - Without it, reverting a running VirtualBox VM fails and says so. Other hypervisors ignore it.
      - When not set, E(VMSAFE_POWER_OFF) is used, then V(false).
    type: bool
    default: false
    version_added: 0.1.0
  timeout:
    description:
      - Seconds to wait for each hypervisor operation. When it is hit the module fails, asks the hypervisor to abort,
        and never reports success for an operation that is still running.
    type: int
    default: 600
notes:
  - On libvirt, snapshot names are unique per VM, and the id is the name.
  - On libvirt, a revert first deletes the backup checkpoints that vmsafe created (their dirty bitmaps would be wrong
    afterwards), so the next M(vmsafe.protect.vm_backup) is a full backup. A VM with external snapshots, or with
    checkpoints vmsafe did not create, is not reverted, because libvirt would damage them; the error says how to
    clear them first.
  - On Hyper-V (O(hypervisor=hyperv)), checkpoint names may repeat and the id is the checkpoint's GUID; O(quiesce)
    maps to production checkpoints (see docs/hyperv.md).
  - On VMware (O(hypervisor=vmware)), several snapshots may share a name; the id is the snapshot's managed object id
    (for example V(snapshot-42)). O(disk_only=true) means a snapshot without memory, and O(quiesce) needs VMware Tools
    running in the guest.
  - On VirtualBox (O(hypervisor=virtualbox)), names may repeat and the id is the snapshot's UUID. A snapshot of a running
    VM always saves its RAM (taken with C(--live)), O(disk_only) is not supported and O(quiesce) is not possible
    through VBoxManage. Reverting a running VM needs O(power_off=true). Verified against the project's fake VBoxManage
    only (see docs/virtualbox.md).
  - On Azure (O(hypervisor=azure)), a snapshot is a set of incremental managed-disk snapshots, one per disk, tagged
    with the set's name; the id is the set's id. A revert creates new disks from the set and swaps them in (the VM is
    deallocated for it and started again if it ran); the replaced disks are kept and reported by
    M(vmsafe.protect.snapshot_consolidate), which removes them. Sets hold no memory (O(memory) gives a warning) and
    are crash consistent (see docs/azure.md).
seealso:
  - module: vmsafe.protect.vm_snapshot_info
  - module: vmsafe.protect.snapshot_consolidate
"""

EXAMPLES = r"""
- name: Take a rollback point with RAM before patching
  vmsafe.protect.vm_snapshot:
    vm_name: web01
    snapshot_name: pre-patch
    description: CHG-1234
    memory: true

- name: Take a quiesced disk-only snapshot, accepting crash consistency without a guest agent
  vmsafe.protect.vm_snapshot:
    vm_name: db01
    snapshot_name: pre-upgrade
    disk_only: true
    quiesce: true
    quiesce_fallback: crash_consistent
  register: snap

- name: Revert to the rollback point
  vmsafe.protect.vm_snapshot:
    vm_name: web01
    snapshot_name: pre-patch
    state: reverted
    timeout: 300

- name: Commit the change by removing the snapshot
  vmsafe.protect.vm_snapshot:
    vm_name: web01
    snapshot_name: pre-patch
    state: absent

- name: Remove every snapshot of a VM on a remote KVM host
  vmsafe.protect.vm_snapshot:
    uri: qemu+ssh://root@kvm01.example.com/system
    vm_id: 0b3aba08-caf1-45d6-a9fd-0f81ba99ba45
    state: remove_all

- name: Snapshot every disk of an Azure VM as one set, with a copy in the paired region
  vmsafe.protect.vm_snapshot:
    hypervisor: azure
    resource_group: rg-web  # credentials from AZURE_CLIENT_ID, AZURE_SECRET, AZURE_TENANT, AZURE_SUBSCRIPTION_ID
    vm_name: web01
    snapshot_name: pre-patch
    copy_to_location: northeurope
    timeout: 1800
"""

RETURN = r"""
vm:
  description: The VM the module worked on.
  returned: success
  type: dict
  sample: {"id": "0b3aba08-caf1-45d6-a9fd-0f81ba99ba45", "name": "web01", "state": "running", "host": "qemu:///system"}
snapshot:
  description:
    - The snapshot that was created, found, reverted to or removed. In check mode for a new snapshot, the planned
      one (V(null) id and creation time).
    - C(number) is vSphere's integer snapshot id on VMware (what O(snapshot_id) also accepts), V(null) elsewhere.
  returned: when O(state) is not V(remove_all)
  type: dict
  sample:
    id: pre-patch
    name: pre-patch
    description: CHG-1234
    created: "2026-11-23T20:30:00Z"
    age_seconds: 12
    parent: null
    children: []
    current: true
    memory: true
    quiesced: null
    kind: internal
    size_bytes: 763623
    depth: 1
    vm_state: running
    files: []
    number: null
consistency:
  description:
    - For a created snapshot, the consistency reached. V(offline) (VM shut off), V(quiesced) (file systems frozen),
      V(memory) (RAM saved), or V(crash_consistent). In check mode, the consistency planned.
  returned: when O(state=present) created a snapshot
  type: str
  sample: memory
removed:
  description: Names of the snapshots removed (or that would be, in check mode).
  returned: success
  type: list
  elements: str
  sample: ["pre-patch"]
snapshots:
  description: The VM's snapshots after the run (predicted in check mode), oldest first.
  returned: success
  type: list
  elements: dict
  sample: [{"id": "pre-patch", "name": "pre-patch", "current": true, "kind": "internal", "depth": 1}]
plan:
  description: The steps the module took (or would take in check mode), in order.
  returned: success
  type: list
  elements: str
  sample: ["create snapshot 'pre-patch' of VM 'web01' (internal, with memory)"]
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 0.41
applied:
  description:
    - When the module failed part-way, the steps of RV(plan) that had completed before the failure, in order; the
      VM is in the state they left it. An empty list when it failed before changing anything.
  returned: failure
  type: list
  elements: str
  sample: ["create snapshot 'pre-patch' of VM 'web01' (internal, with memory)"]
"""

import typing as t

from ansible.module_utils.basic import env_fallback

from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import vm_argument_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._models import Snapshot, SnapshotSpec
from ansible_collections.vmsafe.protect.plugins.module_utils._peer_options import with_peer_options
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet


class SnapshotTask(ProviderTask):
    """Make the named snapshot exist, not exist, or be reverted to."""

    def plan(self, changes: ChangeSet) -> None:
        p = self.params
        self.vm = self.provider.find_vm(self.selector())
        self.partial["vm"] = self.vm.to_dict()
        self.before = self.provider.list_snapshots(self.vm)
        self.target: Snapshot | None = None
        self.removed: list[str] = []
        self.consistency: str | None = None
        self.created = None
        state = "reverted" if p["state"] == "revert" else p["state"]
        timeout = p["timeout"]
        after = self.before
        if state == "remove_all":
            for snap in tree.leaf_first(self.before):
                self._remove(changes, snap, timeout)
            after = []
        else:
            self.target = tree.find(self.before, p["snapshot_name"], p["snapshot_id"], self.vm.name)
            if state == "present":
                after = self._plan_present(changes, timeout)
            elif state == "absent" and self.target is not None:
                doomed = tree.descendants(self.before, self.target.id) if p["remove_children"] else []
                for snap in doomed + [self.target]:
                    self._remove(changes, snap, timeout)
                after = tree.without(self.before, {s.id for s in doomed + [self.target]})
            elif state == "reverted":
                target = tree.require(self.before, p["snapshot_name"], p["snapshot_id"], self.vm.name)
                changes.step(f"revert VM '{self.vm.name}' to snapshot '{target.name}'",
                             lambda: self.provider.revert_snapshot(self.vm, target, timeout))
                after = tree.with_current(self.before, target.id)
        changes.before = tree.render(self.before)
        changes.after = tree.render(after)
        self.predicted = after

    def _plan_present(self, changes: ChangeSet, timeout: int) -> list[Snapshot]:
        p = self.params
        if p["snapshot_id"] is not None:
            if self.target is None:
                self.module.fail_json(msg=f"VM '{self.vm.name}' has no snapshot with id '{p['snapshot_id']}'; a new "
                                          f"snapshot is named with snapshot_name, its id is chosen by the hypervisor.")
            return self.before
        if self.target is not None:
            if p["disk_only"] != (self.target.kind == "external"):
                self.module.warn(f"Snapshot '{self.target.name}' exists as {self.target.kind}; it was kept as it is.")
            return self.before
        spec = SnapshotSpec(name=p["snapshot_name"], description=p["description"], memory=p["memory"],
                            quiesce=p["quiesce"], quiesce_fallback=p["quiesce_fallback"], disk_only=p["disk_only"])
        kind = "external" if spec.disk_only else "internal"
        running = self.vm.state in ("running", "paused", "blocked")
        planned = Snapshot(id=spec.name, name=spec.name, created=self.now, description=spec.description,
                           memory=spec.memory and running and not spec.disk_only, kind=kind, vm_state=self.vm.state)
        if not running:
            self.consistency = "offline"
        elif planned.memory:
            self.consistency = "memory"
        else:
            self.consistency = "quiesced" if spec.quiesce else "crash_consistent"
        self.planned = planned
        with_memory = ", with memory" if planned.memory else ""
        changes.step(f"create snapshot '{spec.name}' of VM '{self.vm.name}' ({kind}{with_memory})",
                     lambda: self._create(spec, timeout))
        return tree.with_new(self.before, planned)

    def _create(self, spec: SnapshotSpec, timeout: int) -> None:
        self.created = self.provider.create_snapshot(self.vm, spec, timeout)
        self.consistency = self.created.consistency

    def _remove(self, changes: ChangeSet, snap: Snapshot, timeout: int) -> None:
        self.removed.append(snap.name)
        changes.step(f"remove snapshot '{snap.name}' of VM '{self.vm.name}' ({snap.kind})",
                     lambda: self.provider.delete_snapshot(self.vm, snap, False, timeout))

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        if self.check_mode or not changes.changed:
            after = self.predicted
        else:
            after = self.provider.list_snapshots(self.vm)
            changes.after = tree.render(after)
        result: dict[str, t.Any] = {
            "vm": self.vm.to_dict(), "removed": self.removed, "plan": changes.plan,
            "snapshots": [s.to_dict(self.now) for s in after],
        }
        if self.params["state"] != "remove_all":
            snap = self.target
            if self.created is not None:
                snap = self.created.snapshot
            elif snap is None and changes.changed and self.params["state"] == "present":
                snap = self.planned
            if snap is not None:
                data = snap.to_dict(self.now)
                if self.params["state"] != "absent":
                    data = next((s.to_dict(self.now) for s in after if s.id == snap.id), data)
                if self.check_mode and self.created is None and self.target is None:
                    data.update(id=None, created=None, age_seconds=None)
                result["snapshot"] = data
            else:
                result["snapshot"] = None
            if self.consistency is not None and changes.changed:
                result["consistency"] = self.consistency
        return result


def main() -> None:
    spec = with_peer_options(vm_argument_spec()).update_argspec(
        state={"type": "str", "default": "present",
               "choices": ["present", "absent", "reverted", "revert", "remove_all"]},
        snapshot_name={"type": "str", "aliases": ["snapshot"]},
        snapshot_id={"type": "str"},
        description={"type": "str", "default": ""},
        memory={"type": "bool", "default": False, "aliases": ["memory_dump"]},
        quiesce={"type": "bool", "default": False},
        quiesce_fallback={"type": "str", "default": "fail", "choices": ["fail", "crash_consistent"]},
        disk_only={"type": "bool", "default": False},
        remove_children={"type": "bool", "default": False},
        power_off={"type": "bool", "default": False, "fallback": (env_fallback, ["VMSAFE_POWER_OFF"])},
        copy_to_location={"type": "str"},
        timeout={"type": "int", "default": 600},
    ).update(
        mutually_exclusive=[["snapshot_name", "snapshot_id"], ["memory", "disk_only"]],
        required_if=[
            ["state", "present", ["snapshot_name"]],
            ["state", "absent", ["snapshot_name", "snapshot_id"], True],
            ["state", "reverted", ["snapshot_name", "snapshot_id"], True],
            ["state", "revert", ["snapshot_name", "snapshot_id"], True],
        ],
    )
    run_module(spec, SnapshotTask)


if __name__ == "__main__":
    main()
