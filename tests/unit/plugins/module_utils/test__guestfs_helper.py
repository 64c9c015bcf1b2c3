# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The libguestfs helper of backup_files against a fake handle that serves a local folder as the guest's filesystem.

The fake implements the calls the helper makes with the return shapes of the libguestfs API reference
(guestfs(3): list_filesystems -> device: type, lstatns/statns -> struct guestfs_statns, glob_expand with
directoryslash, tar_out writing ./-relative members, download, readlink, inspect_os / inspect_get_mountpoints).
The real libguestfs runs in tests/integration/test_backup_files.py (--long).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import types
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils import _file_restore
from ansible_collections.vmsafe.protect.plugins.module_utils import _guestfs_helper as helper
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument


class FakeGuestFS:
    """A launched libguestfs handle whose only filesystem is a local folder."""

    filesystems: dict[str, str] = {"/dev/sda": "ext4"}
    roots: list[str] = []
    mountpoints: dict[str, str] = {}
    launches: list[str] = []
    fail_launch_unless_tcg = False

    def __init__(self, python_return_dict: bool = False) -> None:
        assert python_return_dict
        self.root: str | None = None
        self.drives: list[tuple[str, dict[str, t.Any]]] = []

    # lifecycle
    def add_drive_opts(self, filename: str, **opts: t.Any) -> None:
        assert opts == {"format": "raw", "readonly": True, "protocol": "nbd", "server": ["unix:/run/x/nbd.sock"]}
        self.drives.append((filename, opts))

    def launch(self) -> None:
        settings = os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", "")
        FakeGuestFS.launches.append(settings)
        if self.fail_launch_unless_tcg and "force_tcg" not in settings:
            raise RuntimeError("guestfs_launch failed.\nThis usually means the libguestfs appliance failed to start")

    def close(self) -> None:
        pass

    # filesystems
    def list_filesystems(self) -> dict[str, str]:
        return dict(self.filesystems)

    def inspect_os(self) -> list[str]:
        return list(self.roots)

    def inspect_get_mountpoints(self, root: str) -> dict[str, str]:
        assert root in self.roots
        return dict(self.mountpoints)

    def mount_ro(self, device: str, point: str) -> None:
        if device not in self.filesystems or self.filesystems[device] == "xfs-unsupported":
            raise RuntimeError(f"mount_ro: {device} on {point}: wrong fs type")
        if point == "/":
            self.root = FakeGuestFS.folder

    folder = ""

    # files
    def _local(self, path: str) -> str:
        assert self.root is not None, "nothing mounted"
        assert path.startswith("/")
        return self.root + path

    @staticmethod
    def _stat(st: os.stat_result) -> dict[str, int]:
        return {"st_dev": st.st_dev, "st_ino": st.st_ino, "st_mode": st.st_mode, "st_nlink": st.st_nlink,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_size": st.st_size, "st_atime_sec": int(st.st_atime),
                "st_atime_nsec": 0, "st_mtime_sec": int(st.st_mtime), "st_mtime_nsec": 0,
                "st_ctime_sec": int(st.st_ctime), "st_ctime_nsec": 0}

    def lstatns(self, path: str) -> dict[str, int]:
        return self._stat(os.lstat(self._local(path)))

    def statns(self, path: str) -> dict[str, int]:
        return self._stat(os.stat(self._local(path)))

    def lstatnslist(self, path: str, names: list[str]) -> list[dict[str, int]]:
        return [self.lstatns(path.rstrip("/") + "/" + name) for name in names]

    def ls(self, path: str) -> list[str]:
        return sorted(os.listdir(self._local(path)))

    def readlink(self, path: str) -> str:
        return os.readlink(self._local(path))

    def glob_expand_opts(self, pattern: str, directoryslash: bool = True) -> list[str]:
        assert directoryslash is False
        parts = [p for p in pattern.split("/") if p]
        found = ["/"]
        for part in parts:
            found = [f.rstrip("/") + "/" + name for f in found if os.path.isdir(self._local(f))
                     for name in sorted(os.listdir(self._local(f))) if fnmatch.fnmatchcase(name, part)]
        return sorted(found) if parts else ["/"]

    def download(self, path: str, local: str) -> None:
        shutil.copyfile(self._local(path), local)

    def tar_out(self, directory: str, tarfile: str, numericowner: bool = False) -> None:
        assert numericowner
        subprocess.run(["tar", "-c", "--numeric-owner", "-f", tarfile, "-C", self._local(directory), "."], check=True)


