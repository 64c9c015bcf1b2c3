# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Each role's README lists exactly the variables of its meta/argument_specs.yml, with the same types and defaults."""

from __future__ import annotations

import os
import re

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = sorted(os.listdir(os.path.join(ROOT, "roles")))


def readme_rows(role: str) -> dict[str, tuple[str, str]]:
    with open(os.path.join(ROOT, "roles", role, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`variable`":
            rows[cells[0].strip("`")] = (cells[1], cells[2].replace("\\|", "|"))
    return rows


@pytest.mark.parametrize("role", ROLES)
def test_readme_variables_match_the_argument_spec(role):
    with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        options = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    expected = {}
    for name, opt in options.items():
        default = opt.get("default")
        if isinstance(default, bool):
            default = "true" if default else "false"
        expected[name] = (opt.get("type", "str"), f"`{default}`" if "default" in opt else "(none)")
    assert readme_rows(role) == expected
