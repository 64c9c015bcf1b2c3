#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_test_network
short_description: Create or remove an isolated libvirt network for restore tests
version_added: 0.2.0
description:
  - Creates a transient libvirt network with no forwarding (a guest on it reaches the host's address on its bridge
    and other guests on it, nothing else), with DHCP so a restored guest configures its network as it always does,
    on an IPv4 /24 that no other libvirt network or host route uses. Removing it leaves nothing behind.
  - The P(vmsafe.protect.restore_test#role) role makes one per run under a unique name and removes it at the end.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.connection
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_VMSAFE
attributes:
  check_mode:
    support: full
    details:
      - Returns the network it would create (bridge and addresses chosen as for a real run); creates nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A network of that name that exists is left as it is (and returned); removing a missing one changes nothing.
options:
  name:
    description:
      - Name of the network. Use a unique name per test run.
    type: str
    required: true
  state:
    description:
      - V(present) creates the network (started, transient); V(absent) stops and removes it.
    type: str
    default: present
    choices: [present, absent]
  subnet:
    description:
      - The IPv4 network to use, for example V(10.250.3.0/24). By default a free /24 between V(10.200.0.0) and
        V(10.254.255.0) is chosen at random. The host takes the first address, DHCP hands out from the tenth.
    type: str
notes:
  - libvirt only (other hypervisors fail with a clear message). The host needs libvirt's network driver with
    C(dnsmasq) and C(iptables) (Debian C(dnsmasq-base), C(iptables)); libvirt adds the rules that block forwarding.
seealso:
  - module: vmsafe.protect.restore_test_vm
  - module: vmsafe.protect.vm_restore
"""

EXAMPLES = r"""
- name: Make an isolated network for tonight's restore tests
  vmsafe.protect.restore_test_network:
    name: "restoretest-{{ 999999 | random }}"
  register: net

- name: Remove it again
  vmsafe.protect.restore_test_network:
    name: "{{ net.network.name }}"
    state: absent
"""

RETURN = r"""
network:
  description: The network (as it is, or would be; C(null) after O(state=absent)).
  returned: success
  type: dict
  sample:
    name: restoretest-4711
    bridge: vsrt1a2b3c4d
    address: 10.231.14.1
    prefix: 24
    dhcp_start: 10.231.14.10
    dhcp_end: 10.231.14.254
    forward: null
    active: true
    persistent: false
applied:
  description:
    - When the module failed part-way, the steps that had completed before the failure, in order; the network is in
      the state they left it. An empty list when it failed before changing anything.
  returned: failure
  type: list
  elements: str
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 0.2
"""

import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils import _restore_test as rt
from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import connection_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import UnsupportedOperation
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module


class NetworkTask(ProviderTask):
    """Make the isolated network exist or not exist."""

    network: dict[str, t.Any] | None = None

    def plan(self, changes: ChangeSet) -> None:
        if self.params["hypervisor"] != "libvirt":
            raise UnsupportedOperation(
                f"Failed to manage network '{self.params['name']}' on {self.params['hypervisor']}: restore-test "
                "networks exist on libvirt only.")
        conn = self.provider.conn  # type: ignore[attr-defined]
        current = rt.find_network(conn, self.params["name"])
        if self.params["state"] == "absent":
            if current is not None:
                changes.step(f"remove network '{self.params['name']}'", lambda: rt.remove_network(conn, current))
            return
        if current is not None:
            self.network = rt.network_info(current)
            return
        plan = rt.plan_network(conn, self.params["name"], self.params["subnet"])
        self.network = plan

        def create() -> None:
            self.network = rt.create_network(conn, plan)

        changes.step(f"create isolated network '{plan['name']}' ({plan['address']}/{plan['prefix']})", create)

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        return {"network": self.network}


def main() -> None:
    spec = connection_spec().update_argspec(
        name={"type": "str", "required": True},
        state={"type": "str", "default": "present", "choices": ["present", "absent"]},
        subnet={"type": "str"},
    )
    run_module(spec, NetworkTask)


if __name__ == "__main__":
    main()
