# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Full backup and restore of one image: vmsafe to a local repository, vmsafe to SeaweedFS on loopback, and restic's
own S3 backend to the same SeaweedFS, in the same run; then vmsafe's peak RSS on a sparse image 4x the size.

    python benchmarks/s3_bench.py [--size-gib 4] [--tools local,s3,restic] [--rss-factor 4] [--workdir DIR]
                                  [--s3-options JSON] [--weed-arg=-flag=value ...]

The image is backup_bench.py's (LAB.md section 4: 40 % zero, 35 % compressible, 25 % random, 1 MiB blocks). vmsafe
runs as a child process (benchmarks/vmsafe_cli.py: AES-256-GCM, zstd) with a local repository (fsynced) and with
``s3://bucket/repo`` on a SeaweedFS server started from the pinned PyPI wheel (requirements-s3.txt) on 127.0.0.1, its
data directory on the same disk; restic (``scripts/lab.sh install-bench``) runs ``s3:http://127.0.0.1:PORT/bucket``
against the same server. Each restore is fsynced and compared with the image.

Per run: wall seconds, the child's peak RSS and CPU seconds (os.wait4), and the CPU seconds the SeaweedFS server
spent meanwhile (/proc/PID/stat): on loopback both share the same cores, so this says whether a slow S3 run is the
client's or the store's. The flat-RSS run backs up (and restores) a copy of the image made sparse and grown to
``rss-factor`` times its size, into S3. Prints a Markdown table and PASS/MISS per target of issue #17.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import typing as t

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


class Measured(t.NamedTuple):
    seconds: float
    rss_mib: float
    cpu: float  # the child's user + system seconds
    server_cpu: float  # the S3 server's user + system seconds during the run (0 for local)
    stdout: str


