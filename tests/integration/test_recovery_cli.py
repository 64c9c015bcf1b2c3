# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vmsafe-recover run in a venv that has only the engine's packages (no ansible-core) against vm_restore's output."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess

import pytest

from recovery_helpers import CLI, engine_venv, plain_env  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt

PASS = "correct horse battery staple"
MiB = 1024 * 1024


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
    verified = recover(recover_python, "verify", "--read-data", **env)
    assert verified.returncode == 0 and verified.stdout.startswith("OK: 2 backup(s)"), verified.stdout + verified.stderr

    for backup_id, fmt in ((ids[0], "raw"), (ids[1], "qcow2")):
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
    second = recover(recover_python, "restore", "--backup", ids[1], "--dest", str(tmp_path), "--format", "raw", **env)
    assert second.returncode == 0, second.stderr
    assert not filecmp.cmp(tmp_path / f"cli-{ids[0]}-raw" / f"{vm}-vda-{ids[0]}.img", tmp_path / f"{vm}-vda-{ids[1]}.img",
                           shallow=False)

    # serve: the same backup read-only over NBD, read by QEMU, equals the restored image; SIGTERM ends it cleanly
    sock = tmp_path / "serve.sock"
    server = subprocess.Popen([recover_python, CLI, "serve", "--backup", ids[1], "--socket", str(sock)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=plain_env(**env))
    try:
        assert "serving disk vda of backup" in server.stdout.readline()
        served = tmp_path / "served.raw"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd+unix:///vda?socket={sock}", str(served)],
                       check=True, capture_output=True, timeout=300)
        assert filecmp.cmp(served, tmp_path / f"{vm}-vda-{ids[1]}.img", shallow=False)
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert not sock.exists() and not os.listdir(os.path.join(repo["repository"], "locks"))
