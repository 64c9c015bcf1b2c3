# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Pure functions over a VM's snapshot tree. They search every branch, never the first one only."""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import AmbiguousSnapshot, SnapshotNotFound

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import Snapshot


def link(snapshots: list[Snapshot]) -> list[Snapshot]:
    """Fill ``children`` and ``depth`` from the parent ids; return the list sorted by creation time.

    A parent id that is not in the list is treated as a root (the hypervisor lost it).
    """
    by_id = {s.id: s for s in snapshots}
    for snap in snapshots:
        snap.children = []
    for snap in sorted(snapshots, key=lambda s: (s.created, s.id)):
        if snap.parent is not None and snap.parent in by_id:
            by_id[snap.parent].children.append(snap.id)
        elif snap.parent is not None:
            snap.parent = None
    for snap in snapshots:
        depth, cursor, seen = 1, snap, {snap.id}
        while cursor.parent is not None and cursor.parent in by_id and cursor.parent not in seen:
            seen.add(cursor.parent)
            cursor = by_id[cursor.parent]
            depth += 1
        snap.depth = depth
    return sorted(snapshots, key=lambda s: (s.created, s.id))


def find(snapshots: list[Snapshot], name: str | None = None, snapshot_id: str | None = None,
         vm_name: str = "") -> Snapshot | None:
    """Return the snapshot with that id (or vSphere integer id), or the only one with that name, or None.

    Raises AmbiguousSnapshot when several snapshots share the name: a silent pick could revert or delete
    the wrong one.
    """
    if snapshot_id is not None:
        found = next((s for s in snapshots if s.id == snapshot_id), None)
        if found is None and snapshot_id.isdigit():
            # vmware.vmware and community.vmware take vSphere's integer snapshot id; it names one snapshot too.
            found = next((s for s in snapshots if s.number == int(snapshot_id)), None)
        return found
    matches = [s for s in snapshots if s.name == name]
    if len(matches) > 1:
        listing = ", ".join(f"{s.id} (created {s.created:%Y-%m-%d %H:%M:%SZ})" for s in matches)
        raise AmbiguousSnapshot(
            f"VM '{vm_name}' has {len(matches)} snapshots named '{name}': {listing}. "
            f"Name the one you mean with snapshot_id instead of snapshot_name."
        )
    return matches[0] if matches else None


def require(snapshots: list[Snapshot], name: str | None, snapshot_id: str | None, vm_name: str) -> Snapshot:
    """Like find(), but raise SnapshotNotFound listing what exists."""
    snap = find(snapshots, name, snapshot_id, vm_name)
    if snap is None:
        wanted = f"id '{snapshot_id}'" if snapshot_id is not None else f"name '{name}'"
        existing = ", ".join(f"'{s.name}'" for s in snapshots) or "none"
        raise SnapshotNotFound(
            f"VM '{vm_name}' has no snapshot with {wanted}. Existing snapshots: {existing}. "
            f"Check the name, or list them with vmsafe.protect.vm_snapshot_info."
        )
    return snap


def descendants(snapshots: list[Snapshot], snapshot_id: str) -> list[Snapshot]:
    """Return every snapshot below ``snapshot_id``, deepest first (a safe deletion order)."""
    by_parent: dict[str | None, list[Snapshot]] = {}
    for snap in snapshots:
        by_parent.setdefault(snap.parent, []).append(snap)
    found: list[Snapshot] = []
    stack = [snapshot_id]
    while stack:
        for child in by_parent.get(stack.pop(), []):
            found.append(child)
            stack.append(child.id)
    return sorted(found, key=lambda s: (-s.depth, s.created))


def leaf_first(snapshots: list[Snapshot]) -> list[Snapshot]:
    """Return all snapshots ordered so that every child comes before its parent."""
    return sorted(snapshots, key=lambda s: (-s.depth, s.created, s.id))


def render(snapshots: list[Snapshot]) -> str:
    """Return the tree as indented text, one snapshot a line, for ``--diff``."""
    by_parent: dict[str | None, list[Snapshot]] = {}
    for snap in sorted(snapshots, key=lambda s: (s.created, s.id)):
        by_parent.setdefault(snap.parent, []).append(snap)
    lines: list[str] = []

    def walk(parent: str | None, indent: int) -> None:
        for snap in by_parent.get(parent, []):
            flags = [snap.kind]
            if snap.memory:
                flags.append("memory")
            if snap.current:
                flags.append("current")
            label = snap.name if snap.name == snap.id else f"{snap.name} [{snap.id}]"
            lines.append(f"{'  ' * indent}- {label} ({', '.join(flags)})")
            walk(snap.id, indent + 1)

    walk(None, 0)
    return "\n".join(lines) + "\n" if lines else "(no snapshots)\n"


def without(snapshots: list[Snapshot], removed_ids: set[str]) -> list[Snapshot]:
    """Return copies of the tree after removing ``removed_ids``; their children move up to the parent.

    This is what every hypervisor does when a snapshot in the middle of a chain is deleted.
    """
    by_id = {s.id: s for s in snapshots}
    kept = []
    for snap in snapshots:
        if snap.id in removed_ids:
            continue
        parent = snap.parent
        while parent is not None and parent in removed_ids:
            parent = by_id[parent].parent if parent in by_id else None
        kept.append(dataclasses.replace(snap, parent=parent, children=[]))
    return link(kept)


def with_new(snapshots: list[Snapshot], new: Snapshot) -> list[Snapshot]:
    """Return copies of the tree with ``new`` added under the current snapshot, which it replaces as current."""
    current = next((s for s in snapshots if s.current), None)
    copies = [dataclasses.replace(s, current=False, children=[]) for s in snapshots]
    copies.append(dataclasses.replace(new, parent=current.id if current else None, current=True, children=[]))
    return link(copies)


def with_current(snapshots: list[Snapshot], snapshot_id: str) -> list[Snapshot]:
    """Return copies of the tree with ``snapshot_id`` marked current (after a revert)."""
    return link([dataclasses.replace(s, current=s.id == snapshot_id, children=[]) for s in snapshots])
