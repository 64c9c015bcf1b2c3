#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: snapshot_consolidate
short_description: Remove snapshots by age and count, merge overlay chains, repair leftovers
version_added: 0.1.0
description:
  - Applies a cleanup policy to one VM or to every VM on the host. Snapshots older than O(max_age), or beyond the
    O(keep_last) newest, are removed; their data is merged into what depends on them (internal snapshots are
    dropped from the image, external overlays are block-committed and pivoted).
  - Repairs leftovers when O(repair_leftovers=true), disk overlays that belong to no snapshot are
    merged, and snapshot records whose overlays are no longer in use are dropped.
  - Warns when a VM's snapshot tree or disk chain is deeper than O(max_depth); long chains slow every read.
  - One VM's failure does not stop the others; the module fails at the end and reports what was done per VM.
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
      - Lists exactly what would be removed or merged, and the bytes that would be reclaimed.
  diff_mode:
    support: full
    details:
      - Shows each VM's snapshot tree before and after.
  idempotent:
    support: full
options:
  vm_name:
    description:
      - Name of the VM. When neither O(vm_name) nor O(vm_id) is given, every VM on the host is processed.
  max_age:
    description:
      - Remove candidate snapshots older than this, for example V(36h), V(3d) or V(1w).
    type: str
  keep_last:
    description:
      - Keep only this many of the newest candidate snapshots per VM; older candidates are removed.
    type: int
  name_pattern:
    description:
      - Only snapshots whose name matches this regular expression are candidates. All, when unset.
      - Over a whole host (no O(vm_name) or O(vm_id)) with O(max_age) or O(keep_last), either this or
        O(all_snapshots=true) is required, so that a policy meant for one kind of snapshot never removes every
        snapshot of every VM of a vCenter.
    type: str
  all_snapshots:
    description:
      - Make every snapshot of every VM a candidate when no VM is named and no O(name_pattern) is given.
      - Without it, such a run fails before it looks at any VM.
    type: bool
    default: false
    version_added: 0.1.0
  protect_pattern:
    description:
      - Snapshots whose name matches this regular expression are never removed and do not count toward O(keep_last).
    type: str
  max_depth:
    description:
      - Warn when a VM's snapshot tree or disk image chain is deeper than this. Five to seven levels already hurt I/O.
    type: int
    default: 4
  repair_leftovers:
    description:
      - Merge overlays that belong to no snapshot, and drop snapshot records whose overlays are gone from the disk.
      - Block jobs that vmsafe did not start are reported, never taken over.
      - On Azure, remove snapshot sets that lack a disk's snapshot (partial sets) and delete the disks a revert took
        out of the VM (kept until then as the way back; run in check mode first to see them).
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for each removal or merge. When it is hit, the job is cancelled and that VM reports an error.
    type: int
    default: 1800
notes:
  - When neither O(max_age) nor O(keep_last) is given, no snapshot is removed; only leftovers are repaired.
  - The size of an internal libvirt snapshot is the saved RAM only (its disk clusters are shared with the image),
    so the C(bytes_reclaimed) of RV(summary) is a lower bound.
  - On VirtualBox, leftovers come from the media registry. C(orphaned_medium) is a differencing image in the VM's folder
    that nothing uses (deleted), C(inaccessible_medium) a missing image nothing uses (unregistered). A missing image
    the VM still uses is only reported. Verified against the project's fake VBoxManage only (see docs/virtualbox.md).
  - On Azure the size of a set is the provisioned size of its disks (Azure does not report what an incremental
    snapshot really stores), and a replaced disk counts with its provisioned size.
seealso:
  - module: vmsafe.protect.vm_snapshot_info
  - module: vmsafe.protect.vm_snapshot
"""

EXAMPLES = r"""
- name: Nightly hygiene - no pre-patch snapshot may live longer than 3 days
  vmsafe.protect.snapshot_consolidate:
    name_pattern: '^pre-patch'
    max_age: 3d
    protect_pattern: 'keep|golden'

- name: Show what a keep-2 policy would remove on one VM
  vmsafe.protect.snapshot_consolidate:
    vm_name: web01
    keep_last: 2
  check_mode: true
  register: plan

- name: Only repair leftovers everywhere
  vmsafe.protect.snapshot_consolidate:
    repair_leftovers: true
