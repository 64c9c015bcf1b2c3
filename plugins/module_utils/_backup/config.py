# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The repository's ``config`` object: built, authenticated and range-checked in one place.

PRIVATE to this collection; no compatibility guarantees.

Every number in ``config`` decides how data is cut and read (an edited ``chunk_size`` made incrementals commit
and restores fail), so ``open`` refuses a config whose values are out of range, and, in an encrypted repository,
one whose MAC does not verify: ``mac`` = HMAC-SHA256(HMAC-SHA256(id key, "vmsafe-config"), canonical JSON of the
other fields). The key file (version 2) is sealed with the config's ``id`` in its AAD, so a key file swapped in
from another repository does not open, and a key file of version 2 makes the MAC mandatory: removing it is a
tamper, not a downgrade. A repository with ``encryption: none`` has no secret: its config carries a plain SHA-256
checksum, which finds damage but cannot find forgery (docs/repository-format.md says so).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    CorruptMetadataError,
    InvalidArgumentError,
    RepositoryFormatError,
)

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup.crypto import KeyMaterial

FORMAT_NAME = "vmsafe-backup-repository"
#: version 2 (written since 2026-12-06) may store several chunks in one frame (docs/repository-format.md §5); an engine
#: reads both and writes frames only into version 2
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)
ENCRYPTIONS = ("aes-256-gcm", "none")
MAX_CONFIG_SIZE = 64 * 1024

#: (low, high) of every number in config; chunk_size must also be a power of two
LIMITS = {
    "chunk_size": (4096, 16 * 1024 * 1024),
    "segment_chunks": (1, 1 << 20),
    "pack_size": (1024 * 1024, 1 << 32),
    "compression_level": (0, 22),
}


def check_parameters(chunk_size: int, segment_chunks: int, pack_size: int, compression_level: int,
                     error: type[Exception] = InvalidArgumentError, where: str = "") -> None:
    """Raise ``error`` naming the first value out of range."""
    values = {"chunk_size": chunk_size, "segment_chunks": segment_chunks, "pack_size": pack_size,
              "compression_level": compression_level}
    for name, value in values.items():
        low, high = LIMITS[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise error(f"{where}{name} must be an integer between {low} and {high}, not {value!r}.")
    if chunk_size & (chunk_size - 1):
        raise error(f"{where}chunk_size must be a power of two, not {chunk_size}.")


def new_config(encryption: str, chunk_size: int, segment_chunks: int, pack_size: int,
               compression_level: int, version: int = FORMAT_VERSION) -> dict[str, t.Any]:
    """A new repository's config; ``version`` 1 (no frames) only to test how repositories made before 2 are read."""
    if version not in FORMAT_VERSIONS:
        raise InvalidArgumentError(f"format version must be one of {FORMAT_VERSIONS}, not {version!r}.")
    return {
        "format": FORMAT_NAME,
        "version": version,
        "id": os.urandom(16).hex(),
        "chunk_size": chunk_size,
        "segment_chunks": segment_chunks,
        "pack_size": pack_size,
        "compression": {"algorithm": "zstd", "level": compression_level},
        "encryption": encryption,
        "chunk_id": "hmac-sha256(sha256)" if encryption != "none" else "sha256",
    }


def _canonical(config: t.Mapping[str, t.Any]) -> bytes:
    body = {k: v for k, v in config.items() if k not in ("mac", "checksum")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mac(config: t.Mapping[str, t.Any], key: "KeyMaterial") -> str:
    mac_key = hmac.new(key.id_key, b"vmsafe-config", hashlib.sha256).digest()
    return hmac.new(mac_key, _canonical(config), hashlib.sha256).hexdigest()


def encode_config(config: t.Mapping[str, t.Any], key: "KeyMaterial | None") -> bytes:
    doc = dict(config)
    if key is not None:
        doc["mac"] = _mac(config, key)
    else:
        doc["checksum"] = hashlib.sha256(_canonical(config)).hexdigest()
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def parse_config(raw: bytes, location: str) -> dict[str, t.Any]:
    """Parse and range-check config (before the key is known). Raises RepositoryFormatError."""
    fix = ("Restore 'config' from a copy of the repository (or another host's copy); never edit it: its values "
           "decide how every backup is read.")
    if len(raw) > MAX_CONFIG_SIZE:
        raise RepositoryFormatError(f"The config of the repository at {location} is {len(raw)} bytes, not a vmsafe "
                                    f"config (at most {MAX_CONFIG_SIZE}). {fix}")
    try:
        config = json.loads(raw.decode("utf-8"))
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise ValueError("not a vmsafe repository")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RepositoryFormatError(f"The config of the repository at {location} is unreadable ({exc}). {fix}") from None
    if config.get("version") not in FORMAT_VERSIONS:
        raise RepositoryFormatError(
            f"The repository at {location} has format version {config.get('version')!r}; this engine "
            f"supports versions {', '.join(map(str, FORMAT_VERSIONS))}. Upgrade vmsafe.protect."
        )
    where = f"The config of the repository at {location} is invalid: "
    compression = config.get("compression")
    if not isinstance(compression, dict) or compression.get("algorithm") != "zstd":
        raise RepositoryFormatError(f"{where}compression must be zstd. {fix}")
    if config.get("encryption") not in ENCRYPTIONS:
        raise RepositoryFormatError(f"{where}encryption must be one of {', '.join(ENCRYPTIONS)}. {fix}")
    want_id = "hmac-sha256(sha256)" if config["encryption"] != "none" else "sha256"
    if config.get("chunk_id") != want_id:
        raise RepositoryFormatError(f"{where}chunk_id must be '{want_id}' for encryption {config['encryption']}. {fix}")
    if not isinstance(config.get("id"), str) or len(config["id"]) != 32:
        raise RepositoryFormatError(f"{where}its id is malformed. {fix}")
    check_parameters(config.get("chunk_size"), config.get("segment_chunks"), config.get("pack_size"),  # type: ignore[arg-type]
                     compression.get("level"), RepositoryFormatError, where)
    return config


def authenticate_config(config: t.Mapping[str, t.Any], key: "KeyMaterial | None", mac_required: bool,
                        location: str) -> None:
    """Check the MAC (encrypted) or checksum (none). Raises CorruptMetadataError naming config and the fix."""
    problem = None
    if key is not None:
        mac = config.get("mac")
        if mac is None:
            if mac_required:
                problem = "its MAC was removed"
        elif not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(config, key)):
            problem = "its MAC does not match (it was edited, damaged, or belongs to another repository)"
    else:
        checksum = config.get("checksum")
        if checksum is not None and checksum != hashlib.sha256(_canonical(config)).hexdigest():
            problem = "its checksum does not match (it was edited or damaged)"
    if problem:
        raise CorruptMetadataError(
            f"The config of the repository at {location} is not authentic: {problem}. Nothing was read or written. "
            "Restore 'config' from a copy of this repository; never edit it."
        )
