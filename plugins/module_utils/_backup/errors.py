# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Exceptions of the backup engine.

PRIVATE to this collection; no compatibility guarantees.

Every exception derives from :class:`BackupError`. ``str(exc)`` is meant to be
shown to the user as-is: it names the problem and the way out. Messages never
contain passphrases or keys.
"""

from __future__ import annotations

import typing as t


class BackupError(Exception):
    """Base class. ``str(exc)`` is a user-facing message naming problem and fix."""


class MissingDependencyError(BackupError):
    """A third-party Python package the engine needs is not installed."""

    def __init__(self, package: str, purpose: str, traceback_text: str | None = None) -> None:
        self.package = package
        self.traceback_text = traceback_text
        super().__init__(
            f"The Python package '{package}' is required for {purpose} but could not be imported. "
            f"Install it on the host that runs the backup: pip install {package}"
        )


class BackendError(BackupError):
    """The storage backend failed (I/O error, connection lost, permission denied)."""


class HostKeyError(BackendError):
    """The SFTP server's host key is unknown or does not match."""


class RepositoryNotFoundError(BackupError):
    """There is no repository at the given location."""


class RepositoryExistsError(BackupError):
    """init() was asked to create a repository where one already exists."""


class RepositoryFormatError(BackupError):
    """The repository config is missing, unreadable or of an unsupported version."""


class WrongPassphraseError(BackupError):
    """The passphrase does not unlock the repository key."""


class PassphraseRequiredError(BackupError):
    """The repository is encrypted and no passphrase was given."""


class LockedError(BackupError):
    """Another process holds a conflicting lock on the repository."""

    def __init__(self, message: str, holders: t.Sequence[t.Mapping[str, t.Any]] = ()) -> None:
        self.holders = list(holders)
        super().__init__(message)


class LockLostError(BackupError):
    """Our lock was removed or could not be refreshed in time: nothing more may be committed or deleted."""


class BackupNotFoundError(BackupError):
    """No backup with the given id exists."""


class DiskNotFoundError(BackupError):
    """The backup exists but has no disk of that name."""


class SourceReadError(BackupError):
    """Reading a disk source failed during a backup (the backup is not recorded)."""


class RestoreTargetError(BackupError):
    """The restore target cannot be opened or written."""


class InvalidArgumentError(BackupError):
    """The caller passed an argument the engine cannot accept."""


class IntegrityError(BackupError):
    """Stored data failed an integrity check (authentication tag, hash, structure)."""


class CorruptChunkError(IntegrityError):
    """A data chunk failed its check; names backup, disk and chunk where known."""

    def __init__(
        self,
        chunk_id: str,
        reason: str,
        backup_id: str | None = None,
        disk_name: str | None = None,
        chunk_index: int | None = None,
        offset: int | None = None,
        pack: str | None = None,
    ) -> None:
        self.chunk_id = chunk_id
        self.backup_id = backup_id
        self.disk_name = disk_name
        self.chunk_index = chunk_index
        self.offset = offset
        self.pack = pack
        where = f"chunk {chunk_id[:16]}"
        if chunk_index is not None:
            where += f" (chunk #{chunk_index}"
            if offset is not None:
                where += f", disk offset {offset}"
            where += ")"
        if disk_name is not None:
            where += f" of disk '{disk_name}'"
        if backup_id is not None:
            where += f" in backup {backup_id}"
        if pack is not None:
            where += f", stored in pack {pack[:16]}"
        super().__init__(
            f"Integrity check failed for {where}: {reason}. The stored data is damaged; nothing wrong was "
            "written. Run verify with read_data to list every affected backup, restore from another backup "
            "that does not use this chunk, and check the storage for faults."
        )


class CorruptMetadataError(IntegrityError):
    """An index, manifest, pack header or map segment is damaged."""
