# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The repository modules queue on a busy repository instead of failing (lock_timeout), and break_lock works.

Reproduced: backup_prune failed at once whenever another job's vm_backup or a verify held the repository.
These run the real modules through the ``ansible`` command against a local repository; the other job is an
engine-level backup in another process that holds a shared lock for a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import list_locks
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.integration.it_helpers import run_ansible

PASSPHRASE = "lock test passphrase"

HOLDER = """
import sys
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository

def slow():
    yield (0, 4096, b"x" * 4096)
    print("holding", flush=True)
    sys.stdin.readline()  # until the test says so
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


def hold_repository(tmp_path: t.Any, location: str) -> subprocess.Popen:
    """Another job's backup, holding a shared lock until a line is written to its stdin."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script), location, PASSPHRASE], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def module_running(name: str) -> bool:
    out = subprocess.run(["pgrep", "-f", f"AnsiballZ_{name}"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


def test_prune_waits_for_another_jobs_backup(tmp_path: t.Any) -> None:
    location = str(tmp_path / "repo")
    make_repository(location)
    args = {"repository": location, "passphrase": PASSPHRASE, "keep_last": 1, "vm_name": "vm"}
    holder = hold_repository(tmp_path, location)
    assert holder.stdin is not None
    result: dict[str, t.Any] = {}
    try:
        refused = run_ansible("backup_prune", dict(args, lock_timeout=0))
        assert refused["_status"] == "failed" and "shared lock for backup" in refused["msg"], refused
        worker = threading.Thread(target=lambda: result.update(run_ansible("backup_prune", args)))
        worker.start()  # default lock_timeout: it queues behind the backup
        deadline = time.monotonic() + 120
        while not module_running("backup_prune") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # the module is running: it has met the lock by now and waits
        assert worker.is_alive(), "the prune finished while the backup still held the repository"
    finally:
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
    worker.join(120)
    assert result["_status"] != "failed", result
    assert len(result["pruned"]) == 2 and result["uploads_aborted"] == 0  # no multipart uploads outside S3
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


def test_verify_names_repair_and_repair_heals_through_the_next_backup(tmp_path: t.Any) -> None:
    """Reproduced: backup_verify told the user to take a new full backup, which deduplicated against the damaged
    chunk and could not be restored either."""
    from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup.test_integrity import (
        data_blob_of,
        first_stored_chunk,
        flip,
    )

    location = str(tmp_path / "repo")
    repo = make_repository(location)
    image = os.urandom(40000)
    first = repo.backup("db", [DiskSource("vda", len(image), [(0, len(image), image)])])
    path, offset, _cid = data_blob_of(repo, first, first_stored_chunk(first, repo))
    flip(path, offset)
    args = {"repository": location, "passphrase": PASSPHRASE}
    failed = run_ansible("backup_verify", dict(args, read_data=True))
    assert failed["_status"] == "failed" and "repair: true" in failed["msg"] and first.id in failed["msg"]
    planned = run_ansible("backup_verify", dict(args, repair=True), check=True)
    assert planned["changed"] and planned["repaired"] == {"entries_dropped": 1, "damaged_backups": [first.id]}
    assert run_ansible("backup_verify", dict(args, read_data=True))["_status"] == "failed"  # check mode changed nothing
    repaired = run_ansible("backup_verify", dict(args, repair=True))
    assert repaired["_status"] == "ok" and repaired["changed"] and repaired["repaired"]["entries_dropped"] == 1
    assert any(first.id in w for w in repaired.get("warnings", []))
    second = Repository.open(LocalBackend(location), PASSPHRASE).backup(
        "db", [DiskSource("vda", len(image), [(0, len(image), image)])])
    assert second.stats["new_blobs"] >= 1
    again = run_ansible("backup_verify", dict(args, repair=True))
    assert again["_status"] == "ok" and not again["changed"] and again["ok"]
    out = tmp_path / "db.raw"
    Repository.open(LocalBackend(location), PASSPHRASE).restore(first.id, "vda", str(out))
    assert out.read_bytes() == image


def test_a_password_in_the_repository_url_is_refused_and_masked() -> None:
    """Reproduced: a password in sftp://user:pw@host/... appeared in msg and invocation."""
    result = run_ansible("backup_info", {"repository": "sftp://backup:hunter2-secret@127.0.0.1:1/srv/vmsafe"})
    assert result["_status"] == "failed" and "repository_password" in result["msg"]
    assert "hunter2-secret" not in json.dumps(result)


def test_backup_repository_creates_once_and_changes_the_passphrase_idempotently(tmp_path: t.Any) -> None:
    location = str(tmp_path / "repo")
    args = {"repository": location, "passphrase": PASSPHRASE}
    planned = run_ansible("backup_repository", args, check=True)
    assert planned["changed"] and planned["created"] and not os.path.exists(location)
    created = run_ansible("backup_repository", args)
    assert created["changed"] and created["created"] and created["info"]["key_file_version"] == 2
    assert created["info"]["format_version"] == 2  # frames (docs/repository-format.md §5)
    again = run_ansible("backup_repository", args)
    assert not again["changed"] and again["info"]["id"] == created["info"]["id"]
    data = os.urandom(30000)
    record = Repository.open(LocalBackend(location), PASSPHRASE).backup("vm", [DiskSource("vda", 30000, [(0, 30000, data)])])
    rotate = dict(args, new_passphrase="a brand new passphrase")
    assert run_ansible("backup_repository", rotate, check=True)["passphrase_changed"]
    Repository.open(LocalBackend(location), PASSPHRASE)  # check mode changed nothing
    changed = run_ansible("backup_repository", rotate)
    assert changed["changed"] and changed["passphrase_changed"]
    assert "a brand new passphrase" not in json.dumps(changed) and PASSPHRASE not in json.dumps(changed)
    repeat = run_ansible("backup_repository", rotate)  # the old passphrase no longer opens it: already done
    assert repeat["_status"] == "ok" and not repeat["changed"], repeat
    old = run_ansible("backup_info", args)
    assert old["_status"] == "failed" and "Wrong passphrase" in old["msg"]
    repo = Repository.open(LocalBackend(location), "a brand new passphrase")
    out = tmp_path / "out.raw"
    repo.restore(record.id, "vda", str(out))
    assert out.read_bytes() == data


def test_backup_repository_kdf_memory_at_creation_and_rewrapped_later(tmp_path: t.Any) -> None:
    location = str(tmp_path / "repo")
    args = {"repository": location, "passphrase": PASSPHRASE}
    created = run_ansible("backup_repository", args)
    assert created["info"]["kdf"] == {"name": "argon2id", "iterations": 3, "lanes": 4, "memory_kib": 32 * 1024}
    data = os.urandom(20000)
    record = Repository.open(LocalBackend(location), PASSPHRASE).backup("vm", [DiskSource("vda", 20000, [(0, 20000, data)])])
    raised = dict(args, kdf_memory=40)
    planned = run_ansible("backup_repository", raised, check=True)
    assert planned["changed"] and planned["kdf_changed"] and not planned["passphrase_changed"]
    assert json.loads(open(os.path.join(location, "keys", "repokey"), encoding="utf-8").read())["kdf"]["memory_kib"] == 32768
    done = run_ansible("backup_repository", raised)
    assert done["changed"] and done["kdf_changed"] and done["info"]["kdf"]["memory_kib"] == 40 * 1024
    assert not run_ansible("backup_repository", raised)["changed"]
    assert not run_ansible("backup_repository", args)["changed"]  # no kdf_memory: the key file is left as it is
    out = tmp_path / "out.raw"
    Repository.open(LocalBackend(location), PASSPHRASE).restore(record.id, "vda", str(out))
    assert out.read_bytes() == data
    other = str(tmp_path / "other")
    made = run_ansible("backup_repository", {"repository": other, "passphrase": PASSPHRASE, "kdf_memory": 8})
    assert made["created"] and made["info"]["kdf"]["memory_kib"] == 8192
    bad = run_ansible("backup_repository", dict(args, kdf_memory=5))
    assert bad["_status"] == "failed" and "8..4096 MiB" in bad["msg"] and "kdf_memory" in bad["msg"], bad
