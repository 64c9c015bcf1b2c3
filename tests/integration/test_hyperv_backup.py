# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Hyper-V backups end to end against the WinRM simulator: Recovery checkpoint, RCT incrementals, restore.

Known bytes are written into the simulated disk (a test control of the simulator, not a shipped script); each
backup restored to an image must equal the disk at that moment, byte for byte; the incremental must read only
the blocks change tracking reports. The simulator runs only the collection's own scripts.
"""

from __future__ import annotations

import hashlib
import os
import random

from test_hyperv_vm_snapshot import NASTY_VM, conn, server, sim  # noqa: F401  pylint: disable=unused-import,import-error

MiB = 1024 * 1024
PASS = "hyperv-backup-test-passphrase"  # test data, not a secret


def restore_bytes(ansible, repo: str, backup_id: str, dest: str) -> bytes:
    result = ansible("vm_restore", {"repository": repo, "passphrase": PASS, "backup_id": backup_id, "target": "image",
                                    "format": "raw", "dest": dest})
    assert result["_status"] == "ok", result.get("msg")
    with open(result["files"][0]["path"], "rb") as handle:
        data = handle.read()
    os.unlink(result["files"][0]["path"])
    return data


def test_full_then_rct_incrementals_restore_byte_identical(ansible, sim, tmp_path):
    rng = random.Random(11)
    vm = sim.host.add_vm("sql01", disk_size=16 * MiB)
    sim.host.write(vm, 0, rng.randbytes(3 * MiB))
    sim.host.write(vm, 9 * MiB, rng.randbytes(MiB))
    sim.host.max_processed = 5 * MiB  # GetVirtualDiskChanges answers in pieces: the provider must ask again
    repo = str(tmp_path / "repo")
    args = conn(sim, vm_name="sql01", repository=repo, passphrase=PASS, quiesce=True)

    full = ansible("vm_backup", dict(args, init=True))
    assert full["_status"] == "ok", full.get("msg")
    assert full["mode"] == "full" and full["consistency"] == "quiesced"
    assert full["bytes_read"] == 16 * MiB
    states = [hashlib.sha256(bytes(vm.disks["SCSI0:0"])).hexdigest()]
    assert list(vm.recovery) == [] and list(vm.reference_points) == [full["checkpoint"]]

    ids = [full["backup_id"]]
    for _round in range(2):
        served = sim.host.bytes_served
        for _write in range(5):  # 5 writes of 4 KiB at known places, one RCT block (64 KiB) each at most
            sim.host.write(vm, rng.randrange(0, 16 * MiB - 4096), rng.randbytes(4096))
        inc = ansible("vm_backup", args)
        assert inc["_status"] == "ok", inc.get("msg")
        assert inc["mode"] == "incremental", inc["reason"]
        assert 4096 * 5 <= inc["bytes_read"] <= 10 * 64 * 1024  # the changed blocks, not the 16 MiB disk
        assert sim.host.bytes_served - served == inc["bytes_read"]
        # only the reference point the next incremental needs is left on the host
        assert list(vm.recovery) == [] and list(vm.reference_points) == [inc["checkpoint"]]
        states.append(hashlib.sha256(bytes(vm.disks["SCSI0:0"])).hexdigest())
        ids.append(inc["backup_id"])

    for backup_id, digest in zip(ids, states):
        data = restore_bytes(ansible, repo, backup_id, str(tmp_path))
        assert hashlib.sha256(data).hexdigest() == digest

    vhdx = ansible("vm_restore", {"repository": repo, "passphrase": PASS, "backup_id": ids[-1], "target": "image",
                                  "format": "vhdx", "dest": str(tmp_path)})
    assert vhdx["_status"] == "ok" and vhdx["files"][0]["path"].endswith(".vhdx"), vhdx.get("msg")


def test_failed_read_leaves_no_checkpoint_and_the_chain_survives(ansible, sim, tmp_path):
    vm = sim.host.add_vm("web01", disk_size=8 * MiB)
    sim.host.write(vm, MiB, b"\x5a" * MiB)
    repo = str(tmp_path / "repo")
    args = conn(sim, vm_name="web01", repository=repo, passphrase=PASS)
    full = ansible("vm_backup", dict(args, init=True))
    assert full["_status"] == "ok", full.get("msg")
    sim.host.write(vm, 5 * MiB, b"\xa5" * 8192)
    sim.host.fail_read_after = 0
    failed = ansible("vm_backup", args)
    assert failed["_status"] == "failed" and "in use" in failed["msg"]
    assert list(vm.recovery) == []  # the Recovery checkpoint of the failed run was dropped
    assert list(vm.reference_points) == [full["checkpoint"]]  # and the last good base kept
    sim.host.fail_read_after = None
    again = ansible("vm_backup", args)
    assert again["_status"] == "ok" and again["mode"] == "incremental", again.get("msg")
    assert again["bytes_read"] == 64 * 1024  # the 8 KiB write, one RCT block; nothing was lost by the failure
    data = restore_bytes(ansible, repo, again["backup_id"], str(tmp_path))
    assert data == bytes(vm.disks["SCSI0:0"])


def test_missing_reference_point_falls_back_to_full_and_vss_failure_follows_the_fallback(ansible, sim, tmp_path):
    vm = sim.host.add_vm(NASTY_VM, disk_size=4 * MiB, vss_works=False)  # quotes, $, ;, backticks: data only
    repo = str(tmp_path / "repo")
    args = conn(sim, vm_name=NASTY_VM, repository=repo, passphrase=PASS, quiesce=True)
    refused = ansible("vm_backup", dict(args, init=True, quiesce_fallback="fail"))
    assert refused["_status"] == "failed" and "quiesce_fallback=crash_consistent" in refused["msg"]
    assert list(vm.recovery) == []
    first = ansible("vm_backup", dict(args, init=True, quiesce_fallback="crash_consistent"))
    assert first["_status"] == "ok" and first["consistency"] == "crash_consistent", first.get("msg")
    assert any("crash-consistent" in w for w in first.get("warnings", []))
    vm.reference_points.clear()  # removed on the host (a restore, a move, by hand)
    second = ansible("vm_backup", dict(args, quiesce_fallback="crash_consistent"))
    assert second["mode"] == "full" and "is gone" in second["reason"]
    assert len(sim.host.vms) == 1 and second["vm"]["name"] == NASTY_VM
