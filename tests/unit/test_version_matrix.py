# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The ansible-core matrix tests what the collection declares: its floor is meta/runtime.yml's requires_ansible."""

from __future__ import annotations

import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*path: str) -> str:
    with open(os.path.join(ROOT, *path), encoding="utf-8") as handle:
        return handle.read()


def matrix() -> dict[str, tuple[str, str]]:
    """target -> (ansible-core version, Python version), from scripts/matrix-venv.sh."""
    rows = re.findall(r'^\s*(\w+)\) CORE="ansible-core==([\d.]+)"; PYVER=([\d.]+) ;;', read("scripts", "matrix-venv.sh"),
                      re.MULTILINE)
    return {name: (core, py) for name, core, py in rows}


def test_floor_is_the_declared_minimum():
    declared = yaml.safe_load(read("meta", "runtime.yml"))["requires_ansible"]
    minimum = re.fullmatch(r">=(\d+)\.(\d+)\.\d+", declared)
    assert minimum, declared
    core, _py = matrix()["floor"]
    assert core.split(".")[:2] == [minimum.group(1), minimum.group(2)], (core, declared)


def test_newest_is_2_21_on_python_3_13_and_the_step_runs_by_default():
    assert matrix()["newest"][0].startswith("2.21.") and matrix()["newest"][1] == "3.13"
    script = read("scripts", "test.sh")
    assert "if want matrix; then" in script and "scripts/matrix-venv.sh" in script
