# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Benchmark vmsafe's backup engine against borg and restic on the LAB.md section 4 image.

    python benchmarks/backup_bench.py [--size-gib 4] [--quick] [--workdir .cache/bench] [--skip-16g]

Generates a disk image (40 % zero blocks, 35 % compressible, 25 % random, 1 MiB blocks in a
seeded random order), then in one run and for each tool: full backup, day-2 "clustered 1 %"
(64 KiB writes in clusters) incremental, day-3 "scattered 1 %" (4 KiB writes) incremental,
restore of the last backup (plus fsync of the restored file), bytes added to the repository
and peak RSS (os.wait4 of each child process). vmsafe is run as a child process through
benchmarks/vmsafe_cli.py, encrypted (AES-256-GCM) and zstd level 3; its incrementals get the
changed extents at 64 KiB granularity, as a QEMU dirty bitmap reports them. borg runs with
zstd,3 and --encryption none, restic with its default (encrypted, compressed repo v2).
Finally vmsafe's peak RSS is measured on a 16 GiB sparse image (4x the size, read in full)
to check that memory is flat in disk size. Prints a Markdown table with PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1024 * 1024
PASS = "bench-passphrase-not-secret"


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class Run(t.NamedTuple):
    seconds: float
    rss_mib: float
    stdout: str
    cpu_s: float = 0.0  # the child's user + system CPU time (wait4)


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Run:
    """Run a child, return wall time, its own peak RSS (wait4) and stdout. Raises on failure."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out_path = os.path.join(os.environ.get("BENCH_TMP", "/tmp"), f"bench-out-{os.getpid()}")
    with open(out_path, "wb") as out, open(out_path + ".err", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env, cwd=cwd)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    with open(out_path, encoding="utf-8", errors="replace") as handle:
        stdout = handle.read()
    with open(out_path + ".err", encoding="utf-8", errors="replace") as handle:
        stderr = handle.read()
    if proc.returncode != 0:
        # a module reports its failure as JSON on stdout
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}{stdout[-2000:]}")
    return Run(seconds, usage.ru_maxrss / 1024.0, stdout, usage.ru_utime + usage.ru_stime)


def proc_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a running process so far (/proc/PID/stat); 0 for None."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_bytes(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- image generation
def make_corpus(rng: random.Random) -> bytes:
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _unused in range(rng.randint(3, 10))) for _unused in range(2000)]
    parts = []
    total = 0
    while total < 8 * MIB:
        line = " ".join(rng.choice(words) for _unused in range(rng.randint(5, 14))) + f" {rng.randint(0, 99999)}\n"
        parts.append(line)
        total += len(line)
    return "".join(parts).encode("ascii")[: 8 * MIB]


def generate_image(path: str, size: int, seed: int = 4) -> None:
    """40 % zero, 35 % compressible (text with 16 random bytes every 512, so no block repeats), 25 % random."""
    rng = random.Random(seed)
    corpus = make_corpus(rng)
    blocks = size // MIB
    kinds = ["z"] * int(blocks * 0.40) + ["c"] * int(blocks * 0.35)
    kinds += ["r"] * (blocks - len(kinds))
    rng.shuffle(kinds)
    zero = bytes(MIB)
    with open(path, "wb") as out:
        for kind in kinds:
            if kind == "z":
                out.write(zero)
            elif kind == "r":
                out.write(os.urandom(MIB))
            else:
                start = rng.randrange(0, len(corpus) - MIB)
                block = bytearray(corpus[start : start + MIB])
                noise = os.urandom(16 * (MIB // 512))
                for i in range(MIB // 512):
                    block[i * 512 : i * 512 + 16] = noise[i * 16 : i * 16 + 16]
                out.write(block)
        out.flush()
        os.fsync(out.fileno())


def apply_writes(path: str, writes: list[tuple[int, int]]) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, length in writes:
            os.pwrite(fd, os.urandom(length), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def clustered_writes(size: int, rng: random.Random) -> list[tuple[int, int]]:
    """1 % of the disk in 64 KiB writes, grouped in clusters of 1-64 consecutive writes."""
    count = max(1, int(size * 0.01) // (64 * 1024))
    writes = []
    while len(writes) < count:
        run_len = min(rng.randint(1, 64), count - len(writes))
        start = rng.randrange(0, (size - run_len * 65536) // 4096) * 4096
        writes.extend((start + i * 65536, 65536) for i in range(run_len))
    return writes


def scattered_writes(size: int, rng: random.Random) -> list[tuple[int, int]]:
    """1 % of the disk in 4 KiB writes at random 4 KiB-aligned offsets."""
    count = max(1, int(size * 0.01) // 4096)
    return [(rng.randrange(0, size // 4096) * 4096, 4096) for _unused in range(count)]


def dirty_extents(writes: list[tuple[int, int]], granularity: int = 65536) -> list[list[int]]:
    """What a dirty bitmap of ``granularity`` reports for these writes: merged aligned ranges."""
    blocks = sorted(
        {b for off, length in writes for b in range(off // granularity, (off + length - 1) // granularity + 1)}
    )
    extents: list[list[int]] = []
    for block in blocks:
        if extents and extents[-1][0] + extents[-1][1] == block * granularity:
            extents[-1][1] += granularity
        else:
            extents.append([block * granularity, granularity])
    return extents


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            data = handle.read(4 * MIB)
            if not data:
                return digest.hexdigest()
            digest.update(data)


# ---------------------------------------------------------------- tools
class Tool:
    name = ""

    def __init__(self, work: str) -> None:
        self.work = work
        self.repo = os.path.join(work, f"repo-{self.name}")
        shutil.rmtree(self.repo, ignore_errors=True)
        self.results: dict[str, t.Any] = {}

    def measure(self, label: str, fn: t.Callable[[], Run], repo_before: int | None = None) -> None:
        before = dir_bytes(self.repo) if repo_before is None else repo_before
        # flush other tools' dirty pages first, so nobody's fsync pays for someone else's writeback
        os.sync()
        result = fn()
        added = dir_bytes(self.repo) - before
        self.results[label] = {"s": result.seconds, "rss": result.rss_mib, "added": added, "cpu": result.cpu_s}
        log(f"{self.name} {label}: {result.seconds:.2f} s, +{added / 1e6:.0f} MB, rss {result.rss_mib:.0f} MiB, "
            f"CPU {result.cpu_s:.2f} s")


class Borg(Tool):
    name = "borg"

    def env(self) -> dict[str, str]:
        return {
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "BORG_BASE_DIR": os.path.join(self.work, "borg-base"),
        }

    def init(self) -> None:
        run(["borg", "init", "--encryption", "none", self.repo], self.env())

    def backup(self, label: str, image: str, _extents: t.Any = None) -> None:
        self.measure(
            label,
            lambda: run(
                ["borg", "create", "--compression", "zstd,3", f"{self.repo}::{label}", os.path.basename(image)],
                self.env(),
                cwd=os.path.dirname(image),
            ),
        )

    def restore(self, label: str, image: str, target_dir: str) -> str:
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, os.path.basename(image))

        def go() -> Run:
            r = run(["borg", "extract", f"{self.repo}::{label}"], self.env(), cwd=target_dir)
            start = time.perf_counter()
            fsync_file(target)
            return Run(r.seconds + time.perf_counter() - start, r.rss_mib, r.stdout, r.cpu_s)

        self.measure("restore", go)
        return target


class BorgRepokey(Borg):
    """borg with encryption (repokey: AES-CTR + HMAC-SHA256), full backup only, for an encrypted comparison."""

    name = "borg-repokey"

    def env(self) -> dict[str, str]:
        env = super().env()
        env["BORG_PASSPHRASE"] = PASS
        return env

    def init(self) -> None:
        run(["borg", "init", "--encryption", "repokey", self.repo], self.env())


class Restic(Tool):
    name = "restic"

    def env(self) -> dict[str, str]:
        return {
            "RESTIC_PASSWORD": PASS,
            "RESTIC_REPOSITORY": self.repo,
            "RESTIC_CACHE_DIR": os.path.join(self.work, "restic-cache"),
        }

    def init(self) -> None:
        run(["restic", "init"], self.env())

    def backup(self, label: str, image: str, _extents: t.Any = None) -> None:
        self.measure(
            label,
            lambda: run(
                ["restic", "backup", "--quiet", "--tag", label, os.path.basename(image)],
                self.env(),
                cwd=os.path.dirname(image),
            ),
        )

    def restore(self, label: str, image: str, target_dir: str) -> str:
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, os.path.basename(image))

        def go() -> Run:
            r = run(["restic", "restore", "latest", "--target", target_dir], self.env())
            start = time.perf_counter()
            fsync_file(target)
            return Run(r.seconds + time.perf_counter() - start, r.rss_mib, r.stdout, r.cpu_s)

        self.measure("restore", go)
        return target


class Vmsafe(Tool):
    name = "vmsafe"
    #: the source tree whose benchmarks/vmsafe_cli.py (and engine) runs: this one, or --vmsafe-before's
    tree = ROOT

    def __init__(self, work: str) -> None:
        super().__init__(work)
        self.ids: dict[str, str] = {}
        self.last: str | None = None

    def cli(self) -> list[str]:
        return [sys.executable, os.path.join(self.tree, "benchmarks", "vmsafe_cli.py")]

    def env(self) -> dict[str, str]:
        return {"VMSAFE_PASSPHRASE": PASS}

    init_args: list[str] = []

    def init(self) -> None:
        run(self.cli() + ["init", self.repo] + self.init_args, self.env())

    def backup(self, label: str, image: str, extents: list[list[int]] | None = None) -> None:
        cmd = self.cli() + ["backup", self.repo, image]
        if extents is not None:
            ext_file = os.path.join(self.work, f"extents-{label}.json")
            with open(ext_file, "w", encoding="utf-8") as handle:
                json.dump(extents, handle)
            cmd += ["--extents", ext_file, "--parent", t.cast(str, self.last)]
        holder: dict[str, Run] = {}

        def go() -> Run:
            holder["r"] = run(cmd, self.env())
            return holder["r"]

        self.measure(label, go)
        self.last = self.ids[label] = json.loads(holder["r"].stdout)["id"]

    def restore(self, label: str, image: str, target_dir: str) -> str:
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, os.path.basename(image))
        self.measure(
            "restore", lambda: run(self.cli() + ["restore", self.repo, self.ids[label], "vda", target], self.env())
        )
        return target


class VmsafeBefore(Vmsafe):
    """The engine of another checkout (--vmsafe-before), same settings."""

    name = "vmsafe-before"


def one_round(
    work: str, image: str, size: int, names: list[str], extra: dict[str, t.Any], no_borg_repokey: bool
) -> dict[str, Tool]:
    """Full, clustered and scattered incrementals and the restore of each tool, in the order of ``names``."""
    rng = random.Random(7)
    classes: dict[str, type[Tool]] = {"borg": Borg, "restic": Restic, "vmsafe": Vmsafe, "vmsafe-before": VmsafeBefore}
    tools: list[Tool] = [classes[n](work) for n in names]
    for tool in tools:
        tool.init()
    if "vmsafe" in names:
        with open(os.path.join(work, "repo-vmsafe", "config"), encoding="utf-8") as handle:
            vm_config = json.load(handle)
        extra["vmsafe_level"] = vm_config["compression"]["level"]
        extra["vmsafe_chunk_size"] = vm_config["chunk_size"]
    for tool in tools:
        tool.backup("full", image)
    if "borg" in names and not no_borg_repokey:
        encrypted = BorgRepokey(work)
        encrypted.init()
        encrypted.backup("full", image)
        extra["borg_repokey_full"] = encrypted.results["full"]
        shutil.rmtree(encrypted.repo, ignore_errors=True)
    clustered = clustered_writes(size, rng)
    apply_writes(image, clustered)
    for tool in tools:
        tool.backup("clustered", image, dirty_extents(clustered))
    scattered = scattered_writes(size, rng)
    apply_writes(image, scattered)
    for tool in tools:
        tool.backup("scattered", image, dirty_extents(scattered))
    expected = sha256_file(image)
    for tool in tools:
        target_dir = os.path.join(work, f"restore-{tool.name}")
        shutil.rmtree(target_dir, ignore_errors=True)
        target = tool.restore("scattered", image, target_dir)
        got = sha256_file(target)
        if got != expected:
            raise RuntimeError(f"{tool.name} restored different content ({got} != {expected})")
        shutil.rmtree(target_dir, ignore_errors=True)
    log("all restores are bit-identical to the day-3 image")
    return {tool.name: tool for tool in tools}


def before_after(rounds: list[list[Tool]], names: list[str]) -> str:
    """Medians over the rounds of this tree's vmsafe against --vmsafe-before's, with the 5 % limit of issue 14."""
    lines = [
        f"Before/after, same run, medians of {len(rounds)} round(s) (min-max):",
        "",
        "| step | before | after | after/before | <= 1.05 |",
        "|---|---|---|---|---|",
    ]
    now, then = names.index("vmsafe"), names.index("vmsafe-before")
    for step in ("full", "clustered", "scattered", "restore"):
        a = sorted(r[now].results[step]["s"] for r in rounds)
        b = sorted(r[then].results[step]["s"] for r in rounds)
        ma, mb = statistics.median(a), statistics.median(b)
        lines.append(
            f"| {step} | {mb:.3f} s ({b[0]:.2f}-{b[-1]:.2f}) | {ma:.3f} s ({a[0]:.2f}-{a[-1]:.2f}) "
            f"| {ma / mb:.3f} | {'PASS' if ma <= mb * 1.05 else 'MISS'} |"
        )
    steps = ("full", "clustered", "scattered")
    pairs = (
        ("peak RSS (MiB, max)", max(v["rss"] for r in rounds for v in r[then].results.values()),
         max(v["rss"] for r in rounds for v in r[now].results.values())),
        ("bytes stored (MB, round 1)", sum(rounds[0][then].results[s]["added"] for s in steps) / 1e6,
         sum(rounds[0][now].results[s]["added"] for s in steps) / 1e6),
    )
    for label, b, a in pairs:
        lines.append(f"| {label} | {b:.0f} | {a:.0f} | {a / b:.3f} | {'PASS' if a <= b * 1.05 else 'MISS'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- report
def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def table(tools: list[Tool], size: int, extra: dict[str, t.Any]) -> str:
    lines = [
        f"Image {size / 2**30:.2f} GiB (40 % zero, 35 % compressible, 25 % random); MB = 10^6 bytes added; "
        "restore includes fsync of the restored file. borg: zstd,3, no encryption; restic: defaults (encrypted, "
        f"zstd auto); vmsafe: AES-256-GCM, zstd level {extra.get('vmsafe_level', '?')}, "
        f"{extra.get('vmsafe_chunk_size', 0) // 1024} KiB chunks, "
        "incrementals given the 64 KiB dirty-bitmap extents.",
        "",
        "| tool | full | incr. clustered 1 % | incr. scattered 1 % | restore | peak RSS | CPU s full / restore |",
        "|---|---|---|---|---|---|---|",
    ]
    for tool in tools:
        r = tool.results
        rss = max(v["rss"] for v in r.values())
        lines.append(
            f"| {tool.name} | {r['full']['s']:.2f} s, {r['full']['added'] / 1e6:.0f} MB "
            f"| {r['clustered']['s']:.2f} s, +{r['clustered']['added'] / 1e6:.1f} MB "
            f"| {r['scattered']['s']:.2f} s, +{r['scattered']['added'] / 1e6:.1f} MB "
            f"| {r['restore']['s']:.2f} s | {rss:.0f} MiB "
            f"| {r['full']['cpu']:.1f} / {r['restore']['cpu']:.1f} |"
        )
    if "borg_repokey_full" in extra:
        enc = extra["borg_repokey_full"]
        lines.append(
            f"| borg repokey (encrypted) | {enc['s']:.2f} s, {enc['added'] / 1e6:.0f} MB | | | | {enc['rss']:.0f} MiB "
            f"| {enc['cpu']:.1f} / |"
        )
    by = {tool.name: tool.results for tool in tools}
    if "vmsafe" not in by:
        return "\n".join(lines)
    v = by["vmsafe"]
    lines += ["", "| target | measured | result |", "|---|---|---|"]

    def row(name: str, value: float, ok: bool, detail: str) -> None:
        lines.append(f"| {name} | {detail} | {'PASS' if ok else 'MISS'} |")

    if "borg" in by and "restic" in by:
        b, r = by["borg"], by["restic"]
        if "borg_repokey_full" in extra:
            enc_ratio = extra["borg_repokey_full"]["s"] / v["full"]["s"]
            lines.append(
                f"| (info, no target) full vs encrypted borg (repokey) | borg-repokey/vmsafe {enc_ratio:.2f}x | - |"
            )
        speed = min(b["full"]["s"], r["full"]["s"]) / v["full"]["s"]
        row(
            "full >= 2.5x faster than borg and restic",
            speed,
            speed >= 2.5,
            f"borg/vmsafe {ratio(b['full']['s'], v['full']['s'])}, restic/vmsafe {ratio(r['full']['s'], v['full']['s'])}",
        )
        rs = b["restore"]["s"] / v["restore"]["s"]
        cores = os.cpu_count() or 1
        lines.append(
            f"| (info) full: vmsafe's CPU time on {cores} cores | {v['full']['cpu']:.1f} CPU s: no less than "
            f"{v['full']['cpu'] / cores:.2f} s wall; 2.5x needs <= {min(b['full']['s'], r['full']['s']) / 2.5:.2f} s | - |"
        )
        row(
            "restore >= 2.5x faster than borg",
            rs,
            rs >= 2.5,
            f"borg/vmsafe {rs:.2f}x " f"(restic/vmsafe {ratio(r['restore']['s'], v['restore']['s'])})",
        )
        sc = v["scattered"]["added"] / r["scattered"]["added"] if r["scattered"]["added"] else 0.0
        row(
            "scattered 1 % bytes added <= 0.25x restic's",
            sc,
            sc <= 0.25,
            f"vmsafe/restic {sc:.3f}x "
            f"(vmsafe/borg {v['scattered']['added'] / max(1, b['scattered']['added']):.3f}x)",
        )
        cl = r["clustered"]["s"] / v["clustered"]["s"]
        row(
            "clustered 1 % incremental (given extents) >= 20x faster than restic",
            cl,
            cl >= 20,
            f"restic/vmsafe {cl:.1f}x",
        )
        v_rss = max(x["rss"] for x in v.values())
        r_rss = max(x["rss"] for x in r.values())
        row("peak RSS <= restic's (same run)", v_rss, v_rss <= r_rss, f"vmsafe {v_rss:.0f} MiB, restic {r_rss:.0f} MiB")
    if "rss_16g" in extra:
        v_rss = v["full"]["rss"]
        big = extra["rss_16g"]
        ok = big <= v_rss * 1.10 + 2
        row(
            "peak RSS flat in disk size (full backup, 4x size sparse image)",
            big,
            ok,
            f"{extra['size_small'] / 2**30:.2f} GiB: {v_rss:.0f} MiB, {extra['size_big'] / 2**30:.2f} GiB: {big:.0f} MiB "
            f"({extra['big_seconds']:.1f} s)",
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true", help="256 MiB image, for a smoke test")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".cache", "bench"))
    parser.add_argument("--tools", default="borg,restic,vmsafe")
    parser.add_argument("--skip-16g", action="store_true", help="skip the flat-RSS run on the 4x sparse image")
    parser.add_argument("--keep", action="store_true", help="keep repositories and images afterwards")
    parser.add_argument("--no-borg-repokey", action="store_true", help="skip the encrypted borg full backup")
    parser.add_argument("--vmsafe-chunk-size", type=int, help="chunk size of the vmsafe repository (default 64 KiB)")
    parser.add_argument("--vmsafe-level", type=int, help="zstd level of the vmsafe repository (default: engine's)")
    parser.add_argument(
        "--vmsafe-before",
        metavar="TREE",
        help="another checkout of the collection (git worktree add ../before REV) run as tool 'vmsafe-before' "
        "beside this tree's vmsafe, for a same-run before/after comparison (medians, ratio, 5 %% limit)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole run, tool order reversed each round")
    args = parser.parse_args(argv)
    size = 256 * MIB if args.quick else int(args.size_gib * 1024) * MIB
    names = [n for n in args.tools.split(",") if n]
    missing = [n for n in names if n in ("borg", "restic") and shutil.which(n) is None]
    if missing:
        sys.stderr.write(
            f"{', '.join(missing)} not found on PATH. Install them from Debian: "
            "apt-get install borgbackup restic (or pass --tools vmsafe).\n"
        )
        return 2
    if args.vmsafe_chunk_size:
        Vmsafe.init_args += ["--chunk-size", str(args.vmsafe_chunk_size)]
    if args.vmsafe_level is not None:
        Vmsafe.init_args += ["--level", str(args.vmsafe_level)]
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    os.environ["BENCH_TMP"] = work
    image_dir = os.path.join(work, "image")
    os.makedirs(image_dir, exist_ok=True)
    image = os.path.join(image_dir, "disk.raw")
    log(f"generating {size / 2**30:.2f} GiB image at {image}")
    generate_image(image, size)
    if args.vmsafe_before:
        before_tree = os.path.abspath(args.vmsafe_before)
        if not os.path.isfile(os.path.join(before_tree, "benchmarks", "vmsafe_cli.py")):
            sys.stderr.write(f"--vmsafe-before {before_tree}: no benchmarks/vmsafe_cli.py there.\n")
            return 2
        names.append("vmsafe-before")
        VmsafeBefore.tree = before_tree
    rounds: list[list[Tool]] = []
    extra: dict[str, t.Any] = {}
    for number in range(max(1, args.rounds)):
        if number:
            generate_image(image, size)
        order = names if number % 2 == 0 else names[::-1]
        log(f"round {number + 1} of {args.rounds}: {', '.join(order)}")
        by_name = one_round(work, image, size, order, extra, args.no_borg_repokey)
        rounds.append([by_name[n] for n in names])
    if "vmsafe" in names and not args.skip_16g:
        big = os.path.join(image_dir, "disk-4x-sparse.raw")
        subprocess.run(["cp", "--sparse=always", image, big], check=True)
        os.truncate(big, size * 4)
        repo = os.path.join(work, "repo-vmsafe-4x")
        shutil.rmtree(repo, ignore_errors=True)
        vm = Vmsafe(work)
        vm.repo = repo  # same settings (init_args) as the main vmsafe repository
        vm.init()
        r = run(vm.cli() + ["backup", repo, big], vm.env())
        extra.update(rss_16g=r.rss_mib, size_small=size, size_big=size * 4, big_seconds=r.seconds)
        log(
            f"vmsafe full backup of {size * 4 / 2**30:.1f} GiB sparse image: {r.seconds:.2f} s, rss {r.rss_mib:.0f} MiB"
        )
        os.unlink(big)
        shutil.rmtree(repo, ignore_errors=True)
    for number, tools in enumerate(rounds):
        if len(rounds) > 1:
            sys.stdout.write(f"\n### Round {number + 1}\n\n")
        sys.stdout.write(table(tools, size, extra) + "\n")
    if args.vmsafe_before:
        sys.stdout.write("\n" + before_after(rounds, names) + "\n")
    if not args.keep:
        for tool in rounds[-1]:
            shutil.rmtree(tool.repo, ignore_errors=True)
        shutil.rmtree(image_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
