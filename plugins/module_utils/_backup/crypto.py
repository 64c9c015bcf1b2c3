# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Keys, chunk ids, compression and authenticated encryption of blobs.

PRIVATE to this collection; no compatibility guarantees.

A repository has one random 64-byte master key (32 bytes AES-256-GCM key, 32 bytes
id key). It is stored in the key file wrapped with AES-256-GCM under a key derived
from the passphrase (Argon2id, or scrypt where Argon2id is unavailable). Chunk ids are
HMAC-SHA256(id key, SHA-256(plaintext)), so the storage never sees plain content hashes.
With ``encryption: none`` the id is SHA-256(plaintext) and blobs are stored in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.packs import (
    BLOB_MEMBER,
    MAX_FRAME_SLOTS,
    member_slot,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import (
    CorruptMetadataError,
    IntegrityError,
    InvalidArgumentError,
    MissingDependencyError,
    PassphraseRequiredError,
    RepositoryFormatError,
    WrongPassphraseError,
)

try:
    import zstandard
except ImportError:  # pragma: no cover - exercised by ansible-test import sanity
    import traceback  # pylint: disable=import-outside-toplevel  # only when it failed: start-up time

    zstandard = None
    ZSTD_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    ZSTD_IMPORT_ERROR = None

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
except ImportError:  # pragma: no cover - exercised by ansible-test import sanity
    AESGCM = None
    Scrypt = None
    import traceback  # pylint: disable=import-outside-toplevel  # only when it failed: start-up time

    InvalidTag = Exception
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

try:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # pragma: no cover - older cryptography
    Argon2id = None

NONCE_SIZE = 12
TAG_SIZE = 16
#: flag byte stored in front of every blob (also authenticated as AAD)
FLAG_RAW = 0
FLAG_ZSTD = 1
#: the id a frame's blob is authenticated with (its chunks are each checked against their own ids once opened)
FRAME_ID = bytes(32)
FRAME_BYTES = 1024 * 1024
BLOB_OVERHEAD_GCM = 1 + NONCE_SIZE + TAG_SIZE
BLOB_OVERHEAD_NONE = 1

#: Default KDF parameters: Argon2id with RFC 9106's t=3 and p=4 and a 32 MiB memory cost (RFC 9106's second
#: option uses 64 MiB): the unlock runs at the start of every job, and 64 MiB raised the peak memory of a
#: whole backup by a third (73 -> 94 MiB) and an incremental's run time by 0.08 s (docs/repository-format.md
#: §3 has the measurement). 32 MiB x 3 passes is 2.5x the cost per guess of the earlier 19 MiB x 2 and the
#: memory restic's scrypt uses at least; borg 1.2 uses PBKDF2 (no memory cost). ``memory_kib`` is stored in
#: the key file, so an administrator can raise it (backup_repository ``kdf_memory``). scrypt (where Argon2id
#: is unavailable): N=2^15, r=8, p=1 (32 MiB).
DEFAULT_ARGON2 = {"name": "argon2id", "iterations": 3, "lanes": 4, "memory_kib": 32768}
DEFAULT_SCRYPT = {"name": "scrypt", "n": 32768, "r": 8, "p": 1}
#: Bounds for parameters read from a key file: a crafted key file must not make open() take hours or
#: exhaust memory, nor unlock with trivially weak settings. (low, high) per parameter.
KDF_BOUNDS = {
    "argon2id": {"iterations": (1, 64), "lanes": (1, 64), "memory_kib": (1024, 4 * 1024 * 1024)},
    "scrypt": {"n": (1 << 10, 1 << 22), "r": (1, 32), "p": (1, 16)},
}
KEY_FILE_VERSION = 2
META_EXPANSION_FLOOR = 64 * 1024 * 1024
META_EXPANSION_RATIO = 64
MAX_KEY_FILE_SIZE = 64 * 1024


def require_zstd() -> t.Any:
    """Return the zstandard module or raise MissingDependencyError."""
    if zstandard is None:
        raise MissingDependencyError("zstandard", "compression of backup data", ZSTD_IMPORT_ERROR)
    return zstandard


def require_cryptography() -> None:
    """Raise MissingDependencyError when cryptography is missing."""
    if AESGCM is None:
        raise MissingDependencyError("cryptography", "encrypted backup repositories", CRYPTOGRAPHY_IMPORT_ERROR)


def default_kdf() -> dict[str, t.Any]:
    """Return default KDF parameters: Argon2id when available, else scrypt."""
    return dict(DEFAULT_ARGON2) if Argon2id is not None else dict(DEFAULT_SCRYPT)


def kdf_for_memory(memory_mib: int) -> dict[str, t.Any]:
    """Return the default KDF with a memory cost of ``memory_mib`` MiB (8..4096). Raises InvalidArgumentError."""
    if isinstance(memory_mib, bool) or not isinstance(memory_mib, int) or not 8 <= memory_mib <= 4096:
        raise InvalidArgumentError(f"The key derivation's memory cost must be 8..4096 MiB, not {memory_mib!r}.")
    kdf = default_kdf()
    if kdf["name"] == "argon2id":
        kdf["memory_kib"] = memory_mib * 1024
    else:  # scrypt uses 128 * n * r bytes; n must be a power of two
        kdf["n"] = 1 << max(10, (memory_mib * 1024 * 1024 // (128 * kdf["r"])).bit_length() - 1)
    return kdf


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def derive_key(passphrase: str, kdf: t.Mapping[str, t.Any], salt: bytes) -> bytes:
    """Derive the 32-byte wrapping key. Raises RepositoryFormatError for unknown KDFs."""
    require_cryptography()
    secret = passphrase.encode("utf-8")
    name = kdf.get("name")
    check_kdf(kdf)
    if name == "argon2id":
        if Argon2id is None:
            raise MissingDependencyError("cryptography>=44", "Argon2id key derivation")
        return Argon2id(
            salt=salt,
            length=32,
            iterations=int(kdf["iterations"]),
            lanes=int(kdf["lanes"]),
            memory_cost=int(kdf["memory_kib"]),
        ).derive(secret)
    if name == "scrypt":
        return Scrypt(salt=salt, length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(secret)
    raise RepositoryFormatError(f"The key file uses an unknown key derivation '{name}'; upgrade vmsafe.protect.")


def check_kdf(kdf: t.Mapping[str, t.Any]) -> None:
    """Raise RepositoryFormatError when a KDF's parameters are unknown or out of bounds."""
    bounds = KDF_BOUNDS.get(str(kdf.get("name")))
    if bounds is None:
        raise RepositoryFormatError(f"The key file uses an unknown key derivation '{kdf.get('name')}'; upgrade "
                                    "vmsafe.protect, or restore keys/repokey from a copy.")
    for param, (low, high) in bounds.items():
        value = kdf.get(param)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise RepositoryFormatError(
                f"The key file's {kdf['name']} parameter {param}={value!r} is outside {low}..{high}: the key file "
                "was damaged or crafted. Restore keys/repokey from a copy of the repository."
            )
    if kdf["name"] == "scrypt" and (kdf["n"] & (kdf["n"] - 1) or kdf["n"] * kdf["r"] * 128 > 2 * 1024 ** 3):
        raise RepositoryFormatError("The key file's scrypt parameters are invalid (n must be a power of two and "
                                    "use at most 2 GiB). Restore keys/repokey from a copy of the repository.")


class KeyMaterial:
    """The repository master key. Its repr never shows the key."""

    __slots__ = ("enc_key", "id_key")

    def __init__(self, enc_key: bytes, id_key: bytes) -> None:
        self.enc_key = enc_key
        self.id_key = id_key

    @classmethod
    def generate(cls) -> "KeyMaterial":
        return cls(os.urandom(32), os.urandom(32))

    def __repr__(self) -> str:
        return "<KeyMaterial (hidden)>"


def _key_aad(version: int, config_id: str | None) -> bytes:
    return b"vmsafe-key-v1" if version == 1 else b"vmsafe-key-v2:" + str(config_id).encode("ascii")


def wrap_key(key: KeyMaterial, passphrase: str, config_id: str, kdf: t.Mapping[str, t.Any] | None = None) -> bytes:
    """Return the key file content (JSON) protecting ``key`` with ``passphrase``, bound to the config's id."""
    require_cryptography()
    if not passphrase:
        raise InvalidArgumentError("An encrypted repository needs a non-empty passphrase.")
    params = dict(kdf or default_kdf())
    check_kdf(params)
    salt = os.urandom(16)
    wrapping = derive_key(passphrase, params, salt)
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(wrapping).encrypt(nonce, key.enc_key + key.id_key, _key_aad(KEY_FILE_VERSION, config_id))
    doc = {
        "version": KEY_FILE_VERSION,
        "config_id": config_id,
        "kdf": dict(params, salt=_b64(salt)),
        "cipher": "aes-256-gcm",
        "nonce": _b64(nonce),
        "wrapped_key": _b64(sealed),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def unwrap_key(content: bytes, passphrase: str | None, location: str,
               config_id: str | None = None) -> tuple[KeyMaterial, int]:
    """Open the key file; returns the key and the key file's version (2: the config MAC is mandatory).

    Raises WrongPassphraseError, PassphraseRequiredError, RepositoryFormatError, CorruptMetadataError.
    """
    require_cryptography()
    if not passphrase:
        raise PassphraseRequiredError(
            f"The repository at {location} is encrypted; give its passphrase (option passphrase)."
        )
    try:
        if len(content) > MAX_KEY_FILE_SIZE:
            raise ValueError("oversized")
        doc = json.loads(content.decode("utf-8"))
        kdf = dict(doc["kdf"])
        salt = _unb64(kdf.pop("salt"))
        nonce = _unb64(doc["nonce"])
        sealed = _unb64(doc["wrapped_key"])
        version = doc.get("version")
        if len(nonce) != NONCE_SIZE or len(sealed) != 64 + TAG_SIZE or not 8 <= len(salt) <= 64:
            raise ValueError("bad field sizes")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptMetadataError(
            f"The key file 'keys/repokey' of {location} is damaged ({type(exc).__name__}). Restore it from a copy "
            "of the repository; without it the backups cannot be decrypted."
        ) from exc
    if version not in (1, KEY_FILE_VERSION):
        raise RepositoryFormatError(
            f"The key file of {location} has version {version!r}; this engine reads versions 1 and "
            f"{KEY_FILE_VERSION}. Upgrade vmsafe.protect."
        )
    wrapping = derive_key(passphrase, kdf, salt)
    try:
        plain = AESGCM(wrapping).decrypt(nonce, sealed, _key_aad(version, config_id))
    except InvalidTag:
        other = 2 if version == 1 else 1
        try:
            AESGCM(wrapping).decrypt(nonce, sealed, _key_aad(other, config_id))
        except InvalidTag:
            pass
        else:
            raise CorruptMetadataError(
                f"The key file 'keys/repokey' of {location} was altered (its version field was changed). Restore it "
                "from a copy of the repository."
            ) from None
        raise WrongPassphraseError(
            f"Wrong passphrase for the repository at {location}: it does not unlock the repository key (or the key "
            "file and the config belong to different repositories). Use the passphrase given when the repository "
            "was created (check for a changed vault variable), and check that keys/repokey and config were not "
            "swapped: restore both from one copy of the repository."
        ) from None
    return KeyMaterial(plain[:32], plain[32:64]), int(version)


def _hmac_sha256_pads(key: bytes) -> tuple[t.Any, t.Any]:
    """SHA-256 states after HMAC's inner and outer key pads (RFC 2104, block size 64)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key))


class BlobCodec:
    """Compresses, encrypts, authenticates and identifies blobs. Thread-safe.

    On storage a blob is ``flag(1) | nonce(12) | AES-256-GCM ciphertext+tag`` with
    AAD = ``flag | blob type | blob id``; with ``encryption: none`` it is
    ``flag(1) | payload``. The flag says whether the payload is zstd-compressed.
    """

    def __init__(self, key: KeyMaterial | None, compression_level: int, max_plain_size: int) -> None:
        require_zstd()
        if key is not None:
            require_cryptography()
            self._aes: t.Any = AESGCM(key.enc_key)
            self._id_key: bytes | None = key.id_key
            self._hmac_pads = _hmac_sha256_pads(key.id_key)
        else:
            self._aes = None
            self._id_key = None
        self.encrypted = key is not None
        self.overhead = BLOB_OVERHEAD_GCM if self.encrypted else BLOB_OVERHEAD_NONE
        self.level = compression_level
        self.max_plain_size = max_plain_size
        #: most chunks in one frame: frames are at most 1 MiB of plaintext (the unit the backup's workers take)
        self.frame_slots = max(2, min(MAX_FRAME_SLOTS, FRAME_BYTES // max_plain_size))
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<BlobCodec encrypted={self.encrypted} level={self.level}>"

    # -- ids
    def chunk_id(self, plain_sha256: bytes) -> bytes:
        """Return the storage id of a blob whose plaintext has SHA-256 ``plain_sha256``."""
        if self._id_key is None:
            return plain_sha256
        # HMAC-SHA256 (RFC 2104) from the two keyed SHA-256 states made once: hmac.digest() gives up the GIL for
        # its 3 us of work and then waits for it (about 25 us under a busy pipeline, 1 s of a 4 GiB restore's
        # reading thread); the copies and 32-byte updates here keep it
        inner, outer = self._hmac_pads[0].copy(), self._hmac_pads[1].copy()
        inner.update(plain_sha256)
        outer.update(inner.digest())
        return outer.digest()

    def hash_and_id(self, data: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
        """Return (sha256(plaintext), id)."""
        digest = hashlib.sha256(data).digest()
        return digest, self.chunk_id(digest)

    # -- per-thread contexts
    def _cctx(self) -> t.Any:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=False)
        return cctx

    def _fctx(self) -> t.Any:
        """The compressor of frames: the level's parameters for 1 MiB, with the hash and chain tables of one chunk.

        Tables sized for 1 MiB fall out of the CPU cache: at level 2 they made frames 9 % slower to compress for
        1.8 % less output (64 KiB chunks of the benchmark image's compressible data, 2026-12-06: 16-chunk frames
        210.0 MB in 2.09 s with them, 213.9 MB in 1.90 s with a chunk's tables; each chunk alone 244.1 MB in 1.74 s).
        """
        fctx = getattr(self._local, "fctx", None)
        if fctx is None:
            whole = zstandard.ZstdCompressionParameters.from_level(self.level, source_size=FRAME_BYTES)
            chunk = zstandard.ZstdCompressionParameters.from_level(self.level, source_size=self.max_plain_size)
            params = zstandard.ZstdCompressionParameters(
                window_log=whole.window_log, hash_log=min(whole.hash_log, chunk.hash_log),
                chain_log=min(whole.chain_log, chunk.chain_log), search_log=whole.search_log,
                min_match=whole.min_match, target_length=whole.target_length, strategy=whole.strategy,
                write_content_size=1, write_checksum=0,
            )
            fctx = self._local.fctx = zstandard.ZstdCompressor(compression_params=params)
        return fctx

    def _dctx(self) -> t.Any:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        return dctx

    def _out(self, size: int) -> bytearray:
        buf = getattr(self._local, "out", None)
        if buf is None or len(buf) < size:
            buf = self._local.out = bytearray(max(size, self.max_plain_size + 1024))
        return buf

    def compressible(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether the repository compresses and a 4 KiB probe of ``data`` compresses."""
        return self.level > 0 and self._worth_compressing(data)

    def _worth_compressing(self, data: bytes | bytearray | memoryview) -> bool:
        """Probe 4 KiB from the middle at level 1: random (incompressible) data is stored raw.

        Disk images hold much encrypted or already-compressed data; compressing it at the
        configured level costs CPU for nothing.
        """
        size = len(data)
        if size < 16384:
            return True
        probe = getattr(self._local, "probe", None)
        if probe is None:
            probe = self._local.probe = zstandard.ZstdCompressor(
                level=1, write_checksum=False, write_content_size=False
            )
        mid = (size // 2) & ~4095
        sample = memoryview(data)[mid : mid + 4096]
        return len(probe.compress(sample)) < 4000

    # -- seal / open
    def seal(self, blob_type: int, blob_id: bytes, data: bytes | bytearray | memoryview,
             compress: bool | None = None) -> bytearray:
        """Compress (when it helps) and encrypt ``data``; return the stored blob. ``compress`` is what compressible()
        said of ``data`` when the caller asked it already (None: ask it here)."""
        if compress is None:
            compress = self.compressible(data)
        compressed = self._cctx().compress(data) if compress else None
        if compressed is not None and len(compressed) < len(data) - 64:
            return self._encrypt(FLAG_ZSTD, blob_type, blob_id, compressed)
        return self._encrypt(FLAG_RAW, blob_type, blob_id, data)

    def seal_frame(self, members: t.Sequence[bytes | bytearray | memoryview]) -> bytearray | None:
        """Compress several whole chunks as one zstd frame (a frame, format version 2); return the stored blob, or
        None when that saves less than 64 bytes a chunk (the caller stores them alone).

        Each 64 KiB chunk compressed on its own leaves out what zstd would find across chunks: on the benchmark
        image's compressible data 16 adjacent chunks compressed together are 14 % smaller, on a Debian disk 7 %.
        The chunks keep their own ids and index entries (docs/repository-format.md §5).
        """
        total = sum(len(m) for m in members)
        if any(len(m) != self.max_plain_size for m in members) or not 2 <= len(members) <= self.frame_slots:
            raise ValueError(f"a frame holds 2 to {self.frame_slots} whole chunks")
        if self.level <= 0:
            return None
        cobj = self._fctx().compressobj(size=total)
        parts = [cobj.compress(m) for m in members]
        parts.append(cobj.flush())
        compressed = b"".join(parts)
        if len(compressed) >= total - 64 * len(members):
            return None  # nothing gained: stored alone, a damaged byte costs one chunk, not the frame
        return self._encrypt(FLAG_ZSTD, BLOB_MEMBER, FRAME_ID, compressed)

    def _encrypt(self, flag: int, blob_type: int, blob_id: bytes, payload: t.Any) -> bytearray:
        size = len(payload) + self.overhead
        blob = bytearray(size)
        blob[0] = flag
        if self._aes is None:
            blob[1:] = payload
            return blob
        nonce = os.urandom(NONCE_SIZE)
        blob[1 : 1 + NONCE_SIZE] = nonce
        aad = bytes((flag, blob_type)) + blob_id
        self._aes.encrypt_into(nonce, payload, aad, memoryview(blob)[1 + NONCE_SIZE :])
        return blob

    def _decrypt(self, blob_type: int, blob_id: bytes, blob: bytes | memoryview) -> tuple[int, memoryview]:
        """Check the flag and authenticate; return (flag, payload). The payload may live in a per-thread buffer."""
        view = memoryview(blob)
        if len(view) < self.overhead:
            raise IntegrityError("blob too short")
        flag = view[0]
        if flag not in (FLAG_RAW, FLAG_ZSTD):
            raise IntegrityError(f"unknown blob flag {flag}")
        if self._aes is None:
            return flag, view[1:]
        nonce = bytes(view[1 : 1 + NONCE_SIZE])
        body = view[1 + NONCE_SIZE :]
        out = self._out(len(body))
        plain_len = len(body) - TAG_SIZE
        try:
            self._aes.decrypt_into(nonce, body, bytes((flag, blob_type)) + blob_id, memoryview(out)[:plain_len])
        except InvalidTag:
            raise IntegrityError("authentication tag mismatch (data modified or from another repository)") from None
        return flag, memoryview(out)[:plain_len]

    def _decompress(self, flag: int, payload: memoryview, limit: int) -> bytes:
        if flag != FLAG_ZSTD:
            return bytes(payload)
        try:
            # max_output_size only bounds frames that do not state their size: a stated size is allocated as stated
            declared = zstandard.frame_content_size(payload)
            if declared > limit:
                raise IntegrityError(f"it states a size of {declared} bytes, more than {limit}")
            return self._dctx().decompress(payload, max_output_size=limit)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"decompression failed ({exc})") from None

    def _check_id(self, blob_id: bytes, plain: t.Any) -> None:
        digest = hashlib.sha256(plain).digest()
        if not hmac.compare_digest(self.chunk_id(digest), blob_id):
            raise IntegrityError("content does not match its id")

    def open(self, blob_type: int, blob_id: bytes, blob: bytes | memoryview, expected_size: int | None = None) -> bytes:
        """Decrypt, decompress and check a stored blob; return the plaintext.

        ``blob_type`` is the index entry's type: for a chunk in a frame (``BLOB_MEMBER | slot``) ``blob`` is the
        whole frame, and the chunk is cut out of it (readers of many chunks use open_frame() and member() to open
        each frame once). Raises IntegrityError when authentication, decompression or the id check fails.
        """
        slot = member_slot(blob_type)
        if slot is not None:
            return bytes(self.member(self.open_frame(blob), blob_type, blob_id, expected_size))
        flag, payload = self._decrypt(blob_type, blob_id, blob)
        limit = expected_size if expected_size is not None else self.max_plain_size * 4 + (1 << 20)
        plain = self._decompress(flag, payload, limit)
        if expected_size is not None and len(plain) != expected_size:
            raise IntegrityError(f"wrong length {len(plain)}, expected {expected_size}")
        self._check_id(blob_id, plain)
        return plain

    def open_frame(self, blob: bytes | memoryview) -> bytes:
        """Decrypt and decompress a stored frame; return its plaintext (the chunks are checked by member())."""
        flag, payload = self._decrypt(BLOB_MEMBER, FRAME_ID, blob)
        plain = self._decompress(flag, payload, self.max_plain_size * self.frame_slots)
        if len(plain) % self.max_plain_size or len(plain) < 2 * self.max_plain_size:
            raise IntegrityError(f"a frame of {len(plain)} bytes is not whole chunks")
        return plain

    def member(self, frame: bytes, blob_type: int, blob_id: bytes, expected_size: int | None = None) -> memoryview:
        """The chunk of an opened frame that the entry ``(blob_type, blob_id)`` names, checked against its id."""
        slot = member_slot(blob_type)
        size = self.max_plain_size
        if slot is None or (slot + 1) * size > len(frame):
            raise IntegrityError(f"the frame has no chunk at slot {slot}")
        if expected_size is not None and expected_size != size:
            raise IntegrityError(f"wrong length {size}, expected {expected_size}")
        data = memoryview(frame)[slot * size : (slot + 1) * size]
        self._check_id(blob_id, data)
        return data

    # -- metadata objects (index, manifests, pack headers): whole-object seal
    def seal_meta(self, context: bytes, data: bytes) -> bytes:
        """Compress and encrypt a metadata object bound to ``context`` (its name)."""
        payload = self._cctx().compress(data)
        if self._aes is None:
            return b"\x01" + payload + hashlib.sha256(context + payload).digest()
        nonce = os.urandom(NONCE_SIZE)
        return b"\x01" + nonce + self._aes.encrypt(nonce, payload, b"meta:" + context)

    def open_meta(self, context: bytes, blob: bytes, what: str) -> bytes:
        """Inverse of seal_meta. Raises CorruptMetadataError naming ``what``."""
        try:
            if len(blob) < 1 or blob[0] != 1:
                raise IntegrityError("bad header")
            if self._aes is None:
                payload, check = blob[1:-32], blob[-32:]
                if len(blob) < 33 or not hmac.compare_digest(hashlib.sha256(context + payload).digest(), check):
                    raise IntegrityError("checksum mismatch")
            else:
                nonce = blob[1 : 1 + NONCE_SIZE]
                try:
                    payload = self._aes.decrypt(nonce, blob[1 + NONCE_SIZE :], b"meta:" + context)
                except InvalidTag:
                    raise IntegrityError("authentication tag mismatch") from None
            # bounded: a crafted object (an unencrypted repository has no key to refuse it) must not expand to
            # gigabytes in memory; real metadata compresses far less than 64:1
            limit = max(META_EXPANSION_FLOOR, META_EXPANSION_RATIO * len(blob))
            out = bytearray()
            with self._dctx().stream_reader(bytes(payload)) as reader:
                while True:
                    piece = reader.read(1 << 20)
                    if not piece:
                        break
                    out += piece
                    if len(out) > limit:
                        raise IntegrityError(f"it expands to more than {limit} bytes")
            return bytes(out)
        except (IntegrityError, zstandard.ZstdError) as exc:
            raise CorruptMetadataError(
                f"The {what} is damaged ({exc}). Run verify; an index can be rebuilt from the packs "
                "(rebuild_index), a damaged backup manifest means that backup is lost: restore from another backup."
            ) from None
