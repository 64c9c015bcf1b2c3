# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""qemu+ssh:// through a real OpenSSH server on 127.0.0.1 to the lab's libvirtd."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.libvirt


def test_snapshot_and_report_over_ssh(lab, ansible, ssh_uri):
    vm = lab.vm()
    made = ansible("vm_snapshot", {"uri": ssh_uri, "vm_name": vm, "snapshot_name": "remote", "memory": True})
    assert made["_status"] == "ok" and made["changed"], made
    assert made["vm"]["host"].startswith("qemu+ssh://root@127.0.0.1:")
    assert lab.snapshot_names(vm) == ["remote"]
    info = ansible("vm_snapshot_info", {"uri": ssh_uri, "vm_name": vm})
    snap = info["snapshots"][0]
    assert snap["name"] == "remote" and snap["memory"] is True
    assert snap["size_bytes"] is None  # image files are not inspected on a remote host
    removed = ansible("vm_snapshot", {"uri": ssh_uri, "vm_name": vm, "snapshot_name": "remote", "state": "absent"})
    assert removed["changed"] and lab.snapshot_names(vm) == []


def test_ssh_with_a_wrong_key_fails_clearly(libvirtd, ansible, ssh_uri, tmp_path):
    wrong = tmp_path / "wrong"
    import subprocess  # pylint: disable=import-outside-toplevel

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    base, query = ssh_uri.split("?", 1)
    params = "&".join(p for p in query.split("&") if not p.startswith("keyfile="))
    result = ansible("vm_snapshot_info", {"uri": f"{base}?keyfile={wrong}&{params}", "connect_timeout": 20})
    assert result["_status"] == "failed"
    assert "Failed to connect to libvirt at 'qemu+ssh://root@127.0.0.1:" in result["msg"]
