# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Smoke test of benchmarks/backup_bench.py --quick (only with VMSAFE_LONG_TESTS=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing as t

import pytest

from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import LONG

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5))


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="runs borg, restic and vmsafe on a 256 MiB image: set VMSAFE_LONG_TESTS=1")
def test_benchmark_quick(tmp_path: t.Any) -> None:
    tools = ["vmsafe"] + [n for n in ("borg", "restic") if shutil.which(n)]
    tools.sort()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "backup_bench.py"),
            "--quick",
            "--workdir",
            str(tmp_path),
            "--tools",
            ",".join(tools),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| vmsafe |" in proc.stdout
    assert "bit-identical" in proc.stderr
    if len(tools) == 3:
        assert proc.stdout.count("PASS") + proc.stdout.count("MISS") == 6
