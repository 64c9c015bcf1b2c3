# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vmsafe-recover run in a venv that has only the engine's packages (no ansible-core) against vm_restore's output.

The venv is made once per set of pins and Python version (under the temp folder) and reused by later runs.
"""

from __future__ import annotations

import fcntl
import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing as t

import pytest

pytestmark = pytest.mark.libvirt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "plugins", "module_utils", "_recovery_cli.py")
ENGINE_PACKAGES = ("zstandard", "cryptography", "paramiko")
PASS = "correct horse battery staple"
MiB = 1024 * 1024


def engine_pins() -> list[str]:
    """The requirements.txt pins of the engine's packages (name==version)."""
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as handle:
        pins = [line.strip() for line in handle if re.match(rf"({'|'.join(ENGINE_PACKAGES)})==", line.strip())]
    assert len(pins) == len(ENGINE_PACKAGES), f"requirements.txt should pin {ENGINE_PACKAGES}, has {pins}"
    return pins


def base_python() -> str:
    """The interpreter the test venv was made from (a venv made from it holds none of the test venv's packages)."""
    return getattr(sys, "_base_executable", sys.executable)


def plain_env(**extra: str) -> dict[str, str]:
    """The environment of a host without Ansible: no test venv on PATH, no collection path, no PYTHONPATH."""
    drop = ("PYTHONPATH", "ANSIBLE_COLLECTIONS_PATH", "VMSAFE_COLLECTIONS_PATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.update(extra)
    return env


def engine_venv() -> str:
    """A venv with only the engine's pinned packages: made once (under a file lock, safe with xdist), then reused."""
    pins = engine_pins()
    key = hashlib.sha256("\n".join([*pins, sys.version, base_python()]).encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"vmsafe-recover-venv-{key}")
    done = os.path.join(path, ".vmsafe-complete")
    with open(path + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            shutil.rmtree(path, ignore_errors=True)
            subprocess.run([base_python(), "-m", "venv", path], check=True, env=plain_env())
            subprocess.run([os.path.join(path, "bin", "pip"), "install", "-q", *pins], check=True, capture_output=True,
                           env=plain_env())
            with open(done, "w", encoding="utf-8") as handle:
                handle.write("\n".join(pins) + "\n")
    return os.path.join(path, "bin", "python")


@pytest.fixture(scope="session")
def recover_python() -> str:
    python = engine_venv()
    probe = subprocess.run([python, "-c", "import ansible"], capture_output=True, text=True, check=False,
                           env=plain_env())
    assert probe.returncode != 0 and "No module named 'ansible'" in probe.stderr, "the venv must not have ansible-core"
    return python


def recover(python: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, CLI, *args], capture_output=True, text=True, check=False, timeout=600,
                          env=plain_env(**env))


def test_standalone_restore_equals_vm_restore_byte_for_byte(lab, ansible, tmp_path, recover_python):
    repo = {"repository": str(tmp_path / "repo"), "passphrase": PASS}
    vm = lab.vm(size_mib=48)
    lab.write(vm, 0x5A, 0, 6 * MiB)
    lab.write(vm, 0x17, 30 * MiB, 2 * MiB)
    ids = [ansible("vm_backup", dict(repo, vm_name=vm, init=True))["backup_id"]]
    lab.write(vm, 0xC3, 3 * MiB, 512 * 1024)
    ids.append(ansible("vm_backup", dict(repo, vm_name=vm))["backup_id"])
    assert all(ids), ids

    env = {"VMSAFE_PASSPHRASE": PASS, "VMSAFE_REPOSITORY": repo["repository"]}
    listed = recover(recover_python, "list", "--vm", vm, "--json", **env)
    assert listed.returncode == 0, listed.stderr
    assert [b["id"] for b in json.loads(listed.stdout)] == ids
    info = ansible("backup_info", dict(repo, vm_name=vm))
    assert [b["id"] for b in info["backups"]] == ids
    assert [d["digest"] for b in json.loads(listed.stdout) for d in b["disks"]] == \
        [d["digest"] for b in info["backups"] for d in b["disks"]]
    verified = recover(recover_python, "verify", "--read-data", **env)
    assert verified.returncode == 0 and verified.stdout.startswith("OK: 2 backup(s)"), verified.stdout + verified.stderr

    for backup_id, fmt in ((ids[0], "raw"), (ids[1], "raw"), (ids[1], "qcow2")):
        by_module, by_cli = tmp_path / f"module-{backup_id}-{fmt}", tmp_path / f"cli-{backup_id}-{fmt}"
        by_module.mkdir()
        by_cli.mkdir()
        restored = ansible("vm_restore", dict(repo, backup_id=backup_id, dest=str(by_module), format=fmt))
        assert restored["_status"] == "ok", restored
        out = recover(recover_python, "restore", "--backup", backup_id, "--dest", str(by_cli), "--format", fmt,
                      "--json", **env)
        assert out.returncode == 0, out.stderr
        files = json.loads(out.stdout)["files"]
        assert [os.path.basename(f["path"]) for f in files] == [os.path.basename(f["path"]) for f in restored["files"]]
        assert sorted(os.listdir(by_cli)) == sorted(os.listdir(by_module))  # same names, nothing else left
        for name in os.listdir(by_module):
            assert filecmp.cmp(by_module / name, by_cli / name, shallow=False), f"{name} differs ({fmt})"
    # the two backups differ where the guest wrote between them, so the comparison above could have failed
    first, second = (tmp_path / f"cli-{i}-raw" / f"{vm}-vda-{i}.img" for i in ids)
    assert not filecmp.cmp(first, second, shallow=False)
