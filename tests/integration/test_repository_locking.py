# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The repository modules queue on a busy repository instead of failing (lock_timeout), and break_lock works.

Reproduced: backup_prune failed at once whenever another job's vm_backup or a verify held the repository.
These run the real modules through the ``ansible`` command against a local repository; the other job is an
engine-level backup in another process that holds a shared lock for a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import list_locks
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.integration.it_helpers import run_ansible

PASSPHRASE = "lock test passphrase"

HOLDER = """
import sys, time
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository

def slow():
    yield (0, 4096, b"x" * 4096)
    print("holding", flush=True)
    time.sleep(float(sys.argv[3]))
    yield (4096, 4096, b"y" * 4096)

repo = Repository.open(LocalBackend(sys.argv[1]), sys.argv[2])
repo.backup("other-job-vm", [DiskSource("vda", 8192, slow())])
print("committed", flush=True)
"""


def make_repository(path: str) -> Repository:
    repo = Repository.init(LocalBackend(path), PASSPHRASE, chunk_size=4096, pack_size=1024 * 1024,
                           kdf={"name": "argon2id", "iterations": 1, "lanes": 1, "memory_kib": 1024})
    for n in range(3):
        data = bytes([n + 1]) * 10000
        repo.backup("vm", [DiskSource("vda", len(data), [(0, len(data), data)])])
    return repo


def hold_repository(tmp_path: t.Any, location: str, seconds: float) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script), location, PASSPHRASE, str(seconds)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_prune_waits_for_another_jobs_backup(tmp_path: t.Any) -> None:
    location = str(tmp_path / "repo")
    make_repository(location)
    args = {"repository": location, "passphrase": PASSPHRASE, "keep_last": 1, "vm_name": "vm"}
    holder = hold_repository(tmp_path, location, 6)
    try:
        refused = run_ansible("backup_prune", dict(args, lock_timeout=0))
        assert refused["_status"] == "failed" and "shared lock for backup" in refused["msg"], refused
        started = time.monotonic()
        pruned = run_ansible("backup_prune", args)  # default lock_timeout: queues behind the backup
        waited = time.monotonic() - started
    finally:
        assert holder.wait(60) == 0
    assert pruned["_status"] != "failed", pruned
    assert len(pruned["pruned"]) == 2 and waited > 2
    repo = Repository.open(LocalBackend(location), PASSPHRASE)
    assert sorted(r.vm_name for r in repo.list()) == ["other-job-vm", "vm"]
    assert repo.verify(read_data=True).ok


def test_break_lock_removes_a_dead_hosts_lock_and_check_mode_keeps_it(tmp_path: t.Any) -> None:
    location = str(tmp_path / "repo")
    repo = make_repository(location)
    # a lock of another machine, refreshed a minute ago: not yet stale, so it blocks the prune
    repo.backend.write_atomic("locks/gone-host", (
        b'{"owner": {"machine": "' + b"e" * 32 + b'", "boot": "x", "pid": 77, "host": "kvm-gone"}, '
        b'"operation": "backup", "exclusive": false}'))
    args = {"repository": location, "passphrase": PASSPHRASE, "keep_last": 1, "lock_timeout": 1}
    blocked = run_ansible("backup_prune", args)
    assert blocked["_status"] == "failed" and "kvm-gone" in blocked["msg"] and "break_lock" in blocked["msg"], blocked
    checked = run_ansible("backup_prune", dict(args, break_lock=True), check=True)
    assert checked["locks_broken"] == [{"operation": "backup", "exclusive": False, "host": "kvm-gone", "pid": 77}]
    assert len(list_locks(repo.backend)) == 1
    broken = run_ansible("backup_prune", dict(args, break_lock=True))
    assert broken["changed"] and broken["locks_broken"][0]["host"] == "kvm-gone" and len(broken["pruned"]) == 2
    assert list_locks(repo.backend) == []
