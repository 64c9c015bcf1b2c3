# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Pure helpers of the Azure provider: resource names, ARM ids, the fixed-VHD footer of disk uploads."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure, azure_backup


@pytest.mark.parametrize("parts, expected", [
    (("web01", "os", "20261204t101500ab12cd"), "web01-os-20261204t101500ab12cd"),
    (("db 01/x", "lun3", "id"), "db-01-x-lun3-id"),  # characters Azure refuses become '-'
    (("a" * 100, "os", "id"), "a" * 80),  # at most 80 characters
    (("name.", "os", "x" * 70 + "."), "name.-os-" + "x" * 70),  # never ends with '.' or '-'
])
def test_resource_names_are_what_azure_accepts(parts, expected):
    name = azure.resource_name(*parts)
    assert name == expected
    assert len(name) <= 80 and all(c.isalnum() or c in "_-." for c in name)


def test_arm_ids_parse_case_insensitively():
    rid = "/subscriptions/s1/resourcegroups/RG-One/providers/Microsoft.Compute/virtualMachines/web01"
    assert azure.parse_id(rid) == {"subscription": "s1", "group": "RG-One", "name": "web01"}
    assert azure.same_id(rid, rid.upper() + "/")
    assert not azure.same_id(rid, None)


def test_enum_members_become_their_text():
    class Kind(str):
        value = "Linux"
    assert azure.text(Kind("OperatingSystemTypes.LINUX")) == "Linux"
    assert azure.text(None) == "" and azure.text("V2") == "V2"


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) reads the VHD to check it")
@pytest.mark.parametrize("mib", [20, 64, 1024 + 3])
def test_vhd_footer_makes_a_fixed_vhd_qemu_reads(tmp_path, mib):
    size = mib * 1024 * 1024
    image = tmp_path / "disk.vhd"
    with open(image, "wb") as handle:
        handle.truncate(size)
        handle.seek(size)
        handle.write(azure_backup.vhd_footer(size))
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(image)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "vpc"
    # qemu takes the size from the footer for fixed disks created by Azure-like creators ('Wi2k' below 127 GiB
    # rounds to the CHS geometry, so allow that rounding)
    assert size - 16 * 63 * 512 < info["virtual-size"] <= size
    footer = azure_backup.vhd_footer(size)
    assert footer[:8] == b"conectix" and len(footer) == 512
    checksum = int.from_bytes(footer[64:68], "big")
    assert checksum == (~(sum(footer[:64]) + sum(footer[68:])) & 0xFFFFFFFF)
