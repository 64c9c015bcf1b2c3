# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The fake VBoxManage keeps the rules of VirtualBox's sources that the provider depends on."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vbox_fake"))

import vboxlab  # noqa: E402  pylint: disable=wrong-import-position,import-error


@pytest.fixture
def lab(tmp_path):
    return vboxlab.VBoxLab(str(tmp_path))


def test_exit_codes_and_messages(lab):
    syntax = lab.vb("snapshot", "x", check=False)
    assert syntax.returncode == 2 and "Not enough parameters" in syntax.stderr
    missing = lab.vb("showvminfo", "nope", "--machinereadable", check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("VBoxManage: error: Could not find a registered machine named 'nope'\n")
    assert "VBOX_E_OBJECT_NOT_FOUND (0x80bb0001)" in missing.stderr
    lab.make_vm("v", size_mib=1)
    empty = lab.vb("snapshot", "v", "list", "--machinereadable", check=False)
    assert empty.returncode == 1 and empty.stdout == "This machine does not have any snapshots\n"


def test_restore_needs_a_stopped_vm_and_branches_block_deletion(lab):
    lab.make_vm("v", size_mib=1, running=True)
    lab.vb("snapshot", "v", "take", "a", "--live")
    refused = lab.vb("snapshot", "v", "restore", "a", check=False)
    assert refused.returncode == 1 and "Cannot delete the current state of the running machine" in refused.stderr
    lab.vb("controlvm", "v", "poweroff")
    lab.vb("snapshot", "v", "take", "b")
    lab.vb("snapshot", "v", "restore", "a")
    assert lab.state("v") == "saved"  # "a" was taken running: its RAM comes back
    lab.vb("snapshot", "v", "take", "c")
    blocked = lab.vb("snapshot", "v", "delete", "a", check=False)
    assert blocked.returncode == 1 and "2 child snapshots" in blocked.stderr
    listing = dict(line.split("=", 1) for line in lab.vb("snapshot", "v", "list", "--machinereadable").stdout.split())
    assert listing["SnapshotName-1"] == '"b"' and listing["SnapshotName-2"] == '"c"'
    assert listing["CurrentSnapshotNode"] == '"SnapshotName-2"'


def test_delete_merges_and_keeps_what_the_guest_wrote(lab):
    lab.make_vm("v", size_mib=2)
    lab.vb("snapshot", "v", "take", "s1")
    lab.write("v", 0, 0x41)
    lab.vb("snapshot", "v", "take", "s2")
    lab.write("v", 65536, 0x42)
    content = lab.content("v")
    media = lab.media_count()
    lab.vb("snapshot", "v", "delete", "s1")
    assert lab.content("v") == content and lab.media_count() == media - 1
    lab.vb("snapshot", "v", "delete", "s2")
    assert lab.content("v") == content and lab.media_count() == media - 2


def test_clone_is_flat_and_registered_until_closed(lab, tmp_path):
    lab.make_vm("v", size_mib=2)
    lab.vb("snapshot", "v", "take", "s1")
    lab.write("v", 0, 0x43)
    out = lab.vb("clonemedium", "disk", lab.current_disk("v"), str(tmp_path / "clone.raw"), "--format", "RAW").stdout
    assert out.startswith("Clone medium created in format 'RAW'. UUID: ")
    assert vboxlab.file_sha(str(tmp_path / "clone.raw")) == lab.content("v")
    again = lab.vb("clonemedium", "disk", lab.current_disk("v"), str(tmp_path / "clone.raw"), check=False)
    assert again.returncode == 1 and "VERR_ALREADY_EXISTS" in again.stderr
    lab.vb("closemedium", "disk", str(tmp_path / "clone.raw"), "--delete")
    assert not os.path.exists(tmp_path / "clone.raw")
