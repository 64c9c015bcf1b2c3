# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""verify runs under a shared lock, so backups commit while it reads: it must not call them damaged or removed.

Found by the concurrency model test (seed 916997651): a verify reported a backup that committed while it ran as
"not in the index (missing data)"; the repository was intact. Each test commits a backup at the moment between
two of verify's reads where the old order saw half of the commit.
"""

from __future__ import annotations

import random
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    PASSPHRASE,
    make_image,
    make_repo,
)


def backup_from_another_process(path: str, vm: str, seed: int) -> str:
    """A second repository handle, as another job on the same repository would have."""
    other = Repository.open(LocalBackend(path), PASSPHRASE)
    try:
        image = make_image(random.Random(seed), 60_000)
        return other.backup(vm, [DiskSource("vda", len(image), [(0, len(image), image)])]).id
    finally:
        other.close()


def test_a_backup_committed_after_verify_loaded_the_index_is_not_reported_missing(tmp_path: t.Any) -> None:
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    first = backup_from_another_process(path, "a", 1)
    committed: list[str] = []
    real_load_index = repo.load_index

    def load_index_then_another_backup_commits() -> t.Any:
        index = real_load_index()
        if not committed:
            committed.append(backup_from_another_process(path, "b", 2))
        return index

    repo.load_index = load_index_then_another_backup_commits  # type: ignore[method-assign]
    for read_data in (False, True):
        committed.clear()
        report = repo.verify(read_data=read_data)
        assert committed, "the backup in between did not run"
        assert report.ok, report.errors + [str(d) for d in report.damaged]
        assert report.backups_checked >= 1
    repo.load_index = real_load_index  # type: ignore[method-assign]
    report = repo.verify(read_data=True)  # a later verify checks them all
    assert report.ok and report.backups_checked == 3, (report.errors, report.backups_checked, first)


def test_a_backup_committed_between_the_manifest_and_journal_listings_is_not_reported_removed(tmp_path: t.Any) -> None:
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    backup_from_another_process(path, "a", 3)
    committed: list[str] = []
    real_names = repo._names  # pylint: disable=protected-access

    def names_then_another_backup_commits(folder: str) -> t.Any:
        listed = real_names(folder)
        if folder == "snapshots" and not committed:
            committed.append(backup_from_another_process(path, "b", 4))
        return listed

    repo._names = names_then_another_backup_commits  # type: ignore[method-assign]  # pylint: disable=protected-access
    errors, replayed = repo.history_problems()
    assert committed, "the backup in between did not run"
    assert errors == [] and replayed == [], errors
    repo._names = real_names  # type: ignore[method-assign]  # pylint: disable=protected-access
    assert repo.history_problems() == ([], [])
    assert repo.verify().ok
