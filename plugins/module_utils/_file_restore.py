# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""File-level restore (module backup_files): a disk of a backup, read on demand by libguestfs over NBD.

The disk is served read-only by the collection's own NBD server (``_nbd_server.py``) from a ``BackupDiskReader``
(``_backup_reader.py``), on a Unix socket in a private folder, and libguestfs (which reads ext2/3/4, XFS, Btrfs,
NTFS, FAT, LVM and partition tables) reads only the blocks it needs: nothing the size of the disk is written.
Every chunk read is authenticated and checked against its id.

libguestfs runs in ``_guestfs_helper.py`` under the system Python (see there why).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import tempfile
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils import _guestfs_helper
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup_reader import BackupDiskReader
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument, OperationTimeout, VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._nbd_server import NbdServer


class FileRestoreError(VmsafeError):
    """Reading files from a backed-up disk failed."""


def pick_disk(record: t.Any, disk: str | None) -> t.Any:
    """The named disk of the backup, or its first. Raises InvalidArgument."""
    if disk is None:
        return record.disks[0]
    found = record.disk(disk)
    if found is None:
        raise InvalidArgument(f"Backup {record.id} has no disk '{disk}'; it has "
                              f"{', '.join(d.name for d in record.disks)}.")
    return found


@contextlib.contextmanager
def serve_disk(repo: t.Any, record: t.Any, disk: str, repository: str) -> t.Iterator[str]:
    """Serve ``disk`` of ``record`` read-only over NBD (export name = disk name); yield the socket path."""
    folder = tempfile.mkdtemp(prefix="vmsafe-files-")  # 0700: only this user reaches the socket
    try:
        try:
            reader = BackupDiskReader(repo, record.id, disk, operation="backup_files")
        except backup_errors.BackupError as exc:
            raise FileRestoreError(f"Repository {repository}: failed to open disk {disk} of backup {record.id}: "
                                   f"{exc}") from exc
        try:
            with NbdServer(os.path.join(folder, "nbd.sock"), disk, reader) as server:
                yield server.path
                if reader.last_error:  # libguestfs saw EIO; say which chunk was damaged
                    raise FileRestoreError(f"Repository {repository}: {reader.last_error}")
        finally:
            reader.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Done(t.NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_helper(request: dict[str, t.Any], python: str, timeout: int, run_command: t.Callable[..., t.Any]
               ) -> dict[str, t.Any]:
    """Run the libguestfs helper under ``python`` through the module's ``run_command`` (argv list, coreutils
    ``timeout``); return its answer. Raises FileRestoreError, OperationTimeout."""
    source = inspect.getsource(_guestfs_helper)
    rc, out, err = run_command(["timeout", "-k", "10", str(max(1, int(timeout))), python, "-c", source],
                               data=json.dumps(request), check_rc=False, expand_user_and_vars=False)
    if rc == 124:
        raise OperationTimeout(f"Reading files with libguestfs took longer than {timeout} s; raise timeout.")
    if rc in (126, 127):
        raise FileRestoreError(f"{python} not found: set guestfs_python to a Python that can import guestfs "
                               "(Debian/Ubuntu: apt-get install libguestfs-tools python3-guestfs).")
    proc = _Done(rc, out, err)
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise FileRestoreError(f"The libguestfs helper ({python}) failed with exit status {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout).strip()[-2000:]}") from None
    if "error" in answer:
        raise FileRestoreError(answer["error"])
    return answer


def read_files(repo: t.Any, record: t.Any, params: dict[str, t.Any], dest: str | None,
               run_command: t.Callable[..., t.Any] | None = None) -> dict[str, t.Any]:
    """List (``dest`` None) or extract ``params['path']`` of one disk of ``record``. Returns the module's result
    keys. Raises InvalidArgument for paths that match nothing, FileRestoreError and OperationTimeout."""
    relative = [p for p in params["path"] if not p.startswith("/")]
    if relative:
        raise InvalidArgument(f"path must be absolute inside the guest (/etc/hosts), got {', '.join(relative)}.")
    disk = pick_disk(record, params["disk"])
    where = f"disk {disk.name} of backup {record.id} (VM {record.vm_name})"
    with serve_disk(repo, record, disk.name, params["repository"]) as socket_path:
        request = {"nbd_socket": socket_path, "export": disk.name, "filesystem": params["filesystem"],
                   "paths": params["path"], "dest": dest, "force": params["force"]}
        try:
            if run_command is None:
                raise FileRestoreError("Internal error: the libguestfs helper needs the module's run_command.")
            answer = run_helper(request, params["guestfs_python"], params["timeout"], run_command)
        except FileRestoreError as exc:
            raise FileRestoreError(f"Failed to read files from {where}: {exc}") from exc
    mounted = ", ".join(f"{dev} ({answer['filesystems'].get(dev, '?')}) on {point}"
                        for point, dev in sorted(answer["mounted"].items()))
    if answer["missing"]:
        raise InvalidArgument(f"Nothing matches {', '.join(repr(m) for m in answer['missing'])} in {where}, "
                              f"filesystem {mounted or 'none'}; list the folder above it (path without dest) to see "
                              f"what is there.")
    return {"backup_id": record.id, "vm_name": record.vm_name, "disk": disk.name, "filesystems": answer["filesystems"],
            "mounted": answer["mounted"], "files": answer["entries"]}
