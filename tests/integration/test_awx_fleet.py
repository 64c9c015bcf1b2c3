# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""AWX-shaped end to end: jobs run by ansible-runner from private data dirs laid out as AWX lays them out.

- The inventory is built by the vmsafe.protect.vms plugin from three hypervisors at once: the lab's libvirtd (VMs
  with no OS, 128 MiB, tiny disks), the project's vcsim and the Hyper-V WinRM simulator. Credentials arrive as
  AWX's credentials inject them (docs/awx.md): VMWARE_* (AWX's own "VMware vCenter" type), VMSAFE_HYPERV_* and
  VMSAFE_PASSPHRASE (the vmsafe custom types) in the job's environment; nothing secret in extra vars.
- Job A runs nightly_backup.yml with serial: 3 over 6 VMs (3 libvirt, 2 vcsim, 1 Hyper-V); job B backs up two
  other VMs into the same repository at the same time. Every VM must be backed up, each job must prune + GC once,
  after its own backups, and job B's prune must wait for job A's backup holding the repository lock.
- safe_patch.yml with pre_patch_snapshot_vm_name set (the inventory name differs) and a failing validation: the VM
  is reverted and no snapshot is left.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import typing as t

import pytest
import yaml

from it_helpers import LONG, ROOT, ansible_env, run_ansible  # pylint: disable=import-error

sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from vcsim import Vcsim  # noqa: E402  pylint: disable=wrong-import-position,import-error
from hyperv_sim.server import Simulator  # noqa: E402  pylint: disable=wrong-import-position,import-error

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend  # noqa: E402
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository  # noqa: E402

pytestmark = pytest.mark.libvirt
BIN = os.path.dirname(sys.executable)
PASS = "awx-fleet-test-passphrase"  # test data, not a secret
MiB = 1024 * 1024
BACKUP_TASK = "Back up the VM (incremental when the chain is intact)"
PRUNE_TASK = "Prune and garbage-collect each repository once"
SUMMARY_TASK = "One line per VM, failed and unreachable ones included"
# how long each read of the Hyper-V VM's disk takes: job A's Hyper-V backup holds the repository lock this long
HV_READ_SECONDS = 35
VC_LOGIN = ("-username", "awx-vc-user", "-password", "vc-Secr3t-for-awx")  # test data: found nowhere in the output


def runner_env() -> dict[str, str]:
    env = ansible_env()
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    for key in ("ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_LOAD_CALLBACK_PLUGINS"):
        env.pop(key, None)
    # AWX hands the job only what the credentials inject: nothing of the test's own vSphere/Hyper-V settings
    for key in list(env):
        if key.startswith(("VMWARE_", "VMSAFE_HYPERV_", "VMSAFE_PASS", "VMSAFE_HOST", "VMSAFE_USER")):
            env.pop(key)
    return env


