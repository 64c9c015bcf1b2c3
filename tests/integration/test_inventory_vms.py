# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The vmsafe.protect.vms inventory plugin, read by the real ``ansible-inventory``, over three sources at once.

Sources: the lab's libvirtd (throwaway VMs of this test, by name pattern), the project's vcsim and the Hyper-V
WinRM simulator. Credentials come from the environment as AWX credentials inject them (VMWARE_* for the vCenter,
VMSAFE_HYPERV_* for the Hyper-V host). Checked: hosts and their variables, the groups, that no password reaches
the host variables or the cache, and that a cached inventory is served with the hypervisors gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

import pytest
import yaml

from it_helpers import age_snapshot, ansible_env, run_ansible  # pylint: disable=import-error

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lab"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position,import-error
from hyperv_sim.server import Simulator  # noqa: E402  pylint: disable=wrong-import-position,import-error

pytestmark = pytest.mark.libvirt
PASS = "inventory-test-passphrase"  # test data, not a secret
DAY = 86400


def credential_env(vc: Vcsim, hv: Simulator) -> dict[str, str]:
    """What the AWX credentials of docs/awx.md inject: the vCenter one (VMWARE_*), the Hyper-V one (VMSAFE_HYPERV_*)."""
    return {"VMWARE_HOST": vc.host, "VMWARE_PORT": str(vc.port), "VMWARE_USER": vc.username,
            "VMWARE_PASSWORD": vc.password, "VMWARE_VALIDATE_CERTS": "false",
            "VMSAFE_HYPERV_HOST": "127.0.0.1", "VMSAFE_HYPERV_PORT": str(hv.port),
            "VMSAFE_HYPERV_USER": hv.username, "VMSAFE_HYPERV_PASSWORD": hv.password}


def inventory(config: str, env: dict[str, str], *extra: str) -> tuple[int, dict[str, t.Any], str]:
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", config,
                           "--list", *extra], capture_output=True, text=True,
                          env=dict(ansible_env(), ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true", **env),
                          check=False, timeout=300)
    try:
        return proc.returncode, json.loads(proc.stdout) if proc.returncode == 0 else {}, proc.stderr
    except json.JSONDecodeError as exc:
        raise AssertionError(f"no JSON from ansible-inventory:\n{proc.stdout}\n{proc.stderr}") from exc


