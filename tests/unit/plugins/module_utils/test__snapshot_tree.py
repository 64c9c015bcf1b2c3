# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
from __future__ import annotations

import datetime

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import AmbiguousSnapshot, SnapshotNotFound
from ansible_collections.vmsafe.protect.plugins.module_utils._models import Snapshot

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def branched() -> list[Snapshot]:
    """root -> a -> a1, and root -> b -> b1 -> b2 (current); 'dup' exists in both branches."""
    spec = [("root", None), ("a", "root"), ("a1", "a"), ("b", "root"), ("b1", "b"), ("b2", "b1"),
            ("dup-1", "a1"), ("dup-2", "b2")]
    snaps = [Snapshot(id=sid, name="dup" if sid.startswith("dup") else sid, parent=parent,
                      created=T0 + datetime.timedelta(minutes=i)) for i, (sid, parent) in enumerate(spec)]
    snaps[-1].current = True
    return tree.link(snaps)


def test_link_fills_children_and_depth():
    by_id = {s.id: s for s in branched()}
    assert by_id["root"].children == ["a", "b"]
    assert (by_id["root"].depth, by_id["a1"].depth, by_id["b2"].depth, by_id["dup-2"].depth) == (1, 3, 4, 5)


def test_find_searches_every_branch():
    snaps = branched()
    assert tree.find(snaps, "b2", None).id == "b2"  # in the second branch, below the first
    assert tree.find(snaps, None, "dup-2").parent == "b2"
    assert tree.find(snaps, "nope", None) is None


def test_duplicate_names_are_an_error_listing_ids():
    with pytest.raises(AmbiguousSnapshot, match=r"2 snapshots named 'dup': dup-1 .*dup-2 .*snapshot_id"):
        tree.find(branched(), "dup", None, "web01")


def test_require_lists_existing_names():
    with pytest.raises(SnapshotNotFound, match=r"no snapshot with name 'x'. Existing snapshots: 'root', 'a'"):
        tree.require(branched(), "x", None, "web01")


def test_descendants_deepest_first():
    ids = [s.id for s in tree.descendants(branched(), "b")]
    assert sorted(ids) == ["b1", "b2", "dup-2"]
    assert ids.index("dup-2") < ids.index("b2") < ids.index("b1")


def test_leaf_first_puts_children_before_parents():
    order = [s.id for s in tree.leaf_first(branched())]
    for snap in branched():
        if snap.parent:
            assert order.index(snap.id) < order.index(snap.parent)


def test_without_reparents_children():
    after = {s.id: s for s in tree.without(branched(), {"b", "b1"})}
    assert "b" not in after and "b1" not in after
    assert after["b2"].parent == "root" and after["b2"].depth == 2


def test_with_new_goes_under_current_and_becomes_current():
    new = Snapshot(id="n", name="n", created=T0 + datetime.timedelta(days=1))
    after = {s.id: s for s in tree.with_new(branched(), new)}
    assert after["n"].parent == "dup-2" and after["n"].current and not after["dup-2"].current


def test_render_shows_the_tree():
    text = tree.render(branched())
    assert text.splitlines()[:3] == ["- root (internal)", "  - a (internal)", "    - a1 (internal)"]
    assert "        - dup [dup-2] (internal, current)" in text.splitlines()
    assert tree.render([]) == "(no snapshots)\n"
