# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""vmsafe-recover: list, verify and restore backups without Ansible (docs/disaster-recovery.md).

Needs only the backup engine's Python packages (zstandard, cryptography; paramiko for sftp:// repositories) and,
for vmdk/vhdx output, ``qemu-img`` (raw and qcow2 are written by the engine). Run it as a file from any copy of the collection (git checkout or the
extracted release tarball, whatever the folder is called)::

    python3 COLLECTION/plugins/module_utils/_recovery_cli.py --repository /backup/vmsafe list

or, where the collection sits under ``.../ansible_collections/vmsafe/protect``::

    PYTHONPATH=/path/to/collections python3 -m ansible_collections.vmsafe.protect.plugins.module_utils._recovery_cli

Run as a file, it makes ``ansible_collections.vmsafe.protect`` importable from its own location before importing
the engine (the lines above the engine imports); nothing in the engine imports Ansible.
"""

from __future__ import annotations

import os
import sys
import types


def _make_collection_importable() -> None:
    """Register this copy of the collection as the package ``ansible_collections.vmsafe.protect``.

    Only when run as a file (``python3 .../_recovery_cli.py``): the folder holding it need not be named
    ``ansible_collections/vmsafe/protect``, and no Ansible collection loader is there to find it.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    here = os.path.dirname(os.path.abspath(__file__))
    # The script's folder is sys.path[0]; the collection's private modules must not be importable by bare names.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    parent = None
    for name, path in (("ansible_collections", []), ("ansible_collections.vmsafe", []),
                       ("ansible_collections.vmsafe.protect", [root])):
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            module.__path__ = path  # a package: its submodules are looked up in these folders
            sys.modules[name] = module
            if parent is not None:
                setattr(parent, name.rsplit(".", 1)[1], module)
        parent = module


if __name__ == "__main__" and not __package__:
    _make_collection_importable()

# pylint: disable=wrong-import-position
import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import getpass  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import secrets  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import typing as t  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import qcow2  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import restore as restore_unit  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._domain_xml import set_disk_sources  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup_reader import BackupDiskReader  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._nbd_server import NbdServer  # noqa: E402