def run(cmd: list[str], env: dict[str, str], server_pid: int | None, cwd: str | None = None,
        then: t.Callable[[], None] | None = None) -> Measured:
    """Run a child (plus ``then``, e.g. an fsync, inside the timing); raise on failure."""
    full_env = dict(os.environ, **env)
    err_path = os.path.join(os.environ["BENCH_TMP"], "child.err")
    server_before = backup_bench.proc_cpu(server_pid)
    with open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=full_env, cwd=cwd)
        stdout = proc.stdout.read().decode("utf-8", "replace") if proc.stdout else ""
        _pid, status, usage = os.wait4(proc.pid, 0)
        if then is not None:
            then()
        seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        with open(err_path, encoding="utf-8", errors="replace") as handle:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{handle.read()[-3000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime,
                    backup_bench.proc_cpu(server_pid) - server_before, stdout)


def check_same(restored: str, image: str, what: str) -> None:
    if backup_bench.sha256_file(restored) != backup_bench.sha256_file(image):
        raise RuntimeError(f"{what}: the restored image is not bit-identical")
    backup_bench.log(f"{what}: restore bit-identical")


def vmsafe(repo: str, image: str, work: str, env: dict[str, str], server_pid: int | None,
           what: str) -> dict[str, Measured]:
    cli = [sys.executable, os.path.join(HERE, "vmsafe_cli.py")]
    run(cli + ["init", repo], env, None)
    full = run(cli + ["backup", repo, image], env, server_pid)
    backup_id = json.loads(full.stdout)["id"]
    target = os.path.join(work, "restored.raw")
    if os.path.exists(target):
        os.unlink(target)
    restore = run(cli + ["restore", repo, backup_id, "vda", target], env, server_pid,
                  then=lambda: backup_bench.fsync_file(target))
    check_same(target, image, what)
    os.unlink(target)
    return {"full": full, "restore": restore}


def restic(server: _s3server.S3Server, bucket: str, image: str, work: str) -> dict[str, Measured]:
    env = {"AWS_ACCESS_KEY_ID": server.admin[0], "AWS_SECRET_ACCESS_KEY": server.admin[1],
           "RESTIC_PASSWORD": backup_bench.PASS, "RESTIC_REPOSITORY": f"s3:{server.endpoint}/{bucket}/restic",
           "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}
    run(["restic", "init"], env, None)
    full = run(["restic", "backup", "--quiet", os.path.basename(image)], env, server.proc.pid,
               cwd=os.path.dirname(image))
    target = os.path.join(work, "restic-restore")
    shutil.rmtree(target, ignore_errors=True)
    restored = os.path.join(target, os.path.basename(image))
    restore = run(["restic", "restore", "latest", "--target", target], env, server.proc.pid,
                  then=lambda: backup_bench.fsync_file(restored))
    check_same(restored, image, "restic S3")
    shutil.rmtree(target, ignore_errors=True)
    return {"full": full, "restore": restore}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(prog="s3_bench")
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--tools", default="local,s3,restic", help="comma-separated: local, s3, restic")
    parser.add_argument("--rss-factor", type=float, default=4.0,
                        help="flat-RSS run on a sparse image this many times the size (0: skip)")
    parser.add_argument("--s3-options", default="{}", help="JSON object of S3 backend options (part_size, ...)")
    parser.add_argument("--weed-arg", action="append", default=[], help="extra 'weed server' flag (repeatable)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".cache", "s3bench"))
    args = parser.parse_args()
    tools = [x.strip() for x in args.tools.split(",") if x.strip()]
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.environ["BENCH_TMP"] = work
    image = os.path.join(work, "disk.raw")
    size = int(args.size_gib * GIB) // backup_bench.MIB * backup_bench.MIB
    backup_bench.log(f"generating a {size / GIB:.2f} GiB image")
    backup_bench.generate_image(image, size)
    server = _s3server.start_seaweedfs(os.path.join(work, "seaweedfs"), extra_args=args.weed_arg)
    results: dict[str, dict[str, Measured]] = {}
    big_rss: dict[str, Measured] = {}
    base_env = {"VMSAFE_PASSPHRASE": backup_bench.PASS}
    s3_env = dict(base_env, AWS_ACCESS_KEY_ID=server.admin[0], AWS_SECRET_ACCESS_KEY=server.admin[1],
                  AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=server.endpoint,
                  VMSAFE_BACKEND_OPTIONS=args.s3_options)
    try:
        if "local" in tools:
            backup_bench.log("vmsafe, local repository")
            results["vmsafe local"] = vmsafe(os.path.join(work, "repo"), image, work, base_env, None, "vmsafe local")
            shutil.rmtree(os.path.join(work, "repo"), ignore_errors=True)
        if "s3" in tools:
            backup_bench.log("vmsafe, SeaweedFS S3 repository")
            bucket = server.new_bucket("bench")
            results["vmsafe S3"] = vmsafe(f"s3://{bucket}/repo", image, work, s3_env, server.proc.pid, "vmsafe S3")
        if "restic" in tools:
            if shutil.which("restic"):
                backup_bench.log("restic, SeaweedFS S3 repository")
                results["restic S3"] = restic(server, server.new_bucket("restic"), image, work)
            else:
                backup_bench.log("restic not installed (scripts/lab.sh install-bench): no restic row")
        if "s3" in tools and args.rss_factor > 0:
            big = os.path.join(work, "disk-sparse.raw")
            subprocess.run(["cp", "--sparse=always", image, big], check=True)
            os.truncate(big, int(size * args.rss_factor))
            os.unlink(image)  # the disk space of the 4 GiB copy, and the page cache
            backup_bench.log(f"vmsafe S3, flat RSS: {size * args.rss_factor / GIB:.1f} GiB sparse image")
            big_rss = vmsafe(f"s3://{server.new_bucket('big')}/repo", big, work, s3_env, server.proc.pid,
                             "vmsafe S3 sparse")
    finally:
        server.stop()
    print(f"\nimage {size / GIB:.2f} GiB, load average {os.getloadavg()[0]:.1f}, S3 options {args.s3_options}, "
          f"weed flags {' '.join(args.weed_arg) or '(defaults)'}\n")
    print("| run | full backup | restore | peak RSS backup / restore | CPU client / S3 server, backup | "
          "CPU client / S3 server, restore |")
    print("|---|---|---|---|---|---|")
    rows = dict(results)
    if big_rss:
        rows[f"vmsafe S3, {size * args.rss_factor / GIB:.0f} GiB sparse"] = big_rss
    for name, res in rows.items():
        full, rest = res["full"], res["restore"]
        print(f"| {name} | {full.seconds:.2f} s | {rest.seconds:.2f} s | {full.rss_mib:.0f} / {rest.rss_mib:.0f} MiB | "
              f"{full.cpu:.1f} / {full.server_cpu:.1f} s | {rest.cpu:.1f} / {rest.server_cpu:.1f} s |")
    print()
    local, s3, other = results.get("vmsafe local"), results.get("vmsafe S3"), results.get("restic S3")
    if local and s3:
        ratio = s3["full"].seconds / local["full"].seconds
        print(f"- S3 full / local full: {ratio:.2f}x (target <= 1.3x): {verdict(ratio <= 1.3)}")
        print(f"- S3 restore / local restore: {s3['restore'].seconds / local['restore'].seconds:.2f}x")
    if s3 and other:
        for step in ("full", "restore"):
            ratio = other[step].seconds / s3[step].seconds
            print(f"- restic S3 {step} / vmsafe S3 {step}: {ratio:.2f}x (target >= 2x): {verdict(ratio >= 2)}")
    if s3 and big_rss:
        grow = max(big_rss["full"].rss_mib - s3["full"].rss_mib, big_rss["restore"].rss_mib - s3["restore"].rss_mib)
        # flat: a 4x larger disk costs at most 10 % more memory (the manifest's map digests grow with the disk)
        flat = grow <= 0.1 * max(s3["full"].rss_mib, s3["restore"].rss_mib)
        print(f"- peak RSS at {args.rss_factor:g}x the disk size: +{grow:.0f} MiB: {verdict(flat)} (flat)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
