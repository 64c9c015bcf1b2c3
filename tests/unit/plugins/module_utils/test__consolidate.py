# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
from __future__ import annotations

import datetime
import re

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._consolidate import Policy, compile_pattern, select
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument
from ansible_collections.vmsafe.protect.plugins.module_utils._models import Snapshot

NOW = datetime.datetime(2026, 11, 23, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def snaps(*items: tuple[str, int]) -> list[Snapshot]:
    """(name, age in days)"""
    return [Snapshot(id=name, name=name, created=NOW - age * DAY) for name, age in items]


FLEET = snaps(("pre-patch-1", 10), ("pre-patch-2", 5), ("golden-keep", 30), ("pre-patch-3", 1), ("manual", 8))


@pytest.mark.parametrize("policy, removed", [
    (Policy(), []),
    (Policy(max_age=7 * DAY), ["pre-patch-1", "golden-keep", "manual"]),
    (Policy(keep_last=2), ["pre-patch-1", "golden-keep", "manual"]),
    (Policy(keep_last=0), ["pre-patch-1", "pre-patch-2", "golden-keep", "pre-patch-3", "manual"]),
    (Policy(max_age=7 * DAY, protect_pattern=re.compile("keep")), ["pre-patch-1", "manual"]),
    (Policy(keep_last=1, name_pattern=re.compile("^pre-patch")), ["pre-patch-1", "pre-patch-2"]),
    # protected snapshots do not count toward keep_last
    (Policy(keep_last=3, protect_pattern=re.compile("golden")), ["pre-patch-1"]),
    (Policy(max_age=3 * DAY, keep_last=4, name_pattern=re.compile("pre")), ["pre-patch-1", "pre-patch-2"]),
])
def test_select(policy, removed):
    remove, keep = select(FLEET, policy, NOW)
    assert sorted(s.name for s, _why in remove) == sorted(removed)
    assert len(remove) + len(keep) == len(FLEET)


def test_reasons_name_the_limit():
    remove, keep = select(FLEET, Policy(max_age=7 * DAY, keep_last=4, protect_pattern=re.compile("golden")), NOW)
    reasons = dict((s.name, why) for s, why in remove)
    assert reasons["pre-patch-1"] == "age 10d is over max_age 7d"
    assert dict((s.name, why) for s, why in keep)["golden-keep"] == "protected by protect_pattern"


def test_removal_order_is_deepest_first():
    items = snaps(("a", 3), ("b", 2), ("c", 1))
    items[1].parent, items[2].parent = "a", "b"
    items[0].depth, items[1].depth, items[2].depth = 1, 2, 3
    remove, _keep = select(items, Policy(keep_last=0), NOW)
    assert [s.name for s, _why in remove] == ["c", "b", "a"]


def test_bad_pattern_names_the_option():
    with pytest.raises(InvalidArgument, match=r"Invalid protect_pattern '\('"):
        compile_pattern("(", "protect_pattern")
