# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Repository locks: shared (backup, restore, verify) and exclusive (init, prune, GC, repair, key change).

PRIVATE to this collection; no compatibility guarantees.

A lock is an object ``locks/<token>-<seq>`` holding JSON: the owner (machine id, boot id, pid, process start
ticks, hostname), the operation, whether it is exclusive, and the owner's clock (for people only).

Taking a lock writes our object first, then lists the others: an exclusive lock conflicts with any live lock,
a shared one with any live exclusive lock. On conflict our object is removed and, after the lock wait, LockedError
is raised; two racing prunes both back off rather than both run.

**When a lock is stale** (``is_stale``; stale locks never block and are removed):

- its owner runs on this machine (same machine id *and* boot id) and its process is gone (pid + start time);
  a live owner on this machine is never stale, however old its lock;
- its owner ran on this machine before a reboot (same machine id, other boot id);
- otherwise (another machine, or a lock without a machine id) when the storage's modification time of the lock
  is more than ``STALE_SECONDS`` older than that of the lock we just wrote. Both times come from the storage's
  clock, so a client whose clock is an hour off neither breaks live locks nor keeps dead ones.

Hostnames are shown to people, never used to decide: two hosts of the same name do not remove each other's locks.

**The owner's side** (what makes "a backup whose lock expired committed after a prune" impossible): a timer thread
rewrites the lock every ``REFRESH_SECONDS``, under a new name, and only after checking that the previous object is
still there and still ours; a lock found removed is *lost* and never recreated. Before anything that commits
(index, manifest) or deletes (GC), the holder calls ``check()``: it raises LockLostError when the lock was lost or
when its last successful refresh started more than ``SAFE_SECONDS`` ago by the holder's monotonic clock. Others
only call a lock stale after ``STALE_SECONDS > SAFE_SECONDS`` of storage time without a refresh, so whenever
``check()`` passes, nobody can have treated the lock as stale yet (see docs/repository-format.md, "Locks").
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import BackupError, LockedError, LockLostError

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import Backend

LOCK_DIR = "locks"
#: How often the timer thread rewrites a held lock.
REFRESH_SECONDS = 60.0
#: A lock of another machine whose object was not rewritten for this long (storage time) is stale.
STALE_SECONDS = 1800.0
#: A holder whose last refresh started longer ago than this (its monotonic clock) treats its lock as lost.
SAFE_SECONDS = 900.0


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.readline().strip() or None
    except OSError:
        return None


def machine_id() -> str | None:
    """The systemd/D-Bus machine id, or None where the machine has none."""
    return _read_first_line("/etc/machine-id") or _read_first_line("/var/lib/dbus/machine-id")


def boot_id() -> str | None:
    return _read_first_line("/proc/sys/kernel/random/boot_id")


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of process ``pid``; None when there is no such live process (a
    zombie holds nothing and serves nothing)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    if not fields or fields[0] == b"Z":
        return None
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
        pass
    current = process_start(pid)
    if start is not None and current is not None and current != start:
        return False  # the pid was reused by another process
    if current is None and os.path.exists("/proc/self/stat"):
        return False
    return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def describe(info: t.Mapping[str, t.Any]) -> str:
    kind = "exclusive" if info.get("exclusive") else "shared"
    owner = info.get("owner") if isinstance(info.get("owner"), dict) else info
    return (
        f"{kind} lock for {info.get('operation', '?')} held by host {owner.get('host', '?')} pid "
        f"{owner.get('pid', '?')} since {info.get('since', info.get('time', '?'))}"
    )


def _hostname() -> str:
    try:
        return os.uname().nodename  # what socket.gethostname() returns, without importing socket (start-up time)
    except AttributeError:  # pragma: no cover - not POSIX
        import socket  # pylint: disable=import-outside-toplevel

        return socket.gethostname()


def owner_identity() -> dict[str, t.Any]:
    pid = os.getpid()
    return {
        "machine": machine_id(),
        "boot": boot_id(),
        "pid": pid,
        "start": process_start(pid),
        "host": _hostname(),
    }


def is_stale(info: t.Mapping[str, t.Any], age: float | None, me: t.Mapping[str, t.Any]) -> bool:
    """Whether a lock no longer protects anything (module docstring). ``age``: storage-time seconds since the
    lock object was last written, None when unknown."""
    owner = info.get("owner")
    if isinstance(owner, dict) and owner.get("machine") and owner.get("machine") == me.get("machine"):
        if owner.get("boot") != me.get("boot"):
            return True  # written before this machine's last reboot: its process is gone
        try:
            return not _pid_alive(int(owner["pid"]), owner.get("start"))
        except (KeyError, ValueError, TypeError):
            return True
    return age is not None and age > STALE_SECONDS


