# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Storage backends: a local directory and SFTP, behind one small interface.

PRIVATE to this collection; no compatibility guarantees.

A backend stores named objects ("config", "packs/ab/abcd...", ...). Names use
"/" as separator on every backend. Writes are atomic: data goes to a temporary
name, is flushed to stable storage, then renamed. The S3 backend (s3.py) implements
the same interface (PUT is atomic there, and ranged GET serves read_range).
"""

from __future__ import annotations

import abc
import errno
import os
import stat as stat_mod
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    BackendError,
    HostKeyError,
    InvalidArgumentError,
    MissingDependencyError,
)

# paramiko is imported on first use: it costs ~150 ms of start-up, which local repositories
# (and quick incremental backups) should not pay.
paramiko: t.Any = None
PARAMIKO_IMPORT_ERROR: str | None = None


def _require_paramiko() -> t.Any:
    """Import paramiko or raise MissingDependencyError naming the pip package."""
    global paramiko, PARAMIKO_IMPORT_ERROR  # pylint: disable=global-statement
    if paramiko is None:
        try:
            import paramiko as _paramiko  # pylint: disable=import-outside-toplevel
        except ImportError:
            import traceback  # pylint: disable=import-outside-toplevel

            PARAMIKO_IMPORT_ERROR = traceback.format_exc()
            raise MissingDependencyError("paramiko", "SFTP repositories", PARAMIKO_IMPORT_ERROR) from None
        paramiko = _paramiko
    return paramiko


TMP_MARK = ".tmp-"


class ObjectWriter(abc.ABC):
    """A streamed write of one object; invisible under its name until commit()."""

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data. Raises BackendError."""

    def write_many(self, parts: t.Sequence[bytes | bytearray | memoryview]) -> None:
        """Append several pieces in order (one system call where the storage allows). Raises BackendError."""
        for part in parts:
            self.write(part)

    @abc.abstractmethod
    def commit(self, exclusive: bool = False) -> None:
        """Flush to stable storage and publish under the final name. Raises BackendError.

        With ``exclusive``, publish only when no object of that name exists: FileExistsError otherwise, and the
        existing object is left as it was.
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the temporary object. Never raises."""


