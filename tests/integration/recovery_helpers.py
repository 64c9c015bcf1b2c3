# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Helpers of the vmsafe-recover tests: a venv with only the engine's packages, and a host environment without Ansible.

The venv is made once per set of pins and Python version (under the temp folder) and reused by later runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(ROOT, "plugins", "module_utils", "_recovery_cli.py")
ENGINE_PACKAGES = ("zstandard", "cryptography", "paramiko")


def engine_pins() -> list[str]:
    """The requirements.txt pins of the engine's packages (name==version)."""
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as handle:
        pins = [line.strip() for line in handle if re.match(rf"({'|'.join(ENGINE_PACKAGES)})==", line.strip())]
    assert len(pins) == len(ENGINE_PACKAGES), f"requirements.txt should pin {ENGINE_PACKAGES}, has {pins}"
    return pins


def base_python() -> str:
    """The interpreter the test venv was made from (a venv made from it holds none of the test venv's packages)."""
    return getattr(sys, "_base_executable", sys.executable)


def plain_env(**extra: str) -> dict[str, str]:
    """The environment of a host without Ansible: no test venv on PATH, no collection path, no PYTHONPATH."""
    drop = ("PYTHONPATH", "ANSIBLE_COLLECTIONS_PATH", "VMSAFE_COLLECTIONS_PATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.update(extra)
    return env


def engine_venv() -> str:
    """A venv with only the engine's pinned packages: made once (under a file lock, safe with xdist), then reused."""
    pins = engine_pins()
    key = hashlib.sha256("\n".join([*pins, sys.version, base_python()]).encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"vmsafe-recover-venv-{key}")
    done = os.path.join(path, ".vmsafe-complete")
    with open(path + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(done):
            shutil.rmtree(path, ignore_errors=True)
            subprocess.run([base_python(), "-m", "venv", path], check=True, env=plain_env())
            subprocess.run([os.path.join(path, "bin", "pip"), "install", "-q", *pins], check=True, capture_output=True,
                           env=plain_env())
            with open(done, "w", encoding="utf-8") as handle:
                handle.write("\n".join(pins) + "\n")
    return os.path.join(path, "bin", "python")
