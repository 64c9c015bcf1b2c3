# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Retention: which backups a prune keeps. Pure functions, no I/O.

PRIVATE to this collection; no compatibility guarantees.

The rules follow borg's ``prune`` semantics, evaluated in UTC:

* ``keep_within`` keeps every backup younger than the interval;
* ``keep_last`` keeps the N most recent backups;
* then ``keep_hourly``, ``keep_daily``, ``keep_weekly`` (ISO weeks), ``keep_monthly``,
  ``keep_yearly`` in this order each keep the most recent backup of each of the last N
  periods that have a backup. A backup already kept by an earlier rule still marks its
  period as used but does not count towards the later rule. If a rule finds fewer
  periods than asked for, it also keeps the oldest backup (borg's "[oldest]").
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import InvalidArgumentError

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import BackupRecord

PERIOD_RULES: tuple[tuple[str, str], ...] = (
    ("hourly", "%Y-%m-%d %H"),
    ("daily", "%Y-%m-%d"),
    ("weekly", "%G-%V"),
    ("monthly", "%Y-%m"),
    ("yearly", "%Y"),
)

_WITHIN = re.compile(r"^\s*(\d+)\s*([HdwmyM]?)\s*$")
_UNITS = {"H": 3600, "": 86400, "d": 86400, "w": 7 * 86400, "m": 31 * 86400, "M": 31 * 86400, "y": 365 * 86400}


def parse_interval(value: str | int | datetime.timedelta) -> datetime.timedelta:
    """Parse ``keep_within``: a timedelta, seconds, or '<n>H|d|w|m|y' (m = 31 days, y = 365 days)."""
    if isinstance(value, datetime.timedelta):
        return value
    if isinstance(value, int):
        return datetime.timedelta(seconds=value)
    match = _WITHIN.match(str(value))
    if not match:
        raise InvalidArgumentError(
            f"keep_within '{value}' is not an interval; use a number followed by H (hours), d (days), "
            "w (weeks), m (months of 31 days) or y (years of 365 days), for example '7d'."
        )
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep, per VM."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str | int | datetime.timedelta | None = None

    def __post_init__(self) -> None:
        for field in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{field} must be a non-negative integer, not {value!r}.")
        if self.keep_within is not None:
            parse_interval(self.keep_within)

    @classmethod
    def from_mapping(cls, values: t.Mapping[str, t.Any]) -> "RetentionPolicy":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise InvalidArgumentError(
                f"Unknown retention option(s): {', '.join(sorted(unknown))}. Known: {', '.join(sorted(known))}."
            )
        return cls(**{k: v for k, v in values.items() if v is not None})

    def is_empty(self) -> bool:
        return not (
            self.keep_last
            or self.keep_hourly
            or self.keep_daily
            or self.keep_weekly
            or self.keep_monthly
            or self.keep_yearly
            or self.keep_within is not None
        )


@dataclasses.dataclass(frozen=True)
class Kept:
    """A kept backup and the rule that kept it, e.g. 'daily #2' or 'within 7 days, 0:00:00'."""

    record: "BackupRecord"
    reason: str


def _utc(when: datetime.datetime) -> datetime.datetime:
    if when.tzinfo is None:
        return when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc)


def select_prunable(
    records: t.Sequence["BackupRecord"],
    policy: RetentionPolicy,
    now: datetime.datetime,
) -> tuple[list[Kept], list["BackupRecord"]]:
    """Split ``records`` (of one VM) into kept backups (with reasons) and backups to prune.

    Both lists are sorted newest first. Raises InvalidArgumentError for an empty policy,
    which would otherwise delete every backup.
    """
    if policy.is_empty():
        raise InvalidArgumentError(
            "The retention policy keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, "
            "keep_weekly, keep_monthly, keep_yearly or keep_within."
        )
    ordered = sorted(records, key=lambda r: (_utc(r.time), r.id), reverse=True)
    reasons: dict[str, str] = {}

    if policy.keep_within is not None:
        interval = parse_interval(policy.keep_within)
        limit = _utc(now) - interval
        for record in ordered:
            if _utc(record.time) > limit:
                reasons.setdefault(record.id, f"within {policy.keep_within}")

    if policy.keep_last:
        count = 0
        for record in ordered:
            if record.id in reasons:
                continue
            count += 1
            reasons[record.id] = f"last #{count}"
            if count == policy.keep_last:
                break

    for rule, pattern in PERIOD_RULES:
        wanted = getattr(policy, f"keep_{rule}")
        if not wanted:
            continue
        last_period: str | None = None
        count = 0
        record = None
        for record in ordered:
            period = _utc(record.time).strftime(pattern)
            if period == last_period:
                continue
            last_period = period
            if record.id not in reasons:
                count += 1
                reasons[record.id] = f"{rule} #{count}"
                if count == wanted:
                    break
        if record is not None and count < wanted and record.id not in reasons:
            count += 1
            reasons[record.id] = f"{rule} #{count} [oldest]"

    keep = [Kept(r, reasons[r.id]) for r in ordered if r.id in reasons]
    prune = [r for r in ordered if r.id not in reasons]
    return keep, prune
