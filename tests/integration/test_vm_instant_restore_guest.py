# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Issue 18's "Done means" for instant recovery, on the booted Debian guest of scripts/guest-image.sh (long).

Back the guest up, destroy the VM and its disk, vm_instant_restore: SSH answers and a file written before the backup
reads back; then migrate: the VM runs from a standalone local image holding what it ran from, with no NBD server
left. The time from the module call to the SSH banner is printed (benchmarks/instant_restore_bench.py measures it
against a full vm_restore + boot).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from it_helpers import LONG, ROOT, ssh  # pylint: disable=import-error
from ansible_collections.vmsafe.protect.plugins.module_utils._instant_server import alive

pytestmark = [pytest.mark.libvirt, pytest.mark.long,
              pytest.mark.skipif(not LONG, reason="boots the Debian guest twice: set VMSAFE_LONG_TESTS=1")]

PASS = "instant guest test passphrase"  # test data, not a secret


def test_guest_lost_with_its_disk_answers_ssh_from_the_backup_then_migrates(ansible, libvirtd, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))
    import guest as guestlab  # pylint: disable=import-outside-toplevel,import-error
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    name = f"vmsafe-it-{uuid.uuid4().hex[:6]}-irguest"
    state_dir = f"/tmp/vmsafe-ir-{uuid.uuid4().hex[:8]}"
    repo = {"repository": str(tmp_path / "repo"), "passphrase": PASS}
    dest = tmp_path / "images"
    dest.mkdir()
    pid = None
    try:
        port, key = guestlab.boot(name)
        g = {"port": port, "key": key}
        token = secrets.token_hex(16)
        wrote = ssh(g, f"echo {token} > /root/before-backup && sync")
        assert wrote.returncode == 0, wrote.stderr
        backup = ansible("vm_backup", dict(repo, vm_name=name, init=True))
        assert backup["_status"] == "ok", backup
        labvm.destroy(name)  # the VM and its disk are gone
        assert not os.path.exists(os.path.join(labvm.VM_DIR, f"{name}.qcow2"))

        started = time.monotonic()
        run = ansible("vm_instant_restore", dict(repo, name=name, dest=str(dest), state_dir=state_dir, timeout=120))
        returned = time.monotonic() - started
        assert run["_status"] == "ok" and run["changed"] is True, run
        pid = run["server"]["pid"]
        guestlab.wait_for_ssh(port, timeout=120)
        to_ssh = time.monotonic() - started
        print(f"\nvm_instant_restore returned after {returned:.1f} s; SSH answered {to_ssh:.1f} s after the call")
        read = ssh(g, "cat /root/before-backup")
        assert read.returncode == 0 and read.stdout.strip() == token, read.stderr
        assert to_ssh < 90  # the Done-means target is 30 s on a quiet machine: see benchmarks/README.md

        # pause the guest (no more writes), so what it runs from can be compared with the migrated image
        virsh = ["virsh", "-c", labvm.URI]
        subprocess.run([*virsh, "suspend", name], check=True, capture_output=True)
        chain = tmp_path / "chain.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", run["disks"][0]["overlay"], str(chain)],
                       check=True, capture_output=True, timeout=600)
        migrate = ansible("vm_instant_restore", dict(repo, name=name, state="migrated", state_dir=state_dir,
                                                     timeout=600))
        assert migrate["_status"] == "ok" and migrate["changed"] is True, migrate
        print(f"migrate took {migrate['elapsed']:.1f} s")
        assert not alive(pid, None) and not os.path.exists(run["state_dir"])
        local = migrate["disks"][0]["path"]
        xml = subprocess.run([*virsh, "dumpxml", name], capture_output=True, text=True, check=True).stdout
        assert "protocol='nbd'" not in xml and local in xml
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", local], check=True,
                                         capture_output=True, text=True).stdout)
        assert "backing-filename" not in info
        out = tmp_path / "local.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", local, str(out)], check=True, capture_output=True)
        assert subprocess.run(["cmp", "-s", str(chain), str(out)], check=False).returncode == 0
        subprocess.run([*virsh, "resume", name], check=True, capture_output=True)
        again = ssh(g, "cat /root/before-backup")
        assert again.returncode == 0 and again.stdout.strip() == token  # still running, now from local storage
    finally:
        labvm.destroy(name)
        if pid and alive(pid, None):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(state_dir, ignore_errors=True)
