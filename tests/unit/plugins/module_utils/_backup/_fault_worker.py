# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Child process for the kill -9 tests: runs one backup or prune, announcing when it starts."""

from __future__ import annotations

import random
import sys

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource, Repository
from ansible_collections.vmsafe.protect.tests.unit.plugins.module_utils._backup._helpers import (
    PASSPHRASE,
    make_image,
)

IMAGE_SIZE = 3 * 1024 * 1024


def image_for(seed: int) -> bytes:
    return make_image(random.Random(seed), IMAGE_SIZE)


def main() -> None:
    path, operation, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    repo = Repository.open(LocalBackend(path), PASSPHRASE)
    image = image_for(seed) if operation == "backup" else b""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if operation == "backup":
        repo.backup("vm", [DiskSource("vda", len(image), [(0, len(image), image)])], tags={"seed": str(seed)})
    else:
        repo.prune({"keep_last": 2})
    sys.stdout.write("done\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
