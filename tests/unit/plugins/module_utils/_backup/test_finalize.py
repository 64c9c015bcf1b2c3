# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""backup(finalize=...): runs after the data is stored, adds its tags; when it fails nothing is recorded."""

from __future__ import annotations

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource


def source(data: bytes) -> DiskSource:
    return DiskSource(name="vda", size=len(data), extents=[(0, len(data), data)])


def test_finalize_tags_are_recorded_after_the_data(repo):
    calls = []

    def finalize():
        calls.append(len(repo.list("vm1")))  # nothing recorded yet when it runs
        return {"checkpoint": "reference-point-2"}

    record = repo.backup("vm1", [source(b"x" * 300000)], tags={"checkpoint": "recovery-1", "mode": "full"},
                         finalize=finalize)
    assert calls == [0]
    assert record.tags == {"checkpoint": "reference-point-2", "mode": "full"}
    assert repo.get(record.id).tags["checkpoint"] == "reference-point-2"


def test_a_failing_finalize_records_nothing_and_the_repository_verifies(repo):
    first = repo.backup("vm1", [source(b"a" * 200000)])

    def finalize():
        raise RuntimeError("ConvertToReferencePoint failed")

    with pytest.raises(RuntimeError, match="ConvertToReferencePoint"):
        repo.backup("vm1", [source(b"b" * 200000)], parent=first.id, finalize=finalize)
    assert [r.id for r in repo.list("vm1")] == [first.id]
    assert repo.verify(read_data=True).ok
