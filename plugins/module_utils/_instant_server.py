# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""The NBD server of an instant recovery: a detached process that serves a backup's disks read-only.

``vm_instant_restore`` starts it and returns; it outlives the module (a new session, no inherited descriptors, its
output in ``server.log`` of the recovery's state folder) until a later run of the module stops it (``state:
migrated`` or ``absent``) with SIGTERM. It serves each disk on its own Unix socket (mode 0600) with the collection's
NBD server (``_nbd_server.py``) from a ``BackupDiskReader`` (``_backup_reader.py``); all disks share one index and
one **shared repository lock**, so a prune or GC (which need the exclusive lock) cannot delete the packs a running VM
still reads. While it serves it writes its status to ``server.json`` (pid, process start time, sockets, lock state,
failed reads).

Why a copy of the code: the module runs from a temporary AnsiballZ payload that Ansible deletes when the module
returns, so ``copy_code()`` writes the source of the collection's loaded ``module_utils`` into the state folder and
the server runs from there (``python -m ...`` with that folder as PYTHONPATH). Secrets (passphrase, SFTP password,
S3 keys) reach it on its stdin as JSON, never in its argv or environment.

If the lock is lost (the repository could not be reached to refresh it for 15 minutes, or someone ran
``break_lock``), the server logs it, records ``lock: lost`` in its status, and takes a new shared lock as soon as it
can; a prune that ran in between may have deleted packs of the backup, and reads of what the VM had not yet copied
then fail with EIO (counted in ``read_errors``).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import process_start
from ansible_collections.vmsafe.protect.plugins.module_utils._backup_reader import BackupDiskReader
from ansible_collections.vmsafe.protect.plugins.module_utils._nbd_server import NbdServer

PACKAGE = "ansible_collections.vmsafe.protect.plugins.module_utils"
MODULE = f"{PACKAGE}._instant_server"
STATUS_FILE = "server.json"
LOG_FILE = "server.log"
#: how often the server checks that its repository lock is still its own
CHECK_SECONDS = 30.0
#: the engine's units, loaded before the copy: the engine imports some only when first used (restore, check,
#: prune, the S3 backend), and the server must find every one whatever this run of the module touched
ENGINE_UNITS = ("backends", "s3", "backup", "restore", "check", "prune", "retention", "chunker", "sink", "config",
                "crypto", "errors", "index", "locks", "manifest", "packs", "repository")


# --- the module's side -----------------------------------------------------------------------------------------------


def copy_code(dest: str) -> list[str]:
    """Write the source of every loaded module of this collection's module_utils under ``dest``; return the files.

    Works from a git checkout, an installed collection and an AnsiballZ payload alike (the loader gives the source).
    Every package level gets an ``__init__.py``, so this copy shadows any other ``ansible_collections`` on the path.
    """
    for unit in ENGINE_UNITS:
        try:
            importlib.import_module(f"{PACKAGE}._backup.{unit}")
        except ImportError:
            pass  # a unit this version of the engine does not have
    written = []
    for name, module in sorted(sys.modules.items()):
        if module is None or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        loader = getattr(module, "__loader__", None)
        try:
            source = loader.get_source(name) if loader is not None and hasattr(loader, "get_source") else None
        except ImportError:
            source = None
        if source is None and not hasattr(module, "__path__"):
            raise ImportError(f"no source for {name}")
        parts = name.split(".")
        is_package = hasattr(module, "__path__")
        path = os.path.join(dest, *parts, "__init__.py") if is_package else os.path.join(dest, *parts) + ".py"
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(source or "")
        written.append(path)
    parts = PACKAGE.split(".")
    for depth in range(1, len(parts) + 1):  # ansible_collections/, vmsafe/, ... module_utils/
        init = os.path.join(dest, *parts[:depth], "__init__.py")
        if not os.path.exists(init):
            os.makedirs(os.path.dirname(init), mode=0o700, exist_ok=True)
            with open(init, "w", encoding="utf-8"):
                pass
    return written


def alive(pid: int | None, start: int | None) -> bool:
    """Whether the server process ``pid`` (started at ``start``) still runs; a reused pid is not it."""
    if not pid:
        return False
    current = process_start(int(pid))
    return current is not None and (start is None or current == start)


