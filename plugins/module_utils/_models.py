# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Plain data the providers return. No SDK object ever leaves a provider."""

from __future__ import annotations

import dataclasses
import datetime
import typing as t

SNAPSHOT_KINDS = ("internal", "external")
QUIESCE_FALLBACKS = ("fail", "crash_consistent")
# What a snapshot or backup is consistent to, from weakest to strongest claim:
#   crash_consistent  disks as after a power cut (the guest was not told)
#   memory            RAM state saved too: a revert resumes the running guest where it was
#   quiesced          the guest agent froze the file systems while the disks were captured
#   offline           the VM was shut off
CONSISTENCY_LEVELS = ("crash_consistent", "memory", "quiesced", "offline")


@dataclasses.dataclass(frozen=True)
class VmSelector:
    """How the user named the VM: exactly one of name or id (UUID, MoID)."""

    name: str | None = None
    id: str | None = None

    def describe(self) -> str:
        return f"'{self.name}'" if self.name is not None else f"with id '{self.id}'"


@dataclasses.dataclass(frozen=True)
class VmRef:
    """A VM as found on the hypervisor."""

    id: str
    name: str
    state: str  # running, shutoff, paused, ...
    host: str = ""

    def to_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Snapshot:
    """One snapshot of one VM, in the form every provider returns."""

    id: str
    name: str
    created: datetime.datetime  # always aware, UTC
    description: str = ""
    parent: str | None = None  # id of the parent snapshot
    children: list[str] = dataclasses.field(default_factory=list)
    current: bool = False
    memory: bool = False
    quiesced: bool | None = None  # None when the hypervisor does not record it
    kind: str = "internal"
    size_bytes: int | None = None  # None when the hypervisor cannot tell
    depth: int = 1  # 1 for a root snapshot
    vm_state: str = ""  # state of the VM when the snapshot was taken
    files: list[str] = dataclasses.field(default_factory=list)  # external overlays created by it
    # vSphere's per-VM integer snapshot id (what vmware.vmware and community.vmware call snapshot_id); None elsewhere
    number: int | None = None

    def age_seconds(self, now: datetime.datetime) -> int:
        return max(0, int((now - self.created).total_seconds()))

    def to_dict(self, now: datetime.datetime | None = None) -> dict[str, t.Any]:
        data = dataclasses.asdict(self)
        data["created"] = self.created.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        if now is not None:
            data["age_seconds"] = self.age_seconds(now)
        return data


@dataclasses.dataclass(frozen=True)
class SnapshotSpec:
    """What the user asked a new snapshot to be."""

    name: str
    description: str = ""
    memory: bool = False
    quiesce: bool = False
    quiesce_fallback: str = "fail"
    disk_only: bool = False


@dataclasses.dataclass
class CreateResult:
    """A created snapshot and the consistency actually reached."""

    snapshot: Snapshot
    consistency: str
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Disk:
    """A VM disk with its backing chain, active layer first."""

    target: str
    path: str
    format: str = ""
    chain: list[str] = dataclasses.field(default_factory=list)  # active image first, base last
    virtual_size: int | None = None
    allocation: int | None = None
    block_job: dict[str, t.Any] | None = None
    storage_free_bytes: int | None = None  # free space where the active image lives; None when unknown

    def to_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Leftover:
    """Something a snapshot operation left behind that consolidation can repair."""

    kind: str  # untracked_overlay | stale_snapshot_metadata | block_job
    disk: str
    detail: str
    files: list[str] = dataclasses.field(default_factory=list)
    snapshot: str | None = None
    bytes: int | None = None

    def to_dict(self) -> dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ConsolidationStatus:
    """Whether a VM's disks need consolidation, and why."""

    needed: bool
    chain_depth: int
    reasons: list[str] = dataclasses.field(default_factory=list)
    leftovers: list[Leftover] = dataclasses.field(default_factory=list)
    disks: list[Disk] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "needed": self.needed,
            "chain_depth": self.chain_depth,
            "reasons": list(self.reasons),
            "leftovers": [x.to_dict() for x in self.leftovers],
            "disks": [d.to_dict() for d in self.disks],
        }
