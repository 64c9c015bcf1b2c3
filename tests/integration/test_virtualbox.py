# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""hypervisor: virtualbox through the real ``ansible`` command, against the fake VBoxManage of tests/vbox_fake.

Each behaviour runs twice: VBoxManage on this machine, and on "a remote host" reached over SSH through a real
OpenSSH server on 127.0.0.1 (its own port, host key and authorized key). Disk contents are real image files, so
reverts, merges and backup -> restore round trips are checked byte for byte. Verified against the fake only: no
VirtualBox runs here (see docs/virtualbox.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
import uuid

import pytest

from it_helpers import LONG, ROOT, ansible_env, run_ansible  # pylint: disable=import-error

sys.path.insert(0, os.path.join(ROOT, "tests", "vbox_fake"))
import vboxlab  # noqa: E402  pylint: disable=wrong-import-position,import-error

MiB = 1024 * 1024
PASS = "vbox-test-passphrase"  # test data, not a secret
# A name a shell would split, expand or choke on: each must reach VBoxManage as one argument.
ODD = "pre \"patch\" 'q' $(touch vmsafe-pwned) `id` ü"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[vboxlab.SSHServer]:
    proc, server = vboxlab.start_sshd(str(tmp_path_factory.mktemp("vbox-sshd")))
    try:
        yield server
    finally:
        proc.kill()
        proc.wait()


# Every test runs locally and over SSH; the SSH runs of the snapshot-tree tests (same provider code, only the
# transport differs, and the revert test covers that transport by default) come with --long, and so does the SSH
# run of the backup test (the longest of the file).
SSH_LONG = pytest.param("ssh", marks=pytest.mark.skipif(not LONG, reason="over SSH too: set VMSAFE_LONG_TESTS=1"))


@pytest.fixture(params=["local", "ssh"])
def vbox(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[tuple[vboxlab.VBoxLab, dict[str, t.Any]]]:
    """(the fake host, the connection options a task passes to reach it)."""
    lab = vboxlab.VBoxLab(str(tmp_path / "vbox"))
    conn: dict[str, t.Any] = {"hypervisor": "virtualbox", "vboxmanage": lab.vboxmanage}
    if request.param == "ssh":
        server = request.getfixturevalue("sshd")
        conn.update(hostname="127.0.0.1", port=server.port, username=server.user, ssh_key_file=server.client_key,
                    ssh_known_hosts=server.known_hosts)
    yield lab, conn


def name(suffix: str) -> str:
    return f"vmsafe-vb-{uuid.uuid4().hex[:6]} {suffix}"


def run(module: str, conn: dict[str, t.Any], check: bool = False, **args: t.Any) -> dict[str, t.Any]:
    return run_ansible(module, {**conn, **args}, check=check)


def test_revert_restores_content_powering_off_only_when_asked_with_odd_names(vbox):
    lab, conn = vbox
    vm = name(ODD)
    lab.make_vm(vm, running=True)
    before = lab.content(vm)
    made = run("vm_snapshot", conn, vm_name=vm, snapshot_name=ODD, description=ODD)
    assert made["changed"] and made["consistency"] == "memory" and made["snapshot"]["memory"] is True, made
    assert made["snapshot"]["name"] == ODD and made["snapshot"]["description"] == ODD
    lab.write(vm, 0, 0x5A, MiB)
    assert lab.content(vm) != before

    refused = run("vm_snapshot", conn, vm_name=vm, snapshot_name=ODD, state="reverted")
    assert refused["_status"] == "failed" and "power_off: true" in refused["msg"], refused
    assert lab.state(vm) == "running" and lab.content(vm) != before

    reverted = run("vm_snapshot", conn, vm_name=vm, snapshot_name=ODD, state="reverted", power_off=True)
    assert reverted["changed"], reverted
    assert lab.content(vm) == before
    assert lab.state(vm) == "running"  # the snapshot held the RAM: started again, resuming there

    # back to it from a later snapshot: restore by UUID (the one just restored went through restorecurrent)
    run("vm_snapshot", conn, vm_name=vm, snapshot_name="later")
    lab.write(vm, 2 * MiB, 0x5B)
    again = run("vm_snapshot", conn, vm_name=vm, snapshot_name=ODD, state="reverted", power_off=True)
    assert again["changed"] and lab.content(vm) == before and lab.state(vm) == "running", again

    calls = lab.argv_log()
    assert ["snapshot", made["vm"]["id"], "restorecurrent"] in calls
    assert ["snapshot", made["vm"]["id"], "restore", made["snapshot"]["id"]] in calls
    take = next(c for c in calls if c[:1] == ["snapshot"] and c[2:3] == ["take"])
    assert take[3] == ODD and take[take.index("--description") + 1] == ODD and "--live" in take
    assert ["controlvm", made["vm"]["id"], "poweroff"] in calls
    assert not any(os.path.exists(os.path.join(d, "vmsafe-pwned")) for d in (os.getcwd(), os.path.expanduser("~")))


@pytest.mark.parametrize("vbox", ["local", SSH_LONG], indirect=True)
def test_duplicate_names_need_the_uuid_and_absent_removes_that_one(vbox):
    lab, conn = vbox
    vm = name("dup")
    lab.make_vm(vm)
    first = run("vm_snapshot", conn, vm_name=vm, snapshot_name="x")["snapshot"]
    lab.write(vm, 0, 0x11)
    # vm_snapshot never makes a second 'x'; another tool may: VBoxManage allows it
    lab.vb("snapshot", vm, "take", "x")
    info = run("vm_snapshot_info", conn, vm_name=vm)["vms"][0]
    assert [s["name"] for s in info["snapshots"]] == ["x", "x"] and info["snapshot_depth"] == 2
    ambiguous = run("vm_snapshot", conn, vm_name=vm, snapshot_name="x", state="absent")
    assert ambiguous["_status"] == "failed" and first["id"] in ambiguous["msg"], ambiguous
    removed = run("vm_snapshot", conn, vm_name=vm, snapshot_id=first["id"], state="absent")
    assert removed["changed"] and removed["removed"] == ["x"]
    left = run("vm_snapshot_info", conn, vm_name=vm)["vms"][0]["snapshots"]
    assert len(left) == 1 and left[0]["id"] != first["id"]
    assert run("vm_snapshot", conn, vm_name=vm, snapshot_id=first["id"], state="absent")["changed"] is False


@pytest.mark.parametrize("vbox", ["local", SSH_LONG], indirect=True)
def test_policy_removes_the_exact_set_and_a_deep_chain_and_an_orphan_are_reported(vbox):
    lab, conn = vbox
    vm = name("policy")
    uid = lab.make_vm(vm)
    for i in range(5):  # taken directly (vm_snapshot's create is covered above): five Ansible runs fewer
        lab.vb("snapshot", vm, "take", f"snap-{i}")
        lab.write(vm, (i + 1) * MiB, 0x21 + i)
    content = lab.content(vm)
    for i, days in ((0, 9), (1, 8), (3, 7)):
        lab.age(uid, f"snap-{i}", days * 86400)
    info = run("vm_snapshot_info", conn, vm_name=vm)["vms"][0]
    assert info["chain_depth"] == 6 and info["snapshot_depth"] == 5 and info["consolidation_needed"] is False, info

    args = {"vm_name": vm, "max_age": "2d", "max_depth": 3, "name_pattern": "^snap-"}
    checked = run("snapshot_consolidate", conn, check=True, **args)["vms"][0]
    assert sorted(r["name"] for r in checked["removed"]) == ["snap-0", "snap-1", "snap-3"], checked
    assert any("disk chain of 6 images (max_depth 3)" in w for w in checked["warnings"]), checked["warnings"]
    real = run("snapshot_consolidate", conn, **args)
    assert real["changed"] and real["summary"]["failed"] == 0, real
    left = run("vm_snapshot_info", conn, vm_name=vm)["vms"][0]
    assert sorted(s["name"] for s in left["snapshots"]) == ["snap-2", "snap-4"] and left["chain_depth"] == 3
    assert lab.content(vm) == content  # every merge kept what the guest wrote

    orphan = lab.orphan(uid)
    status = run("vm_snapshot_info", conn, vm_name=vm)["vms"][0]
    assert status["consolidation_needed"] and status["leftovers"][0]["kind"] == "orphaned_medium", status
    assert status["leftovers"][0]["files"] == [orphan]
    repaired = run("snapshot_consolidate", conn, vm_name=vm)
    assert repaired["changed"] and repaired["vms"][0]["merged"][0]["files"] == [orphan], repaired
    assert not os.path.exists(orphan)
    assert run("vm_snapshot_info", conn, vm_name=vm)["vms"][0]["consolidation_needed"] is False
    assert lab.content(vm) == content


@pytest.mark.parametrize("vbox", ["local", SSH_LONG], indirect=True)
def test_backup_then_restore_is_bit_identical_and_dedup_stores_only_changes(vbox, tmp_path):
    lab, conn = vbox
    vm = name("backup")
    lab.make_vm(vm, size_mib=16, running=True)
    repo = str(tmp_path / "repo")
    media = lab.media_count()
    base = {"vm_name": vm, "repository": repo, "passphrase": PASS}
    first = run("vm_backup", conn, init=True, **base)
    assert first["_status"] == "ok" and first["mode"] == "full" and first["consistency"] == "crash_consistent", first
    assert first["bytes_read"] == 16 * MiB
    lab.write(vm, 5 * MiB, 0x77, 128 * 1024)
    expected = lab.content(vm)
    second = run("vm_backup", conn, **base)
    assert second["mode"] == "full" and "changed-block tracking" in second["reason"], second
    assert second["bytes_read"] == 16 * MiB and second["bytes_stored"] < first["bytes_stored"] / 4, (first, second)
    print(f"virtualbox backup: first stored {first['bytes_stored']} bytes, second (128 KiB changed) "
          f"{second['bytes_stored']} bytes of {second['bytes_read']} read")
    assert lab.media_count() == media  # the temporary snapshot and the clones are gone
    assert run("vm_snapshot_info", conn, vm_name=vm)["vms"][0]["snapshots"] == []

    dest = tmp_path / "restored"
    dest.mkdir()
    image = run("vm_restore", conn, backup_id=second["backup_id"], format="raw", dest=str(dest),
                repository=repo, passphrase=PASS)
    assert image["_status"] == "ok", image
    assert vboxlab.file_sha(image["files"][0]["path"]) == expected

    new_name = name("restored " + ODD)
    made = run("vm_restore", conn, backup_id=second["backup_id"], target="new_vm", new_vm_name=new_name,
               dest=str(dest), start=True, repository=repo, passphrase=PASS)
    assert made["_status"] == "ok" and made["vm"]["name"] == new_name and made["vm"]["state"] == "running", made
    assert lab.content(new_name) == expected
    assert ["createvm", "--name", new_name, "--ostype", "Debian_64", "--register"] in lab.argv_log()


def playbook(lab: vboxlab.VBoxLab, tmp_path: t.Any, name_: str, inventory: str,
             extra: dict[str, t.Any]) -> tuple[int, list[dict[str, t.Any]]]:
    """Run a playbook of the collection unchanged; the VirtualBox connection comes from the environment."""
    inv = tmp_path / "inventory.ini"
    inv.write_text(inventory + f"\n[all:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n")
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    env = ansible_env()
    env.update(VMSAFE_HYPERVISOR="virtualbox", VMSAFE_VBOXMANAGE=lab.vboxmanage, VMSAFE_POWER_OFF="true")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inv),
                           "-e", f"@{extra_file}", os.path.join(ROOT, "playbooks", name_)],
                          capture_output=True, text=True, env=env, check=False, timeout=600)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"no JSON from ansible-playbook (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc


