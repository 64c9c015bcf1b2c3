# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The concurrency and fault model (test_model.py) on S3: 4+ worker processes back up, prune, verify, repair and
GC one s3:// repository on a real SeaweedFS server while the driver kills random workers with SIGKILL.

Same invariant as on local and SFTP repositories: every backup a worker reported done (of a VM no prune touches)
exists and restores bit-identical, every listed backup restores to its content, and every verify found nothing.
One bounded schedule runs by default (seed printed; ``VMSAFE_MODEL_SEED=<seed>`` replays it); ``VMSAFE_LONG_TESTS=1``
runs 20 on SeaweedFS and 5 on rclone serve s3 (which ignores If-None-Match: the HEAD-then-PUT fallback).

On S3 the ``age_locks`` quirk (backdating a lock object's mtime) cannot run: S3 has no way to set LastModified.
Foreign, skewed and stalling workers still do.
"""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import LONG
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup.test_model import run_schedule, seeds


def s3_spec(server: t.Any, seed: int) -> dict[str, t.Any]:
    return {"location": f"s3://{server.new_bucket('model')}/repo-{seed}", "options": server.options()}


def test_model_s3_slice(tmp_path: t.Any, seaweedfs: t.Any) -> None:
    for seed in seeds(1, salt=211):
        run_schedule(seed, s3_spec(seaweedfs, seed), str(tmp_path))


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="20 random schedules on SeaweedFS: set VMSAFE_LONG_TESTS=1")
def test_model_s3_20_schedules(tmp_path: t.Any, seaweedfs: t.Any) -> None:
    for seed in seeds(20, salt=223):
        run_schedule(seed, s3_spec(seaweedfs, seed), str(tmp_path))


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="5 random schedules on rclone serve s3: set VMSAFE_LONG_TESTS=1")
def test_model_rclone_5_schedules(tmp_path: t.Any, rclone_s3: t.Any) -> None:
    for seed in seeds(5, salt=227):
        run_schedule(seed, s3_spec(rclone_s3, seed), str(tmp_path))
