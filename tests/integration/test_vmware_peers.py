# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The peers' own snapshot modules against the same vcsim, so the simulator is known to behave like vSphere for them.

Needs the peers' venv (Python 3.12+, ansible 14.5): scripts/peers-venv.sh creates it in .cache/peers-venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

PEERS_BIN = os.path.join(ROOT, ".cache", "peers-venv", "bin")
Run = t.Callable[..., t.Dict[str, t.Any]]

PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/vmware.vmware.vmware: &conn
      {{hostname: "{host}", port: {port}, username: "{user}", password: "{password}", validate_certs: false}}
    group/community.vmware.vmware: *conn
  vars:
    vm: &vm {{name: DC0_H0_VM0, datacenter: DC0, folder: /DC0/vm}}
  tasks:
    - name: vmware.vmware creates
      vmware.vmware.vm_snapshot: {{<<: *vm, snapshot_name: peer-1, description: by vmware.vmware, state: present}}
      register: create
    - name: vmware.vmware create again (idempotent)
      vmware.vmware.vm_snapshot: {{<<: *vm, snapshot_name: peer-1, state: present}}
      register: create_again
    - name: vmware.vmware reads
      vmware.vmware.vm_snapshot_info: *vm
      register: info
    - name: community.vmware creates a second one
      community.vmware.vmware_guest_snapshot: {{<<: *vm, snapshot_name: peer-2, state: present}}
      register: create2
    - name: community.vmware reverts to the first
      community.vmware.vmware_guest_snapshot: {{<<: *vm, snapshot_name: peer-1, state: revert}}
      register: revert
    - name: community.vmware reads
      community.vmware.vmware_guest_snapshot_info: *vm
      register: info2
    - name: Leave them for vmsafe.protect to see
      ansible.builtin.assert:
        that:
          - create is changed
          - create_again is not changed
          - revert is changed
          - info2.guest_snapshots.current_snapshot.name == "peer-1"
          - info2.guest_snapshots.snapshots | map(attribute="name") | sort == ["peer-1", "peer-2"]
"""

CLEANUP = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: vmware.vmware removes one
      vmware.vmware.vm_snapshot:
        {{hostname: "{host}", port: {port}, username: "{user}", password: "{password}", validate_certs: false,
          name: DC0_H0_VM0, datacenter: DC0, folder: /DC0/vm, snapshot_name: vmsafe-made, state: absent}}
      register: removed
    - name: community.vmware removes all
      community.vmware.vmware_guest_snapshot:
        {{hostname: "{host}", port: {port}, username: "{user}", password: "{password}", validate_certs: false,
          name: DC0_H0_VM0, datacenter: DC0, folder: /DC0/vm, state: remove_all}}
      register: remove_all
    - ansible.builtin.assert:
        that: [removed is changed, remove_all is changed]
"""


def playbook(tmp_path: t.Any, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "play.yml"
    path.write_text(text)
    env = dict(os.environ, ANSIBLE_DEPRECATION_WARNINGS="false", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)  # the peers come with the ansible package of that venv
    return subprocess.run([os.path.join(PEERS_BIN, "ansible-playbook"), str(path)], capture_output=True, text=True,
                          env=env, check=False, timeout=600)


# scripts/test.sh makes the venv and sets VMSAFE_REQUIRE_PEERS=1: there a missing venv fails instead of skipping.
@pytest.mark.skipif(not os.path.exists(os.path.join(PEERS_BIN, "ansible-playbook"))
                    and os.environ.get("VMSAFE_REQUIRE_PEERS") != "1",
                    reason="no peers venv: run scripts/peers-venv.sh (Python 3.12+, ansible 14.5)")
def test_peer_modules_and_vmsafe_share_one_vcsim(tmp_path: t.Any, ansible: Run) -> None:
    with Vcsim() as sim:
        conn = {"host": sim.host, "port": sim.port, "user": sim.username, "password": sim.password}
        first = playbook(tmp_path, PLAY.format(**conn))
        assert first.returncode == 0, first.stdout[-4000:]

        # What the peers made, vmsafe.protect reads: names, tree and current snapshot agree.
        info = ansible("vm_snapshot_info", sim.module_args(vm_name="DC0_H0_VM0"))
        snaps = {s["name"]: s for s in info["vms"][0]["snapshots"]}
        assert sorted(snaps) == ["peer-1", "peer-2"], json.dumps(info)[:2000]
        assert snaps["peer-1"]["current"] and snaps["peer-2"]["parent"] == snaps["peer-1"]["id"]
        assert snaps["peer-1"]["description"] == "by vmware.vmware"

        # And what vmsafe.protect makes, the peers remove.
        made = ansible("vm_snapshot", sim.module_args(vm_name="DC0_H0_VM0", snapshot_name="vmsafe-made"))
        assert made["changed"], made
        second = playbook(tmp_path, CLEANUP.format(**conn))
        assert second.returncode == 0, second.stdout[-4000:]
        after = ansible("vm_snapshot_info", sim.module_args(vm_name="DC0_H0_VM0"))
        assert after["vms"][0]["snapshot_count"] == 0
