# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Helpers of the integration tests (a uniquely named module: "conftest" is ambiguous across test folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import labvm  # noqa: E402  pylint: disable=wrong-import-position,import-error

# scripts/test.sh --long: the long suites run too; by default a bounded slice of them keeps the run short.
LONG = os.environ.get("VMSAFE_LONG_TESTS") == "1"


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=os.environ["VMSAFE_COLLECTIONS_PATH"],
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "tests", "integration", "callback_plugins"),
        ANSIBLE_STDOUT_CALLBACK="result_json",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_DEPRECATION_WARNINGS="false",
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    return env


def run_ansible(module: str, args: dict[str, t.Any], check: bool = False, diff: bool = False) -> dict[str, t.Any]:
    """Run one module through the ``ansible`` command, as a user would; return the host's result."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m", f"vmsafe.protect.{module}",
           "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(), check=False, timeout=600)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"ansible printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from exc
    result = out[0]
    result["_rc"] = proc.returncode
    if result.get("_status") != "ok":
        # pytest shows this output with a failing test: the module's own words, even where the test only checks a status
        print(f"{module} {result.get('_status')}: {result.get('msg')}\n{result.get('exception', '')}{result.get('module_stderr', '')}")
    return result


class Lab:
    """Makes throwaway VMs and removes them (with every snapshot and file) at the end of the test."""

    def __init__(self) -> None:
        self.prefix = f"vmsafe-it-{uuid.uuid4().hex[:6]}-"
        self.names: list[str] = []

    def vm(self, suffix: str = "vm", **kwargs: t.Any) -> str:
        name = self.prefix + suffix
        labvm.create(name, **kwargs)
        self.names.append(name)
        return name

    write = staticmethod(labvm.write)
    check = staticmethod(labvm.check)

    @staticmethod
    def virsh(*args: str) -> str:
        return subprocess.run(["virsh", "-q", "-c", labvm.URI, *args], capture_output=True, text=True,
                              check=True).stdout

    def snapshot_names(self, name: str) -> list[str]:
        return sorted(self.virsh("snapshot-list", name, "--name").split())

    def chain(self, name: str) -> list[str]:
        info = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", labvm.active_image(name)],
                              capture_output=True, text=True, check=True).stdout
        return [layer["filename"] for layer in json.loads(info)]

    def cleanup(self) -> None:
        for name in self.names:
            labvm.destroy(name)


def age_snapshot(lab_: Lab, vm: str, snapshot: str, seconds: int) -> None:  # pylint: disable=unused-argument
    """Make a snapshot look ``seconds`` older by redefining its record with an older creationTime."""
    labvm.age(vm, snapshot, seconds)


SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=20"]


def ssh(g: dict[str, t.Any], command: str) -> subprocess.CompletedProcess:
    """Run a shell command as root on the booted guest of the ``guest`` fixture."""
    return subprocess.run(["ssh", "-i", g["key"], "-p", str(g["port"]), *SSH_OPTS, "root@127.0.0.1", command],
                          capture_output=True, text=True, check=False, timeout=120)
