# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Restore tests ("SureBackup") against the real libvirt lab: playbooks/restore_test.yml, the restore-test modules,
backup_info's tested status and the audit report's strip.

Default run: a tiny VM without an OS (it never takes a DHCP lease), so its test fails fast, and everything the role
made (test VM, disks, folder, network) must be gone. The Done-means case (``--long``): the booted Debian guest of
scripts/guest-image.sh, a good backup tested passed, then the same guest made unbootable (its init removed) and
backed up again, tested failed; the audit report shows both.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import subprocess
import sys
import typing as t
import uuid

import pytest

from it_helpers import LONG, ROOT, run_ansible  # pylint: disable=import-error
from test_playbooks_audit_nightly import chromium, playbook, png_pixels  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt
PASS = "restore-test-passphrase"  # test data, not a secret


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=False).stdout


def leftovers(run_marker: str) -> list[str]:
    """Domains and networks whose name contains the role's run name."""
    names = virsh("list", "--all", "--name").split() + virsh("net-list", "--all", "--name").split()
    return [n for n in names if run_marker in n]


def results_of(results: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    facts = [r for r in results if r.get("ansible_facts", {}).get("restore_test_results") is not None]
    return facts[-1]["ansible_facts"]["restore_test_results"]


def run_name(results: list[dict[str, t.Any]]) -> str:
    for r in results:
        run = r.get("ansible_facts", {}).get("_restore_test_run")
        if run:
            return run
    raise AssertionError("the role chose no run name")


def test_failed_boot_is_recorded_and_everything_is_removed(lab, tmp_path):
    vm = lab.vm("rt")  # no OS: it never takes a DHCP lease
    repo = str(tmp_path / "repo")
    backed = run_ansible("vm_backup", {"vm_name": vm, "repository": repo, "passphrase": PASS, "init": True})
    assert backed["_status"] == "ok", backed.get("msg")
    dest = tmp_path / "dest"
    dest.mkdir()
    rc, results = playbook("restore_test.yml", tmp_path, {
        "vmsafe_repository": repo, "vmsafe_passphrase": PASS, "restore_test_vms": [vm],
        "restore_test_dest": str(dest), "restore_test_boot_timeout": 4,
        "restore_test_probes": [{"type": "tcp", "port": 22, "timeout": 2}]})
    assert rc != 0  # restore_test_fail_on_failure (default true)
    failing = [r for r in results if r["_status"] == "failed"]
    assert [r["_task"].split(" : ")[-1] for r in failing] == [
        "Fail when a backup did not pass its restore test (restore_test_fail_on_failure)"], failing
    assert PASS not in json.dumps(results)
    (entry,) = results_of(results)
    assert entry["vm"] == vm and entry["backup_id"] == backed["backup_id"] and entry["passed"] is False
    assert "no DHCP lease within 4 s" in entry["message"]
    assert entry["probes"][0]["detail"] == "not run: the guest has no address"
    run = run_name(results)
    assert leftovers(run) == [] and os.listdir(dest) == []  # test VM, network and folder are gone
    assert vm in virsh("list", "--name").split()  # the original is untouched
    # check mode of the removal on a VM that exists: says it would remove it, removes nothing
    would = run_ansible("restore_test_vm", {"vm_name": vm, "dest": str(dest), "state": "absent"}, check=True)
    assert would["changed"] and would["removed_files"] == [] and vm in virsh("list", "--name").split()

    info = run_ansible("backup_info", {"repository": repo, "passphrase": PASS, "history_days": 3})
    (b,) = info["backups"]
    assert b["tested_status"] == "failed" and b["tests"] == 1 and b["last_tested"]
    assert info["vms"][vm]["last_test"]["result"] == "failed" and info["vms"][vm]["last_proven_restorable"] is None
    assert info["history"]["nights"][vm][-1]["state"] == "failed"

    # the record module on its own: check mode writes nothing, a real run makes the backup proven
    args = {"repository": repo, "passphrase": PASS, "backup_id": backed["backup_id"], "result": "passed",
            "probes": [{"type": "ssh", "ok": True}], "duration": 3.5}
    check = run_ansible("backup_test_result", args, check=True)
    assert check["_status"] == "ok" and check["changed"] and check["test"]["result"] == "passed"
    assert run_ansible("backup_info", {"repository": repo, "passphrase": PASS})["backups"][0]["tests"] == 1
    real = run_ansible("backup_test_result", args)
    assert real["changed"] and real["object"] == f"tests/{backed['backup_id']}/{real['test']['id']}"
    info = run_ansible("backup_info", {"repository": repo, "passphrase": PASS, "history_days": 2})
    assert info["backups"][0]["tested_status"] == "passed" and info["backups"][0]["tests"] == 2
    assert info["vms"][vm]["last_proven_backup"] == backed["backup_id"]
    assert info["history"]["nights"][vm][-1]["state"] == "proven"
    bad = run_ansible("backup_test_result", dict(args, backup_id="20200101T000000Z-00000000"))
    assert bad["_status"] == "failed" and "no backup '20200101T000000Z-00000000'" in bad["msg"]


def test_network_module_is_idempotent_isolated_and_removable(libvirtd):
    name = f"vmsafe-it-net-{uuid.uuid4().hex[:6]}"
    try:
        check = run_ansible("restore_test_network", {"name": name}, check=True)
        assert check["changed"] and check["network"]["forward"] is None and name not in leftovers(name)
        made = run_ansible("restore_test_network", {"name": name})
        assert made["changed"] and made["network"]["active"] and made["network"]["prefix"] == 24
        xml = virsh("net-dumpxml", name)
        assert "<forward" not in xml and made["network"]["bridge"] in xml  # isolated: no forwarding at all
        again = run_ansible("restore_test_network", {"name": name})
        assert not again["changed"] and again["network"]["address"] == made["network"]["address"]
        clash = run_ansible("restore_test_network", {"name": name + "-2",
                                                     "subnet": made["network"]["address"].rsplit(".", 1)[0] + ".0/24"})
        assert clash["_status"] == "failed" and "overlaps" in clash["msg"]
        gone = run_ansible("restore_test_network", {"name": name, "state": "absent"})
        assert gone["changed"] and leftovers(name) == []
        assert not run_ansible("restore_test_network", {"name": name, "state": "absent"})["changed"]
    finally:
        virsh("net-destroy", name)


# ------------------------------------------------------------------ the Done-means case on a real Debian guest
def guest_ssh(port: int, key: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", key, "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o",
                           "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
                           "root@127.0.0.1", command], capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="boots the Debian guest three times (4-8 minutes): scripts/test.sh --long")
