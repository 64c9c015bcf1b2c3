# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_backup / vm_restore / backup_* against a real libvirtd + QEMU and a real repository on disk."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import disk_digest
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DEFAULT_CHUNK_SIZE, DEFAULT_SEGMENT_CHUNKS
from it_helpers import LONG  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt

MiB = 1024 * 1024
PASS = "correct horse battery staple"


def _raw_sha256(args: list[str]) -> tuple[str, str]:
    """(sha256 of the content, the repository's chunk-wise content digest) of an image.

    qemu-img cannot write raw to a pipe, so it converts to a temporary raw file first.
    """
    import tempfile  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "disk.raw")
        subprocess.run(["qemu-img", "convert", *args, "-O", "raw", out], capture_output=True, check=True)
        digest = hashlib.sha256()
        with open(out, "rb") as handle:
            for block in iter(lambda: handle.read(4 * MiB), b""):
                digest.update(block)
        return digest.hexdigest(), disk_digest(out, DEFAULT_CHUNK_SIZE, DEFAULT_SEGMENT_CHUNKS)


def disk_sha256(vm: str) -> str:
    """sha256 of what the guest sees right now, through the whole backing chain."""
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    return _raw_sha256(["-U", labvm.active_image(vm)])


def file_sha256(path: str, fmt: str = "raw") -> str:
    return _raw_sha256(["-f", fmt, path])


@pytest.fixture
def repo(tmp_path):
    return {"repository": str(tmp_path / "repo"), "passphrase": PASS}


def test_full_then_incrementals_restore_exactly_each_point(lab, ansible, repo, tmp_path):
    vm = lab.vm(size_mib=64)
    lab.write(vm, 0xAB, 0, 8 * MiB)
    lab.write(vm, 0x17, 40 * MiB, 3 * MiB)
    sums, ids = [], []

    checked = ansible("vm_backup", dict(repo, vm_name=vm, init=True), check=True)
    assert checked["changed"] and checked["mode"] == "full" and checked["backup_id"] is None
    assert not os.path.exists(repo["repository"])

    sums.append(disk_sha256(vm))
    full = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert full["_status"] == "ok", full
    assert full["mode"] == "full" and full["reason"] == "no earlier backup of this VM in the repository"
    assert full["disks"][0]["digest"] == sums[0][1]
    assert full["bytes_read"] >= 11 * MiB and full["bytes_read"] < 20 * MiB  # only allocated data, not 64 MiB
    ids.append(full["backup_id"])
    checkpoints = lab.virsh("checkpoint-list", vm, "--name").split()
    assert checkpoints == [full["checkpoint"]]

    for round_, offsets in enumerate(([1 * MiB, 20 * MiB], [33 * MiB + 64 * 1024])):
        for off in offsets:
            lab.write(vm, 0xC0 + round_, off, 256 * 1024)  # ~1 % of the disk at known offsets
        sums.append(disk_sha256(vm))
        inc = ansible("vm_backup", dict(repo, vm_name=vm))
        assert inc["_status"] == "ok", inc
        assert inc["mode"] == "incremental" and inc["parent"] == ids[-1]
        assert inc["bytes_read"] == len(offsets) * 256 * 1024  # the dirty extents only
        assert inc["disks"][0]["digest"] == sums[-1][1]
        ids.append(inc["backup_id"])
        assert lab.virsh("checkpoint-list", vm, "--name").split() == [inc["checkpoint"]]

    info = ansible("backup_info", dict(repo, vm_name=vm))
    assert [b["id"] for b in info["backups"]] == ids
    assert [b["mode"] for b in info["backups"]] == ["full", "incremental", "incremental"]

    for backup_id, want in zip(ids, sums):
        dest = tmp_path / backup_id
        dest.mkdir()
        restored = ansible("vm_restore", dict(repo, backup_id=backup_id, dest=str(dest), format="raw"))
        assert restored["_status"] == "ok", restored
        assert file_sha256(restored["files"][0]["path"])[0] == want[0]  # byte for byte the disk at that time
    for fmt in ("qcow2", "vmdk", "vhdx"):
        dest = tmp_path / fmt
        dest.mkdir()
        planned = ansible("vm_restore", dict(repo, backup_id=ids[-1], dest=str(dest), format=fmt), check=True)
        assert planned["changed"] and planned["files"][0]["path"].endswith("." + fmt) and not list(dest.iterdir())
        restored = ansible("vm_restore", dict(repo, backup_id=ids[-1], dest=str(dest), format=fmt))
        assert restored["files"][0]["path"] == planned["files"][0]["path"]
        assert file_sha256(restored["files"][0]["path"], fmt)[0] == sums[-1][0]
        assert [p.name for p in dest.iterdir()] == [os.path.basename(restored["files"][0]["path"])]  # no leftovers
    dest = tmp_path / "qcow2"
    # the same restore again: the file holds exactly that disk (its digest is checked), so nothing to do
    again = ansible("vm_restore", dict(repo, backup_id=ids[-1], dest=str(dest), format="qcow2"))
    assert again["_status"] == "ok" and again["changed"] is False, again.get("msg")
    assert again["files"][0]["restored"] is False and again["plan"] == []
    # another backup's disk under that name (a file changed since): never overwritten
    path = again["files"][0]["path"]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x01 0 4096", path], check=True, capture_output=True)
    changed = ansible("vm_restore", dict(repo, backup_id=ids[-1], dest=str(dest), format="qcow2"))
    assert changed["_status"] == "failed" and "Refusing to overwrite" in changed["msg"]
    assert "does not hold disk vda" in changed["msg"]

    verified = ansible("backup_verify", dict(repo, read_data=True))
    assert verified["ok"] and verified["backups_checked"] == 3