"""

RETURN = r"""
vms:
  description: One entry per VM examined.
  returned: success
  type: list
  elements: dict
  contains:
    vm:
      description: The VM (id, name, state, host).
      type: dict
      returned: always
      sample: {"id": "0b3aba08-caf1-45d6-a9fd-0f81ba99ba45", "name": "web01", "state": "running", "host": "qemu:///system"}
    removed:
      description: Snapshots removed (would be, in check mode), each with C(name), C(id), C(kind), C(size_bytes), C(reason).
      type: list
      elements: dict
      returned: always
      sample: [{"name": "pre-patch-1", "id": "pre-patch-1", "kind": "internal", "size_bytes": 763623, "reason": "age 4d is over max_age 3d"}]
    merged:
      description: Leftovers repaired (would be, in check mode), each with C(kind), C(disk), C(detail), C(files), C(bytes).
      type: list
      elements: dict
      returned: always
      sample: []
    kept:
      description: Names of the snapshots kept.
      type: list
      elements: str
      returned: always
      sample: ["golden"]
    bytes_reclaimed:
      description: Bytes freed, as far as the hypervisor can tell (a lower bound).
      type: int
      returned: always
      sample: 763623
    snapshot_depth:
      description: Depth of the deepest snapshot before the run.
      type: int
      returned: always
      sample: 2
    chain_depth:
      description: Longest disk image chain before the run.
      type: int
      returned: always
      sample: 1
    consolidation_needed:
      description: Whether the VM still needs consolidation after the run (before it, in check mode).
      type: bool
      returned: always
      sample: false
    warnings:
      description: Depth warnings and leftovers that were left alone.
      type: list
      elements: str
      returned: always
      sample: []
    error:
      description: The error that stopped this VM's cleanup, if any.
      type: str
      returned: when the VM failed
      sample: "Timed out after 1800 s merging disk vda of VM 'web01'"
summary:
  description: Totals.
  returned: success
  type: dict
  sample: {"vms": 3, "removed": 2, "merged": 1, "bytes_reclaimed": 1527246, "failed": 0}
plan:
  description: The steps taken (or planned in check mode), in order.
  returned: success
  type: list
  elements: str
  sample: ["web01: remove snapshot 'pre-patch-1' (age 4d is over max_age 3d)"]
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 12.7
applied:
  description:
    - When the module failed, the steps of RV(plan) that ran before the failure, one per VM with work to do. A VM
      whose step hit an error is listed too, and its entry in RV(vms) holds the C(error).
  returned: failure
  type: list
  elements: str
  sample: ["web01: remove snapshot 'pre-patch-1' (age 4d is over max_age 3d)"]
