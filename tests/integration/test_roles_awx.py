# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The roles' molecule scenarios, safe_patch.yml run the way AWX runs it (ansible-runner), and the EE definition.

- molecule: extensions/molecule/<role>, default driver without containers, against the real libvirt lab.
- ansible-runner: a private data dir as AWX writes it (project/, inventory/, env/extravars, env/envvars); the job
  events it records must show the snapshot and the commit, and no failure.
- ansible-builder: `introspect` reads the collection's meta/execution-environment.yml as a build would, and `create`
  writes the build context of extensions/ee/execution-environment.yml (building the image needs a container engine,
  which this machine does not have).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from it_helpers import LONG, ROOT, SSH_OPTS, ansible_env, ssh  # pylint: disable=import-error

pytestmark = pytest.mark.libvirt
BIN = os.path.dirname(sys.executable)


def tool_env() -> dict[str, str]:
    env = ansible_env()
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["VMSAFE_COLLECTIONS"] = os.path.join(ROOT, ".lab", "collections")
    for key in ("ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_LOAD_CALLBACK_PLUGINS"):
        env.pop(key, None)
    return env


# One scenario by default (about 20-25 s each here); all three with scripts/test.sh --long.
@pytest.mark.parametrize("scenario", ["pre_patch_snapshot"] + [
    pytest.param(name, marks=pytest.mark.skipif(not LONG, reason="more molecule scenarios: set VMSAFE_LONG_TESTS=1"))
    for name in ("nightly_backup", "snapshot_hygiene")])
def test_molecule_scenario(scenario, libvirtd):
    proc = subprocess.run([os.path.join(BIN, "molecule"), "test", "-s", scenario], cwd=ROOT, env=tool_env(),
                          capture_output=True, text=True, check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "failed=0" in out and f"{scenario}" in out
    names = subprocess.run(["virsh", "-q", "list", "--all", "--name"], capture_output=True, text=True,
                           check=True).stdout.split()
    assert not [n for n in names if n.startswith("vmsafe-molecule-")], "a scenario left its VM behind"


def test_ansible_runner_runs_safe_patch_like_awx(guest, tmp_path):
    private = tmp_path / "awx-job"
    project = private / "project"
    shutil.copytree(os.path.join(ROOT, "playbooks"), project)
    (project / "patch.yml").write_text(yaml.safe_dump([
        {"name": "Leave a file", "ansible.builtin.copy": {"content": "patched by the AWX job\n",
                                                          "dest": "/etc/vmsafe-runner-patched", "mode": "0644"}}]))
    (private / "inventory").mkdir()
    (private / "inventory" / "hosts").write_text(
        "[patch_targets]\n"
        f"{guest['name']} ansible_host=127.0.0.1 ansible_port={guest['port']} ansible_user=root "
        f"ansible_ssh_private_key_file={guest['key']} ansible_python_interpreter=/usr/bin/python3 "
        f"ansible_ssh_common_args='{' '.join(SSH_OPTS)}'\n"
        "[local]\n"
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    (private / "env").mkdir()
    # What a job template's extra vars and survey answers become (no secret here: AWX writes this file to disk).
    (private / "env" / "extravars").write_text(yaml.safe_dump({
        # as a survey sends them: a task file relative to the playbook, ports one per line in a string
        "safe_patch_tasks": "patch.yml", "safe_patch_ports": "22\n", "safe_patch_serial": 1,
        "safe_patch_connect_timeout": 60}))
    (private / "env" / "envvars").write_text(yaml.safe_dump({
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".lab", "collections"), "ANSIBLE_HOST_KEY_CHECKING": "False"}))
    proc = subprocess.run([os.path.join(BIN, "ansible-runner"), "run", str(private), "-p", "safe_patch.yml",
                           "--ident", "job1"], env=tool_env(), capture_output=True, text=True, check=False,
                          timeout=900)
    artifacts = private / "artifacts" / "job1"
    assert (artifacts / "status").read_text() == "successful", proc.stdout[-4000:]
    assert proc.returncode == 0
    events = [json.loads(open(p, encoding="utf-8").read())  # pylint: disable=consider-using-with
              for p in sorted(glob.glob(str(artifacts / "job_events" / "*.json")))]
    ok_tasks = {e["event_data"].get("task") for e in events if e["event"] == "runner_on_ok"}
    assert "Take the rollback point" in ok_tasks, sorted(t_ for t_ in ok_tasks if t_)
    assert "Commit - remove the rollback point" in ok_tasks
    probed = [e["event_data"]["res"].get("item") for e in events
              if e["event"] == "runner_item_on_ok" and e["event_data"].get("task") == "Validate - ports answer"]
    assert probed == ["22"], probed  # the survey's string became the list of ports to probe
    assert not [e for e in events if e["event"] in ("runner_on_failed", "runner_on_unreachable")]
    stats = [e for e in events if e["event"] == "playbook_on_stats"]
    assert stats and not stats[-1]["event_data"]["failures"] and not stats[-1]["event_data"]["dark"]
    # what the job did, seen from outside: the patch landed and no snapshot is left
    assert ssh(guest, "cat /etc/vmsafe-runner-patched").stdout == "patched by the AWX job\n"
    left = subprocess.run(["virsh", "-q", "snapshot-list", guest["name"], "--name"], capture_output=True, text=True,
                          check=True).stdout.split()
    assert left == []


def test_execution_environment_dependencies_and_build_context(tmp_path):
    builder = os.path.join(BIN, "ansible-builder")
    intro = subprocess.run([builder, "introspect", "--sanitize", os.path.join(ROOT, ".lab", "collections")],
                           capture_output=True, text=True, check=True, timeout=120).stdout
    deps = yaml.safe_load(intro.split("\n", 1)[1])
    pins = {line.split("  #")[0].strip() for line in deps["python"]}
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as handle:
        wanted = {line.strip() for line in handle if line.strip() and not line.startswith("#")}
    assert pins == wanted, (pins, wanted)
    assert any(line.startswith("qemu-img [platform:rpm]") for line in deps["system"])

    work = tmp_path / "ee"
    work.mkdir()
    shutil.copy(os.path.join(ROOT, "extensions", "ee", "execution-environment.yml"), work)
    subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", ROOT, "--output-path", str(work)],
                   capture_output=True, check=True, timeout=300)
    (tarball,) = glob.glob(str(work / "vmsafe-protect-*.tar.gz"))
    os.rename(tarball, work / "vmsafe-protect.tar.gz")
    proc = subprocess.run([builder, "create", "-f", "execution-environment.yml", "-c", "context"], cwd=work,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    context = work / "context"
    containerfile = next(p for p in (context / "Containerfile", context / "Dockerfile") if p.exists()).read_text()
    assert "ansible-galaxy collection install" in containerfile and "introspect" in containerfile
    assert "ansible-core==2.19.14" in containerfile
    assert (context / "_build" / "collections" / "vmsafe-protect.tar.gz").stat().st_size > 10000
    reqs = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    assert reqs == {"collections": [{"name": "collections/vmsafe-protect.tar.gz", "type": "file"}]}
