# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""A small read-only NBD server (stdlib only): one export, on a Unix socket, served from any ``pread`` reader.

Groundwork for instant recovery (a VM booted from a backup, its writes going to a local qcow2 overlay) and for
file-level restore without a scratch image: both need a backup's disk as a block device that QEMU or libguestfs
reads on demand. Why our own server and not nbdkit's Python plugin: that plugin runs inside the system Python
(Debian 12: cryptography 38, without the Argon2id our repository keys are wrapped with), not the interpreter that
has the collection's pinned packages; and this is about 250 lines of the protocol the collection already speaks as
a client (``_nbd.py``).

It speaks the fixed newstyle handshake (NBD_OPT_EXPORT_NAME, NBD_OPT_INFO/GO with NBD_INFO_EXPORT and
NBD_INFO_BLOCK_SIZE, NBD_OPT_LIST, NBD_OPT_ABORT; structured replies and metadata contexts are declined, which
clients accept) and simple replies in transmission: NBD_CMD_READ, NBD_CMD_DISC, NBD_CMD_FLUSH (a no-op); writes
and trims get EPERM (the export is read-only), anything else EINVAL. Each connection has its own thread and is
served in order. Protocol reference: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md

    server = NbdServer(socket_path, "vda", reader)   # reader.size, reader.pread(offset, length) -> bytes
    server.start()                                     # a daemon thread accepts clients
    ...                                                # qemu: nbd+unix:///vda?socket=<socket_path>
    server.close()

Known limit: qemu-img 7.2 hangs reading an export whose size is not a multiple of 512 bytes (a local raw file of that
size converts fine, and _nbd.py reads such an export fine); virtual disk sizes always are multiples of 512.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import typing as t

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
FLAG_C_NO_ZEROES = 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = (1 << 31) | 1, (1 << 31) | 3, (1 << 31) | 6
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
# transmission flags: has flags, read only, can serve several connections consistently (nothing changes)
TRANSMISSION_FLAGS = 1 | 2 | 256
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 6
MAX_REQUEST = 32 * 1024 * 1024
PREFERRED_BLOCK = 64 * 1024

_REQUEST = struct.Struct(">IHHQQI")
_OPTION = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_SIMPLE_REPLY = struct.Struct(">IIQ")


class Reader(t.Protocol):
    """What the server serves: a fixed size and positional reads (short reads only at the end)."""

    size: int

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; raises OSError when the data cannot be read."""


class FileReader:
    """A read-only file (a restored image, a test image) as a Reader."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)


class _Closed(Exception):
    """The client went away or broke the protocol: end its connection."""


def _recv(conn: socket.socket, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        piece = conn.recv(length - len(data))
        if not piece:
            raise _Closed()
        data += piece
    return bytes(data)


class NbdServer:
    """Serve ``reader`` read-only as export ``export`` on the Unix socket ``path`` (created 0600)."""

    def __init__(self, path: str, export: str, reader: Reader) -> None:
        self.path = path
        self.export = export.encode()
        self.reader = reader
        self.read_errors = 0  # reads the reader failed (answered EIO)
        self._closing = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        self._sock.listen(16)
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "NbdServer":
        thread = threading.Thread(target=self.serve_forever, name="vmsafe-nbd-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def serve_forever(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._conns.add(conn)
            worker = threading.Thread(target=self._serve, args=(conn,), name="vmsafe-nbd-conn", daemon=True)
            worker.start()

    def close(self) -> None:
        """Stop accepting, drop every connection, remove the socket."""
        self._closing.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "NbdServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one client
    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._handshake(conn):
                self._transmission(conn)
        except (_Closed, OSError):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _reply(self, conn: socket.socket, option: int, kind: int, data: bytes = b"") -> None:
        conn.sendall(_OPT_REPLY.pack(OPT_REPLY_MAGIC, option, kind, len(data)) + data)

    def _export_info(self) -> bytes:
        return struct.pack(">HQH", INFO_EXPORT, self.reader.size, TRANSMISSION_FLAGS)

    def _handshake(self, conn: socket.socket) -> bool:
        """Run the option haggling; return True when the client enters transmission."""
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv(conn, 4))
        while True:
            magic, option, length = _OPTION.unpack(_recv(conn, _OPTION.size))
            if magic != IHAVEOPT or length > 65536:
                raise _Closed()
            data = _recv(conn, length)
            if option == OPT_EXPORT_NAME:
                if data != self.export:
                    raise _Closed()  # this option has no error reply: the protocol says to close
                conn.sendall(struct.pack(">QH", self.reader.size, TRANSMISSION_FLAGS)
                             + (b"" if client_flags & FLAG_C_NO_ZEROES else bytes(124)))
                return True
            if option == OPT_ABORT:
                self._reply(conn, option, REP_ACK)
                return False
            if option == OPT_LIST:
                self._reply(conn, option, REP_SERVER, struct.pack(">I", len(self.export)) + self.export)
                self._reply(conn, option, REP_ACK)
            elif option in (OPT_INFO, OPT_GO):
                if len(data) < 6:
                    self._reply(conn, option, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO")
                    continue
                (name_len,) = struct.unpack_from(">I", data)
                name = data[4:4 + name_len]
                if name != self.export:
                    self._reply(conn, option, REP_ERR_UNKNOWN,
                                b"unknown export; this server has: " + self.export)
                    continue
                (count,) = struct.unpack_from(">H", data, 4 + name_len)
                wanted = struct.unpack_from(f">{count}H", data, 6 + name_len) if count else ()
                self._reply(conn, option, REP_INFO, self._export_info())
                if INFO_BLOCK_SIZE in wanted:
                    self._reply(conn, option, REP_INFO,
                                struct.pack(">HIII", INFO_BLOCK_SIZE, 1, PREFERRED_BLOCK, MAX_REQUEST))
                self._reply(conn, option, REP_ACK)
                if option == OPT_GO:
                    return True
            else:  # structured replies, metadata contexts, TLS, ...: declined
                self._reply(conn, option, REP_ERR_UNSUP)

    def _transmission(self, conn: socket.socket) -> None:
        while True:
            magic, _flags, command, cookie, offset, length = _REQUEST.unpack(_recv(conn, _REQUEST.size))
            if magic != REQUEST_MAGIC:
                raise _Closed()
            if command == CMD_DISC:
                return
            if command in (CMD_WRITE, CMD_WRITE_ZEROES, CMD_TRIM):
                if command == CMD_WRITE:
                    _recv(conn, length)  # the payload follows the request: consume it
                conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, errno.EPERM, cookie))
            elif command == CMD_FLUSH:
                conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, cookie))
            elif command == CMD_READ:
                if length > MAX_REQUEST or offset + length > self.reader.size:
                    conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, errno.EINVAL, cookie))
                    continue
                try:
                    data = self.reader.pread(offset, length)
                    if len(data) != length:
                        raise OSError(errno.EIO, f"short read at {offset}")
                except OSError:
                    self.read_errors += 1
                    conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, errno.EIO, cookie))
                    continue
                conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, cookie) + data)
            else:
                conn.sendall(_SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, errno.EINVAL, cookie))
