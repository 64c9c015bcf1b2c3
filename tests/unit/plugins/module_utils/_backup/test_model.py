# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Concurrency and fault model: random schedules of init, backup, prune, verify, repair and GC in 4+ processes.

Each schedule starts workers (``_model_worker.py``) on one repository (local, or SFTP on a real OpenSSH server);
some pretend to be another host, some age their own locks (a host whose refreshes do not reach the storage), some
run with a clock an hour off, some stall inside the export; the driver kills random workers with SIGKILL at random
moments and starts new ones. Afterwards:

- every backup a worker logged as done (it returned) of a VM that no prune touches exists and restores
  bit-identical, and every backup still listed restores to the content its worker logged;
- every verify that ran during the schedule, and a final ``verify(read_data)``, found nothing.

The seed of each schedule is printed; ``VMSAFE_MODEL_SEED=<seed>`` replays one schedule. A bounded slice runs by
default; ``VMSAFE_LONG_TESTS=1`` runs 200 local schedules and 20 over SFTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup import _model_worker
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import LONG, PASSPHRASE

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_model_worker.py")
REPLAY = os.environ.get("VMSAFE_MODEL_SEED")


def seeds(count: int, salt: int) -> list[int]:
    if REPLAY:
        return [int(REPLAY)]
    base = int(os.environ.get("VMSAFE_MODEL_BASE", time.time_ns() % 1_000_000_007))
    return [(base * 31 + salt * 7919 + n) % 2_147_483_647 for n in range(count)]


def start_worker(spec: dict[str, t.Any], seed: int, log: str, rng: random.Random) -> subprocess.Popen:
    foreign = rng.random() < 0.5
    cfg = {
        "repository": spec, "seed": seed, "log": log, "operations": rng.randint(3, 7),
        "foreign": foreign, "age_locks": foreign and rng.random() < 0.7, "skew": rng.random() < 0.3,
        "stall": rng.random() < 0.2,
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_schedule(seed: int, spec: dict[str, t.Any], tmp: str, workers: int = 4) -> None:
    print(f"model schedule seed {seed} on {spec['location']} (replay: VMSAFE_MODEL_SEED={seed})")
    rng = random.Random(seed)
    log = os.path.join(tmp, f"log-{seed}.jsonl")
    procs = [start_worker(spec, rng.randrange(1 << 30), log, rng) for _unused in range(workers)]
    killed: set[int] = set()
    restarts = 0
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, f"seed {seed}: workers hang"
        time.sleep(rng.uniform(0.05, 0.6))
        alive = [p for p in procs if p.poll() is None]
        if alive and rng.random() < 0.35:
            victim = rng.choice(alive)
            victim.send_signal(signal.SIGKILL)
            killed.add(victim.pid)
            if restarts < workers:
                restarts += 1
                procs.append(start_worker(spec, rng.randrange(1 << 30), log, rng))
    for proc in procs:
        _out, err = proc.communicate()
        if proc.pid not in killed:
            assert proc.returncode == 0, f"seed {seed}: a worker failed:\n{err[-3000:]}"
    check_invariant(seed, spec, tmp, log)


def check_invariant(seed: int, spec: dict[str, t.Any], tmp: str, log: str) -> None:
    entries = []
    if os.path.exists(log):
        with open(log, encoding="utf-8") as handle:
            entries = [json.loads(line) for line in handle if line.strip()]
    for entry in entries:
        if entry["op"] == "verify":
            assert entry["ok"], f"seed {seed}: a verify during the schedule found damage: {entry}"
    backend = open_backend(spec["location"], **spec.get("options", {}))
    if not backend.exists("config"):  # every worker was killed before an init finished
        assert not [e for e in entries if e["op"] == "backup"], f"seed {seed}: backups logged, no repository"
        backend.close()
        return
    repo = Repository.open(backend, PASSPHRASE)
    try:
        repo.break_lock()  # killed "foreign" workers leave locks that only expire after 30 minutes
        listed = {r.id: r for r in repo.list()}
        done = {e["id"]: e for e in entries if e["op"] == "backup"}
        for backup_id, entry in done.items():
            if entry["vm"] in _model_worker.KEEP_VMS:
                assert backup_id in listed, f"seed {seed}: backup {backup_id} reported success and is gone"
        target = os.path.join(tmp, f"restore-{seed}.raw")
        for backup_id, record in listed.items():
            repo.restore(backup_id, "vda", target)
            with open(target, "rb") as handle:
                got = hashlib.sha256(handle.read()).hexdigest()
            want = hashlib.sha256(_model_worker.image(record.vm_name, int(record.tags["generation"]))).hexdigest()
            assert got == want, f"seed {seed}: backup {backup_id} restores wrong data"
            if backup_id in done:
                assert done[backup_id]["sha256"] == got
        report = repo.verify(read_data=True)
        assert report.ok, f"seed {seed}: final verify: {report.errors[:3]} {report.damaged[:3]}"
    finally:
        repo.close()


def local_spec(path: str) -> dict[str, t.Any]:
    return {"location": path}


@pytest.mark.parametrize("n", range(3))
def test_model_local_slice(tmp_path: t.Any, n: int) -> None:
    for seed in seeds(1, salt=n):
        run_schedule(seed, local_spec(str(tmp_path / f"repo-{seed}")), str(tmp_path))


def test_model_sftp_slice(tmp_path: t.Any, sshd: t.Any) -> None:
    for seed in seeds(1, salt=101):
        spec = {"location": f"sftp://{sshd.user}@{sshd.host}:{sshd.port}{sshd.root}/model-{seed}",
                "options": {"key_filename": sshd.client_key, "known_hosts": sshd.known_hosts}}
        run_schedule(seed, spec, str(tmp_path))


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="200 random schedules: set VMSAFE_LONG_TESTS=1")
def test_model_local_200_schedules(tmp_path: t.Any) -> None:
    for seed in seeds(200, salt=7):
        run_schedule(seed, local_spec(str(tmp_path / f"repo-{seed}")), str(tmp_path))


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="20 random schedules over SFTP: set VMSAFE_LONG_TESTS=1")
def test_model_sftp_20_schedules(tmp_path: t.Any, sshd: t.Any) -> None:
    for seed in seeds(20, salt=13):
        spec = {"location": f"sftp://{sshd.user}@{sshd.host}:{sshd.port}{sshd.root}/model-long-{seed}",
                "options": {"key_filename": sshd.client_key, "known_hosts": sshd.known_hosts}}
        run_schedule(seed, spec, str(tmp_path))
