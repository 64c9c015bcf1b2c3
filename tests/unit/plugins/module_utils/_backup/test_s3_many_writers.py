# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Many writers on one S3 repository (SeaweedFS): six processes (six "hosts") back up six VMs at the same time,
a prune is queued in the middle, and listing and a restore run meanwhile. All succeed, the blocks the VMs share
with committed data are stored once, every backup restores bit-identical and verify(read_data) passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import FAST_KDF, PASSPHRASE

MIB = 1024 * 1024
SHARED = 2 * MIB
UNIQUE = 256 * 1024
WRITERS = 6

WORKER = """
import json, random, sys, time
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
cfg = json.loads(sys.argv[1])
repo = Repository.open(open_backend(cfg["location"], **cfg["options"]), cfg["passphrase"])
repo.lock_wait = 120.0
if cfg["op"] == "prune":
    result = repo.prune({"keep_last": 1})
    print(json.dumps({"pruned": [r.id for r in result.pruned]}))
else:
    shared = random.Random("shared").randbytes(cfg["shared"])
    data = shared + random.Random(cfg["vm"]).randbytes(cfg["unique"])
    def extents():
        yield (0, cfg["shared"], data[:cfg["shared"]])
        time.sleep(0.5)  # a slow export: the others and the queued prune run meanwhile
        yield (cfg["shared"], cfg["unique"], data[cfg["shared"]:])
    record = repo.backup(cfg["vm"], [DiskSource("vda", len(data), extents())])
    print(json.dumps({"id": record.id}))
"""


def image(vm: str) -> bytes:
    return random.Random("shared").randbytes(SHARED) + random.Random(vm).randbytes(UNIQUE)


def test_six_hosts_back_up_at_once_with_a_prune_queued(seaweedfs: t.Any, tmp_path: t.Any) -> None:
    location = f"s3://{seaweedfs.new_bucket('fleet')}/repo"
    options = seaweedfs.options()
    repo = Repository.init(open_backend(location, **options), PASSPHRASE, chunk_size=64 * 1024, pack_size=MIB,
                           segment_chunks=8, kdf=FAST_KDF)
    base = random.Random("shared").randbytes(SHARED)
    first = repo.backup("template", [DiskSource("vda", len(base), [(0, len(base), base)])])
    stored_before = sum(size for _name, size in repo.backend.list("packs"))
    script = tmp_path / "writer.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def start(**cfg: t.Any) -> subprocess.Popen[str]:
        cfg.update(location=location, options=options, passphrase=PASSPHRASE, shared=SHARED, unique=UNIQUE)
        return subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    writers = {f"vm-{n}": start(op="backup", vm=f"vm-{n}") for n in range(WRITERS)}
    time.sleep(1.5)  # the writers hold shared locks now
    prune = start(op="prune")
    # meanwhile: listing and a restore (what backup_info and vm_restore do) work
    assert [r.id for r in repo.list(vm_name="template")] == [first.id]
    target = str(tmp_path / "template.raw")
    repo.restore(first.id, "vda", target)
    with open(target, "rb") as handle:
        assert handle.read() == base
    ids = {}
    for vm, proc in writers.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{vm}: {err[-2000:]}"
        ids[vm] = json.loads(out)["id"]
    out, err = prune.communicate(timeout=240)
    assert prune.returncode == 0, err[-2000:]
    assert json.loads(out)["pruned"] == []  # one backup per VM: keep_last 1 keeps all

    check = Repository.open(open_backend(location, **options), PASSPHRASE)
    assert sorted(r.id for r in check.list()) == sorted([first.id, *ids.values()])
    for vm, backup_id in ids.items():
        target = str(tmp_path / f"{vm}.raw")
        check.restore(backup_id, "vda", target)
        with open(target, "rb") as handle:
            assert hashlib.sha256(handle.read()).digest() == hashlib.sha256(image(vm)).digest(), vm
    assert check.verify(read_data=True).ok
    added = sum(size for _name, size in check.backend.list("packs")) - stored_before
    # the 2 MiB every VM shares with the committed template is not stored again: only the unique parts are added
    # (random data does not compress; stored seven times it would be 12 MiB more)
    assert added < WRITERS * UNIQUE + 512 * 1024, f"{added} bytes added for {WRITERS} x {UNIQUE} unique bytes"
    check.close()
    repo.close()
