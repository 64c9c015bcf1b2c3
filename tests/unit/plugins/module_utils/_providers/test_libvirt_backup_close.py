# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Ending a libvirt backup job: libvirt removes the NBD socket on its own after abortJob returns.

A committed backup was once reported failed (and its checkpoint dropped by the module's cleanup) when the socket
vanished between our listing of the job's folder and our unlink of it; CI caught it on a loaded machine.
"""

from __future__ import annotations

import os
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import libvirt_backup

libvirt = pytest.importorskip("libvirt")


class FakeCheckpoint:
    def __init__(self, dom: "FakeDomain", name: str) -> None:
        self.dom, self.name = dom, name

    def delete(self, flags: int) -> None:  # pylint: disable=unused-argument
        self.dom.checkpoints.remove(self.name)
        self.dom.deleted.append(self.name)

    def getName(self) -> str:  # noqa: N802  # libvirt's spelling
        return self.name

    def getXMLDesc(self, flags: int) -> str:  # noqa: N802  pylint: disable=unused-argument
        return f"<domaincheckpoint><name>{self.name}</name><creationTime>{self.dom.checkpoints.index(self.name)}</creationTime></domaincheckpoint>"


class FakeDomain:
    """What BackupSession.close() asks of a domain whose pull-mode job has ended."""

    def __init__(self, checkpoints: list[str]) -> None:
        self.checkpoints = list(checkpoints)
        self.deleted: list[str] = []
        self.aborted = 0

    def isActive(self) -> bool:  # noqa: N802
        return True

    def jobInfo(self) -> list[int]:  # noqa: N802
        return [libvirt.VIR_DOMAIN_JOB_NONE if self.aborted else libvirt.VIR_DOMAIN_JOB_UNBOUNDED]

    def abortJob(self) -> None:  # noqa: N802
        self.aborted += 1

    def checkpointLookupByName(self, name: str, flags: int) -> FakeCheckpoint:  # noqa: N802  pylint: disable=unused-argument
        if name not in self.checkpoints:
            raise libvirt.libvirtError(f"no checkpoint {name}")
        return FakeCheckpoint(self, name)

    def listAllCheckpoints(self, flags: int) -> list[FakeCheckpoint]:  # noqa: N802  pylint: disable=unused-argument
        return [FakeCheckpoint(self, name) for name in self.checkpoints]


def session(tmp_path: t.Any, dom: FakeDomain, warnings: list[str]) -> libvirt_backup.BackupSession:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "owner.json").write_text("{}")
    (folder / "nbd.sock").write_text("")
    scratch = tmp_path / ".vmsafe-scratch-vda"
    scratch.write_text("")
    return libvirt_backup.BackupSession(
        dom=dom, vm=VmRef(id="0123456789abcdef", name="web01", state="running"), checkpoint="vmsafe-new", since="vmsafe-old",
        consistency="crash_consistent", vm_definition="<domain/>", disks=[], socket_path=str(folder / "nbd.sock"),
        scratch_dir=str(folder), scratch_files=[str(scratch)], warn=warnings.append)


def vanishing_listdir(monkeypatch: pytest.MonkeyPatch, gone: list[str]) -> None:
    """os.listdir as it races with libvirt: it names files that are unlinked before we get to them."""
    real = os.listdir

    def listdir(path: str) -> list[str]:
        names = real(path)
        for name in gone:
            target = os.path.join(path, name)
            if os.path.exists(target):
                os.unlink(target)
        return names

    monkeypatch.setattr(libvirt_backup.os, "listdir", listdir)


def test_socket_removed_by_libvirt_while_we_list_does_not_fail_a_committed_backup(tmp_path, monkeypatch):
    dom = FakeDomain(["vmsafe-old", "vmsafe-new"])
    warnings: list[str] = []
    job = session(tmp_path, dom, warnings)
    vanishing_listdir(monkeypatch, ["nbd.sock"])
    job.close(True)
    assert dom.aborted == 1 and dom.checkpoints == ["vmsafe-new"]  # the old base dropped, the new one kept
    assert not os.path.exists(job.scratch_dir) and not os.path.exists(job.scratch_files[0])
    assert job.done and warnings == []
    job.close(False)  # the module's cleanup after some later failure: the committed backup's checkpoint stays
    assert dom.checkpoints == ["vmsafe-new"] and dom.aborted == 1


def test_failed_backup_drops_only_its_new_checkpoint(tmp_path):
    dom = FakeDomain(["vmsafe-old", "vmsafe-new"])
    job = session(tmp_path, dom, [])
    job.close(False)
    assert dom.checkpoints == ["vmsafe-old"] and dom.deleted == ["vmsafe-new"]
    assert not os.path.exists(job.scratch_dir)


def test_a_folder_that_cannot_be_removed_is_a_warning(tmp_path):
    dom = FakeDomain(["vmsafe-new"])
    warnings: list[str] = []
    job = session(tmp_path, dom, warnings)
    (tmp_path / "job" / "sub").mkdir()  # unlink cannot remove a folder: the removal fails for real
    job.close(True)
    assert dom.checkpoints == ["vmsafe-new"]
    assert len(warnings) == 1 and "Could not remove the backup job's folder" in warnings[0]


class VanishedCheckpoint(FakeCheckpoint):
    """Listed, then deleted by another thread before its XML is read."""

    def getXMLDesc(self, flags: int) -> str:  # noqa: N802  pylint: disable=unused-argument
        raise libvirt.libvirtError("Domain checkpoint not found: no domain checkpoint with matching name")


class ListingDomain:
    def __init__(self, dom: FakeDomain, vanished: str) -> None:
        self.dom, self.vanished = dom, vanished

    def listAllCheckpoints(self, flags: int) -> list[FakeCheckpoint]:  # noqa: N802  pylint: disable=unused-argument
        return [VanishedCheckpoint(self.dom, n) if n == self.vanished else FakeCheckpoint(self.dom, n)
                for n in self.dom.checkpoints]


def test_a_checkpoint_deleted_while_listed_is_skipped() -> None:
    """Found by CI's killed-backup test: the run after a killed vm_backup ends the abandoned job (and deletes its
    checkpoint) in its export thread while its main thread lists the checkpoints for the last backup's base; the
    listing raised libvirtError ("no domain checkpoint with matching name") and the task failed."""
    dom = FakeDomain(["vmsafe-1", "vmsafe-2", "vmsafe-3"])
    assert libvirt_backup.checkpoint_names(ListingDomain(dom, "vmsafe-3")) == ["vmsafe-1", "vmsafe-2"]
    assert libvirt_backup.checkpoint_names(ListingDomain(dom, "")) == ["vmsafe-1", "vmsafe-2", "vmsafe-3"]
