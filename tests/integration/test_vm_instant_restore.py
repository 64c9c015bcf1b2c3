# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_instant_restore on the real libvirtd + QEMU: boot from a backup served by the detached NBD server, write into
the overlay, migrate to local storage while running, clean up an abandoned recovery.

Every module call goes through the ``ansible`` command, so the server really has to outlive an AnsiballZ payload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._instant_server import alive

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
PASS = "instant restore test passphrase"  # test data, not a secret
KEYS = {"vm", "backup_id", "state_dir", "disks", "server", "plan", "elapsed", "changed"}


@pytest.fixture
def repo(tmp_path):
    return {"repository": str(tmp_path / "repo"), "passphrase": PASS}


@pytest.fixture
def state_dir():
    """A short folder of our own (Unix socket paths must stay under 108 bytes); servers left by a failure are stopped."""
    path = f"/tmp/vmsafe-ir-{uuid.uuid4().hex[:8]}"
    yield path
    for status in _statuses(path):
        if alive(status.get("pid"), status.get("start")):
            os.kill(status["pid"], signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def _statuses(path):
    found = []
    for entry in os.listdir(path) if os.path.isdir(path) else []:
        try:
            with open(os.path.join(path, entry, "server.json"), encoding="utf-8") as handle:
                found.append(json.load(handle))
        except (OSError, ValueError):
            pass
    return found


def _raw(path, out):
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", path, str(out)], check=True, capture_output=True)
    return out.read_bytes()


def test_boot_from_backup_write_migrate_and_nothing_left(lab, ansible, repo, tmp_path, state_dir):
    vm = lab.vm(size_mib=16)
    lab.write(vm, 0xAB, 0, 2 * MiB)
    lab.write(vm, 0x17, 8 * MiB, MiB)
    backup = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert backup["_status"] == "ok", backup
    restored = tmp_path / "backup.raw"
    Repository.open(open_backend(repo["repository"]), PASS).restore(backup["backup_id"], "vda", str(restored))
    name = vm + "-ir"
    lab.names.append(name)
    dest = tmp_path / "images"
    dest.mkdir()
    args = dict(repo, name=name, vm_name=vm, dest=str(dest), state_dir=state_dir, timeout=120)

    check = ansible("vm_instant_restore", args, check=True)
    assert check["_status"] == "ok" and check["changed"] is True, check
    assert KEYS <= set(check) and check["vm"] is None and check["backup_id"] == backup["backup_id"]
    assert not os.path.exists(state_dir) and list(dest.iterdir()) == []  # check mode made nothing

    run = ansible("vm_instant_restore", args, diff=True)
    assert run["_status"] == "ok" and run["changed"] is True, run
    assert KEYS <= set(run) and run["vm"]["state"] == "running" and run["vm"]["name"] == name
    assert run["server"]["alive"] is True and run["server"]["lock"] == "held" and run["elapsed"] < 60
    assert "recovery: none" in run["diff"]["before"] and "running from backup" in run["diff"]["after"]
    pid = run["server"]["pid"]
    assert "protocol='nbd'" in lab.virsh("dumpxml", name)  # the VM reads the backup over NBD
    assert lab.check(name, 0xAB, 0, 2 * MiB) and lab.check(name, 0x17, 8 * MiB, MiB)

    again = ansible("vm_instant_restore", args)
    assert again["_status"] == "ok" and again["changed"] is False and again["plan"] == [], again
    assert again["server"]["pid"] == pid

    # the served backup is protected: a GC (exclusive lock) cannot run while the server holds its shared lock
    other = Repository.open(open_backend(repo["repository"]), PASS)
    with pytest.raises(backup_errors.LockedError, match="instant recovery of VM " + name):
        other.gc()
    other.close()

    lab.write(name, 0x5A, 4 * MiB, 64 * 1024)  # the guest writes: into the local overlay
    overlay = run["disks"][0]["overlay"]
    assert _raw(overlay, tmp_path / "ov.raw")[4 * MiB:4 * MiB + 10] == b"\x5a" * 10

    migrate = ansible("vm_instant_restore", dict(args, state="migrated"))
    assert migrate["_status"] == "ok" and migrate["changed"] is True, migrate
    local = migrate["disks"][0]["path"]
    assert migrate["disks"][0]["migrated"] is True and migrate["vm"]["state"] == "running"
    assert "protocol='nbd'" not in lab.virsh("dumpxml", name)
    assert local in lab.virsh("dumpxml", "--inactive", name)  # a restart uses the local image too
    assert not alive(pid, None) and not os.path.exists(run["state_dir"]) and not os.path.exists(overlay)
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", local], check=True,
                                     capture_output=True, text=True).stdout)
    assert "backing-filename" not in info
    expected = bytearray(restored.read_bytes())
    expected[4 * MiB:4 * MiB + 64 * 1024] = b"\x5a" * (64 * 1024)
    assert _raw(local, tmp_path / "local.raw") == bytes(expected)  # the backup plus the guest's write, nothing else
    assert lab.check(name, 0x5A, 4 * MiB, 64 * 1024)

    done = ansible("vm_instant_restore", dict(args, state="migrated"))
    assert done["_status"] == "ok" and done["changed"] is False, done
    other = Repository.open(open_backend(repo["repository"]), PASS)
    other.gc()  # the lock is gone with the server
    other.close()


