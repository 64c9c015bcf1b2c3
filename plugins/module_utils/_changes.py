# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Plan first, then apply: a task records its steps here, and the runner applies them unless in check mode."""

from __future__ import annotations

import dataclasses
import typing as t


@dataclasses.dataclass
class Step:
    description: str
    action: t.Callable[[], t.Any]


class ChangeSet:
    """Planned steps plus the before/after picture used for ``changed`` and ``--diff``."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.before: str | None = None
        self.after: str | None = None
        self.applied: list[str] = []

    def step(self, description: str, action: t.Callable[[], t.Any]) -> None:
        self.steps.append(Step(description, action))

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def plan(self) -> list[str]:
        return [s.description for s in self.steps]

    def apply(self) -> None:
        """Run every step in order; a failure stops the run, and ``applied`` says what was done before it."""
        for step in self.steps:
            step.action()
            self.applied.append(step.description)

    def diff(self) -> dict[str, str] | None:
        if self.before is None or self.after is None:
            return None
        return {"before": self.before, "after": self.after}
