# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Azure provider end to end: modules run by the real ``ansible`` command against the Azure fake.

No Azure runs here. tests/azure_fake serves ARM (Microsoft.Compute), the Entra token endpoint and the managed-disk
page blobs over HTTPS on 127.0.0.1; the provider drives it with the real azure-identity, azure-mgmt-compute and
azure-storage-blob SDKs.
"""

from __future__ import annotations

import os
import sys
import time
import typing as t

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from azure_fake.model import Cloud, Fault  # noqa: E402  pylint: disable=wrong-import-position
from azure_fake.server import AzureFake  # noqa: E402  pylint: disable=wrong-import-position

GROUP = "rg-vmsafe"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[AzureFake]:
    with AzureFake(str(tmp_path_factory.mktemp("azure-fake"))) as fake:
        yield fake


@pytest.fixture
def fake(server: AzureFake, monkeypatch: pytest.MonkeyPatch) -> AzureFake:
    server.reset()
    monkeypatch.setenv("VMSAFE_AZURE_POLL_SECONDS", "0.05")
    return server


def disk_id(cloud: Cloud, vm: str, slot: str) -> str:
    return cloud.vm_disk_ids(cloud.vm(GROUP, vm))[slot]


def set_names(cloud: Cloud, vm: str) -> list[str]:
    vm_id = cloud.vm(GROUP, vm)["properties"]["vmId"]
    return sorted({s["tags"]["vmsafe-set"] for s in cloud.snapshots.values() if s["tags"].get("vmsafe-vm") == vm_id
                   and s["tags"].get("vmsafe-purpose") == "snapshot"})


def test_snapshot_set_lifecycle_check_mode_idempotence(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0, 3))
    args = fake.connection(vm_name="web01", snapshot_name="pre-patch", description="before the patch")
    planned = ansible("vm_snapshot", args, check=True)
    assert planned["changed"] is True and planned["snapshot"]["id"] is None, planned
    assert cloud.snapshots == {}
    made = ansible("vm_snapshot", args)
    assert made["changed"] is True, made
    assert made["consistency"] == "crash_consistent"
    assert any("not take them at one instant" in w for w in made.get("warnings", [])), made.get("warnings")
    # one incremental snapshot per disk, tagged as one set
    members = list(cloud.snapshots.values())
    assert sorted(s["tags"]["vmsafe-disk"] for s in members) == ["lun0", "lun3", "os"]
    assert all(s["properties"]["incremental"] for s in members)
    assert {s["tags"]["vmsafe-set-id"] for s in members} == {made["snapshot"]["id"]}
    assert sorted(made["snapshot"]["files"]) == sorted(s["id"] for s in members)
    again = ansible("vm_snapshot", args)
    assert again["changed"] is False and len(cloud.snapshots) == 3

    info = ansible("vm_snapshot_info", fake.connection(vm_name="web01"))
    assert [s["name"] for s in info["snapshots"]] == ["pre-patch"], info
    assert info["snapshots"][0]["description"] == "before the patch"
    gone = ansible("vm_snapshot", {**args, "state": "absent"}, check=True)
    assert gone["changed"] is True and len(cloud.snapshots) == 3
    gone = ansible("vm_snapshot", {**args, "state": "absent"})
    assert gone["changed"] is True and cloud.snapshots == {}, gone
    assert ansible("vm_snapshot", {**args, "state": "absent"})["changed"] is False


def test_secret_is_not_logged_and_a_wrong_one_is_refused(ansible, fake):
    fake.cloud.add_vm(GROUP, "web01")
    bad = ansible("vm_snapshot_info", fake.connection(vm_name="web01", secret="not-the-secret"))
    assert bad["_status"] == "failed"
    assert "Failed to log in to Azure" in bad["msg"] and "AADSTS7000215" in bad["msg"], bad["msg"]
    assert "not-the-secret" not in str(bad)
    good = ansible("vm_snapshot_info", fake.connection(vm_name="web01"))
    assert good["_status"] == "ok" and fake.cloud.secret not in str(good)


def test_credentials_from_azure_environment_variables_and_profile(ansible, fake, monkeypatch, tmp_path):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01")
    base = {"hypervisor": "azure", "base_url": fake.url, "authority_host": fake.url, "ca_path": fake.ca_path,
            "vm_name": "web01"}
    monkeypatch.setenv("AZURE_CLIENT_ID", cloud.client_id)
    monkeypatch.setenv("AZURE_SECRET", cloud.secret)
    monkeypatch.setenv("AZURE_TENANT", cloud.tenant)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", cloud.subscription)
    assert ansible("vm_snapshot_info", {**base, "auth_source": "env"})["_status"] == "ok"
    for key in ("AZURE_CLIENT_ID", "AZURE_SECRET", "AZURE_TENANT", "AZURE_SUBSCRIPTION_ID"):
        monkeypatch.delenv(key)
    (tmp_path / ".azure").mkdir()
    (tmp_path / ".azure" / "credentials").write_text(
        f"[default]\nsubscription_id=nope\nclient_id=nope\nsecret=nope\ntenant=nope\n\n"
        f"[lab]\nsubscription_id={cloud.subscription}\nclient_id={cloud.client_id}\nsecret={cloud.secret}\n"
        f"tenant={cloud.tenant}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    result = ansible("vm_snapshot_info", {**base, "auth_source": "credential_file", "profile": "lab"})
    assert result["_status"] == "ok", result.get("msg")
    missing = ansible("vm_snapshot_info", {**base, "auth_source": "credential_file", "profile": "prod"})
    assert "Profile 'prod' is not in" in missing["msg"] and "default, lab" in missing["msg"]


def test_untrusted_certificate_is_refused(ansible, fake):
    fake.cloud.add_vm(GROUP, "web01")
    args = fake.connection(vm_name="web01")
    del args["ca_path"]
    result = ansible("vm_snapshot_info", args)
    assert result["_status"] == "failed" and "certificate" in result["msg"].lower(), result["msg"]


def test_throttling_is_retried_after_retry_after(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    cloud.faults.append(Fault(pattern=r"^PUT .*/snapshots/", kind="throttle", count=2, retry_after=1))
    started = time.monotonic()
    made = ansible("vm_snapshot", fake.connection(vm_name="web01", snapshot_name="s1"))
    assert made["_status"] == "ok", made.get("msg")
    assert cloud.throttled == 2 and time.monotonic() - started >= 2.0
    assert set_names(cloud, "web01") == ["s1"]


def test_throttling_that_never_ends_fails_clearly_and_leaves_nothing(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    cloud.faults.append(Fault(pattern=r"^PUT .*/snapshots/.*_DataDisk|^PUT .*-lun0-", kind="throttle", count=100,
                              retry_after=1))
    result = ansible("vm_snapshot", fake.connection(vm_name="web01", snapshot_name="s1"))
    assert result["_status"] == "failed"
    assert "throttling the requests (429)" in result["msg"] and "Retry-After" in result["msg"], result["msg"]
    assert cloud.snapshots == {}, "the OS disk's snapshot of the failed set was not removed"


def test_failed_long_running_operation_fails_clearly_and_leaves_nothing(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    cloud.faults.append(Fault(pattern=r"^PUT .*-lun0-", kind="fail_op", code="InternalDiskManagementError",
                              message="An internal disk management error occurred."))
    result = ansible("vm_snapshot", fake.connection(vm_name="web01", snapshot_name="s1"))
    assert result["_status"] == "failed"
    assert "Failed to create snapshot 's1': snapshot disk lun0" in result["msg"], result["msg"]
    assert "InternalDiskManagementError" in result["msg"]
    assert cloud.snapshots == {}


def test_slow_operation_times_out_and_says_so(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    cloud.op_polls = 10 ** 6
    result = ansible("vm_snapshot", fake.connection(vm_name="web01", snapshot_name="s1", timeout=2))
    assert result["_status"] == "failed"
    assert "still running at the timeout" in result["msg"] and "Azure cannot cancel it" in result["msg"], result["msg"]


def test_unknown_vm_names_close_matches(ansible, fake):
    fake.cloud.add_vm(GROUP, "web01", data_luns=())
    result = ansible("vm_snapshot_info", fake.connection(vm_name="web1"))
    assert result["_status"] == "failed" and "Close matches: web01" in result["msg"], result["msg"]


def test_consolidate_keeps_by_count_and_pattern(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    for name in ("pre-patch-1", "pre-patch-2", "pre-patch-3", "golden"):
        assert ansible("vm_snapshot", fake.connection(vm_name="web01", snapshot_name=name))["changed"]
    result = ansible("snapshot_consolidate", fake.connection(vm_name="web01", keep_last=1, name_pattern="^pre-patch-"))
    assert result["_status"] == "ok", result.get("msg")
    assert sorted(r["name"] for r in result["vms"][0]["removed"]) == ["pre-patch-1", "pre-patch-2"]
    assert set_names(cloud, "web01") == ["golden", "pre-patch-3"]


def test_cross_region_copy_is_listed_and_removed_with_the_set(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    made = ansible("vm_snapshot", fake.connection(vm_name="web01", snapshot_name="dr", copy_to_location="northeurope"))
    assert made["_status"] == "ok", made.get("msg")
    copies = [s for s in cloud.snapshots.values() if s["location"] == "northeurope"]
    assert len(copies) == 2 and all(s["properties"]["creationData"]["createOption"] == "CopyStart" for s in copies)
    assert all(s["properties"]["completionPercent"] == 100.0 for s in copies)
    assert len(made["snapshot"]["files"]) == 4
    assert ansible("vm_snapshot", fake.connection(vm_name="web01", snapshot_name="dr", state="absent"))["changed"]
    assert cloud.snapshots == {}
