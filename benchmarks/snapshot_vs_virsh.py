# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Per-task time of vm_snapshot create/remove against raw virsh, measured in the same run on the same lab.

    .venv/bin/python benchmarks/snapshot_vs_virsh.py [--rounds 5]

Three figures per operation, median of the rounds:
  virsh       `virsh snapshot-create-as --disk-only` / `snapshot-delete` as subprocesses (the raw floor)
  module      the module's own run time (its `elapsed` result: connect, plan, act, re-list)
  task        one `ansible localhost -m vmsafe.protect.vm_snapshot` invocation, Ansible start-up included
and an in-playbook per-task figure: a playbook of 2*N tasks timed as a whole, divided by the task count.
Needs the lab: scripts/lab.sh install && scripts/lab.sh start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import labvm  # noqa: E402  pylint: disable=wrong-import-position

VENV_BIN = os.path.dirname(sys.executable)


def env() -> dict[str, str]:
    link = os.path.join(ROOT, ".lab", "collections", "ansible_collections", "vmsafe")
    os.makedirs(link, exist_ok=True)
    if not os.path.islink(os.path.join(link, "protect")):
        os.symlink(ROOT, os.path.join(link, "protect"))
    e = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".lab", "collections"),
             ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING="false",
             ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
             ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "tests", "integration", "callback_plugins"),
             ANSIBLE_STDOUT_CALLBACK="result_json")
    e["PATH"] = VENV_BIN + os.pathsep + e.get("PATH", "")
    return e


def timed(cmd: list[str], environ: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, check=True)
    return time.perf_counter() - start, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    vm = f"vmsafe-bench-{os.getpid()}"
    labvm.create(vm)
    e = env()
    rows: dict[str, list[float]] = {k: [] for k in (
        "virsh create", "virsh remove", "module create", "module remove", "task create", "task remove")}
    try:
        for i in range(args.rounds):
            t, _out = timed(["virsh", "-q", "snapshot-create-as", vm, f"v{i}", "--disk-only", "--atomic"])
            rows["virsh create"].append(t)
            t, _out = timed(["virsh", "-q", "snapshot-delete", vm, f"v{i}"])
            rows["virsh remove"].append(t)
            for state, key in (("present", "create"), ("absent", "remove")):
                a = json.dumps({"vm_name": vm, "snapshot_name": f"m{i}", "disk_only": True, "state": state})
                t, out = timed([os.path.join(VENV_BIN, "ansible"), "localhost", "-m", "vmsafe.protect.vm_snapshot",
                                "-a", a], e)
                result = json.loads(out)[0]
                if not result.get("changed"):
                    raise SystemExit(f"vm_snapshot {state} did not change: {result}")
                rows[f"task {key}"].append(t)
                rows[f"module {key}"].append(result["elapsed"])
        n = args.rounds
        tasks = []
        for i in range(n):
            for state in ("present", "absent"):
                tasks.append({"name": f"{state} p{i}", "vmsafe.protect.vm_snapshot": {
                    "vm_name": vm, "snapshot_name": f"p{i}", "disk_only": True, "state": state}})
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
            json.dump(play, handle)
        empty = [{"hosts": "localhost", "gather_facts": False, "tasks": []}]
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle2:
            json.dump(empty, handle2)
        t_play, _out = timed([os.path.join(VENV_BIN, "ansible-playbook"), handle.name], e)
        t_empty, _out = timed([os.path.join(VENV_BIN, "ansible-playbook"), handle2.name], e)
        os.unlink(handle.name)
        os.unlink(handle2.name)
    finally:
        labvm.destroy(vm)

    med = {k: statistics.median(v) for k, v in rows.items()}
    per_task = (t_play - t_empty) / (2 * n)
    print(f"vm_snapshot vs raw virsh, disk-only snapshots, median of {args.rounds} rounds (seconds)\n")
    print("| operation | virsh | module (elapsed) | ratio | ansible ad-hoc task | ratio |")
    print("|---|---|---|---|---|---|")
    for op in ("create", "remove"):
        v, m, tk = med[f"virsh {op}"], med[f"module {op}"], med[f"task {op}"]
        print(f"| {op} | {v:.3f} | {m:.3f} | {m / v:.2f}x | {tk:.3f} | {tk / v:.1f}x |")
    virsh_pair = med["virsh create"] + med["virsh remove"]
    print(f"\nIn one playbook: {2 * n} tasks in {t_play:.2f} s, empty play {t_empty:.2f} s -> "
          f"{per_task:.3f} s per task ({per_task / (virsh_pair / 2):.1f}x a virsh call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
