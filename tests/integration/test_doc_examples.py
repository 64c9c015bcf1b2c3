# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Every YAML example the user reads: README.md, docs/*.md, the roles' READMEs and each module's EXAMPLES.

Each one must parse, and every ``vmsafe.protect.*`` task and ``module_defaults`` entry may only use options the
module's argument spec accepts (an unknown option or a value outside ``choices`` fails with file and line).
A Markdown example whose fence follows the line ``<!-- vmsafe: runnable -->`` is also run with ``ansible-playbook``
against the lab: its plays' ``hosts`` are groups holding localhost, and the site-specific values it keeps in play
``vars`` are overridden by extra vars (see LAB_VARS) for a throwaway VM, a unique snapshot name and a temporary
repository.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import json
import os
import re
import subprocess
import sys
import typing as t
import uuid

import pytest
import yaml

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from it_helpers import ansible_env  # noqa: E402  pylint: disable=wrong-import-position,import-error

RUNNABLE = "<!-- vmsafe: runnable -->"
FENCE = re.compile(r"^```(yaml|yml)\s*$")
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")))
PREFIX = "vmsafe.protect."


@dataclasses.dataclass
class Example:
    path: str  # relative to the checkout
    line: int  # 1-based line of the example's first YAML line
    text: str
    runnable: bool = False

    def where(self, node_line: int = 0) -> str:
        return f"{self.path}:{self.line + node_line}"


class _Mapping(dict):  # type: ignore[type-arg]
    line = 0
    key_lines: dict[t.Any, int] = {}


class _LineLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """A safe loader whose mappings remember their 0-based line."""


def _mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    result = _Mapping(loader.construct_pairs(node, deep=True))
    result.line = node.start_mark.line
    result.key_lines = {k.value: k.start_mark.line for k, _v in node.value if isinstance(k, yaml.ScalarNode)}
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def markdown_examples(path: str) -> list[Example]:
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    found, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
            runnable = i > 0 and lines[i - 1].strip() == RUNNABLE
            found.append(Example(path, start + 1, "\n".join(lines[start:end]) + "\n", runnable))
            i = end
        i += 1
    return found


def module_examples(module: str) -> Example:
    path = os.path.join("plugins", "modules", f"{module}.py")
    mod = importlib.import_module(f"ansible_collections.vmsafe.protect.plugins.modules.{module}")
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        first = next(n for n, line in enumerate(handle, start=1) if line.startswith("EXAMPLES"))
    # EXAMPLES = r"""<newline>: YAML line 0 is the rest of the EXAMPLES line itself
    return Example(path, first, mod.EXAMPLES)


def all_examples() -> list[Example]:
    docs = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    docs += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "roles", "*", "README.md")))
    found = [ex for doc in docs for ex in markdown_examples(doc)]
    return found + [module_examples(m) for m in MODULES]


class _Captured(Exception):
    def __init__(self, spec: ArgumentSpec) -> None:
        super().__init__("argument spec captured")
        self.spec = spec


_SPECS: dict[str, ArgumentSpec] = {}


def module_spec(module: str) -> ArgumentSpec:
    """The argument spec a module's main() builds (captured where it would create AnsibleModule)."""
    if module not in _SPECS:
        mod = importlib.import_module(f"ansible_collections.vmsafe.protect.plugins.modules.{module}")

        def capture(self: ArgumentSpec, **_kwargs: t.Any) -> t.NoReturn:
            raise _Captured(self)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ArgumentSpec, "create_ansible_module", capture)
            try:
                mod.main()
            except _Captured as done:
                _SPECS[module] = done.spec
            else:
                raise AssertionError(f"{module}.main() built no AnsibleModule through ArgumentSpec")
    return _SPECS[module]


def action_groups() -> dict[str, list[str]]:
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["action_groups"]


def _templated(value: t.Any) -> bool:
    return isinstance(value, str) and "{{" in value


def check_options(module: str, args: t.Any, example: Example, line: int) -> list[str]:
    """Problems of one module's options (each at its own line): unknown names, literal values outside choices."""
    if args is None:
        return []
    if not isinstance(args, dict):
        return [f"{example.where(line)}: {PREFIX}{module} takes a mapping of options, got {type(args).__name__}"]
    spec = module_spec(module).argument_spec
    names = {alias: name for name, opt in spec.items() for alias in [name, *opt.get("aliases", [])]}
    problems = []
    for key, value in args.items():
        where = example.where(getattr(args, "key_lines", {}).get(key, line))
        if key not in names:
            problems.append(f"{where}: {PREFIX}{module} has no option '{key}' "
                            f"(options: {', '.join(sorted(spec))})")
            continue
        choices = spec[names[key]].get("choices")
        if choices and not _templated(value) and value not in choices:
            problems.append(f"{where}: {PREFIX}{module} option '{key}': {value!r} is not one of {choices}")
    return problems


def check_node(node: t.Any, example: Example) -> list[str]:
    """Walk any YAML document; check every vmsafe.protect task and module_defaults entry in it."""
    problems: list[str] = []
    if isinstance(node, list):
        for item in node:
            problems += check_node(item, example)
        return problems
    if not isinstance(node, dict):
        return problems
    groups = action_groups()
    for key, value in node.items():
        line = getattr(node, "key_lines", {}).get(key, getattr(node, "line", 0))
        if isinstance(key, str) and key.startswith(PREFIX):
            name = key[len(PREFIX):]
            if name in MODULES:
                problems += check_options(name, value, example, line)
            else:
                problems.append(f"{example.where(line)}: {key} is not a module of this collection")
        if key == "module_defaults" and isinstance(value, dict):
            for target, defaults in value.items():
                if str(target).startswith(f"group/{PREFIX}"):
                    group = str(target)[len(f"group/{PREFIX}"):]
                    if group not in groups:
                        problems.append(f"{example.where(line)}: no action group '{group}' in meta/runtime.yml")
                        continue
                    # Ansible hands group defaults to every module of the group: each must accept them all.
                    for module in groups[group]:
                        problems += check_options(module, defaults, example, line)
                elif str(target).startswith(PREFIX):
                    problems += check_options(str(target)[len(PREFIX):], defaults, example, line)
        problems += check_node(value, example)
    return problems


