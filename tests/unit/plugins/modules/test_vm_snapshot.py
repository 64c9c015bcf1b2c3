# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_snapshot end to end against the in-memory provider: plan/apply, idempotence, check mode, errors."""

from __future__ import annotations

import pytest

from ansible_collections.vmsafe.protect.plugins.modules import vm_snapshot


@pytest.mark.parametrize("existing, state, changed", [
    ([], "present", True), (["pre-patch"], "present", False),
    (["pre-patch"], "absent", True), ([], "absent", False),
    (["a", "b"], "remove_all", True), ([], "remove_all", False),
    (["pre-patch"], "reverted", True),
])
def test_idempotence(run, fake_provider, existing, state, changed):
    fake_provider.seed("web01", snapshots=existing)
    result = run(vm_snapshot.main, vm_name="web01", snapshot_name="pre-patch", state=state, memory=True)
    assert not result.get("failed"), result
    assert result["changed"] is changed
    assert fake_provider.writes == (max(1, len(existing)) if changed else 0)


@pytest.mark.parametrize("state", ["present", "absent", "remove_all", "reverted"])
def test_check_mode_changes_nothing_and_returns_the_same_keys(run, fake_provider, state):
    seed = [] if state == "present" else ["pre-patch", "other"]
    fake_provider.seed("web01", snapshots=seed)
    args = dict(vm_name="web01", snapshot_name="pre-patch", state=state, memory=True)
    checked = run(vm_snapshot.main, check_mode=True, **args)
    assert fake_provider.writes == 0
    assert checked["changed"] is True
    fake_provider.seed("web01", snapshots=seed)
    real = run(vm_snapshot.main, **args)
    assert set(checked) == set(real)
    assert checked["plan"] == real["plan"]
    assert [s["name"] for s in checked["snapshots"]] == [s["name"] for s in real["snapshots"]]


def test_check_mode_present_returns_the_planned_snapshot(run, fake_provider):
    fake_provider.seed("web01", snapshots=["base"])
    result = run(vm_snapshot.main, check_mode=True, diff=True, vm_name="web01", snapshot_name="new",
                 memory=True)
    assert result["snapshot"]["name"] == "new" and result["snapshot"]["id"] is None
    assert result["snapshot"]["parent"] == "base" and result["consistency"] == "memory"
    assert result["diff"]["before"] == "- base (internal, memory, current)\n"
    assert result["diff"]["after"] == "- base (internal, memory)\n  - new (internal, memory, current)\n"


def test_duplicate_names_fail_and_ask_for_the_id(run, fake_provider):
    fake_provider.seed("web01", snapshots=[("pre", None, "snap-1"), ("pre", "snap-1", "snap-2")])
    result = run(vm_snapshot.main, vm_name="web01", snapshot_name="pre", state="absent")
    assert result["failed"] and "2 snapshots named 'pre'" in result["msg"] and "snapshot_id" in result["msg"]
    assert fake_provider.writes == 0
    result = run(vm_snapshot.main, vm_name="web01", snapshot_id="snap-2", state="absent")
    assert result["changed"] and result["removed"] == ["pre"]
    assert [s["id"] for s in result["snapshots"]] == ["snap-1"]


def test_absent_with_children_removes_the_subtree_deepest_first(run, fake_provider):
    fake_provider.seed("web01", snapshots=[("root", None, "root"), ("a", "root", "a"), ("a1", "a", "a1"),
                                           ("b", "root", "b")])
    result = run(vm_snapshot.main, vm_name="web01", snapshot_name="a", state="absent", remove_children=True)
    assert result["removed"] == ["a1", "a"]
    assert sorted(s["name"] for s in result["snapshots"]) == ["b", "root"]


def test_absent_without_children_keeps_and_reparents_them(run, fake_provider):
    fake_provider.seed("web01", snapshots=["root", "mid", "leaf"])
    result = run(vm_snapshot.main, vm_name="web01", snapshot_name="mid", state="absent")
    leaf = next(s for s in result["snapshots"] if s["name"] == "leaf")
    assert result["removed"] == ["mid"] and leaf["parent"] == "root"


@pytest.mark.parametrize("args, message", [
    (dict(vm_name="nope", snapshot_name="x"), "No VM 'nope'"),
    (dict(vm_name="web01", snapshot_name="ghost", state="reverted"), "no snapshot with name 'ghost'"),
    (dict(vm_name="web01", state="present"), "state is present but all of the following are missing: snapshot_name"),
    (dict(vm_name="web01", vm_id="x", snapshot_name="a"), "mutually exclusive: vm_name|vm_id"),
    (dict(vm_name="web01", snapshot_name="a", memory=True, disk_only=True), "mutually exclusive: memory|disk_only"),
])
def test_bad_input_is_named(run, fake_provider, args, message):
    fake_provider.seed("web01", snapshots=["a"])
    result = run(vm_snapshot.main, **args)
    assert result["failed"] and message in result["msg"], result["msg"]
    assert fake_provider.writes == 0


def test_quiesce_failure_fails_without_a_snapshot(run, fake_provider):
    fake_provider.seed("web01")
    result = run(vm_snapshot.main, vm_name="web01", snapshot_name="q", disk_only=True, quiesce=True)
    assert result["failed"] and result["applied"] == []
    assert fake_provider.vms["web01"]["snapshots"] == []
