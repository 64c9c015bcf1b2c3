# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Locks: prune is exclusive, backups shared; stale locks; break_lock; serialised with a wait."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import locks as locks_module
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import LockedError, LockLostError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock, boot_id, list_locks, machine_id
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import pack_object_name
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    PASSPHRASE,
    make_image,
    make_repo,
)


def small_backup(repo: Repository, name: str = "vm") -> t.Any:
    data = os.urandom(20_000)
    return repo.backup(name, [DiskSource("vda", len(data), [(0, len(data), data)])])


def slow_extents(started: threading.Event, release: threading.Event,
                 offset: int = 0) -> t.Iterator[tuple[int, int, bytes]]:
    yield (offset, 4096, os.urandom(4096))
    started.set()
    release.wait(10)
    yield (offset + 4096, 4096, os.urandom(4096))


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


LOCKS = "ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks"


def plant_lock(repo: Repository, name: str, owner: dict[str, t.Any], exclusive: bool = True,
               age: float = 0.0, clock_offset: float = 0.0) -> None:
    """A lock object as another process wrote it; ``age``: seconds since its last refresh (storage time)."""
    info = {
        "owner": owner,
        "operation": "prune" if exclusive else "backup",
        "exclusive": exclusive,
        "time": (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=clock_offset)).isoformat(),
    }
    repo.backend.write_atomic(name, json.dumps(info).encode())
    if age:
        path = repo.backend.local_path(name)
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))


def this_machine(pid: int) -> dict[str, t.Any]:
    return {"machine": machine_id(), "boot": boot_id(), "pid": pid, "start": None, "host": socket.gethostname()}


def other_machine(host: str = "backup-host-2") -> dict[str, t.Any]:
    return {"machine": "f" * 32, "boot": "b" * 36, "pid": 4242, "start": 1, "host": host}


def test_stale_lock_of_dead_process_is_ignored_and_removed(repo: Repository) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    plant_lock(repo, "locks/deadbeef", this_machine(proc.pid))
    small_backup(repo)
    assert not repo.backend.exists("locks/deadbeef")


def test_a_stale_shared_lock_is_removed_only_by_an_exclusive_locker_which_records_it_first(repo: Repository) -> None:
    """A stale shared lock may be a stalled backup still writing its manifest: a backup ignores it, a prune records
    the broken lock (tombstones/lock-<token>) before removing it, so that manifest can never look committed."""
    plant_lock(repo, "locks/0123abcd-000007", other_machine(), exclusive=False, age=7200)
    small_backup(repo)  # a shared locker: ignores it, leaves it
    assert repo.backend.exists("locks/0123abcd-000007") and not repo.backend.exists("tombstones/lock-0123abcd")
    repo.gc()  # an exclusive locker
    assert not repo.backend.exists("locks/0123abcd-000007")
    record = json.loads(repo.backend.read("tombstones/lock-0123abcd"))
    assert record["why"] == "stale" and record["owner"]["host"] == "backup-host-2"
    plant_lock(repo, "locks/4567ef01-000002", other_machine(), exclusive=False)
    repo.break_lock()
    assert json.loads(repo.backend.read("tombstones/lock-4567ef01"))["why"] == "break_lock"
    assert repo.verify(read_data=True).ok and len(repo.list()) == 1  # records are not backups, nor errors


def test_a_manifest_whose_lock_was_broken_before_its_journal_entry_is_not_a_backup(repo: Repository) -> None:
    """A crash (or a stall, then a lost lock) between a manifest and its journal entry, and the lock later broken:
    the backup never confirmed its commit, so the manifest is not listed, verify skips it, prune removes it. A
    manifest confirmed by its journal entry stays a backup even when its lock is broken afterwards."""
    good = small_backup(repo, "vm")
    pending = small_backup(repo, "vm")
    repo.backend.delete(f"journal/{pending.id}")  # as if the process died right after writing the manifest
    lock_of = {r.id: r.lock for r in repo.list(include_pruned=True)}
    assert lock_of[pending.id] and lock_of[good.id]
    assert [r.id for r in repo.list()] == [good.id, pending.id]  # nobody broke its lock: still a backup
    for backup_id in (good.id, pending.id):
        plant_lock(repo, f"locks/{lock_of[backup_id]}-000009", other_machine(), exclusive=False)
    repo.break_lock()
    assert [r.id for r in repo.list()] == [good.id]
    assert repo.verify(read_data=True).ok
    assert repo.prune(RetentionPolicy(keep_last=5)).replayed_removed == [pending.id]
    assert [n for n, _s in repo.backend.list("snapshots")] == [f"snapshots/{good.id}"] and repo.verify().ok