def test_good_backup_passes_broken_guest_fails_and_the_report_shows_both(libvirtd, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))
    import guest as guestlab  # pylint: disable=import-outside-toplevel,import-error
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    name = f"vmsafe-rtguest-{uuid.uuid4().hex[:6]}"  # our own guest: we break it
    repo = str(tmp_path / "repo")
    dest = tmp_path / "dest"
    dest.mkdir()
    key = ""
    try:
        port, key = guestlab.boot(name)
        wrote = guest_ssh(port, key, "echo restore-test-marker > /root/marker && sync")
        assert wrote.returncode == 0, wrote.stderr
        good = run_ansible("vm_backup", {"vm_name": name, "repository": repo, "passphrase": PASS, "init": True,
                                         "quiesce": False})
        assert good["_status"] == "ok", good.get("msg")
        probes = [{"type": "ping", "timeout": 120}, {"type": "ssh", "timeout": 120},
                  {"type": "command", "command": "cat /root/marker", "key_file": key, "timeout": 120,
                   "expect_output": "^restore-test-marker$"}]
        extra = {"vmsafe_repository": repo, "vmsafe_passphrase": PASS, "restore_test_vms": [name],
                 "restore_test_dest": str(dest), "restore_test_boot_timeout": 150, "restore_test_probes": probes,
                 "restore_test_fail_on_failure": False}
        rc, results = playbook("restore_test.yml", tmp_path, extra)
        assert rc == 0, [(r["_task"], r["_status"], r.get("msg")) for r in results if r["_status"] == "failed"]
        (ok,) = results_of(results)
        assert ok["passed"] is True and ok["backup_id"] == good["backup_id"], ok
        assert [p["ok"] for p in ok["probes"]] == [True, True, True], ok["probes"]
        assert ok["address"] and not ok["address"].startswith("127.")  # reached on the isolated network
        print(f"good backup: passed, boot to lease {ok['boot_seconds']} s, whole test {ok['duration']} s, "
              f"probes {[(p['name'], p['seconds']) for p in ok['probes']]}")
        assert leftovers(run_name(results)) == [] and os.listdir(dest) == []

        # make the guest unbootable (no init: the kernel panics), then back it up as it is
        broke = guest_ssh(port, key, "rm -f /sbin/init /usr/sbin/init /lib/systemd/systemd /usr/lib/systemd/systemd"
                                     " && sync && echo 3 > /proc/sys/vm/drop_caches")
        assert broke.returncode == 0, broke.stderr
        bad = run_ansible("vm_backup", {"vm_name": name, "repository": repo, "passphrase": PASS, "quiesce": False})
        assert bad["_status"] == "ok", bad.get("msg")
        rc, results = playbook("restore_test.yml", tmp_path, dict(extra, restore_test_boot_timeout=60))
        assert rc == 0
        (failed,) = results_of(results)
        assert failed["passed"] is False and failed["backup_id"] == bad["backup_id"], failed
        assert "no DHCP lease" in failed["message"] or "stopped" in failed["message"], failed
        print(f"broken guest: failed after {failed['duration']} s: {failed['message']}")
        assert leftovers(run_name(results)) == [] and os.listdir(dest) == []

        info = run_ansible("backup_info", {"repository": repo, "passphrase": PASS})
        status = {b["id"]: b["tested_status"] for b in info["backups"]}
        assert status == {good["backup_id"]: "passed", bad["backup_id"]: "failed"}
        assert info["vms"][name]["last_proven_backup"] == good["backup_id"]
        assert info["vms"][name]["last_test"]["result"] == "failed"

        # the audit report shows both, and renders in Chromium
        report = tmp_path / "report"
        rc, results = playbook("snapshot_audit.yml", tmp_path, {
            "snapshot_audit_repository": repo, "snapshot_audit_passphrase": PASS,
            "snapshot_audit_report_dir": str(report),
            "snapshot_audit_hypervisors": [{"name": "localhost", "hypervisor": "libvirt", "uri": "qemu:///system"}]})
        assert rc == 0, [(r["_task"], r["_status"], r.get("msg")) for r in results if r["_status"] == "failed"]
        html = (report / "snapshot_audit.html").read_text()
        row = re.search(rf'<tr data-vm="{re.escape(name)}".*?</tr>', html, re.S)
        assert row, html[:3000]
        assert f"backup {good['backup_id']}: restore test passed" in row.group(0)
        assert f"backup {bad['backup_id']}: restore test failed" in row.group(0)
        markdown = (report / "snapshot_audit.md").read_text()
        assert good["backup_id"] in markdown and bad["backup_id"] in markdown
    finally:
        labvm.destroy(name)


