# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Read files out of a disk image with libguestfs; run by the system Python, not imported by the modules' code.

libguestfs' Python binding is a Debian package (python3-guestfs) that only the system interpreter (/usr/bin/python3)
can import, while the modules may run under another Python (a venv, pyenv). So ``_file_restore.py`` runs this
file's source with that interpreter (``python3 -c SOURCE``), a JSON request on stdin and a JSON answer on stdout.
Standard library and ``guestfs`` only.

Request: ``{"nbd_socket", "export" (the disk, served read-only over NBD), "filesystem" (device or null: the OS's filesystems, or the only one),
"paths" (absolute globs), "dest" (folder, or null to list only), "force"}``.
Answer: ``{"filesystems": {device: type}, "mounted": {mountpoint: device}, "entries": [...], "missing": [...]}`` or
``{"error": "..."}`` (exit status 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import typing as t

try:
    import guestfs
except ImportError:  # pragma: no cover - only the system Python with python3-guestfs has it
    guestfs = None

NOT_MOUNTABLE = ("swap", "unknown", "")


class HelperError(Exception):
    """Reported to the caller as {"error": str(exc)}."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "link")):
        if test(mode):
            return name
    return "other"


def _entry(path: str, st: t.Mapping[str, int], link: str | None = None, matched: bool = False) -> dict[str, t.Any]:
    entry = {"path": path, "matched": matched, "type": _kind(st["st_mode"]), "size": st["st_size"],
             "mode": "%04o" % stat.S_IMODE(st["st_mode"]), "uid": st["st_uid"], "gid": st["st_gid"],
             "mtime": st["st_mtime_sec"]}
    if link is not None:
        entry["link_target"] = link
    return entry


def mount(g: t.Any, filesystem: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Mount read-only: the named filesystem at /, else the OS's filesystems by inspection, else the only one."""
    found = g.list_filesystems()
    usable = {dev: kind for dev, kind in found.items() if kind not in NOT_MOUNTABLE}
    if filesystem:
        if filesystem not in usable:
            raise HelperError(f"the disk has no filesystem {filesystem}; it has: "
                              f"{', '.join(f'{d} ({k})' for d, k in sorted(usable.items())) or 'none'}")
        g.mount_ro(filesystem, "/")
        return found, {"/": filesystem}
    roots = g.inspect_os()
    if roots:
        points = g.inspect_get_mountpoints(roots[0])
        mounted = {}
        for point in sorted(points, key=len):  # "/" before "/boot"
            try:
                g.mount_ro(points[point], point)
                mounted[point] = points[point]
            except RuntimeError:  # e.g. /boot on a filesystem the appliance lacks a driver for: the rest still reads
                continue
        return found, mounted
    if len(usable) == 1:
        (device,) = usable
        g.mount_ro(device, "/")
        return found, {"/": device}
    raise HelperError("the disk holds no recognisable operating system and "
                      + (f"several filesystems ({', '.join(f'{d} ({k})' for d, k in sorted(usable.items()))}): "
                         "choose one with the filesystem option" if usable else "no filesystem libguestfs can read"))


def expand(g: t.Any, patterns: list[str]) -> tuple[list[str], list[str]]:
    """(matched paths in order without duplicates, patterns that match nothing)."""
    matched: list[str] = []
    missing = []
    for pattern in patterns:
        hits = g.glob_expand_opts(pattern, directoryslash=False)
        if not hits:
            missing.append(pattern)
        for hit in hits:
            if hit not in matched:
                matched.append(hit)
    return matched, missing


def listing(g: t.Any, paths: list[str]) -> list[dict[str, t.Any]]:
    """Each path, and a directory's direct children after it."""
    out = []
    for path in paths:
        st = g.lstatns(path)
        out.append(_entry(path, st, g.readlink(path) if stat.S_ISLNK(st["st_mode"]) else None, matched=True))
        if stat.S_ISDIR(st["st_mode"]):
            names = sorted(g.ls(path))
            for name, child in zip(names, g.lstatnslist(path, names) if names else []):
                full = path.rstrip("/") + "/" + name
                out.append(_entry(full, child, g.readlink(full) if stat.S_ISLNK(child["st_mode"]) else None))
    return out


def _target(dest: str, path: str) -> str:
    target = os.path.normpath(os.path.join(dest, path.lstrip("/")))
    if target != dest and not target.startswith(dest.rstrip("/") + "/"):
        raise HelperError(f"the path {path} would be written outside dest")
    return target


def _apply(path: str, st: t.Mapping[str, int]) -> None:
    os.lchown(path, st["st_uid"], st["st_gid"])
    if not stat.S_ISLNK(st["st_mode"]):
        os.chmod(path, stat.S_IMODE(st["st_mode"]))
        os.utime(path, (st["st_atime_sec"], st["st_mtime_sec"]))


def _parents(g: t.Any, dest: str, path: str) -> None:
    """Create dest/<parents of path> with the guest's owner and mode (dest/etc for /etc/hosts)."""
    parts = [p for p in path.split("/") if p][:-1]
    for depth in range(1, len(parts) + 1):
        guest = "/" + "/".join(parts[:depth])
        local = _target(dest, guest)
        if not os.path.lexists(local):
            os.mkdir(local, 0o700)
            _apply(local, g.statns(guest))
        elif os.path.islink(local) or not os.path.isdir(local):
            raise HelperError(f"{local} is in the way of {path} (not a folder)")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_local(guest_path: str, local: str, matched: bool = False) -> dict[str, t.Any]:
    st = os.lstat(local)
    entry = {"path": guest_path, "matched": matched, "dest": local, "type": _kind(st.st_mode), "size": st.st_size,
             "mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
    if stat.S_ISREG(st.st_mode):
        entry["sha256"] = _sha256(local)
    elif stat.S_ISLNK(st.st_mode):
        entry["link_target"] = os.readlink(local)
    return entry


def extract(g: t.Any, paths: list[str], dest: str, force: bool) -> list[dict[str, t.Any]]:
    """Copy each path (folders recursively) to dest/<path>, keeping owner, mode and times. Returns what was written."""
    dest = os.path.realpath(dest)
    targets = [(path, _target(dest, path)) for path in paths]
    if not force:
        existing = [local for _path, local in targets if os.path.lexists(local)]
        if existing:
            raise HelperError(f"{', '.join(existing)} already exist(s); set force: true to overwrite")
    written = []
    for path, local in targets:
        st = g.lstatns(path)
        _parents(g, dest, path)
        if stat.S_ISDIR(st["st_mode"]):
            os.makedirs(local, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=dest, prefix=".vmsafe-files-", suffix=".tar") as tar:
                g.tar_out(path, tar.name, numericowner=True)
                # GNU tar keeps numeric owners and modes as root and never writes through a symlink it extracted
                # not a module: this file runs under the system's /usr/bin/python3, which has no AnsibleModule
                subprocess.run(["tar", "-x", "--numeric-owner", "--same-permissions", "--same-owner",  # pylint: disable=ansible-bad-function
                                "-f", tar.name, "-C", local], check=True, capture_output=True)
            _apply(local, st)
            written.append(_describe_local(path, local, matched=True))
            for root, dirs, files in os.walk(local):
                dirs.sort()
                for name in sorted(dirs + files):
                    full = os.path.join(root, name)
                    written.append(_describe_local(path.rstrip("/") + "/" + os.path.relpath(full, local), full))
        elif stat.S_ISREG(st["st_mode"]):
            partial = local + ".vmsafe-partial"
            g.download(path, partial)
            _apply(partial, st)
            os.replace(partial, local)
            written.append(_describe_local(path, local, matched=True))
        elif stat.S_ISLNK(st["st_mode"]):
            if os.path.lexists(local):
                os.unlink(local)
            os.symlink(g.readlink(path), local)
            _apply(local, st)
            written.append(_describe_local(path, local, matched=True))
        # devices, sockets and FIFOs are not copied: there is nothing in them to restore
    return written


def launch(socket_path: str, export: str) -> t.Any:
    """A launched libguestfs handle with the NBD export attached read-only (raw: the export is the disk's content).

    Where /dev/kvm exists but QEMU cannot use it (nested virtualisation that refuses libguestfs' ``-cpu max``), the
    appliance dies at once: then it is started again with software emulation (TCG), which is slower but works.
    """
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")  # no libvirtd session needed for a read-only appliance
    for attempt in (1, 2):
        g = guestfs.GuestFS(python_return_dict=True)
        try:
            g.add_drive_opts(export, format="raw", readonly=True, protocol="nbd", server=[f"unix:{socket_path}"])
            g.launch()
            return g
        except RuntimeError as exc:
            g.close()
            settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
            if attempt == 2 or "force_tcg" in settings or not os.path.exists("/dev/kvm"):
                raise HelperError(f"libguestfs could not start its appliance ({str(exc).splitlines()[0]}); "
                                  "run libguestfs-test-tool on this host to see why") from exc
            os.environ["LIBGUESTFS_BACKEND_SETTINGS"] = ":".join(filter(None, [settings, "force_tcg"]))
    raise AssertionError("unreachable")  # pragma: no cover


def run(request: dict[str, t.Any]) -> dict[str, t.Any]:
    if guestfs is None:
        raise HelperError(f"{sys.executable} cannot import guestfs: install python3-guestfs and libguestfs-tools "
                          "(Debian/Ubuntu) or python3-libguestfs (Fedora/RHEL)")
    g = launch(request["nbd_socket"], request["export"])
    try:
        found, mounted = mount(g, request.get("filesystem"))
        paths, missing = expand(g, request["paths"])
        answer: dict[str, t.Any] = {"filesystems": found, "mounted": mounted, "missing": missing, "entries": []}
        if missing:
            return answer
        if request.get("dest"):
            answer["entries"] = extract(g, paths, request["dest"], bool(request.get("force")))
        else:
            answer["entries"] = listing(g, paths)
        return answer
    finally:
        g.close()


def main() -> int:
    try:
        answer = run(json.load(sys.stdin))
    except (HelperError, RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None)
        text = str(exc) + (f": {detail.decode(errors='replace').strip()}" if isinstance(detail, bytes) else "")
        json.dump({"error": text}, sys.stdout)
        return 1
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
