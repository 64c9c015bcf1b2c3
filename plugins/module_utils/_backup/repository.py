# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The repository core: config, key, locks, index, reading blobs and manifests; the operations delegate to
their units (backup.py, restore.py, check.py, prune.py).

PRIVATE to this collection; no compatibility guarantees.

See docs/repository-format.md for the on-storage format, and below for the API. Writes are ordered for crash
safety: packs (fsynced, renamed) before the index file that lists them, the index before the manifest that uses
them. A crashed run leaves at worst packs and index entries no manifest uses; GC removes them.

The engine as a whole (here, not in the package's __init__.py, which ansible-core 2.17 wants empty): deduplicated,
compressed, encrypted, crash-safe, pure Python (no Ansible imports); the ``vm_backup`` module calls it.

Shape (as restic's): ``repository.py`` is the core (config, key, locks, index, the commit protocol, the chunk map
check); ``backup.py``, ``restore.py``, ``check.py`` (verify, rebuild_index, repair) and ``prune.py`` (retention and
GC, with what GC may delete written above ``_gc``) are one unit per operation; ``locks.py`` says when a lock is
stale and how a holder knows it still holds it.

API (import from the submodules)::

    from ...._backup.backends import open_backend          # '/path' or 'sftp://user@host[:port]/path'
    from ...._backup.repository import Repository, DiskSource
    from ...._backup.retention import RetentionPolicy, select_prunable

    backend = open_backend(url_or_path, key_filename=None, password=None, known_hosts=None,
                           host_key_policy="strict")                 # -> Backend
    repo = Repository.init(backend, passphrase="...", encryption="aes-256-gcm" | "none",
                           chunk_size=65536, compression_level=2, pack_size=16 MiB,
                           segment_chunks=16384, kdf=None, lock_wait=60)  # -> Repository (never replaces anything)
    repo = Repository.open(backend, passphrase)                      # -> Repository
    rec = repo.backup(vm_name, disks=[DiskSource(name, size, extents, parent_disk=None)],
                      vm_definition="<domain .../>", tags={"k": "v"}, parent=None,
                      time=None)                                     # -> BackupRecord
    #   extents: sorted, non-overlapping (offset, length, bytes-like or reader with readinto());
    #   with parent=<backup id> only the changed extents are given, the rest comes from the parent.
    #   chunker.file_extents(fd) yields the data extents of an image file (holes skipped).
    repo.list(vm_name=None)                                          # -> list[BackupRecord], oldest first
    repo.get(backup_id)                                              # -> BackupRecord
    repo.restore(backup_id, disk_name, target_path_or_fd, sparse=True)  # -> dict of statistics
    repo.verify(backup_id=None, read_data=False)                     # -> VerifyReport (.ok, .errors, .damaged)
    repo.prune(policy, dry_run=False, now=None, vm_name=None)        # -> PruneResult (+ garbage collection)
    repo.gc()                                                        # -> PruneResult (GC only)
    repo.rebuild_index()                                             # -> number of packs indexed
    repo.repair()                                                    # -> RepairResult (damaged entries dropped)
    repo.change_passphrase(new_passphrase, kdf=None)                 # re-wraps the key (exclusive lock)
    repo.break_lock()                                                # -> list of removed locks
    select_prunable(records, RetentionPolicy(keep_daily=7, ...), now)  # -> (list[Kept], list[BackupRecord])

``repo.lock_wait`` (seconds, default 0; the modules' ``lock_timeout``, 300) makes operations wait for a
conflicting lock instead of failing at once; ``repo.threads`` is the size of the hashing/compression pool (default: CPU count).

Every error is a subclass of ``errors.BackupError`` whose ``str()`` names the problem
and the fix; secrets never appear in messages or reprs.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.config import (
    ENCRYPTIONS,
    FORMAT_VERSION,
    authenticate_config,
    check_parameters,
    encode_config,
    new_config,
    parse_config,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import (
    BlobCodec,
    FRAME_BYTES,
    check_kdf,
    KeyMaterial,
    require_cryptography,
    require_zstd,
    unwrap_key,
    wrap_key,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackupError,
    BackupNotFoundError,
    LockLostError,
    CorruptChunkError,
    CorruptMetadataError,
    IntegrityError,
    InvalidArgumentError,
    RepositoryExistsError,
    RepositoryFormatError,
    RepositoryNotFoundError,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.index import (
    Index,
    Location,
    encode_index,
    iter_index_raw,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import BROKEN_PREFIX, Lock, break_locks
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import (
    BackupRecord,
    DiskRecord,
    chunk_count,
    chunk_length,
    combine_digests,
    segment_digest,
    utcnow,
    MapSegment,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    BLOB_DATA,
    BLOB_MAP,
    PackEntry,
    member_slot,
    pack_object_name,
    read_pack_header,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import backup as backup_unit
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backup import DiskSource

if t.TYPE_CHECKING:  # the restore, check and prune units are imported when first used: a backup job needs none
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.check import RepairResult, VerifyReport
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.prune import PruneResult
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy

#: the engine's API, importable from here as before the split
__all__ = ["DiskSource", "Repository"]

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import Backend

#: 64 KiB: QEMU's default dirty-bitmap granularity, so changed-block extents map 1:1 to
#: chunks; measured in benchmarks/ (scattered 4 KiB writes cost ~4x less than 256 KiB chunks).
DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_SEGMENT_CHUNKS = 16384
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
#: zstd level 2: on 64 KiB chunks of the benchmark image it compresses as well as level 3 (ratio 0.465 vs
#: 0.464 on the compressible chunks) at 1.6x the speed (229 vs 145 MB/s per core); level 1 stores 10 % more.
DEFAULT_COMPRESSION_LEVEL = 2
#: opened frames kept by read_blob (each at most 1 MiB)
FRAME_CACHE = 4
DIRS = ("keys", "packs", "index", "snapshots", "locks", "journal", "tombstones")


class Repository:
    """An open repository. Create with Repository.init() or Repository.open()."""

    def __init__(self, backend: "Backend", config: dict[str, t.Any], key: KeyMaterial | None) -> None:
        self.backend = backend
        self.config = config
        self.chunk_size = int(config["chunk_size"])
        self.segment_chunks = int(config["segment_chunks"])
        self.pack_size = int(config["pack_size"])
        self.compression_level = int(config["compression"]["level"])
        self.encryption = str(config["encryption"])
        self.key = key
        self.codec = BlobCodec(key, self.compression_level, self.chunk_size)
        self._frames: "collections.OrderedDict[tuple[str, int], bytes]" = collections.OrderedDict()
        self._frames_lock = threading.Lock()
        #: chunks per frame a backup may write (format version 2, chunks of at most 512 KiB); 1: every chunk alone
        self.frame_slots = self.codec.frame_slots if config["version"] >= 2 and self.chunk_size * 2 <= FRAME_BYTES else 1
        self.threads = max(1, min(8, os.cpu_count() or 2))
        self.lock_wait = 0.0
        self._index: Index | None = None
        self.index_files: list[str] = []

    def __repr__(self) -> str:
        return f"<Repository {self.backend.location} encryption={self.encryption}>"

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def init(
        cls,
        backend: "Backend",
        passphrase: str | None = None,
        encryption: str = "aes-256-gcm",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        pack_size: int = DEFAULT_PACK_SIZE,
        segment_chunks: int = DEFAULT_SEGMENT_CHUNKS,
        kdf: t.Mapping[str, t.Any] | None = None,
        lock_wait: float = 60.0,
        format_version: int = FORMAT_VERSION,
    ) -> "Repository":
        """Create a new repository. Raises RepositoryExistsError, InvalidArgumentError, BackendError, LockedError.

        INVARIANT: init never replaces anything. It runs under an exclusive ``init`` lock (a second init waits,
        then finds the repository made), creates the key and then config with no-overwrite creates, and reads
        both back before returning. A key without config (an init that died between the two) is completed
        only when it opens with this passphrase and the location holds no data; otherwise init refuses.
        """
        require_zstd()
        if encryption not in ENCRYPTIONS:
            raise InvalidArgumentError(f"encryption must be one of {', '.join(ENCRYPTIONS)}, not '{encryption}'.")
        if encryption == "none" and passphrase:
            raise InvalidArgumentError(
                "A passphrase was given with encryption 'none'. Choose encryption 'aes-256-gcm' to use it, or drop it."
            )
        if encryption != "none":
            require_cryptography()
            if not passphrase:
                raise InvalidArgumentError(
                    "An encrypted repository needs a passphrase; give one, or set encryption to 'none' explicitly."
                )
        check_parameters(chunk_size, segment_chunks, pack_size, compression_level)
        if kdf is not None:
            check_kdf(kdf)

        def exists_error() -> RepositoryExistsError:
            return RepositoryExistsError(
                f"A repository already exists at {backend.location}. Open it instead, or choose another location."
            )

        if backend.exists("config"):
            raise exists_error()
        backend.make_dirs(DIRS)
        with Lock(backend, True, "init").acquire(lock_wait):
            if backend.exists("config"):
                raise exists_error()
            config = new_config(encryption, chunk_size, segment_chunks, pack_size, compression_level, format_version)
            key: KeyMaterial | None = None
            if encryption != "none":
                key, config = cls._create_key(backend, t.cast(str, passphrase), config, kdf)
            try:
                backend.create_exclusive("config", encode_config(config, key))
            except FileExistsError:
                raise exists_error() from None
        repo = cls.open(backend, passphrase)  # read back what was written: it must open as written
        if repo.config["id"] != config["id"]:
            raise exists_error()
        return repo

    @staticmethod
    def _create_key(backend: "Backend", passphrase: str, config: dict[str, t.Any],
                    kdf: t.Mapping[str, t.Any] | None) -> tuple[KeyMaterial, dict[str, t.Any]]:
        """Create keys/repokey without replacing one; adopt the key of an init that died before its config."""
        try:
            existing = backend.read("keys/repokey")
        except FileNotFoundError:
            existing = None
        if existing is None:
            key = KeyMaterial.generate()
            try:
                backend.create_exclusive("keys/repokey", wrap_key(key, passphrase, config["id"], kdf))
                return key, config
            except FileExistsError:
                existing = backend.read("keys/repokey")
        data = [n for d in ("snapshots", "index", "packs") for n, _s in backend.list(d) if ".tmp-" not in n]
        try:
            doc = json.loads(existing.decode("utf-8"))
            pending = doc.get("config_id")
        except (ValueError, UnicodeDecodeError, AttributeError):
            pending = None
        if data or not isinstance(pending, str):
            raise RepositoryExistsError(
                f"The location {backend.location} has a key file (keys/repokey) but no config"
                + (f" and holds backup data ({len(data)} objects)" if data else "")
                + ": it is (part of) a repository whose config is missing. init never replaces a key: restore "
                "'config' from a copy of the repository, or choose another location."
            )
        # an init that died after writing its key: its config id is recorded in the key file (authenticated)
        key, _version = unwrap_key(existing, passphrase, backend.location, pending)
        return key, dict(config, id=pending)

    @classmethod
    def open(cls, backend: "Backend", passphrase: str | None = None) -> "Repository":
        """Open an existing repository. Raises RepositoryNotFoundError, WrongPassphraseError, ..."""
        try:
            raw = backend.read("config")
        except FileNotFoundError:
            raise RepositoryNotFoundError(
                f"No repository at {backend.location} (no 'config' object). Check the location or create it with init."
            ) from None
        config = parse_config(raw, backend.location)
        key = None
        version = 0
        if config["encryption"] != "none":
            try:
                content = backend.read("keys/repokey")
            except FileNotFoundError:
                raise RepositoryFormatError(
                    f"The repository at {backend.location} is encrypted but its key file keys/repokey is missing. "
                    "Restore it from a copy; without it the backups cannot be decrypted."
                ) from None
            key, version = unwrap_key(content, passphrase, backend.location, config["id"])
        elif passphrase:
            raise InvalidArgumentError(
                f"The repository at {backend.location} is not encrypted (encryption: none) but a passphrase was given."
            )
        authenticate_config(config, key, version >= 2, backend.location)
        return cls(backend, config, key)

    def change_passphrase(self, new_passphrase: str, kdf: t.Mapping[str, t.Any] | None = None) -> None:
        """Re-wrap the master key under ``new_passphrase`` (exclusive lock). Raises InvalidArgumentError, LockedError.

        Only ``keys/repokey`` is rewritten (atomically: the old or the new file, never neither), as a version 2
        key file bound to this config; a repository made before version 2 also gets its config MAC, so from then
        on an edited config is refused. The data, and every backup, stay as they are.
        """
        if self.key is None:
            raise InvalidArgumentError(
                f"The repository at {self.backend.location} is not encrypted: it has no passphrase to change."
            )
        if not new_passphrase:
            raise InvalidArgumentError("The new passphrase must not be empty.")
        if kdf is not None:
            check_kdf(kdf)
        with self.lock(True, "change_passphrase") as lock:
            content = wrap_key(self.key, new_passphrase, self.config["id"], kdf)
            if "mac" not in self.config:
                lock.check()
                self.backend.write_atomic("config", encode_config(
                    {k: v for k, v in self.config.items() if k not in ("mac", "checksum")}, self.key))
            lock.check()
            self.backend.write_atomic("keys/repokey", content)
        again = Repository.open(self.backend, new_passphrase)  # read back: it must open with the new passphrase
        if again.config["id"] != self.config["id"]:
            raise RepositoryFormatError(f"The repository at {self.backend.location} changed while its key was rewritten.")
        self.config = again.config

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ locks
    def lock(self, exclusive: bool, operation: str) -> Lock:
        return Lock(self.backend, exclusive, operation).acquire(self.lock_wait)

    def break_lock(self) -> list[dict[str, t.Any]]:
        """Remove every lock, also live ones. Returns the removed locks' details."""
        return break_locks(self.backend)

    # ------------------------------------------------------------------ index
    def load_index(self, strict: bool = False) -> Index:
        index = Index()
        files = []
        for name, _size in self.backend.list("index"):
            if ".tmp-" in name:
                continue
            try:
                blob = self.backend.read(name)
            except FileNotFoundError:
                continue
            plain = self.codec.open_meta(b"index:" + name.encode("ascii"), blob, f"index file {name}")
            for pack, raw in iter_index_raw(plain, f"index file {name}"):
                index.add_raw(pack, raw)
            files.append(name)
        self._index = index
        self.index_files = files
        return index

    def write_index(self, packs: t.Mapping[str, t.Sequence[PackEntry]]) -> str:
        name = f"index/{os.urandom(32).hex()}"
        blob = self.codec.seal_meta(b"index:" + name.encode("ascii"), encode_index(packs))
        self.backend.write_atomic(name, blob)
        return name

    # ------------------------------------------------------------------ the commit protocol
    def commit_backup(self, lock: Lock, packs: t.Sequence[tuple[str, t.Sequence[PackEntry]]],
                      record: BackupRecord) -> None:
        """Record a backup whose data is in ``packs`` (already durable). Raises LockLostError, BackendError.

        INVARIANT (what a commit requires): a manifest becomes visible only when every blob it uses is in a
        durable pack listed by a durable index file, and only while our lock is certainly ours, so that no
        garbage collection can have run since our data was written (GC needs an exclusive lock, which cannot
        coexist with ours unless ours was lost). Hence the order: packs → lock check → index → lock check →
        manifest (created, never replacing) → lock check. If the lock turns out lost after the manifest was
        written, the manifest is voided and the backup fails: a GC may have started before it was visible, and a
        reported success must always restore. Voiding writes its tombstone first (a create, which a backup-only
        credential may do), then deletes the manifest; where the credential cannot delete, the tombstone keeps it
        out of list() until a prune removes it.
        """
        if packs:
            lock.check()
            self.write_index(dict(packs))
        lock.check()
        name = self.manifest_name(record.id)
        record.lock = lock.token  # a manifest whose lock someone else removed stays void until its journal entry
        self.backend.create_exclusive(name, self.codec.seal_meta(b"snapshot:" + record.id.encode(), record.encode()))
        try:
            lock.check()
        except LockLostError:
            tombstone = self._seal_entry("tombstones", record, reason="uncommitted")
            for void in (lambda: self.backend.create_exclusive(f"tombstones/{record.id}", tombstone),
                         lambda: self.backend.delete(name)):
                try:
                    void()
                except (BackupError, OSError):
                    pass  # a backup-only credential cannot delete: the tombstone voids it, the next prune removes it
            raise
        # the journal entry: from now on, this manifest vanishing without a tombstone is noticed by verify
        self.backend.write_atomic(f"journal/{record.id}", self._seal_entry("journal", record))

    # ------------------------------------------------------------------ journal and tombstones
    # A backup id's history, for verify: journal/<id> once committed; tombstones/<id> once pruned (written before
    # the manifest is deleted, and the journal entry after it). A manifest with a tombstone was replayed (or its
    # prune interrupted: the next prune finishes it); a journal entry with neither manifest nor tombstone means the
    # manifest was removed outside prune. Entries are sealed like manifests, bound to their names.
    def _seal_entry(self, kind: str, record: BackupRecord, reason: str | None = None) -> bytes:
        doc = {"id": record.id, "vm_name": record.vm_name, "time": utcnow().isoformat()}
        if reason:
            doc["reason"] = reason  # "uncommitted": a manifest its backup voided (lock lost), not a pruned one
        return self.codec.seal_meta(f"{kind}:{record.id}".encode(), json.dumps(doc).encode("utf-8"))

    def _names(self, kind: str) -> set[str]:
        """Object names under ``kind/`` (``journal``, ``tombstones``), without the folder and temporary files."""
        return {n.rsplit("/", 1)[-1] for n, _s in self.backend.list(kind) if ".tmp-" not in n}

    @staticmethod
    def _broken_locks(tombstone_names: t.Iterable[str]) -> set[str]:
        """Tokens of the broken-lock records (``tombstones/lock-<token>``, locks.record_broken) among these names."""
        prefix = BROKEN_PREFIX.rsplit("/", 1)[-1]
        return {n[len(prefix):] for n in tombstone_names if n.startswith(prefix)}

    def _entry_ids(self, kind: str, names: t.Iterable[str] | None = None) -> dict[str, dict[str, t.Any]]:
        """Authentic entries of ``journal`` or ``tombstones`` by backup id (damaged ones are skipped); broken-lock
        records share ``tombstones/`` but are not sealed entries, so they are not read."""
        prefix = BROKEN_PREFIX.rsplit("/", 1)[-1]
        listed = self._names(kind) if names is None else names
        return self._entry_ids_of(kind, *(n for n in listed if not n.startswith(prefix)))

    def _entry_ids_of(self, kind: str, *backup_ids: str) -> dict[str, dict[str, t.Any]]:
        """Authentic entries of ``kind`` for the given backup ids (missing or damaged ones are skipped)."""
        found: dict[str, dict[str, t.Any]] = {}
        for backup_id in backup_ids:
            name = f"{kind}/{backup_id}"
            try:
                doc = json.loads(self.codec.open_meta(f"{kind}:{backup_id}".encode(), self.backend.read(name), name))
            except (BackupError, FileNotFoundError, ValueError):
                continue
            if isinstance(doc, dict) and doc.get("id") == backup_id:
                found[backup_id] = doc
        return found

    def forget(self, lock: Lock, record: BackupRecord) -> None:
        """Remove one backup's manifest the way prune does: tombstone first, then the manifest, then its journal
        entry. Needs the exclusive lock."""
        lock.check()
        self.backend.write_atomic(f"tombstones/{record.id}", self._seal_entry("tombstones", record))
        self.backend.delete(self.manifest_name(record.id))
        self.backend.delete(f"journal/{record.id}")

    def voided(self, backup_ids: t.Iterable[str]) -> set[str]:
        """Those of ``backup_ids`` that are not backups: voided by their own backup (lock lost; see commit_backup),
        or written under a lock that someone else removed and never confirmed by a journal entry."""
        ids = list(backup_ids)
        tombstoned = self._names("tombstones")
        entries = self._entry_ids_of("tombstones", *(b for b in ids if b in tombstoned))
        return ({b for b, doc in entries.items() if doc.get("reason") == "uncommitted"}
                | self._lock_voided(ids, self._broken_locks(tombstoned)))

    def _lock_voided(self, backup_ids: t.Iterable[str], broken: set[str], journal: t.Collection[str] | None = None,
                     records: t.Mapping[str, BackupRecord] | None = None) -> set[str]:
        """Manifests committed under a lock that another process removed (break_lock, or an exclusive locker that
        found it stale: ``broken`` holds their tokens) and without a journal entry: the backup never confirmed its
        commit, and a GC may have collected its data while it was written."""
        if not broken:
            return set()
        if journal is None:
            journal = self._names("journal")
        void = set()
        for backup_id in backup_ids:
            if backup_id in journal:
                continue
            record = (records or {}).get(backup_id)
            if record is None:
                try:
                    record = self.get(backup_id)
                except BackupError:
                    continue
            if record.lock and record.lock in broken:
                void.add(backup_id)
        return void

    def history_problems(self) -> tuple[list[str], list[str]]:
        """Return (error messages, ids of replayed manifests) from comparing manifests, journal and tombstones."""
        # the journal is listed before the manifests: a backup writes its manifest, then its journal entry, so a
        # backup committing meanwhile never looks like a journal entry whose manifest was removed
        journal = self._entry_ids("journal")
        present = self._names("snapshots")
        tombstone_names = self._names("tombstones")
        tombstones = self._entry_ids("tombstones", tombstone_names)
        errors = []
        # manifests that are not backups (their lock was broken before they were confirmed): prune removes them too
        unconfirmed = self._lock_voided(present - set(journal) - set(tombstones), self._broken_locks(tombstone_names),
                                        journal)
        replayed = sorted((present & set(tombstones)) | unconfirmed)
        # with its journal entry still there, it is a prune that was killed between its tombstone and the manifest's
        # deletion (prune finishes it); a completed prune removed the journal entry, so without one it came back;
        # a tombstone marked "uncommitted" is a backup that lost its lock and could not delete its manifest
        # (prune removes it; nothing was lost, the backup reported failure)
        for backup_id in (b for b in replayed if b in tombstones and b not in journal
                          and tombstones[b].get("reason") != "uncommitted"):
            errors.append(
                f"Backup {backup_id} of VM {tombstones[backup_id].get('vm_name')} was pruned on "
                f"{tombstones[backup_id].get('time')}, but its manifest is back (replayed from an old copy of the "
                "repository). Run prune to remove it again; do not restore it."
            )
        for backup_id in sorted(set(journal) - present - set(tombstones)):
            errors.append(
                f"Backup {backup_id} of VM {journal[backup_id].get('vm_name')} was removed from the repository "
                "outside prune (its journal entry remains, its manifest is gone): someone with write access to the "
                "storage deleted it, or the storage lost it. Restore snapshots/" + backup_id + " from a copy."
            )
        return errors, replayed

    # ------------------------------------------------------------------ the chunk map of a disk
    def disk_chunks(self, record: BackupRecord, disk: DiskRecord, index: Index) -> t.Iterator[tuple[int, bytes, int]]:
        """Yield ``(chunk index, blob id, length)`` of every stored chunk of ``disk``, in order.

        The one check of a disk's map, shared by restore and verify (they disagreed: verify passed maps that
        restore refused). Before a chunk is yielded: the manifest's shape matches the repository (chunk size,
        segment counts, sizes), each map segment matches its digest in the manifest and sits where it should, each
        record lies inside the disk with the right length and its id matches its hash; after the last segment,
        the content digest matches. Raises CorruptMetadataError naming the backup, disk and segment.
        """
        what = f"disk '{disk.name}' of backup {record.id}"
        csize, seg_chunks = disk.chunk_size, disk.segment_chunks
        if csize != self.chunk_size or seg_chunks != self.segment_chunks:
            raise CorruptMetadataError(
                f"The manifest of {what} gives chunk size {csize} / segment size {seg_chunks}, the repository "
                f"{self.chunk_size} / {self.segment_chunks}; the manifest is damaged. Restore from another backup."
            )
        nchunks = chunk_count(disk.size, csize)
        nsegs = (nchunks + seg_chunks - 1) // seg_chunks
        if len(disk.segments) != nsegs or len(disk.segment_digests) != nsegs:
            raise CorruptMetadataError(
                f"The manifest of {what} lists {len(disk.segments)} map segments and {len(disk.segment_digests)} "
                f"digests for a disk of {nsegs} segments; it is damaged. Restore from another backup."
            )
        for seg_no, seg_id in enumerate(disk.segments):
            seg_map = None if seg_id is None else self.read_map(seg_id, index, what)
            if segment_digest(seg_map, seg_no, disk.size, csize, seg_chunks).hex() != disk.segment_digests[seg_no]:
                raise CorruptMetadataError(
                    f"The chunk map segment {seg_no} of {what} does not match its digest in the manifest; the manifest "
                    "or the map is damaged. Restore from another backup."
                )
            if seg_map is None:
                continue
            if seg_map.first != seg_no * seg_chunks or seg_map.chunk_size != csize:
                raise CorruptMetadataError(f"The chunk map segment {seg_no} of {what} is misplaced.")
            for chunk, cid, sha, length in seg_map.iter_stored():
                if chunk >= nchunks or length != chunk_length(chunk, disk.size, csize):
                    raise CorruptMetadataError(f"The chunk map of {what} has a bad record for chunk {chunk}.")
                if self.codec.chunk_id(sha) != cid:
                    raise CorruptMetadataError(
                        f"The chunk map of {what} is inconsistent at chunk #{chunk} (hash does not match id)."
                    )
                yield chunk, cid, length
        if combine_digests([bytes.fromhex(d) for d in disk.segment_digests]) != disk.content_digest:
            raise CorruptMetadataError(f"The content digest of {what} does not match its chunk maps.")

    # ------------------------------------------------------------------ reading objects
    def blob_intact(self, pack: str, entry: PackEntry) -> bool:
        """Whether the copy of a blob at this place of ``pack`` reads, authenticates and matches its id."""
        try:
            raw = self.backend.read_range(pack_object_name(pack), entry.offset, entry.length)
            self.codec.open(entry.blob_type, entry.blob_id, raw)
        except (BackupError, FileNotFoundError):
            return False
        return True

    def pack_headers(self) -> tuple[dict[str, list[PackEntry]], list[str]]:
        """Every pack's entries as its own header lists them, and the packs whose header does not open."""
        headers: dict[str, list[PackEntry]] = {}
        unreadable = []
        for obj, size in self.backend.list("packs"):
            if ".tmp-" in obj:
                continue
            name = obj.rsplit("/", 1)[-1]
            try:
                headers[name] = read_pack_header(self.backend, self.codec, name, size)
            except (CorruptMetadataError, FileNotFoundError):
                unreadable.append(name)
        return headers, unreadable

    def read_blob(self, blob_type: int, blob_id: bytes, index: Index, expected: int | None = None) -> bytes:
        loc = index.get(blob_id)
        if loc is None:
            raise CorruptChunkError(blob_id.hex(), "it is not in the index (missing data)")
        try:
            if member_slot(loc.blob_type) is not None:
                if blob_type != BLOB_DATA:
                    raise IntegrityError("the index lists it as a chunk in a frame")
                return bytes(self.codec.member(self._open_frame(loc), loc.blob_type, blob_id, expected))
            raw = self.backend.read_range(pack_object_name(loc.pack), loc.offset, loc.length)
            return self.codec.open(blob_type, blob_id, raw, expected)
        except FileNotFoundError:
            raise CorruptChunkError(blob_id.hex(), "its pack file is missing", pack=loc.pack) from None
        except IntegrityError as exc:
            raise CorruptChunkError(blob_id.hex(), str(exc), pack=loc.pack) from None

    def _open_frame(self, loc: Location) -> bytes:
        """A frame's plaintext; the last few opened stay cached (readers of single chunks read a frame's chunks in a
        row: an incremental's parent chunks, the NBD export of a backup)."""
        key = (loc.pack, loc.offset)
        with self._frames_lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
                return frame
        frame = self.codec.open_frame(self.backend.read_range(pack_object_name(loc.pack), loc.offset, loc.length))
        with self._frames_lock:
            self._frames[key] = frame
            while len(self._frames) > FRAME_CACHE:
                self._frames.popitem(last=False)
        return frame

    def read_map(self, seg_id: str, index: Index, what: str) -> MapSegment:
        try:
            plain = self.read_blob(BLOB_MAP, bytes.fromhex(seg_id), index)
        except CorruptChunkError as exc:
            raise CorruptMetadataError(
                f"The chunk map segment {seg_id[:16]} of {what} is damaged or missing ({exc.args[0].split(': ', 1)[-1]})"
            ) from None
        return MapSegment.decode(plain, f"{seg_id[:16]} of {what}")

    def manifest_name(self, backup_id: str) -> str:
        if not backup_id or "/" in backup_id or backup_id.startswith("."):
            raise InvalidArgumentError(f"'{backup_id}' is not a valid backup id.")
        return f"snapshots/{backup_id}"

    def get(self, backup_id: str) -> BackupRecord:
        """Return one backup's record. Raises BackupNotFoundError, CorruptMetadataError."""
        name = self.manifest_name(backup_id)
        try:
            blob = self.backend.read(name)
        except FileNotFoundError:
            raise BackupNotFoundError(
                f"There is no backup '{backup_id}' in the repository at {self.backend.location}; list the backups "
                "to find its id (it may have been pruned)."
            ) from None
        what = f"manifest of backup {backup_id}"
        record = BackupRecord.decode(self.codec.open_meta(b"snapshot:" + backup_id.encode(), blob, what), what)
        if record.id != backup_id:
            raise CorruptMetadataError(f"The {what} names another backup ({record.id}); it was moved or replaced.")
        return record

    def list(self, vm_name: str | None = None, include_pruned: bool = False) -> list[BackupRecord]:
        """Return the backups (optionally of one VM), oldest first. Damaged manifests raise CorruptMetadataError.

        A manifest with an authentic tombstone was pruned (it came back from an old copy, or a prune was killed
        before deleting it): it is left out unless ``include_pruned`` (GC and verify, which must see every
        manifest that is there).
        """
        records = []
        tombstoned: set[str] = set() if include_pruned else self._names("tombstones")
        broken = self._broken_locks(tombstoned)
        for name, _size in self.backend.list("snapshots"):
            if ".tmp-" in name:
                continue
            backup_id = name.split("/", 1)[1]
            if backup_id in tombstoned and backup_id in self._entry_ids_of("tombstones", backup_id):
                continue
            try:
                record = self.get(backup_id)
            except BackupNotFoundError:
                continue  # pruned meanwhile
            if vm_name is None or record.vm_name == vm_name:
                records.append(record)
        if broken:
            void = self._lock_voided([r.id for r in records if r.lock], broken, records={r.id: r for r in records})
            records = [r for r in records if r.id not in void]
        records.sort(key=lambda r: (r.time, r.id))
        return records

    # ------------------------------------------------------------------ operations (one unit each)
    def backup(self, vm_name: str, disks: t.Any, vm_definition: t.Any = "", tags: t.Mapping[str, str] | None = None,
               parent: str | None = None, time: datetime.datetime | None = None,
               finalize: t.Callable[[], t.Mapping[str, str]] | None = None) -> BackupRecord:
        """See backup.backup()."""
        return backup_unit.backup(self, vm_name, disks, vm_definition, tags, parent, time, finalize)

    def restore(self, backup_id: str, disk_name: str, target: str | int, sparse: bool = True) -> dict[str, t.Any]:
        """See restore.restore()."""
        from ansible_collections.vmsafe.protect.plugins.module_utils._backup import restore as restore_unit

        return restore_unit.restore(self, backup_id, disk_name, target, sparse)

    def verify(self, backup_id: str | None = None, read_data: bool = False) -> VerifyReport:
        """See check.verify()."""
        from ansible_collections.vmsafe.protect.plugins.module_utils._backup import check as check_unit

        return check_unit.verify(self, backup_id, read_data)

    def rebuild_index(self) -> int:
        """See check.rebuild_index()."""
        from ansible_collections.vmsafe.protect.plugins.module_utils._backup import check as check_unit

        return check_unit.rebuild_index(self)

    def repair(self) -> RepairResult:
        """See check.repair()."""
        from ansible_collections.vmsafe.protect.plugins.module_utils._backup import check as check_unit

        return check_unit.repair(self)

    def prune(self, policy: RetentionPolicy | t.Mapping[str, t.Any], dry_run: bool = False,
              now: datetime.datetime | None = None, vm_name: str | None = None,
              test_records_days: float = 400.0) -> PruneResult:
        """See prune.prune()."""
        from ansible_collections.vmsafe.protect.plugins.module_utils._backup import prune as prune_unit

        return prune_unit.prune(self, policy, dry_run, now, vm_name, test_records_days)

    def gc(self) -> PruneResult:
        """See prune.gc()."""
        from ansible_collections.vmsafe.protect.plugins.module_utils._backup import prune as prune_unit

        return prune_unit.gc(self)
