# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""playbooks/snapshot_audit.yml and playbooks/nightly_backup.yml against the real libvirt lab.

The audit's HTML report is opened in headless Chromium: the DOM it renders must hold the tables with the right rows,
and the screenshot must show them (the table header colour of the report's CSS is counted in the PNG's pixels).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import typing as t
import zlib

import pytest

from it_helpers import ROOT, age_snapshot, ansible_env, run_ansible  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt
PASS = "audit-test-passphrase"  # test data, not a secret
HV_SECRET = "hypervisor-password-never-shown"  # test data: must appear in no task result
HEADER_RGB = (0x1F, 0x3A, 0x5F)  # th background in playbooks/templates/snapshot_audit.html.j2
FLAG_RGB = (0xFD, 0xE2, 0xE1)  # flagged rows


def playbook(name: str, tmp_path, extra: dict[str, t.Any], inventory: str = "") -> tuple[int, list[dict[str, t.Any]]]:
    inv = tmp_path / "inventory.ini"
    inv.write_text(inventory + "\n[local]\n"
                   f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inv),
                           "-e", f"@{extra_file}", os.path.join(ROOT, "playbooks", name)],
                          capture_output=True, text=True, env=ansible_env(), check=False, timeout=600)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"no JSON from ansible-playbook (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc


