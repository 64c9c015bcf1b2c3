# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Restore-test records ("this backup was restored, booted and answered"), and the history views built on them.

PRIVATE to this collection; no compatibility guarantees.

A record is the object ``tests/<backup id>/<test id>`` (docs/repository-format.md §11b): sealed metadata like a
manifest (encrypted and authenticated with the repository key, bound to its name by the context
``test:<backup id>/<test id>``), created once and never replaced. It is written under a *shared* lock, after the
backup's manifest was read under that lock: a prune (exclusive lock) cannot remove the backup between that check and
the record, so a record always names a backup that existed when it was written.

GC and prune never read ``tests/``: records hold no blobs, so they cannot make data look used or unused. A record
outlives its backup's prune on purpose (it is the history of "last proven restorable"); ``expire_tests()`` removes
the old records of pruned backups and is meant to run inside a prune, under its exclusive lock.

API::

    rec = record_test(repo, backup_id, result="passed", probes=[...], duration=12.5, message="", restored_as="x")
    records, problems = list_tests(repo, vm_name=None)      # oldest first; damaged records are skipped, named
    removed = expire_tests(repo, lock, older_than_days=400, now=None)
    strip = night_strip(backups, tests, nights=30, today=None)  # pure: per VM, one state per night
    series = storage_series(records, nights=30, today=None)     # pure: stored bytes and dedup per night
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackupError,
    BackupNotFoundError,
    CorruptMetadataError,
    InvalidArgumentError,
    LockLostError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import utcnow

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import Lock
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import BackupRecord
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository

