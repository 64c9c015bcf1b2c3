# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""A second prune with the same policy changes nothing, also when a pack holds only a tiny blob."""

from __future__ import annotations

import os

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository


def tree(path: str) -> set[tuple[str, int]]:
    return {(os.path.relpath(os.path.join(root, f), path), os.path.getsize(os.path.join(root, f)))
            for root, _dirs, files in os.walk(path) for f in files}


def test_prune_twice_is_idempotent_with_tiny_packs(tmp_path):
    repo = Repository.init(open_backend(str(tmp_path / "repo")), passphrase="pw")
    try:
        parent = None
        for i in range(4):
            # a full backup, then incrementals of one compressible 1 MiB write each, as vm_backup makes them:
            # after pruning, the surviving packs hold a few tiny blobs, all live, smaller than their header
            extents = [(i << 20, 1 << 20, bytes([i + 1]) * (1 << 20))]
            parent = repo.backup("vm", [DiskSource("vda", 64 << 20, extents)], parent=parent).id
        first = repo.prune({"keep_last": 2})
        assert len(first.pruned) == 2
        before = tree(str(tmp_path / "repo" / "packs"))
        second = repo.prune({"keep_last": 2})
        assert (second.pruned, second.packs_deleted, second.packs_repacked, second.bytes_freed) == ([], 0, 0, 0)
        assert tree(str(tmp_path / "repo" / "packs")) == before
    finally:
        repo.close()