def png_pixels(path: str) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) into (width, height, pixels)."""
    data = open(path, "rb").read()  # pylint: disable=consider-using-with,unspecified-encoding
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _comp, _filt, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            corner = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + left) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + up) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif ftype == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(line)
        prev = line
    pixels = [tuple(row[i:i + 3]) for row in rows for i in range(0, stride, channels)]
    return width, height, pixels  # type: ignore[return-value]


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is missing: run scripts/lab.sh install"
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--disable-dev-shm-usage", *args], capture_output=True, text=True, check=False,
                          timeout=180)


def test_audit_report_flags_old_snapshots_consolidation_and_missing_backups_and_renders_in_chromium(lab, tmp_path):
    old_vm, leftover_vm, fine_vm = lab.vm("old"), lab.vm("leftover"), lab.vm("fine")
    assert run_ansible("vm_snapshot", {"vm_name": old_vm, "snapshot_name": "before-upgrade",
                                       "description": "CHG-42 <b>not bold</b>", "disk_only": True})["changed"]
    age_snapshot(lab, old_vm, "before-upgrade", 10 * 86400)
    assert run_ansible("vm_snapshot", {"vm_name": leftover_vm, "snapshot_name": "ext", "disk_only": True})["changed"]
    lab.virsh("snapshot-delete", leftover_vm, "ext", "--metadata")  # an overlay nobody tracks
    repo = str(tmp_path / "repo")
    backed = run_ansible("vm_backup", {"vm_name": fine_vm, "repository": repo, "passphrase": PASS, "init": True})
    assert backed["_status"] == "ok", backed.get("msg")

    report = tmp_path / "report"
    rc, results = playbook("snapshot_audit.yml", tmp_path, {
        "snapshot_audit_repository": repo, "snapshot_audit_passphrase": PASS, "snapshot_audit_max_age_days": 3,
        "snapshot_audit_report_dir": str(report), "snapshot_audit_title": "Lab audit",
        "snapshot_audit_hypervisors": [{"name": "localhost", "hypervisor": "libvirt", "uri": "qemu:///system",
                                        "password": HV_SECRET}]})
    assert rc == 0, [(r["_task"], r["_status"], r.get("msg")) for r in results]
    assert PASS not in json.dumps(results) and HV_SECRET not in json.dumps(results)

    markdown = (report / "snapshot_audit.md").read_text()
    rows = {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| ") and " | " in line}
    cells = {vm: [c.strip() for c in rows[vm].strip()[2:-2].split(" | ")] for vm in (old_vm, leftover_vm, fine_vm)}
    # Hypervisor | VM | State | Snapshots | Snapshot size | Oldest (days) | Chain depth | Backups | Newest | Findings
    assert cells[old_vm][3] == "1" and cells[old_vm][5] == "10.0", cells[old_vm]
    assert cells[old_vm][9] == "1 snapshot(s) older than 3 days; no backup", cells[old_vm]
    assert cells[leftover_vm][6] == "2" and cells[leftover_vm][9] == "consolidation needed; no backup"
    assert cells[fine_vm][7] == "1" and cells[fine_vm][8] == "0.0" and cells[fine_vm][9] == "", cells[fine_vm]
    old_rows = markdown.split("## Snapshots older than 3 days", 1)[1].split("## ", 1)[0]
    assert old_vm in old_rows and "before-upgrade" in old_rows and leftover_vm not in old_rows
    html = (report / "snapshot_audit.html").read_text()
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html  # user text is escaped
    assert "&lt;b&gt;not bold&lt;/b&gt;" in markdown

    # What a browser renders: the DOM after parsing, and a screenshot of the page.
    dom = chromium("--dump-dom", f"file://{report}/snapshot_audit.html")
    assert dom.returncode == 0, dom.stderr[-2000:]
    tables = re.findall(r"<table>.*?</table>", dom.stdout, re.S)
    assert len(tables) == 3, len(tables)  # old snapshots, consolidation, all VMs
    assert old_vm in tables[0] and "before-upgrade" in tables[0]
    assert leftover_vm in tables[1] and old_vm not in tables[1]
    for vm in (old_vm, leftover_vm, fine_vm):
        assert vm in tables[2]
    shot = tmp_path / "audit.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1280,900", f"file://{report}/snapshot_audit.html")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    width, height, pixels = png_pixels(str(shot))
    assert (width, height) == (1280, 900)
    header = sum(1 for p in pixels if p == HEADER_RGB)
    flagged = sum(1 for p in pixels if p == FLAG_RGB)
    # three table header rows (~25 px high, up to 1232 px wide) and at least two flagged rows are on screen
    assert header > 3 * 20 * 600, header
    assert flagged > 2 * 15 * 600, flagged
    assert len(set(pixels)) > 20  # text was drawn, not a blank page


def test_nightly_backup_playbook_backs_up_each_vm_and_fails_only_the_missing_one(lab, tmp_path):
    good = lab.vm("nightly")
    repo = str(tmp_path / "repo")
    # the missing VM first and one VM per batch: a batch whose only VM fails must not end the play (it used to,
    # and the good VM after it was never backed up)
    inventory = ("[backup_targets]\n"
                 "ghost vmsafe_vm_name=vmsafe-no-such-vm\n"
                 f"{good}\n")
    extra = {"vmsafe_repository": repo, "vmsafe_passphrase": PASS, "nightly_backup_init": True,
             "nightly_backup_quiesce_fallback": "crash_consistent", "nightly_backup_serial": 1}
    rc, results = playbook("nightly_backup.yml", tmp_path, extra, inventory)
    assert rc != 0
    summary = [r for r in results if r["_task"] == "One line per VM, failed and unreachable ones included"]
    assert summary, [(r["_task"], r["_status"], r.get("msg")) for r in results][-6:]
    lines = dict(line.split(": ", 1) for line in summary[0]["msg"])
    assert lines[good].startswith("full backup "), lines
    assert lines["ghost"].startswith("FAILED") and "vmsafe-no-such-vm" in lines["ghost"], lines
    # prune + garbage collection ran once for the repository, after the backups, by the first VM of the play
    prunes = [r for r in results if r["_task"].endswith("Prune and garbage-collect each repository once")]
    assert [(r["_host"], r["_status"]) for r in prunes] == [(good, "ok")], prunes
    assert lines[good].endswith(f", pruned 0 (repository pruned once, by {good})"), lines
    assert "pruned" not in lines["ghost"], lines
    info = run_ansible("backup_info", {"repository": repo, "passphrase": PASS})
    assert [b["vm_name"] for b in info["backups"]] == [good]
    assert PASS not in json.dumps(results)
