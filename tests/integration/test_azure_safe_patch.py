# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""playbooks/safe_patch.yml, unchanged, against an Azure VM on the fake.

The playbook has no variable for connection options; the Azure settings reach its modules as environment variables
(VMSAFE_HYPERVISOR, AZURE_CLIENT_ID, AZURE_SECRET, AZURE_TENANT, AZURE_SUBSCRIPTION_ID, AZURE_AUTHORITY_HOST,
VMSAFE_AZURE_BASE_URL, and REQUESTS_CA_BUNDLE for the fake's CA), as on a controller or in an AWX credential. The
"guest" is the controller itself (local connection, so wait_for_connection works); the patch writes into the VM's
OS disk through the fake's guest control endpoint, as a guest would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

import pytest
import yaml

from it_helpers import LONG, ROOT, ansible_env  # pylint: disable=import-error
from test_azure_vm_snapshot import GROUP, fake, server  # noqa: F401  pylint: disable=unused-import,import-error

PATCHED = "patched by the safe_patch run"


def run_safe_patch(fake_: t.Any, tmp: t.Any, fail_validation: bool) -> tuple[subprocess.CompletedProcess, str]:
    cloud = fake_.cloud
    (tmp / "inventory").write_text(f"[patch_targets]\nweb01 ansible_connection=local "
                                   f"ansible_python_interpreter={sys.executable}\n")
    (tmp / "patch.yml").write_text(yaml.safe_dump([{
        "name": "The guest writes its patch to its OS disk",
        "ansible.builtin.uri": {"url": f"{fake_.url}/_guest/{GROUP}/web01/write?slot=os&offset=0", "method": "POST",
                                "body": PATCHED, "status_code": 204, "ca_path": fake_.ca_path}}]))
    (tmp / "validate.yml").write_text(yaml.safe_dump([{"name": "The service check fails",
                                                       "ansible.builtin.fail": {"msg": "service broken"}}]))
    extra = {"safe_patch_hosts": "patch_targets", "safe_patch_tasks": str(tmp / "patch.yml"),
             "safe_patch_connect_timeout": 30}
    if fail_validation:
        extra["safe_patch_validate_tasks"] = str(tmp / "validate.yml")
    env = ansible_env()  # with the tests' result_json stdout callback
    env.update(VMSAFE_HYPERVISOR="azure", AZURE_CLIENT_ID=cloud.client_id, AZURE_SECRET=cloud.secret,
               AZURE_TENANT=cloud.tenant, AZURE_SUBSCRIPTION_ID=cloud.subscription, AZURE_AUTHORITY_HOST=fake_.url,
               VMSAFE_AZURE_BASE_URL=fake_.url, REQUESTS_CA_BUNDLE=fake_.ca_path, VMSAFE_AZURE_POLL_SECONDS="0.05")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                           str(tmp / "inventory"), os.path.join(ROOT, "playbooks", "safe_patch.yml"), "-e",
                           json.dumps(extra)], env=env, capture_output=True, text=True, timeout=900, check=False)
    return proc, proc.stdout


def task_results(proc: subprocess.CompletedProcess) -> dict[str, dict[str, t.Any]]:
    """Task name -> web01's result; of two tasks with one name (an include and the task it includes), the one
    that ran a module."""
    assert proc.stdout.strip(), f"ansible-playbook printed nothing (rc {proc.returncode}): {proc.stderr[-3000:]}"
    found: dict[str, dict[str, t.Any]] = {}
    for result in json.loads(proc.stdout.strip().splitlines()[-1]):
        if result["_host"] == "web01" and "include_args" not in result:
            found[result["_task"].split(" : ")[-1]] = result  # a role's task is "<role> : <name>"
    return found


def test_failed_validation_reverts_by_disk_swap(fake, tmp_path):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    os_before = cloud.vm_disk_ids(cloud.vm(GROUP, "web01"))["os"]
    cloud.write(os_before, 0, b"before the patch".ljust(512, b"\0"))
    proc, out = run_safe_patch(fake, tmp_path, fail_validation=True)
    assert proc.returncode != 0, "the host must fail after its revert"
    tasks = task_results(proc)
    assert tasks["Revert to the rollback point"].get("changed") is True, tasks["Revert to the rollback point"]
    assert tasks["Remove the rollback point after the revert"].get("changed") is True
    assert "reverted" in tasks["Fail this host, after the revert"].get("msg", "")
    vm = cloud.vm(GROUP, "web01")
    os_now = cloud.vm_disk_ids(vm)["os"]
    assert os_now != os_before and vm["_power"] == "running"
    assert cloud.read(os_now, 0, 16) == b"before the patch"  # the patch is gone from the VM's disk
    assert cloud.read(os_before, 0, len(PATCHED)) == PATCHED.encode()  # and kept on the replaced disk
    assert [s for s in cloud.snapshots.values() if s["tags"].get("vmsafe-purpose") == "snapshot"] == []


@pytest.mark.skipif(not LONG, reason="the commit path of safe_patch.yml on Azure: set VMSAFE_LONG_TESTS=1")
@pytest.mark.long
def test_passing_validation_commits_and_removes_the_set(fake, tmp_path):
    cloud = fake.cloud
    cloud.add_vm(GROUP, "web01", data_luns=(0,))
    disks_before = cloud.vm_disk_ids(cloud.vm(GROUP, "web01"))
    proc, out = run_safe_patch(fake, tmp_path, fail_validation=False)
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    tasks = task_results(proc)
    assert tasks["Take the rollback point"].get("changed") is True
    assert tasks["Commit - remove the rollback point"].get("changed") is True
    assert cloud.vm_disk_ids(cloud.vm(GROUP, "web01")) == disks_before
    assert cloud.read(disks_before["os"], 0, len(PATCHED)) == PATCHED.encode()
    assert cloud.snapshots == {}
