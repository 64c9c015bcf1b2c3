# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""A small read-only NBD client (stdlib only) for QEMU's pull-mode backup exports.

It speaks the fixed newstyle handshake with structured replies and metadata
contexts (``base:allocation``, ``qemu:dirty-bitmap:<name>``), reads with several
requests in flight straight into the caller's buffer, and asks for block status.
Protocol reference: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md

Typical use::

    with NbdClient.connect_unix(path, "vda", contexts=["base:allocation"]) as c:
        for offset, length, data in read_extents(c, allocated_extents(c, c.size)):
            target.seek(offset)
            target.write(data)
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
import typing as t

# Handshake.
_NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
_IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
_OLDSTYLE_MAGIC = 0x00420281861253
_OPT_REPLY_MAGIC = 0x3E889045565A9
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_FLAG_C_FIXED_NEWSTYLE = 1
_FLAG_C_NO_ZEROES = 2

_OPT_ABORT = 2
_OPT_LIST = 3
_OPT_GO = 7
_OPT_STRUCTURED_REPLY = 8
_OPT_SET_META_CONTEXT = 10
_OPT_NAMES = {2: "NBD_OPT_ABORT", 3: "NBD_OPT_LIST", 7: "NBD_OPT_GO", 8: "NBD_OPT_STRUCTURED_REPLY", 10: "NBD_OPT_SET_META_CONTEXT"}

_REP_ACK = 1
_REP_SERVER = 2
_REP_INFO = 3
_REP_META_CONTEXT = 4
_REP_ERR = 1 << 31
_REP_ERR_NAMES = {
    1: "NBD_REP_ERR_UNSUP", 2: "NBD_REP_ERR_POLICY", 3: "NBD_REP_ERR_INVALID", 4: "NBD_REP_ERR_PLATFORM",
    5: "NBD_REP_ERR_TLS_REQD", 6: "NBD_REP_ERR_UNKNOWN", 7: "NBD_REP_ERR_SHUTDOWN", 8: "NBD_REP_ERR_BLOCK_SIZE_REQD",
    9: "NBD_REP_ERR_TOO_BIG", 10: "NBD_REP_ERR_EXT_HEADER_REQD",
}
_REP_ERR_UNSUP = _REP_ERR | 1
_REP_ERR_TLS_REQD = _REP_ERR | 5
_REP_ERR_UNKNOWN = _REP_ERR | 6

_INFO_EXPORT = 0
_INFO_BLOCK_SIZE = 3

# Transmission flags.
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8

# Transmission.
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_STRUCTURED_REPLY_MAGIC = 0x668E33EF
_CMD_READ = 0
_CMD_DISC = 2
_CMD_BLOCK_STATUS = 7
_REPLY_FLAG_DONE = 1
_REPLY_TYPE_NONE = 0
_REPLY_TYPE_OFFSET_DATA = 1
_REPLY_TYPE_OFFSET_HOLE = 2
_REPLY_TYPE_BLOCK_STATUS = 5
_REPLY_TYPE_ERROR_BIT = 1 << 15
_REPLY_TYPE_ERROR_OFFSET = _REPLY_TYPE_ERROR_BIT | 2

# Block status flags.
STATE_HOLE = 1
STATE_ZERO = 2
STATE_DIRTY = 1

BASE_ALLOCATION = "base:allocation"
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"

DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024
# Against qemu-nbd on a Unix socket, 1-2 MiB requests read fastest (4 MiB and up fall out of the CPU caches);
# 8 in flight and 8 MiB batches keep a disk-backed server busy. The server's max_payload still caps requests.
DEFAULT_REQUEST_SIZE = 1024 * 1024
DEFAULT_IN_FLIGHT = 8
DEFAULT_CHUNK = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0

_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_STRUCTURED_HEADER = struct.Struct(">IHHQI")
_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DESCRIPTOR = struct.Struct(">II")
_ZEROS = memoryview(bytes(1 << 20))

Extent = tuple[int, int, int]


class NbdError(Exception):
    """Any failure talking to the NBD server; the message names the problem and the fix."""


def _errno_name(code: int) -> str:
    name = errno.errorcode.get(code)
    return f"{name} ({os.strerror(code)})" if name else f"error {code}"


