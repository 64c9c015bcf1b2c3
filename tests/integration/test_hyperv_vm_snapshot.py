# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Hyper-V provider end to end: modules run by the real ``ansible`` command against the WinRM simulator.

No Hyper-V runs here. The simulator (tests/hyperv_sim) speaks WS-Management over HTTPS with real NTLM and
runs only the scripts the collection ships; every test checks that it rejected nothing.
"""

from __future__ import annotations

import os
import sys
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from hyperv_sim.server import Simulator  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (  # noqa: E402
    ProviderError,
    SnapshotNotFound,
    VmNotFound,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_scripts  # noqa: E402

NASTY_VM = "web'01\"; Remove-VM * -Force; $(Stop-Computer) `n"
NASTY_SNAP = "pre'; $payload = 1; `$x $(Get-Process) \"@{} ünï 名前"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Simulator]:
    with Simulator(str(tmp_path_factory.mktemp("hyperv-sim"))) as sim:
        yield sim


@pytest.fixture
def sim(server: Simulator) -> t.Iterator[Simulator]:
    """The running simulator with a fresh host model; fails the test if it rejected any command."""
    server.host.__init__()  # pylint: disable=unnecessary-dunder-call  # reset the model, keep the server
    server.auth_failures = 0
    server.terminated.clear()
    yield server
    assert server.host.rejected == [], "the simulator rejected commands the collection sent"


def conn(sim: Simulator, **extra: t.Any) -> dict[str, t.Any]:
    args = {"hypervisor": "hyperv", "hostname": "127.0.0.1", "port": sim.port, "username": sim.username,
            "password": sim.password, "ca_path": sim.cert_path, "connect_timeout": 20}
    args.update(extra)
    return args


def names(sim: Simulator, vm: str) -> list[str]:
    return sorted(s.name for s in sim.host.vm_by_name(vm).checkpoints.values())


def test_snapshot_lifecycle_check_mode_idempotence(ansible, sim):
    sim.host.add_vm("web01")
    args = conn(sim, vm_name="web01", snapshot_name="pre-patch")
    r_check = ansible("vm_snapshot", args, check=True)
    assert r_check["changed"] is True and names(sim, "web01") == []
    r_real = ansible("vm_snapshot", args)
    assert r_real["changed"] is True, r_real
    assert r_real["consistency"] == "memory"  # a standard checkpoint of a running VM saves its memory
    assert r_real["snapshot"]["name"] == "pre-patch" and r_real["snapshot"]["current"] is True
    assert names(sim, "web01") == ["pre-patch"]
    r_again = ansible("vm_snapshot", args)
    assert r_again["changed"] is False
    ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_name="second"))
    r_revert = ansible("vm_snapshot", dict(args, state="reverted"))
    assert r_revert["changed"] is True
    vm = sim.host.vm_by_name("web01")
    assert vm.checkpoints[vm.current].name == "pre-patch"
    r_absent_check = ansible("vm_snapshot", dict(args, state="absent"), check=True)
    assert r_absent_check["changed"] is True and names(sim, "web01") == ["pre-patch", "second"]
    r_absent = ansible("vm_snapshot", dict(args, state="absent"))
    assert r_absent["changed"] is True and names(sim, "web01") == ["second"]
    assert ansible("vm_snapshot", dict(args, state="absent"))["changed"] is False
    r_all = ansible("vm_snapshot", conn(sim, vm_name="web01", state="remove_all"))
    assert r_all["changed"] is True and names(sim, "web01") == []
    assert "remove_checkpoint" in sim.host.executed and "restore_checkpoint" in sim.host.executed


@pytest.mark.parametrize("state, vss_works, quiesce, fallback, consistency, snap_state", [
    ("Running", True, True, "fail", "quiesced", "Off"),  # ProductionOnly: VSS worked, no memory saved
    ("Running", False, True, "crash_consistent", "memory", "Running"),  # Production fell back to standard
    ("Off", True, False, "fail", "offline", "Off"),
])
def test_checkpoint_types_report_the_consistency_reached(ansible, sim, state, vss_works, quiesce, fallback,
                                                         consistency, snap_state):
    sim.host.add_vm("db01", state=state, vss_works=vss_works)
    result = ansible("vm_snapshot", conn(sim, vm_name="db01", snapshot_name="cp", quiesce=quiesce,
                                         quiesce_fallback=fallback))
    assert result["changed"] is True, result
    assert result["consistency"] == consistency
    snap = next(iter(sim.host.vm_by_name("db01").checkpoints.values()))
    assert snap.state == snap_state
    sent = sim.host.payloads[sim.host.executed.index("create_checkpoint")]
    expected_type = {"quiesced": "ProductionOnly", "memory": "Production", "offline": "Standard"}[consistency]
    assert sent["checkpoint_type"] == expected_type
    if consistency == "memory":
        assert any("standard checkpoint" in w for w in result.get("warnings", []))


def test_production_only_failure_leaves_nothing_and_names_the_fix(ansible, sim):
    sim.host.add_vm("db01", vss_works=False)
    result = ansible("vm_snapshot", conn(sim, vm_name="db01", snapshot_name="cp", quiesce=True))
    assert result["_status"] == "failed"
    assert "Volume Shadow Copy" in result["msg"] and "quiesce_fallback=crash_consistent" in result["msg"]
    assert names(sim, "db01") == []


def test_names_with_quotes_dollars_semicolons_backticks_stay_data(ansible, sim):
    sim.host.add_vm(NASTY_VM)
    sim.host.add_vm("bystander")
    args = conn(sim, vm_name=NASTY_VM, snapshot_name=NASTY_SNAP)
    first = ansible("vm_snapshot", args)
    assert first["changed"] is True, first
    assert first["snapshot"]["name"] == NASTY_SNAP and first["vm"]["name"] == NASTY_VM
    assert ansible("vm_snapshot", args)["changed"] is False
    assert names(sim, NASTY_VM) == [NASTY_SNAP]
    assert ansible("vm_snapshot", dict(args, state="absent"))["changed"] is True
    assert len(sim.host.vms) == 2 and names(sim, NASTY_VM) == []
    assert any(p.get("name") == NASTY_SNAP for p in sim.host.payloads)


def test_simulator_refuses_a_script_the_collection_does_not_ship(sim):
    sim.host.add_vm("web01")
    provider = hyperv.HypervProvider(conn(sim), lambda msg: None)
    provider.connect()
    try:
        assert [v.name for v in provider.list_vms()] == ["web01"]
        tampered = hyperv_scripts.render("list_vms", {}).replace("Get-VM", "Remove-VM", 1)
        with pytest.raises(ProviderError, match="REJECTED: the script is not one the collection ships"):
            provider.run_text(tampered, "list VMs")
        injected = hyperv_scripts.render("list_vms", {}) + "\nRemove-VM *"
        with pytest.raises(ProviderError, match="REJECTED"):
            provider.run_text(injected, "list VMs")
    finally:
        provider.close()
    assert len(sim.host.rejected) == 2
    sim.host.rejected.clear()  # expected here; the fixture checks the rest stays empty


def test_rename_and_errors_through_the_provider(sim):
    """Rename-VMSnapshot has no module option yet; the provider method is tested directly, in-process."""
    vm_model = sim.host.add_vm("web01")
    snap_model = sim.host.checkpoint(vm_model, "old")
    provider = hyperv.HypervProvider(conn(sim), lambda msg: None)
    provider.connect()
    try:
        vm = provider.find_vm(hyperv.VmSelector(name="WEB01"))  # Hyper-V names are case-insensitive
        snap = provider.list_snapshots(vm)[0]
        renamed = provider.rename_snapshot(vm, snap, NASTY_SNAP, 30)
        assert renamed.name == NASTY_SNAP and renamed.id == snap.id and renamed.current is True
        assert snap_model.name == NASTY_SNAP
        del vm_model.checkpoints[snap_model.id]  # removed behind our back
        with pytest.raises(SnapshotNotFound, match="checkpoint not found"):
            provider.revert_snapshot(vm, snap, 30)
        del sim.host.vms[vm_model.id]
        with pytest.raises(VmNotFound, match="VM not found"):
            provider.list_snapshots(vm)
    finally:
        provider.close()


def test_duplicate_checkpoint_names_need_snapshot_id(ansible, sim):
    vm = sim.host.add_vm("web01")
    first = sim.host.checkpoint(vm, "nightly", age_seconds=7200)
    sim.host.checkpoint(vm, "nightly", age_seconds=60)
    info = ansible("vm_snapshot_info", conn(sim, vm_name="web01"))
    assert sorted(s["name"] for s in info["snapshots"]) == ["nightly", "nightly"]
    ambiguous = ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_name="nightly", state="absent"))
    assert ambiguous["_status"] == "failed" and "snapshot_id" in ambiguous["msg"]
    by_id = ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_id=first.id, state="absent"))
    assert by_id["changed"] is True and first.id not in vm.checkpoints and len(vm.checkpoints) == 1


def test_unknown_vm_names_close_matches(ansible, sim):
    sim.host.add_vm("web01")
    result = ansible("vm_snapshot", conn(sim, vm_name="web1", snapshot_name="x"))
    assert result["_status"] == "failed" and "web01" in result["msg"]


def test_wrong_password_is_refused_by_ntlm(ansible, sim):
    sim.host.add_vm("web01")
    result = ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_name="x", password="wrong-Pa55"))
    assert result["_status"] == "failed"
    assert "Failed to log in to Hyper-V host" in result["msg"] and "ntlm" in result["msg"]
    assert sim.auth_failures >= 1 and sim.host.executed == []
    assert "wrong-Pa55" not in str(result)


def test_certificate_transport(ansible, sim):
    sim.host.add_vm("web01")
    base = conn(sim, vm_name="web01", transport="certificate", username=None, password=None)
    good = ansible("vm_snapshot_info", dict(base, client_cert=sim.client_cert, client_key=sim.client_key))
    assert good["_status"] != "failed", good
    assert [v["vm"]["name"] for v in good["vms"]] == ["web01"] and good["vms"][0]["chain_depth"] == 1
    missing = ansible("vm_snapshot_info", base)
    assert missing["_status"] == "failed" and "client_cert" in missing["msg"]
    stranger = ansible("vm_snapshot_info", dict(base, client_cert=sim.stranger_cert, client_key=sim.stranger_key))
    assert stranger["_status"] == "failed" and "Failed to connect to Hyper-V host" in stranger["msg"]
    assert sim.host.executed.count("list_vms") == 1  # only the trusted certificate ran anything


def test_untrusted_certificate_fails_unless_trusted_or_unchecked(ansible, sim):
    sim.host.add_vm("web01")
    untrusted = ansible("vm_snapshot_info", conn(sim, vm_name="web01", ca_path=None))
    assert untrusted["_status"] == "failed"
    assert "TLS certificate could not be verified" in untrusted["msg"] and "ca_path" in untrusted["msg"]
    assert sim.host.executed == []
    unchecked = ansible("vm_snapshot_info", conn(sim, vm_name="web01", ca_path=None, validate_certs=False))
    assert unchecked["_status"] != "failed", unchecked


def test_removal_waits_for_the_merge_and_times_out(ansible, sim):
    vm = sim.host.add_vm("web01")
    sim.host.checkpoint(vm, "a")
    sim.host.checkpoint(vm, "b")
    sim.host.merge_seconds = 1.5
    waited = ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_name="a", state="absent", timeout=20))
    assert waited["changed"] is True and waited["elapsed"] >= 1.5, waited
    assert sim.host.executed.count("disk_status") >= 2  # polled while the merge ran
    sim.host.merge_seconds = 30
    late = ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_name="b", state="absent", timeout=1))
    assert late["_status"] == "failed" and "still merges the disks" in late["msg"] and "timeout 1 s" in late["msg"]
    assert names(sim, "web01") == []  # removed; only the merge was still running


def test_slow_operations_are_polled_then_timed_out(ansible, sim):
    """The simulator applies a command at once but withholds its output, answering each Receive with WinRM's
    operation-timeout fault meanwhile (as a slow Checkpoint-VM would look)."""
    sim.host.add_vm("web01")
    sim.host.slow["create_checkpoint"] = 6  # longer than one 5 s Receive: needs a second poll
    slow = ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_name="slow", timeout=30))
    assert slow["changed"] is True and slow["elapsed"] >= 6, slow
    assert sim.terminated == []
    sim.host.slow["create_checkpoint"] = 60
    late = ansible("vm_snapshot", conn(sim, vm_name="web01", snapshot_name="late", timeout=2))
    assert late["_status"] == "failed"
    assert "no result after" in late["msg"] and "timeout 2 s" in late["msg"] and "vm_snapshot_info" in late["msg"]
    assert len(sim.terminated) == 1  # the provider signalled terminate instead of waiting forever


def test_consolidate_removes_old_checkpoints_and_reports_chains_and_merges(ansible, sim):
    vm = sim.host.add_vm("app01")
    for index in range(5):
        sim.host.checkpoint(vm, f"auto-{index}", age_seconds=86400 * (10 - index) - 600)
    sim.host.checkpoint(vm, "fresh")
    check = ansible("snapshot_consolidate", conn(sim, vm_name="app01", max_age="7d", max_depth=3), check=True)
    entry = check["vms"][0]
    assert check["changed"] is True and len(entry["removed"]) == 3
    assert entry["chain_depth"] == 7 and any("disk chain of 7 images" in w for w in entry["warnings"])
    assert len(vm.checkpoints) == 6
    real = ansible("snapshot_consolidate", conn(sim, vm_name="app01", max_age="7d", max_depth=3))
    assert real["changed"] is True and names(sim, "app01") == ["auto-3", "auto-4", "fresh"]
    assert real["vms"][0].get("error") is None
    sim.host.merge_seconds = 60
    vm.merging_until = __import__("time").monotonic() + 60
    busy = ansible("snapshot_consolidate", conn(sim, vm_name="app01", max_age="7d"))
    assert busy["vms"][0]["consolidation_needed"] is True
    assert any("merge in progress" in w for w in busy["vms"][0]["warnings"])
