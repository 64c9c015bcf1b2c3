# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vmsafe.protect on VMware against the peers, in the same run on the same vcsim (the project's, scripts/vcsim).

    .venv/bin/python benchmarks/vmware_bench.py [--vms 1000] [--peer-sample 100] [--tasks 10] [--json FILE]

1. Fleet info: one `vmsafe.protect.vm_snapshot_info` task over every VM (a whole `ansible` command, start-up
   included) against a playbook looping `vmware.vmware.vm_snapshot_info` once per VM. The loop costs about
   0.4 s per VM, so by default it runs over --peer-sample VMs and the time for all of them is extrapolated from
   the measured per-iteration cost plus the measured cost of the same playbook with an empty loop
   (--peer-sample 0 runs the loop over every VM; about 7 minutes for 1000).
2. Per-task create/remove: a playbook of --tasks creates then --tasks removes, `vmsafe.protect.vm_snapshot`
   against `vmware.vmware.vm_snapshot`, both under the same ansible-core (the peers' venv); per task =
   (playbook time - empty playbook time) / task count.

Needs scripts/peers-venv.sh (Python 3.12+, ansible 14.5) and pyvmomi in .venv.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import typing as t

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position

OUR_BIN = os.path.dirname(sys.executable)
PEERS_BIN = os.path.join(ROOT, ".cache", "peers-venv", "bin")


def env() -> dict[str, str]:
    link = os.path.join(ROOT, ".lab", "collections", "ansible_collections", "vmsafe")
    os.makedirs(link, exist_ok=True)
    if not os.path.islink(os.path.join(link, "protect")):
        os.symlink(ROOT, os.path.join(link, "protect"))
    # The ansible package's own collections (the peers) stay visible: site-packages is always searched.
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".lab", "collections"),
                ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
                ANSIBLE_DEPRECATION_WARNINGS="false", ANSIBLE_NOCOLOR="1")


def timed(cmd: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), check=False, timeout=3600)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, proc.stdout


def play(text: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        handle.write(text)
    try:
        return timed([os.path.join(PEERS_BIN, "ansible-playbook"), handle.name])[0]
    finally:
        os.unlink(handle.name)


def header(sim: Vcsim) -> str:
    return (f"- hosts: localhost\n  gather_facts: false\n  module_defaults:\n"
            f"    group/vmware.vmware.vmware: &conn {{hostname: '{sim.host}', port: {sim.port}, "
            f"username: '{sim.username}', password: '{sim.password}', validate_certs: false}}\n"
            f"    group/vmsafe.protect.vmsafe: {{hypervisor: vmware, hostname: '{sim.host}', port: {sim.port}, "
            f"username: '{sim.username}', password: '{sim.password}', validate_certs: false}}\n"
            f"  tasks:\n")


def fleet(sim: Vcsim, names: list[str], sample: int) -> dict[str, t.Any]:
    args = json.dumps(sim.module_args())
    out: dict[str, t.Any] = {"vms": len(names)}
    for label, binary in (("vmsafe_core219_py311", OUR_BIN), ("vmsafe_core221_py312", PEERS_BIN)):
        took, stdout = timed([os.path.join(binary, "ansible"), "localhost", "-m", "vmsafe.protect.vm_snapshot_info",
                              "-a", args, "-o"])
        summary = json.loads(stdout.split("=>", 1)[1])["summary"]
        if summary["vms"] != len(names):
            raise SystemExit(f"vm_snapshot_info saw {summary['vms']} VMs, expected {len(names)}")
        out[label] = round(took, 2)
    loop = names if sample <= 0 else names[:sample]
    peer = ("    - vmware.vmware.vm_snapshot_info: {name: '{{ item }}', datacenter: DC0, folder: /DC0/vm}\n"
            "      loop: {loop}\n")
    empty = play(header(sim) + peer.replace("{loop}", "[]"))
    looped = play(header(sim) + peer.replace("{loop}", json.dumps(loop)))
    per_vm = (looped - empty) / len(loop)
    out.update(peer_loop_vms=len(loop), peer_loop_seconds=round(looped, 2), peer_empty_playbook=round(empty, 2),
               peer_per_vm=round(per_vm, 3), peer_all_vms_seconds=round(empty + per_vm * len(names), 1),
               peer_all_vms_extrapolated=len(loop) < len(names))
    out["speedup_vs_core221"] = round(out["peer_all_vms_seconds"] / out["vmsafe_core221_py312"], 1)
    out["speedup_vs_core219"] = round(out["peer_all_vms_seconds"] / out["vmsafe_core219_py311"], 1)
    return out


def per_task(sim: Vcsim, count: int) -> dict[str, t.Any]:
    vm = "DC0_H0_VM0"
    ours = "".join(f"    - vmsafe.protect.vm_snapshot: {{vm_name: {vm}, snapshot_name: b{i}}}\n" for i in range(count))
    ours += "".join(f"    - vmsafe.protect.vm_snapshot: {{vm_name: {vm}, snapshot_name: b{i}, state: absent}}\n"
                    for i in range(count))
    peer = "".join(f"    - vmware.vmware.vm_snapshot: {{name: {vm}, datacenter: DC0, folder: /DC0/vm, "
                   f"snapshot_name: p{i}}}\n" for i in range(count))
    peer += "".join(f"    - vmware.vmware.vm_snapshot: {{name: {vm}, datacenter: DC0, folder: /DC0/vm, "
                    f"snapshot_name: p{i}, state: absent}}\n" for i in range(count))
    noop = "    - ansible.builtin.meta: noop\n"
    empty = min(play(header(sim) + noop) for _unused in range(2))
    result: dict[str, t.Any] = {"tasks": 2 * count, "empty_playbook": round(empty, 2)}
    # Alternate the order so that neither side always runs on a warmer cache.
    for label, text in (("vmsafe", ours), ("peer", peer), ("peer_2", peer), ("vmsafe_2", ours)):
        result[label] = round((play(header(sim) + text) - empty) / (2 * count), 3)
    result["vmsafe_per_task"] = min(result.pop("vmsafe"), result.pop("vmsafe_2"))
    result["peer_per_task"] = min(result.pop("peer"), result.pop("peer_2"))
    result["ratio"] = round(result["vmsafe_per_task"] / result["peer_per_task"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--peer-sample", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--json")
    opts = parser.parse_args()
    if not os.path.exists(os.path.join(PEERS_BIN, "ansible-playbook")):
        raise SystemExit("no peers venv: run scripts/peers-venv.sh first")
    report: dict[str, t.Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count()}
    with Vcsim(vms_per_pool=opts.vms // 2) as sim:
        si = sim.connect()
        content = si.RetrieveContent()
        from pyVmomi import vim  # pylint: disable=import-outside-toplevel

        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        names = sorted(v.name for v in view.view)
        view.Destroy()
        report["fleet"] = fleet(sim, names, opts.peer_sample)
        print(json.dumps(report["fleet"], indent=1), flush=True)
    with Vcsim() as sim:
        report["per_task"] = per_task(sim, opts.tasks)
        print(json.dumps(report["per_task"], indent=1), flush=True)
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
