# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The nightly_backup role on the real booted guest: full, then incremental, prune, verify, and the restored image boots.

Files written inside the guest before each backup prove what each backup holds: the restored image is booted as a
new VM and read over SSH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

import pytest

from it_helpers import LONG, ROOT, SSH_OPTS, ansible_env, run_ansible, ssh  # pylint: disable=import-error

sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))
import guest as guestlab  # noqa: E402  pylint: disable=wrong-import-position,import-error
import labvm  # noqa: E402  pylint: disable=wrong-import-position,import-error

# Boots the guest twice (about 70 s here, twice that on a slow machine): the default run's booted-guest slice is
# test_guest_e2e's revert case, and test_libvirt_backup restores a backup to a new VM that starts.
pytestmark = [pytest.mark.libvirt,
              pytest.mark.skipif(not LONG, reason="booted-guest backup and restore: set VMSAFE_LONG_TESTS=1 (test.sh --long)")]

PASS = "nightly-test-passphrase"  # test data, not a secret

PLAYBOOK = """\
- name: Nightly backup of the guest
  hosts: guests
  gather_facts: false
  roles:
    - role: vmsafe.protect.nightly_backup
"""


def nightly(tmp_path, g: dict[str, t.Any], repo: str, init: bool = False) -> list[dict[str, t.Any]]:
    """Run the role once against the guest (an inventory host whose VM is ``g['name']``); return task results."""
    (tmp_path / "nightly.yml").write_text(PLAYBOOK)
    (tmp_path / "inventory.ini").write_text(
        "[guests]\n"
        f"{g['name']} ansible_host=127.0.0.1 ansible_port={g['port']} ansible_user=root "
        f"ansible_ssh_private_key_file={g['key']} ansible_ssh_common_args='{' '.join(SSH_OPTS)}'\n"
        "[local]\n"
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    extra = {"vmsafe_repository": repo, "vmsafe_passphrase": PASS, "nightly_backup_keep_last": 1,
             "nightly_backup_keep_daily": 0, "nightly_backup_keep_weekly": 0, "nightly_backup_keep_monthly": 0,
             "nightly_backup_verify_read_data": True, "nightly_backup_init": init, "nightly_backup_quiesce_fallback": "crash_consistent",
             # the role on its own prunes this VM right after its backup (playbooks/nightly_backup.yml prunes once)
             "nightly_backup_prune_each_vm": True}
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                           "-i", str(tmp_path / "inventory.ini"), "-e", f"@{tmp_path / 'extra.json'}",
                           str(tmp_path / "nightly.yml")],
                          capture_output=True, text=True, env=ansible_env(), check=False, timeout=900)
    results = json.loads(proc.stdout)
    assert proc.returncode == 0, [(r["_task"], r["_status"], r.get("msg")) for r in results]
    return results


def summary(results: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    facts = [r for r in results if r["_task"].endswith("Summarise the night for this VM")]
    assert facts, [r["_task"] for r in results]
    return facts[0]["ansible_facts"]["nightly_backup_summary"]


def drop_checkpoints(name: str) -> None:
    """Leave the shared guest as the other end-to-end tests expect it: no backup checkpoints."""
    names = subprocess.run(["virsh", "-q", "checkpoint-list", name, "--name"], capture_output=True, text=True,
                           check=True).stdout.split()
    for checkpoint in names:
        subprocess.run(["virsh", "-q", "checkpoint-delete", name, checkpoint], capture_output=True, check=True)


def test_nightly_role_full_then_incremental_prunes_verifies_and_the_restored_image_boots(guest, tmp_path):
    repo = str(tmp_path / "repo")
    try:
        assert ssh(guest, "echo first > /root/nightly-1 && sync").returncode == 0
        (tmp_path / "n1").mkdir()
        first = summary(nightly(tmp_path / "n1", guest, repo, init=True))
        assert first["mode"] == "full", first
        assert first["verified"] in (True, "True"), first

        assert ssh(guest, "echo second > /root/nightly-2 && sync").returncode == 0
        (tmp_path / "n2").mkdir()
        second = summary(nightly(tmp_path / "n2", guest, repo))
        assert second["mode"] == "incremental", second
        assert int(second["bytes_read"]) < int(first["bytes_read"]) / 4, (first, second)
        assert second["verified"] in (True, "True"), second
        # keep_last 1 and no calendar rules: the full goes, the incremental (a complete backup on its own) stays
        assert second["pruned"] == [first["backup_id"]], second
        assert int(second["kept"]) == 1

        info = run_ansible("backup_info", {"repository": repo, "passphrase": PASS})
        assert info["_status"] == "ok", info.get("msg")
        assert [b["id"] for b in info["backups"]] == [second["backup_id"]]

        dest = tmp_path / "restored"
        dest.mkdir()
        restored = run_ansible("vm_restore", {"repository": repo, "passphrase": PASS, "backup_id": second["backup_id"],
                                              "target": "image", "format": "qcow2", "dest": str(dest)})
        assert restored["_status"] == "ok", restored.get("msg")
        image = restored["files"][0]["path"]
    finally:
        drop_checkpoints(guest["name"])

    clone = f"{guest['name']}-restored"
    try:
        port, key = guestlab.boot(clone, disk=image)
        booted = {"name": clone, "port": port, "key": key}
        proc = ssh(booted, "cat /root/nightly-1 /root/nightly-2")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["first", "second"]
    finally:
        labvm.destroy(clone)
