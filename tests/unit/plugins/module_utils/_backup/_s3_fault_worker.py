# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Child process for the S3 kill -9 tests: one backup or prune on an s3:// repository, announcing when it starts.

argv: a JSON document {"location", "options", "operation", "seed"}.
"""

from __future__ import annotations

import json
import random
import sys

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import open_backend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import PASSPHRASE

IMAGE_SIZE = 7 * 1024 * 1024


def image_for(seed: int) -> bytes:
    """Incompressible but shared between seeds in its first half: packs go up as multipart uploads."""
    shared = random.Random(0).randbytes(IMAGE_SIZE // 2)
    return shared + random.Random(seed).randbytes(IMAGE_SIZE - len(shared))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    repo = Repository.open(open_backend(cfg["location"], **cfg["options"]), PASSPHRASE)
    image = image_for(cfg["seed"]) if cfg["operation"] == "backup" else b""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if cfg["operation"] == "backup":
        repo.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])], tags={"seed": str(cfg["seed"])})
    else:
        repo.prune({"keep_last": 2})
    sys.stdout.write("done\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
