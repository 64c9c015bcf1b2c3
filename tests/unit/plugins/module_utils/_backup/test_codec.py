# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""BlobCodec's chunk ids."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import BlobCodec, KeyMaterial


@pytest.mark.parametrize("key_size", [32, 64, 100])
def test_chunk_ids_are_hmac_sha256_of_the_plaintext_digest(key_size: int) -> None:
    """The precomputed-pad HMAC gives exactly RFC 2104's HMAC-SHA256 (ids of every existing repository)."""
    key = KeyMaterial(os.urandom(32), os.urandom(key_size))
    codec = BlobCodec(key, 2, 65536)
    for _unused in range(50):
        digest = hashlib.sha256(os.urandom(100)).digest()
        assert codec.chunk_id(digest) == hmac.digest(key.id_key, digest, "sha256")