def test_gc_alone_removes_a_lock_voided_manifest_whose_data_was_collected(repo: Repository) -> None:
    """A stalled backup's lock is broken, a GC collects its packs, then its manifest appears (a credential that
    cannot delete it): that manifest is not a backup, and a GC run on its own (not only prune) removes it instead
    of stopping at its missing maps."""
    good = small_backup(repo, "vm")
    stalled = small_backup(repo, "vm")
    repo.backend.delete(f"journal/{stalled.id}")
    plant_lock(repo, f"locks/{stalled.lock}-000009", other_machine(), exclusive=False)
    repo.break_lock()
    index = repo.load_index()
    used_by_good = {seg for d in good.disks for seg in d.segments if seg}
    for seg in (s for d in stalled.disks for s in d.segments if s and s not in used_by_good):
        location = index.get(bytes.fromhex(seg))
        assert location is not None
        repo.backend.delete(pack_object_name(location.pack))  # what the earlier GC collected
    result = repo.gc()
    assert result.replayed_removed == [stalled.id]
    assert [n for n, _s in repo.backend.list("snapshots")] == [f"snapshots/{good.id}"]
    assert repo.verify(read_data=True).ok


def test_lock_of_this_machine_before_a_reboot_is_stale(repo: Repository) -> None:
    owner = dict(this_machine(os.getpid()), boot="0" * 36)
    plant_lock(repo, "locks/before-reboot", owner)
    small_backup(repo)
    assert not repo.backend.exists("locks/before-reboot")


def test_live_lock_of_this_machine_never_expires(repo: Repository) -> None:
    """Reproduced: a lock older than 30 min was stale although its process was alive on the same host."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant_lock(repo, "locks/alive", this_machine(sleeper.pid), age=3 * 3600)
        with pytest.raises(LockedError, match="exclusive lock for prune"):
            small_backup(repo)
        assert repo.backend.exists("locks/alive")
    finally:
        sleeper.kill()
        sleeper.wait()
    small_backup(repo)  # now its owner is gone


def test_same_hostname_on_another_machine_is_not_this_host(repo: Repository) -> None:
    """Reproduced: two hosts with the same hostname deleted each other's locks (the pid looked dead here)."""
    plant_lock(repo, "locks/twin", other_machine(host=socket.gethostname()))
    with pytest.raises(LockedError):
        small_backup(repo)
    assert repo.backend.exists("locks/twin")


def test_lock_of_other_host_blocks_until_broken(repo: Repository) -> None:
    plant_lock(repo, "locks/other", other_machine())
    with pytest.raises(LockedError) as info:
        small_backup(repo)
    assert "backup-host-2" in str(info.value) and "4242" in str(info.value) and "break_lock" in str(info.value)
    removed = repo.break_lock()
    assert [r["owner"]["host"] for r in removed] == ["backup-host-2"]
    small_backup(repo)


@pytest.mark.parametrize("age, clock_offset, stale", [
    (2 * 3600, 0, True),          # not refreshed for 2 h of storage time
    (0, -2 * 3600, False),        # its host's clock is 2 h behind: its "time" says nothing
    (0, +2 * 3600, False),        # ... or ahead
    (25 * 60, -3600, False),      # 25 min without refresh is not yet stale (30 min)
])
def test_staleness_of_other_hosts_uses_the_storage_clock(repo: Repository, age: float, clock_offset: float,
                                                         stale: bool) -> None:
    plant_lock(repo, "locks/remote", other_machine(), age=age, clock_offset=clock_offset)
    if stale:
        small_backup(repo)
        assert not repo.backend.exists("locks/remote")
    else:
        with pytest.raises(LockedError):
            small_backup(repo)


def test_refresh_writes_a_new_object_and_a_removed_lock_is_lost_not_recreated(repo: Repository) -> None:
    lock = Lock(repo.backend, False, "backup").acquire()
    first = lock.name
    lock.refresh()
    assert lock.name != first and not repo.backend.exists(first) and repo.backend.exists(lock.name)
    lock.check()
    repo.break_lock()
    lock.refresh()
    assert [n for n, _s in repo.backend.list("locks")] == [], "a broken lock must never be recreated"
    with pytest.raises(LockLostError, match="removed by another process"):
        lock.check()
    lock.release()


