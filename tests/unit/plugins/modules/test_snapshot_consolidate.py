# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
from __future__ import annotations

import pytest

from ansible.module_utils import basic

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import VmNotFound
from ansible_collections.vmsafe.protect.plugins.module_utils._models import Leftover
from ansible_collections.vmsafe.protect.plugins.modules import snapshot_consolidate, vm_snapshot_info


def test_fleet_policy_check_then_real_then_again(run, fake_provider):
    fake_provider.seed("web01", snapshots=["pre-patch-1", "pre-patch-2", "golden"])
    fake_provider.seed("db01", snapshots=["pre-patch-a"])
    fake_provider.vms["db01"]["leftovers"].append(Leftover(kind="untracked_overlay", disk="vda", detail="x", bytes=5))
    args = dict(keep_last=1, name_pattern="^pre-patch")
    checked = run(snapshot_consolidate.main, check_mode=True, **args)
    assert checked["changed"] and fake_provider.writes == 0
    web = next(v for v in checked["vms"] if v["vm"]["name"] == "web01")
    assert [r["name"] for r in web["removed"]] == ["pre-patch-1"] and web["bytes_reclaimed"] == 1000
    assert sorted(web["kept"]) == ["golden", "pre-patch-2"]
    assert checked["summary"] == {"vms": 2, "removed": 1, "merged": 1, "bytes_reclaimed": 1005, "failed": 0}
    real = run(snapshot_consolidate.main, **args)
    assert real["summary"] == checked["summary"] and fake_provider.writes == 2
    assert all(not v["consolidation_needed"] for v in real["vms"])
    again = run(snapshot_consolidate.main, **args)
    assert again["changed"] is False and fake_provider.writes == 2


def test_depth_warning(run, fake_provider):
    fake_provider.seed("web01", snapshots=[f"s{i}" for i in range(6)])
    result = run(snapshot_consolidate.main, vm_name="web01", max_depth=5)
    assert result["changed"] is False
    assert any("6 levels deep (max_depth 5)" in w for w in result["vms"][0]["warnings"])


def test_info_filters(run, fake_provider):
    fake_provider.seed("web01", snapshots=["pre-1", "pre-2", "keep"])
    fake_provider.seed("db01", snapshots=["pre-x"])
    result = run(vm_snapshot_info.main, name_pattern="^pre", min_depth=2)
    assert [(s["vm_name"], s["name"]) for s in result["snapshots"]] == [("web01", "pre-2")]
    assert result["summary"]["vms"] == 2 and result["changed"] is False
    result = run(vm_snapshot_info.main, larger_than="1500")
    assert sorted(s["name"] for s in result["snapshots"]) == ["keep", "pre-2"]
    result = run(vm_snapshot_info.main, older_than="soon")
    assert result["failed"] and "Invalid older_than 'soon'" in result["msg"]


def test_info_bad_pattern_names_the_option(run, fake_provider):
    fake_provider.seed("web01", snapshots=["a"])
    result = run(vm_snapshot_info.main, name_pattern="(")
    assert result["failed"] and "Invalid name_pattern '('" in result["msg"]


@pytest.mark.parametrize("args", [dict(keep_last=1), dict(max_age="1d"), dict(keep_last=0, name_pattern="")])
def test_whole_host_policy_needs_name_pattern_or_all_snapshots(run, fake_provider, args):
    """Without either, a keep_last over a vCenter would make every snapshot of every VM a candidate."""
    fake_provider.seed("web01", snapshots=["golden", "pre-patch-1"])
    fake_provider.seed("db01", snapshots=["base"])
    for check_mode in (True, False):
        refused = run(snapshot_consolidate.main, check_mode=check_mode, **args)
        assert refused["failed"] and "no VM and no name_pattern given" in refused["msg"], refused
        assert "all_snapshots: true" in refused["msg"] and "name_pattern" in refused["msg"]
    assert fake_provider.writes == 0
    allowed = run(snapshot_consolidate.main, all_snapshots=True, **dict(args, keep_last=0, max_age=None))
    assert allowed["changed"] and allowed["summary"]["removed"] == 3 and fake_provider.writes == 3, allowed


def test_whole_host_without_a_removal_policy_or_with_a_vm_needs_neither(run, fake_provider):
    fake_provider.seed("web01", snapshots=["golden", "pre-patch-1"])
    repair_only = run(snapshot_consolidate.main)
    assert not repair_only.get("failed") and not repair_only["changed"], repair_only
    one_vm = run(snapshot_consolidate.main, vm_name="web01", keep_last=1)
    assert one_vm["changed"] and one_vm["summary"]["removed"] == 1, one_vm


@pytest.mark.parametrize("main, args", [
    (snapshot_consolidate.main, dict(keep_last=0, name_pattern="^pre")),
    (vm_snapshot_info.main, {}),
])
def test_a_vm_deleted_during_a_whole_host_run_is_skipped(run, fake_provider, monkeypatch, main, args):
    """Between listing the VMs and reading a VM's snapshots, another job may delete it: warn, go on."""
    fake_provider.seed("web01", snapshots=["pre-1"])
    fake_provider.seed("gone01", snapshots=["pre-2"])
    real = fake_provider.list_snapshots

    def vanishing(self, vm):
        if vm.name == "gone01":
            raise VmNotFound(f"VM '{vm.name}' ({vm.id}) is gone from fake")
        return real(self, vm)

    monkeypatch.setattr(fake_provider, "list_snapshots", vanishing)
    warned: list[str] = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, text: warned.append(text))
    result = run(main, **args)
    assert not result.get("failed"), result
    assert [v["vm"]["name"] for v in result["vms"]] == ["web01"]
    assert any("Skipped VM 'gone01': it disappeared" in w for w in warned), warned
    named = run(main, vm_name="gone01", **{k: v for k, v in args.items() if k != "name_pattern"})
    assert named["failed"] and "is gone from fake" in named["msg"]