@pytest.fixture
def guest(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The guest's filesystem: /etc/app (0750, 5:6) with two .conf files and a .txt, /home/alice (0700, 1000)."""
    root = tmp_path / "guest"
    app = root / "etc" / "app"
    app.mkdir(parents=True)
    (app / "app.conf").write_text("listen 8080\n")
    (app / "other.conf").write_text("x = 1\n")
    (app / "notes.txt").write_text("n\n")
    docs = root / "home" / "alice" / "docs"
    docs.mkdir(parents=True)
    (docs / "data.bin").write_bytes(os.urandom(5000))
    os.symlink("docs/data.bin", root / "home" / "alice" / "latest")
    os.chown(app, 5, 6)
    os.chmod(app, 0o750)
    os.chown(app / "app.conf", 1001, 1002)
    os.chmod(app / "app.conf", 0o640)
    os.utime(app / "other.conf", (1577934245, 1577934245))
    for path in (root / "home" / "alice", docs, docs / "data.bin"):
        os.chown(path, 1000, 1000)
    os.lchown(root / "home" / "alice" / "latest", 1000, 1000)
    os.chmod(root / "home" / "alice", 0o700)
    FakeGuestFS.folder = str(root)
    FakeGuestFS.filesystems = {"/dev/sda": "ext4"}
    FakeGuestFS.roots = []
    FakeGuestFS.mountpoints = {}
    FakeGuestFS.launches = []
    FakeGuestFS.fail_launch_unless_tcg = False
    monkeypatch.setattr(helper, "guestfs", types.SimpleNamespace(GuestFS=FakeGuestFS))
    monkeypatch.delenv("LIBGUESTFS_BACKEND_SETTINGS", raising=False)
    return str(root)


def request(**kwargs: t.Any) -> dict[str, t.Any]:
    base = {"nbd_socket": "/run/x/nbd.sock", "export": "vda", "filesystem": None, "paths": [], "dest": None, "force": False}
    base.update(kwargs)
    return base


def test_listing_gives_matches_then_a_folders_children(guest: str) -> None:
    answer = helper.run(request(paths=["/etc/app/*.conf", "/home/alice"]))
    assert answer["mounted"] == {"/": "/dev/sda"} and answer["missing"] == []
    entries = {e["path"]: e for e in answer["entries"]}
    assert [e["path"] for e in answer["entries"]] == ["/etc/app/app.conf", "/etc/app/other.conf", "/home/alice",
                                                      "/home/alice/docs", "/home/alice/latest"]
    assert [e["matched"] for e in answer["entries"]] == [True, True, True, False, False]
    assert entries["/etc/app/app.conf"] | {"mtime": 0} == {
        "path": "/etc/app/app.conf", "matched": True, "type": "file", "size": 12, "mode": "0640", "uid": 1001,
        "gid": 1002, "mtime": 0}
    assert entries["/etc/app/other.conf"]["mtime"] == 1577934245
    assert entries["/home/alice"]["type"] == "directory" and entries["/home/alice"]["mode"] == "0700"
    assert entries["/home/alice/latest"]["type"] == "link" and entries["/home/alice/latest"]["link_target"] == "docs/data.bin"


def test_paths_that_match_nothing_are_named_and_nothing_is_written(guest: str, tmp_path: t.Any) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    answer = helper.run(request(paths=["/etc/app", "/etc/nope", "/srv/*.db"], dest=str(dest)))
    assert answer["missing"] == ["/etc/nope", "/srv/*.db"] and answer["entries"] == []
    assert list(dest.iterdir()) == []


def test_extract_keeps_owner_mode_time_links_and_parent_folders(guest: str, tmp_path: t.Any) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    answer = helper.run(request(paths=["/etc/app/*.conf", "/home/alice"], dest=str(dest)))
    written = [e["path"] for e in answer["entries"]]
    assert written == ["/etc/app/app.conf", "/etc/app/other.conf", "/home/alice", "/home/alice/docs",
                       "/home/alice/latest", "/home/alice/docs/data.bin"]
    assert not (dest / "etc" / "app" / "notes.txt").exists()
    for path in written + ["/etc", "/etc/app", "/home"]:
        original, copy = os.lstat(guest + path), os.lstat(str(dest) + path)
        assert (copy.st_mode, copy.st_uid, copy.st_gid) == (original.st_mode, original.st_uid, original.st_gid), path
        if not stat.S_ISLNK(original.st_mode) and path not in ("/etc", "/home"):
            assert int(copy.st_mtime) == int(original.st_mtime), path
    entry = {e["path"]: e for e in answer["entries"]}["/home/alice/docs/data.bin"]
    with open(guest + "/home/alice/docs/data.bin", "rb") as handle:
        assert entry["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert entry["dest"] == str(dest / "home" / "alice" / "docs" / "data.bin") and not entry["matched"]
    assert os.readlink(dest / "home" / "alice" / "latest") == "docs/data.bin"
    assert not [p for p in dest.rglob("*") if ".vmsafe" in p.name]  # no partial or tar file left


def test_extract_refuses_existing_targets_unless_forced(guest: str, tmp_path: t.Any) -> None:
    dest = tmp_path / "dest"
    (dest / "etc" / "app").mkdir(parents=True)
    (dest / "etc" / "app" / "app.conf").write_text("local edit\n")
    with pytest.raises(helper.HelperError, match="app.conf already exist"):
        helper.run(request(paths=["/etc/app/*.conf"], dest=str(dest)))
    assert (dest / "etc" / "app" / "app.conf").read_text() == "local edit\n"
    assert not (dest / "etc" / "app" / "other.conf").exists()  # refused before anything was copied
    helper.run(request(paths=["/etc/app/*.conf"], dest=str(dest), force=True))
    assert (dest / "etc" / "app" / "app.conf").read_text() == "listen 8080\n"


def test_a_file_in_the_way_of_a_parent_folder_is_an_error(guest: str, tmp_path: t.Any) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "etc").write_text("a file, not a folder\n")
    with pytest.raises(helper.HelperError, match="is in the way of /etc/app/app.conf"):
        helper.run(request(paths=["/etc/app/app.conf"], dest=str(dest), force=True))


@pytest.mark.parametrize("path", ["/../outside", "/etc/../../outside"])
def test_paths_never_leave_dest(path: str, tmp_path: t.Any) -> None:
    with pytest.raises(helper.HelperError, match="outside dest"):
        helper._target(str(tmp_path), path)  # pylint: disable=protected-access


def test_filesystem_choice(guest: str) -> None:
    FakeGuestFS.filesystems = {"/dev/sda1": "ext4", "/dev/sda2": "swap", "/dev/vg0/data": "xfs"}
    with pytest.raises(helper.HelperError, match=r"several filesystems \(/dev/sda1 \(ext4\), /dev/vg0/data \(xfs\)\)"):
        helper.run(request(paths=["/etc"]))
    with pytest.raises(helper.HelperError, match=r"no filesystem /dev/sdb1; it has: /dev/sda1 \(ext4\), /dev/vg0"):
        helper.run(request(paths=["/etc"], filesystem="/dev/sdb1"))
    answer = helper.run(request(paths=["/etc/app/app.conf"], filesystem="/dev/sda1"))
    assert answer["mounted"] == {"/": "/dev/sda1"} and answer["entries"][0]["path"] == "/etc/app/app.conf"
    # an operating system found by inspection: its filesystems at their mount points; one that fails is skipped
    FakeGuestFS.roots = ["/dev/sda1"]
    FakeGuestFS.filesystems["/dev/sda3"] = "xfs-unsupported"
    FakeGuestFS.mountpoints = {"/boot": "/dev/sda3", "/": "/dev/sda1"}
    answer = helper.run(request(paths=["/etc/app"]))
    assert answer["mounted"] == {"/": "/dev/sda1"}


def test_unusable_kvm_falls_back_to_tcg_once(guest: str) -> None:
    FakeGuestFS.fail_launch_unless_tcg = True
    if not os.path.exists("/dev/kvm"):
        with pytest.raises(helper.HelperError, match="could not start its appliance"):
            helper.run(request(paths=["/etc"]))
        return
    answer = helper.run(request(paths=["/etc/app/app.conf"]))
    assert FakeGuestFS.launches == ["", "force_tcg"] and answer["entries"]
    FakeGuestFS.launches = []
    os.environ["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg:other"
    FakeGuestFS.fail_launch_unless_tcg = False
    helper.run(request(paths=["/etc"]))
    assert FakeGuestFS.launches == ["force_tcg:other"]


def test_launch_failure_with_tcg_is_an_error(guest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")

    def launch(self: FakeGuestFS) -> None:
        raise RuntimeError("qemu died\nmore")

    monkeypatch.setattr(FakeGuestFS, "launch", launch)
    with pytest.raises(helper.HelperError, match=r"could not start its appliance \(qemu died\); run libguestfs-test"):
        helper.run(request(paths=["/etc"]))


def run_command(args: list[str], data: str | None = None, **_options: t.Any) -> tuple[int, str, str]:
    """What AnsibleModule.run_command returns, for the helper's runner outside a module."""
    proc = subprocess.run(args, input=None if data is None else data + "\n", capture_output=True, text=True,
                          check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_the_helper_as_run_by_the_module_names_a_python_without_guestfs() -> None:
    """_file_restore runs the helper's source with another interpreter: this one has no guestfs module."""
    with pytest.raises(_file_restore.FileRestoreError, match="cannot import guestfs: install python3-guestfs"):
        _file_restore.run_helper(request(paths=["/etc"]), sys.executable, 60, run_command)
    with pytest.raises(_file_restore.FileRestoreError, match="set guestfs_python"):
        _file_restore.run_helper(request(paths=["/etc"]), "/nonexistent/python3", 60, run_command)


def test_the_helpers_json_protocol(guest: str, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(read=lambda *a: json.dumps(request(paths=["/etc/app"]))))
    assert helper.main() == 0
    assert json.loads(capsys.readouterr().out)["entries"][0]["path"] == "/etc/app"
    bad = json.dumps(request(paths=["/x"], filesystem="/dev/no"))
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(read=lambda *a: bad))
    assert helper.main() == 1
    assert "no filesystem /dev/no" in json.loads(capsys.readouterr().out)["error"]


def test_relative_paths_are_refused_before_anything_is_read() -> None:
    with pytest.raises(InvalidArgument, match="path must be absolute inside the guest"):
        _file_restore.read_files(None, None, {"path": ["/etc/hosts", "etc/passwd"]}, None)