EXAMPLES = all_examples()


def test_examples_were_found():
    paths = {ex.path for ex in EXAMPLES}
    assert "README.md" in paths and {f"plugins/modules/{m}.py" for m in MODULES} <= paths
    assert any(ex.runnable and ex.path == "README.md" for ex in EXAMPLES), "the quick start must be runnable"


@pytest.mark.parametrize("example", EXAMPLES, ids=[ex.where() for ex in EXAMPLES])
def test_example_parses_and_uses_only_known_options(example: Example) -> None:
    try:
        data = yaml.load(example.text, Loader=_LineLoader)  # noqa: S506  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pytest.fail(f"{example.where(mark.line if mark else 0)}: not valid YAML: {exc}")
    problems = check_node(data, example)
    assert not problems, "\n".join(problems)


def test_checker_finds_unknown_options_and_bad_choices():
    """The checker itself: an unknown option, a bad literal choice, and group defaults one module refuses."""
    bad = Example("inline.md", 10, """
- hosts: all
  module_defaults:
    group/vmsafe.protect.backup:
      uri: qemu:///system
  tasks:
    - name: Unknown option
      vmsafe.protect.vm_snapshot:
        vm_name: web01
        snapshot_name: x
        snapshot_description: nope
    - name: Bad choice
      vmsafe.protect.vm_snapshot:
        vm_name: web01
        snapshot_name: x
        state: rolled_back
    - name: Templated choice is not judged
      vmsafe.protect.vm_snapshot:
        vm_name: web01
        snapshot_name: x
        state: "{{ wanted }}"
""")
    problems = check_node(yaml.load(bad.text, Loader=_LineLoader), bad)  # noqa: S506
    assert any(p.startswith("inline.md:20: vmsafe.protect.vm_snapshot has no option 'snapshot_description'")
               for p in problems), problems
    assert any(p.startswith("inline.md:25:") and "'rolled_back' is not one of" in p for p in problems), problems
    assert any(p.startswith("inline.md:14: vmsafe.protect.backup_info has no option 'uri'") for p in problems)
    assert not any(":30:" in p for p in problems), problems
    # the repository-only modules of the backup group refuse uri (vm_backup and vm_restore take it)
    refusing = sorted(p.split(" ")[1] for p in problems if "has no option 'uri'" in p)
    assert refusing == ["vmsafe.protect.backup_files", "vmsafe.protect.backup_info", "vmsafe.protect.backup_prune",
                        "vmsafe.protect.backup_repository", "vmsafe.protect.backup_test_result",
                        "vmsafe.protect.backup_verify"], refusing
    assert len(problems) == 2 + len(refusing)


# Lab values for a runnable example's play vars (documented in README.md, "What is tested how").
def lab_vars(vm: str, tmp: str) -> dict[str, t.Any]:
    return {
        "vm": vm,
        "snapshot": f"pre-patch-{uuid.uuid4().hex[:8]}",
        "repository": os.path.join(tmp, "repo"),
        "vmsafe_passphrase": "runnable example passphrase",
    }


def run_playbook(example: Example, extra: dict[str, t.Any], tmp: str) -> subprocess.CompletedProcess[str]:
    plays = yaml.safe_load(example.text)
    groups = sorted({str(p.get("hosts", "all")) for p in plays})
    with open(os.path.join(tmp, "inventory.ini"), "w", encoding="utf-8") as handle:
        for group in groups:
            handle.write(f"[{group}]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    with open(os.path.join(tmp, "play.yml"), "w", encoding="utf-8") as handle:
        handle.write(example.text)
    with open(os.path.join(tmp, "vars.json"), "w", encoding="utf-8") as handle:
        json.dump(extra, handle)
    env = dict(ansible_env(), ANSIBLE_STDOUT_CALLBACK="default")
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                           os.path.join(tmp, "inventory.ini"), "-e", "@" + os.path.join(tmp, "vars.json"),
                           os.path.join(tmp, "play.yml")],
                          capture_output=True, text=True, env=env, check=False, timeout=600)


RUNNABLE_EXAMPLES = [ex for ex in EXAMPLES if ex.runnable]


@pytest.mark.libvirt
@pytest.mark.parametrize("example", RUNNABLE_EXAMPLES, ids=[ex.where() for ex in RUNNABLE_EXAMPLES])
def test_runnable_example_runs_against_the_lab(example: Example, lab: t.Any, tmp_path: t.Any, ansible: t.Any) -> None:
    vm = lab.vm("example")
    extra = lab_vars(vm, str(tmp_path))
    proc = run_playbook(example, extra, str(tmp_path))
    assert proc.returncode == 0, f"{example.where()} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    # what the quick start promises: the rollback point is gone again, and the repository holds the backups
    assert not [s for s in lab.snapshot_names(vm) if s == extra["snapshot"]]
    info = ansible("backup_info", {"repository": extra["repository"], "passphrase": extra["vmsafe_passphrase"],
                                   "vm_name": vm})
    assert info["_status"] == "ok", info
    assert len(info["backups"]) == 1, info
