# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Running VBoxManage on the VirtualBox host, here or over SSH, and reading what it prints.

Commands are argv lists. Locally they go to the process as they are (no shell); over SSH, which carries one command
string, every argument is quoted on its own with shlex.quote, so the remote shell hands VBoxManage the same argv.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import subprocess
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import ConnectionFailed, OperationTimeout

paramiko: t.Any = None  # imported by SshHost.open(): only remote VirtualBox hosts need it


@dataclasses.dataclass
class Result:
    rc: int
    out: str
    err: str


class Host(t.Protocol):
    """Where VBoxManage runs and its files live."""

    label: str

    def run(self, argv: list[str], timeout: float) -> Result: ...

    def read(self, path: str) -> bytes: ...

    def open_read(self, path: str) -> t.BinaryIO: ...

    def remove(self, path: str) -> None: ...

    def put(self, local: str, remote: str) -> None: ...

    def close(self) -> None: ...


class LocalHost:
    """VBoxManage on the machine that runs the module."""

    label = "localhost"

    def run(self, argv: list[str], timeout: float) -> Result:
        env = dict(os.environ, LC_ALL="C")  # VBoxManage translates its messages; ours parse the English ones
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise OperationTimeout(f"no answer after {timeout:g} s") from exc
        except FileNotFoundError as exc:
            raise ConnectionFailed(f"{argv[0]} was not found on localhost: install VirtualBox there, or set the "
                                   f"vboxmanage option to the full path of VBoxManage.") from exc
        return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))

    def read(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def open_read(self, path: str) -> t.BinaryIO:
        return open(path, "rb")  # pylint: disable=consider-using-with  # the caller closes it

    def remove(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)

    def put(self, local: str, remote: str) -> None:
        raise AssertionError("local hosts use files in place")  # pragma: no cover

    def close(self) -> None:
        pass


class SshHost:
    """VBoxManage on a remote host, over SSH (paramiko): host key checked against known_hosts."""

    def __init__(self, hostname: str, port: int, username: str | None, password: str | None, key_file: str | None,
                 known_hosts: str | None, check_host_key: bool, timeout: float) -> None:
        self.hostname, self.port, self.username = hostname, port, username
        self.password, self.key_file, self.known_hosts = password, key_file, known_hosts
        self.check_host_key, self.timeout = check_host_key, timeout
        self.label = f"{username + '@' if username else ''}{hostname}:{port}"
        self.client: t.Any = None
        self._sftp: t.Any = None

    def open(self) -> None:
        global paramiko  # pylint: disable=global-statement
        try:
            import paramiko as _paramiko  # pylint: disable=import-outside-toplevel
        except ImportError as exc:
            raise ConnectionFailed("A remote VirtualBox host needs the paramiko package on the machine that runs "
                                   "the module: pip install paramiko.") from exc
        paramiko = _paramiko
        client = paramiko.SSHClient()
        try:
            if self.known_hosts:
                client.load_host_keys(self.known_hosts)
            else:
                client.load_system_host_keys()
        except OSError as exc:
            raise ConnectionFailed(f"Failed to read ssh_known_hosts {self.known_hosts}: {exc}") from exc
        client.set_missing_host_key_policy(paramiko.RejectPolicy() if self.check_host_key else paramiko.AutoAddPolicy())
        try:
            client.connect(self.hostname, port=self.port, username=self.username, password=self.password,
                           key_filename=self.key_file, timeout=self.timeout, banner_timeout=self.timeout,
                           auth_timeout=self.timeout, look_for_keys=self.key_file is None, allow_agent=True)
        except paramiko.SSHException as exc:
            hint = ("Add the host's key to ssh_known_hosts (ssh-keyscan -p PORT HOST), or set validate_certs: false "
                    "for a lab host only." if "not found in known_hosts" in str(exc) else
                    "Check username, ssh_key_file (or password) and that the key is authorized on the host.")
            raise ConnectionFailed(f"Failed to connect over SSH to VirtualBox host {self.label}: {exc}. {hint}") from exc
        except (OSError, socket.timeout) as exc:
            raise ConnectionFailed(f"Failed to connect over SSH to VirtualBox host {self.label}: {exc}. Check hostname "
                                   f"and port, and that sshd runs there.") from exc
        self.client = client

    def run(self, argv: list[str], timeout: float) -> Result:
        command = " ".join(shlex.quote(arg) for arg in argv)
        try:
            _stdin, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            _stdin.close()
            out = stdout.read()
            err = stderr.read()
            rc = stdout.channel.recv_exit_status()
        except socket.timeout as exc:
            raise OperationTimeout(f"no answer after {timeout:g} s") from exc
        except paramiko.SSHException as exc:
            raise ConnectionFailed(f"SSH to {self.label} failed while running {argv[0]}: {exc}") from exc
        if rc == 127:
            raise ConnectionFailed(f"{argv[0]} was not found on VirtualBox host {self.label}: install VirtualBox "
                                   f"there, or set the vboxmanage option to the full path of VBoxManage.")
        return Result(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    @property
    def sftp(self) -> t.Any:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def read(self, path: str) -> bytes:
        with self.sftp.open(path, "rb") as fh:
            return t.cast(bytes, fh.read())

    def open_read(self, path: str) -> t.BinaryIO:
        return t.cast(t.BinaryIO, _SftpReader(self.sftp.open(path, "rb")))

    def remove(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except FileNotFoundError:
            pass

    def put(self, local: str, remote: str) -> None:
        self.sftp.put(local, remote)

    def close(self) -> None:
        for item in (self._sftp, self.client):
            if item is not None:
                try:
                    item.close()
                except (OSError, EOFError):
                    pass
        self._sftp = self.client = None


class _SftpReader:
    """Sequential reads of a remote file, each one pipelined (readv) without buffering the whole file as prefetch()
    would: memory stays at one piece however large the disk."""

    def __init__(self, fh: t.Any) -> None:
        self.fh = fh
        self.pos = 0

    def read(self, size: int) -> bytes:
        data = b"".join(self.fh.readv([(self.pos, size)]))
        self.pos += len(data)
        return data

    def __enter__(self) -> _SftpReader:
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.fh.close()


# -- parsing ----------------------------------------------------------------------------------------


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def _quoted(line: str) -> tuple[str, int]:
    """Read an escaped "..." starting at line[0]; return (text, index after the closing quote)."""
    i = 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == '"':
            return _unescape(line[1:i]), i + 1
        i += 1
    return _unescape(line[1:]), len(line)


# showSnapshots() prints these raw: a quote in a snapshot name is not escaped, so the value is everything between
# the first '="' and the line's last '"'.
_RAW_KEYS = ("SnapshotName", "SnapshotUUID", "SnapshotDescription", "CurrentSnapshotName", "CurrentSnapshotUUID",
             "CurrentSnapshotNode")


def parse_machinereadable(text: str) -> list[tuple[str, str]]:
    """Parse ``--machinereadable`` output (VBoxManageInfo.cpp rules) into ordered (key, value) pairs.

    A line that is no ``key=value`` continues the previous value (a multi-line snapshot description).
    """
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith('"'):
            key, end = _quoted(line)
            if line[end:end + 1] != "=":
                continue
            rest = line[end + 1:]
        else:
            key, sep, rest = line.partition("=")
            if not sep or not key or any(c.isspace() for c in key):
                if pairs:  # the value's closing quote ends its last line
                    pairs[-1] = (pairs[-1][0], pairs[-1][1] + "\n" + (line[:-1] if line.endswith('"') else line))
                continue
        if key.startswith(_RAW_KEYS):
            value = rest[1:-1] if len(rest) >= 2 and rest[0] == '"' and rest[-1] == '"' else rest.strip('"')
        elif rest.startswith('"'):
            value = _quoted(rest)[0]
        else:
            value = rest
        pairs.append((key, value))
    return pairs


def parse_records(text: str) -> list[dict[str, str]]:
    """Parse ``list hdds`` / ``showmediuminfo`` output: blank-line separated records of ``Label:   value``.

    Indented continuation lines (more VMs, more child UUIDs) are appended to the label's value, one per line.
    """
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                records.append(current)
            current, last = {}, ""
            continue
        if line.startswith(" ") and last:
            current[last] += "\n" + line.strip()
            continue
        label, sep, value = line.partition(":")
        if not sep:
            continue
        last = label.strip()
        current[last] = value.strip()
    if current:
        records.append(current)
    return records


def parse_vm_list(text: str) -> list[tuple[str, str]]:
    """``list vms``: lines ``"name" {uuid}``; the name is printed as it is (quotes included)."""
    found = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line.startswith('"') or not line.endswith("}") or '" {' not in line:
            continue
        name, _sep, rest = line[1:].rpartition('" {')
        if name != "<inaccessible>":
            found.append((name, rest[:-1]))
    return found