def test_broken_chain_falls_back_to_full_with_the_reason(lab, ansible, repo):
    vm = lab.vm()
    lab.write(vm, 0x31, 0, MiB)
    first = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    lab.virsh("checkpoint-delete", vm, first["checkpoint"])
    strict = ansible("vm_backup", dict(repo, vm_name=vm, mode="incremental"))
    assert strict["_status"] == "failed" and "Cannot take an incremental backup" in strict["msg"]
    second = ansible("vm_backup", dict(repo, vm_name=vm))
    assert second["_status"] == "ok", second.get("msg")
    assert second["mode"] == "full" and "is gone from the VM" in second["reason"]


def test_repository_is_opened_early_but_created_only_for_a_vm_that_exists(lab, ansible, repo):
    """vm_backup unlocks the key in a thread before the VM is looked up; init still creates nothing for a typo."""
    typo = ansible("vm_backup", dict(repo, vm_name="no-such-vm-here", init=True))
    assert typo["_status"] == "failed" and "no-such-vm-here" in typo["msg"]
    assert not os.path.exists(repo["repository"])
    vm = lab.vm()
    ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    wrong = ansible("vm_backup", dict(repo, vm_name=vm, passphrase="not-the-passphrase", init=True))
    assert wrong["_status"] == "failed" and "passphrase" in wrong["msg"].lower(), wrong["msg"]


def test_revert_drops_our_checkpoints_and_next_backup_is_full(lab, ansible, repo):
    vm = lab.vm()
    ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "pre", "memory": True})
    ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    reverted = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "pre", "state": "reverted"})
    assert reverted["_status"] == "ok", reverted
    assert any("next vm_backup will be a full backup" in w for w in reverted.get("warnings", []))
    assert lab.virsh("checkpoint-list", vm, "--name").split() == []
    after = ansible("vm_backup", dict(repo, vm_name=vm))
    assert after["mode"] == "full"


