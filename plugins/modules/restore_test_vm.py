#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: restore_test_vm
short_description: Boot a restored VM on an isolated network and probe it, or remove it with its files
version_added: 0.2.0
description:
  - With O(state=started), takes a VM restored by M(vmsafe.protect.vm_restore) (O(vmsafe.protect.vm_restore#module:target=new_vm)),
    moves every network card onto the isolated network O(network) (same count and models, so the guest names its
    interfaces as before), drops QEMU command-line network back-ends it inherited from the original (user-mode
    networking, port forwards), writes its serial console to a file in O(dest), starts it, waits for its DHCP
    lease and runs the O(probes) against that address.
  - A test that fails is a result, not an error - RV(passed) is V(false), with each probe's outcome and the last
    console lines; the module fails only when it cannot do the test (no such VM, libvirt errors, bad probes).
  - With O(state=absent), stops and undefines the VM and deletes its disks and console file, but only files inside
    O(dest); others are left alone and listed in RV(kept_files).
  - The P(vmsafe.protect.restore_test#role) role uses it between M(vmsafe.protect.vm_restore) and
    M(vmsafe.protect.backup_test_result).
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.connection
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_VMSAFE
attributes:
  check_mode:
    support: full
    details:
      - Says what it would change (RV(isolation)) and runs no probe; RV(passed) is V(null).
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - O(state=started) on a running VM does not redefine or restart it, but probes it again. O(state=absent) on a
        missing VM changes nothing.
options:
  vm_name:
    description:
      - The restored VM to test (never the original - its network cards are moved and it is removed afterwards).
    type: str
    required: true
  state:
    description:
      - V(started) isolates, boots and probes the VM; V(absent) removes it and its files inside O(dest).
    type: str
    default: started
    choices: [started, absent]
  network:
    description:
      - The isolated network (see M(vmsafe.protect.restore_test_network)). Required with O(state=started).
    type: str
  dest:
    description:
      - The folder the VM was restored into (O(vmsafe.protect.vm_restore#module:dest)). The console file is written
        there, and O(state=absent) deletes only files inside it.
    type: path
    required: true
  boot_timeout:
    description:
      - Seconds to wait for the guest's DHCP lease after the start. A guest that does not boot fails here.
    type: int
    default: 300
  probes:
    description:
      - What to check once the guest has an address, in order. All must pass. With none, a DHCP lease is the test.
    type: list
    elements: dict
    default: []
    suboptions:
      type:
        description:
          - V(ping) (ICMP echo), V(tcp) (a connection to O(probes[].port) is accepted), V(ssh) (an SSH banner on
            O(probes[].port)), V(command) (O(probes[].command) run over SSH exits with 0 and, with
            O(probes[].expect_output), prints a match).
        type: str
        required: true
        choices: [ping, tcp, ssh, command]
      name:
        description: A label for reports. Defaults to the type (and port).
        type: str
      port:
        description: The port (required for V(tcp); V(22) for V(ssh) and V(command)).
        type: int
      timeout:
        description: Seconds the probe may keep trying (services start after the network).
        type: float
        default: 60
      command:
        description: The command to run on the guest (V(command) probes), as the remote shell reads it.
        type: str
      user:
        description: SSH user of V(command) probes.
        type: str
        default: root
      key_file:
        description: SSH private key of V(command) probes (else the SSH client's defaults).
        type: path
      expect_output:
        description: A regular expression the command's standard output must match.
        type: str
notes:
  - libvirt only. Probes run from the host this module runs on, which must be the libvirt host (it reaches the
    isolated network through its bridge). V(ping) needs root or unprivileged ICMP sockets; V(command) needs the
    C(ssh) client; host keys of the restored guest are not checked (it is a throwaway copy on an isolated network).
seealso:
  - module: vmsafe.protect.restore_test_network
  - module: vmsafe.protect.vm_restore
  - module: vmsafe.protect.backup_test_result
"""

EXAMPLES = r"""
- name: Boot the restored copy of web01 on the test network and check SSH and the web server
  vmsafe.protect.restore_test_vm:
    vm_name: web01-restoretest
    network: restoretest-4711
    dest: /var/lib/libvirt/images/restoretest
    boot_timeout: 300
    probes:
      - type: ping
      - type: ssh
      - type: tcp
        port: 443
      - type: command
        command: systemctl is-system-running --wait
        key_file: /root/.ssh/restoretest
        expect_output: "^(running|degraded)"
  register: probe

- name: Remove the test VM and its disks
  vmsafe.protect.restore_test_vm:
    vm_name: web01-restoretest
    dest: /var/lib/libvirt/images/restoretest
    state: absent
"""

RETURN = r"""
passed:
  description: Whether the guest got an address and every probe passed (C(null) in check mode and with O(state=absent)).
  returned: success
  type: bool
  sample: true
address:
  description: The guest's address on the isolated network (C(null) when it got none).
  returned: success
  type: str
  sample: 10.231.14.57
boot_seconds:
  description: Seconds from the start to the DHCP lease (or to giving up).
  returned: success
  type: float
  sample: 24.6
message:
  description: Why the test failed, or V("") when it passed.
  returned: success
  type: str
  sample: "no DHCP lease within 300 s: the guest did not boot far enough to configure its network"
probes:
  description: Each probe's result, in order (probes after a failed boot are reported as not run).
  returned: success
  type: list
  elements: dict
  sample:
    - {"name": "ssh", "type": "ssh", "ok": true, "seconds": 3.2, "attempts": 4, "port": 22, "detail": "SSH-2.0-OpenSSH_9.2p1"}
console_tail:
  description: The last lines the guest wrote to its serial console (empty with O(state=absent)).
  returned: success
  type: list
  elements: str
  sample: ["Kernel panic - not syncing: No working init found."]
isolation:
  description: What was changed in the VM's definition to isolate it.
  returned: success
  type: list
  elements: str
  sample: ["interface (user) moved to network restoretest-4711", "serial console written to /srv/rt/web01.console.log"]
removed_files:
  description: Files deleted with O(state=absent).
  returned: success
  type: list
  elements: str
  sample: ["/var/lib/libvirt/images/restoretest/web01-restoretest-vda.qcow2"]
kept_files:
  description: Files of the VM outside O(dest), left alone by O(state=absent).
  returned: success
  type: list
  elements: str
  sample: []
applied:
  description:
    - When the module failed part-way, the steps that had completed before the failure, in order; the VM is in
      the state they left it. An empty list when it failed before changing anything.
  returned: failure
  type: list
  elements: str
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 31.0
"""

import os
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils import _restore_test as rt
from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import connection_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument, UnsupportedOperation
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module


class RestoreTestVmTask(ProviderTask):
    """Isolate, boot and probe a restored VM, or remove it."""

    def plan(self, changes: ChangeSet) -> None:
        p = self.params
        if p["hypervisor"] != "libvirt":
            raise UnsupportedOperation(f"Failed to test VM '{p['vm_name']}' on {p['hypervisor']}: restore tests run "
                                       "on libvirt only.")
        conn = self.provider.conn  # type: ignore[attr-defined]
        self.out: dict[str, t.Any] = {"passed": None, "address": None, "boot_seconds": 0.0, "message": "",
                                      "probes": [], "console_tail": [], "isolation": [], "removed_files": [],
                                      "kept_files": []}
        self.console = os.path.join(p["dest"], f"{p['vm_name']}.console.log")
        if p["state"] == "absent":
            dom = rt.find_domain(conn, p["vm_name"])
            if dom is not None:
                changes.step(f"remove VM '{p['vm_name']}' and its files in {p['dest']}", lambda: self._remove(conn, dom))
            return
        if not p["network"]:
            raise InvalidArgument("network is required with state: started (see vmsafe.protect.restore_test_network).")
        probes = [rt.normalize_probe(s) for s in p["probes"]]
        dom = rt.require_domain(conn, p["vm_name"])
        if rt.find_network(conn, p["network"]) is None:
            raise InvalidArgument(f"Failed to test VM '{p['vm_name']}' on libvirt host {conn.getURI()}: there is no "
                                  f"network '{p['network']}'; create it with vmsafe.protect.restore_test_network.")
        if not dom.isActive():
            xml, self.out["isolation"] = rt.isolate_domain_xml(dom.XMLDesc(0), p["network"], self.console)
            changes.step(f"move VM '{p['vm_name']}' onto network '{p['network']}'", lambda: conn.defineXML(xml))
        changes.step(f"start VM '{p['vm_name']}' and probe it", lambda: self._boot_and_probe(conn, probes))

    def _remove(self, conn: t.Any, dom: t.Any) -> None:
        self.out["removed_files"], self.out["kept_files"] = rt.remove_domain(conn, dom, self.params["dest"])
        if self.out["kept_files"]:
            self.module.warn(f"Left alone (outside {self.params['dest']}): {', '.join(self.out['kept_files'])}")

    def _boot_and_probe(self, conn: t.Any, probes: list[dict[str, t.Any]]) -> None:
        dom = rt.require_domain(conn, self.params["vm_name"])
        address, seconds, why = rt.boot_and_wait(dom, float(self.params["boot_timeout"]))
        self.out.update(address=address, boot_seconds=round(seconds, 2))
        results = []
        for probe in probes:
            if address is None:
                results.append({"name": probe["name"], "type": probe["type"], "ok": False, "seconds": 0,
                                "attempts": 0, "detail": "not run: the guest has no address"})
            else:
                results.append(rt.run_probe(probe, address))
        failed = [r["name"] for r in results if not r["ok"]]
        self.out["probes"] = results
        self.out["passed"] = address is not None and not failed
        self.out["message"] = why or (f"probes failed: {', '.join(failed)}" if failed else "")
        self.out["console_tail"] = rt.console_tail(self.console)

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        return dict(self.out)


def main() -> None:
    probe = {
        "type": {"type": "str", "required": True, "choices": list(rt.PROBE_TYPES)},
        "name": {"type": "str"},
        "port": {"type": "int"},
        "timeout": {"type": "float", "default": 60},
        "command": {"type": "str"},
        "user": {"type": "str", "default": "root"},
        "key_file": {"type": "path", "no_log": False},
        "expect_output": {"type": "str"},
    }
    spec = connection_spec().update_argspec(
        vm_name={"type": "str", "required": True},
        state={"type": "str", "default": "started", "choices": ["started", "absent"]},
        network={"type": "str"},
        dest={"type": "path", "required": True},
        boot_timeout={"type": "int", "default": 300},
        probes={"type": "list", "elements": "dict", "default": [], "options": probe},
    )
    run_module(spec, RestoreTestVmTask)


if __name__ == "__main__":
    main()
