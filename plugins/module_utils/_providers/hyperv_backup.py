# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Hyper-V backups: a Recovery checkpoint, Resilient Change Tracking, and reads of the frozen disks over WinRM.

One run: ``backup_begin`` takes a Recovery checkpoint (application consistent through VSS / the integration
services when quiesce is asked, crash consistent otherwise) and lists its frozen disks. Each disk's extents are
every byte (full) or the ranges RCT reports changed since the reference point the last backup left
(``GetVirtualDiskChanges`` with that reference point's RCT id). The data comes back base64-encoded from a read-only
mount of the frozen disk, a few MiB per WinRM command. Once everything is stored, ``finalize`` converts the Recovery
checkpoint into a reference point (whose id the backup records); ``close`` then drops the previous reference point
on success, or on failure whatever this run created, so the previous base stays valid.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ProviderError
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef

READ_BATCH = 2 * 1024 * 1024  # bytes per backup_read command (base64 makes the answer a third larger)
READ_PIECE = 1024 * 1024  # the largest single range read
CHANGES_WINDOW = 64 * 1024 * 1024 * 1024  # bytes asked per GetVirtualDiskChanges call (the host may answer less)


def _pieces(ranges: t.Iterable[tuple[int, int]]) -> t.Iterator[tuple[int, int]]:
    for offset, length in ranges:
        while length > 0:
            step = min(length, READ_PIECE)
            yield offset, step
            offset += step
            length -= step


@dataclasses.dataclass
class HypervDisk:
    """One frozen disk of the Recovery checkpoint."""

    target: str
    size: int
    path: str
    limit_id: str | None  # RCT id of the last backup's reference point, or None for a full read
    run: t.Callable[[str, dict[str, t.Any], str], t.Any]
    vm: VmRef

    def changed_ranges(self) -> list[tuple[int, int]]:
        """The ranges RCT reports changed since ``limit_id``, asked window by window until the disk is covered."""
        ranges: list[tuple[int, int]] = []
        offset = 0
        while offset < self.size:
            answer = self.run("backup_changes", {"vm_id": self.vm.id, "path": self.path, "limit_id": self.limit_id,
                                                 "byte_offset": offset, "byte_length": min(CHANGES_WINDOW,
                                                                                           self.size - offset)},
                              f"read the changed blocks of disk {self.target} of VM '{self.vm.name}'")
            processed = int(answer.get("processed") or 0)
            if processed <= 0:
                raise ProviderError(f"GetVirtualDiskChanges processed nothing at offset {offset} of disk {self.target} "
                                    f"of VM '{self.vm.name}'; the host's change tracking is not usable.")
            ranges.extend(zip((int(o) for o in answer.get("offsets") or []), (int(n) for n in answer.get("lengths") or [])))
            offset += processed
        return ranges

    def extents(self) -> t.Iterator[tuple[int, int, bytes]]:
        """Yield (offset, length, data) of what must be stored, in offset order."""
        ranges = self.changed_ranges() if self.limit_id else [(0, self.size)]
        batch: list[tuple[int, int]] = []
        used = 0
        for piece in _pieces(ranges):
            if batch and used + piece[1] > READ_BATCH:
                yield from self._read(batch)
                batch, used = [], 0
            batch.append(piece)
            used += piece[1]
        if batch:
            yield from self._read(batch)

    def _read(self, batch: list[tuple[int, int]]) -> t.Iterator[tuple[int, int, bytes]]:
        answer = self.run("backup_read", {"vm_id": self.vm.id, "path": self.path, "ranges": [list(r) for r in batch]},
                          f"read disk {self.target} of VM '{self.vm.name}'")
        chunks = answer.get("chunks") or []
        if len(chunks) != len(batch):
            raise ProviderError(f"Reading disk {self.target} of VM '{self.vm.name}' returned {len(chunks)} ranges for "
                                f"{len(batch)} asked.")
        for (offset, length), chunk in zip(batch, chunks):
            data = base64.b64decode(chunk)
            if len(data) != length:
                raise ProviderError(f"Reading disk {self.target} of VM '{self.vm.name}' at {offset} returned "
                                    f"{len(data)} bytes instead of {length}.")
            yield offset, length, data


@dataclasses.dataclass
class HypervBackupSession:
    """An open Hyper-V backup: the Recovery checkpoint and its frozen disks."""

    vm: VmRef
    checkpoint: str  # the Recovery checkpoint; after finalize(), the new reference point
    previous: str | None  # the reference point this incremental started from
    consistency: str
    vm_definition: str
    disks: list[HypervDisk]
    run: t.Callable[[str, dict[str, t.Any], str], t.Any]
    warn: t.Callable[[str], None]
    converted: bool = False
    done: bool = False

    def finalize(self) -> dict[str, str]:
        """Turn the Recovery checkpoint into the reference point the next incremental starts from."""
        point = self.run("backup_convert", {"vm_id": self.vm.id, "checkpoint": self.checkpoint},
                         f"convert the backup checkpoint of VM '{self.vm.name}' into a reference point")
        self.checkpoint = str(point["id"])
        self.converted = True
        return {"checkpoint": self.checkpoint, "rct": json.dumps(point.get("rct") or [])}

    def abort(self) -> None:
        """Nothing runs on the host between commands: the next command is simply not sent."""

    def close(self, success: bool) -> None:
        """Drop the previous reference point (success) or what this run made (failure); best effort, warns."""
        if self.done:
            return
        self.done = True
        if success and self.converted:
            drops = [("reference_point", self.previous)] if self.previous else []
        elif self.converted:
            drops = [("reference_point", self.checkpoint)]
        else:
            drops = [("checkpoint", self.checkpoint)]
        for kind, item in drops:
            try:
                self.run("backup_drop", {"vm_id": self.vm.id, "kind": kind, "id": item},
                         f"drop {kind.replace('_', ' ')} {item} of VM '{self.vm.name}'")
            except ProviderError as exc:
                self.warn(f"Could not drop {kind.replace('_', ' ')} {item} of VM '{self.vm.name}': {exc}. Remove it "
                          f"on the host (Get-VMSnapshot -SnapshotType Recovery, or the WMI reference points).")
