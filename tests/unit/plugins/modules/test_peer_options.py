# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The peers' option names (vmware.vmware, community.vmware) where they mean what ours mean, through the modules.

Before these names were accepted, each case failed with "Unsupported parameters" or a refused choice.
"""

from __future__ import annotations

import pytest

from ansible_collections.vmsafe.protect.plugins.modules import (
    snapshot_consolidate,
    vm_backup,
    vm_snapshot,
    vm_snapshot_info,
)


def test_moid_selects_the_vm_like_vm_id(run, fake_provider):
    fake_provider.seed("web01")
    fake_provider.seed("web02")
    result = run(vm_snapshot.main, moid="id-web02", snapshot_name="pre-patch")
    assert not result.get("failed"), result
    assert result["vm"]["name"] == "web02" and result["changed"]
    assert [s.name for s in fake_provider.vms["web02"]["snapshots"]] == ["pre-patch"]
    assert fake_provider.vms["web01"]["snapshots"] == []


def test_moid_and_vm_name_are_mutually_exclusive(run, fake_provider):
    fake_provider.seed("web01")
    result = run(vm_snapshot.main, moid="id-web01", vm_name="web01", snapshot_name="x")
    assert result["failed"] and "mutually exclusive" in result["msg"], result
    assert fake_provider.writes == 0


@pytest.mark.parametrize("memory_dump, consistency", [(True, "memory"), (False, "crash_consistent")])
def test_memory_dump_is_memory(run, fake_provider, memory_dump, consistency):
    fake_provider.seed("web01")
    result = run(vm_snapshot.main, vm_name="web01", snapshot_name="pre", memory_dump=memory_dump)
    assert not result.get("failed"), result
    assert result["consistency"] == consistency and result["snapshot"]["memory"] is memory_dump


def test_state_revert_reverts_like_reverted(run, fake_provider):
    fake_provider.seed("web01", snapshots=["base", "later"])
    checked = run(vm_snapshot.main, check_mode=True, vm_name="web01", snapshot_name="base", state="revert")
    assert checked["changed"] and fake_provider.writes == 0, checked
    result = run(vm_snapshot.main, vm_name="web01", snapshot_name="base", state="revert")
    assert not result.get("failed"), result
    assert result["changed"] and fake_provider.writes == 1
    assert result["plan"] == ["revert VM 'web01' to snapshot 'base'"]
    assert [s["name"] for s in result["snapshots"] if s["current"]] == ["base"]
    assert set(result) == set(checked)


def test_state_revert_needs_a_snapshot(run, fake_provider):
    fake_provider.seed("web01", snapshots=["base"])
    result = run(vm_snapshot.main, vm_name="web01", state="revert")
    assert result["failed"] and "snapshot_name, snapshot_id" in result["msg"], result


def test_integer_snapshot_id_names_the_vsphere_number(run, fake_provider):
    """vmware.vmware's snapshot_id is vSphere's integer id; ours is the MoID, and both name one snapshot."""
    fake_provider.seed("web01", snapshots=[("pre", None, "snapshot-11"), ("pre", "snapshot-11", "snapshot-12")])
    for number, snap in enumerate(fake_provider.vms["web01"]["snapshots"], start=1):
        snap.number = number
    result = run(vm_snapshot.main, vm_name="web01", snapshot_id=2, state="absent")
    assert not result.get("failed"), result
    assert result["changed"] and result["snapshot"]["id"] == "snapshot-12" and result["snapshot"]["number"] == 2
    assert [s.id for s in fake_provider.vms["web01"]["snapshots"]] == ["snapshot-11"]
    # an id that is neither a MoID nor a number of this VM still finds nothing
    again = run(vm_snapshot.main, vm_name="web01", snapshot_id=2, state="absent")
    assert not again["changed"] and fake_provider.writes == 1


@pytest.mark.parametrize("main, extra", [
    (vm_snapshot.main, {"vm_name": "web01", "snapshot_name": "p"}),
    (vm_snapshot_info.main, {}),
    (snapshot_consolidate.main, {"vm_name": "web01"}),
])
def test_proxy_options_are_accepted_and_read_from_the_environment(run, fake_provider, monkeypatch, main, extra):
    """The options reach the provider; tests/integration/test_vmware_peer_options.py shows pyVmomi using them."""
    seen = []
    real_init = fake_provider.__init__

    def spy(self, params, warn):
        seen.append((params.get("proxy_host"), params.get("proxy_port")))
        real_init(self, params, warn)

    monkeypatch.setattr(fake_provider, "__init__", spy)
    fake_provider.seed("web01")
    result = run(main, proxy_host="proxy.example.com", proxy_port=3128, **extra)
    assert not result.get("failed"), result
    monkeypatch.setenv("VMWARE_PROXY_HOST", "envproxy.example.com")
    monkeypatch.setenv("VMWARE_PROXY_PORT", "8080")
    result = run(main, **extra)
    assert not result.get("failed"), result
    assert seen == [("proxy.example.com", 3128), ("envproxy.example.com", 8080)]


def test_vm_backup_takes_moid_and_proxy_options(run, fake_provider, tmp_path):
    fake_provider.seed("web01")
    result = run(vm_backup.main, moid="id-web01", proxy_host="proxy.example.com", init=True,
                 repository=str(tmp_path / "repo"), passphrase="correct horse")
    # the options were taken and the VM found by its MoID; the in-memory provider has no backup support
    assert result["vm"]["name"] == "web01", result
    assert result["msg"] == "Backups are not supported on fake yet."
