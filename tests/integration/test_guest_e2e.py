# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""End to end on a real booted Debian guest: playbooks/safe_patch.yml reverts a failed patch and commits a good one.

The guest image is built once by scripts/guest-image.sh (about 1.5 min, cached) and boots under TCG in 15-30 s.
The revert case runs by default; the commit and unreachable-host cases need VMSAFE_LONG_TESTS=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

import pytest

from it_helpers import ROOT, SSH_OPTS, ansible_env, ssh  # pylint: disable=import-error


pytestmark = pytest.mark.libvirt
LONG = os.environ.get("VMSAFE_LONG_TESTS") == "1"


@pytest.fixture(scope="module")
def patch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A local .deb (the guest has no network) and the patch/validation task files."""
    tmp = tmp_path_factory.mktemp("patch")
    pkg = tmp / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/share/vmsafe-patch-marker").mkdir(parents=True)
    (pkg / "usr/share/vmsafe-patch-marker/marker").write_text("patched\n")
    (pkg / "DEBIAN/control").write_text("Package: vmsafe-patch-marker\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: vmsafe tests <tests@vmsafe.invalid>\nDescription: test patch\n")
    deb = tmp / "vmsafe-patch-marker_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    patch = tmp / "patch.yml"
    patch.write_text(json.dumps([
        {"name": "Copy the package", "ansible.builtin.copy": {"src": str(deb), "dest": "/tmp/marker.deb", "mode": "0644"}},
        {"name": "Install it", "ansible.builtin.apt": {"deb": "/tmp/marker.deb"}},
        {"name": "Leave a file", "ansible.builtin.copy": {"content": "patched\n", "dest": "/etc/vmsafe-patched",
                                                          "mode": "0644"}},
    ]))
    failing = tmp / "validate_fail.yml"
    failing.write_text(json.dumps([{"name": "The application check fails",
                                    "ansible.builtin.command": "test -e /etc/app-healthy", "changed_when": False}]))
    return {"patch": str(patch), "validate_fail": str(failing)}


def run_safe_patch(tmp_path, g: dict[str, t.Any], extra: dict[str, t.Any],
                   more_hosts: str = "") -> tuple[int, list[dict[str, t.Any]]]:
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[patch_targets]\n"
        f"{g['name']} ansible_host=127.0.0.1 ansible_port={g['port']} ansible_user=root "
        f"ansible_ssh_private_key_file={g['key']} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='{' '.join(SSH_OPTS)}'\n{more_hosts}\n"
        "[local]\n"
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                           "-e", f"@{extra_file}", os.path.join(ROOT, "playbooks", "safe_patch.yml")],
                          capture_output=True, text=True, env=ansible_env(), check=False, timeout=900)
    return proc.returncode, json.loads(proc.stdout)


def snapshots(name: str) -> list[str]:
    return subprocess.run(["virsh", "-q", "snapshot-list", name, "--name"], capture_output=True, text=True,
                          check=True).stdout.split()


def test_failed_validation_is_reverted_and_no_snapshot_remains(guest, patch_files, tmp_path):
    assert ssh(guest, "test -e /etc/vmsafe-patched").returncode == 1
    rc, results = run_safe_patch(tmp_path, guest, {"safe_patch_tasks": patch_files["patch"],
                                                   "safe_patch_validate_tasks": patch_files["validate_fail"]})
    assert rc != 0  # the host failed, after the revert
    by_task = {r["_task"]: r for r in results if r["_host"] == guest["name"]}
    assert "Install it" in by_task, [(r["_task"], r["_status"], r.get("msg")) for r in results]
    assert by_task["Install it"]["changed"] is True, by_task["Install it"]  # the patch really happened
    assert by_task["Revert to the rollback point"]["changed"] is True
    reports = [r for r in results if r["_task"] == "One line per guest"]
    assert reports, [(r["_task"], r["_status"], r.get("msg")) for r in results][-6:]
    report = reports[0]
    assert report["msg"] == f"{guest['name']}: reverted"
    # the guest is provably back: the file and the package the patch added are gone
    assert ssh(guest, "test -e /etc/vmsafe-patched").returncode == 1
    assert ssh(guest, "dpkg -s vmsafe-patch-marker").returncode != 0
    assert snapshots(guest["name"]) == []


@pytest.mark.skipif(not LONG, reason="booted-guest commit case: set VMSAFE_LONG_TESTS=1")
def test_passing_validation_is_committed_and_unreachable_host_fails_alone(guest, patch_files, tmp_path):
    dead = "ghost ansible_host=127.0.0.1 ansible_port=9 ansible_user=root vmsafe_vm_name=nonexistent"
    rc, results = run_safe_patch(tmp_path, guest, {"safe_patch_tasks": patch_files["patch"], "safe_patch_ports": [22],
                                                   "safe_patch_connect_timeout": 20}, more_hosts=dead)
    assert rc != 0  # the unreachable host failed ...
    summary = [r for r in results if r["_task"] == "One line per guest, failed and unreachable ones included"]
    assert summary, [(r["_task"], r["_status"], r.get("msg")) for r in results][-6:]
    lines = dict(line.split(": ", 1) for line in summary[0]["msg"])
    assert lines[guest["name"]] == "committed"  # ... and the reachable one was patched
    assert lines["ghost"].startswith("not patched")
    assert ssh(guest, "test -e /etc/vmsafe-patched").returncode == 0
    assert ssh(guest, "dpkg -s vmsafe-patch-marker").returncode == 0
    assert snapshots(guest["name"]) == []