TEST_DIR = "tests"
TEST_VERSION = 1
RESULTS = ("passed", "failed")
#: a record is a few hundred bytes; anything this large is damage or an attack
MAX_RECORD_BYTES = 64 * 1024
_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{16}")
_BACKUP_TIME = re.compile(r"(\d{8}T\d{6}Z)-")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclasses.dataclass
class TestRecord:
    """One restore test of one backup."""

    __test__ = False  # not a pytest test class

    id: str
    backup_id: str
    vm_name: str
    time: datetime.datetime
    result: str
    duration: float
    probes: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    message: str = ""
    restored_as: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "passed"

    @property
    def object_name(self) -> str:
        return f"{TEST_DIR}/{self.backup_id}/{self.id}"

    def to_json(self) -> dict[str, t.Any]:
        return {
            "version": TEST_VERSION,
            "id": self.id,
            "backup_id": self.backup_id,
            "vm_name": self.vm_name,
            "time": self.time.astimezone(datetime.timezone.utc).strftime(_TIME_FORMAT),
            "result": self.result,
            "duration": self.duration,
            "probes": self.probes,
            "message": self.message,
            "restored_as": self.restored_as,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, backup_id: str, test_id: str) -> "TestRecord":
        """Parse a record read from ``tests/<backup_id>/<test_id>``. Raises CorruptMetadataError."""
        what = f"restore-test record {test_id} of backup {backup_id}"
        try:
            doc = json.loads(data.decode("utf-8"))
            if doc.get("version") != TEST_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')}")
            record = cls(
                id=str(doc["id"]),
                backup_id=str(doc["backup_id"]),
                vm_name=str(doc["vm_name"]),
                time=datetime.datetime.strptime(doc["time"], _TIME_FORMAT).replace(tzinfo=datetime.timezone.utc),
                result=str(doc["result"]),
                duration=float(doc["duration"]),
                probes=[dict(p) for p in doc.get("probes", [])],
                message=str(doc.get("message", "")),
                restored_as=str(doc.get("restored_as", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise CorruptMetadataError(f"The {what} is damaged ({exc}).") from None
        if record.id != test_id or record.backup_id != backup_id:
            # sealed under its name, so only an unencrypted repository can get here: someone moved it
            raise CorruptMetadataError(f"The {what} names another test or backup; it was moved or replaced.")
        if record.result not in RESULTS:
            raise CorruptMetadataError(f"The {what} has an unknown result '{record.result}'.")
        return record


def _context(backup_id: str, test_id: str) -> bytes:
    return f"test:{backup_id}/{test_id}".encode("utf-8")


def _clean_probes(probes: t.Sequence[t.Mapping[str, t.Any]]) -> list[dict[str, t.Any]]:
    """Probe details as JSON-safe dicts of scalars (nested values become text)."""
    clean = []
    for probe in probes:
        if not isinstance(probe, t.Mapping):
            raise InvalidArgumentError(f"Each probe result must be a mapping, not {type(probe).__name__}.")
        item: dict[str, t.Any] = {}
        for key, value in probe.items():
            item[str(key)] = value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
        clean.append(item)
    return clean


def new_test(record: "BackupRecord", result: str, probes: t.Sequence[t.Mapping[str, t.Any]] = (),
             duration: float = 0.0, message: str = "", restored_as: str = "",
             time: datetime.datetime | None = None) -> TestRecord:
    """Build (not store) the record of a test of ``record``. Raises InvalidArgumentError."""
    if result not in RESULTS:
        raise InvalidArgumentError(f"A restore test's result is one of {', '.join(RESULTS)}, not '{result}'.")
    when = (time or utcnow()).astimezone(datetime.timezone.utc)
    test = TestRecord(
        id=f"{when.strftime('%Y%m%dT%H%M%SZ')}-{os.urandom(8).hex()}",
        backup_id=record.id,
        vm_name=record.vm_name,
        time=when,
        result=result,
        duration=round(max(0.0, float(duration)), 3),
        probes=_clean_probes(probes),
        message=str(message),
        restored_as=str(restored_as),
    )
    if len(test.encode()) > MAX_RECORD_BYTES:
        raise InvalidArgumentError(
            f"The restore-test record of backup {record.id} would be over {MAX_RECORD_BYTES // 1024} KiB; shorten "
            "the message and the probe details (keep command output to its last lines)."
        )
    return test


def record_test(repo: "Repository", backup_id: str, result: str, probes: t.Sequence[t.Mapping[str, t.Any]] = (),
                duration: float = 0.0, message: str = "", restored_as: str = "",
                time: datetime.datetime | None = None) -> TestRecord:
    """Store the result of a restore test of ``backup_id``; return the record.

    Raises BackupNotFoundError (no such backup, or it was pruned), InvalidArgumentError, LockedError, LockLostError.
    The order mirrors ``Repository.commit_backup``: shared lock → the manifest must open (and must not carry a
    tombstone) → lock check → create the record (never replacing) → lock check; a lock lost meanwhile removes the
    record again, because a prune may have removed the backup in between.
    """
    with repo.lock(False, "restore_test") as lock:
        backup = repo.get(backup_id)  # BackupNotFoundError when it is gone
        if repo.backend.exists(f"tombstones/{backup_id}"):
            raise BackupNotFoundError(
                f"Backup {backup_id} was pruned (it has a tombstone); its restore test is not recorded. Test a "
                "backup that is kept."
            )
        test = new_test(backup, result, probes, duration, message, restored_as, time)
        lock.check()
        repo.backend.create_exclusive(test.object_name,
                                      repo.codec.seal_meta(_context(backup_id, test.id), test.encode()))
        try:
            lock.check()
        except LockLostError:
            repo.backend.delete(test.object_name)
            raise
        return test


def list_tests(repo: "Repository", vm_name: str | None = None) -> tuple[list[TestRecord], list[str]]:
    """Return (records oldest first, problems). A record that does not open or parse is skipped and named in
    problems: one damaged record must not hide the others, nor fail a listing of backups."""
    records: list[TestRecord] = []
    problems: list[str] = []
    for name, size in repo.backend.list(TEST_DIR):
        parts = name.split("/")
        if ".tmp-" in name or len(parts) != 3 or not _ID.fullmatch(parts[2]):
            continue
        _dir, backup_id, test_id = parts
        try:
            if size > MAX_RECORD_BYTES:
                raise CorruptMetadataError(f"The restore-test record {name} is oversized ({size} bytes).")
            try:
                plain = repo.codec.open_meta(_context(backup_id, test_id), repo.backend.read(name), name)
            except CorruptMetadataError:
                raise CorruptMetadataError(
                    f"The restore-test record {name} does not authenticate (damaged, forged, or moved from another "
                    "backup's folder): it is ignored. Delete it; the backup's own data is not affected."
                ) from None
            record = TestRecord.decode(plain, backup_id, test_id)
        except FileNotFoundError:
            continue  # expired meanwhile
        except BackupError as exc:
            problems.append(str(exc))
            continue
        if vm_name is None or record.vm_name == vm_name:
            records.append(record)
    records.sort(key=lambda r: (r.time, r.id))
    return records, problems


def expire_tests(repo: "Repository", lock: "Lock", older_than_days: float = 400.0,
                 now: datetime.datetime | None = None) -> list[str]:
    """Delete records of pruned backups older than ``older_than_days``; return the removed object names.

    Call under the exclusive lock of a prune, after its manifests were forgotten. Records of backups that still
    exist are never removed, and neither is each VM's newest passing record (its "last proven restorable").
    """
    when = now or utcnow()
    present = {n.rsplit("/", 1)[-1] for n, _s in repo.backend.list("snapshots") if ".tmp-" not in n}
    records, _problems = list_tests(repo)
    newest_pass: dict[str, str] = {}
    for record in records:
        if record.passed:
            newest_pass[record.vm_name] = record.id
    removed = []
    for record in records:
        if record.backup_id in present or newest_pass.get(record.vm_name) == record.id:
            continue
        if (when - record.time).total_seconds() < older_than_days * 86400:
            continue
        lock.check()
        repo.backend.delete(record.object_name)
        removed.append(record.object_name)
    return removed


# ------------------------------------------------------------------ history: which backups existed
def backup_time_from_id(backup_id: str) -> datetime.datetime | None:
    """The UTC time a backup id starts with (``YYYYMMDDTHHMMSSZ-...``), or None."""
    match = _BACKUP_TIME.match(backup_id)
    if not match:
        return None
    return datetime.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


def past_backups(repo: "Repository") -> list[tuple[str, str, datetime.datetime]]:
    """(backup id, VM, time) of the backups that were pruned, from their authentic tombstones (§11a).

    Unreadable tombstones are skipped: this feeds a report, and verify names damaged ones.
    """
    found = []
    for name, _size in repo.backend.list("tombstones"):
        if ".tmp-" in name:
            continue
        backup_id = name.rsplit("/", 1)[-1]
        try:
            doc = json.loads(repo.codec.open_meta(f"tombstones:{backup_id}".encode(), repo.backend.read(name), name))
        except (BackupError, FileNotFoundError, ValueError):
            continue
        when = backup_time_from_id(backup_id)
        if isinstance(doc, dict) and doc.get("id") == backup_id and doc.get("vm_name") and when is not None:
            found.append((backup_id, str(doc["vm_name"]), when))
    return found


# ------------------------------------------------------------------ pure views for reports
#: night states, worst first (a night with a failed test and a passing one counts as proven: it was restorable)
NIGHT_STATES = ("missing", "failed", "backed_up", "proven")


def _days(nights: int, today: datetime.date) -> list[datetime.date]:
    return [today - datetime.timedelta(days=n) for n in range(nights - 1, -1, -1)]


def night_strip(backups: t.Iterable[tuple[str, str, datetime.datetime]], tests: t.Iterable[TestRecord],
                nights: int = 30, today: datetime.date | None = None,
                kept: t.Collection[str] | None = None) -> dict[str, list[dict[str, t.Any]]]:
    """Per VM, one entry per UTC day of the last ``nights`` days (oldest first).

    ``backups`` are (id, VM, time), kept and pruned alike (``kept``: the ids still in the repository; None = all).
    A day's state: ``proven`` when a backup of that day passed a restore test, else ``failed`` when a restore test
    of one of its backups failed, else ``backed_up`` when it has a backup, else ``missing``. Each entry: date, state,
    backups (count), tests_passed, tests_failed, and details (one line per backup: its id and its last test).
    """
    day0 = today or utcnow().date()
    days = _days(nights, day0)
    first = days[0]
    last_test: dict[str, TestRecord] = {}
    counts: dict[str, list[int]] = {}
    for test in sorted(tests, key=lambda r: (r.time, r.id)):
        last_test[test.backup_id] = test
        counts.setdefault(test.backup_id, [0, 0])[0 if test.passed else 1] += 1
    by_vm: dict[str, dict[datetime.date, list[str]]] = {}
    for backup_id, vm, when in sorted(backups, key=lambda b: (b[2], b[0])):
        day = when.astimezone(datetime.timezone.utc).date()
        if first <= day <= day0:
            by_vm.setdefault(vm, {}).setdefault(day, []).append(backup_id)
    strip: dict[str, list[dict[str, t.Any]]] = {}
    for vm in sorted(by_vm):
        row = []
        for day in days:
            ids = by_vm[vm].get(day, [])
            passed = sum(counts.get(b, [0, 0])[0] for b in ids)
            failed = sum(counts.get(b, [0, 0])[1] for b in ids)
            details = []
            for backup_id in ids:
                test = last_test.get(backup_id)
                line = f"backup {backup_id}: " + (f"restore test {test.result}" if test else "not tested")
                if kept is not None and backup_id not in kept:
                    line += " (pruned since)"
                details.append(line)
            state = "proven" if passed else "failed" if failed else "backed_up" if ids else "missing"
            row.append({"date": day.isoformat(), "state": state, "backups": len(ids), "tests_passed": passed,
                        "tests_failed": failed, "details": details})
        strip[vm] = row
    return strip


def backup_data_bytes(record: "BackupRecord") -> int:
    """The non-zero data of a backup's disks (what a copy without deduplication would hold, uncompressed)."""
    return sum(min(d.size, d.stored_chunks * d.chunk_size) for d in record.disks)


def storage_series(records: t.Iterable["BackupRecord"], nights: int = 30,
                   today: datetime.date | None = None) -> list[dict[str, t.Any]]:
    """Per UTC day of the last ``nights`` days (oldest first): the bytes the backups kept so far had added to the
    repository (``stored_bytes``, from each manifest's ``new_bytes``), their data (``data_bytes``) and the
    deduplication ratio ``data_bytes / stored_bytes`` (None while nothing is stored).

    Computed from the manifests that exist now, so bytes of pruned backups are not in it; the current size of the
    packs is ``packs_bytes()``.
    """
    day0 = today or utcnow().date()
    ordered = sorted(records, key=lambda r: r.time)
    series = []
    pos, stored, data = 0, 0, 0
    for day in _days(nights, day0):
        while pos < len(ordered) and ordered[pos].time.astimezone(datetime.timezone.utc).date() <= day:
            stored += int(ordered[pos].stats.get("new_bytes", 0))
            data += backup_data_bytes(ordered[pos])
            pos += 1
        series.append({"date": day.isoformat(), "stored_bytes": stored, "data_bytes": data,
                       "dedup_ratio": round(data / stored, 2) if stored else None})
    return series


def packs_bytes(repo: "Repository") -> int:
    """The bytes the repository's pack files take now."""
    return sum(size for name, size in repo.backend.list("packs") if ".tmp-" not in name)
