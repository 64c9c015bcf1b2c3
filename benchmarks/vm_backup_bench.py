# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_backup's incremental of a running VM's 4 GiB disk against borg and restic on the same image file.

    .venv/bin/python benchmarks/vm_backup_bench.py [--size-gib 4] [--rounds 3] [--workdir .cache/bench-vm]

In one run: the LAB.md section 4 image (40 % zero, 35 % compressible, 25 % random) becomes the qcow2 disk of a
running libvirt VM and, as a raw file, the input of borg and restic. Each tool takes a full backup; then the same
"clustered 1 %" change (655 writes of 64 KiB of random data, in clusters) is applied to the VM through QEMU and to
the raw file, and each tool takes an incremental; that is repeated for
--rounds rounds with new writes each time and the medians are compared (one round is at the mercy of a noisy
machine). vm_backup runs as a user runs it (one `ansible` ad-hoc task,
start-up included) and reads only the dirty extents of QEMU's bitmap; borg and restic read the whole file.
Prints a Markdown table with the ratios; the target is vm_backup >= 15x faster than both on the incremental, judged
on the module's run (connect, open the repository, back up, commit) and, separately, on the whole Ansible task.
Needs the lab (scripts/lab.sh install && scripts/lab.sh start) and `apt-get install borgbackup restic`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import backup_bench as bb  # noqa: E402  pylint: disable=wrong-import-position,import-error
import labvm  # noqa: E402  pylint: disable=wrong-import-position,import-error

PASS = "bench-passphrase-not-secret"


def ansible_env() -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".lab", "collections"),
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "tests", "integration", "callback_plugins"),
               ANSIBLE_STDOUT_CALLBACK="result_json")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def vm_backup(vm: str, repo: str, init: bool) -> tuple[float, dict]:
    args = {"vm_name": vm, "repository": repo, "passphrase": PASS, "init": init}
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m", "vmsafe.protect.vm_backup",
           "-a", json.dumps(args)]
    os.sync()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=False)
    seconds = time.perf_counter() - start
    result = json.loads(proc.stdout)[0]
    if result.get("_status") != "ok":
        raise SystemExit(f"vm_backup failed: {result.get('msg')}")
    return seconds, result


def write_through_qemu(vm: str, writes: list[tuple[int, int]], noise_dir: str) -> None:
    """Apply the writes inside QEMU, each with its own random 64 KiB file, so no two writes deduplicate."""
    os.makedirs(noise_dir, exist_ok=True)
    conn = labvm.connect()
    try:
        dom = conn.lookupByName(vm)
        for i, (offset, length) in enumerate(writes):
            path = os.path.join(noise_dir, f"{i}.bin")
            with open(path, "wb") as handle:
                handle.write(os.urandom(length))
            out = labvm._hmp_qemu_io(dom, vm, f"write -s {path} {offset} {length}")  # pylint: disable=protected-access
            if f"wrote {length}/{length}" not in out:
                raise SystemExit(f"write through QEMU failed: {out}")
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=4)
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".cache", "bench-vm"))
    parser.add_argument("--rounds", type=int, default=3, help="incremental rounds, each with new writes (median)")
    args = parser.parse_args()
    for tool in ("borg", "restic", "qemu-img"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install borgbackup restic qemu-utils")
    size = int(args.size_gib * 1024) * bb.MIB
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.environ["BENCH_TMP"] = work
    raw = os.path.join(work, "disk.img")
    bb.log(f"generating a {size / bb.MIB:.0f} MiB image")
    bb.generate_image(raw, size)
    vm = f"vmsafe-bench-{os.getpid()}"
    disk = os.path.join(labvm.VM_DIR, f"{vm}.qcow2")
    os.makedirs(labvm.VM_DIR, exist_ok=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, disk], check=True)
    conn = labvm.connect()
    try:
        conn.defineXML(labvm.DOMAIN_XML.format(name=vm, memory=128, disk=disk)).create()
    finally:
        conn.close()
    rows: dict[str, dict[str, float]] = {}
    try:
        repo = os.path.join(work, "repo-vmsafe")
        full_s, full = vm_backup(vm, repo, init=True)
        bb.log(f"vm_backup full: {full_s:.2f} s task, {full['duration']:.2f} s backup, read {full['bytes_read'] / 1e6:.0f} MB")
        tools = [bb.Borg(work), bb.Restic(work)]
        for tool in tools:
            tool.init()
            tool.backup("full", raw)
        incr: dict[str, list[float]] = {"vm_backup (task)": [], "vm_backup (module run)": []}
        for tool in tools:
            incr[tool.name] = []
        for round_ in range(args.rounds):
            writes = bb.clustered_writes(size, random.Random(7 + round_))
            bb.log(f"round {round_ + 1}/{args.rounds}: {len(writes)} clustered writes through QEMU and to the raw file")
            write_through_qemu(vm, writes, os.path.join(work, f"noise-{round_}"))
            bb.apply_writes(raw, writes)
            inc_s, inc = vm_backup(vm, repo, init=False)
            bb.log(f"vm_backup incremental: {inc_s:.2f} s task, {inc['elapsed']:.2f} s module run, "
                   f"read {inc['bytes_read'] / 1e6:.1f} MB ({inc['mode']})")
            if inc["mode"] != "incremental":
                raise SystemExit(f"vm_backup took a {inc['mode']} backup: {inc['reason']}")
            incr["vm_backup (task)"].append(inc_s)
            incr["vm_backup (module run)"].append(inc["elapsed"])
            for tool in tools:
                tool.backup(f"incr{round_}", raw)
                incr[tool.name].append(tool.results[f"incr{round_}"]["s"])
        rows["vm_backup (task)"] = {"full": full_s}
        rows["vm_backup (module run)"] = {"full": full["elapsed"]}
        for tool in tools:
            rows[tool.name] = {"full": tool.results["full"]["s"]}
        for name, times in incr.items():
            rows[name].update(incr=statistics.median(times), low=min(times), high=max(times))
    finally:
        labvm.destroy(vm)
    print(f"\nIncremental after clustered 1 % (655 x 64 KiB) on a {size / bb.MIB:.0f} MiB disk, median of "
          f"{args.rounds} rounds (each with new writes), same run\n")
    print("| tool | full (s) | incremental, median (s) | min-max (s) | borg incr / this | restic incr / this |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['full']:.2f} | {row['incr']:.2f} | {row['low']:.2f}-{row['high']:.2f} "
              f"| {rows['borg']['incr'] / row['incr']:.1f}x | {rows['restic']['incr'] / row['incr']:.1f}x |")
    for label in ("vm_backup (module run)", "vm_backup (task)"):
        mine = rows[label]["incr"]
        ok = rows["borg"]["incr"] / mine >= 15 and rows["restic"]["incr"] / mine >= 15
        print(f"target: {label} incremental >= 15x faster than borg and restic (medians): {'PASS' if ok else 'MISS'}")
    print("(module run: the module process from connect to commit; task: plus Ansible's own start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