def private_dir(base: str, name: str, extravars: dict[str, t.Any], envvars: dict[str, str],
                inventory: dict[str, str]) -> str:
    """A private data dir as AWX writes one for a job: project/, inventory/, env/extravars, env/envvars."""
    private = os.path.join(base, name)
    shutil.copytree(os.path.join(ROOT, "playbooks"), os.path.join(private, "project"))
    os.makedirs(os.path.join(private, "inventory"))
    for file_name, text in inventory.items():
        with open(os.path.join(private, "inventory", file_name), "w", encoding="utf-8") as handle:
            handle.write(text)
    os.makedirs(os.path.join(private, "env"))
    with open(os.path.join(private, "env", "extravars"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(extravars, handle)
    with open(os.path.join(private, "env", "envvars"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(dict(envvars, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".lab", "collections"),
                            ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                            ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true"), handle)
    return private


def start_job(private: str, playbook: str, ident: str) -> subprocess.Popen:
    return subprocess.Popen([os.path.join(BIN, "ansible-runner"), "run", private, "-p", playbook,  # pylint: disable=consider-using-with
                             "--ident", ident], env=runner_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish_job(proc: subprocess.Popen, private: str, ident: str) -> tuple[str, list[dict[str, t.Any]], str]:
    out, _unused = proc.communicate(timeout=900)
    artifacts = os.path.join(private, "artifacts", ident)
    with open(os.path.join(artifacts, "status"), encoding="utf-8") as handle:
        status = handle.read()
    events = []
    for path in sorted(glob.glob(os.path.join(artifacts, "job_events", "*.json"))):
        with open(path, encoding="utf-8") as handle:
            events.append(json.load(handle))
    events.sort(key=lambda e: e["counter"])
    return status, events, out


def when(event: dict[str, t.Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(event["created"])


def task_events(events: list[dict[str, t.Any]], task: str, kind: str) -> list[dict[str, t.Any]]:
    return [e for e in events if e["event"] == kind and e["event_data"].get("task") == task]


def summary_lines(events: list[dict[str, t.Any]]) -> dict[str, str]:
    (summary,) = task_events(events, SUMMARY_TASK, "runner_on_ok")
    return dict(line.split(": ", 1) for line in summary["event_data"]["res"]["msg"])


# About 70 s here (8 backups on a loaded 2-core machine): with scripts/test.sh --long.
@pytest.mark.skipif(not LONG, reason="two nightly jobs over 8 VMs on three hypervisors: set VMSAFE_LONG_TESTS=1")
def test_two_nightly_jobs_share_a_repository_across_three_hypervisors(lab, tmp_path):
    job_a_kvm = [lab.vm(f"a{i}", size_mib=16) for i in range(3)]
    job_b_kvm = [lab.vm(f"b{i}", size_mib=16) for i in range(2)]
    for index, name in enumerate(job_a_kvm + job_b_kvm):
        lab.write(name, 0x41 + index, 0, 256 * 1024)  # something to back up on each
    repo = str(tmp_path / "repo")
    Repository.init(open_backend(repo), passphrase=PASS).close()
    (tmp_path / "hv").mkdir()
    with Vcsim(extra=VC_LOGIN) as vc, Simulator(str(tmp_path / "hv")) as hv:
        hv_vm = hv.host.add_vm(f"{lab.prefix}hv0", disk_size=4 * MiB)
        hv.host.write(hv_vm, 0, b"\x5a" * MiB)
        hv.host.slow["backup_read"] = HV_READ_SECONDS
        vc_vms = ["DC0_H0_VM0", "DC0_C0_RP0_VM0"]
        job_a = job_a_kvm + vc_vms + [hv_vm.name]
        # What the credentials attached to both job templates inject (docs/awx.md section 3).
        credentials = {"VMWARE_HOST": vc.host, "VMWARE_PORT": str(vc.port), "VMWARE_USER": vc.username,
                       "VMWARE_PASSWORD": vc.password, "VMWARE_VALIDATE_CERTS": "false",
                       "VMSAFE_HYPERV_HOST": "127.0.0.1", "VMSAFE_HYPERV_PORT": str(hv.port),
                       "VMSAFE_HYPERV_USER": hv.username, "VMSAFE_HYPERV_PASSWORD": hv.password,
                       "VMSAFE_PASSPHRASE": PASS}
        inventory = {
            # the inventory source of both job templates: the plugin, one cache for both jobs
            "fleet.vms.yml": yaml.safe_dump({
                "plugin": "vmsafe.protect.vms",
                "sources": [{"name": "kvm", "hypervisor": "libvirt", "name_pattern": f"^{lab.prefix}"},
                            {"name": "vcenter", "hypervisor": "vmware"},
                            {"name": "hyperv", "hypervisor": "hyperv", "ca_path": hv.cert_path,
                             "connect_timeout": 90}],
                "cache": True, "cache_plugin": "ansible.builtin.jsonfile",
                "cache_connection": str(tmp_path / "inventory-cache"), "cache_timeout": 600,
                "groups": {"job_a": f"vmsafe_vm_name in {job_a!r}", "job_b": f"vmsafe_vm_name in {job_b_kvm!r}"},
            }),
            "hosts": f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n",
        }
        common = {"vmsafe_repository": repo, "nightly_backup_keep_last": 1, "nightly_backup_keep_daily": 2,
                  "nightly_backup_lock_timeout": 300}
        private_a = private_dir(str(tmp_path), "job-a", dict(common, nightly_backup_hosts="job_a",
                                                             nightly_backup_serial=3), credentials, inventory)
        private_b = private_dir(str(tmp_path), "job-b", dict(common, nightly_backup_hosts="job_b"), credentials,
                                inventory)
        started = time.monotonic()
        proc_a = start_job(private_a, "nightly_backup.yml", "a")
        # job B starts once job A's Hyper-V backup holds the lock: B's prune must queue behind it
        deadline = time.monotonic() + 120
        while "backup_read" not in hv.host.executed and time.monotonic() < deadline and proc_a.poll() is None:
            time.sleep(0.2)
        proc_b = start_job(private_b, "nightly_backup.yml", "b")
        status_a, events_a, out_a = finish_job(proc_a, private_a, "a")
        status_b, events_b, out_b = finish_job(proc_b, private_b, "b")
        elapsed = time.monotonic() - started
        assert hv.host.rejected == []
        leftovers = [v for v in hv.host.vms.values() if v.recovery]

    assert status_a == "successful", out_a[-5000:]
    assert status_b == "successful", out_b[-5000:]
    assert leftovers == []
    print(f"two nightly jobs, 8 VMs on three hypervisors: {elapsed:.1f} s")

    for events, vms in ((events_a, job_a), (events_b, job_b_kvm)):
        assert not [e for e in events if e["event"] in ("runner_on_failed", "runner_on_unreachable")]
        backed = {e["event_data"]["host"] for e in task_events(events, BACKUP_TASK, "runner_on_ok")}
        assert backed == set(vms)
        # prune + GC once per job, after every backup of that job
        (prune,) = task_events(events, PRUNE_TASK, "runner_on_ok")
        assert max(when(e) for e in task_events(events, BACKUP_TASK, "runner_on_ok")) < when(prune)
        lines = summary_lines(events)
        assert set(lines) == set(vms)
        assert all(" backup " in line and "FAILED" not in line and "repository pruned once" in line
                   for line in lines.values()), lines
    # batches of 3: job A's backups ran in two rounds
    starts = sorted(when(e) for e in task_events(events_a, BACKUP_TASK, "runner_on_start"))
    assert len(starts) == 6

    info = run_ansible("backup_info", {"repository": repo, "passphrase": PASS})
    assert info["_status"] == "ok", info.get("msg")
    assert {b["vm_name"] for b in info["backups"]} == set(job_a + job_b_kvm)
    for secret in (credentials["VMWARE_PASSWORD"], credentials["VMSAFE_HYPERV_PASSWORD"], PASS):
        assert secret not in out_a and secret not in out_b
        assert not [e for e in events_a + events_b if secret in json.dumps(e)]

    # job B's prune started while job A's Hyper-V backup held the lock, and finished only after it
    (hv_backup,) = [e for e in task_events(events_a, BACKUP_TASK, "runner_on_ok")
                    if e["event_data"]["host"] == hv_vm.name]
    (prune_b_end,) = task_events(events_b, PRUNE_TASK, "runner_on_ok")
    (prune_b_start,) = [e for e in task_events(events_b, PRUNE_TASK, "runner_on_start")
                        if e["event_data"]["host"] == prune_b_end["event_data"]["host"]]
    assert when(prune_b_start) < when(hv_backup) < when(prune_b_end)
    print(f"job B's prune started {(when(hv_backup) - when(prune_b_start)).total_seconds():.1f} s before job A's "
          f"Hyper-V backup ended and took {(when(prune_b_end) - when(prune_b_start)).total_seconds():.1f} s")


def test_safe_patch_reverts_the_vm_named_by_the_role_variable(lab, tmp_path):
    vm = lab.vm("patch", size_mib=16)
    patch = tmp_path / "patch.yml"
    patch.write_text(yaml.safe_dump([{"name": "A patch that changes the VM: pause it",
                                      "ansible.builtin.command": {"argv": ["virsh", "-c", "qemu:///system", "suspend",
                                                                           vm]},
                                      "changed_when": True}]))
    validate = tmp_path / "validate.yml"
    validate.write_text(yaml.safe_dump([{"name": "The application check fails",
                                         "ansible.builtin.fail": {"msg": "validation failed on purpose"}}]))
    private = private_dir(str(tmp_path), "job-c", {
        "safe_patch_tasks": str(patch), "safe_patch_validate_tasks": str(validate), "safe_patch_serial": 1,
        "safe_patch_connect_timeout": 30, "pre_patch_snapshot_min_free_bytes": 0,
        # one connection for the whole job, as group vars or a credential would give it
        "vmsafe_connection": {"hypervisor": "libvirt", "uri": "qemu:///system"},
    }, {}, {"hosts": (
        # the inventory name is not the VM's name: only the role variable names the VM
        "[patch_targets]\n"
        f"app01 ansible_connection=local ansible_python_interpreter={sys.executable} "
        f"pre_patch_snapshot_vm_name={vm}\n"
        f"[local]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")})
    status, events, out = finish_job(start_job(private, "safe_patch.yml", "c"), private, "c")
    # the host fails (after the revert) so that AWX marks the job failed and notifies
    assert status == "failed", out[-4000:]
    ok = {e["event_data"].get("task") for e in events if e["event"] == "runner_on_ok"}
    assert {"Take the rollback point", "Revert to the rollback point",
            "Remove the rollback point after the revert"} <= ok, out[-4000:]
    failed = [e["event_data"].get("task") for e in events if e["event"] == "runner_on_failed"]
    assert failed == ["The application check fails", "Fail this host, after the revert"], failed
    lines = [e["event_data"]["res"]["msg"] for e in events
             if e["event"] == "runner_on_ok" and e["event_data"].get("task") == "One line per guest"]
    assert lines == ["app01: reverted"]
    # seen from outside: the patch (a paused VM) is undone and no snapshot is left
    state = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", vm], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert state == "running"
    assert lab.snapshot_names(vm) == []