def read_status(folder: str) -> dict[str, t.Any] | None:
    try:
        with open(os.path.join(folder, STATUS_FILE), encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def log_tail(folder: str, limit: int = 2000) -> str:
    try:
        with open(os.path.join(folder, LOG_FILE), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def spawn(folder: str, code: str, config: dict[str, t.Any], timeout: float, python: str | None = None) -> dict[str, t.Any]:
    """Start the server for ``config`` detached and wait until it serves; return its status.

    Raises RuntimeError with the end of its log when it exits or does not serve within ``timeout`` seconds (then it
    is killed).
    """
    import subprocess  # pylint: disable=import-outside-toplevel  # only the module's side starts processes

    try:
        os.unlink(os.path.join(folder, STATUS_FILE))
    except FileNotFoundError:
        pass
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": code, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    with open(os.path.join(folder, LOG_FILE), "ab") as log:
        # not run_command: this process must outlive the module (own session, no inherited descriptors, no wait)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with,ansible-bad-function  # must outlive the module
            [python or sys.executable, "-s", "-m", MODULE], stdin=subprocess.PIPE, stdout=log, stderr=log,
            cwd=folder, env=env, start_new_session=True, close_fds=True)
    try:
        if proc.stdin is not None:
            proc.stdin.write(json.dumps(config).encode("utf-8"))
            proc.stdin.close()
    except BrokenPipeError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        status = read_status(folder)
        if status is not None and status.get("pid") == proc.pid and status.get("state") == "serving":
            return status
        if proc.poll() is not None:
            raise RuntimeError(f"the NBD server exited with status {proc.returncode}: {log_tail(folder)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the NBD server did not serve within {timeout:g} s (killed): {log_tail(folder)}")
        time.sleep(0.05)


def stop(pid: int | None, start: int | None, timeout: float = 30.0) -> bool:
    """Stop the server (SIGTERM, then SIGKILL after ``timeout``); return whether one was running."""
    if not alive(pid, start):
        return False
    try:
        os.kill(int(t.cast(int, pid)), signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while alive(pid, start):
        if time.monotonic() > deadline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
        time.sleep(0.05)
    return True


# --- the server's side -----------------------------------------------------------------------------------------------


def _write_status(folder: str, status: dict[str, t.Any]) -> None:
    partial = os.path.join(folder, STATUS_FILE + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(status, handle)
    os.replace(partial, os.path.join(folder, STATUS_FILE))


def _say(text: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n")
    sys.stderr.flush()


def serve(config: dict[str, t.Any], folder: str) -> int:
    """Serve the disks named in ``config`` until SIGTERM; return the exit status."""
    stop_event = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop_event.set())
    backend = open_backend(config["repository"], **config.get("backend_options", {}))
    repo = Repository.open(backend, config.get("passphrase"))
    repo.lock_wait = float(config.get("lock_wait", 0))
    operation = f"instant recovery of VM {config['vm']} (vm_instant_restore NBD server pid {os.getpid()})"
    lock = repo.lock(False, operation)
    servers: list[NbdServer] = []
    readers: list[BackupDiskReader] = []
    status: dict[str, t.Any] = {"pid": os.getpid(), "start": process_start(os.getpid()), "state": "starting",
                                "backup_id": config["backup_id"], "lock": "held", "read_errors": 0, "last_error": None,
                                "sockets": {}}
    try:
        index = repo.load_index()
        for disk in config["disks"]:
            reader = BackupDiskReader(repo, config["backup_id"], disk["name"], operation, index=index, lock=lock)
            readers.append(reader)
            servers.append(NbdServer(disk["socket"], disk["name"], reader).start())
            status["sockets"][disk["name"]] = disk["socket"]
        status["state"] = "serving"
        _write_status(folder, status)
        _say(f"serving backup {config['backup_id']} disks {', '.join(status['sockets'])}; {operation}")
        while not stop_event.wait(CHECK_SECONDS):
            lock = _keep_lock(repo, lock, operation, config["backup_id"], status)
            errors = sum(s.read_errors for s in servers)
            last = next((r.last_error for r in readers if r.last_error), None)
            if errors != status["read_errors"]:
                _say(f"{errors} read(s) failed so far; last: {last}")
            status.update(read_errors=errors, last_error=last)
            _write_status(folder, status)
    finally:
        for server in servers:
            server.close()
        lock.release()
        repo.close()
    status["state"] = "stopped"
    _write_status(folder, status)
    _say("stopped")
    return 0


def _keep_lock(repo: Repository, lock: t.Any, operation: str, backup_id: str, status: dict[str, t.Any]) -> t.Any:
    """Return the lock to hold from now on: ``lock`` while it is ours, else a new shared lock when one can be taken."""
    try:
        lock.check()
        return lock
    except backup_errors.LockLostError as exc:
        if status["lock"] == "held":
            _say(f"LOCK LOST: {exc} A prune may now delete packs of backup {backup_id}; migrate the VM soon.")
        status["lock"] = "lost"
    try:
        new = repo.lock(False, operation)
    except backup_errors.BackupError as exc:
        _say(f"could not take a new shared lock yet: {exc}")
        return lock
    try:
        repo.get(backup_id)
    except backup_errors.BackupError as exc:
        _say(f"backup {backup_id} is gone from the repository ({exc}); reads of data not yet copied will fail")
    lock.release()
    status["lock"] = "retaken"
    _say("took a new shared lock")
    return new


def main() -> int:
    folder = os.getcwd()
    config = json.loads(sys.stdin.read())
    sys.stdin.close()
    try:
        return serve(config, folder)
    except backup_errors.BackupError as exc:
        _say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
