# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""What the README, galaxy.yml and the modules' RETURN promise matches what exists (issue #15's findings)."""

from __future__ import annotations

import glob
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")))


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as handle:
        return handle.read()


def return_doc(module: str) -> dict:
    source = read("plugins", "modules", f"{module}.py")
    return yaml.safe_load(re.search(r'RETURN = r"""(.*?)"""', source, re.S).group(1))


def test_readme_modules_table_is_one_table_naming_every_module() -> None:
    """Reproduced: a blank line split the README's modules table in two (the second half rendered as text)."""
    lines = read("README.md").split("## Modules", 1)[1].split("\n## ", 1)[0].splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("| module |"))
    assert lines[header + 1].startswith("|--"), "no separator row under the header"
    end = header + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    stray = [line[:40] for line in lines[end:] if line.startswith("| `")]
    assert not stray, f"rows after a break in the table: {stray}"
    table = "\n".join(lines[header:end])
    missing = [m for m in MODULES if f"`{m}`" not in table]
    assert not missing, f"modules missing from the README table: {missing}"


def test_galaxy_description_promises_nothing_for_later() -> None:
    """Reproduced: galaxy.yml said VMware and Hyper-V came "next" although both shipped."""
    galaxy = yaml.safe_load(read("galaxy.yml"))
    assert not re.search(r"\bnext\b|coming soon|planned", galaxy["description"], re.I), galaxy["description"]


def test_every_module_documents_elapsed_and_the_runner_modules_applied() -> None:
    """Reproduced: elapsed and applied were returned but undocumented."""
    for module in MODULES:
        source = read("plugins", "modules", f"{module}.py")
        doc = return_doc(module)
        if re.search(r"\brun_(repository_)?module\(", source) or '"elapsed"' in source:
            assert "elapsed" in doc, f"{module} returns elapsed without documenting it"
        if re.search(r"^\s+run_module\(", source, re.M):
            assert "applied" in doc, f"{module} returns applied on failure without documenting it"
