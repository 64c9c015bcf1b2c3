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


def test_callable_disks_are_asked_for_under_the_lock_after_the_index_and_a_failure_records_nothing(repo, monkeypatch):
    """vm_backup starts the hypervisor's export in a thread: the engine asks for the disks once the index is loaded."""
    first = repo.backup("vm1", [source(b"a" * 200000)])
    order = []
    load = repo.load_index

    def traced_load():
        order.append("index")
        return load()

    monkeypatch.setattr(repo, "load_index", traced_load)

    def disks():
        order.append("disks")
        return [source(b"b" * 200000)]

    record = repo.backup("vm1", disks, parent=first.id, vm_definition=lambda: "<domain/>")
    assert order == ["index", "disks"]
    assert record.vm_definition == "<domain/>"
    assert repo.get(record.id).vm_definition == "<domain/>"

    def failing():
        raise RuntimeError("backupBegin failed: domain is not running")

    with pytest.raises(RuntimeError, match="backupBegin failed"):
        repo.backup("vm1", failing, parent=record.id)
    with pytest.raises(Exception, match="unique, non-empty name"):
        repo.backup("vm1", lambda: [source(b"c"), source(b"d")])
    assert [r.id for r in repo.list("vm1")] == [first.id, record.id]
    assert repo.verify(read_data=True).ok
