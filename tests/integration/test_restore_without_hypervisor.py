# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_restore target: image on a plain backup server: no hypervisor library, and a second identical run is ok.

Before (issue #15) the libvirt provider was loaded before the task was asked whether it needs one, so a restore to
files failed with "libvirt-python is required" where it is not installed, and a second run failed with "Refusing to
overwrite". Here libvirt cannot be imported at all: a ``libvirt`` module first on PYTHONPATH records that something
imported it and raises ImportError.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from it_helpers import ansible_env  # pylint: disable=import-error

PASS = "correct horse battery staple"
KiB = 1024


def run_without_libvirt(tmp_path: t.Any, module: str, args: dict[str, t.Any]) -> dict[str, t.Any]:
    blocker = tmp_path / "no-libvirt"
    blocker.mkdir(exist_ok=True)
    marker = tmp_path / "libvirt-imported"
    (blocker / "libvirt.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('libvirt is not installed on this backup server')\n")
    env = ansible_env()
    env["PYTHONPATH"] = str(blocker) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m", f"vmsafe.protect.{module}",
           "-a", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=300)
    result = json.loads(proc.stdout)[0]
    result["_libvirt_imported"] = marker.exists()
    return result


def test_restore_to_images_needs_no_hypervisor_library_and_is_idempotent(tmp_path):
    repo_path = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(repo_path), passphrase=PASS,
                           kdf={"name": "argon2id", "iterations": 1, "lanes": 1, "memory_kib": 1024})
    size = 4 * 1024 * KiB
    data = [(0, 64 * KiB, b"\xab" * 64 * KiB), (1024 * KiB, 200 * KiB, os.urandom(200 * KiB))]
    try:
        record = repo.backup("web01", [DiskSource(name="vda", size=size, extents=data)],
                             time=datetime.datetime.now(datetime.timezone.utc))
    finally:
        repo.close()
    want = bytearray(size)
    for offset, length, chunk in data:
        want[offset:offset + length] = chunk

    for fmt in ("raw", "qcow2"):
        dest = tmp_path / fmt
        dest.mkdir()
        args = {"repository": repo_path, "passphrase": PASS, "backup_id": record.id, "dest": str(dest), "format": fmt}
        first = run_without_libvirt(tmp_path, "vm_restore", args)
        assert first["_status"] == "ok", first.get("msg")
        assert first["_libvirt_imported"] is False
        assert first["changed"] is True and first["files"][0]["restored"] is True
        path = first["files"][0]["path"]
        raw = tmp_path / f"{fmt}.check"
        subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, str(raw)], check=True)
        assert raw.read_bytes() == bytes(want)

        again = run_without_libvirt(tmp_path, "vm_restore", args)
        assert again["_status"] == "ok", again.get("msg")
        assert again["changed"] is False and again["files"][0]["restored"] is False and again["plan"] == []
        assert again["files"][0]["digest"] == record.disks[0].content_digest
        assert again["_libvirt_imported"] is False
