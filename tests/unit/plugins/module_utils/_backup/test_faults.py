# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Crash safety: kill -9 a backup or prune at a random point, then every backup still restores.

Runs a bounded slice by default; VMSAFE_LONG_TESTS=1 runs the 50 iterations of the issue.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup import _fault_worker
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    LONG,
    PASSPHRASE,
    make_repo,
)

ITERATIONS = 50 if LONG else 5


def restore_all(repo: Repository, tmp: str, images: dict[str, bytes]) -> int:
    """Restore every listed backup and compare with the image of its seed. Returns the count."""
    target = os.path.join(tmp, "restore.raw")
    records = repo.list()
    for record in records:
        image = images.setdefault(record.tags["seed"], _fault_worker.image_for(int(record.tags["seed"])))
        repo.restore(record.id, "vda", target)
        with open(target, "rb") as handle:
            assert handle.read() == image, f"backup {record.id} (seed {record.tags['seed']}) restored wrong data"
    return len(records)


@pytest.mark.long
def test_kill_9_backup_or_prune_at_random_points(tmp_path: t.Any) -> None:
    path = str(tmp_path / "repo")
    repo = make_repo(path, chunk_size=4096, pack_size=1024 * 1024)
    images: dict[str, bytes] = {}
    for seed in (1, 2):
        image = _fault_worker.image_for(seed)
        images[str(seed)] = image
        repo.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])], tags={"seed": str(seed)})
    rng = random.Random(int(os.environ.get("VMSAFE_FAULT_SEED", "20261123")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    killed = completed = 0

    def start(operation: str, seed: int) -> tuple[subprocess.Popen[bytes], float]:
        proc = subprocess.Popen(
            [sys.executable, _fault_worker.__file__, path, operation, str(seed)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        return proc, time.monotonic()

    # calibrate: how long does each operation run after "ready"? Kills are spread over that time.
    duration: dict[str, float] = {}
    for operation, seed in (("backup", 3), ("prune", 0)):
        proc, started = start(operation, seed)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"done"
        duration[operation] = time.monotonic() - started
        proc.wait()
    for iteration in range(ITERATIONS):
        before = {r.id for r in Repository.open(LocalBackend(path), PASSPHRASE).list()}
        # the policy keeps the newest two *committed* backups: a manifest whose backup was killed before its journal
        # entry is listed while its lock may still be alive, and the prune that finds that lock stale voids it
        journal = {name.rsplit("/", 1)[-1] for name, _size in LocalBackend(path).list("journal")}
        newest_two = [r.id for r in Repository.open(LocalBackend(path), PASSPHRASE).list() if r.id in journal][-2:]
        operation = "prune" if rng.random() < 0.35 else "backup"
        seed = 100 + iteration
        proc, _started = start(operation, seed)
        assert proc.stdout is not None
        time.sleep(rng.uniform(0.0, 1.3 * duration[operation]))  # about 1 in 4 runs completes
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        if b"done" in rest:
            completed += 1
        else:
            killed += 1
        check = Repository.open(LocalBackend(path), PASSPHRASE)
        after = {r.id for r in check.list()}
        if operation == "backup":
            assert before <= after, "a killed backup must not remove earlier backups"
        else:
            assert set(newest_two) <= after, "a killed prune must keep what the policy keeps"
        restore_all(check, str(tmp_path), images)
        report = check.verify(read_data=True)
        assert report.ok, (operation, report.errors, report.damaged)
    print(f"fault runs: {killed} killed, {completed} completed")
    # finally a complete prune cleans up whatever the killed runs left behind
    final = Repository.open(LocalBackend(path), PASSPHRASE)
    final.prune({"keep_last": 2})
    assert [o for o, _s in final.backend.list("packs") if ".tmp-" in o] == []
    assert restore_all(final, str(tmp_path), images) == 2
    assert final.verify(read_data=True).ok
    assert killed >= 1, f"no run was interrupted ({completed} completed): the kill timing is off"
