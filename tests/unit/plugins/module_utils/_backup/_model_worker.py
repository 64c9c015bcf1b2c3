# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""One process of the concurrency and fault model (test_model.py): a random sequence of repository operations.

argv: a JSON document with the repository (local path or SFTP parameters), the worker's seed, its number of
operations, its log file and its quirks:

- ``foreign``: it pretends to run on another machine (its locks are judged by their age, as another host's);
- ``age_locks``: while it holds a lock, it keeps aging the lock object by two hours (a host whose refreshes do not
  reach the storage), so that the others treat it as stale and it must find out that its lock was lost;
- ``skew``: its clock is an hour off (the time written in its locks and backups);
- ``stall``: its lock may go unrefreshed (SAFE_SECONDS is short and backups pause inside the export).

Workers whose locks others may break (``stall``, ``age_locks``) also pause at random between writing a backup's
packs and committing it (a hung storage call): the moment a GC that broke the lock can collect what the backup
is about to reference.

Every backup that returns is logged (one JSON line, appended and fsynced) *after* it returned: the driver then
requires each logged backup of a "keep" VM to exist and restore bit-identical, whatever was killed meanwhile.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import random
import sys
import threading
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import locks
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackupError,
    LockedError,
    LockLostError,
    RepositoryExistsError,
    RepositoryNotFoundError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import FAST_KDF, PASSPHRASE

KEEP_VMS = ("keep-a", "keep-b")
PRUNE_VMS = ("prune-a", "prune-b")
SIZE = 96 * 1024


def image(vm: str, generation: int) -> bytes:
    """The disk of ``vm`` at ``generation``: shares most chunks with other generations (dedup across workers)."""
    rng = random.Random(f"{vm}/{generation}")
    base = bytearray(random.Random(vm).randbytes(SIZE))
    # a compressible half, so that frames of several chunks (format version 2) are written, read and collected too
    text = b"".join(b"%s line %d of the model disk\n" % (vm.encode(), n) for n in range(SIZE // 32))
    base[SIZE // 2 :] = text[: SIZE - SIZE // 2]
    for _unused in range(3):
        at = rng.randrange(0, SIZE - 4096)
        base[at:at + 4096] = rng.randbytes(4096)
    if rng.random() < 0.3:
        base[: SIZE // 3] = bytes(SIZE // 3)
    return bytes(base)


def open_repo(spec: dict[str, t.Any]) -> Repository:
    backend = open_backend(spec["location"], **spec.get("options", {}))
    try:
        return Repository.open(backend, PASSPHRASE)
    except RepositoryNotFoundError:
        try:
            return Repository.init(backend, PASSPHRASE, chunk_size=4096, pack_size=1024 * 1024, segment_chunks=8,
                                   kdf=FAST_KDF, lock_wait=30)
        except RepositoryExistsError:
            return Repository.open(backend, PASSPHRASE)


def log(path: str, entry: dict[str, t.Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def age_own_locks(repo: Repository, stop: threading.Event) -> None:
    """Make our lock objects look two hours old to the others, as long as we run."""
    me = locks.owner_identity()
    while not stop.wait(0.05):
        try:
            for name, _size in repo.backend.list(locks.LOCK_DIR):
                info = locks.read_lock(repo.backend, name)
                path = repo.backend.local_path(name)
                if info and info.get("owner") == me and path:
                    stamp = time.time() - 7200
                    os.utime(path, (stamp, stamp))
        except (OSError, BackupError):
            pass


def main() -> None:
    cfg = json.loads(sys.argv[1])
    rng = random.Random(cfg["seed"])
    if cfg.get("foreign"):
        fake = f"{cfg['seed']:032x}"[-32:]
        locks.machine_id = lambda: fake  # type: ignore[assignment]
    if cfg.get("skew"):
        real_now = locks._now  # pylint: disable=protected-access
        locks._now = lambda: real_now() - datetime.timedelta(hours=1)  # type: ignore[assignment]
    if cfg.get("stall"):
        locks.SAFE_SECONDS = 0.6
        locks.REFRESH_SECONDS = 3600.0
    else:
        locks.REFRESH_SECONDS = 0.2
    if cfg.get("stall") or cfg.get("age_locks"):
        real_commit = Repository.commit_backup

        def slow_commit(self: Repository, *args: t.Any, **kwargs: t.Any) -> None:
            if rng.random() < 0.6:
                time.sleep(rng.uniform(0.3, 1.2))
            real_commit(self, *args, **kwargs)

        Repository.commit_backup = slow_commit  # type: ignore[method-assign]
    repo = open_repo(cfg["repository"])
    repo.lock_wait = 20.0
    repo.threads = 1
    stop = threading.Event()
    if cfg.get("age_locks") and repo.backend.local_path("locks"):
        threading.Thread(target=age_own_locks, args=(repo, stop), daemon=True).start()
    print("ready", flush=True)
    for step in range(cfg["operations"]):
        op = rng.choices(["backup", "prune", "verify", "repair", "gc"], weights=[6, 2.5, 1, 0.5, 1.5])[0]
        try:
            if op == "backup":
                vm = rng.choice(KEEP_VMS + PRUNE_VMS)
                # few generations: new backups often hold exactly the chunks a concurrent prune is collecting
                generation = rng.randrange(6)
                data = image(vm, generation)

                def extents(data: bytes = data) -> t.Iterator[tuple[int, int, bytes]]:
                    half = len(data) // 2
                    yield (0, half, data[:half])
                    if cfg.get("stall") and rng.random() < 0.5:
                        time.sleep(1.0)  # a hung hypervisor export: the lock goes unrefreshed
                    else:
                        time.sleep(rng.uniform(0.1, 0.8))  # a slow export: prunes and GCs run meanwhile
                    yield (half, len(data) - half, data[half:])

                record = repo.backup(vm, [DiskSource("vda", len(data), extents())],
                                     tags={"generation": str(generation)})
                log(cfg["log"], {"op": "backup", "id": record.id, "vm": vm, "generation": generation,
                                 "sha256": hashlib.sha256(data).hexdigest(), "worker": cfg["seed"]})
            elif op == "prune":
                repo.prune({"keep_last": rng.randint(1, 2)}, vm_name=rng.choice(PRUNE_VMS))
            elif op == "verify":
                report = repo.verify(read_data=rng.random() < 0.5)
                log(cfg["log"], {"op": "verify", "ok": report.ok, "errors": report.errors[:3],
                                 "damaged": len(report.damaged), "worker": cfg["seed"]})
            elif op == "repair":
                repo.repair()
            else:
                repo.gc()
        except (LockedError, LockLostError):
            pass  # refused or lost: nothing was committed, which is what the driver checks
        print(f"step {step} {op}", flush=True)
    stop.set()
    print("done", flush=True)


if __name__ == "__main__":
    main()
