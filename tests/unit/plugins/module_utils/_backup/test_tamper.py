# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Tamper suite: every metadata file truncated, bit-flipped, swapped with another repository's, replayed from an
older state, or given an absurd size.

After each change, every operation a user runs (open, list, verify with read_data, restore of each earlier backup,
a new backup, a prune) either works and gives the right bytes, or raises the engine's own error (BackupError) whose
message names the damaged file and a fix. Never a traceback of another kind, never wrong data written, never a
memory blow-up (each case runs under an address-space limit in a child process).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
import shutil
import traceback
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import BackupError
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import pack_object_name
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.retention import RetentionPolicy
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    PASSPHRASE,
    make_image,
    make_repo,
)

TARGETS = ("config", "key", "index", "manifest", "pack", "lock")
MUTATIONS = ("truncate", "empty", "flip", "swap", "replay", "huge")
#: words that show the message names the file it is about
NAMES = {"config": ("config",), "key": ("key",), "index": ("index",), "manifest": ("manifest", "backup"),
         "pack": ("pack", "chunk"), "lock": ("lock",)}
FIXES = ("restore", "run ", "break_lock", "repair", "rebuild_index", "copy", "remove", "upgrade", "passphrase")
MEMORY_LIMIT = 3 * 1024 * 1024 * 1024


def images() -> list[bytes]:
    rng = random.Random(42)
    return [make_image(rng, 120_000), make_image(rng, 70_000)]


def build(path: str, **kwargs: t.Any) -> tuple[Repository, list[str]]:
    repo = make_repo(path, **kwargs)
    ids = []
    for n, image in enumerate(images()):
        ids.append(repo.backup(f"vm{n}", [DiskSource("vda", len(image), [(0, len(image), image)])]).id)
    return repo, ids


def object_of(repo: Repository, target: str, ids: list[str]) -> str:
    if target == "config":
        return "config"
    if target == "key":
        return "keys/repokey"
    if target == "index":
        return sorted(n for n, _s in repo.backend.list("index"))[0]
    if target == "manifest":
        return f"snapshots/{ids[0]}"
    if target == "pack":
        return pack_object_name(next(iter(repo.load_index().packs())))
    name = "locks/planted"
    repo.backend.write_atomic(name, json.dumps({"owner": {"machine": "a" * 32, "boot": "b", "pid": 1, "host": "h"},
                                                "operation": "backup", "exclusive": False}).encode())
    return name