PROG = "vmsafe-recover"
#: image formats and file extensions, as vm_restore names them (so both tools write the same file names)
EXTENSIONS = {"raw": "img", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx"}


class RecoverError(Exception):
    """A failure the command reports as one line (``str(exc)``) and exit status 1."""


# --- opening the repository ---------------------------------------------------------------------------------------


def read_passphrase(args: argparse.Namespace) -> str | None:
    """The passphrase from --passphrase-file, else $VMSAFE_PASSPHRASE, else None (never from the command line,
    where every user of the host could read it in the process list)."""
    if args.passphrase_file:
        try:
            with open(args.passphrase_file, encoding="utf-8") as handle:
                return handle.read().rstrip("\r\n")
        except OSError as exc:
            raise RecoverError(f"Cannot read the passphrase file {args.passphrase_file}: {exc.strerror}.") from exc
    return os.environ.get("VMSAFE_PASSPHRASE") or None


def open_repo(args: argparse.Namespace) -> Repository:
    """Open the repository named by --repository / $VMSAFE_REPOSITORY. Raises RecoverError."""
    if not args.repository:
        raise RecoverError("No repository given: pass --repository PATH|sftp://user@host/path or set VMSAFE_REPOSITORY.")
    options: dict[str, t.Any] = {}
    if args.repository.startswith("sftp://"):
        if args.sftp_key:
            options["key_filename"] = args.sftp_key
        if os.environ.get("VMSAFE_REPOSITORY_PASSWORD"):
            options["password"] = os.environ["VMSAFE_REPOSITORY_PASSWORD"]
        if args.known_hosts:
            options["known_hosts"] = args.known_hosts
        if args.accept_new_host_key:
            options["host_key_policy"] = "accept_new"
    passphrase = read_passphrase(args)
    try:
        backend = open_backend(args.repository, **options)
        try:
            return Repository.open(backend, passphrase)
        except backup_errors.PassphraseRequiredError:
            if not sys.stdin.isatty():
                raise
            return Repository.open(backend, getpass.getpass(f"Passphrase of {args.repository}: "))
    except backup_errors.BackupError as exc:
        raise RecoverError(f"Failed to open repository {args.repository}: {exc}") from exc


def pick_backup(repo: Repository, args: argparse.Namespace) -> t.Any:
    """The record of --backup, or the newest backup of --vm. Raises RecoverError."""
    try:
        if args.backup:
            return repo.get(args.backup)
        records = repo.list(args.vm)
    except backup_errors.BackupError as exc:
        raise RecoverError(f"Failed to read backup {args.backup or 'list'} in {args.repository}: {exc}") from exc
    if not records:
        raise RecoverError(f"Repository {args.repository} has no backup of VM '{args.vm}'; "
                           f"see them all with: {PROG} list")
    return records[-1]


# --- output -------------------------------------------------------------------------------------------------------


def _utc(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_summary(record: t.Any) -> dict[str, t.Any]:
    """A backup as ``list --json`` prints it (the keys backup_info returns, without its age)."""
    return {
        "id": record.id,
        "vm_name": record.vm_name,
        "time": _utc(record.time),
        "parent": record.parent,
        "mode": record.tags.get("mode", "full" if record.parent is None else "incremental"),
        "size": record.size,
        "disks": [{"name": d.name, "size": d.size, "digest": d.content_digest} for d in record.disks],
    }


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)  # pragma: no cover - the loop always returns


def _say(text: str, err: bool = False) -> None:
    """One line to stdout (or stderr): this is a command-line tool, not a module."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")


def _emit(args: argparse.Namespace, data: t.Any, lines: t.Iterable[str]) -> None:
    if args.json:
        _say(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            _say(line)


# --- libvirt definition for the restored disks -----------------------------------------------------------------------


def libvirt_definition(definition: str, disk_files: dict[str, tuple[str, str]]) -> str:
    """The stored libvirt domain XML with each restored disk pointing at its restored file.

    ``disk_files`` maps a target (``vda``) to (path, format). Name, UUID and MAC addresses are kept: after the loss
    of the host this is the same VM coming back. Backing chains are dropped (a restored image stands alone).
    Raises RecoverError when the definition is not a libvirt domain (VMware and Hyper-V backups).
    """
    try:
        root = ET.fromstring(definition)
    except ET.ParseError as exc:
        raise RecoverError(f"The backup's VM definition is not XML ({exc}); it is not a libvirt VM.") from exc
    if root.tag != "domain":
        raise RecoverError(f"The backup's VM definition is a <{root.tag}>, not a libvirt <domain>.")
    set_disk_sources(root, disk_files)
    return ET.tostring(root, encoding="unicode") + "\n"


# --- commands -----------------------------------------------------------------------------------------------------


def cmd_list(repo: Repository, args: argparse.Namespace) -> int:
    try:
        records = repo.list(args.vm)
    except backup_errors.BackupError as exc:
        raise RecoverError(f"Failed to list the backups in {args.repository}: {exc}") from exc
    rows = [record_summary(r) for r in records]
    lines = [f"{'ID':<34} {'VM':<24} {'TIME':<20} {'MODE':<11} {'SIZE':>10}  DISKS"]
    lines += [f"{r['id']:<34} {r['vm_name']:<24} {r['time']:<20} {r['mode']:<11} {_human(r['size']):>10}  "
              f"{','.join(d['name'] for d in r['disks'])}" for r in rows]
    if not rows:
        lines = [f"No backup{' of VM ' + repr(args.vm) if args.vm else ''} in {args.repository}."]
    _emit(args, rows, lines)
    return 0


def cmd_verify(repo: Repository, args: argparse.Namespace) -> int:
    try:
        report = repo.verify(args.backup, read_data=args.read_data)
    except backup_errors.BackupError as exc:
        raise RecoverError(f"Failed to verify {args.repository}: {exc}") from exc
    data = {
        "ok": report.ok, "backups_checked": report.backups_checked, "chunks_checked": report.chunks_checked,
        "bytes_checked": report.bytes_checked, "errors": list(report.errors),
        "damaged": [dataclasses.asdict(d) for d in report.damaged],
    }
    what = "structure and every chunk's content" if args.read_data else "structure (add --read-data to read every chunk)"
    lines = [f"{'OK' if report.ok else 'DAMAGED'}: {report.backups_checked} backup(s), {report.chunks_checked} "
             f"chunk(s), {_human(report.bytes_checked)} checked: {what}."]
    lines += [f"error: {e}" for e in report.errors]
    lines += [f"damaged: backup {d.backup_id} disk {d.disk_name} offset {d.offset}: {d.reason}" for d in report.damaged]
    _emit(args, data, lines)
    return 0 if report.ok else 1


def cmd_definition(repo: Repository, args: argparse.Namespace) -> int:
    record = pick_backup(repo, args)
    sys.stdout.write(record.vm_definition if record.vm_definition.endswith("\n") else record.vm_definition + "\n")
    return 0


def cmd_break_lock(repo: Repository, args: argparse.Namespace) -> int:
    try:
        removed = repo.break_lock()
    except backup_errors.BackupError as exc:
        raise RecoverError(f"Failed to remove the locks of {args.repository}: {exc}") from exc
    lines = [f"removed the {'exclusive' if lock.get('exclusive') else 'shared'} lock of {lock.get('operation', '?')} "
             f"by host {lock.get('host', '?')} pid {lock.get('pid', '?')} (taken {lock.get('time', '?')})"
             for lock in removed] or ["The repository had no lock."]
    _emit(args, removed, lines)
    return 0


def restore_image(repo: Repository, record: t.Any, disk: str, path: str, fmt: str, timeout: int) -> None:
    """Restore one disk of ``record`` to ``path`` as ``fmt``; nothing is left under ``path`` on failure.

    Raw and qcow2 are written sparse by the engine (qcow2 laid out by _backup/qcow2.py); vmdk and vhdx go through
    a hidden raw file and ``qemu-img convert``, as vm_restore does, so both write the same bytes. Raises RecoverError.
    """
    try:
        if fmt == "raw":
            repo.restore(record.id, disk, path, sparse=True)  # the engine writes <path>.vmsafe-partial, then renames
            return
        entry = record.disk(disk)
        if fmt == "qcow2" and entry is not None and qcow2.supported(entry.chunk_size, entry.size):
            restore_unit.restore(repo, record.id, disk, path, layout=qcow2.Qcow2Layout(entry.size, entry.chunk_size))
            return
        raw = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.vmsafe-raw")
        repo.restore(record.id, disk, raw, sparse=True)
    except backup_errors.BackupError as exc:
        raise RecoverError(f"Failed to restore disk {disk} of backup {record.id}: {exc}") from exc
    # an unpredictable name (qemu-img follows a link planted at a fixed one), made 0600 before it is published
    partial = f"{path}.vmsafe-partial-{secrets.token_hex(6)}"
    try:
        # not a module: the recovery command runs where no Ansible is installed, so there is no run_command
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, raw, partial],  # pylint: disable=ansible-bad-function
                       check=True, capture_output=True, text=True, timeout=timeout)
        os.chmod(partial, 0o600)
        os.replace(partial, path)
    except subprocess.TimeoutExpired as exc:
        raise RecoverError(f"Timed out after {timeout} s converting disk {disk} to {fmt}; nothing was left under "
                           f"{path}. Raise --timeout, or restore with --format raw.") from exc
    except subprocess.CalledProcessError as exc:
        raise RecoverError(f"Failed to convert disk {disk} to {fmt}: {exc.stderr.strip()}") from exc
    except FileNotFoundError as exc:
        raise RecoverError("qemu-img is needed to write vmdk or vhdx images: install qemu-utils "
                           "(or restore with --format raw or qcow2).") from exc
    finally:
        for leftover in (raw, partial):
            if os.path.exists(leftover):
                os.unlink(leftover)


def cmd_restore(repo: Repository, args: argparse.Namespace) -> int:
    record = pick_backup(repo, args)
    names = args.disk or [d.name for d in record.disks]
    unknown = [n for n in names if record.disk(n) is None]
    if unknown:
        raise RecoverError(f"Backup {record.id} has no disk {', '.join(unknown)}; it has "
                           f"{', '.join(d.name for d in record.disks)}.")
    if not os.path.isdir(args.dest):
        raise RecoverError(f"--dest must be an existing directory, got {args.dest!r}.")
    dest = os.path.abspath(args.dest)
    paths = {n: os.path.join(dest, f"{record.vm_name}-{n}-{record.id}.{EXTENSIONS[args.format]}") for n in names}
    outputs = [p for p in paths.values() if os.path.exists(p)]
    if args.libvirt_xml:
        outputs += [args.libvirt_xml] if os.path.exists(args.libvirt_xml) else []
    if outputs:
        raise RecoverError(f"Refusing to overwrite {', '.join(outputs)}: remove it or choose another --dest.")
    xml = None
    if args.libvirt_xml:  # fail before the long part when the backup is not a libvirt VM
        xml = libvirt_definition(record.vm_definition, {n: (paths[n], args.format) for n in names})
    files = []
    for name in names:
        disk = record.disk(name)
        restore_image(repo, record, name, paths[name], args.format, args.timeout)
        files.append({"disk": name, "path": paths[name], "format": args.format, "size": disk.size,
                      "digest": disk.content_digest})
        if not args.json:
            _say(f"restored disk {name} of {record.id} ({_human(disk.size)}, content checked) to {paths[name]}")
    if xml is not None:
        partial = args.libvirt_xml + ".vmsafe-partial"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(xml)
        os.replace(partial, args.libvirt_xml)
        if not args.json:
            _say(f"wrote the VM's libvirt definition (disks pointing at the restored files) to {args.libvirt_xml}")
    if args.json:
        summary = {"backup_id": record.id, "vm_name": record.vm_name, "files": files, "libvirt_xml": args.libvirt_xml}
        _say(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def cmd_serve(repo: Repository, args: argparse.Namespace) -> int:
    """Serve one disk read-only over NBD until SIGINT/SIGTERM (qemu-img, qemu-nbd, guestfish, a VM's backing file)."""
    record = pick_backup(repo, args)
    disk = args.disk or record.disks[0].name
    if os.path.exists(args.socket):
        raise RecoverError(f"{args.socket} exists: remove it (a server that was killed) or choose another --socket.")
    try:
        reader = BackupDiskReader(repo, record.id, disk, operation="serve over NBD")
    except backup_errors.BackupError as exc:
        raise RecoverError(f"Failed to open disk {disk} of backup {record.id}: {exc}") from exc
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with NbdServer(args.socket, disk, reader):
            _say(f"serving disk {disk} of backup {record.id} ({_human(reader.size)}, read-only) on "
                 f"nbd+unix:///{disk}?socket={os.path.abspath(args.socket)}; stop with Ctrl-C or SIGTERM")
            sys.stdout.flush()
            while not stop.wait(1.0):
                pass
    finally:
        reader.close()
    if reader.last_error:
        raise RecoverError(f"Some reads failed: {reader.last_error}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="List, verify and restore vmsafe.protect backups without Ansible.",
        epilog="The passphrase is read from --passphrase-file or $VMSAFE_PASSPHRASE (or asked for on a terminal); "
               "an SFTP password from $VMSAFE_REPOSITORY_PASSWORD. See docs/disaster-recovery.md.")
    parser.add_argument("--repository", "-r", default=os.environ.get("VMSAFE_REPOSITORY"),
                        help="repository path or sftp://user@host[:port]/path (default: $VMSAFE_REPOSITORY)")
    parser.add_argument("--passphrase-file", help="file whose first line is the repository passphrase")
    parser.add_argument("--sftp-key", help="SSH private key for an sftp:// repository")
    parser.add_argument("--known-hosts", help="known_hosts file to check the SFTP server's host key against")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="trust an SFTP server whose host key is not yet known (a changed key is still refused)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_list = sub.add_parser("list", help="list the backups, oldest first")
    p_list.add_argument("--vm", help="only this VM's backups")
    p_list.add_argument("--json", action="store_true", help="print JSON")
    p_list.set_defaults(func=cmd_list)

    p_verify = sub.add_parser("verify", help="check the repository (or one backup); exit 1 when damaged")
    p_verify.add_argument("--backup", help="only this backup")
    p_verify.add_argument("--read-data", action="store_true", help="decrypt and hash every chunk (slow, thorough)")
    p_verify.add_argument("--json", action="store_true", help="print JSON")
    p_verify.set_defaults(func=cmd_verify)

    p_break = sub.add_parser("break-lock", help="remove every lock, e.g. a prune's lock left by the lost host "
                                                "(make sure no vmsafe process still uses the repository)")
    p_break.add_argument("--json", action="store_true", help="print JSON")
    p_break.set_defaults(func=cmd_break_lock)

    for name, func, text in (("restore", cmd_restore, "restore a backup's disks to image files"),
                             ("definition", cmd_definition, "print the VM definition stored with a backup"),
                             ("serve", cmd_serve, "serve one disk of a backup read-only over NBD on a Unix socket")):
        p_cmd = sub.add_parser(name, help=text)
        which = p_cmd.add_mutually_exclusive_group(required=True)
        which.add_argument("--backup", help="the backup id (see list)")
        which.add_argument("--vm", help="the newest backup of this VM")
        p_cmd.set_defaults(func=func)
        if name == "restore":
            p_cmd.add_argument("--dest", required=True, help="existing directory for the image files")
            p_cmd.add_argument("--format", default="qcow2", choices=sorted(EXTENSIONS),
                               help="image format (default qcow2; vmdk and vhdx need qemu-img)")
            p_cmd.add_argument("--disk", action="append", help="only this disk (repeatable; default: all)")
            p_cmd.add_argument("--libvirt-xml", metavar="FILE",
                               help="also write the VM's libvirt definition with its disks pointing at the restored "
                                    "files (same name, UUID and MACs), ready for virsh define")
            p_cmd.add_argument("--timeout", type=int, default=21600, help="seconds each image conversion may take")
            p_cmd.add_argument("--json", action="store_true", help="print JSON")
        if name == "serve":
            p_cmd.add_argument("--disk", help="the disk (default: the backup's first)")
            p_cmd.add_argument("--socket", required=True, help="Unix socket to create (mode 0600)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 failed or damaged, 2 usage)."""
    args = build_parser().parse_args(argv)
    repo = None
    try:
        repo = open_repo(args)
        return int(args.func(repo, args))
    except RecoverError as exc:
        hint = f" Here: {PROG} break-lock." if isinstance(exc.__cause__, backup_errors.LockedError) else ""
        _say(f"{PROG}: error: {exc}{hint}", err=True)
        return 1
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted; no partial file was left under a final name.", err=True)
        return 130
    except BrokenPipeError:  # e.g. "list | head": the reader has gone, which is not an error of ours
        sys.stdout = None  # type: ignore[assignment]  # no flush of the dead pipe at exit
        return 0
    finally:
        if repo is not None:
            repo.close()


if __name__ == "__main__":
    raise SystemExit(main())
