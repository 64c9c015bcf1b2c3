# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Time to SSH of vm_instant_restore against a full vm_restore + boot of the same backup, in the same run.

    /work/quiet.sh .venv/bin/python benchmarks/instant_restore_bench.py [--rounds 2] [--data-gib 0]
        [--workdir .cache/bench-ir]

The booted Debian guest of scripts/guest-image.sh (TCG, 2 vCPUs, 256 MiB) writes a file and is backed up with
vm_backup; the VM and its disk are destroyed. With --data-gib N the guest also has a second disk (vdb, not mounted)
holding N GiB of random data, as a VM with a data volume has: a full restore must write it all before the VM starts,
an instant recovery serves only what the guest reads. Then, alternating for --rounds rounds:

- instant: ``vm_instant_restore`` (state running) as a new VM of the same name, and wait for the SSH banner on the
  guest's forwarded port; then check the file written before the backup, and remove the recovery
  (state absent, remove_vm).
- full: ``vm_restore`` target new_vm with start: true, and wait for the SSH banner; check the file; destroy the VM.

Each time runs from the start of the ``ansible`` command (its start-up included, as a user runs it) to the first
SSH banner. Prints a Markdown table (min / median per path, and the ratio) and the raw figures as JSON.
Needs the lab (scripts/lab.sh install && scripts/lab.sh start).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import guest as guestlab  # noqa: E402  pylint: disable=wrong-import-position,import-error
import labvm  # noqa: E402  pylint: disable=wrong-import-position,import-error
from it_helpers import ssh  # noqa: E402  pylint: disable=wrong-import-position,import-error

os.environ.setdefault("VMSAFE_COLLECTIONS_PATH", os.path.join(ROOT, ".lab", "collections"))
from it_helpers import run_ansible  # noqa: E402  pylint: disable=wrong-import-position,import-error,reimported

PASS = "bench-passphrase-not-secret"


def timed_to_ssh(module: str, args: dict, port: int) -> tuple[float, float, dict]:
    """(seconds until the module returned, seconds until the SSH banner, module result)."""
    start = time.perf_counter()
    result = run_ansible(module, args)
    returned = time.perf_counter() - start
    if result.get("_status") != "ok":
        raise SystemExit(f"{module} failed: {result.get('msg')}")
    guestlab.wait_for_ssh(port, timeout=300)
    return returned, time.perf_counter() - start, result


def boot_guest(name: str, data_gib: int, workdir: str) -> tuple[int, str]:
    """Boot the guest as tests/lab/guest.py does, with a second disk (vdb) of ``data_gib`` GiB of random data.

    The disk is in the definition from the start: this machine type has no PCI hotplug. Returns (ssh port, key).
    """
    if not data_gib:
        return guestlab.boot(name)
    raw = os.path.join(workdir, "data.raw")
    with open(raw, "wb") as handle:
        for _block in range(data_gib * 256):
            handle.write(os.urandom(4 * 1024 * 1024))
    data = os.path.join(labvm.VM_DIR, f"{name}.data.qcow2")  # labvm.destroy removes <name>.* files
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, data], check=True, capture_output=True)
    os.unlink(raw)
    image = guestlab.image_dir()
    root = os.path.join(labvm.VM_DIR, f"{name}.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", os.path.join(image, "root.qcow2"),
                    root], check=True)
    port = guestlab.free_port()
    xml = guestlab.DOMAIN_XML.format(name=name, image=image, disk=root, port=port,
                                     console=os.path.join(labvm.VM_DIR, f"{name}.console.log"))
    xml = xml.replace("    <serial ", f"""    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{data}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <serial """, 1)
    conn = labvm.connect()
    try:
        conn.defineXML(xml).create()
    finally:
        conn.close()
    guestlab.wait_for_ssh(port)
    return port, os.path.join(image, "id_ed25519")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-gib", type=int, default=0, help="a second disk with this many GiB of random data")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".cache", "bench-ir"))
    opts = parser.parse_args()
    shutil.rmtree(opts.workdir, ignore_errors=True)
    os.makedirs(opts.workdir)
    name = f"vmsafe-bench-{uuid.uuid4().hex[:6]}-ir"
    state_dir = f"/tmp/vmsafe-irb-{uuid.uuid4().hex[:6]}"
    repo = {"repository": os.path.join(opts.workdir, "repo"), "passphrase": PASS}
    figures: dict[str, list[tuple[float, float]]] = {"instant": [], "full": []}
    try:
        port, key = boot_guest(name, opts.data_gib, opts.workdir)
        g = {"port": port, "key": key}
        token = secrets.token_hex(8)
        assert ssh(g, f"echo {token} > /root/marker && sync").returncode == 0
        backup = run_ansible("vm_backup", dict(repo, vm_name=name, init=True))
        assert backup["_status"] == "ok", backup.get("msg")
        labvm.destroy(name)
        for round_no in range(opts.rounds):
            for path in ("instant", "full") if round_no % 2 == 0 else ("full", "instant"):
                dest = os.path.join(opts.workdir, f"{path}-{round_no}")
                os.makedirs(dest)
                if path == "instant":
                    args = dict(repo, name=name, dest=dest, state_dir=state_dir)
                    returned, to_ssh, _res = timed_to_ssh("vm_instant_restore", args, port)
                else:
                    args = dict(repo, vm_name=name, target="new_vm", new_vm_name=name, dest=dest, start=True)
                    returned, to_ssh, _res = timed_to_ssh("vm_restore", args, port)
                seen = ssh(g, "cat /root/marker").stdout.strip()
                assert seen == token, f"{path}: the file written before the backup reads {seen!r}"
                figures[path].append((returned, to_ssh))
                print(f"round {round_no + 1} {path}: module returned after {returned:.1f} s, SSH after {to_ssh:.1f} s",
                      flush=True)
                if path == "instant":
                    gone = run_ansible("vm_instant_restore", dict(repo, name=name, state="absent", remove_vm=True,
                                                                  state_dir=state_dir))
                    assert gone["_status"] == "ok", gone.get("msg")
                else:
                    labvm.destroy(name)
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        labvm.destroy(name)
        shutil.rmtree(state_dir, ignore_errors=True)
    print("\n| path | module returned (min / median) | SSH answers (min / median) |\n|---|---|---|")
    for path, label in (("instant", "vm_instant_restore"), ("full", "vm_restore new_vm + boot")):
        ret = [r for r, _s in figures[path]]
        ssh_t = [s for _r, s in figures[path]]
        print(f"| {label} | {min(ret):.1f} / {statistics.median(ret):.1f} s | "
              f"{min(ssh_t):.1f} / {statistics.median(ssh_t):.1f} s |")
    ratio = statistics.median(s for _r, s in figures["full"]) / statistics.median(s for _r, s in figures["instant"])
    print(f"\nfull restore + boot / instant recovery, time to SSH (medians): {ratio:.2f}x")
    print(json.dumps({"data_gib": opts.data_gib, **figures}))
    shutil.rmtree(opts.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
