# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The Azure fake against the official REST reference, operation by operation.

For every Microsoft.Compute operation the azure provider uses, the request of the operation's x-ms-examples entry in
Azure/azure-rest-api-specs (DiskRP/stable/2025-01-02 and ComputeRP/stable/2025-04-01, read on 2026-12-04) is replayed
against the fake, with plain HTTP (no SDK), and the answer must have a status code the specification allows, the
headers the example shows for it (Location on 202) and the body keys of the example's response. The facts below are
our own summary of those files (operation id, the example's file name, the allowed status codes, the keys); the
examples themselves are not copied here.
"""

from __future__ import annotations

import typing as t

import pytest
import requests

from test_azure_vm_snapshot import GROUP, fake, server  # noqa: F401  pylint: disable=unused-import,import-error

DISK_RP = "2025-01-02"
COMPUTE_RP = "2025-04-01"
SNAPSHOT_KEYS = {"id", "name", "location", "properties"}
SNAPSHOT_GET_KEYS = {"id", "name", "type", "location", "tags", "properties"}
SNAPSHOT_PROPS = {"creationData", "diskSizeGB", "diskSizeBytes", "incremental", "incrementalSnapshotFamilyId",
                  "uniqueId", "timeCreated", "provisioningState", "encryption", "osType", "hyperVGeneration"}
VM_KEYS = {"id", "name", "type", "location", "tags", "properties"}
VM_PROPS = {"vmId", "hardwareProfile", "storageProfile", "networkProfile", "provisioningState", "timeCreated"}


def _snap_body(source: str, option: str = "Copy", location: str = "westeurope") -> dict[str, t.Any]:
    return {"location": location, "properties": {"incremental": True,
                                                 "creationData": {"createOption": option, "sourceResourceId": source}}}


# Where no example covers the exact request, the closest example of the same operation is named, with how ours
# differs. (operationId, example file, method, path after the resource group, api-version, body, allowed statuses,
#  headers required on a 202, body keys of the example's final answer, keys under "properties")
CASES: list[tuple[str, str, str, str, str, t.Any, set[int], set[str], set[str], set[str]]] = [
    ("VirtualMachines_Get", "VirtualMachine_Get.json", "GET", "virtualMachines/web01?$expand=instanceView", COMPUTE_RP,
     None, {200}, set(), VM_KEYS, VM_PROPS),
    ("VirtualMachines_List", "VirtualMachine_List_MaximumSet_Gen.json", "GET", "virtualMachines", COMPUTE_RP, None, {200},
     set(), {"value"}, set()),
    ("VirtualMachines_InstanceView", "(no example; VirtualMachines_InstanceView in ComputeRP's swagger)", "GET", "virtualMachines/web01/instanceView",
     COMPUTE_RP, None, {200}, set(), {"statuses"}, set()),
    ("Snapshots_CreateOrUpdate", "Snapshot_Create_FromAnExistingSnapshot.json (a disk as source)", "PUT", "snapshots/mySnapshot1",
     DISK_RP, "os-disk", {200, 202}, {"Location"}, SNAPSHOT_KEYS, {"provisioningState", "creationData"}),
    ("Snapshots_CreateOrUpdate", "Snapshot_Create_FromAnExistingSnapshotInDifferentRegion.json", "PUT",
     "snapshots/mySnapshot2", DISK_RP, "copy-start", {200, 202}, {"Location"}, SNAPSHOT_KEYS,
     {"provisioningState", "creationData"}),
    ("Snapshots_Get", "Snapshot_GetIncrementalSnapshot.json", "GET", "snapshots/mySnapshot1", DISK_RP, None, {200},
     set(), SNAPSHOT_GET_KEYS, SNAPSHOT_PROPS),
    ("Snapshots_ListByResourceGroup", "Snapshot_ListByResourceGroup.json", "GET", "snapshots", DISK_RP, None, {200},
     set(), {"value"}, set()),
    ("Snapshots_GrantAccess", "Snapshot_BeginGetAccess.json", "POST", "snapshots/mySnapshot1/beginGetAccess", DISK_RP,
     {"access": "Read", "durationInSeconds": 300, "fileFormat": "VHDX"}, {200, 202}, {"Location"}, {"accessSAS"}, set()),
    ("Snapshots_RevokeAccess", "Snapshot_EndGetAccess.json", "POST", "snapshots/mySnapshot1/endGetAccess", DISK_RP, None,
     {200, 202}, {"Location"}, set(), set()),
    ("Disks_CreateOrUpdate", "Disk_Create_ByCopyingASnapshot.json", "PUT", "disks/myDisk", DISK_RP, "from-snapshot",
     {200, 202}, {"Location"}, SNAPSHOT_KEYS, {"provisioningState", "creationData"}),
    ("Disks_CreateOrUpdate", "Disk_Create_UploadDisk.json", "PUT", "disks/myUpload", DISK_RP, "upload",
     {200, 202}, {"Location"}, SNAPSHOT_KEYS, {"provisioningState", "creationData"}),
    ("Disks_Update", "Disk_Update_ChangeTier.json (tags instead of the tier)", "PATCH", "disks/myDisk", DISK_RP, {"tags": {"a": "b"}},
     {200, 202}, {"Location"}, SNAPSHOT_KEYS, set()),
    ("VirtualMachines_Deallocate", "VirtualMachine_Deallocate_MaximumSet_Gen.json", "POST",
     "virtualMachines/web01/deallocate", COMPUTE_RP, None, {200, 202}, {"Location"}, set(), set()),
    ("VirtualMachines_Update", "VirtualMachine_Update_DetachDataDiskUsingToBeDetachedProperty.json (OS disk by id)",
     "PATCH", "virtualMachines/web01", COMPUTE_RP, "swap-os", {200, 201}, set(), VM_KEYS, {"storageProfile"}),
    ("VirtualMachines_Start", "VirtualMachine_Start_MaximumSet_Gen.json", "POST", "virtualMachines/web01/start",
     COMPUTE_RP, None, {200, 202}, {"Location"}, set(), set()),
    ("Snapshots_Delete", "Snapshot_Delete.json", "DELETE", "snapshots/mySnapshot2", DISK_RP, None, {200, 202, 204},
     {"Location"}, set(), set()),
    ("Disks_Delete", "Disk_Delete.json", "DELETE", "disks/web01_OsDisk_1", DISK_RP, None, {200, 202, 204},
     {"Location"}, set(), set()),
    ("Snapshots_Delete", "Snapshot_Delete.json (already gone)", "DELETE", "snapshots/mySnapshot2", DISK_RP, None,
     {200, 202, 204}, set(), set(), set()),
]


def _finish(session: requests.Session, answer: requests.Response) -> requests.Response:
    """Follow a long-running operation to its end as ARM clients do: poll Azure-AsyncOperation, then read the
    resource again (PUT, PATCH) or the Location (POST, DELETE)."""
    status_url = answer.headers.get("Azure-AsyncOperation")
    for _poll in range(20):
        if not status_url:
            break
        status = session.get(status_url).json()
        assert status["status"] in ("InProgress", "Succeeded", "Failed", "Canceled")
        if status["status"] != "InProgress":
            assert status["status"] == "Succeeded", status
            break
    if answer.request.method in ("PUT", "PATCH"):
        final = session.get(answer.request.url)
        assert final.status_code == 200, final.text
        return final
    if answer.status_code == 202 and answer.headers.get("Location"):
        final = session.get(answer.headers["Location"])
        assert final.status_code in (200, 204), final.text
        return final
    return answer


def test_every_operation_the_provider_uses_answers_as_the_specification_says(fake):
    cloud = fake.cloud
    cloud.op_polls = 1
    vm = cloud.add_vm(GROUP, "web01", data_luns=(0,))
    os_disk = vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
    session = requests.Session()
    session.trust_env = False  # a REQUESTS_CA_BUNDLE of the machine would override verify
    session.verify = fake.ca_path
    token = session.post(f"{fake.url}/{cloud.tenant}/oauth2/v2.0/token",
                         data={"client_id": cloud.client_id, "client_secret": cloud.secret,
                               "grant_type": "client_credentials", "scope": "https://management.azure.com/.default"})
    assert token.status_code == 200 and token.json()["token_type"] == "Bearer"
    session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    base = f"{fake.url}/subscriptions/{cloud.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/"
    bodies = {
        "os-disk": _snap_body(os_disk),
        "copy-start": _snap_body(cloud.rid(GROUP, "snapshots", "mySnapshot1"), "CopyStart", "northeurope"),
        "from-snapshot": {"location": "westeurope", "properties": {"creationData": {
            "createOption": "Copy", "sourceResourceId": cloud.rid(GROUP, "snapshots", "mySnapshot1")}}},
        "upload": {"location": "westeurope",
                   "properties": {"creationData": {"createOption": "Upload"}, "uploadSizeBytes": 20 * 1024 * 1024 + 512}},
        "swap-os": {"properties": {"storageProfile": {"osDisk": {"name": "myDisk", "managedDisk": {
            "id": cloud.rid(GROUP, "disks", "myDisk")}}}}},
    }
    seen = []
    for operation, example, method, path, version, body, statuses, headers, keys, props in CASES:
        if isinstance(body, str):
            body = bodies[body]
        sep = "&" if "?" in path else "?"
        answer = session.request(method, f"{base}{path}{sep}api-version={version}", json=body)
        what = f"{operation} ({example}): {method} {path} -> {answer.status_code} {answer.text[:300]}"
        assert answer.status_code in statuses, what
        if answer.status_code == 202:
            assert headers <= set(answer.headers), what
        answers = [answer] if method in ("PUT", "PATCH") else []
        answers.append(_finish(session, answer))
        for one in answers:
            data = one.json() if one.content else {}
            assert keys <= set(data), f"{what}: missing {keys - set(data)}"
            inner = set(data.get("properties") or {})
            assert props <= inner, f"{what}: missing {props - inner}"
        seen.append(operation)
    assert seen == [c[0] for c in CASES]  # every case ran to its end


def test_unauthenticated_and_versionless_requests_are_refused(fake):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=())
    url = f"{fake.url}/subscriptions/{cloud.subscription}/resourceGroups/{GROUP}/providers/Microsoft.Compute/snapshots"
    answer = requests.get(f"{url}?api-version={DISK_RP}", verify=fake.ca_path, timeout=10)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "AuthenticationFailed"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, timeout=10, verify=True)  # not trusted without the test CA