def mutate(path: str, mutation: str, other: str, older: str | None) -> None:
    data = open(path, "rb").read()
    if mutation == "truncate":
        data = data[: len(data) // 2]
    elif mutation == "empty":
        data = b""
    elif mutation == "flip":
        data = bytearray(data)
        data[len(data) // 2] ^= 0x04
        data = bytes(data)
    elif mutation == "swap":
        data = open(other, "rb").read()
    elif mutation == "replay":
        data = open(older, "rb").read() if older else data
    elif mutation == "huge":
        # an absurd size: 200 MB of junk after the real content (the address-space limit catches a blow-up)
        data = data + os.urandom(1024) * (200 * 1024)
    with open(path, "wb") as handle:
        handle.write(data)


def run_operations(path: str, ids: list[str], tmp: str, target: str, gone: str = "") -> list[str]:
    """Every user operation; returns the engine errors seen. Raises AssertionError for anything else."""
    seen: list[str] = []
    want = dict(zip(ids, images()))

    def attempt(what: str, fn: t.Callable[[], t.Any]) -> t.Any:
        try:
            return fn()
        except BackupError as exc:
            message = str(exc)
            assert any(word in message.lower() for word in NAMES[target]), f"{what}: does not name the {target}: {message}"
            assert any(fix in message.lower() for fix in FIXES), f"{what}: names no fix: {message}"
            seen.append(f"{what}: {message}")
            return None

    repo = attempt("open", lambda: Repository.open(LocalBackend(path), PASSPHRASE))
    if repo is None:
        return seen
    repo.lock_wait = 0
    attempt("list", repo.list)
    report = attempt("verify", lambda: repo.verify(read_data=True))
    if report is not None and not report.ok:
        for problem in report.errors + [d.reason for d in report.damaged]:
            assert isinstance(problem, str) and problem
    for backup_id, image in want.items():
        out = os.path.join(tmp, f"{backup_id}.raw")
        if attempt(f"restore {backup_id}", lambda b=backup_id, o=out: repo.restore(b, "vda", o)) is not None:
            assert open(out, "rb").read() == image, f"restore of {backup_id} wrote wrong data"
        assert not [n for n in os.listdir(tmp) if ".vmsafe-partial" in n]
    for record in attempt("list", repo.list) or []:
        if record.id == gone:  # a replayed backup: its data is gone, so its restore must fail clearly
            out = os.path.join(tmp, "replayed.raw")
            restored = attempt(f"restore {record.id}", lambda r=record, o=out: repo.restore(r.id, "vda", o))
            assert restored is None, "a replayed backup restored data that GC had removed"
    new = os.urandom(30_000)
    record = attempt("backup", lambda: repo.backup("vm-new", [DiskSource("vda", len(new), [(0, len(new), new)])]))
    if record is not None:
        out = os.path.join(tmp, "new.raw")
        if attempt("restore new", lambda: repo.restore(record.id, "vda", out)) is not None:
            assert open(out, "rb").read() == new
    attempt("prune", lambda: repo.prune(RetentionPolicy(keep_last=1), vm_name="vm-new"))
    repo.close()
    return seen


def case(path: str, other: str, tmp: str, target: str, mutation: str, ids: list[str], older: str | None,
         gone: str, queue: t.Any) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        repo = Repository.open(LocalBackend(path), PASSPHRASE)
        name = object_of(repo, target, ids)
        if target == "manifest" and mutation == "replay":
            # the pruned backup's manifest put back: not detected yet (docs/repository-format.md says so), but
            # its restore must fail clearly and nothing else may suffer
            name = f"snapshots/{gone}"
            repo.backend.write_atomic(name, b"")
        other_repo = Repository.open(LocalBackend(other), PASSPHRASE)
        other_name = object_of(other_repo, target, [r.id for r in other_repo.list()])
        mutate(repo.backend.local_path(name), mutation, other_repo.backend.local_path(other_name), older)
        repo.close()
        queue.put(("ok", run_operations(path, ids, tmp, target, gone)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put(("error", traceback.format_exc()))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, t.Any]:
    base = tmp_path_factory.mktemp("tamper")
    repo, ids = build(str(base / "repo"))
    older = {}
    # an older state of each file, for replays: config and key as made, the first index and manifest
    for target in ("config", "key", "index", "manifest"):
        name = object_of(repo, target, ids)
        older[target] = str(base / f"older-{target}")
        shutil.copy(repo.backend.local_path(name), older[target])
    image = os.urandom(20_000)
    repo.backup("vm0", [DiskSource("vda", len(image), [(0, len(image), image)])])
    # a backup that a prune removed (and whose data GC collected): its manifest is what a replay brings back
    gone = [repo.backup("vm-gone", [DiskSource("vda", 40_000, [(0, 40_000, os.urandom(40_000))])]) for _n in (1, 2)]
    older["manifest"] = str(base / "older-manifest")
    shutil.copy(repo.backend.local_path(f"snapshots/{gone[0].id}"), older["manifest"])
    repo.prune(RetentionPolicy(keep_last=1), vm_name="vm-gone")
    build(str(base / "other"))
    return {"base": base, "ids": ids, "older": older, "gone": gone[0].id}


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_tampered_metadata_gives_clear_errors_and_never_wrong_data(pristine: dict[str, t.Any], tmp_path: t.Any,
                                                                   target: str, mutation: str) -> None:
    path = str(tmp_path / "repo")
    shutil.copytree(pristine["base"] / "repo", path)
    other = str(pristine["base"] / "other")
    queue: t.Any = multiprocessing.get_context("fork").Queue()
    proc = multiprocessing.get_context("fork").Process(
        target=case, args=(path, other, str(tmp_path), target, mutation, pristine["ids"],
                           pristine["older"].get(target), pristine["gone"], queue))
    proc.start()
    proc.join(300)
    assert proc.exitcode == 0, f"{target}/{mutation}: the child died (exit {proc.exitcode}): memory or a crash"
    status, detail = queue.get(timeout=5)
    assert status == "ok", f"{target}/{mutation}:\n{detail}"