#: A lock removed by another process leaves a record here first (``tombstones/lock-<token>``): a manifest written
#: under that lock and never confirmed by its journal entry is not a backup (Repository.list, prune, verify). Only
#: exclusive lockers and break_lock write these; a backup-only credential is denied ``tombstones/``.
BROKEN_PREFIX = "tombstones/lock-"


def lock_token(name: str) -> str:
    """The token of a lock object ``locks/<token>-<seq>``."""
    return name.rsplit("/", 1)[-1].rsplit("-", 1)[0]


def record_broken(backend: "Backend", name: str, info: t.Mapping[str, t.Any] | None, why: str) -> None:
    """Record that the lock object ``name`` is being removed by someone else. Raises BackendError/OSError."""
    doc = {"token": lock_token(name), "why": why, "owner": (info or {}).get("owner"),
           "operation": (info or {}).get("operation"), "time": _now().isoformat()}
    try:
        backend.create_exclusive(BROKEN_PREFIX + lock_token(name), json.dumps(doc).encode("utf-8"))
    except FileExistsError:
        pass  # recorded before (another refresh of the same lock)


class Lock:
    """A held lock, refreshed by a timer thread. Use as a context manager or call release()."""

    def __init__(self, backend: "Backend", exclusive: bool, operation: str) -> None:
        self.backend = backend
        self.exclusive = exclusive
        self.operation = operation
        self.token = os.urandom(16).hex()
        self.seq = 0
        self.name = self._name()
        self.owner = owner_identity()
        self.since = _now().isoformat()
        self.held = False
        self.lost_reason: str | None = None
        self._last_ok = 0.0  # monotonic time at which the last successful write *started*
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def _name(self) -> str:
        return f"{LOCK_DIR}/{self.token}-{self.seq:06d}"

    def _content(self) -> bytes:
        return json.dumps({
            "owner": self.owner,
            "operation": self.operation,
            "exclusive": self.exclusive,
            "since": self.since,
            "time": _now().isoformat(),
            "seq": self.seq,
        }).encode("utf-8")

    # -- taking it ---------------------------------------------------------------------------------
    def acquire(self, wait: float = 0.0) -> "Lock":
        """Take the lock, retrying for up to ``wait`` seconds. Raises LockedError."""
        deadline = time.monotonic() + wait
        delay = 0.2
        while True:
            started = time.monotonic()
            self.backend.create_exclusive(self.name, self._content())
            conflicts = self._conflicts()
            if not conflicts:
                self._last_ok = started
                self.held = True
                self._timer = threading.Thread(target=self._refresh_loop, name="vmsafe-lock-refresh", daemon=True)
                self._timer.start()
                return self
            self.backend.delete(self.name)
            if time.monotonic() >= deadline:
                holder = conflicts[0]
                want = "an exclusive lock" if self.exclusive else "a shared lock"
                owner = holder.get("owner") if isinstance(holder.get("owner"), dict) else holder
                raise LockedError(
                    f"The repository at {self.backend.location} is locked ({describe(holder)}), so {want} for "
                    f"{self.operation} cannot be taken within the lock wait of {wait:g} s. Wait for that operation "
                    f"to finish or give a longer lock_timeout. If no vmsafe process runs on host "
                    f"{owner.get('host')} with pid {owner.get('pid')}, the lock is stale (it expires by itself "
                    f"{int(STALE_SECONDS // 60)} minutes after its last refresh): remove it with break_lock.",
                    conflicts,
                )
            # jitter: two racing exclusive lockers must not retry in lockstep forever
            time.sleep(min(delay * (0.5 + int.from_bytes(os.urandom(2), 'big') % 1000 / 1000), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)

    def _conflicts(self) -> list[dict[str, t.Any]]:
        try:
            now = self.backend.mtime(self.name)  # the storage's "now", on the storage's clock
        except FileNotFoundError:
            now = None
        conflicts = []
        for name, _size in self.backend.list(LOCK_DIR):
            if name.startswith(f"{LOCK_DIR}/{self.token}-") or ".tmp-" in name:
                continue
            info = read_lock(self.backend, name)
            if info is None:
                continue
            try:
                age = None if now is None else now - self.backend.mtime(name)
            except FileNotFoundError:
                continue
            if is_stale(info, age, self.owner):
                # a stale exclusive lock wrote no manifest: anyone may clear it. A stale shared lock may belong to a
                # stalled backup that still writes its manifest: only an exclusive locker (which is about to let a
                # GC run) removes it, and it records that first; shared lockers only ignore it.
                if info.get("exclusive"):
                    self.backend.delete(name)
                elif self.exclusive:
                    try:
                        record_broken(self.backend, name, info, "stale")
                    except (BackupError, OSError):
                        info["name"] = name  # cannot record it (a backup-only credential): it keeps the lock out
                        conflicts.append(info)
                        continue
                    self.backend.delete(name)
                continue
            if self.exclusive or info.get("exclusive"):
                info["name"] = name
                conflicts.append(info)
        return conflicts

    # -- keeping it --------------------------------------------------------------------------------
    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self.refresh()

    def refresh(self) -> None:
        """Rewrite the lock under its next name, unless it was lost. Never raises; check() reports."""
        with self._mutex:
            if not self.held or self.lost_reason is not None:
                return
            if self._expired():
                return
            started = time.monotonic()
            old = self.name
            self.seq += 1
            new = self._name()
            try:
                self.backend.create_exclusive(new, self._content())
                if not self._is_ours(old):
                    self.backend.delete(new)
                    self.lost_reason = "its lock object was removed by another process (break_lock or a stale-lock cleanup)"
                    return
                self.backend.delete(old)
            except Exception:  # pylint: disable=broad-except  # a failed refresh is judged by _expired() later
                self.seq -= 1
                try:
                    self.backend.delete(new)
                except Exception:  # pylint: disable=broad-except
                    pass
                return
            self.name = new
            self._last_ok = started

    def _is_ours(self, name: str) -> bool:
        info = read_lock(self.backend, name)
        return info is not None and info.get("owner") == self.owner and info.get("operation") == self.operation

    def _expired(self) -> bool:
        idle = time.monotonic() - self._last_ok
        if idle > SAFE_SECONDS:
            self.lost_reason = (
                f"it could not be refreshed for {int(idle)} s (storage unreachable or the process was stopped), so "
                "other hosts may have treated it as stale"
            )
            return True
        return False

    def check(self) -> None:
        """Raise LockLostError unless the lock is certainly still ours. Call before every commit or delete."""
        with self._mutex:
            if self.lost_reason is None and not self._expired() and not self._is_ours(self.name):
                self.lost_reason = "its lock object was removed by another process (break_lock or a stale-lock cleanup)"
            # An exclusive locker that took this lock for stale records that before it removes it. The refresh timer
            # may have written the lock's next object meanwhile (after the locker listed the locks, before it removed
            # the old object), so the object can be ours while the locker runs a GC as if this process were gone:
            # the record decides (found by the concurrency model test: a GC removed a running backup's temporary pack).
            if self.lost_reason is None and not self.exclusive and self.backend.exists(BROKEN_PREFIX + self.token):
                self.lost_reason = "another process took it for stale and recorded it as broken (a clock or a stall)"
            if self.lost_reason is not None:
                raise LockLostError(
                    f"The {'exclusive' if self.exclusive else 'shared'} lock for {self.operation} on the repository "
                    f"at {self.backend.location} was lost: {self.lost_reason}. Nothing more was committed; run the "
                    "operation again (data written so far is removed by the next garbage collection)."
                )

    def release(self) -> None:
        self._stop.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
            self._timer = None
        with self._mutex:
            if self.held:
                self.held = False
                if self.lost_reason is None:
                    self.backend.delete(self.name)

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock(backend: "Backend", name: str) -> dict[str, t.Any] | None:
    try:
        data = backend.read(name)
    except FileNotFoundError:
        return None
    if len(data) > 65536:
        return {"operation": "unreadable lock (oversized)", "owner": {}}
    try:
        info = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {"operation": "unreadable lock", "owner": {}}
    return info if isinstance(info, dict) else {"operation": "unreadable lock", "owner": {}}


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
    """Remove every lock (and temporary lock files), live ones too. Returns what was removed.

    A live holder notices at its next refresh or check() and commits nothing more.
    """
    removed = list_locks(backend)
    for name, _size in backend.list(LOCK_DIR):
        if ".tmp-" not in name:
            record_broken(backend, name, read_lock(backend, name), "break_lock")
        backend.delete(name)
    return removed
