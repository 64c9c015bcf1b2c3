# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Helpers shared by the backup engine tests."""

from __future__ import annotations

import os
import random
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.backends import LocalBackend
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import Repository

# Cheap KDF for tests only: the default (Argon2id, 32 MiB, 3 passes) is tested once explicitly.
FAST_KDF = {"name": "argon2id", "iterations": 1, "lanes": 1, "memory_kib": 1024}
PASSPHRASE = "correct horse battery staple"
LONG = os.environ.get("VMSAFE_LONG_TESTS") == "1"


def make_repo(path: str, **kwargs: t.Any) -> Repository:
    opts: dict[str, t.Any] = {
        "passphrase": PASSPHRASE,
        "chunk_size": 4096,
        "pack_size": 1024 * 1024,
        "segment_chunks": 8,
        "kdf": FAST_KDF,
    }
    opts.update(kwargs)
    if opts.get("encryption") == "none":
        opts.pop("passphrase", None)
    return Repository.init(LocalBackend(path), **opts)


def make_image(rng: random.Random, size: int) -> bytes:
    """Mixed content: zero runs, compressible text, random bytes."""
    out = bytearray()
    while len(out) < size:
        kind = rng.random()
        length = rng.randint(1, 20000)
        if kind < 0.4:
            out += bytes(length)
        elif kind < 0.75:
            out += (b"vmsafe backup %d " % rng.randint(0, 9) * (length // 16 + 1))[:length]
        else:
            out += rng.randbytes(length)
    return bytes(out[:size])
