# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Which snapshots a cleanup policy removes: a pure function, tested with tables."""

from __future__ import annotations

import dataclasses
import datetime
import re
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument
from ansible_collections.vmsafe.protect.plugins.module_utils._units import format_duration

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import Snapshot


@dataclasses.dataclass(frozen=True)
class Policy:
    """max_age and keep_last are limits: a snapshot that breaks either one is removed.

    Only snapshots whose name matches ``name_pattern`` (all, when unset) are candidates, and a snapshot
    whose name matches ``protect_pattern`` is never removed and does not count toward ``keep_last``.
    """

    max_age: datetime.timedelta | None = None
    keep_last: int | None = None
    name_pattern: re.Pattern[str] | None = None
    protect_pattern: re.Pattern[str] | None = None

    @property
    def removes_anything(self) -> bool:
        return self.max_age is not None or self.keep_last is not None


def compile_pattern(value: str | None, option: str) -> re.Pattern[str] | None:
    """Compile a user regex, or raise InvalidArgument naming the option."""
    if value is None:
        return None
    try:
        return re.compile(value)
    except re.error as exc:
        raise InvalidArgument(f"Invalid {option} '{value}': {exc}. Use a Python regular expression, "
                              f"for example '^pre-patch-' or 'keep|golden'.") from exc


def select(snapshots: list[Snapshot], policy: Policy,
           now: datetime.datetime) -> tuple[list[tuple[Snapshot, str]], list[tuple[Snapshot, str]]]:
    """Return (remove, keep): each a list of (snapshot, reason), removals deepest first."""
    remove: list[tuple[Snapshot, str]] = []
    keep: list[tuple[Snapshot, str]] = []
    candidates = []
    for snap in snapshots:
        if policy.name_pattern is not None and not policy.name_pattern.search(snap.name):
            keep.append((snap, "name does not match name_pattern"))
        elif policy.protect_pattern is not None and policy.protect_pattern.search(snap.name):
            keep.append((snap, "protected by protect_pattern"))
        else:
            candidates.append(snap)
    newest_first = sorted(candidates, key=lambda s: (s.created, s.id), reverse=True)
    for rank, snap in enumerate(newest_first):
        reasons = []
        age = now - snap.created
        if policy.max_age is not None and age > policy.max_age:
            reasons.append(f"age {format_duration(age.total_seconds())} is over max_age "
                           f"{format_duration(policy.max_age.total_seconds())}")
        if policy.keep_last is not None and rank >= policy.keep_last:
            reasons.append(f"not among the {policy.keep_last} newest")
        if reasons:
            remove.append((snap, "; ".join(reasons)))
        else:
            keep.append((snap, "within the policy"))
    remove.sort(key=lambda pair: (-pair[0].depth, pair[0].created))
    return remove, keep