class _Request:
    """One READ or BLOCK_STATUS in flight."""

    __slots__ = ("cookie", "command", "offset", "length", "view", "error", "extents", "done")

    def __init__(self, cookie: int, command: int, offset: int, length: int, view: memoryview | None) -> None:
        self.cookie = cookie
        self.command = command
        self.offset = offset
        self.length = length
        self.view = view
        self.error: str | None = None
        self.extents: dict[int, list[tuple[int, int]]] = {}
        self.done = False


class NbdClient:
    """A connected, negotiated NBD session in transmission phase (read-only use).

    Build it with :meth:`connect_unix` or :meth:`connect_tcp`; use it as a context manager
    so the session ends with ``NBD_CMD_DISC``. Not thread-safe: one user at a time.

    Attributes after the handshake: ``export``, ``size``, ``flags`` (transmission flags),
    ``min_block``, ``preferred_block``, ``max_payload`` and ``contexts`` (name -> id).
    """

    def __init__(self, sock: socket.socket, export: str, contexts: t.Sequence[str] = (), *,
                 timeout: float | None = DEFAULT_TIMEOUT, in_flight: int = DEFAULT_IN_FLIGHT,
                 request_size: int = DEFAULT_REQUEST_SIZE, where: str = "the NBD server") -> None:
        """Run the handshake on an already connected socket; raises NbdError and closes it on failure."""
        if in_flight < 1 or request_size < 1:
            sock.close()
            raise NbdError(f"in_flight and request_size must be at least 1, got {in_flight} and {request_size}.")
        self._sock = sock
        self._where = where
        self._timeout = timeout
        self.export = export
        self.size = 0
        self.flags = 0
        self.min_block = 1
        self.preferred_block = 4096
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.contexts: dict[str, int] = {}
        self.structured_replies = False
        self.in_flight = in_flight
        self._request_size = request_size
        self._cookies = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._header = bytearray(32)
        self._header_view = memoryview(self._header)
        self._scratch = bytearray()
        self._state = "handshake"
        sock.settimeout(timeout)
        try:
            self._handshake(export, list(contexts))
        except BaseException:
            self._abort_handshake()
            raise
        self._state = "ready"

    # ----------------------------------------------------------------- connect

    @classmethod
    def connect_unix(cls, path: str, export: str, contexts: t.Sequence[str] = (), *,
                     timeout: float | None = DEFAULT_TIMEOUT, **kwargs: t.Any) -> NbdClient:
        """Connect to the NBD server listening on the Unix socket ``path`` and open ``export``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise NbdError(f"Cannot connect to the NBD socket {path}: {exc}. Check that the backup job (or qemu-nbd) is running "
                           "and exports this socket.") from exc
        return cls(sock, export, contexts, timeout=timeout, where=f"the NBD server at {path}", **kwargs)

    @classmethod
    def connect_tcp(cls, host: str, port: int, export: str, contexts: t.Sequence[str] = (), *,
                    timeout: float | None = DEFAULT_TIMEOUT, **kwargs: t.Any) -> NbdClient:
        """Connect to the NBD server at ``host``:``port`` over TCP and open ``export``."""
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise NbdError(f"Cannot connect to the NBD server {host}:{port}: {exc}. Check that the backup job (or qemu-nbd) "
                           "is running, listens on this address and that no firewall blocks the port.") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, export, contexts, timeout=timeout, where=f"the NBD server at {host}:{port}", **kwargs)

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NbdClient {self.export!r} on {self._where}, size={self.size}, {self._state}>"

    # ------------------------------------------------------------------ socket

    def _recv_into(self, view: memoryview, what: str) -> None:
        """Fill ``view`` entirely from the socket."""
        sock = self._sock
        got = 0
        total = len(view)
        try:
            while got < total:
                n = sock.recv_into(view[got:], total - got)
                if n == 0:
                    raise NbdError(f"{self._where} closed the connection while this client was reading {what}; "
                                   "the backup job or qemu-nbd probably stopped. Check its log and retry the backup.")
                got += n
        except socket.timeout as exc:
            raise NbdError(f"{self._where} sent nothing for {self._timeout} s while this client was reading {what}. "
                           "Check that the backup job is still running, or raise the timeout.") from exc
        except OSError as exc:
            raise NbdError(f"Lost the connection to {self._where} while reading {what}: {exc}. "
                           "The backup job or qemu-nbd probably stopped; check its log and retry the backup.") from exc

    def _recv(self, length: int, what: str) -> bytes:
        buf = bytearray(length)
        self._recv_into(memoryview(buf), what)
        return bytes(buf)

    def _send(self, data: bytes, what: str) -> None:
        try:
            self._sock.sendall(data)
        except socket.timeout as exc:
            raise NbdError(f"{self._where} accepted nothing for {self._timeout} s while this client was sending {what}. "
                           "Check that the backup job is still running, or raise the timeout.") from exc
        except OSError as exc:
            raise NbdError(f"Lost the connection to {self._where} while sending {what}: {exc}. "
                           "The backup job or qemu-nbd probably stopped; check its log and retry the backup.") from exc

    # --------------------------------------------------------------- handshake

    def _handshake(self, export: str, contexts: list[str]) -> None:
        magic, second = struct.unpack(">QQ", self._recv(16, "the NBD greeting"))
        if magic != _NBDMAGIC:
            raise NbdError(f"{self._where} is not an NBD server (greeting {magic:#x}). Check the socket path or port.")
        if second == _OLDSTYLE_MAGIC:
            raise NbdError(f"{self._where} only speaks the old-style NBD handshake, which has no export names nor "
                           "block status. Use QEMU's NBD server (libvirt backup or qemu-nbd).")
        if second != _IHAVEOPT:
            raise NbdError(f"{self._where} sent an unknown NBD handshake magic {second:#x}.")
        (server_flags,) = _U16.unpack(self._recv(2, "the handshake flags"))
        if not server_flags & _FLAG_FIXED_NEWSTYLE:
            raise NbdError(f"{self._where} does not support the fixed newstyle NBD handshake. Use a newer NBD server "
                           "(QEMU >= 2.10 or nbd-server >= 3.10).")
        client_flags = _FLAG_C_FIXED_NEWSTYLE | (_FLAG_C_NO_ZEROES if server_flags & _FLAG_NO_ZEROES else 0)
        self._send(_U32.pack(client_flags), "the client flags")

        reply, data = self._option(_OPT_STRUCTURED_REPLY, b"")
        if reply == _REP_ACK:
            self.structured_replies = True
        elif reply == _REP_ERR_UNSUP:
            if contexts:
                raise NbdError(f"{self._where} does not support structured replies, so it cannot report block status "
                               f"({', '.join(contexts)}). Use QEMU's NBD server (libvirt backup or qemu-nbd), or take a full "
                               "backup without extents.")
        else:
            self._option_failed(_OPT_STRUCTURED_REPLY, reply, data)

        name = export.encode()
        if contexts:
            self._set_meta_contexts(name, contexts)
        self._go(name)

    def _option(self, option: int, data: bytes) -> tuple[int, bytes]:
        """Send one option and return its first reply (type, data)."""
        self._send(_OPT_HEADER.pack(_IHAVEOPT, option, len(data)) + data, _OPT_NAMES.get(option, str(option)))
        return self._option_reply(option)

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        what = f"the reply to {_OPT_NAMES.get(option, str(option))}"
        magic, echoed, reply, length = _OPT_REPLY.unpack(self._recv(_OPT_REPLY.size, what))
        if magic != _OPT_REPLY_MAGIC or echoed != option:
            raise NbdError(f"{self._where} sent a malformed option reply (magic {magic:#x}, option {echoed}) to "
                           f"{_OPT_NAMES.get(option, str(option))}; it does not follow the NBD protocol.")
        if length > 64 * 1024 * 1024:
            raise NbdError(f"{self._where} sent an implausible {length}-byte option reply; it does not follow the NBD protocol.")
        return reply, self._recv(length, what) if length else b""

    def _option_failed(self, option: int, reply: int, data: bytes, hint: str = "") -> t.NoReturn:
        opt_name = _OPT_NAMES.get(option, str(option))
        if reply & _REP_ERR:
            kind = _REP_ERR_NAMES.get(reply & ~_REP_ERR, f"error {reply:#x}")
            message = data.decode("utf-8", "replace").strip()
            said = f": {message}" if message else ""
            if reply == _REP_ERR_TLS_REQD:
                hint = hint or "The server requires TLS, which this client does not speak; export the disk without TLS on a Unix socket."
            raise NbdError(f"{self._where} refused {opt_name} with {kind}{said}. {hint}".rstrip())
        raise NbdError(f"{self._where} sent an unexpected reply type {reply} to {opt_name}; it does not follow the NBD protocol.")

    def _set_meta_contexts(self, name: bytes, contexts: list[str]) -> None:
        payload = [_U32.pack(len(name)), name, _U32.pack(len(contexts))]
        for context in contexts:
            encoded = context.encode()
            payload += [_U32.pack(len(encoded)), encoded]
        reply, data = self._option(_OPT_SET_META_CONTEXT, b"".join(payload))
        while reply == _REP_META_CONTEXT:
            if len(data) < 4:
                raise NbdError(f"{self._where} sent a truncated NBD_REP_META_CONTEXT reply.")
            (context_id,) = _U32.unpack_from(data)
            context_name = data[4:].decode("utf-8", "replace")
            self.contexts[context_name] = context_id
            reply, data = self._option_reply(_OPT_SET_META_CONTEXT)
        if reply == _REP_ERR_UNKNOWN:
            self._unknown_export(_OPT_SET_META_CONTEXT, name, reply, data)
        if reply == _REP_ERR_UNSUP:
            self._option_failed(_OPT_SET_META_CONTEXT, reply, data,
                                "The server cannot report block status; take a full backup without extents.")
        if reply != _REP_ACK:
            self._option_failed(_OPT_SET_META_CONTEXT, reply, data)
        missing = [context for context in contexts if context not in self.contexts]
        if missing:
            raise NbdError(self._missing_context_message(missing))

    def _missing_context_message(self, missing: list[str]) -> str:
        parts = []
        for context in missing:
            if context.startswith(DIRTY_BITMAP_PREFIX):
                bitmap = context[len(DIRTY_BITMAP_PREFIX):]
                parts.append(f"server does not offer meta context {context}: the backup job did not export a dirty bitmap "
                             f"named {bitmap!r} for export {self.export!r} (libvirt: the checkpoint is missing or was not "
                             "given as <incremental>; qemu-nbd: --bitmap). Take a full backup instead, or start the "
                             "backup job with that checkpoint.")
            else:
                parts.append(f"server does not offer meta context {context}; it is not supported by {self._where}. "
                             "Drop it from the contexts or use QEMU's NBD server.")
        offered = ", ".join(sorted(self.contexts)) or "none"
        return " ".join(parts) + f" (contexts granted: {offered})"

    def _unknown_export(self, option: int, name: bytes, reply: int, data: bytes) -> t.NoReturn:
        exports = self._list_exports()
        listing = f"The server offers: {', '.join(repr(e) for e in exports)}." if exports else ""
        self._option_failed(option, reply, data,
                            f"Export {name.decode(errors='replace')!r} does not exist on {self._where}; check the export "
                            f"name (libvirt backup: the disk's exportname, by default its target such as 'vda'). {listing}")

    def _list_exports(self) -> list[str]:
        """Best effort NBD_OPT_LIST, for error messages only."""
        try:
            names = []
            reply, data = self._option(_OPT_LIST, b"")
            while reply == _REP_SERVER and len(data) >= 4 and len(names) < 100:
                (length,) = _U32.unpack_from(data)
                names.append(data[4:4 + length].decode("utf-8", "replace"))
                reply, data = self._option_reply(_OPT_LIST)
            return names
        except NbdError:
            return []

    def _go(self, name: bytes) -> None:
        payload = _U32.pack(len(name)) + name + struct.pack(">HH", 1, _INFO_BLOCK_SIZE)
        reply, data = self._option(_OPT_GO, payload)
        got_export = False
        while reply == _REP_INFO:
            if len(data) < 2:
                raise NbdError(f"{self._where} sent a truncated NBD_REP_INFO reply.")
            (info,) = _U16.unpack_from(data)
            if info == _INFO_EXPORT and len(data) >= 12:
                self.size, self.flags = struct.unpack_from(">QH", data, 2)
                got_export = True
            elif info == _INFO_BLOCK_SIZE and len(data) >= 14:
                minimum, preferred, maximum = struct.unpack_from(">III", data, 2)
                self.min_block = max(1, minimum)
                self.preferred_block = max(1, preferred)
                self.max_payload = max(self.min_block, maximum)
            reply, data = self._option_reply(_OPT_GO)
        if reply == _REP_ERR_UNKNOWN:
            self._unknown_export(_OPT_GO, name, reply, data)
        if reply != _REP_ACK:
            self._option_failed(_OPT_GO, reply, data)
        if not got_export:
            raise NbdError(f"{self._where} accepted NBD_OPT_GO without sending the export size; it does not follow the NBD protocol.")

    def _abort_handshake(self) -> None:
        """Soft disconnect during the handshake (NBD_OPT_ABORT), then close; never raises."""
        self._state = "closed"
        try:
            self._sock.settimeout(min(self._timeout or 2.0, 2.0))
            self._sock.sendall(_OPT_HEADER.pack(_IHAVEOPT, _OPT_ABORT, 0))
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------ transmission

    def close(self) -> None:
        """End the session with NBD_CMD_DISC (if it is healthy) and close the socket; idempotent."""
        if self._state == "closed":
            return
        healthy = self._state == "ready" and not self._pending
        self._state = "closed"
        try:
            if healthy:
                self._sock.sendall(_REQUEST.pack(_REQUEST_MAGIC, 0, _CMD_DISC, next(self._cookies), 0, 0))
                self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self._sock.close()

    @property
    def closed(self) -> bool:
        """True once closed, or after an error that left the connection in an unknown state."""
        return self._state != "ready"

    def _check_ready(self) -> None:
        if self._state != "ready":
            raise NbdError(f"The NBD connection to {self._where} is {'closed' if self._state == 'closed' else 'broken by an earlier error'}; "
                           "open a new one.")

    def _check_range(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise NbdError(f"Cannot {what} {length} bytes at offset {offset}: export {self.export!r} has {self.size} bytes; "
                           "keep offset + length within the disk size.")

    def _run(self, requests: t.Iterable[tuple[int, int, int, memoryview | None]]) -> list[_Request]:
        """Send (command, offset, length, view) requests, up to ``in_flight`` at once; wait for all replies.

        Server-side errors are collected and raised once every reply has arrived, so the
        connection stays usable; transport errors mark the connection broken.
        """
        self._check_ready()
        done: list[_Request] = []
        source = iter(requests)
        try:
            exhausted = False
            while True:
                outgoing = []
                while not exhausted and len(self._pending) < self.in_flight:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    command, offset, length, view = item
                    cookie = next(self._cookies)
                    self._pending[cookie] = _Request(cookie, command, offset, length, view)
                    outgoing.append(_REQUEST.pack(_REQUEST_MAGIC, 0, command, cookie, offset, length))
                if outgoing:
                    self._send(b"".join(outgoing), "requests")
                if not self._pending:
                    break
                finished = self._receive_one()
                if finished is not None:
                    done.append(finished)
                    # After a server-side error, send nothing more: drain what is in flight, then raise.
                    exhausted = exhausted or finished.error is not None
        except BaseException:
            self._state = "broken"
            raise
        errors = [r.error for r in done if r.error]
        if errors:
            more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
            raise NbdError(errors[0] + more)
        return done

    def _receive_one(self) -> _Request | None:
        """Read one simple reply or one structured reply chunk; return the request it completed, if any."""
        header = self._header_view
        self._recv_into(header[:4], "a reply header")
        (magic,) = _U32.unpack_from(header)
        if magic == _SIMPLE_REPLY_MAGIC:
            self._recv_into(header[4:16], "a reply header")
            _magic, error, cookie = _SIMPLE_REPLY.unpack_from(header)
            request = self._take(cookie)
            if error:
                request.error = self._command_error(request, error, "")
            elif request.command == _CMD_READ and request.view is not None:
                self._recv_into(request.view, "READ data")
            elif request.command == _CMD_BLOCK_STATUS:
                request.error = f"{self._where} answered BLOCK_STATUS without any extents; it does not follow the NBD protocol."
            return request
        if magic != _STRUCTURED_REPLY_MAGIC:
            raise NbdError(f"{self._where} sent a reply with the unknown magic {magic:#x}; the connection is out of step "
                           "(a protocol bug in the server or this client). Retry the backup.")
        self._recv_into(header[4:20], "a reply chunk header")
        _magic, flags, kind, cookie, length = _STRUCTURED_HEADER.unpack_from(header)
        request = self._pending.get(cookie)
        if request is None:
            raise NbdError(f"{self._where} replied to an unknown request (cookie {cookie}); the connection is out of step.")
        if kind == _REPLY_TYPE_OFFSET_DATA:
            self._chunk_data(request, length)
        elif kind == _REPLY_TYPE_OFFSET_HOLE:
            self._chunk_hole(request, length)
        elif kind == _REPLY_TYPE_BLOCK_STATUS:
            self._chunk_block_status(request, length)
        elif kind & _REPLY_TYPE_ERROR_BIT:
            self._chunk_error(request, kind, length)
        elif kind == _REPLY_TYPE_NONE:
            if length:
                self._skip(length)
        else:
            # Unknown non-error chunk types must be ignored by the client.
            self._skip(length)
        if flags & _REPLY_FLAG_DONE:
            self._take(cookie)
            request.done = True
            if request.command == _CMD_BLOCK_STATUS and not request.extents and not request.error:
                request.error = f"{self._where} answered BLOCK_STATUS without any extents; it does not follow the NBD protocol."
            return request
        return None

    def _take(self, cookie: int) -> _Request:
        request = self._pending.pop(cookie, None)
        if request is None:
            raise NbdError(f"{self._where} replied to an unknown request (cookie {cookie}); the connection is out of step.")
        return request

    def _skip(self, length: int) -> None:
        if len(self._scratch) < min(length, 1 << 20):
            self._scratch = bytearray(min(length, 1 << 20))
        view = memoryview(self._scratch)
        while length:
            n = min(length, len(view))
            self._recv_into(view[:n], "an ignored reply chunk")
            length -= n

    def _payload_offset(self, request: _Request, offset: int, length: int, what: str) -> int:
        if request.command != _CMD_READ or request.view is None:
            raise NbdError(f"{self._where} sent {what} for a request that is not a READ; it does not follow the NBD protocol.")
        start = offset - request.offset
        if start < 0 or start + length > request.length:
            raise NbdError(f"{self._where} sent {what} for {length} bytes at {offset}, outside the requested "
                           f"{request.length} bytes at {request.offset}; it does not follow the NBD protocol.")
        return start

    def _chunk_data(self, request: _Request, length: int) -> None:
        if length < 8:
            raise NbdError(f"{self._where} sent a truncated OFFSET_DATA chunk.")
        self._recv_into(self._header_view[20:28], "an OFFSET_DATA chunk")
        (offset,) = _U64.unpack_from(self._header, 20)
        start = self._payload_offset(request, offset, length - 8, "OFFSET_DATA")
        view = t.cast(memoryview, request.view)
        self._recv_into(view[start:start + length - 8], "READ data")

    def _chunk_hole(self, request: _Request, length: int) -> None:
        if length != 12:
            raise NbdError(f"{self._where} sent an OFFSET_HOLE chunk of {length} bytes instead of 12.")
        self._recv_into(self._header_view[20:32], "an OFFSET_HOLE chunk")
        offset, hole = struct.unpack_from(">QI", self._header, 20)
        start = self._payload_offset(request, offset, hole, "OFFSET_HOLE")
        view = t.cast(memoryview, request.view)
        while hole:
            n = min(hole, len(_ZEROS))
            view[start:start + n] = _ZEROS[:n]
            start += n
            hole -= n

    def _chunk_block_status(self, request: _Request, length: int) -> None:
        if request.command != _CMD_BLOCK_STATUS or length < 12 or (length - 4) % 8:
            raise NbdError(f"{self._where} sent a malformed BLOCK_STATUS chunk ({length} bytes).")
        data = self._recv(length, "a BLOCK_STATUS chunk")
        (context_id,) = _U32.unpack_from(data)
        request.extents.setdefault(context_id, []).extend(_DESCRIPTOR.iter_unpack(memoryview(data)[4:]))

    def _chunk_error(self, request: _Request, kind: int, length: int) -> None:
        if length < 6:
            raise NbdError(f"{self._where} sent a truncated error chunk.")
        data = self._recv(length, "an error chunk")
        error, message_length = struct.unpack_from(">IH", data)
        message = data[6:6 + message_length].decode("utf-8", "replace")
        if kind == _REPLY_TYPE_ERROR_OFFSET and length >= 6 + message_length + 8:
            (offset,) = _U64.unpack_from(data, 6 + message_length)
            message = f"{message} (at offset {offset})".strip()
        if request.error is None:
            request.error = self._command_error(request, error, message)

    def _command_error(self, request: _Request, error: int, message: str) -> str:
        name = "READ" if request.command == _CMD_READ else "BLOCK_STATUS"
        said = f": {message}" if message else ""
        return (f"{self._where} failed {name} of {request.length} bytes at offset {request.offset} with "
                f"{_errno_name(error or errno.EIO)}{said}. Check the VM disk and the backup job's log; retry the backup.")

    # -------------------------------------------------------------------- read

    def _read_pieces(self, offset: int, view: memoryview) -> t.Iterator[tuple[int, int, int, memoryview | None]]:
        """Split a read into requests of at most the request size (aligned to min_block)."""
        step = min(self._request_size, self.max_payload)
        if self.min_block > 1:
            step = max(self.min_block, step - step % self.min_block)
        length = len(view)
        pos = 0
        while pos < length:
            n = min(step, length - pos)
            yield _CMD_READ, offset + pos, n, view[pos:pos + n]
            pos += n

    def readinto(self, offset: int, buffer: bytearray | memoryview) -> int:
        """Read len(buffer) bytes at ``offset`` into ``buffer`` (any writable bytes-like object); return the count.

        Holes are zero-filled. Requests are split to the server's limits and pipelined.
        """
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise NbdError("readinto needs a writable buffer such as a bytearray.")
        self.readinto_many([(offset, view)])
        return len(view)

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes at ``offset`` (holes read as zeros)."""
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto_many(self, items: t.Sequence[tuple[int, memoryview]]) -> None:
        """Fill each (offset, writable memoryview) pair, all requests sharing one pipeline."""
        self._check_ready()
        aligned: list[tuple[int, memoryview]] = []
        for offset, view in items:
            self._check_range(offset, len(view), "read")
            aligned.extend(self._align(offset, view))
        self._run(piece for offset, view in aligned for piece in self._read_pieces(offset, view))

    def _align(self, offset: int, view: memoryview) -> list[tuple[int, memoryview]]:
        """Honour the server's minimum block size: read unaligned head and tail blocks through a bounce buffer.

        Returns the aligned middle part, still to be read straight into ``view``.
        """
        block = self.min_block
        end = offset + len(view)
        if block == 1 or not view:
            return [(offset, view)]
        head = -(-offset // block) * block
        tail = end if end == self.size else end - end % block
        if head >= tail:
            self._bounce(offset, view)
            return []
        if head > offset:
            self._bounce(offset, view[:head - offset])
        if tail < end:
            self._bounce(tail, view[tail - offset:])
        return [(head, view[head - offset:tail - offset])]

    def _bounce(self, offset: int, view: memoryview) -> None:
        """Read the whole blocks around [offset, offset + len(view)) and copy the wanted bytes into ``view``."""
        block = self.min_block
        end = offset + len(view)
        start = offset - offset % block
        stop = min(self.size, -(-end // block) * block)
        bounce = bytearray(stop - start)
        self._run(self._read_pieces(start, memoryview(bounce)))
        view[:] = memoryview(bounce)[offset - start:end - start]

    # ------------------------------------------------------------ block status

    def block_status(self, offset: int, length: int, context: str = BASE_ALLOCATION) -> list[Extent]:
        """Return merged (offset, length, flags) runs covering [offset, offset + length) for ``context``.

        The context must have been negotiated when connecting. Loops until the whole range is
        covered, since servers may describe less than was asked.
        """
        self._check_ready()
        self._check_range(offset, length, "get block status of")
        context_id = self.contexts.get(context)
        if context_id is None:
            raise NbdError(f"Meta context {context} was not negotiated on this connection (negotiated: "
                           f"{', '.join(sorted(self.contexts)) or 'none'}); pass it in contexts= when connecting.")
        limit = 0xFFFFFFFF - 0xFFFFFFFF % max(self.min_block, 4096)
        runs: list[Extent] = []
        pos = offset
        end = offset + length
        while pos < end:
            (request,) = self._run([(_CMD_BLOCK_STATUS, pos, min(limit, end - pos), None)])
            descriptors = request.extents.get(context_id)
            if not descriptors:
                raise NbdError(f"{self._where} answered BLOCK_STATUS at offset {pos} without extents for {context}; "
                               "it does not follow the NBD protocol.")
            start = pos
            for run_length, flags in descriptors:
                if run_length == 0 or pos >= end:
                    break
                run_length = min(run_length, end - pos)
                if runs and runs[-1][2] == flags and runs[-1][0] + runs[-1][1] == pos:
                    runs[-1] = (runs[-1][0], runs[-1][1] + run_length, flags)
                else:
                    runs.append((pos, run_length, flags))
                pos += run_length
            if pos == start:
                raise NbdError(f"{self._where} answered BLOCK_STATUS at offset {pos} with an empty extent for {context}; "
                               "it does not follow the NBD protocol.")
        return runs


# --------------------------------------------------------------------- helpers

_STATUS_WINDOW = 1 << 30


class NbdRange:
    """A reader over an export from ``offset`` on, for the backup engine: ``readinto_many`` fills its buffers (the
    consecutive pieces of one extent) in one pipeline of requests, straight into them."""

    def __init__(self, client: NbdClient, offset: int) -> None:
        self._client = client
        self._pos = offset

    def readinto(self, buf: t.Any) -> int:
        return self.readinto_many([buf])

    def readinto_many(self, bufs: t.Sequence[t.Any]) -> int:
        items = []
        pos = self._pos
        for buf in bufs:
            view = memoryview(buf).cast("B")
            items.append((pos, view))
            pos += len(view)
        self._client.readinto_many(items)
        count, self._pos = pos - self._pos, pos
        return count


def _runs(client: NbdClient, size: int, context: str, wanted: t.Callable[[int], bool]) -> t.Iterator[tuple[int, int]]:
    """Merged (offset, length) runs of ``context`` whose flags satisfy ``wanted``, in order, window by window."""
    pending_start = pending_length = 0
    for window in range(0, size, _STATUS_WINDOW):
        for offset, length, flags in client.block_status(window, min(_STATUS_WINDOW, size - window), context):
            if not wanted(flags):
                continue
            if pending_length and pending_start + pending_length == offset:
                pending_length += length
                continue
            if pending_length:
                yield pending_start, pending_length
            pending_start, pending_length = offset, length
    if pending_length:
        yield pending_start, pending_length


def allocated_extents(client: NbdClient, size: int | None = None) -> t.Iterator[tuple[int, int]]:
    """Yield merged (offset, length) runs holding data (neither hole nor zero) per ``base:allocation``."""
    return _runs(client, client.size if size is None else size, BASE_ALLOCATION,
                 lambda flags: not flags & (STATE_HOLE | STATE_ZERO))


def dirty_extents(client: NbdClient, size: int | None, bitmap_context: str) -> t.Iterator[tuple[int, int]]:
    """Yield merged (offset, length) runs that ``bitmap_context`` (``qemu:dirty-bitmap:<name>``) reports dirty.

    A bare bitmap name is accepted too and gets the ``qemu:dirty-bitmap:`` prefix.
    """
    if ":" not in bitmap_context:
        bitmap_context = DIRTY_BITMAP_PREFIX + bitmap_context
    return _runs(client, client.size if size is None else size, bitmap_context, lambda flags: bool(flags & STATE_DIRTY))


def read_extents(client: NbdClient, extents: t.Iterable[tuple[int, int]],
                 chunk: int = DEFAULT_CHUNK) -> t.Iterator[tuple[int, int, memoryview]]:
    """Read extents, yielding (offset, length, data) pieces of at most ``chunk`` bytes, in order.

    Pieces are gathered into batches of about ``chunk`` bytes that share one pipeline, and a
    single reused buffer backs them: ``data`` is only valid until the iterator is advanced,
    so write or copy it (``bytes(data)``) before asking for the next piece.
    """
    for batch in read_extent_batches(client, extents, chunk, reuse=True):
        yield from batch


def read_extent_batches(client: NbdClient, extents: t.Iterable[tuple[int, int]], chunk: int = DEFAULT_CHUNK,
                        reuse: bool = False) -> t.Iterator[list[tuple[int, int, memoryview]]]:
    """Read extents in batches of about ``chunk`` bytes (one pipeline each), yielding each batch's pieces.

    Each batch gets its own buffer, so batches stay valid after the next is read, unless ``reuse`` is set: then
    one buffer backs every batch.
    """
    if chunk < 1:
        raise NbdError(f"chunk must be positive, got {chunk}.")
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    batch: list[tuple[int, memoryview]] = []
    used = 0
    for offset, length in extents:
        while length > 0:
            if used == chunk:
                client.readinto_many(batch)
                yield [(item_offset, len(item_view), item_view) for item_offset, item_view in batch]
                if not reuse:
                    buffer = bytearray(chunk)
                    view = memoryview(buffer)
                batch, used = [], 0
            n = min(length, chunk - used)
            batch.append((offset, view[used:used + n]))
            used += n
            offset += n
            length -= n
    if batch:
        client.readinto_many(batch)
        yield [(item_offset, len(item_view), item_view) for item_offset, item_view in batch]