def test_safe_patch_reverts_a_failed_patch_and_nightly_backup_backs_up(tmp_path):
    lab = vboxlab.VBoxLab(str(tmp_path / "vbox"))
    vm = name("patched").replace(" ", "-")
    lab.make_vm(vm, running=True)
    before = lab.content(vm)
    # The "guest" writes to its disk: a script that finds the VM's current image and writes 1 MiB into it.
    writer = tmp_path / "guest_write.py"
    writer.write_text(f"import sys\nsys.path[:0] = [{os.path.join(ROOT, 'tests', 'vbox_fake')!r}, "
                      f"{os.environ['VMSAFE_COLLECTIONS_PATH']!r}]\nimport vboxlab\n"
                      f"vboxlab.VBoxLab({str(tmp_path / 'vbox')!r}).write(sys.argv[1], 0, 0x66, 1 << 20)\n")
    patch = tmp_path / "patch.yml"
    patch.write_text("- name: Patch writes to the disk\n  ansible.builtin.command:\n"
                     f"    argv: [{sys.executable}, {writer}, {vm}]\n")
    fail = tmp_path / "validate.yml"
    fail.write_text("- name: The patched service fails its check\n  ansible.builtin.fail:\n    msg: service down\n")
    rc, results = playbook(lab, tmp_path, "safe_patch.yml", f"[patch_targets]\n{vm}\n",
                           {"safe_patch_tasks": str(patch), "safe_patch_validate_tasks": str(fail)})
    assert rc != 0
    outcome = [r for r in results if r["_task"] == "One line per guest"]
    tail = [(r["_task"], r["_status"], r.get("msg")) for r in results][-8:]
    assert outcome and outcome[0]["msg"] == f"{vm}: reverted", tail
    patched = [r for r in results if r["_task"] == "Patch writes to the disk"]
    assert patched and patched[0]["changed"] and patched[0]["rc"] == 0
    assert lab.content(vm) == before and lab.state(vm) == "running"
    assert lab.vb("snapshot", vm, "list", check=False).returncode == 1  # the rollback point was removed

    repo = str(tmp_path / "repo")
    rc, results = playbook(lab, tmp_path, "nightly_backup.yml", f"[backup_targets]\n{vm}\n",
                           {"vmsafe_repository": repo, "vmsafe_passphrase": PASS, "nightly_backup_init": True})
    summary = [r for r in results if r["_task"] == "One line per VM, failed and unreachable ones included"]
    assert rc == 0 and summary, [(r["_task"], r["_status"], r.get("msg")) for r in results][-6:]
    assert summary[0]["msg"][0].startswith(f"{vm}: full backup "), summary[0]["msg"]
    assert PASS not in json.dumps(results)
