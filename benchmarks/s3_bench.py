# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Full backup and restore of one image: to a local repository vs to SeaweedFS on loopback (and restic to the same
SeaweedFS when restic is installed).

    python benchmarks/s3_bench.py [--size-gib 4] [--workdir .cache/s3bench]

The image is backup_bench.py's (40 % zero, 35 % compressible, 25 % random, 1 MiB blocks). vmsafe runs as a child
process (benchmarks/vmsafe_cli.py: AES-256-GCM, zstd) once with a local repository and once with
``s3://bucket/repo`` on a SeaweedFS server started from the pinned PyPI wheel (requirements-s3.txt) on 127.0.0.1,
its data directory on the same disk as the local repository. Each restore is fsynced and compared with the image.
Prints a Markdown table: seconds, peak RSS of the child (os.wait4) and the S3/local ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAB = os.path.join(ROOT, ".lab", "collections")
if os.path.isdir(LAB) and LAB not in sys.path:
    sys.path.insert(0, LAB)
sys.path.insert(0, HERE)

import backup_bench  # noqa: E402  pylint: disable=wrong-import-position,import-error
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup import (  # noqa: E402
    _s3server,
)

GIB = 1024 * 1024 * 1024


def vmsafe(repo: str, image: str, work: str, env: dict[str, str]) -> dict[str, backup_bench.Run]:
    cli = [sys.executable, os.path.join(HERE, "vmsafe_cli.py")]
    backup_bench.run(cli + ["init", repo], env)
    full = backup_bench.run(cli + ["backup", repo, image], env)
    backup_id = json.loads(full.stdout)["id"]
    target = os.path.join(work, "restored.raw")
    if os.path.exists(target):
        os.unlink(target)
    start = time.perf_counter()
    restore = backup_bench.run(cli + ["restore", repo, backup_id, "vda", target], env)
    backup_bench.fsync_file(target)
    restore = backup_bench.Run(time.perf_counter() - start, restore.rss_mib, restore.stdout)
    if backup_bench.sha256_file(target) != backup_bench.sha256_file(image):
        raise RuntimeError(f"restore from {repo} is not bit-identical")
    backup_bench.log(f"restore from {repo} bit-identical")
    os.unlink(target)
    return {"full": full, "restore": restore}


def restic(server: _s3server.S3Server, bucket: str, image: str, work: str) -> dict[str, backup_bench.Run]:
    env = {"AWS_ACCESS_KEY_ID": server.admin[0], "AWS_SECRET_ACCESS_KEY": server.admin[1],
           "RESTIC_PASSWORD": backup_bench.PASS, "RESTIC_REPOSITORY": f"s3:{server.endpoint}/{bucket}/restic",
           "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}
    backup_bench.run(["restic", "init"], env)
    full = backup_bench.run(["restic", "backup", "--quiet", image], env, cwd=os.path.dirname(image))
    target = os.path.join(work, "restic-restore")
    shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    restore = backup_bench.run(["restic", "restore", "latest", "--target", target], env)
    restored = os.path.join(target, os.path.abspath(image).lstrip("/"))
    backup_bench.fsync_file(restored)
    restore = backup_bench.Run(time.perf_counter() - start, restore.rss_mib, restore.stdout)
    if backup_bench.sha256_file(restored) != backup_bench.sha256_file(image):
        raise RuntimeError("restic's restore is not bit-identical")
    shutil.rmtree(target, ignore_errors=True)
    return {"full": full, "restore": restore}


def main() -> int:
    parser = argparse.ArgumentParser(prog="s3_bench")
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".cache", "s3bench"))
    args = parser.parse_args()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.environ["BENCH_TMP"] = work
    image = os.path.join(work, "disk.raw")
    size = int(args.size_gib * GIB) // backup_bench.MIB * backup_bench.MIB
    backup_bench.log(f"generating a {size / GIB:.2f} GiB image")
    backup_bench.generate_image(image, size)
    server = _s3server.start_seaweedfs(os.path.join(work, "seaweedfs"))
    results = {}
    try:
        base_env = {"VMSAFE_PASSPHRASE": backup_bench.PASS}
        backup_bench.log("vmsafe, local repository")
        results["vmsafe local"] = vmsafe(os.path.join(work, "repo"), image, work, base_env)
        bucket = server.new_bucket("bench")
        s3_env = dict(base_env, AWS_ACCESS_KEY_ID=server.admin[0], AWS_SECRET_ACCESS_KEY=server.admin[1],
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=server.endpoint)
        backup_bench.log("vmsafe, SeaweedFS S3 repository")
        results["vmsafe S3 (SeaweedFS)"] = vmsafe(f"s3://{bucket}/repo", image, work, s3_env)
        if shutil.which("restic"):
            backup_bench.log("restic, SeaweedFS S3 repository")
            results["restic S3 (SeaweedFS)"] = restic(server, bucket, image, work)
        else:
            backup_bench.log("restic not installed (apt-get install restic): no restic column")
    finally:
        server.stop()
    print(f"\nimage {size / GIB:.2f} GiB, load average {os.getloadavg()[0]:.1f}\n")
    print("| run | full backup | restore | peak RSS (backup / restore) |")
    print("|---|---|---|---|")
    for name, res in results.items():
        print(f"| {name} | {res['full'].seconds:.2f} s | {res['restore'].seconds:.2f} s | "
              f"{res['full'].rss_mib:.0f} / {res['restore'].rss_mib:.0f} MiB |")
    local, s3 = results["vmsafe local"], results["vmsafe S3 (SeaweedFS)"]
    print(f"\nS3/local: full {s3['full'].seconds / local['full'].seconds:.2f}x, "
          f"restore {s3['restore'].seconds / local['restore'].seconds:.2f}x")
    if "restic S3 (SeaweedFS)" in results:
        other = results["restic S3 (SeaweedFS)"]
        print(f"restic S3 / vmsafe S3: full {other['full'].seconds / s3['full'].seconds:.2f}x, "
              f"restore {other['restore'].seconds / s3['restore'].seconds:.2f}x")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
