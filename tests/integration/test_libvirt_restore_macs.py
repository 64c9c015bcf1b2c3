# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""vm_restore target: new_vm on libvirt: new MAC addresses by default, the backed-up ones with keep_mac_addresses."""

from __future__ import annotations

import re

PASS = "libvirt-restore-macs-passphrase"  # test data, not a secret
MAC = "52:54:00:5a:17:c3"


def macs(lab, name: str) -> list[str]:
    return re.findall(r"<mac address='([0-9a-f:]+)'", lab.virsh("dumpxml", "--inactive", name))


def test_new_vm_gets_new_macs_unless_asked_to_keep_them(lab, ansible, tmp_path):
    vm = lab.vm()
    nic = tmp_path / "nic.xml"
    nic.write_text(f"<interface type='user'><mac address='{MAC}'/><model type='virtio'/></interface>")
    lab.virsh("attach-device", vm, str(nic), "--config")
    assert macs(lab, vm) == [MAC]
    repo = {"repository": str(tmp_path / "repo"), "passphrase": PASS}
    backup = ansible("vm_backup", dict(repo, vm_name=vm, init=True))
    assert backup["_status"] == "ok", backup.get("msg")
    args = dict(repo, backup_id=backup["backup_id"], target="new_vm", dest=str(tmp_path))
    fresh, kept = vm + "-new", vm + "-kept"
    lab.names += [fresh, kept]
    made = ansible("vm_restore", dict(args, new_vm_name=fresh))
    assert made["_status"] == "ok", made.get("msg")
    assert len(macs(lab, fresh)) == 1 and macs(lab, fresh) != [MAC]
    same = ansible("vm_restore", dict(args, new_vm_name=kept, keep_mac_addresses=True))
    assert same["_status"] == "ok", same.get("msg")
    assert macs(lab, kept) == [MAC]