def unwrap(value: t.Any) -> t.Any:
    """ansible-inventory --list marks strings as unsafe ({"__ansible_unsafe": ...}): the plain value."""
    if isinstance(value, dict):
        return value["__ansible_unsafe"] if set(value) == {"__ansible_unsafe"} else {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def test_three_hypervisors_variables_groups_no_secret_and_cache(lab, tmp_path):
    old = lab.vm("old", start=False)
    fresh = lab.vm("fresh")
    run = run_ansible("vm_snapshot", {"vm_name": old, "snapshot_name": "forgotten"})
    assert run["_status"] == "ok", run.get("msg")
    lab_age = 5 * DAY
    age_snapshot(lab, old, "forgotten", lab_age)
    repo = str(tmp_path / "repo")
    backed = run_ansible("vm_backup", {"vm_name": fresh, "repository": repo, "passphrase": PASS, "init": True,
                                       "quiesce": False})
    assert backed["_status"] == "ok", backed.get("msg")

    (tmp_path / "hv").mkdir()
    login = ("-username", "inv-vc-user", "-password", "vc-Secr3t-for-inventory")  # test data, found nowhere after
    with Vcsim(extra=login) as vc, Simulator(str(tmp_path / "hv")) as hv:
        hv.host.add_vm("hv-web01")
        hv.host.add_vm("hv-db01", state="Off")
        config = tmp_path / "fleet.vms.yml"
        config.write_text(yaml.safe_dump({
            "plugin": "vmsafe.protect.vms",
            "sources": [
                {"name": "kvm", "hypervisor": "libvirt", "name_pattern": f"^{lab.prefix}"},
                {"name": "vcsim", "hypervisor": "vmware"},
                {"name": "hv", "hypervisor": "hyperv", "ca_path": hv.cert_path, "prefix": "hv01-"},
            ],
            "repository": repo,
            "old_snapshot_age": "3d",
            "cache": True, "cache_plugin": "ansible.builtin.jsonfile",
            "cache_connection": str(tmp_path / "cache"), "cache_timeout": 3600,
            "keyed_groups": [{"key": "vmsafe_power_state", "prefix": "power"}],
        }))
        env = dict(credential_env(vc, hv), VMSAFE_PASSPHRASE=PASS)
        rc, listing, err = inventory(str(config), env)
        assert rc == 0, err
        hv_requests = len(hv.host.executed)

    hostvars = unwrap(listing["_meta"]["hostvars"])
    assert set(hostvars) == {old, fresh, "DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1",
                             "hv01-hv-web01", "hv01-hv-db01"}
    assert hostvars[old]["vmsafe_snapshot_count"] == 1
    assert lab_age <= hostvars[old]["vmsafe_oldest_snapshot_age"] < lab_age + 600
    assert hostvars[fresh]["vmsafe_oldest_snapshot_age"] is None
    assert hostvars[fresh]["vmsafe_last_backup_id"] == backed["backup_id"]
    assert 0 <= hostvars[fresh]["vmsafe_last_backup_age"] < 600
    assert hostvars[old]["vmsafe_last_backup_age"] is None
    assert hostvars["hv01-hv-db01"]["vmsafe_vm_name"] == "hv-db01"
    assert hostvars["hv01-hv-db01"]["vmsafe_power_state"] == "shutoff"
    assert hostvars[old]["vmsafe_power_state"] == "shutoff" and hostvars[fresh]["vmsafe_power_state"] == "running"
    assert hostvars["DC0_H0_VM0"]["vmsafe_hypervisor"] == "vmware"
    # what the roles read to reach the same hypervisor: from the environment, the password left out
    assert hostvars["DC0_H0_VM0"]["vmsafe_connection"] == {
        "hypervisor": "vmware", "hostname": "127.0.0.1", "port": int(env["VMWARE_PORT"]), "username": env["VMWARE_USER"],
        "validate_certs": False, "connect_timeout": 30}
    assert hostvars["hv01-hv-web01"]["vmsafe_connection"]["hostname"] == "127.0.0.1"
    assert hostvars["hv01-hv-web01"]["vmsafe_connection"]["validate_certs"] is True  # VMWARE_VALIDATE_CERTS not read
    assert hostvars[old]["vmsafe_connection"] == {"hypervisor": "libvirt", "connect_timeout": 30}

    groups = {name: set(body.get("hosts", [])) for name, body in listing.items() if name != "_meta"}
    assert groups["has_old_snapshots"] == {old}
    assert groups["no_backup_24h"] == set(hostvars) - {fresh}
    assert groups["hypervisor_libvirt"] == {old, fresh}
    assert groups["hypervisor_hyperv"] == {"hv01-hv-web01", "hv01-hv-db01"}
    assert len(groups["hypervisor_vmware"]) == 4
    assert "hv01-hv-db01" in groups["power_shutoff"]
    # one WinRM command for every VM and its checkpoints
    assert hv.host.executed == ["list_vms_checkpoints"] and hv_requests == 1

    cached = "".join(open(os.path.join(root, f), encoding="utf-8").read()  # pylint: disable=consider-using-with
                     for root, _dirs, files in os.walk(tmp_path / "cache") for f in files)
    secrets = (env["VMWARE_PASSWORD"], env["VMSAFE_HYPERV_PASSWORD"], PASS)
    assert cached and not [s for s in secrets if s in cached or s in json.dumps(listing)]

    # the hypervisors are gone: the cache answers, with the same hosts; a flushed cache fails naming the source
    rc, again, err = inventory(str(config), env)
    assert rc == 0, err
    assert set(again["_meta"]["hostvars"]) == set(hostvars)
    rc, _nothing, err = inventory(str(config), env, "--flush-cache")
    assert rc != 0 and "vcsim" in err, err


def test_a_source_without_its_credentials_fails_naming_it(tmp_path):
    """Only VMWARE_* set: the Hyper-V source reads none of them and fails for want of a host, naming itself."""
    config = tmp_path / "hv.vms.yml"
    config.write_text(yaml.safe_dump({"plugin": "vmsafe.protect.vms",
                                      "sources": [{"name": "hv-nohost", "hypervisor": "hyperv"}]}))
    rc, _listing, err = inventory(str(config), {"VMWARE_HOST": "127.0.0.1", "VMWARE_USER": "u",
                                                "VMWARE_PASSWORD": "vcenter-password-for-no-hyperv"})
    assert rc != 0
    assert "hv-nohost" in err and "needs hostname" in err, err
    assert "vcenter-password-for-no-hyperv" not in err
