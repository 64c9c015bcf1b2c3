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
from it_helpers import LONG  # noqa: E402  pylint: disable=wrong-import-position,import-error

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (  # noqa: E402
    ConnectionFailed,
    OperationTimeout,
    ProviderError,
    VmNotFound,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import (  # noqa: E402
    SnapshotSpec,
    VmSelector,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure  # noqa: E402

GROUP = "rg-vmsafe"
# Each module run costs the ansible start-up (8-12 s on this loaded 2-core machine); the default run keeps a few
# and checks the rest through the provider in-process (the same code the modules call).
long_only = pytest.mark.skipif(not LONG, reason="more module runs through ansible: set VMSAFE_LONG_TESTS=1")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[AzureFake]:
    with AzureFake(str(tmp_path_factory.mktemp("azure-fake"))) as fake:
        yield fake


@pytest.fixture
def fake(server: AzureFake, monkeypatch: pytest.MonkeyPatch) -> AzureFake:
    server.reset()
    monkeypatch.setenv("VMSAFE_AZURE_POLL_SECONDS", "0.05")
    return server


def provider(fake_: AzureFake, **extra: t.Any) -> azure.AzureProvider:
    """The provider as a module builds it, connected to the fake; its warnings in ``.warnings``."""
    azure.load_sdk()
    warnings: list[str] = []
    prov = azure.AzureProvider(fake_.connection(**extra), warnings.append)
    prov.connect()
    prov.warnings = warnings  # type: ignore[attr-defined]
    return prov


def snap(prov: azure.AzureProvider, name: str, vm: str = "web01", timeout: int = 60) -> t.Any:
    return prov.create_snapshot(prov.find_vm(VmSelector(name=vm)), SnapshotSpec(name=name), timeout)


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

    gone = ansible("vm_snapshot", {**args, "state": "absent"})
    assert gone["changed"] is True and cloud.snapshots == {}, gone
    if LONG:
        assert ansible("vm_snapshot", {**args, "state": "absent"})["changed"] is False


def test_wrong_secret_untrusted_certificate_and_profiles(fake, monkeypatch, tmp_path):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    with pytest.raises(ConnectionFailed, match="Failed to log in to Azure.*AADSTS7000215"):
        provider(fake, secret="not-the-secret")
    with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
        provider(fake, ca_path=None)
    (tmp_path / ".azure").mkdir()
    (tmp_path / ".azure" / "credentials").write_text(
        f"[default]\nsubscription_id=nope\nclient_id=nope\nsecret=nope\ntenant=nope\n\n"
        f"[lab]\nsubscription_id={cloud.subscription}\nclient_id={cloud.client_id}\nsecret={cloud.secret}\n"
        f"tenant={cloud.tenant}\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    no_secret = {"client_id": None, "secret": None, "tenant": None, "subscription_id": None}
    prov = provider(fake, auth_source="credential_file", profile="lab", **no_secret)
    assert prov.subscription == cloud.subscription and prov.find_vm(VmSelector(name="web01")).state == "running"
    with pytest.raises(ConnectionFailed, match=r"Profile 'prod' is not in .*; it has default, lab"):
        provider(fake, auth_source="credential_file", profile="prod", **no_secret)


@long_only
def test_secrets_from_azure_variables_never_logged(ansible, fake, monkeypatch):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01")
    base = {"hypervisor": "azure", "base_url": fake.url, "authority_host": fake.url, "ca_path": fake.ca_path,
            "vm_name": "web01"}
    bad = ansible("vm_snapshot_info", {**base, "client_id": cloud.client_id, "secret": "not-the-secret",
                                       "tenant": cloud.tenant, "subscription_id": cloud.subscription})
    assert bad["_status"] == "failed" and "AADSTS7000215" in bad["msg"], bad.get("msg")
    assert "not-the-secret" not in str(bad)
    monkeypatch.setenv("AZURE_CLIENT_ID", cloud.client_id)
    monkeypatch.setenv("AZURE_SECRET", cloud.secret)
    monkeypatch.setenv("AZURE_TENANT", cloud.tenant)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", cloud.subscription)
    assert ansible("vm_snapshot", {**base, "auth_source": "env", "snapshot_name": "s1", "description": "d"})["changed"]
    good = ansible("vm_snapshot_info", {**base, "auth_source": "env"})
    assert good["_status"] == "ok", good.get("msg")
    assert cloud.secret not in str(good)
    assert [(s["name"], s["description"]) for s in good["snapshots"]] == [("s1", "d")], good


def test_throttling_is_retried_after_retry_after(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    prov = provider(fake)
    cloud.faults.append(Fault(pattern=r"^PUT .*/snapshots/", kind="throttle", count=2, retry_after=1))
    started = time.monotonic()
    snap(prov, "s1")
    assert cloud.throttled == 2 and time.monotonic() - started >= 2.0
    assert set_names(cloud, "web01") == ["s1"]


def test_throttling_that_never_ends_fails_clearly_and_leaves_nothing(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    prov = provider(fake)
    cloud.faults.append(Fault(pattern=r"^PUT .*-lun0-", kind="throttle", count=100, retry_after=1))
    with pytest.raises(ProviderError, match=r"throttling the requests \(429\).*Retry-After"):
        snap(prov, "s1")
    assert cloud.snapshots == {}, "the OS disk's snapshot of the failed set was not removed"


def test_failed_long_running_operation_fails_clearly_and_leaves_nothing(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    prov = provider(fake)
    cloud.faults.append(Fault(pattern=r"^PUT .*-lun0-", kind="fail_op", code="InternalDiskManagementError",
                              message="An internal disk management error occurred."))
    with pytest.raises(ProviderError, match=r"Failed to create snapshot 's1': snapshot disk lun0 .*"
                                            r"\(InternalDiskManagementError\)"):
        snap(prov, "s1")
    assert cloud.snapshots == {}


def test_slow_operation_times_out_and_says_so(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    prov = provider(fake)
    cloud.op_polls = 10 ** 6
    with pytest.raises(OperationTimeout, match="still running at the timeout .*Azure cannot cancel it"):
        snap(prov, "s1", timeout=1)


def test_unknown_vm_names_close_matches_and_duplicates(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    cloud.add_vm("rg-other", "web01", data_luns=())
    prov = provider(fake)
    with pytest.raises(VmNotFound, match="Close matches: web01"):
        prov.find_vm(VmSelector(name="web1"))
    with pytest.raises(VmNotFound, match="2 VMs are named 'web01'.*set resource_group"):
        prov.find_vm(VmSelector(name="web01"))
    assert provider(fake, resource_group="rg-other").find_vm(VmSelector(name="WEB01")).id.endswith("web01")
    vm_id = cloud.vm("rg-other", "web01")["properties"]["vmId"]
    assert "rg-other" in prov.find_vm(VmSelector(id=vm_id)).id


@long_only
def test_consolidate_keeps_by_count_and_pattern(ansible, fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    prov = provider(fake)
    for name in ("pre-patch-1", "pre-patch-2", "pre-patch-3", "golden"):
        snap(prov, name)
    result = ansible("snapshot_consolidate", fake.connection(vm_name="web01", keep_last=1, name_pattern="^pre-patch-"))
    assert result["_status"] == "ok", result.get("msg")
    assert sorted(r["name"] for r in result["vms"][0]["removed"]) == ["pre-patch-1", "pre-patch-2"]
    assert set_names(cloud, "web01") == ["golden", "pre-patch-3"]


def test_cross_region_copy_is_listed_and_removed_with_the_set(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    cloud.op_polls = 2
    prov = provider(fake, copy_to_location="northeurope")
    made = snap(prov, "dr")
    copies = [s for s in cloud.snapshots.values() if s["location"] == "northeurope"]
    assert len(copies) == 2 and all(s["properties"]["creationData"]["createOption"] == "CopyStart" for s in copies)
    assert all(s["properties"]["completionPercent"] == 100.0 for s in copies)
    assert len(made.snapshot.files) == 4
    vm = prov.find_vm(VmSelector(name="web01"))
    (listed,) = prov.list_snapshots(vm)
    assert listed.name == "dr" and len(listed.files) == 4
    prov.delete_snapshot(vm, listed, False, 60)
    assert cloud.snapshots == {}


def test_partial_set_is_reported_and_removed_by_consolidation(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    prov = provider(fake)
    snap(prov, "half")
    lost = next(k for k, s in cloud.snapshots.items() if s["tags"]["vmsafe-disk"] == "lun0")
    del cloud.snapshots[lost]  # a run that could not clean up after itself
    vm = prov.find_vm(VmSelector(name="web01"))
    status = prov.consolidation_status(vm)
    assert status.needed and status.reasons == ["snapshot set 'half' lacks disk(s) lun0"]
    (leftover,) = status.leftovers
    prov.repair_leftover(vm, leftover, 60)
    assert cloud.snapshots == {} and not prov.consolidation_status(vm).needed
