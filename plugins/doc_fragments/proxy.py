# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The HTTP proxy options of the vSphere connection (names and variables as in vmware.vmware)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  proxy_host:
    description:
      - For O(hypervisor=vmware), the host name or address of an HTTP proxy that relays the connection to the vCenter
        or ESXi host (an HTTP C(CONNECT) tunnel; TLS still runs end to end with the vSphere host and
        O(validate_certs) still applies). Disk reads of M(vmsafe.protect.vm_backup) go through it too.
      - When not set, E(VMWARE_PROXY_HOST) is used. Same name and meaning as in C(vmware.vmware) and
        C(community.vmware). Ignored by the other hypervisors.
    type: str
    version_added: 0.1.0
  proxy_port:
    description:
      - The TCP port of O(proxy_host). When not set, E(VMWARE_PROXY_PORT) is used, then V(80).
    type: int
    version_added: 0.1.0
"""