def test_restore_to_a_new_vm_defines_and_starts_it(lab, ansible, repo, tmp_path):
    vm = lab.vm()
    lab.write(vm, 0x5E, 2 * MiB, MiB)
    ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    new_name = vm + "-copy"
    lab.names.append(new_name)
    made = ansible("vm_restore", dict(repo, vm_name=vm, target="new_vm", new_vm_name=new_name, dest=str(tmp_path),
                                      start=True))
    assert made["_status"] == "ok", made
    assert made["vm"]["name"] == new_name and made["vm"]["state"] == "running"
    assert made["vm"]["id"] != lab.virsh("domuuid", vm).strip()
    assert lab.check(new_name, 0x5E, 2 * MiB, MiB)
    # run again: the VM it made (running, on the restored file) is there, so nothing is done
    again = ansible("vm_restore", dict(repo, vm_name=vm, target="new_vm", new_vm_name=new_name, dest=str(tmp_path),
                                       start=True))
    assert again["_status"] == "ok" and again["changed"] is False, again.get("msg")
    assert again["vm"]["id"] == made["vm"]["id"] and again["plan"] == []


def test_restore_over_the_original_needs_force_and_a_shut_off_vm(lab, ansible, repo):
    vm = lab.vm()
    lab.write(vm, 0x66, 0, MiB)
    backup = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    lab.write(vm, 0x99, 0, MiB)
    no_force = ansible("vm_restore", dict(repo, backup_id=backup["backup_id"], target="original"))
    assert no_force["_status"] == "failed" and "force: true" in no_force["msg"]
    running = ansible("vm_restore", dict(repo, backup_id=backup["backup_id"], target="original", force=True))
    assert running["_status"] == "failed" and "shut it off" in running["msg"]
    assert lab.check(vm, 0x99, 0, MiB)  # nothing was touched
    lab.virsh("destroy", vm)
    done = ansible("vm_restore", dict(repo, backup_id=backup["backup_id"], target="original", force=True))
    assert done["_status"] == "ok", done
    assert lab.check(vm, 0x66, 0, MiB)
    lab.virsh("start", vm)
    assert ansible("vm_backup", dict(repo, vm_name=vm))["mode"] == "full"


