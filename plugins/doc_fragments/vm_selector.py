# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""How a module names the VM it works on."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  vm_name:
    description:
      - Name of the VM (the libvirt domain name).
      - Mutually exclusive with O(vm_id).
    type: str
    aliases: [name]
    version_added: 0.1.0
  vm_id:
    description:
      - UUID of the VM. On VMware, also its managed object id (MoID, for example V(vm-42)) or instance UUID.
      - O(moid) is the name C(vmware.vmware) and C(community.vmware) use for the MoID.
      - Mutually exclusive with O(vm_name).
    type: str
    aliases: [uuid, moid]
    version_added: 0.1.0
"""
