# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Disk images read where no QEMU serves them: qemu-nbd exports, read-only, on the KVM host (or here).

Used for backups of shut-off VMs (the image itself, and the persistent dirty bitmap of the last backup's
checkpoint for an incremental) and by vm_restore to check that an image it made earlier still holds the backup.
qemu-nbd opens the image read-only but with QEMU's image locking: while it reads, nobody can start the VM on that
image (QEMU would need the write lock), so the data cannot change under the backup.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils import _nbd
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ProviderError

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.libvirt_host import KvmHost

# qemu-nbd's name for image formats libvirt calls by the same names; anything else is read as raw.
QEMU_FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vdi", "vpc", "qed")


@dataclasses.dataclass
class ImageExport:
    """A running ``qemu-nbd --read-only`` of one image; ``client`` is connected, close() ends both."""

    host: KvmHost
    path: str
    socket: str
    pid_file: str
    local_socket: str
    client: t.Any = None

    def close(self) -> None:
        """Disconnect (qemu-nbd then exits on its own: it serves one client) and make sure it is gone."""
        if self.client is not None:
            try:
                self.client.close()
            except (OSError, _nbd.NbdError):
                pass
            self.client = None
        if self.local_socket != self.socket:
            try:
                self.host.drop_socket(self.local_socket)
            except ProviderError:
                pass
        # A qemu-nbd that never got its client would wait for ever: end it (no-op when it is gone already).
        # Wait for it to be gone: its image lock must be released before anything writes the image (bitmaps).
        self.host.try_run(["sh", "-c", 'pid=$(cat "$0" 2>/dev/null) && { kill "$pid" 2>/dev/null; '
                           'while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done; }; rm -f "$0" "$1"; true',
                           self.pid_file, self.socket], 30)


def export(host: KvmHost, path: str, fmt: str, folder: str, name: str, contexts: t.Sequence[str],
           bitmap: str | None = None, timeout: float = 60) -> ImageExport:
    """Start ``qemu-nbd`` on ``path`` (in ``folder`` on the host) and connect to it; raise ProviderError.

    ``bitmap`` exports that persistent dirty bitmap as the context ``qemu:dirty-bitmap:<bitmap>``.
    """
    sock = f"{folder}/{name}.sock"
    pid_file = f"{folder}/{name}.pid"
    argv = ["qemu-nbd", "--read-only", "--fork", f"--pid-file={pid_file}", "--socket", sock, "--export-name", name,
            "--format", fmt if fmt in QEMU_FORMATS else "raw"]
    if bitmap:
        argv += ["--bitmap", bitmap]
    host.run(argv + [path], timeout, f"export image {path} read-only with qemu-nbd")
    job = ImageExport(host=host, path=path, socket=sock, pid_file=pid_file, local_socket=sock)
    try:
        job.local_socket = host.local_socket(sock)
        job.client = _nbd.NbdClient.connect_unix(job.local_socket, name, contexts=list(contexts))
    except (OSError, _nbd.NbdError, ProviderError) as exc:
        job.close()
        raise ProviderError(f"Failed to read image {path} through qemu-nbd: {exc}") from exc
    return job


def image_digest(host: KvmHost, path: str, fmt: str, chunk_size: int, segment_chunks: int, folder: str) -> tuple[int, str]:
    """(virtual size, content digest) of an image, as the repository's manifests compute it for a disk.

    The digest is SHA-256 over segment digests, each SHA-256 over the SHA-256 of each ``chunk_size`` chunk (see
    docs/repository-format.md); chunks that hold no data hash as zeros without being read.
    """
    job = export(host, path, fmt, folder, "digest", [_nbd.BASE_ALLOCATION])
    try:
        client = job.client
        size = client.size
        wanted: list[tuple[int, int]] = []  # chunk-aligned runs holding data
        for offset, length in _nbd.allocated_extents(client, size):
            start = offset - offset % chunk_size
            end = min(size, -(-(offset + length) // chunk_size) * chunk_size)
            if wanted and wanted[-1][1] >= start:
                wanted[-1] = (wanted[-1][0], max(wanted[-1][1], end))
            else:
                wanted.append((start, end))
        shas: list[bytes] = []
        zero = hashlib.sha256(bytes(chunk_size)).digest()
        nchunks = -(-size // chunk_size)

        def pad_to(chunk: int) -> None:
            while len(shas) < chunk:
                index = len(shas)
                length = min(chunk_size, size - index * chunk_size)
                shas.append(zero if length == chunk_size else hashlib.sha256(bytes(length)).digest())

        ranges = ((start, end - start) for start, end in wanted)
        for batch in _nbd.read_extent_batches(client, ranges, chunk=max(1, (8 << 20) // chunk_size) * chunk_size):
            for offset, length, data in batch:
                pos = 0
                while pos < length:  # batches hold whole chunks: the runs are chunk-aligned
                    pad_to((offset + pos) // chunk_size)
                    piece = min(chunk_size, length - pos)
                    shas.append(hashlib.sha256(data[pos:pos + piece]).digest())
                    pos += piece
        pad_to(nchunks)
    finally:
        job.close()
    segments = [hashlib.sha256(b"".join(shas[i:i + segment_chunks])).digest() for i in range(0, len(shas), segment_chunks)]
    return size, hashlib.sha256(b"".join(segments)).hexdigest()
