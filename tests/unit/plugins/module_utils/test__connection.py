# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Environment fallbacks of the connection options: VMWARE_* for vSphere only, VMSAFE_* for every hypervisor."""

from __future__ import annotations

import json
import typing as t

import pytest

from ansible_collections.vmsafe.protect.tests.unit.conftest import patch_module_args  # 2.19+ or its fallback

from ansible_collections.vmsafe.protect.plugins.module_utils._connection import resolve_connection
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import registry
from ansible_collections.vmsafe.protect.plugins.modules import vm_snapshot_info

VCENTER = {"VMWARE_HOST": "vcenter.example.com", "VMWARE_USER": "administrator@vsphere.local",
           "VMWARE_PASSWORD": "vcenter-secret", "VMWARE_PORT": "8443", "VMWARE_VALIDATE_CERTS": "false"}
UNSET = {"hostname": None, "username": None, "password": None, "port": None, "validate_certs": None}


@pytest.mark.parametrize("hypervisor, params, env, expected", [
    # the reproduced case: only VMWARE_* set, a Hyper-V task reads none of them and keeps TLS checks on
    ("hyperv", {}, VCENTER, {"hostname": None, "username": None, "password": None, "port": None,
                             "validate_certs": True}),
    ("libvirt", {}, VCENTER, {"hostname": None, "port": None, "validate_certs": True}),
    ("vmware", {}, VCENTER, {"hostname": "vcenter.example.com", "username": "administrator@vsphere.local",
                             "password": "vcenter-secret", "port": 8443, "validate_certs": False}),
    # VMSAFE_* first, for every hypervisor
    ("hyperv", {}, dict(VCENTER, VMSAFE_HOST="hv01", VMSAFE_USER="CORP\\svc", VMSAFE_PASSWORD="hv-secret",
                        VMSAFE_PORT="5985", VMSAFE_VALIDATE_CERTS="no"),
     {"hostname": "hv01", "username": "CORP\\svc", "password": "hv-secret", "port": 5985, "validate_certs": False}),
    # the hypervisor's own variables before VMSAFE_*: one job can hold a vCenter and a Hyper-V credential
    ("vmware", {}, dict(VCENTER, VMSAFE_HOST="hv01"), {"hostname": "vcenter.example.com"}),
    ("vmware", {}, {"VMSAFE_HOST": "vc02", "VMWARE_USER": "u"}, {"hostname": "vc02", "username": "u"}),
    ("hyperv", {}, dict(VCENTER, VMSAFE_HYPERV_HOST="hv02", VMSAFE_HYPERV_PASSWORD="hv-secret", VMSAFE_HOST="x"),
     {"hostname": "hv02", "password": "hv-secret", "username": None, "validate_certs": True}),
    # what the task sets wins over any variable, false included
    ("vmware", {"hostname": "vc03", "validate_certs": True, "port": 443}, VCENTER,
     {"hostname": "vc03", "validate_certs": True, "port": 443}),
    ("hyperv", {"validate_certs": False}, {"VMSAFE_VALIDATE_CERTS": "true"}, {"validate_certs": False}),
    ("vmware", {}, {}, {"hostname": None, "validate_certs": True}),
])
def test_fallbacks_follow_the_hypervisor(hypervisor, params, env, expected):
    values = dict(UNSET, hypervisor=hypervisor, **params)
    secrets = resolve_connection(values, env)
    for key, value in expected.items():
        assert values[key] == value, key
    assert secrets == ([values["password"]] if values["password"] and "password" not in params else [])


@pytest.mark.parametrize("env, name", [({"VMSAFE_PORT": "https"}, "VMSAFE_PORT"),
                                       ({"VMWARE_VALIDATE_CERTS": "maybe"}, "VMWARE_VALIDATE_CERTS")])
def test_a_bad_value_names_the_variable(env, name):
    with pytest.raises(ValueError, match=name):
        resolve_connection(dict(UNSET, hypervisor="vmware"), env)


class Recorder:
    """Stands in for a provider class: records the options it was built with, then fails to connect."""

    seen: list[dict[str, t.Any]] = []

    def __init__(self, params: dict[str, t.Any], warn: t.Any) -> None:
        self.seen.append(dict(params))

    def connect(self) -> None:
        from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ConnectionFailed  # pylint: disable=import-outside-toplevel

        raise ConnectionFailed("recorded, not connecting")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("hypervisor", ["hyperv", "vmware"])
def test_a_module_gets_vcenter_variables_only_for_vmware(run, monkeypatch, hypervisor):
    Recorder.seen = []
    monkeypatch.setitem(registry.PROVIDERS, hypervisor, (lambda: (Recorder, None), "nothing"))
    for key, value in VCENTER.items():
        monkeypatch.setenv(key, value)
    result = run(vm_snapshot_info.main, hypervisor=hypervisor)
    assert result["failed"] and "recorded" in result["msg"]
    (params,) = Recorder.seen
    if hypervisor == "hyperv":
        assert (params["hostname"], params["username"], params["password"], params["port"]) == (None,) * 4
        assert params["validate_certs"] is True
    else:
        assert params["hostname"] == "vcenter.example.com" and params["password"] == "vcenter-secret"
        assert params["port"] == 8443 and params["validate_certs"] is False


def test_a_password_from_the_environment_is_masked(monkeypatch, capsys):
    """AnsibleModule masks only the no_log values it parsed: one read from the environment must be masked too."""

    class Echo(Recorder):
        def connect(self) -> None:
            from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ConnectionFailed  # pylint: disable=import-outside-toplevel

            raise ConnectionFailed(f"login with {self.seen[-1]['password']} refused")

    Recorder.seen = []
    monkeypatch.setitem(registry.PROVIDERS, "hyperv", (lambda: (Echo, None), "nothing"))
    monkeypatch.setenv("VMSAFE_PASSWORD", "hv-env-secret")
    monkeypatch.setenv("VMSAFE_HOST", "hv01")
    with patch_module_args({"hypervisor": "hyperv"}), pytest.raises(SystemExit):
        vm_snapshot_info.main()
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] and "login with" in result["msg"]
    assert "hv-env-secret" not in result["msg"], result["msg"]