def test_original_abandoned_recovery_is_cleaned_and_errors_name_the_fix(lab, ansible, repo, tmp_path, state_dir):
    vm = lab.vm(size_mib=16)
    lab.write(vm, 0x66, 0, MiB)
    backup = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    original_disk = lab.virsh("domblklist", vm).split()[-1]
    dest = tmp_path / "images"
    dest.mkdir()
    args = dict(repo, name=vm, dest=str(dest), state_dir=state_dir, target="original", timeout=120)

    bad = ansible("vm_instant_restore", dict(args, backup_id="20200101T000000Z-deadbeef", force=True))
    assert bad["_status"] == "failed" and "There is no backup '20200101T000000Z-deadbeef'" in bad["msg"], bad
    no_force = ansible("vm_instant_restore", args)
    assert no_force["_status"] == "failed" and "force: true" in no_force["msg"]
    running = ansible("vm_instant_restore", dict(args, force=True))
    assert running["_status"] == "failed" and "shut it off" in running["msg"]
    taken = ansible("vm_instant_restore", dict(args, target="new_vm"))
    assert taken["_status"] == "failed" and "exists already" in taken["msg"]
    assert not os.path.exists(os.path.join(state_dir, vm))

    lab.virsh("destroy", vm)
    lab.write(vm, 0x99, 0, MiB)  # the original's own disk changes after the backup: the recovery must not see it
    run = ansible("vm_instant_restore", dict(args, force=True))
    assert run["_status"] == "ok" and run["changed"] is True, run
    assert run["vm"]["id"] == lab.virsh("domuuid", vm).strip() and run["vm"]["state"] == "running"
    assert lab.check(vm, 0x66, 0, MiB)  # the backup's content, not the disk's

    # the server dies (a crash): running again starts it again, from the recorded state
    os.kill(run["server"]["pid"], signal.SIGKILL)
    restarted = ansible("vm_instant_restore", dict(args, force=True))
    assert restarted["_status"] == "ok" and restarted["changed"] is True, restarted
    assert any("start the NBD server again" in step for step in restarted["plan"])
    assert restarted["server"]["alive"] is True and restarted["server"]["pid"] != run["server"]["pid"]
    # abandoned: it dies again and nobody migrates
    os.kill(restarted["server"]["pid"], signal.SIGKILL)
    refused = ansible("vm_instant_restore", dict(args, state="absent"))
    assert refused["_status"] == "failed" and "remove_vm: true" in refused["msg"], refused
    gone = ansible("vm_instant_restore", dict(args, state="absent", remove_vm=True), diff=True)
    assert gone["_status"] == "ok" and gone["changed"] is True, gone
    assert KEYS <= set(gone) and gone["server"] == {}
    assert not os.path.exists(run["state_dir"]) and list(dest.iterdir()) == []
    assert lab.virsh("domstate", vm).strip() == "shut off"
    assert lab.virsh("domblklist", vm).split()[-1] == original_disk  # the original definition is back
    assert lab.check(vm, 0x99, 0, MiB)
    twice = ansible("vm_instant_restore", dict(args, state="absent", remove_vm=True))
    assert twice["_status"] == "ok" and twice["changed"] is False


def test_other_hypervisors_say_it_is_not_supported():
    from ansible_collections.vmsafe.protect.plugins.module_utils._errors import UnsupportedOperation  # pylint: disable=import-outside-toplevel
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.registry import PROVIDERS  # pylint: disable=import-outside-toplevel

    for name in ("vmware", "hyperv"):
        cls, _error = PROVIDERS[name][0]()
        provider = cls({"hostname": "h", "username": "u", "password": "p", "validate_certs": True}, lambda _m: None)
        with pytest.raises(UnsupportedOperation, match=f"Instant recovery is not supported on {name}"):
            provider.instant_recovery()
