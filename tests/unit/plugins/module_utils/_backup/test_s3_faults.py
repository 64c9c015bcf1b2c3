# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Crash safety on S3: kill -9 a backup (packs going up as multipart uploads) or a prune at a random point, then
every earlier backup still restores bit-identical, verify(read_data) passes and no partial object is visible.
After each kill, new backups are restored and verify runs (metadata); at the end every backup is restored again and
verify reads all data.

A bounded slice runs by default; VMSAFE_LONG_TESTS=1 runs 25 iterations. ``VMSAFE_FAULT_SEED`` replays one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import locks
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup import _s3_fault_worker
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    FAST_KDF,
    LONG,
    PASSPHRASE,
)

ITERATIONS = 25 if LONG else 3
MIB = 1024 * 1024


def restore_all(repo: Repository, tmp: str, skip: t.Collection[str] = ()) -> int:
    """Restore every listed backup (but those in ``skip``, already checked) and compare. Returns the count."""
    target = os.path.join(tmp, "restore.raw")
    records = repo.list()
    for record in records:
        if record.id in skip:
            continue
        repo.restore(record.id, "vda", target)
        with open(target, "rb") as handle:
            got = handle.read()
        assert got == _s3_fault_worker.image_for(int(record.tags["seed"])), f"backup {record.id} restored wrong data"
    return len(records)


def test_kill_9_backup_or_prune_on_s3(tmp_path: t.Any, seaweedfs: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    location = f"s3://{seaweedfs.new_bucket('faults')}/repo"
    options = seaweedfs.options(part_size=5 * MIB)
    repo = Repository.init(open_backend(location, **options), PASSPHRASE, chunk_size=64 * 1024, pack_size=6 * MIB,
                           segment_chunks=8, kdf=FAST_KDF)
    for seed in (1, 2):
        image = _s3_fault_worker.image_for(seed)
        repo.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])], tags={"seed": str(seed)})
    repo.close()
    seed0 = int(os.environ.get("VMSAFE_FAULT_SEED", str(time.time_ns() % 1_000_000_007)))
    print(f"S3 fault seed {seed0} (replay: VMSAFE_FAULT_SEED={seed0})")
    rng = random.Random(seed0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def start(operation: str, seed: int) -> tuple[subprocess.Popen[bytes], float]:
        cfg = {"location": location, "options": options, "operation": operation, "seed": seed}
        proc = subprocess.Popen([sys.executable, _s3_fault_worker.__file__, json.dumps(cfg)], stdout=subprocess.PIPE,
                                env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        return proc, time.monotonic()

    proc, started = start("backup", 3)  # calibrate: how long a backup runs after "ready"
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"done"
    duration = {"backup": time.monotonic() - started, "prune": 1.0}
    proc.wait()
    killed = completed = 0
    checked: set[str] = set()
    iteration = 0
    # the random schedule, then (bounded) backups killed within their first half until one run was interrupted:
    # a slow calibration run or prunes that finish before their kill would otherwise leave nothing killed
    while iteration < ITERATIONS or (killed == 0 and iteration < ITERATIONS + 6):
        check = Repository.open(open_backend(location, **options), PASSPHRASE)
        # committed backups only (journal entry): the manifest of a backup killed before its journal entry is listed
        # while its lock may be alive, and the prune that finds that lock stale voids it
        journal = {name.rsplit("/", 1)[-1] for name, _size in check.backend.list("journal")}
        before = [r.id for r in check.list() if r.id in journal]
        check.close()
        if iteration < ITERATIONS:
            operation = "prune" if rng.random() < 0.3 else "backup"
            delay = rng.uniform(0.0, 1.2 * duration[operation])
        else:
            operation, delay = "backup", rng.uniform(0.0, 0.5 * duration["backup"] / (iteration - ITERATIONS + 1))
        proc, _started = start(operation, 100 + iteration)
        iteration += 1
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read() if proc.stdout else b""
        proc.wait()
        completed += b"done" in rest
        killed += b"done" not in rest
        check = Repository.open(open_backend(location, **options), PASSPHRASE)
        check.break_lock()  # the killed process's lock would only expire after 30 minutes
        after = {r.id for r in check.list()}
        if operation == "backup":
            assert set(before) <= after, "a killed backup must not remove earlier backups"
        else:
            assert set(before[-2:]) <= after, "a killed prune must keep what the policy keeps"
        restore_all(check, str(tmp_path), skip=checked)
        checked |= after
        report = check.verify()
        assert report.ok, (operation, report.errors, report.damaged)
        check.close()
    print(f"S3 fault runs: {killed} killed, {completed} completed")
    final = Repository.open(open_backend(location, **options), PASSPHRASE)
    restore_all(final, str(tmp_path))
    assert final.verify(read_data=True).ok
    final.prune({"keep_last": 2})
    assert restore_all(final, str(tmp_path)) == 2
    assert final.verify(read_data=True).ok
    # the killed backups' incomplete multipart uploads: GC aborts them once they are older than the stale-lock age
    bucket = location.split("/")[2]
    monkeypatch.setattr(locks, "STALE_SECONDS", 1.0)
    time.sleep(2.1)
    aborted = final.gc().uploads_aborted
    left = seaweedfs.client().list_multipart_uploads(Bucket=bucket, Prefix="repo/").get("Uploads", [])
    assert left == [], f"{len(left)} incomplete uploads left after GC"
    print(f"GC aborted {aborted} incomplete uploads of killed backups")
    assert final.verify(read_data=True).ok
    final.close()
    assert killed >= 1, f"no run was interrupted ({completed} completed): the kill timing is off"
