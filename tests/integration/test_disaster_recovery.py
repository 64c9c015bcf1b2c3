# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""docs/disaster-recovery.md as written: back a VM up, lose it with its disk, run the page's bash blocks in order.

The blocks run in one bash (set -euo pipefail) with the variables the page's settings block names, on a PATH
without the test venv and with a collection tarball built from this checkout; the VM must come back running with
its UUID and exactly the content it had when it was backed up.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile

import pytest

from recovery_helpers import ROOT, engine_pins, plain_env  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt

DOC = os.path.join(ROOT, "docs", "disaster-recovery.md")
PASS = "correct horse battery staple"
MiB = 1024 * 1024
SETTINGS = ("VM", "VMSAFE_REPOSITORY", "PASSPHRASE_FILE", "COLLECTION_TARBALL", "RECOVERY", "IMAGES")


def doc_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the page, in order."""
    with open(DOC, encoding="utf-8") as handle:
        return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", handle.read(), re.M | re.S)]


def content_sha256(image: str) -> str:
    """sha256 of what a guest sees in an image (through its format and backing chain)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "disk.raw")
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", image, raw], check=True, capture_output=True)
        digest = hashlib.sha256()
        with open(raw, "rb") as handle:
            for block in iter(lambda: handle.read(4 * MiB), b""):
                digest.update(block)
        return digest.hexdigest()


def build_tarball(dest: str) -> str:
    """The collection's release tarball, built from this checkout's files as `ansible-galaxy collection build` does."""
    src = os.path.join(dest, "src")
    os.makedirs(src)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout
    subprocess.run(["tar", "--null", "-cf", os.path.join(dest, "src.tar"), "-T", "-"], cwd=ROOT, input=files,
                   check=True)
    subprocess.run(["tar", "-xf", os.path.join(dest, "src.tar"), "-C", src], check=True)
    galaxy = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    subprocess.run([galaxy, "collection", "build", src, "--output-path", dest], check=True, capture_output=True)
    (tarball,) = [os.path.join(dest, f) for f in os.listdir(dest) if f.endswith(".tar.gz")]
    return tarball


def test_page_names_the_settings_and_the_pinned_packages():
    blocks = doc_blocks()
    settings = [text for lang, text in blocks if lang == "sh" and "export VM=" in text]
    assert len(settings) == 1
    assert re.findall(r"^export (\w+)=", settings[0], re.M) == list(SETTINGS)
    pip = [line for lang, text in blocks if lang == "bash" for line in text.splitlines() if "pip\" install" in line]
    assert len(pip) == 1 and pip[0].split()[-len(engine_pins()):] == engine_pins()  # the page follows requirements.txt


def test_disaster_recovery_page_as_written(lab, ansible, tmp_path):
    import labvm  # pylint: disable=import-outside-toplevel,import-error

    vm = lab.vm(size_mib=32)
    lab.write(vm, 0x6B, 0, 4 * MiB)
    lab.write(vm, 0x2E, 20 * MiB, 1 * MiB)
    want = content_sha256(labvm.active_image(vm))
    uuid = lab.virsh("domuuid", vm).strip()
    repo = str(tmp_path / "repo")
    backup = ansible("vm_backup", {"repository": repo, "passphrase": PASS, "vm_name": vm, "init": True})
    assert backup["_status"] == "ok", backup
    lab.write(vm, 0x99, 0, 1 * MiB)  # written after the backup: must not come back

    # the host is lost: the VM and its disk are gone
    disk = labvm.active_image(vm)
    labvm.destroy(vm)
    assert not os.path.exists(disk)
    assert subprocess.run(["virsh", "-c", labvm.URI, "dominfo", vm], capture_output=True, check=False).returncode != 0

    (tmp_path / "images").mkdir()
    (tmp_path / "passphrase").write_text(PASS + "\n")
    (tmp_path / "passphrase").chmod(0o600)
    settings = dict(zip(SETTINGS, (vm, repo, str(tmp_path / "passphrase"), build_tarball(str(tmp_path / "dist")),
                                   str(tmp_path / "recovery"), str(tmp_path / "images"))))
    script = "set -euo pipefail\n" + "\n".join(text for lang, text in doc_blocks() if lang == "bash")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False, timeout=900,
                          env=plain_env(LIBVIRT_DEFAULT_URI=labvm.URI, **settings))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().splitlines()[-1] == "running"  # virsh domstate, the page's last command
    assert "OK: 1 backup(s)" in proc.stdout

    assert lab.virsh("domuuid", vm).strip() == uuid
    restored = labvm.active_image(vm)
    assert restored == os.path.join(settings["IMAGES"], f"{vm}-vda-{backup['backup_id']}.qcow2")
    assert content_sha256(restored) == want
    assert lab.check(vm, 0x6B, 0, 4 * MiB) and lab.check(vm, 0x2E, 20 * MiB, 1 * MiB)