class Backend(abc.ABC):
    """One repository location."""

    #: A human-readable location without secrets, used in messages.
    location: str

    @abc.abstractmethod
    def read(self, name: str) -> bytes:
        """Return the whole object. Raises FileNotFoundError if absent, BackendError on I/O errors."""

    @abc.abstractmethod
    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset``. Raises FileNotFoundError or BackendError."""

    @abc.abstractmethod
    def open_writer(self, name: str) -> ObjectWriter:
        """Start a streamed atomic write of ``name``."""

    def write_atomic(self, name: str, data: bytes, exclusive: bool = False) -> None:
        """Write a whole object atomically and durably (with ``exclusive``, see create_exclusive)."""
        writer = self.open_writer(name)
        try:
            writer.write(data)
            writer.commit(exclusive=exclusive)
        except BaseException:
            writer.abort()
            raise

    def create_exclusive(self, name: str, data: bytes) -> None:
        """Write a whole object durably under ``name`` only if no object of that name exists.

        Raises FileExistsError when it exists (the existing object is never replaced), BackendError on I/O errors.
        This is what makes ``init`` and key changes safe against a second writer: a replacing rename is not.
        """
        self.write_atomic(name, data, exclusive=True)

    @abc.abstractmethod
    def mtime(self, name: str) -> float:
        """Return the object's modification time as the *storage* sees it (epoch seconds).

        Lock staleness compares two such times from the same storage, so no client's clock is trusted.
        Raises FileNotFoundError if absent.
        """

    @abc.abstractmethod
    def list(self, directory: str) -> list[tuple[str, int]]:
        """Return (name, size) of every object below ``directory`` (recursive), temporaries included."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Delete an object; a missing object is not an error."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Tell whether an object exists."""

    @abc.abstractmethod
    def size(self, name: str) -> int:
        """Return the size of an object. Raises FileNotFoundError if absent."""

    @abc.abstractmethod
    def make_dirs(self, directories: t.Iterable[str]) -> None:
        """Create the repository's directories (no-op on object stores)."""

    def local_path(self, name: str) -> str | None:
        """Return a filesystem path for ``name`` when the backend is local, else None."""
        return None

    def abort_incomplete_writes(self, reference: str, min_age: float) -> int:
        """Remove writes that were started but never committed and hold storage outside any object (S3's
        incomplete multipart uploads), started more than ``min_age`` seconds before the storage's modification
        time of the object ``reference``. Only garbage collection calls it, under the exclusive lock (so no live
        writer exists). Returns how many were removed. Backends whose temporaries are objects (``.tmp-``) have
        none: GC deletes those itself."""
        return 0

    def close(self) -> None:
        """Release connections and cached handles."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _durable(name: str) -> bool:
    """Whether a write or delete of object ``name`` must survive a crash of the machine.

    Lock objects need not: a lock only protects processes that run, and a crash of the machine ends them (a lock
    that a crash takes away belonged to a dead process; one that a crash brings back is stale: its owner's boot id
    is not the machine's, or it ages out). Skipping their fsyncs saves three of every run's (about 15 ms here).
    Everything else, tombstones/lock-* (the records of broken locks) included, is durable.
    """
    return not name.startswith(LOCK_PREFIX)


LOCK_PREFIX = "locks/"


#: O_DIRECT needs buffers, offsets and lengths aligned to the device's logical block (512 or 4096 bytes)
DIRECT_ALIGN = 4096
#: each writing thread stages O_DIRECT writes in one reused buffer of this size (a fresh one would page-fault)
DIRECT_STAGE = 1024 * 1024
_stage_local = threading.local()


#: filesystems on which packs are written with O_DIRECT: local block-device filesystems. Elsewhere (NFS, SMB, FUSE,
#: ZFS, tmpfs, unknown) they go through the page cache as before: a network filesystem's direct writes are
#: synchronous round trips, one megabyte at a time, where buffered writes overlap many.
DIRECT_FILESYSTEMS = frozenset({"ext4", "xfs", "btrfs"})


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem that holds ``path`` (from /proc/self/mountinfo), or None when it cannot be told."""
    try:
        st = os.stat(path)
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        found = None
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields, sep, rest = line.partition(" - ")
                ids = fields.split()
                if sep and len(ids) > 2 and ids[2] == device and rest.split():
                    found = rest.split()[0]
        return found
    except OSError:
        return None


def reopen_direct(fd: int) -> int | None:
    """Open the file behind ``fd`` again for writing with O_DIRECT, or return None where unsupported (tmpfs)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or not os.path.exists(f"/proc/self/fd/{fd}"):
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | flag)
    except OSError:
        return None


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite until every byte is written. Raises OSError."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class _DirectSink:
    """Writes a streamed object with O_DIRECT: the bytes go from a staging buffer to the disk, not through the page cache.

    A backup writes gigabytes of packs that nothing reads soon; through the page cache they would evict what the host
    had cached (the VMs' images). The backup's own time is the same either way within the lab's noise (4 GiB full
    backup, six alternating runs: 6.35-6.70 s direct, 5.71-6.67 s buffered; a first profile that put the page-cache
    copy at 1.9 of 11.8 CPU seconds did not hold up). Whole aligned blocks are written as they fill; the last
    partial block is kept (as bytes, so the thread's staging buffer is free for the next object) and written through
    the ordinary descriptor by finish().
    The object is still invisible until the writer's commit (fsync, rename), so a process that dies here leaves only a
    temporary file, as before. Where a direct write is refused (EINVAL: a filesystem or block size that does not take
    it), the same bytes go through the ordinary descriptor and the rest of the object too.
    """

    def __init__(self, fd: int, direct_fd: int, offset: int) -> None:
        self._fd = fd
        self._direct_fd: int | None = direct_fd
        self._offset = offset
        self._tail = b""

    @classmethod
    def open(cls, fd: int) -> "_DirectSink | None":
        """Continue the object at ``fd``'s position (what plain writes put there stays), or None when that position is
        not block-aligned (the writes go on buffered) or O_DIRECT is not available."""
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        if offset % DIRECT_ALIGN:
            return None
        direct_fd = reopen_direct(fd)
        return None if direct_fd is None else cls(fd, direct_fd, offset)

    @staticmethod
    def _stage() -> memoryview:
        stage = getattr(_stage_local, "buf", None)
        if stage is None:
            import mmap  # pylint: disable=import-outside-toplevel

            stage = _stage_local.buf = memoryview(mmap.mmap(-1, DIRECT_STAGE))
        return stage

    def write(self, views: t.Sequence[memoryview]) -> None:
        stage = self._stage()
        filled = len(self._tail)
        stage[:filled] = self._tail
        for view in views:
            while view:
                take = min(len(view), DIRECT_STAGE - filled)
                stage[filled:filled + take] = view[:take]
                filled += take
                view = view[take:]
                if filled == DIRECT_STAGE:
                    self._put(stage, DIRECT_STAGE)
                    filled = 0
        whole = filled - filled % DIRECT_ALIGN
        if whole:
            self._put(stage, whole)
        self._tail = bytes(stage[whole:filled])

    def _put(self, stage: memoryview, length: int) -> None:
        if self._direct_fd is not None:
            try:
                pwrite_all(self._direct_fd, stage[:length], self._offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.close()
        if self._direct_fd is None:
            pwrite_all(self._fd, stage[:length], self._offset)
        self._offset += length

    def finish(self) -> None:
        """Write the last partial block (buffered: it need not be aligned) and close the direct descriptor."""
        if self._tail:
            pwrite_all(self._fd, self._tail, self._offset)
            self._offset += len(self._tail)
            self._tail = b""
        self.close()

    def close(self) -> None:
        if self._direct_fd is not None:
            try:
                os.close(self._direct_fd)
            except OSError:
                pass
            self._direct_fd = None


class _LocalWriter(ObjectWriter):
    def __init__(self, backend: "LocalBackend", name: str) -> None:
        self._backend = backend
        self._final = backend._path(name)
        self._durable = _durable(name)
        directory = os.path.dirname(self._final)
        self._dir = directory
        self._new_dir = False
        self._tmp = f"{self._final}{TMP_MARK}{os.urandom(6).hex()}"
        try:
            self._fd: int | None = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # the new folder (packs/ab/) must survive a crash as much as the pack in it will: its parent is
            # fsynced at commit, off the thread that fills the pack (a pack's commit runs on the sink's syncer)
            self._new_dir = True
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise BackendError(
                f"Cannot create '{self._tmp}': {exc.strerror}. Check permissions and free space."
            ) from exc
        # streamed writes (packs) go to the disk with O_DIRECT from write_many's first call on: see _DirectSink
        self._direct: _DirectSink | None = None
        self._direct_tried = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._fd is None:
            raise BackendError("write after commit/abort")
        if self._direct is not None:
            self.write_many([data])
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise BackendError(
                f"Cannot write '{self._tmp}': {exc.strerror}. Check free space on the repository."
            ) from exc

    def write_many(self, parts: t.Sequence[bytes | bytearray | memoryview]) -> None:
        if self._fd is None:
            raise BackendError("write after commit/abort")
        if not self._direct_tried:
            self._direct_tried = True
            if self._backend.direct_writes(self._dir):
                self._direct = _DirectSink.open(self._fd)
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        if self._direct is not None:
            try:
                self._direct.write(views)
            except OSError as exc:
                raise BackendError(
                    f"Cannot write '{self._tmp}': {exc.strerror}. Check free space on the repository."
                ) from exc
            return
        first = 0
        try:
            while first < len(views):
                written = os.writev(self._fd, views[first:first + 512])
                while first < len(views) and written >= len(views[first]):
                    written -= len(views[first])
                    first += 1
                if written:
                    views[first] = views[first][written:]
        except OSError as exc:
            raise BackendError(
                f"Cannot write '{self._tmp}': {exc.strerror}. Check free space on the repository."
            ) from exc

    def commit(self, exclusive: bool = False) -> None:
        if self._fd is None:
            raise BackendError("commit after commit/abort")
        try:
            if self._direct is not None:
                self._direct.finish()
                self._direct = None
            if self._durable:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if exclusive:
                # link() fails with EEXIST where rename() would replace: the no-overwrite publish
                os.link(self._tmp, self._final)
                os.unlink(self._tmp)
            else:
                os.rename(self._tmp, self._final)
        except FileExistsError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise BackendError(f"Cannot store '{self._final}': {exc.strerror}.") from exc
        if self._durable:
            _fsync_dir(self._dir)
            if self._new_dir:
                _fsync_dir(os.path.dirname(self._dir))

    def abort(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        try:
            os.unlink(self._tmp)
        except OSError:
            pass


class LocalBackend(Backend):
    """A repository in a local directory (or a mounted filesystem)."""

    def __init__(self, path: str) -> None:
        self.root = os.path.abspath(path)
        self.location = self.root
        self._fds: dict[str, int] = {}
        self._direct_by_device: dict[int, bool] = {}

    def direct_writes(self, directory: str) -> bool:
        """Whether streamed writes (packs) into ``directory`` use O_DIRECT: on DIRECT_FILESYSTEMS only."""
        try:
            device = os.stat(directory).st_dev
        except OSError:
            return False
        allowed = self._direct_by_device.get(device)
        if allowed is None:
            allowed = self._direct_by_device[device] = filesystem_type(directory) in DIRECT_FILESYSTEMS
        return allowed

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise InvalidArgumentError(f"Invalid object name '{name}'.")
        return os.path.join(self.root, *name.split("/"))

    def local_path(self, name: str) -> str | None:
        return self._path(name)

    def read(self, name: str) -> bytes:
        try:
            with open(self._path(name), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise BackendError(f"Cannot read '{self._path(name)}': {exc.strerror}.") from exc

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        fd = self._fds.get(name)
        try:
            if fd is None:
                if len(self._fds) > 64:
                    self._close_fds()
                fd = os.open(self._path(name), os.O_RDONLY)
                self._fds[name] = fd
            data = os.pread(fd, length, offset)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise BackendError(f"Cannot read '{self._path(name)}': {exc.strerror}.") from exc
        if len(data) != length:
            raise BackendError(
                f"Short read of '{self._path(name)}' at offset {offset}: wanted {length} bytes, got {len(data)}. "
                "The file is truncated; run verify and restore from another backup."
            )
        return data

    def open_writer(self, name: str) -> ObjectWriter:
        return _LocalWriter(self, name)

    def mtime(self, name: str) -> float:
        return os.stat(self._path(name)).st_mtime

    def list(self, directory: str) -> list[tuple[str, int]]:
        base = self._path(directory)
        found: list[tuple[str, int]] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for filename in files:
                try:
                    size = os.stat(os.path.join(dirpath, filename)).st_size
                except FileNotFoundError:
                    continue
                found.append((f"{rel}/{filename}", size))
        found.sort()
        return found

    def delete(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        path = self._path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(f"Cannot delete '{path}': {exc.strerror}.") from exc
        # a delete that a crash can undo would resurrect a pruned manifest or a pack GC counted as gone
        if _durable(name):
            _fsync_dir(os.path.dirname(path))

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def size(self, name: str) -> int:
        return os.stat(self._path(name)).st_size

    def make_dirs(self, directories: t.Iterable[str]) -> None:
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            for directory in directories:
                os.makedirs(self._path(directory), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"Cannot create the repository directory '{self.root}': {exc.strerror}.") from exc
        _fsync_dir(self.root)
        _fsync_dir(os.path.dirname(self.root))

    def _close_fds(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def close(self) -> None:
        self._close_fds()


# --------------------------------------------------------------------------- SFTP

HOST_KEY_POLICIES = ("strict", "accept_new")


class _SFTPWriter(ObjectWriter):
    def __init__(self, backend: "SFTPBackend", name: str) -> None:
        self._backend = backend
        self._name = name
        self._final = backend._path(name)
        self._tmp = f"{self._final}{TMP_MARK}{os.urandom(6).hex()}"
        with backend.lock:
            sftp = backend._sftp()
            try:
                self._file: t.Any = sftp.open(self._tmp, "wbx")
            except IOError as exc:
                if getattr(exc, "errno", None) == errno.ENOENT:
                    backend._mkdirs(os.path.dirname(self._final))
                    self._file = sftp.open(self._tmp, "wbx")
                else:
                    raise BackendError(f"Cannot create '{self._tmp}' on {backend.location}: {exc}.") from exc
            try:
                self._file.chmod(0o600)  # backups are nobody else's business, whatever the server's umask
            except IOError:
                pass
            self._file.set_pipelined(True)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with self._backend.lock:
            try:
                self._file.write(bytes(data))
            except (IOError, OSError) as exc:
                raise BackendError(f"Cannot write '{self._tmp}' on {self._backend.location}: {exc}.") from exc

    def commit(self, exclusive: bool = False) -> None:
        with self._backend.lock:
            sftp = self._backend._sftp()
            try:
                self._file.flush()
                try:
                    sftp._request(paramiko.sftp.CMD_EXTENDED, "fsync@openssh.com", self._file.handle)
                except IOError:
                    # Servers without the fsync extension still rename atomically; durability then
                    # depends on the server's own flushing.
                    pass
                self._file.close()
                self._file = None
                if exclusive:
                    # SSH_FXP_RENAME (not the posix-rename extension) fails when the target exists
                    try:
                        sftp.rename(self._tmp, self._final)
                    except IOError:
                        if self._backend.exists(self._name):
                            self.abort()
                            raise FileExistsError(self._final) from None
                        raise
                else:
                    sftp.posix_rename(self._tmp, self._final)
            except FileExistsError:
                raise
            except (IOError, OSError) as exc:
                self.abort()
                raise BackendError(f"Cannot store '{self._final}' on {self._backend.location}: {exc}.") from exc

    def abort(self) -> None:
        with self._backend.lock:
            try:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                self._backend._sftp().remove(self._tmp)
            except Exception:  # pylint: disable=broad-except  # abort must never raise
                pass


def _pin_on_first_use_policy(known_hosts: str) -> t.Any:
    """A host key policy that records an unknown server's key in ``known_hosts`` (the file the check reads) and
    fails when it cannot: accepting a key without pinning it would accept any later key too."""

    class PinOnFirstUse(paramiko.MissingHostKeyPolicy):  # type: ignore[misc,name-defined]
        def missing_host_key(self, client: t.Any, hostname: str, key: t.Any) -> None:
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n".encode("ascii")
            try:
                directory = os.path.dirname(os.path.abspath(known_hosts))
                os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)  # one write of one line: an atomic append
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise HostKeyError(
                    f"The host key of {hostname} is new and could not be recorded in '{known_hosts}' "
                    f"({exc.strerror}); without pinning it, any later key would be accepted too. Make that file "
                    "writable or add the key yourself (ssh-keyscan)."
                ) from exc
            client.get_host_keys().add(hostname, key.get_name(), key)

    return PinOnFirstUse()


class SFTPBackend(Backend):
    """A repository on an SFTP server (paramiko), host key checked."""

    def __init__(
        self,
        host: str,
        path: str,
        username: str | None = None,
        port: int = 22,
        password: str | None = None,
        key_filename: str | None = None,
        known_hosts: str | None = None,
        host_key_policy: str = "strict",
        timeout: float = 30.0,
    ) -> None:
        _require_paramiko()
        if host_key_policy not in HOST_KEY_POLICIES:
            raise InvalidArgumentError(
                f"host_key_policy must be one of {', '.join(HOST_KEY_POLICIES)}, not '{host_key_policy}'."
            )
        self.host = host
        self.port = port
        self.username = username
        self.root = path.rstrip("/") or "/"
        self.location = f"sftp://{username + '@' if username else ''}{host}:{port}{self.root}"
        self._password = password
        self._key_filename = key_filename
        self._known_hosts = known_hosts
        self._policy = host_key_policy
        self._timeout = timeout
        self._client: t.Any = None
        self._sftp_client: t.Any = None
        self._handles: dict[str, t.Any] = {}
        # paramiko's SFTPClient matches replies to requests per channel and is not safe for
        # concurrent requests from several threads (pack writer, syncer, readers): serialise.
        self.lock = threading.RLock()
        self._connect()

    def __repr__(self) -> str:
        return f"<SFTPBackend {self.location}>"

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        known = self._known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        try:
            if os.path.exists(known):
                client.load_host_keys(known)
        except (IOError, paramiko.SSHException) as exc:
            raise HostKeyError(f"Cannot read the known_hosts file '{known}': {exc}.") from exc
        if self._policy == "accept_new":
            client.set_missing_host_key_policy(_pin_on_first_use_policy(known))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.username,
                password=self._password,
                key_filename=self._key_filename,
                timeout=self._timeout,
                banner_timeout=self._timeout,
                auth_timeout=self._timeout,
                allow_agent=False,
                look_for_keys=self._key_filename is None and self._password is None,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"The host key of {self.host}:{self.port} does not match the one in '{known}'. This may be an "
                "attack or a reinstalled server; verify the server's fingerprint and update known_hosts."
            ) from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"The host key of {self.host}:{self.port} is unknown (not in '{known}'). Add it after checking "
                    f"its fingerprint (ssh-keyscan -p {self.port} {self.host} >> {known}), or pass "
                    "host_key_policy='accept_new' to trust it on first use."
                ) from exc
            raise BackendError(f"SSH connection to {self.host}:{self.port} failed: {exc}.") from exc
        except OSError as exc:
            client.close()
            raise BackendError(
                f"Cannot connect to {self.host}:{self.port}: {exc}. Check the host, port and firewall."
            ) from exc
        except HostKeyError:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)  # a dead server or a dropped NAT entry is noticed, not waited on forever
        self._client = client
        self._sftp_client = client.open_sftp()
        # every SFTP request gives up after the timeout: a hung server fails the operation instead of blocking it
        # (and with it the lock's refresh) forever
        self._sftp_client.get_channel().settimeout(self._timeout)

    def _sftp(self) -> t.Any:
        return self._sftp_client

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise InvalidArgumentError(f"Invalid object name '{name}'.")
        return f"{self.root}/{name}"

    def _mkdirs(self, path: str) -> None:
        sftp = self._sftp()
        parts = [p for p in path.split("/") if p]
        current = "/" if path.startswith("/") else ""
        for part in parts:
            current = f"{current}{part}" if current.endswith("/") or not current else f"{current}/{part}"
            try:
                sftp.stat(current)
            except IOError:
                try:
                    sftp.mkdir(current, mode=0o700)
                except IOError as exc:
                    try:
                        sftp.stat(current)
                    except IOError:
                        raise BackendError(f"Cannot create '{current}' on {self.location}: {exc}.") from exc

    def read(self, name: str) -> bytes:
        with self.lock:
            try:
                with self._sftp().open(self._path(name), "rb") as handle:
                    handle.prefetch()
                    return handle.read()
            except IOError as exc:
                if getattr(exc, "errno", None) == errno.ENOENT:
                    raise FileNotFoundError(name) from exc
                raise BackendError(f"Cannot read '{name}' on {self.location}: {exc}.") from exc

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self.lock:
            try:
                handle = self._handles.get(name)
                if handle is None:
                    if len(self._handles) > 16:
                        self._close_handles()
                    handle = self._sftp().open(self._path(name), "rb")
                    self._handles[name] = handle
                handle.seek(offset)
                data = handle.read(length)
            except IOError as exc:
                if getattr(exc, "errno", None) == errno.ENOENT:
                    raise FileNotFoundError(name) from exc
                raise BackendError(f"Cannot read '{name}' on {self.location}: {exc}.") from exc
            if len(data) != length:
                raise BackendError(
                    f"Short read of '{name}' on {self.location} at offset {offset}: wanted {length} bytes, got "
                    f"{len(data)}. The file is truncated; run verify and restore from another backup."
                )
            return data

    def open_writer(self, name: str) -> ObjectWriter:
        return _SFTPWriter(self, name)

    def mtime(self, name: str) -> float:
        with self.lock:
            try:
                return float(self._sftp().stat(self._path(name)).st_mtime or 0)
            except IOError as exc:
                raise FileNotFoundError(name) from exc

    def list(self, directory: str) -> list[tuple[str, int]]:
        with self.lock:
            found: list[tuple[str, int]] = []
            sftp = self._sftp()

            def walk(rel: str) -> None:
                try:
                    entries = sftp.listdir_attr(self._path(rel))
                except IOError as exc:
                    if getattr(exc, "errno", None) == errno.ENOENT:
                        return
                    raise BackendError(f"Cannot list '{rel}' on {self.location}: {exc}.") from exc
                for entry in entries:
                    child = f"{rel}/{entry.filename}"
                    if entry.st_mode is not None and stat_mod.S_ISDIR(entry.st_mode):
                        walk(child)
                    else:
                        found.append((child, int(entry.st_size or 0)))

            walk(directory)
            found.sort()
            return found

    def delete(self, name: str) -> None:
        with self.lock:
            handle = self._handles.pop(name, None)
            if handle is not None:
                handle.close()
            try:
                self._sftp().remove(self._path(name))
            except IOError as exc:
                if getattr(exc, "errno", None) == errno.ENOENT:
                    return
                raise BackendError(f"Cannot delete '{name}' on {self.location}: {exc}.") from exc

    def exists(self, name: str) -> bool:
        with self.lock:
            try:
                self._sftp().stat(self._path(name))
                return True
            except IOError:
                return False

    def size(self, name: str) -> int:
        with self.lock:
            try:
                return int(self._sftp().stat(self._path(name)).st_size or 0)
            except IOError as exc:
                raise FileNotFoundError(name) from exc

    def make_dirs(self, directories: t.Iterable[str]) -> None:
        with self.lock:
            self._mkdirs(self.root)
            for directory in directories:
                self._mkdirs(self._path(directory))

    def _close_handles(self) -> None:
        for handle in self._handles.values():
            try:
                handle.close()
            except IOError:
                pass
        self._handles.clear()

    def close(self) -> None:
        with self.lock:
            self._close_handles()
            if self._sftp_client is not None:
                self._sftp_client.close()
                self._sftp_client = None
            if self._client is not None:
                self._client.close()
                self._client = None


def _local_backend(path: str, options: dict[str, t.Any]) -> LocalBackend:
    if options:
        raise InvalidArgumentError(f"Local repositories take no options, got: {', '.join(sorted(options))}.")
    if not path:
        raise InvalidArgumentError("The repository path is empty.")
    return LocalBackend(path)


def open_backend(url_or_path: str, **options: t.Any) -> Backend:
    """Open a backend from ``/path``, ``file:///path``, ``sftp://user@host[:port]/path`` or ``s3://bucket/prefix``.

    SFTP options: ``key_filename``, ``password``, ``known_hosts``, ``host_key_policy``
    (``strict`` by default: unknown host keys are refused), ``timeout``.
    S3 options: the keyword arguments of ``s3.S3Backend`` (``endpoint_url``, ``region``, ``access_key``,
    ``secret_key``, ``ca_bundle``, ``validate_certs``, ...); see ``s3.OPTIONS``.
    Raises InvalidArgumentError for unknown schemes or options, BackendError/HostKeyError on connect.
    """
    if url_or_path.startswith("/") or ":" not in url_or_path:
        return _local_backend(url_or_path, options)  # what urlsplit calls scheme-less, without importing urllib
    import urllib.parse  # pylint: disable=import-outside-toplevel

    parsed = urllib.parse.urlsplit(url_or_path)
    if parsed.scheme in ("", "file"):
        return _local_backend(parsed.path if parsed.scheme == "file" else url_or_path, options)
    if parsed.scheme == "sftp":
        allowed = {"key_filename", "password", "known_hosts", "host_key_policy", "timeout"}
        unknown = set(options) - allowed
        if unknown:
            raise InvalidArgumentError(
                f"Unknown SFTP option(s): {', '.join(sorted(unknown))}. Allowed: {', '.join(sorted(allowed))}."
            )
        if not parsed.hostname:
            raise InvalidArgumentError(f"The SFTP URL '{url_or_path}' has no host; use sftp://user@host[:port]/path.")
        if parsed.password is not None:
            # never echoed: the URL lands in task results, logs and AWX job events, the password must not
            raise InvalidArgumentError(
                "The SFTP repository URL carries a password. Give it in repository_password (kept out of logs), or "
                "better use a key (repository_key_file), and write the URL as sftp://user@host[:port]/path."
            )
        return SFTPBackend(
            host=parsed.hostname,
            port=parsed.port or 22,
            username=urllib.parse.unquote(parsed.username) if parsed.username else None,
            path=urllib.parse.unquote(parsed.path) or "/",
            password=options.pop("password", None),
            **options,
        )
    if parsed.scheme == "s3":
        from ansible_collections.vmsafe.protect.plugins.module_utils._backup import s3  # pylint: disable=import-outside-toplevel

        allowed = set(s3.OPTIONS)
        unknown = set(options) - allowed
        if unknown:
            raise InvalidArgumentError(
                f"Unknown S3 option(s): {', '.join(sorted(unknown))}. Allowed: {', '.join(sorted(allowed))}."
            )
        bucket, prefix = s3.parse_s3_url(url_or_path)
        return s3.S3Backend(bucket, prefix, **options)
    raise InvalidArgumentError(
        f"Unsupported repository URL scheme '{parsed.scheme}'. Use a local path, sftp://user@host[:port]/path or "
        "s3://bucket/prefix."
    )
