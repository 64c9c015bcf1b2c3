# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Locks: prune is exclusive, backups shared; stale locks; break_lock; serialised with a wait."""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import sys
import threading
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import LockedError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock, list_locks
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import make_image, make_repo


def small_backup(repo: Repository, name: str = "vm") -> t.Any:
    data = os.urandom(20_000)
    return repo.backup(name, [DiskSource("vda", len(data), [(0, len(data), data)])])


def slow_extents(started: threading.Event, release: threading.Event) -> t.Iterator[tuple[int, int, bytes]]:
    yield (0, 4096, os.urandom(4096))
    started.set()
    release.wait(10)
    yield (4096, 4096, os.urandom(4096))


def test_prune_during_backup_is_refused_then_serialised(repo: Repository) -> None:
    small_backup(repo)
    started, release = threading.Event(), threading.Event()
    result: dict[str, t.Any] = {}

    def run_backup() -> None:
        result["record"] = repo.backup("vm", [DiskSource("vda", 8192, slow_extents(started, release))])

    worker = threading.Thread(target=run_backup)
    worker.start()
    assert started.wait(10)
    with pytest.raises(LockedError) as info:
        repo.prune(RetentionPolicy(keep_last=1))
    message = str(info.value)
    assert "shared lock for backup" in message and f"pid {os.getpid()}" in message and "break_lock" in message
    # with a lock wait the prune runs after the backup finished
    threading.Timer(0.3, release.set).start()
    repo.lock_wait = 10
    pruned = repo.prune(RetentionPolicy(keep_last=1))
    worker.join()
    assert [k.record.id for k in pruned.kept] == [result["record"].id]
    assert list_locks(repo.backend) == []


def test_two_prunes_exclusive(repo: Repository) -> None:
    small_backup(repo)
    held = Lock(repo.backend, True, "prune").acquire()
    try:
        with pytest.raises(LockedError, match="exclusive lock for prune"):
            repo.prune(RetentionPolicy(keep_last=1))
        with pytest.raises(LockedError):
            small_backup(repo)
    finally:
        held.release()
    repo.prune(RetentionPolicy(keep_last=1))


def test_concurrent_prunes_in_processes_never_both_run(repo: Repository, tmp_path: t.Any) -> None:
    """Two processes race for the exclusive lock: at most one wins, the other gets LockedError."""
    for _unused in range(3):
        small_backup(repo)
    script = tmp_path / "prune.py"
    script.write_text(
        "import sys\n"
        "from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend\n"
        "from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository\n"
        "from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import LockedError\n"
        "from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import PASSPHRASE\n"
        "repo = Repository.open(LocalBackend(sys.argv[1]), PASSPHRASE)\n"
        "try:\n    repo.prune({'keep_last': 1}); print('ran')\nexcept LockedError as e:\n    print('locked')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen([sys.executable, str(script), repo.backend.location], stdout=subprocess.PIPE, env=env)
        for _unused in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outs) in (["locked", "ran"], ["ran", "ran"], ["locked", "locked"])
    assert len(repo.list()) in (1, 3)
    assert repo.verify(read_data=True).ok


def test_stale_lock_of_dead_process_is_ignored_and_removed(repo: Repository) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = {
        "host": os.uname().nodename,
        "pid": proc.pid,
        "operation": "prune",
        "exclusive": True,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    repo.backend.write_atomic("locks/deadbeef", json.dumps(stale).encode())
    small_backup(repo)
    assert not repo.backend.exists("locks/deadbeef")


def test_lock_of_other_host_blocks_until_broken(repo: Repository) -> None:
    other = {
        "host": "backup-host-2",
        "pid": 4242,
        "operation": "prune",
        "exclusive": True,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    repo.backend.write_atomic("locks/other", json.dumps(other).encode())
    with pytest.raises(LockedError) as info:
        small_backup(repo)
    assert "backup-host-2" in str(info.value) and "4242" in str(info.value)
    removed = repo.break_lock()
    assert [r["host"] for r in removed] == ["backup-host-2"]
    small_backup(repo)


def test_old_lock_of_other_host_is_stale(repo: Repository) -> None:
    old = {
        "host": "gone-host",
        "pid": 1,
        "operation": "backup",
        "exclusive": True,
        "time": (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)).isoformat(),
    }
    repo.backend.write_atomic("locks/old", json.dumps(old).encode())
    small_backup(repo)


def test_lock_refresh_rewrites_time(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = Lock(repo.backend, False, "backup").acquire()
    before = json.loads(repo.backend.read(lock.name))["time"]
    time.sleep(0.01)
    monkeypatch.setattr("ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks.REFRESH_SECONDS", 0)
    lock.refresh()
    assert json.loads(repo.backend.read(lock.name))["time"] != before
    lock.release()


def test_concurrent_backups_share_the_repository(tmp_path: t.Any) -> None:
    """Backups take shared locks: two processes back up at once, both results restore."""
    repo = make_repo(str(tmp_path / "repo"))
    script = tmp_path / "backup.py"
    script.write_text(
        "import sys, random\n"
        "from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend\n"
        "from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository\n"
        "from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (\n"
        "    PASSPHRASE, make_image)\n"
        "repo = Repository.open(LocalBackend(sys.argv[1]), PASSPHRASE)\n"
        "img = make_image(random.Random(int(sys.argv[2])), 2_000_000)\n"
        "repo.backup('vm' + sys.argv[2], [DiskSource('vda', len(img), [(0, len(img), img)])])\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen([sys.executable, str(script), repo.backend.location, str(seed)], env=env) for seed in (1, 2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for record in repo.list():
        image = make_image(random.Random(int(record.vm_name[2:])), 2_000_000)
        repo.restore(record.id, "vda", str(tmp_path / "out.raw"))
        assert (tmp_path / "out.raw").read_bytes() == image
    assert len(repo.list()) == 2
    assert repo.verify(read_data=True).ok
