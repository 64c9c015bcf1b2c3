# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Retention selection: parametrized tables, UTC."""

from __future__ import annotations

import datetime
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import InvalidArgumentError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import BackupRecord
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import (
    RetentionPolicy,
    parse_interval,
    select_prunable,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def rec(stamp: str) -> BackupRecord:
    when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    return BackupRecord(id=stamp, vm_name="vm", time=when, disks=[])


# one backup a day at 01:00 for 60 days before NOW, plus two extra on the last day
DAILY = [rec((NOW - datetime.timedelta(days=d)).strftime("%Y-%m-%d 01:00")) for d in range(60)]
DAILY += [rec("2026-11-23 06:00"), rec("2026-11-23 09:30")]


@pytest.mark.parametrize(
    "policy, kept",
    [
        (
            RetentionPolicy(keep_last=3),
            {"2026-11-23 09:30": "last #1", "2026-11-23 06:00": "last #2", "2026-11-23 01:00": "last #3"},
        ),
        (
            RetentionPolicy(keep_daily=3),
            {"2026-11-23 09:30": "daily #1", "2026-11-22 01:00": "daily #2", "2026-11-21 01:00": "daily #3"},
        ),
        (
            RetentionPolicy(keep_last=1, keep_daily=2),
            {"2026-11-23 09:30": "last #1", "2026-11-22 01:00": "daily #1", "2026-11-21 01:00": "daily #2"},
        ),
        (RetentionPolicy(keep_hourly=2), {"2026-11-23 09:30": "hourly #1", "2026-11-23 06:00": "hourly #2"}),
        # ISO weeks: 2026-11-23 is a Monday, so the week before ends on Sunday 2026-11-22
        (RetentionPolicy(keep_weekly=2), {"2026-11-23 09:30": "weekly #1", "2026-11-22 01:00": "weekly #2"}),
        (RetentionPolicy(keep_monthly=2), {"2026-11-23 09:30": "monthly #1", "2026-10-31 01:00": "monthly #2"}),
        (RetentionPolicy(keep_yearly=5), {"2026-11-23 09:30": "yearly #1", "2026-09-25 01:00": "yearly #2 [oldest]"}),
        (
            RetentionPolicy(keep_within="2d"),
            {
                "2026-11-23 09:30": "within 2d",
                "2026-11-23 06:00": "within 2d",
                "2026-11-23 01:00": "within 2d",
                "2026-11-22 01:00": "within 2d",
            },
        ),
        (
            RetentionPolicy(keep_within="12H", keep_daily=2),
            {
                "2026-11-23 09:30": "within 12H",
                "2026-11-23 06:00": "within 12H",
                "2026-11-23 01:00": "within 12H",
                "2026-11-22 01:00": "daily #1",
                "2026-11-21 01:00": "daily #2",
            },
        ),
    ],
)
def test_select_prunable_table(policy: RetentionPolicy, kept: dict[str, str]) -> None:
    keep, prune = select_prunable(DAILY, policy, NOW)
    assert {k.record.id: k.reason for k in keep} == kept
    assert len(keep) + len(prune) == len(DAILY)
    assert not {k.record.id for k in keep} & {p.id for p in prune}
    assert [k.record.time for k in keep] == sorted((k.record.time for k in keep), reverse=True)


def test_policy_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="keeps nothing"):
        select_prunable(DAILY, RetentionPolicy(), NOW)


@pytest.mark.parametrize(
    "value, seconds",
    [("7d", 7 * 86400), ("12H", 43200), ("2w", 14 * 86400), ("1m", 31 * 86400), ("1y", 365 * 86400), (60, 60)],
)
def test_parse_interval(value: t.Any, seconds: int) -> None:
    assert parse_interval(value).total_seconds() == seconds


@pytest.mark.parametrize("values", [{"keep_daily": -1}, {"keep_within": "soon"}, {"keep_forever": 1}])
def test_bad_policies(values: dict[str, t.Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        RetentionPolicy.from_mapping(values)


def test_naive_times_are_utc() -> None:
    naive = BackupRecord(id="n", vm_name="vm", time=datetime.datetime(2026, 11, 23, 11, 0), disks=[])
    keep, prune = select_prunable([naive], RetentionPolicy(keep_within="2H"), NOW)
    assert [k.record.id for k in keep] == ["n"] and prune == []
