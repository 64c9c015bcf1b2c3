# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The modules with an s3:// repository on a real SeaweedFS server, through the ``ansible`` command.

A lab VM (libvirt + QEMU) is backed up by ``vm_backup`` with a backup-only credential (a bucket policy denies it
every delete but locks/ and every tombstone write), restored bit-identical by ``vm_restore``, listed by
``backup_info``, verified by ``backup_verify``; ``backup_prune`` fails clearly with the backup-only credential and
works with the admin one. No secret appears in any result.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup import _s3server
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup import test_s3_many_writers as fleet
from it_helpers import LONG, run_ansible  # pylint: disable=import-error
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup.test_s3 import deny_delete_policy

MiB = 1024 * 1024
PASS = "s3 module test passphrase"


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[_s3server.S3Server]:
    yield from _s3server.serve("seaweedfs", tmp_path_factory)


def s3_args(server: _s3server.S3Server, location: str, who: str) -> dict[str, t.Any]:
    key, secret = server.admin if who == "admin" else t.cast(tuple, server.backup)
    return {"repository": location, "passphrase": PASS, "repository_s3_endpoint_url": server.endpoint,
            "repository_s3_region": "us-east-1", "repository_s3_access_key": key,
            "repository_s3_secret_key": secret}


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def test_vm_backup_restore_verify_prune_on_s3(lab: t.Any, ansible: t.Any, seaweedfs: _s3server.S3Server,
                                              tmp_path: t.Any) -> None:
    bucket = seaweedfs.new_bucket("modules")
    seaweedfs.client().put_bucket_policy(Bucket=bucket, Policy=deny_delete_policy(bucket, "nightly"))
    location = f"s3://{bucket}/nightly"
    backup_args = s3_args(seaweedfs, location, "backup")
    admin_args = s3_args(seaweedfs, location, "admin")
    secrets_ = (seaweedfs.backup[1], seaweedfs.admin[1], PASS)  # type: ignore[index]

    vm = lab.vm(size_mib=32)
    lab.write(vm, 0x5A, 0, 4 * MiB)
    ids = []
    for round_ in range(2):
        if round_:
            lab.write(vm, 0x30 + round_, (8 + round_) * MiB, 256 * 1024)
        result = ansible("vm_backup", dict(backup_args, vm_name=vm, init=True))
        assert result["_status"] == "ok", result
        assert result["mode"] == ("full" if round_ == 0 else "incremental")
        ids.append(result["backup_id"])
        assert not any(s in json.dumps(result) for s in secrets_)
    info = ansible("backup_info", dict(backup_args, vm_name=vm))
    assert [b["id"] for b in info["backups"]] == ids

    dest = tmp_path / "restore"
    dest.mkdir()
    restored = ansible("vm_restore", dict(backup_args, backup_id=ids[-1], dest=str(dest), format="raw"))
    assert restored["_status"] == "ok", restored
    from test_libvirt_backup import disk_sha256  # pylint: disable=import-outside-toplevel,import-error

    assert sha256_file(restored["files"][0]["path"]) == disk_sha256(vm)[0]  # the disk as it is now, byte for byte

    verified = ansible("backup_verify", dict(backup_args, read_data=True))
    assert verified["_status"] == "ok" and verified["ok"] and verified["backups_checked"] == 2

    # a compromised hypervisor host's credential cannot prune
    refused = ansible("backup_prune", dict(backup_args, keep_last=1, vm_name=vm))
    assert refused["_status"] == "failed" and "Access denied" in refused["msg"] and bucket in refused["msg"], refused
    assert not any(s in json.dumps(refused) for s in secrets_)
    pruned = ansible("backup_prune", dict(admin_args, keep_last=1, vm_name=vm))
    assert pruned["_status"] == "ok" and [b["id"] for b in pruned["pruned"]] == ids[:1], pruned


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="the nightly_backup playbook on an s3:// repository: set VMSAFE_LONG_TESTS=1")
def test_nightly_backup_playbook_unchanged_with_an_s3_repository(lab: t.Any, seaweedfs: _s3server.S3Server,
                                                                 tmp_path: t.Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The role and playbook as they are: the S3 endpoint and credentials come from the standard AWS variables."""
    from test_playbooks_audit_nightly import playbook  # pylint: disable=import-outside-toplevel,import-error

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.admin[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.admin[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    vm = lab.vm("s3nightly")
    location = f"s3://{seaweedfs.new_bucket('nightly')}/prod"
    extra = {"vmsafe_repository": location, "vmsafe_passphrase": PASS, "nightly_backup_init": True,
             "nightly_backup_quiesce_fallback": "crash_consistent"}
    rc, results = playbook("nightly_backup.yml", tmp_path, extra, f"[backup_targets]\n{vm}\n")
    assert rc == 0, [(r["_task"], r["_status"], r.get("msg")) for r in results][-6:]
    summary = [r for r in results if r["_task"] == "One line per VM, failed and unreachable ones included"]
    lines = dict(line.split(": ", 1) for line in summary[0]["msg"])
    assert lines[vm].startswith("full backup ") and f"repository pruned once, by {vm}" in lines[vm], lines
    assert seaweedfs.admin[1] not in json.dumps(results) and PASS not in json.dumps(results)
    info = run_ansible("backup_info", {"repository": location, "passphrase": PASS})
    assert [b["vm_name"] for b in info["backups"]] == [vm]


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="8 concurrent backups into one s3:// repository: set VMSAFE_LONG_TESTS=1")
def test_eight_concurrent_backups_with_a_prune_queued(lab: t.Any, seaweedfs: _s3server.S3Server,
                                                      tmp_path: t.Any) -> None:
    """4 lab VMs backed up by vm_backup (4 ansible processes) and 4 engine-level writers into one s3:// repository
    at the same time, a backup_prune started among them: all succeed, blocks shared with committed data are not
    stored again, verify passes."""
    location = f"s3://{seaweedfs.new_bucket('eight')}/repo"
    args = s3_args(seaweedfs, location, "admin")
    vms = [lab.vm(f"s3f{n}", size_mib=16) for n in range(4)]
    for vm in vms:
        lab.write(vm, 0x42, 0, 4 * MiB)  # the same 4 MiB on every VM: stored once
    first = run_ansible("vm_backup", dict(args, vm_name=vms[0], init=True))
    assert first["_status"] == "ok", first
    # the data the engine writers share, committed once before they start (dedup is against committed data)
    template = Repository.open(open_backend(location, **seaweedfs.options()), PASS)
    shared = random.Random("shared").randbytes(fleet.SHARED)
    template.backup("template", [DiskSource("vda", len(shared), [(0, len(shared), shared)])])
    packs_after_first = sum(size for _n, size in template.backend.list("packs"))
    template.close()
    script = tmp_path / "writer.py"
    script.write_text(fleet.WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    options = seaweedfs.options()
    writers = [subprocess.Popen([sys.executable, str(script), json.dumps({
        "location": location, "options": options, "passphrase": PASS, "shared": fleet.SHARED,
        "unique": fleet.UNIQUE, "op": "backup", "vm": f"engine-{n}"})], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in range(4)]
    results: dict[str, dict[str, t.Any]] = {}
    threads = [threading.Thread(target=lambda vm=vm: results.update({vm: run_ansible("vm_backup", dict(
        args, vm_name=vm, init=True))})) for vm in vms]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    pruner = threading.Thread(target=lambda: results.update({"prune": run_ansible("backup_prune", dict(
        args, keep_last=2))}))
    pruner.start()
    for thread in threads:
        thread.join(600)
    pruner.join(600)
    for proc in writers:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    for vm in vms:
        assert results[vm]["_status"] == "ok", results[vm]
    assert results["prune"]["_status"] == "ok", results["prune"]
    repo = Repository.open(open_backend(location, **options), PASS)
    assert len(repo.list()) == 2 + 4 + 4
    added = sum(size for _n, size in repo.backend.list("packs")) - packs_after_first
    # the engine writers add their unique parts only (the 2 MiB they share is not stored again), the VMs little
    # (their data is the same pattern as the first backup's); stored four more times the shared part alone is 8 MiB
    assert added < 4 * fleet.UNIQUE + 2 * MiB, added
    assert repo.verify(read_data=True).ok
    repo.close()