"""

import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import vm_argument_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._consolidate import Policy, compile_pattern, select
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument, VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmSelector
from ansible_collections.vmsafe.protect.plugins.module_utils._peer_options import with_peer_options
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module
from ansible_collections.vmsafe.protect.plugins.module_utils._units import parse_duration

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import Leftover, Snapshot, VmRef


class ConsolidateTask(ProviderTask):
    """Apply the cleanup policy VM by VM."""

    def plan(self, changes: ChangeSet) -> None:
        p = self.params
        removes = p["max_age"] is not None or p["keep_last"] is not None
        if removes and self.selector() is None and not p["name_pattern"] and not p["all_snapshots"]:
            raise InvalidArgument(
                f"Failed to apply max_age/keep_last on {self.provider.name} host {self.provider.host}: no VM and no "
                f"name_pattern given, so every snapshot of every VM would be a candidate. Set name_pattern (for "
                f"example '^pre-patch') to limit the policy to your snapshots, name a VM with vm_name, or set "
                f"all_snapshots: true if every snapshot of every VM really is a candidate.")
        if p["keep_last"] is not None and p["keep_last"] < 0:
            raise VmsafeError(f"keep_last must be 0 or more, got {p['keep_last']}.")
        policy = Policy(
            max_age=parse_duration(p["max_age"], "max_age") if p["max_age"] is not None else None,
            keep_last=p["keep_last"],
            name_pattern=compile_pattern(p["name_pattern"], "name_pattern"),
            protect_pattern=compile_pattern(p["protect_pattern"], "protect_pattern"),
        )
        self.entries: list[dict[str, t.Any]] = []
        befores, afters = [], []
        for vm, snaps, status in self.vms_with_snapshots():
            remove, keep = select(snaps, policy, self.now)
            leftovers = [x for x in status.leftovers if x.kind != "block_job"] if p["repair_leftovers"] else []
            entry: dict[str, t.Any] = {
                "vm": vm.to_dict(),
                "removed": [dict(name=s.name, id=s.id, kind=s.kind, size_bytes=s.size_bytes, reason=why)
                            for s, why in remove],
                "merged": [x.to_dict() for x in leftovers],
                "kept": [s.name for s, _why in keep],
                "bytes_reclaimed": sum(s.size_bytes or 0 for s, _why in remove) + sum(x.bytes or 0 for x in leftovers),
                "snapshot_depth": max((s.depth for s in snaps), default=0),
                "chain_depth": status.chain_depth,
                "consolidation_needed": status.needed,
                "warnings": self._warnings(vm, snaps, status.chain_depth, status.leftovers),
            }
            self.entries.append(entry)
            for warning in entry["warnings"]:
                self.module.warn(warning)
            if remove or leftovers:
                descriptions = [f"{vm.name}: merge {x.kind} on {x.disk} ({x.detail})" for x in leftovers]
                descriptions += [f"{vm.name}: remove snapshot '{s.name}' ({why})" for s, why in remove]
                changes.step("; ".join(descriptions), self._vm_step(vm, entry, leftovers, [s for s, _why in remove]))
            befores.append(f"{vm.name}:\n{tree.render(snaps)}")
            afters.append(f"{vm.name}:\n{tree.render(tree.without(snaps, {s.id for s, _why in remove}))}")
        changes.before = "".join(befores)
        changes.after = "".join(afters)
        self.partial["vms"] = self.entries

    def _warnings(self, vm: VmRef, snaps: list[Snapshot], chain_depth: int, leftovers: list[Leftover]) -> list[str]:
        limit = self.params["max_depth"]
        found = []
        depth = max((s.depth for s in snaps), default=0)
        if depth > limit:
            found.append(f"VM '{vm.name}' has a snapshot tree {depth} levels deep (max_depth {limit}); "
                         f"deep trees slow the disk. Remove old snapshots.")
        if chain_depth > limit:
            found.append(f"VM '{vm.name}' has a disk chain of {chain_depth} images (max_depth {limit}); "
                         f"every read walks it. Remove or merge external snapshots.")
        found += [f"VM '{vm.name}': {x.detail}; left alone." for x in leftovers if x.kind == "block_job"]
        return found

    def _vm_step(self, vm: VmRef, entry: dict[str, t.Any], leftovers: list[Leftover],
                 remove: list[Snapshot]) -> t.Callable[[], None]:
        timeout = self.params["timeout"]

        def run() -> None:
            try:
                for leftover in leftovers:
                    self.provider.repair_leftover(vm, leftover, timeout)
                for snap in remove:
                    self.provider.delete_snapshot(vm, snap, False, timeout)
            except VmsafeError as exc:
                entry["error"] = str(exc)
        return run

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        if not self.check_mode and changes.changed:
            for entry in self.entries:
                # Report what really happened, also when a VM stopped half-way.
                vm = self.provider.find_vm(VmSelector(id=entry["vm"]["id"]))
                snaps = self.provider.list_snapshots(vm)
                remaining = {s.id for s in snaps}
                left = [r["name"] for r in entry["removed"] if r["id"] in remaining]
                if left and "error" not in entry:
                    entry["error"] = (f"snapshot(s) {', '.join(left)} still exist after their removal; run again, "
                                      f"and check the VM with vmsafe.protect.vm_snapshot_info")
                entry["removed"] = [r for r in entry["removed"] if r["id"] not in remaining]
                entry["consolidation_needed"] = self.provider.consolidation_status(vm, snaps).needed
        failed = [e for e in self.entries if "error" in e]
        result = {
            "vms": self.entries, "plan": changes.plan,
            "summary": {
                "vms": len(self.entries),
                "removed": sum(len(e["removed"]) for e in self.entries),
                "merged": sum(len(e["merged"]) for e in self.entries),
                "bytes_reclaimed": sum(e["bytes_reclaimed"] for e in self.entries),
                "failed": len(failed),
            },
        }
        if failed:
            self.partial.update(result)
            raise VmsafeError("Consolidation failed on {0} of {1} VM(s): {2}".format(
                len(failed), len(self.entries), "; ".join(f"{e['vm']['name']}: {e['error']}" for e in failed)))
        return result


def main() -> None:
    spec = with_peer_options(vm_argument_spec(vm_required=False)).update_argspec(
        max_age={"type": "str"},
        keep_last={"type": "int"},
        name_pattern={"type": "str"},
        all_snapshots={"type": "bool", "default": False},
        protect_pattern={"type": "str"},
        max_depth={"type": "int", "default": 4},
        repair_leftovers={"type": "bool", "default": True},
        timeout={"type": "int", "default": 1800},
    )
    run_module(spec, ConsolidateTask)


if __name__ == "__main__":
    main()