def test_a_lock_not_refreshed_in_time_is_lost(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hypervisor export or a hung SFTP call stalls the backup: past SAFE_SECONDS it must not commit."""
    monkeypatch.setattr(f"{LOCKS}.REFRESH_SECONDS", 3600)
    monkeypatch.setattr(f"{LOCKS}.SAFE_SECONDS", 0.3)
    small_backup(repo)  # quick enough
    started, release = threading.Event(), threading.Event()
    threading.Timer(0.1, lambda: started.wait(5) and (time.sleep(0.5), release.set())).start()
    with pytest.raises(LockLostError, match="could not be refreshed"):
        repo.backup("vm", [DiskSource("vda", 8192, slow_extents(started, release))])
    assert len(repo.list()) == 1
    assert repo.verify(read_data=True).ok


def test_timer_keeps_a_slow_backup_alive(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{LOCKS}.REFRESH_SECONDS", 0.05)
    monkeypatch.setattr(f"{LOCKS}.SAFE_SECONDS", 0.4)
    started, release = threading.Event(), threading.Event()
    threading.Timer(0.1, lambda: started.wait(5) and (time.sleep(1.0), release.set())).start()
    record = repo.backup("vm", [DiskSource("vda", 8192, slow_extents(started, release))])
    assert [r.id for r in repo.list()] == [record.id]


def test_backup_whose_lock_was_broken_and_pruned_never_commits(repo: Repository) -> None:
    """Reproduced: a prune from another process deleted a pack that a still-running backup then committed a
    manifest referencing. The backup's lock is broken, a prune + GC runs, then the backup tries to commit."""
    keep = small_backup(repo, "other")
    started, release = threading.Event(), threading.Event()
    result: dict[str, t.Any] = {}

    def run_backup() -> None:
        try:
            big = os.urandom(3 * 1024 * 1024)
            result["record"] = repo.backup("vm", [DiskSource("vda", len(big) + 8192, itertools.chain(
                [(0, len(big), big)], slow_extents(started, release, offset=len(big))))])
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            result["error"] = exc

    worker = threading.Thread(target=run_backup)
    worker.start()
    assert started.wait(10)
    other = Repository.open(type(repo.backend)(repo.backend.location), PASSPHRASE)
    other.break_lock()
    other.prune(RetentionPolicy(keep_last=1))
    release.set()
    worker.join(30)
    assert isinstance(result.get("error"), LockLostError), result
    assert [r.id for r in repo.list()] == [keep.id]
    assert repo.verify(read_data=True).ok
    small_backup(repo)  # the repository works on


def test_a_backup_that_loses_its_lock_while_its_manifest_appears_voids_it_even_without_delete_rights(
        repo: Repository, monkeypatch: t.Any) -> None:
    """The open case of a backup-only credential: the lock is broken and a prune + GC runs while the manifest is
    being written (GC saw no manifest and collected the new packs); the backup cannot delete its manifest. Its
    tombstone voids it: not listed, verify passes, the next prune removes it, and the backup reported failure."""
    keep = small_backup(repo, "other")
    backend = repo.backend
    real_create, real_delete = backend.create_exclusive, backend.delete
    other = Repository.open(type(backend)(backend.location), PASSPHRASE)

    def create(name: str, data: bytes) -> None:
        if name.startswith("snapshots/"):
            other.break_lock()
            other.prune(RetentionPolicy(keep_last=1))  # GC: the new packs are used by nothing visible
        real_create(name, data)

    def delete(name: str) -> None:
        if name.startswith("snapshots/"):
            raise PermissionError(13, "AccessDenied (backup-only credential)", name)
        real_delete(name)

    monkeypatch.setattr(backend, "create_exclusive", create)
    monkeypatch.setattr(backend, "delete", delete)
    data = os.urandom(300_000)
    with pytest.raises(LockLostError):
        repo.backup("vm", [DiskSource("vda", len(data), [(0, len(data), data)])])
    monkeypatch.undo()
    voided = [n.split("/", 1)[1] for n, _s in backend.list("snapshots") if n.split("/", 1)[1] != keep.id]
    assert len(voided) == 1, "the manifest stays (no delete right), voided by its tombstone"
    assert [r.id for r in repo.list()] == [keep.id]
    report = repo.verify(read_data=True)
    assert report.ok, report.errors
    result = other.prune(RetentionPolicy(keep_last=1))
    assert result.replayed_removed == voided
    assert [n for n, _s in backend.list("snapshots")] == [f"snapshots/{keep.id}"]
    assert repo.verify(read_data=True).ok
    small_backup(repo)


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


def test_a_shared_lock_refreshed_while_an_exclusive_locker_breaks_it_is_lost(repo: Repository,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage's clock makes a live backup's lock look stale; its timer writes the next lock object after the
    exclusive locker listed the locks and before it removes the old one. The locker runs (it saw no live lock), so the
    backup must not go on as if it held the repository: the broken-lock record makes check() fail (found by the model
    test, where a GC removed such a backup's temporary pack)."""
    shared = Lock(repo.backend, False, "backup")
    shared.owner = other_machine()  # judged by age, as another host's lock is
    shared.acquire()
    stamp = time.time() - 7200
    os.utime(t.cast(str, repo.backend.local_path(shared.name)), (stamp, stamp))
    real_record = locks_module.record_broken

    def record_while_the_timer_fires(backend: t.Any, name: str, info: t.Any, why: str) -> None:
        shared.refresh()  # a new lock object, the old one removed by its owner
        real_record(backend, name, info, why)

    monkeypatch.setattr(locks_module, "record_broken", record_while_the_timer_fires)
    exclusive = Lock(repo.backend, True, "gc").acquire(0)
    assert repo.backend.exists(shared.name), "the refreshed object is there: the lock looks held"
    with pytest.raises(LockLostError, match="recorded it as broken"):
        shared.check()
    exclusive.release()
    shared.release()
