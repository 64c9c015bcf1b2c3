# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""The NBD client against a real qemu-nbd (no mocks): handshake, reads, block status, extents, errors."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.vmsafe.protect.plugins.module_utils._nbd import (
    FLAG_READ_ONLY,
    STATE_HOLE,
    NbdClient,
    NbdError,
    allocated_extents,
    dirty_extents,
    read_extents,
)

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-nbd") and shutil.which("qemu-img") and shutil.which("qemu-io")),
                                reason="needs qemu-utils (qemu-nbd, qemu-img, qemu-io)")

KiB = 1024
MiB = 1024 * KiB
CLUSTER = 64 * KiB
SIZE = 48 * MiB  # larger than the 32 MiB maximum payload, so big reads must be split
ZERO_RANGES = [(3 * MiB, 4 * MiB), (20 * MiB + 777, 5 * MiB), (SIZE - MiB, MiB)]


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _qcow2(path, size: int) -> str:
    _run("qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size))
    return str(path)


def _write(image: str, offset: int, length: int, pattern: int) -> None:
    _run("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", image)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A qemu-nbd child process; stopped (and reaped) by the fixture."""

    def __init__(self, image: str, tmp, *, export: str = "vda", bitmaps: tuple[str, ...] = (), tcp: bool = False,
                 trace: bool = False) -> None:
        self.export = export
        self.path = str(tmp / f"nbd-{os.getpid()}-{id(self)}.sock")
        self.port = _free_port() if tcp else 0
        argv = ["qemu-nbd", "--persistent", "--read-only", "--shared=8", "--format=qcow2", f"--export-name={export}"]
        argv += [f"--bitmap={name}" for name in bitmaps]
        argv += ["--trace=nbd_*"] if trace else []
        argv += ["--bind=127.0.0.1", f"--port={self.port}"] if tcp else [f"--socket={self.path}"]
        self.log = tmp / f"qemu-nbd-{id(self)}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv + [image], stdout=log, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"qemu-nbd did not start: {self.log.read_text()}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        family, address = (socket.AF_INET, ("127.0.0.1", self.port)) if self.port else (socket.AF_UNIX, self.path)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(address)
            except OSError:
                return False
        return True

    def wait_for_log(self, text: str) -> bool:
        deadline = time.monotonic() + 5
        while text not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def connect(self, contexts=(), **kwargs) -> NbdClient:
        if self.port:
            return NbdClient.connect_tcp("127.0.0.1", self.port, self.export, contexts, **kwargs)
        return NbdClient.connect_unix(self.path, self.export, contexts, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(name="start_server")
def fixture_start_server(tmp_path):
    servers: list[Server] = []

    def start(image: str, **kwargs) -> Server:
        server = Server(image, tmp_path, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(name="content", scope="module")
def fixture_content(tmp_path_factory):
    """A 48 MiB qcow2 full of random bytes except a few zero ranges (which qemu-img convert leaves as holes)."""
    tmp = tmp_path_factory.mktemp("nbd-content")
    rng = random.Random(20260601)
    data = bytearray(rng.randbytes(SIZE))
    for offset, length in ZERO_RANGES:
        data[offset:offset + length] = bytes(length)
    raw = tmp / "content.raw"
    raw.write_bytes(data)
    image = str(tmp / "content.qcow2")
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), image)
    raw.unlink()
    return image, bytes(data)


@pytest.fixture(name="content_server", scope="module")
def fixture_content_server(content, tmp_path_factory):
    server = Server(content[0], tmp_path_factory.mktemp("nbd-sock"))
    yield server
    server.stop()


# ------------------------------------------------------------------ handshake and reads

def test_handshake_reports_size_flags_and_limits(content_server):
    with content_server.connect(["base:allocation"]) as client:
        assert client.size == SIZE
        assert client.flags & FLAG_READ_ONLY
        assert client.structured_replies
        assert client.max_payload == 32 * MiB
        assert client.min_block >= 1
        assert "base:allocation" in client.contexts
        assert not client.closed
    assert client.closed
    with pytest.raises(NbdError, match="closed"):
        client.read(0, 1)


def test_close_sends_disconnect_and_a_failed_handshake_sends_abort(content, start_server):
    server = start_server(content[0], trace=True)
    with server.connect() as client:
        client.read(0, 10)
    assert server.wait_for_log("type = 2 (disconnect)"), server.log.read_text()
    with pytest.raises(NbdError):
        NbdClient.connect_unix(server.path, "no-such-export")
    assert server.wait_for_log("Checking option 2 (abort)"), server.log.read_text()


def test_tcp_handshake_and_read(content, start_server):
    image, data = content
    server = start_server(image, tcp=True)
    with server.connect() as client:
        assert client.size == SIZE
        assert client.read(MiB + 3, 3 * MiB) == data[MiB + 3:4 * MiB + 3]


@pytest.mark.parametrize("offset, length", [
    (0, 1), (1, 1), (SIZE - 1, 1), (0, 100_003), (99_999, 100_010), (100_003 * 7 - 5, 100_003 * 3 + 11),
    (12345, 5 * MiB + 17), (3 * MiB - 5, 4 * MiB + 10), (SIZE - 2 * MiB - 1, 2 * MiB + 1), (777, 0),
])
def test_reads_split_at_odd_request_boundaries(content, content_server, offset, length):
    data = content[1]
    with content_server.connect(request_size=100_003, in_flight=3) as client:
        assert client.read(offset, length) == data[offset:offset + length]


def test_read_larger_than_the_maximum_payload_is_split(content, content_server):
    data = content[1]
    # request_size above the server's 32 MiB limit: qemu-nbd would refuse a 40 MiB request, so this only passes if split.
    with content_server.connect(request_size=64 * MiB) as client:
        assert client.read(5, 40 * MiB) == data[5:40 * MiB + 5]
        assert client.read(0, SIZE) == data


def test_holes_read_as_zeros(content, content_server):
    data = content[1]
    hole_start, hole_length = ZERO_RANGES[0]
    with content_server.connect(["base:allocation"]) as client:
        # Precondition: the server really reports (and so sends) a hole there.
        status = client.block_status(hole_start, hole_length)
        assert status == [(hole_start, hole_length, status[0][2])] and status[0][2] & STATE_HOLE
        buf = bytearray(b"\xff") * (hole_length + 2 * MiB)
        client.readinto(hole_start - MiB, buf)
        assert buf == data[hole_start - MiB:hole_start + hole_length + MiB]
        assert buf[MiB:MiB + hole_length] == bytes(hole_length)


def test_readinto_fills_only_the_given_view(content, content_server):
    data = content[1]
    buf = bytearray(b"\xee") * 300_000
    with content_server.connect() as client:
        assert client.readinto(4242, memoryview(buf)[1000:201_000]) == 200_000
    assert buf[:1000] == b"\xee" * 1000 and buf[201_000:] == b"\xee" * 99_000
    assert buf[1000:201_000] == data[4242:204_242]


def test_unaligned_reads_use_a_bounce_buffer_when_the_server_has_a_minimum_block(content, start_server):
    # qemu-nbd always advertises a 1-byte minimum; pretend 4 KiB on a real connection to drive the alignment path,
    # and check in qemu-nbd's trace that every request it got was aligned (or ran to the end of the disk).
    image, data = content
    server = start_server(image, trace=True)
    cases = [(1, 10), (4095, 2), (4096, 8192), (4096, 5000), (5000, 300_001), (SIZE - 5, 5), (SIZE - MiB - 3, MiB + 3),
             (8191, 4097), (0, 4095), (12_288, 0)]
    with server.connect(request_size=64 * KiB) as client:
        client.min_block = 4096
        for offset, length in cases:
            assert client.read(offset, length) == data[offset:offset + length]
    assert server.wait_for_log("(disconnect)")
    requests = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"type = 0x0, from = (\d+), len = (\d+)", server.log.read_text())]
    assert len(requests) >= len(cases)
    assert all(offset % 4096 == 0 and (length % 4096 == 0 or offset + length == SIZE) for offset, length in requests), requests


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_pipelined_reads_equal_serial_reads(content, content_server, draw):
    data = content[1]
    offset = draw.draw(st.integers(0, SIZE - 1), label="offset")
    length = draw.draw(st.integers(0, min(SIZE - offset, 6 * MiB)), label="length")
    request_size = draw.draw(st.sampled_from([4096, 65_537, MiB, 4 * MiB]), label="request_size")
    with content_server.connect(request_size=request_size, in_flight=8) as pipelined:
        fast = pipelined.read(offset, length)
    with content_server.connect(request_size=request_size, in_flight=1) as serial:
        slow = serial.read(offset, length)
    assert fast == slow == data[offset:offset + length]


# ------------------------------------------------------------------ extents

def test_allocated_extents_are_exactly_the_written_clusters(tmp_path, start_server):
    image = _qcow2(tmp_path / "alloc.qcow2", 16 * MiB)
    writes = [(0, CLUSTER), (MiB, 3 * CLUSTER), (2 * MiB, CLUSTER), (2 * MiB + CLUSTER, 2 * CLUSTER),
              (5 * MiB, 2 * MiB), (16 * MiB - CLUSTER, CLUSTER)]
    for number, (offset, length) in enumerate(writes):
        _write(image, offset, length, 0x11 + number)
    server = start_server(image)
    with server.connect(["base:allocation"]) as client:
        found = list(allocated_extents(client, client.size))
        # The two adjacent writes at 2 MiB merge into one run.
        assert found == [(0, CLUSTER), (MiB, 3 * CLUSTER), (2 * MiB, 3 * CLUSTER), (5 * MiB, 2 * MiB), (16 * MiB - CLUSTER, CLUSTER)]
        for offset, length in found:
            assert client.read(offset, length).count(0) == 0


def test_allocated_extents_cover_an_unaligned_write_within_its_clusters(tmp_path, start_server):
    image = _qcow2(tmp_path / "odd.qcow2", 4 * MiB)
    _write(image, 300_000, 100_000, 0x5A)
    server = start_server(image)
    with server.connect(["base:allocation"]) as client:
        found = list(allocated_extents(client, client.size))
    assert len(found) == 1
    start, length = found[0]
    # At least the written bytes, at most the clusters they touch.
    assert 300_000 // CLUSTER * CLUSTER <= start <= 300_000
    assert 400_000 <= start + length <= -(-400_000 // CLUSTER) * CLUSTER


def test_allocated_extents_of_an_empty_image_is_empty(tmp_path, start_server):
    server = start_server(_qcow2(tmp_path / "empty.qcow2", 64 * MiB))
    with server.connect(["base:allocation"]) as client:
        assert not list(allocated_extents(client, client.size))
        assert client.block_status(0, client.size) == [(0, 64 * MiB, 3)]
        assert not list(read_extents(client, allocated_extents(client, client.size)))


def test_dirty_extents_are_the_writes_after_the_bitmap_was_added(tmp_path, start_server):
    image = _qcow2(tmp_path / "dirty.qcow2", 16 * MiB)
    _write(image, 0, 2 * MiB, 0x01)
    _write(image, 8 * MiB, CLUSTER, 0x02)
    _run("qemu-img", "bitmap", "--add", image, "since-full")
    _write(image, MiB, CLUSTER, 0x03)  # rewrites already allocated data
    _write(image, 4 * MiB + 1000, 70_000, 0x04)  # unaligned: dirties two 64 KiB granules
    _write(image, 10 * MiB, 3 * CLUSTER, 0x05)
    _write(image, 10 * MiB + 3 * CLUSTER, CLUSTER, 0x06)  # adjacent: merges
    _run("qemu-img", "bitmap", "--add", image, "since-last")
    server = start_server(image, bitmaps=("since-full", "since-last"))
    contexts = ["base:allocation", "qemu:dirty-bitmap:since-full", "qemu:dirty-bitmap:since-last"]
    with server.connect(contexts) as client:
        dirty = list(dirty_extents(client, client.size, "qemu:dirty-bitmap:since-full"))
        assert dirty == [(MiB, CLUSTER), (4 * MiB, 2 * CLUSTER), (10 * MiB, 4 * CLUSTER)]
        assert not list(dirty_extents(client, client.size, "qemu:dirty-bitmap:since-last"))
        # Bare bitmap names are accepted too, and base:allocation on the same connection is unaffected.
        assert list(dirty_extents(client, client.size, "since-full")) == dirty
        assert list(allocated_extents(client, client.size))[0] == (0, 2 * MiB)
        pieces = {offset: bytes(view) for offset, _length, view in read_extents(client, dirty)}
    assert pieces[MiB] == b"\x03" * CLUSTER
    assert pieces[10 * MiB] == b"\x05" * 3 * CLUSTER + b"\x06" * CLUSTER


@pytest.mark.parametrize("chunk", [1 * MiB, 3 * MiB + 1, 16 * MiB])
def test_read_extents_yields_bounded_ordered_pieces_equal_to_the_disk(content, content_server, chunk):
    data = content[1]
    extents = [(0, 10), (4096, 7 * MiB + 3), (9 * MiB, CLUSTER), (9 * MiB + 2 * CLUSTER, CLUSTER), (30 * MiB, 9 * MiB)]
    buffers = set()
    pieces = []
    with content_server.connect() as client:
        for offset, length, view in read_extents(client, extents, chunk=chunk):
            buffers.add(id(view.obj))
            assert len(view.obj) == chunk
            pieces.append((offset, length, bytes(view)))
    assert len(buffers) == 1  # one reused buffer of `chunk` bytes: memory stays bounded
    assert all(0 < length <= chunk and len(piece) == length for _offset, length, piece in pieces)
    # Pieces tile the extents exactly, in order.
    covered = []
    for offset, length, _piece in pieces:
        if covered and covered[-1][0] + covered[-1][1] == offset:
            covered[-1] = (covered[-1][0], covered[-1][1] + length)
        else:
            covered.append((offset, length))
    assert covered == extents  # the extents are not adjacent, so re-merging the pieces gives them back
    for offset, length, piece in pieces:
        assert piece == data[offset:offset + length]


def test_full_image_through_allocated_extents_and_read_extents(content, content_server):
    data = content[1]
    rebuilt = bytearray(SIZE)
    with content_server.connect(["base:allocation"]) as client:
        extents = list(allocated_extents(client, client.size))
        for offset, length, view in read_extents(client, extents, chunk=4 * MiB):
            rebuilt[offset:offset + length] = view
    assert rebuilt == data
    # The zero ranges are not reported as data (cluster-granular, so only whole zero clusters are skipped).
    assert sum(length for _offset, length in extents) <= SIZE - 4 * MiB - 5 * MiB + 2 * CLUSTER


# ------------------------------------------------------------------ errors

def test_unknown_export_names_the_export_and_what_the_server_offers(content, start_server):
    server = start_server(content[0])
    with pytest.raises(NbdError, match=r"Export 'sda' does not exist.*check the export name.*offers: 'vda'"):
        NbdClient.connect_unix(server.path, "sda")
    with pytest.raises(NbdError, match=r"Export 'sda' does not exist"):
        NbdClient.connect_unix(server.path, "sda", ["base:allocation"])
    # The aborted handshakes left the server serving.
    with server.connect() as client:
        assert client.size == SIZE


def test_missing_bitmap_context_says_to_take_a_full_backup(content, start_server):
    server = start_server(content[0])
    with pytest.raises(NbdError, match=r"does not offer meta context qemu:dirty-bitmap:backup-vda: .*Take a full backup"):
        server.connect(["base:allocation", "qemu:dirty-bitmap:backup-vda"])


def test_block_status_needs_a_negotiated_context(content_server):
    with content_server.connect(["base:allocation"]) as client:
        with pytest.raises(NbdError, match=r"qemu:dirty-bitmap:x was not negotiated.*pass it in contexts="):
            client.block_status(0, 10, "qemu:dirty-bitmap:x")
        assert client.block_status(0, MiB)[0][0] == 0


def test_read_beyond_the_end_is_refused_and_the_connection_stays_usable(content, content_server):
    data = content[1]
    with content_server.connect() as client:
        with pytest.raises(NbdError, match=rf"export 'vda' has {SIZE} bytes"):
            client.read(SIZE - 10, 11)
        with pytest.raises(NbdError, match="has"):
            client.read(-1, 2)
        assert client.read(SIZE - 10, 10) == data[-10:]


def test_server_error_chunk_becomes_nbd_error_and_the_connection_stays_usable(content, content_server):
    # Bypass the client-side range check to make qemu-nbd itself answer with an error.
    data = content[1]
    with content_server.connect() as client:
        requests = [(0, SIZE - 10, 100, memoryview(bytearray(100))), (0, 0, 100, memoryview(bytearray(100)))]
        with pytest.raises(NbdError, match=r"failed READ of 100 bytes at offset .* EINVAL"):
            client._run(requests)  # pylint: disable=protected-access
        assert not client.closed
        assert client.read(0, 100) == data[:100]


def test_server_killed_mid_read_raises_instead_of_hanging(content, start_server):
    server = start_server(content[0])
    client = server.connect(request_size=MiB, timeout=30)
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            client.read(0, 40 * MiB)
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            outcome.append(exc)

    os.kill(server.proc.pid, signal.SIGSTOP)  # the read's requests are sent but never answered...
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.3)
    os.kill(server.proc.pid, signal.SIGKILL)  # ...then the server dies
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], NbdError)
    assert "closed the connection" in str(outcome[0]) or "Lost the connection" in str(outcome[0])
    assert client.closed
    with pytest.raises(NbdError, match="broken by an earlier error"):
        client.read(0, 1)
    client.close()


def test_server_killed_while_streaming_raises_instead_of_hanging(content, start_server):
    server = start_server(content[0])
    client = server.connect(timeout=30)
    outcome: list[BaseException] = []
    reads = []

    def reader() -> None:
        try:
            while True:
                reads.append(len(client.read(0, 40 * MiB)))
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            outcome.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not reads and not outcome and time.monotonic() < deadline:
        time.sleep(0.005)
    assert reads, f"no read finished before the kill: {outcome}"
    server.proc.kill()  # most likely in the middle of the next 40 MiB read
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], NbdError), outcome
    client.close()


def test_silent_server_hits_the_timeout(content, start_server):
    server = start_server(content[0])
    with server.connect(timeout=0.5) as client:
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(NbdError, match=r"sent nothing for 0.5 s .*raise the timeout"):
                client.read(0, MiB)
            assert time.monotonic() - started < 5
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)


def test_connecting_to_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(NbdError, match=r"Cannot connect to the NBD socket .*is running"):
        NbdClient.connect_unix(str(tmp_path / "missing.sock"), "vda")
    with pytest.raises(NbdError, match=r"Cannot connect to the NBD server 127.0.0.1:"):
        NbdClient.connect_tcp("127.0.0.1", _free_port(), "vda", timeout=2)


def test_extents_merge_across_the_block_status_windows_of_a_large_sparse_disk(tmp_path, start_server):
    # 3 GiB virtual, a few MiB on disk: the helpers query 1 GiB windows and must merge a run that crosses one.
    image = _qcow2(tmp_path / "big.qcow2", 3 * 1024 * MiB)
    _run("qemu-img", "bitmap", "--add", image, "b")
    _write(image, 1024 * MiB - CLUSTER, 2 * CLUSTER, 0x77)
    _write(image, 2048 * MiB - 3 * CLUSTER, 3 * CLUSTER, 0x78)
    _write(image, 2048 * MiB, CLUSTER, 0x79)
    _write(image, 3 * 1024 * MiB - CLUSTER, CLUSTER, 0x7A)
    server = start_server(image, bitmaps=("b",))
    expected = [(1024 * MiB - CLUSTER, 2 * CLUSTER), (2048 * MiB - 3 * CLUSTER, 4 * CLUSTER), (3 * 1024 * MiB - CLUSTER, CLUSTER)]
    with server.connect(["base:allocation", "qemu:dirty-bitmap:b"]) as client:
        assert list(allocated_extents(client, client.size)) == expected
        assert list(dirty_extents(client, client.size, "qemu:dirty-bitmap:b")) == expected
        pieces = [(offset, bytes(view)) for offset, _length, view in read_extents(client, expected, chunk=MiB)]
    assert pieces == [(1024 * MiB - CLUSTER, b"\x77" * 2 * CLUSTER), (2048 * MiB - 3 * CLUSTER, b"\x78" * 3 * CLUSTER + b"\x79" * CLUSTER),
                      (3 * 1024 * MiB - CLUSTER, b"\x7a" * CLUSTER)]