def test_prune_keeps_the_policy_set_and_verify_catches_a_bit_flip(lab, ansible, repo, tmp_path):
    vm = lab.vm()
    ids = []
    for i in range(4):
        lab.write(vm, 0x10 + i, i * MiB, MiB)
        ids.append(ansible("vm_backup", dict(repo, vm_name=vm, init=True, tags={"n": str(i)}))["backup_id"])
    checked = ansible("backup_prune", dict(repo, keep_last=2), check=True)
    assert sorted(b["id"] for b in checked["pruned"]) == sorted(ids[:2])
    assert len(ansible("backup_info", repo)["backups"]) == 4
    pruned = ansible("backup_prune", dict(repo, keep_last=2))
    assert pruned["changed"] and [b["id"] for b in ansible("backup_info", repo)["backups"]] == ids[2:]
    # a GFS rule: all backups are from today, so keep_daily=1 keeps only the newest, and says why
    daily = ansible("backup_prune", dict(repo, keep_daily=1), check=True)
    assert [b["id"] for b in daily["pruned"]] == [ids[2]]
    assert [(k["id"], k["reason"].split()[0]) for k in daily["kept"]] == [(ids[3], "daily")]
    again = ansible("backup_prune", dict(repo, keep_last=2))
    assert again["changed"] is False, {k: again[k] for k in ("pruned", "packs_deleted", "packs_repacked", "bytes_freed")}

    packs = []
    for root, _dirs, files in os.walk(os.path.join(repo["repository"], "packs")):
        packs.extend(os.path.join(root, f) for f in files)
    victim = max(packs, key=os.path.getsize)
    with open(victim, "r+b") as handle:
        handle.seek(os.path.getsize(victim) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    verified = ansible("backup_verify", dict(repo, read_data=True))
    assert verified["_status"] == "failed" and verified["ok"] is False and verified["errors"]
    # the flipped byte is named: a damaged chunk with its backup, or a damaged chunk map naming its backups
    named = {d["backup_id"] for d in verified["damaged"]} | {b for b in ids[2:] if b in " ".join(verified["errors"])}
    assert named & set(ids[2:]), verified["errors"]
    restore = ansible("vm_restore", dict(repo, backup_id=sorted(named & set(ids[2:]))[0], dest=str(tmp_path),
                                         format="raw"))
    assert restore["_status"] == "failed" and not list(tmp_path.glob(f"{vm}-*"))  # refuses, leaves no file


def process_tree(root: int) -> list[int]:
    """root and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


# Killed mid-read by default; killed as the job starts too with scripts/test.sh --long.
KILL_AT_START = pytest.param(0.0, marks=pytest.mark.skipif(not LONG, reason="kill as the job starts: set VMSAFE_LONG_TESTS=1"))


@pytest.mark.parametrize("delay", [KILL_AT_START, 0.4])
def test_killed_backup_leaves_vm_running_repo_verifying_and_next_run_working(lab, ansible, repo, tmp_path, delay):
    import json  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    import time  # pylint: disable=import-outside-toplevel

    from it_helpers import ansible_env  # pylint: disable=import-error,import-outside-toplevel

    import labvm  # pylint: disable=import-outside-toplevel,import-error
    import libvirt  # pylint: disable=import-outside-toplevel

    # 768 MiB of random data (incompressible, so the backup runs for a while), written while the VM is off
    vm = lab.vm(size_mib=1024, start=False)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(64 * MiB))
    for i in range(12):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {noise} {i * 64 * MiB} {64 * MiB}",
                        labvm.active_image(vm)], check=True, capture_output=True)
    lab.virsh("start", vm)
    first = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert first["_status"] == "ok", first
    for i in range(8):
        lab.write(vm, 0x61 + i, i * 128 * MiB + 4 * MiB, 4 * MiB)

    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m", "vmsafe.protect.vm_backup",
           "-a", json.dumps(dict(repo, vm_name=vm, mode="full"))]
    proc = subprocess.Popen(cmd, env=ansible_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    conn = libvirt.open(labvm.URI)
    try:
        dom = conn.lookupByName(vm)

        def busy() -> bool:
            try:
                return dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
            except libvirt.libvirtError:
                return True  # "backup job data missing": the job is being set up

        deadline = time.monotonic() + 60
        # every jobInfo() of a backup job makes libvirt query QEMU's block nodes; at one query per 2 ms QEMU 7.2 once
        # aborted in qcow2_get_specific_info (assertion failed, VM crashed, seen on this lab): poll every 20 ms
        while time.monotonic() < deadline and not busy():
            time.sleep(0.02)
        assert busy(), "the backup job never started"
        time.sleep(delay)
        tree = process_tree(proc.pid)  # ansible's workers start their own sessions: walk the tree
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)  # freeze at once, then kill: the run stops where it was
        assert busy(), "the backup finished before the kill; make it larger"
    finally:
        conn.close()
    for pid in tree + [p for p in process_tree(proc.pid) if p not in tree]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()

    assert lab.virsh("domstate", vm).strip() == "running"
    verified = ansible("backup_verify", dict(repo, read_data=True))
    info = ansible("backup_info", repo)["backups"]
    assert verified["ok"] and verified["backups_checked"] == 1, (info, first["duration"], delay)  # the killed run committed nothing
    assert [b["id"] for b in ansible("backup_info", repo)["backups"]] == [first["backup_id"]]

    after = ansible("vm_backup", dict(repo, vm_name=vm))
    assert after["_status"] == "ok", after
    assert after["mode"] == "incremental" and after["parent"] == first["backup_id"]
    assert any("abandoned backup job" in w for w in after.get("warnings", []))
    want = disk_sha256(vm)
    restored = ansible("vm_restore", dict(repo, backup_id=after["backup_id"], dest=str(tmp_path), format="raw"))
    assert file_sha256(restored["files"][0]["path"])[0] == want[0]
    assert ansible("backup_verify", dict(repo, read_data=True))["ok"]


def test_backup_quiesce_without_agent_fails_or_falls_back(lab, ansible, repo):
    vm = lab.vm()
    failed = ansible("vm_backup", dict(repo, vm_name=vm, init=True, quiesce=True))
    assert failed["_status"] == "failed" and "Failed to quiesce" in failed["msg"] and "qemu-guest-agent" in failed["msg"]
    assert lab.virsh("checkpoint-list", vm, "--name").split() == []  # nothing left behind
    done = ansible("vm_backup", dict(repo, vm_name=vm, init=True, quiesce=True, quiesce_fallback="crash_consistent"))
    assert done["_status"] == "ok", done.get("msg")
    assert done["consistency"] == "crash_consistent"
    assert any("Could not quiesce" in w for w in done.get("warnings", []))


def test_shut_off_vm_guards(lab, ansible, repo):
    vm = lab.vm()
    assert ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "pre", "memory": True})["changed"]
    first = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert first["_status"] == "ok" and first["changed"], first.get("msg")
    assert lab.virsh("checkpoint-list", vm, "--name").split(), "the backup left its checkpoint"
    lab.virsh("destroy", vm)
    snap = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "cold"})
    assert snap["_status"] == "failed" and "shut off and has backup checkpoints" in snap["msg"]
    reverted = ansible("vm_snapshot", {"vm_name": vm, "snapshot_name": "pre", "state": "reverted"})
    assert reverted["_status"] == "ok" and lab.virsh("checkpoint-list", vm, "--name").split() == []
    after = ansible("vm_backup", dict(repo, vm_name=vm))  # the revert dropped the checkpoints: a full backup
    assert after["_status"] == "ok" and after["mode"] == "full", after.get("msg")


def test_backup_runs_under_async_and_reports_bytes(lab, repo, tmp_path):
    """AWX and long nightly runs use async/poll: the module must work detached and report what it did."""
    import json  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    from it_helpers import ansible_env  # pylint: disable=import-error,import-outside-toplevel

    vm = lab.vm()
    lab.write(vm, 0x71, 0, 2 * MiB)
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Back up in the background", "async": 300, "poll": 1, "register": "r",
         "vmsafe.protect.vm_backup": dict(repo, vm_name=vm, init=True)},
        {"name": "Show", "ansible.builtin.debug": {"var": "r"}},
    ]}]
    playbook = tmp_path / "async.yml"
    playbook.write_text(json.dumps(play))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), str(playbook)],
                          capture_output=True, text=True, env=ansible_env(), check=False)
    results = json.loads(proc.stdout)
    backup = results[0]
    assert backup["_status"] == "ok" and backup["finished"] == 1, backup
    assert backup["mode"] == "full" and backup["bytes_read"] >= 2 * MiB and backup["backup_id"]


def test_new_vm_from_a_subset_of_disks_never_shares_the_originals_images(lab, ansible, repo, tmp_path):
    """Reproduced: target: new_vm with a subset of disks left the other disks pointing at the original's images."""
    vm = lab.vm()
    second = str(tmp_path / f"{vm}-vdb.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", second, "16M"], check=True)
    lab.virsh("destroy", vm)  # this machine type has no hotplug: add the disk to the definition, then start
    lab.virsh("attach-disk", vm, second, "vdb", "--driver", "qemu", "--subdriver", "qcow2", "--targetbus", "virtio",
              "--config")
    lab.virsh("start", vm)
    ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    new_name = vm + "-one"
    lab.names.append(new_name)
    made = ansible("vm_restore", dict(repo, vm_name=vm, target="new_vm", new_vm_name=new_name, dest=str(tmp_path),
                                      disks=["vda"]))
    assert made["_status"] == "ok", made
    xml = lab.virsh("dumpxml", new_name)
    assert second not in xml and "vdb" not in xml
    assert any("vdb" in w and "not restored" in w for w in made.get("warnings", []))


def test_new_vm_from_an_unencrypted_repository_is_refused(lab, ansible, tmp_path):
    """Reproduced: with encryption none a forged manifest's domain XML was defined by target: new_vm."""
    vm = lab.vm()
    plain = {"repository": str(tmp_path / "plain")}
    backup = ansible("vm_backup", dict(plain, vm_name=vm, init=True, encryption="none"))
    assert backup["_status"] == "ok", backup
    refused = ansible("vm_restore", dict(plain, vm_name=vm, target="new_vm", new_vm_name=vm + "-x", dest=str(tmp_path)))
    assert refused["_status"] == "failed" and "not authenticated" in refused["msg"] and "target: image" in refused["msg"]
    assert vm + "-x" not in lab.virsh("list", "--all", "--name").split()
