# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""backup_files with the real libguestfs: an ext4 image made from a folder, and the booted Debian guest's root.

libguestfs boots an appliance for every module run; without a usable KVM (as here: /dev/kvm refuses QEMU's CPU
model) that takes 40-130 s of TCG per run, so these run with --long. The default run has the module's logic
against a fake libguestfs handle (tests/unit/plugins/module_utils/test__guestfs_helper.py).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.chunker import file_extents
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from it_helpers import LONG, ROOT, run_ansible, ssh  # pylint: disable=import-error

pytestmark = pytest.mark.skipif(not LONG, reason="libguestfs appliance under TCG: set VMSAFE_LONG_TESTS=1 (test.sh --long)")

PASS = "files-test-passphrase"  # test data, not a secret


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture
def ext4_backup(tmp_path):
    """A backup (through the engine) of an ext4 image made with mkfs.ext4 -d from a folder of known files."""
    src = tmp_path / "src"
    (src / "etc" / "app").mkdir(parents=True)
    (src / "home" / "alice" / "docs").mkdir(parents=True)
    (src / "etc" / "app" / "app.conf").write_text("listen 8080\n")
    (src / "etc" / "app" / "other.conf").write_text("x = 1\n")
    (src / "etc" / "app" / "notes.txt").write_text("not a .conf\n")
    (src / "home" / "alice" / "docs" / "data.bin").write_bytes(os.urandom(300_000))
    os.symlink("docs/data.bin", src / "home" / "alice" / "latest")
    os.chown(src / "etc" / "app" / "app.conf", 1001, 1002)
    os.chmod(src / "etc" / "app" / "app.conf", 0o640)
    for path in (src / "home" / "alice", src / "home" / "alice" / "docs", src / "home" / "alice" / "docs" / "data.bin"):
        os.chown(path, 1000, 1000)
    os.lchown(src / "home" / "alice" / "latest", 1000, 1000)
    os.chmod(src / "home" / "alice", 0o700)
    os.utime(src / "etc" / "app" / "other.conf", (1577934245, 1577934245))
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(image)], check=True)
    repo = Repository.init(open_backend(str(tmp_path / "repo")), passphrase=PASS)
    try:
        fd = os.open(image, os.O_RDONLY)
        try:
            record = repo.backup("files-vm", [DiskSource("vda", os.fstat(fd).st_size, file_extents(fd))])
        finally:
            os.close(fd)
    finally:
        repo.close()
    return {"repository": str(tmp_path / "repo"), "passphrase": PASS}, record.id, src


def test_extract_keeps_content_owner_mode_and_time_and_names_a_missing_path(ext4_backup, tmp_path):
    repo, backup_id, src = ext4_backup
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run_ansible("backup_files", dict(repo, backup_id=backup_id, path=["/etc/app/*.conf", "/home/alice"],
                                              dest=str(dest)))
    assert result["_status"] == "ok" and result["changed"], result
    assert result["mounted"] == {"/": "/dev/sda"} and result["filesystems"] == {"/dev/sda": "ext4"}
    matched = [f["path"] for f in result["files"] if f["matched"]]
    assert matched == ["/etc/app/app.conf", "/etc/app/other.conf", "/home/alice"]
    want = ["/etc/app/app.conf", "/etc/app/other.conf", "/home/alice", "/home/alice/docs",
            "/home/alice/docs/data.bin", "/home/alice/latest"]
    assert sorted(f["path"] for f in result["files"]) == want
    assert not (dest / "etc" / "app" / "notes.txt").exists()  # the glob took only *.conf
    for path in want:
        original, copy = os.lstat(str(src) + path), os.lstat(str(dest) + path)
        assert (copy.st_mode, copy.st_uid, copy.st_gid) == (original.st_mode, original.st_uid, original.st_gid), path
        if stat.S_ISREG(original.st_mode):
            assert sha256(str(dest) + path) == sha256(str(src) + path)
            assert int(copy.st_mtime) == int(original.st_mtime), path
    assert os.readlink(dest / "home" / "alice" / "latest") == "docs/data.bin"
    entry = {f["path"]: f for f in result["files"]}["/home/alice/docs/data.bin"]
    assert entry["sha256"] == sha256(str(src / "home" / "alice" / "docs" / "data.bin")) and entry["uid"] == 1000

    again = run_ansible("backup_files", dict(repo, backup_id=backup_id, path=["/home/alice"], dest=str(dest)))
    assert again["_status"] == "failed" and "already exist(s) in dest; set force: true" in again["msg"]

    missing = run_ansible("backup_files", dict(repo, vm_name="files-vm", path=["/etc/app", "/etc/nope*"]))
    assert missing["_status"] == "failed"
    assert "Nothing matches '/etc/nope*' in disk vda of backup" in missing["msg"] and "/dev/sda (ext4) on /" in missing["msg"]


def test_file_from_the_booted_guests_root_filesystem(guest, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    from test_guest_backup import drop_checkpoints  # pylint: disable=import-outside-toplevel,import-error

    repo = {"repository": str(tmp_path / "repo"), "passphrase": PASS}
    try:
        made = ssh(guest, "head -c 250000 /dev/urandom > /root/proof.bin && chmod 600 /root/proof.bin && sync && "
                          "sha256sum /root/proof.bin")
        assert made.returncode == 0, made.stderr
        written = made.stdout.split()[0]
        backup = run_ansible("vm_backup", dict(repo, vm_name=guest["name"], init=True,
                                               quiesce_fallback="crash_consistent"))
        assert backup["_status"] == "ok", backup
    finally:
        drop_checkpoints(guest["name"])
    dest = tmp_path / "dest"
    dest.mkdir()
    result = run_ansible("backup_files", dict(repo, vm_name=guest["name"], path=["/root/proof.bin"], dest=str(dest)))
    assert result["_status"] == "ok", result
    assert result["mounted"].get("/")  # found by inspection of the Debian guest
    assert sha256(str(dest / "root" / "proof.bin")) == written == result["files"][0]["sha256"]
    assert stat.S_IMODE(os.stat(dest / "root" / "proof.bin").st_mode) == 0o600
