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
    choices: [libvirt]
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
requirements:
  - libvirt-python (for O(hypervisor=libvirt)), on the host that runs the module
"""
