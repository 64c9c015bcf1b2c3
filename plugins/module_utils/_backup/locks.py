# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Repository locks: shared (backup, restore, verify) and exclusive (prune, GC).

PRIVATE to this collection; no compatibility guarantees.

A lock is an object ``locks/<random hex>`` holding JSON: host, pid, process start
ticks, operation, exclusive, time (refreshed every 5 minutes by long operations).
Taking a lock writes our object first, then lists the others: an exclusive lock
conflicts with any live lock, a shared one with any live exclusive lock. On conflict
our object is removed and LockedError raised, so two racing prunes both refuse rather
than both run. A lock is *stale* when it is from this host and its process is gone
(checked by pid and process start time), or when it was not refreshed for 30 minutes.
Stale locks never block; stale locks of this host are removed.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import LockedError

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import Backend

LOCK_DIR = "locks"
REFRESH_SECONDS = 300
STALE_SECONDS = 1800


def _process_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    current = _process_start(pid)
    if start is not None and current is not None and current != start:
        return False  # the pid was reused by another process
    if current is None and os.path.exists("/proc/self/stat"):
        return False
    return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def describe(info: t.Mapping[str, t.Any]) -> str:
    kind = "exclusive" if info.get("exclusive") else "shared"
    return (
        f"{kind} lock for {info.get('operation', '?')} held by host {info.get('host', '?')} pid {info.get('pid', '?')} "
        f"since {info.get('time', '?')}"
    )


def is_stale(info: t.Mapping[str, t.Any], hostname: str, now: datetime.datetime | None = None) -> bool:
    try:
        when = datetime.datetime.fromisoformat(str(info["time"]))
    except (KeyError, ValueError):
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    if ((now or _now()) - when).total_seconds() > STALE_SECONDS:
        return True
    if info.get("host") == hostname:
        try:
            return not _pid_alive(int(info["pid"]), info.get("start"))
        except (KeyError, ValueError, TypeError):
            return True
    return False


class Lock:
    """A held lock. Use as a context manager or call release()."""

    def __init__(self, backend: "Backend", exclusive: bool, operation: str) -> None:
        self.backend = backend
        self.exclusive = exclusive
        self.operation = operation
        self.name = f"{LOCK_DIR}/{secrets.token_hex(16)}"
        self.hostname = socket.gethostname()
        self._last_write = 0.0
        self.held = False

    def _info(self) -> dict[str, t.Any]:
        return {
            "host": self.hostname,
            "pid": os.getpid(),
            "start": _process_start(os.getpid()),
            "operation": self.operation,
            "exclusive": self.exclusive,
            "time": _now().isoformat(),
        }

    def _write(self) -> None:
        self.backend.write_atomic(self.name, json.dumps(self._info()).encode("utf-8"))
        self._last_write = time.monotonic()

    def acquire(self, wait: float = 0.0) -> "Lock":
        """Take the lock, retrying for up to ``wait`` seconds. Raises LockedError."""
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            self._write()
            conflicts = self._conflicts()
            if not conflicts:
                self.held = True
                return self
            self.backend.delete(self.name)
            if time.monotonic() >= deadline:
                holder = conflicts[0]
                want = "an exclusive lock" if self.exclusive else "a shared lock"
                raise LockedError(
                    f"The repository at {self.backend.location} is locked ({describe(holder)}), so {want} for "
                    f"{self.operation} cannot be taken. Wait for that operation to finish (or give a lock wait time). "
                    f"If no vmsafe process runs on host {holder.get('host')} with pid {holder.get('pid')}, the lock "
                    "is stale: remove it with break_lock.",
                    conflicts,
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)

    def _conflicts(self) -> list[dict[str, t.Any]]:
        conflicts = []
        for name, _size in self.backend.list(LOCK_DIR):
            if name == self.name or ".tmp-" in name:
                continue
            info = read_lock(self.backend, name)
            if info is None:
                continue
            if is_stale(info, self.hostname):
                if info.get("host") == self.hostname:
                    self.backend.delete(name)
                continue
            if self.exclusive or info.get("exclusive"):
                info["name"] = name
                conflicts.append(info)
        return conflicts

    def refresh(self) -> None:
        """Rewrite the lock's time if it is older than REFRESH_SECONDS (cheap to call often)."""
        if self.held and time.monotonic() - self._last_write > REFRESH_SECONDS:
            self._write()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.backend.delete(self.name)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock(backend: "Backend", name: str) -> dict[str, t.Any] | None:
    try:
        info = json.loads(backend.read(name).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {"host": "?", "pid": "?", "time": "?", "operation": "unreadable lock"}
    return info if isinstance(info, dict) else None


def list_locks(backend: "Backend") -> list[dict[str, t.Any]]:
    result = []
    for name, _size in backend.list(LOCK_DIR):
        if ".tmp-" in name:
            continue
        info = read_lock(backend, name)
        if info is not None:
            info["name"] = name
            result.append(info)
    return result


def break_locks(backend: "Backend") -> list[dict[str, t.Any]]:
    """Remove every lock (and temporary lock files). Returns what was removed."""
    removed = list_locks(backend)
    for name, _size in backend.list(LOCK_DIR):
        backend.delete(name)
    return removed