# ------------------------------------------------------------------ the audit report's strip and storage chart
def test_audit_report_draws_nights_and_storage_as_inline_svg_and_renders_in_chromium(tmp_path):
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup import attest  # pylint: disable=import-outside-toplevel
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend  # pylint: disable=import-outside-toplevel
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository  # pylint: disable=import-outside-toplevel

    repo_path = str(tmp_path / "repo")
    repo = Repository.init(LocalBackend(repo_path), passphrase=PASS, chunk_size=4096, segment_chunks=8,
                           kdf={"name": "argon2id", "iterations": 1, "lanes": 1, "memory_kib": 1024})
    now = datetime.datetime.now(datetime.timezone.utc).replace(hour=1, minute=0)
    rng = random.Random(4)
    base = rng.randbytes(64 * 4096)
    made = {}
    # "test" is the one VM of libvirt's test:///default driver (the audited hypervisor); "gone01" exists only in backups
    for vm, days_ago in (("test", 9), ("test", 5), ("test", 3), ("test", 1), ("gone01", 2)):
        data = bytearray(base)
        data[:4096] = rng.randbytes(4096)
        made[(vm, days_ago)] = repo.backup(vm, [DiskSource("vda", len(data), [(0, len(data), bytes(data))])],
                                           time=now - datetime.timedelta(days=days_ago))
    attest.record_test(repo, made[("test", 5)].id, "passed", [{"type": "ssh", "ok": True}], duration=20)
    attest.record_test(repo, made[("test", 1)].id, "failed", [{"type": "ssh", "ok": False}], duration=60,
                       message="no DHCP lease within 60 s")
    repo.close()

    report = tmp_path / "report"
    rc, results = playbook("snapshot_audit.yml", tmp_path, {
        "snapshot_audit_repository": repo_path, "snapshot_audit_passphrase": PASS,
        "snapshot_audit_report_dir": str(report), "snapshot_audit_history_days": 12,
        "snapshot_audit_hypervisors": [{"name": "testdriver", "hypervisor": "libvirt", "uri": "test:///default"}]})
    assert rc == 0, [(r["_task"], r["_status"], r.get("msg")) for r in results if r["_status"] == "failed"]
    html = (report / "snapshot_audit.html").read_text()
    assert "<script" not in html.lower() and "javascript:" not in html.lower() and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    markdown = (report / "snapshot_audit.md").read_text()
    strip_md = re.search(r"\| test \| `([PBF.]+)` \|", markdown)
    assert strip_md and strip_md.group(1) == "..B...P.B.F.", markdown  # 12 days, newest last: -9 B, -5 P, -3 B, -1 F
    orphans = markdown.split("## Backups of VMs not found on the audited hypervisors", 1)[1]
    assert re.search(rf"\| gone01 \| 1 \| {made[('gone01', 2)].id} \|", orphans), orphans

    dom = chromium("--dump-dom", f"file://{report}/snapshot_audit.html")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<script" not in dom.stdout.lower()
    rows = dict(re.findall(r'<tr data-vm="([^"]+)">(.*?)</tr>', dom.stdout, re.S))
    assert sorted(rows) == ["gone01", "test"]
    states = re.findall(r'<rect class="night (\w+)"', rows["test"])
    assert states == ["missing"] * 2 + ["backed_up"] + ["missing"] * 3 + ["proven", "missing", "backed_up", "missing",
                                                                          "failed", "missing"]
    assert f"backup {made[('test', 1)].id}: restore test failed" in rows["test"]
    assert f"backup {made[('test', 5)].id}: restore test passed" in rows["test"]
    assert made[("test", 5)].id in rows["test"].split("</svg>", 1)[1]  # last proven restorable, as text
    assert re.findall(r'<rect class="night (\w+)"', rows["gone01"]).count("backed_up") == 1
    chart = re.search(r'<svg[^>]*id="storage-chart".*?</svg>', dom.stdout, re.S)
    assert chart and len(re.findall(r'<rect class="stored"', chart.group(0))) == 12
    assert re.search(r'<polyline class="dedup" points="[\d. ,]+"', chart.group(0))

    shot = tmp_path / "history.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1280,1400", f"file://{report}/snapshot_audit.html")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    _width, _height, pixels = png_pixels(str(shot))
    count = {rgb: sum(1 for p in pixels if p == rgb) for rgb in ((0x1D, 0x6B, 0x2F), (0xC0, 0x39, 0x2B), (0x4A, 0x78, 0xA8))}
    # one proven and one failed night (12 x 16 px each, plus a legend square) and the stored-bytes bars were drawn
    assert count[(0x1D, 0x6B, 0x2F)] >= 150 and count[(0xC0, 0x39, 0x2B)] >= 150, count
    assert count[(0x4A, 0x78, 0xA8)] >= 500, count
