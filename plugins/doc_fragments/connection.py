# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Connection options shared by every vmsafe.protect module."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  hypervisor:
    description:
      - Which hypervisor provider to use.
      - Can also be set with the E(VMSAFE_HYPERVISOR) environment variable.
    type: str
    default: libvirt
    choices: [libvirt, vmware]
    version_added: 0.1.0
  uri:
    description:
      - The libvirt connection URI, for example V(qemu:///system) or V(qemu+ssh://root@kvm01/system).
      - For V(qemu+ssh://), the SSH key must be usable without a prompt (agent or unencrypted key).
      - When not set, E(VMSAFE_LIBVIRT_URI) or E(LIBVIRT_DEFAULT_URI) is used, then V(qemu:///system).
    type: str
    version_added: 0.1.0
  connect_timeout:
    description:
      - Seconds to wait for the connection to the hypervisor before failing.
    type: int
    default: 30
    version_added: 0.1.0
  hostname:
    description:
      - The vCenter or ESXi host, for O(hypervisor=vmware).
      - When not set, E(VMWARE_HOST) is used.
    type: str
    version_added: 0.1.0
  username:
    description:
      - The vSphere user, for O(hypervisor=vmware).
      - When not set, E(VMWARE_USER) is used.
    type: str
    aliases: [user, admin]
    version_added: 0.1.0
  password:
    description:
      - The vSphere user's password, for O(hypervisor=vmware).
      - When not set, E(VMWARE_PASSWORD) is used.
    type: str
    aliases: [pass, pwd]
    version_added: 0.1.0
  port:
    description:
      - The HTTPS port of the vSphere API, for O(hypervisor=vmware).
      - When not set, E(VMWARE_PORT) is used, then V(443).
    type: int
    default: 443
    version_added: 0.1.0
  validate_certs:
    description:
      - Whether to verify the vSphere host's TLS certificate, for O(hypervisor=vmware).
      - Set V(false) only for lab hosts with self-signed certificates; the connection is then open to impersonation.
      - When not set, E(VMWARE_VALIDATE_CERTS) is used, then V(true).
    type: bool
    default: true
    version_added: 0.1.0
  datacenter:
    description:
      - Look for VMs in this datacenter only, for O(hypervisor=vmware). All datacenters when not set.
    type: str
    version_added: 0.1.0
  folder:
    description:
      - Look for VMs in this VM folder only (and its subfolders), for O(hypervisor=vmware).
      - Relative to the datacenter's VM folder (needs O(datacenter)), or a full inventory path such as V(/DC0/vm/prod).
    type: str
    version_added: 0.1.0
requirements:
  - libvirt-python (for O(hypervisor=libvirt)), on the host that runs the module
  - pyvmomi (for O(hypervisor=vmware)), on the host that runs the module
"""
