#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_snapshot_info
short_description: Report the snapshots of one VM or of every VM on a host
version_added: 0.1.0
description:
  - Lists snapshots with their age, size, depth, parent, memory and current flags, over one connection.
  - Per VM, reports the disk chain depth and whether consolidation is needed (overlays that belong to no
    snapshot, snapshot records whose overlays are gone from the disk chain, block jobs in progress).
  - Filters select which snapshots are reported; VMs are always all reported, with their matching snapshots.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.connection
  - vmsafe.protect.proxy
  - vmsafe.protect.vm_selector
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.INFO_MODULE
  - vmsafe.protect.attributes.ACTIONGROUP_VMSAFE
options:
  vm_name:
    description:
      - Name of the VM. When neither O(vm_name) nor O(vm_id) is given, every VM on the host is reported.
  older_than:
    description:
      - Only snapshots older than this, for example V(36h), V(7d), V(2w) or V(1d12h).
    type: str
  name_pattern:
    description:
      - Only snapshots whose name matches this regular expression (Python syntax, searched anywhere in the name).
    type: str
  min_depth:
    description:
      - Only snapshots at this depth of the tree or deeper (a root snapshot has depth 1).
    type: int
  larger_than:
    description:
      - Only snapshots whose known size is larger than this, for example V(500MiB) or V(2GB).
    type: str
seealso:
  - module: vmsafe.protect.vm_snapshot
  - module: vmsafe.protect.snapshot_consolidate
"""

EXAMPLES = r"""
- name: Report every snapshot on the KVM host
  vmsafe.protect.vm_snapshot_info:
  register: report

- name: Find forgotten snapshots older than a week
  vmsafe.protect.vm_snapshot_info:
    older_than: 7d
  register: stale

- name: Fail when any VM needs consolidation
  ansible.builtin.assert:
    that: report.summary.consolidation_needed == 0
    fail_msg: "{{ report.vms | selectattr('consolidation_needed') | map(attribute='vm.name') | list }}"

- name: Snapshots of one VM named pre-* at depth 3 or more
  vmsafe.protect.vm_snapshot_info:
    vm_name: web01
    name_pattern: '^pre-'
    min_depth: 3
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
    snapshot_count:
      description: All snapshots of the VM, before filtering.
      type: int
      returned: always
      sample: 3
    snapshots:
      description: The VM's snapshots that pass the filters, oldest first (see RV(snapshots) for the fields).
      type: list
      elements: dict
      returned: always
      sample: []
    snapshot_depth:
      description: Depth of the deepest snapshot in the tree.
      type: int
      returned: always
      sample: 2
    chain_depth:
      description: Longest disk image chain (1 = no overlays).
      type: int
      returned: always
      sample: 1
    consolidation_needed:
      description: Whether leftovers need consolidation (see RV(vms[].leftovers)).
      type: bool
      returned: always
      sample: false
    consolidation_reasons:
      description: Why consolidation is needed, one line each.
      type: list
      elements: str
      returned: always
      sample: []
    leftovers:
      description: Leftovers that M(vmsafe.protect.snapshot_consolidate) can repair (kind, disk, detail, files, bytes).
      type: list
      elements: dict
      returned: always
      sample: []
    disks:
      description: Disks with their image chain (active image first), allocation, and the free space of their storage (V(null) when unknown).
      type: list
      elements: dict
      returned: always
      sample:
        - target: vda
          path: /var/lib/libvirt/images/web01.qcow2
          chain: ["/var/lib/libvirt/images/web01.qcow2"]
          storage_free_bytes: 107374182400
snapshots:
  description: Every snapshot that passes the filters, across VMs, with the VM's name in C(vm_name).
  returned: success
  type: list
  elements: dict
  sample:
    - vm_name: web01
      id: pre-patch
      name: pre-patch
      description: CHG-1234
      created: "2026-11-20T02:00:00Z"
      age_seconds: 259200
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
summary:
  description: Counts over the whole report.
  returned: success
  type: dict
  sample: {"vms": 12, "snapshots": 4, "consolidation_needed": 0, "bytes": 3054492}
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 0.08
applied:
  description:
    - When the module failed, the steps that had completed before the failure; always an empty list, because
      this module changes nothing.
  returned: failure
  type: list
  elements: str
  sample: []
"""

import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._connection import vm_argument_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._consolidate import compile_pattern
from ansible_collections.vmsafe.protect.plugins.module_utils._peer_options import with_peer_options
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module
from ansible_collections.vmsafe.protect.plugins.module_utils._units import parse_duration, parse_size

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import Snapshot


class SnapshotInfoTask(ProviderTask):
    """Report snapshots and consolidation state; changes nothing."""

    def plan(self, changes: ChangeSet) -> None:
        p = self.params
        self.older_than = parse_duration(p["older_than"], "older_than") if p["older_than"] is not None else None
        self.larger_than = parse_size(p["larger_than"], "larger_than") if p["larger_than"] is not None else None
        self.pattern = compile_pattern(p["name_pattern"], "name_pattern")

    def keep(self, snap: Snapshot) -> bool:
        p = self.params
        if self.older_than is not None and (self.now - snap.created) <= self.older_than:
            return False
        if self.pattern is not None and not self.pattern.search(snap.name):
            return False
        if p["min_depth"] is not None and snap.depth < p["min_depth"]:
            return False
        if self.larger_than is not None and (snap.size_bytes is None or snap.size_bytes <= self.larger_than):
            return False
        return True

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        vms, flat = [], []
        for vm, snaps, status in self.vms_with_snapshots():
            kept = [s.to_dict(self.now) for s in snaps if self.keep(s)]
            vms.append({
                "vm": vm.to_dict(), "snapshot_count": len(snaps), "snapshots": kept,
                "snapshot_depth": max((s.depth for s in snaps), default=0), "chain_depth": status.chain_depth,
                "consolidation_needed": status.needed, "consolidation_reasons": status.reasons,
                "leftovers": [x.to_dict() for x in status.leftovers], "disks": [d.to_dict() for d in status.disks],
            })
            flat.extend(dict(s, vm_name=vm.name) for s in kept)
        summary = {
            "vms": len(vms), "snapshots": len(flat),
            "consolidation_needed": sum(1 for v in vms if v["consolidation_needed"]),
            "bytes": sum(s["size_bytes"] or 0 for s in flat),
        }
        return {"vms": vms, "snapshots": flat, "summary": summary}


def main() -> None:
    spec = with_peer_options(vm_argument_spec(vm_required=False)).update_argspec(
        older_than={"type": "str"},
        name_pattern={"type": "str"},
        min_depth={"type": "int"},
        larger_than={"type": "str"},
    )
    run_module(spec, SnapshotInfoTask)


if __name__ == "__main__":
    main()
