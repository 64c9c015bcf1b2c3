# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Backup repository engine of vmsafe.protect: deduplicated, compressed, encrypted, crash-safe.

PRIVATE to this collection; no compatibility guarantees.

Pure Python (no Ansible imports); the ``vm_backup`` module calls it. The on-storage
format is described in ``docs/repository-format.md``.

Shape (as restic's): ``repository.py`` is the core (config, key, locks, index, the commit protocol, the chunk map
check); ``backup.py``, ``restore.py``, ``check.py`` (verify, rebuild_index, repair) and ``prune.py`` (retention and
GC, with what GC may delete written above ``_gc``) are one unit per operation; ``locks.py`` says when a lock is
stale and how a holder knows it still holds it.

API (import from the submodules)::

    from ...._backup.backends import open_backend          # '/path' or 'sftp://user@host[:port]/path'
    from ...._backup.repository import Repository, DiskSource
    from ...._backup.retention import RetentionPolicy, select_prunable

    backend = open_backend(url_or_path, key_filename=None, password=None, known_hosts=None,
                           host_key_policy="strict")                 # -> Backend
    repo = Repository.init(backend, passphrase="...", encryption="aes-256-gcm" | "none",
                           chunk_size=65536, compression_level=2, pack_size=16 MiB,
                           segment_chunks=16384, kdf=None, lock_wait=60)  # -> Repository (never replaces anything)
    repo = Repository.open(backend, passphrase)                      # -> Repository
    rec = repo.backup(vm_name, disks=[DiskSource(name, size, extents, parent_disk=None)],
                      vm_definition="<domain .../>", tags={"k": "v"}, parent=None,
                      time=None)                                     # -> BackupRecord
    #   extents: sorted, non-overlapping (offset, length, bytes-like or reader with readinto());
    #   with parent=<backup id> only the changed extents are given, the rest comes from the parent.
    #   chunker.file_extents(fd) yields the data extents of an image file (holes skipped).
    repo.list(vm_name=None)                                          # -> list[BackupRecord], oldest first
    repo.get(backup_id)                                              # -> BackupRecord
    repo.restore(backup_id, disk_name, target_path_or_fd, sparse=True)  # -> dict of statistics
    repo.verify(backup_id=None, read_data=False)                     # -> VerifyReport (.ok, .errors, .damaged)
    repo.prune(policy, dry_run=False, now=None, vm_name=None)        # -> PruneResult (+ garbage collection)
    repo.gc()                                                        # -> PruneResult (GC only)
    repo.rebuild_index()                                             # -> number of packs indexed
    repo.repair()                                                    # -> RepairResult (damaged entries dropped)
    repo.change_passphrase(new_passphrase, kdf=None)                 # re-wraps the key (exclusive lock)
    repo.break_lock()                                                # -> list of removed locks
    select_prunable(records, RetentionPolicy(keep_daily=7, ...), now)  # -> (list[Kept], list[BackupRecord])

``repo.lock_wait`` (seconds, default 0; the modules' ``lock_timeout``, 300) makes operations wait for a
conflicting lock instead of failing at once; ``repo.threads`` is the size of the hashing/compression pool (default: CPU count).

Every error is a subclass of ``errors.BackupError`` whose ``str()`` names the problem
and the fix; secrets never appear in messages or reprs.
"""

from __future__ import annotations
