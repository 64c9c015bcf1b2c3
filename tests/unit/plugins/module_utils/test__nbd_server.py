# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The read-only NBD server against two real clients: QEMU (qemu-img, qemu-io) and the collection's own _nbd.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._nbd import NbdClient, NbdError
from ansible_collections.vmsafe.protect.plugins.module_utils._nbd_server import FileReader, NbdServer

MiB = 1024 * 1024


@pytest.fixture
def image(tmp_path: t.Any) -> tuple[str, bytes]:
    data = os.urandom(1 * MiB) + bytes(2 * MiB) + os.urandom(MiB // 2 + 4096)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture
def served(tmp_path: t.Any, image: tuple[str, bytes]) -> t.Iterator[tuple[str, bytes, NbdServer]]:
    reader = FileReader(image[0])
    sock = str(tmp_path / "nbd.sock")
    with NbdServer(sock, "vda", reader) as server:
        yield sock, image[1], server
    reader.close()


def test_the_collections_client_reads_what_is_served(served: t.Any) -> None:
    sock, data, _server = served
    with NbdClient.connect_unix(sock, "vda") as client:
        assert client.size == len(data)
        for offset, length in ((0, 4096), (MiB - 100, 200), (3 * MiB, len(data) - 3 * MiB), (12345, 2 * MiB)):
            assert client.read(offset, length) == data[offset:offset + length]
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600


def test_an_unknown_export_is_refused_by_name(served: t.Any) -> None:
    with pytest.raises(NbdError) as err:
        NbdClient.connect_unix(served[0], "sdz")
    assert "sdz" in str(err.value)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils not installed")
def test_qemu_reads_the_export_byte_for_byte_and_cannot_write(served: t.Any, tmp_path: t.Any) -> None:
    sock, data, _server = served
    uri = f"nbd+unix:///vda?socket={sock}"
    info = subprocess.run(["qemu-img", "info", "--output=json", uri], capture_output=True, text=True, check=True)
    assert f'"virtual-size": {len(data)}' in info.stdout
    out = tmp_path / "copy.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)], check=True, capture_output=True)
    assert out.read_bytes() == data
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4096", uri], capture_output=True, text=True,
                           check=False)
    # QEMU sees NBD_FLAG_READ_ONLY and refuses to open the export for writing
    assert write.returncode != 0 and "Permission denied" in write.stderr, write.stderr
    with NbdClient.connect_unix(sock, "vda") as client:
        assert client.read(0, 4096) == data[:4096]  # nothing was written


def test_a_failing_read_is_eio_and_the_connection_goes_on(tmp_path: t.Any, image: tuple[str, bytes]) -> None:
    class Flaky(FileReader):
        def pread(self, offset: int, length: int) -> bytes:
            if offset <= 2 * MiB < offset + length:
                raise OSError(5, "damaged chunk")
            return super().pread(offset, length)

    reader = Flaky(image[0])
    with NbdServer(str(tmp_path / "s"), "vda", reader) as server, NbdClient.connect_unix(str(tmp_path / "s"), "vda") as c:
        with pytest.raises(NbdError) as err:
            c.read(2 * MiB - 10, 20)
        assert "EIO" in str(err.value)
        assert c.read(0, 100) == image[1][:100]
        assert server.read_errors == 1
    reader.close()
    assert not (tmp_path / "s").exists()  # close removed the socket


def test_writes_get_eperm_at_the_protocol_level(served: t.Any) -> None:
    """A client that ignores the read-only flag (plain old NBD_OPT_EXPORT_NAME, then a write) gets EPERM."""
    import socket  # pylint: disable=import-outside-toplevel
    import struct  # pylint: disable=import-outside-toplevel

    sock_path, data, _server = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(sock_path)
        greeting = sock.recv(18, socket.MSG_WAITALL)
        assert greeting[:16] == b"NBDMAGICIHAVEOPT" and struct.unpack(">H", greeting[16:])[0] & 1
        sock.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 1, 3) + b"vda")
        size, flags = struct.unpack(">QH", sock.recv(10, socket.MSG_WAITALL))
        assert size == len(data) and flags & 2  # NBD_FLAG_READ_ONLY
        sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 77, 0, 4) + b"evil")  # NBD_CMD_WRITE
        magic, error, cookie = struct.unpack(">IIQ", sock.recv(16, socket.MSG_WAITALL))
        assert (magic, error, cookie) == (0x67446698, 1, 77)  # EPERM
        sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 78, 0, 8))  # NBD_CMD_READ still works
        assert struct.unpack(">IIQ", sock.recv(16, socket.MSG_WAITALL)) == (0x67446698, 0, 78)
        assert sock.recv(8, socket.MSG_WAITALL) == data[:8]
