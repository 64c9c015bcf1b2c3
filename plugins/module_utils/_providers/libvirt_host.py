# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Commands and sockets on the KVM host of a libvirt URI: here for local URIs, through SSH for qemu+ssh:// ones.

Backups need the KVM host itself, not only libvirt's API: QEMU's NBD export is a Unix socket there, and a shut-off
VM's images are read there with qemu-img and qemu-nbd. For a ``qemu+ssh://`` URI this runs on the KVM host through
the same SSH login libvirt uses (user, port and the ``keyfile``, ``known_hosts``, ``no_verify`` and ``command`` URI
parameters), over one multiplexed connection (OpenSSH ControlMaster) that also forwards each NBD socket to a
socket here. So a remote host needs nothing that a qemu+ssh:// URI does not already need, no port is opened and no
certificate made, and the disk data travel inside the SSH connection (see docs/backup.md, "Remote KVM hosts").

Every command goes through the module's ``run_command`` (argv lists), under coreutils ``timeout``; SSH hands the
remote side one command line, so the remote argv is quoted with shlex.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import tempfile
import time
import typing as t
import urllib.parse

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    OperationTimeout,
    ProviderError,
    UnsupportedOperation,
)

# AnsibleModule.run_command(args, check_rc=False, ...) -> (rc, stdout, stderr)
RunCommand = t.Callable[..., t.Tuple[int, str, str]]

_TIMEOUT_RC = 124  # coreutils timeout: the command ran out of time
_KILL_GRACE = 10  # seconds between timeout's TERM and KILL


def ssh_uri(uri: str) -> bool:
    """Whether the URI reaches libvirt through SSH (qemu+ssh://, qemu+libssh2://, qemu+libssh://)."""
    scheme = urllib.parse.urlparse(uri).scheme
    return "+ssh" in scheme or "+libssh" in scheme


def is_local(uri: str) -> bool:
    """Whether the URI's libvirtd runs on this machine (no host, or a loopback name without SSH)."""
    parsed = urllib.parse.urlparse(uri)
    return parsed.hostname in (None, "", "localhost", "127.0.0.1") and not ssh_uri(uri)


class KvmHost:
    """The machine libvirtd runs on, for the commands and sockets a backup needs there."""

    def __init__(self, uri: str, run_command: RunCommand | None) -> None:
        self.uri = uri
        self._run_command = run_command
        self.remote = not is_local(uri)
        self.name = "localhost"
        self._ssh: list[str] = []
        self._target = ""
        self._control_dir: str | None = None
        self._forwards: list[tuple[str, str]] = []
        if self.remote and ssh_uri(uri):
            parsed = urllib.parse.urlparse(uri)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            self.name = parsed.hostname or ""
            opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "ServerAliveInterval=15"]
            if parsed.port:
                opts += ["-p", str(parsed.port)]
            if query.get("keyfile"):
                opts += ["-i", query["keyfile"], "-o", "IdentitiesOnly=yes"]
            if query.get("known_hosts"):
                opts += ["-o", f"UserKnownHostsFile={query['known_hosts']}"]
            if query.get("no_verify") == "1":
                opts += ["-o", "StrictHostKeyChecking=no"]
            self._ssh = [query.get("command") or "ssh"] + opts
            self._target = f"{parsed.username}@{self.name}" if parsed.username else self.name

    @property
    def reachable(self) -> bool:
        """Whether commands can run on the host: it is this machine, or the URI gives an SSH login to it."""
        return not self.remote or bool(self._ssh)

    def require(self, what: str) -> None:
        """Raise UnsupportedOperation when ``what`` needs the host and the URI gives no way to it."""
        if not self.reachable:
            raise UnsupportedOperation(
                f"Failed to {what} on libvirt host {self.uri}: it needs commands and sockets on the KVM host, and "
                f"this URI's transport gives none. Use a qemu+ssh://user@host/system URI, or run the task on the KVM "
                f"host (delegate_to) with uri qemu:///system.")

    # -- commands ---------------------------------------------------------------------------------

    def _argv(self, argv: list[str], timeout: float) -> list[str]:
        limit = ["timeout", "-k", str(_KILL_GRACE), f"{max(1.0, timeout):g}"]
        if not self.remote:
            return limit + argv
        self._connect()
        return limit + self._ssh + ["-S", self._control(), self._target, "--", shlex.join(argv)]

    def try_run(self, argv: list[str], timeout: float = 60, data: str | None = None) -> tuple[int, str, str]:
        """Run argv on the host; return (rc, stdout, stderr). rc 124 means it ran out of time."""
        if self._run_command is None:
            raise ProviderError("Internal error: this provider was made without the module's run_command.")
        kwargs: dict[str, t.Any] = {"check_rc": False, "expand_user_and_vars": False}
        if data is not None:
            kwargs.update(data=data, binary_data=True)
        rc, out, err = self._run_command(self._argv(argv, timeout), **kwargs)
        return rc, out, err

    def run(self, argv: list[str], timeout: float, what: str, data: str | None = None) -> str:
        """Run argv on the host and return its stdout; raise OperationTimeout or ProviderError naming ``what``."""
        rc, out, err = self.try_run(argv, timeout, data)
        where = f"on {self.name}" if self.remote else "here"
        if rc == _TIMEOUT_RC:
            raise OperationTimeout(f"Timed out after {timeout:g} s waiting to {what} ({argv[0]} {where}).")
        if rc != 0:
            cause = (err or out).strip() or f"exit code {rc}"
            if rc == 127:
                cause = f"{argv[0]} is not installed {where} ({cause}); install qemu-utils"
            raise ProviderError(f"Failed to {what} on libvirt host {self.uri}: {cause}")
        return out

    # -- files --------------------------------------------------------------------------------------

    def make_dir(self, parent: str, prefix: str) -> str:
        """Create a private folder under ``parent`` (made 0700 when missing); return its path."""
        if not self.remote:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            return tempfile.mkdtemp(prefix=prefix, dir=parent)
        self.run(["mkdir", "-p", "-m", "0700", parent], 30, f"create {parent}")
        return self.run(["mktemp", "-d", f"{parent}/{prefix}XXXXXXXX"], 30, f"create a folder in {parent}").strip()

    def write_json(self, path: str, value: t.Any) -> None:
        text = json.dumps(value)
        if not self.remote:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        self.run(["sh", "-c", 'cat > "$1"', "sh", path], 30, f"write {path}", data=text)

    def read_json(self, path: str) -> t.Any:
        """The JSON document at ``path``, or None when it is missing or unreadable."""
        try:
            if not self.remote:
                with open(path, encoding="utf-8") as handle:
                    return json.load(handle)
            rc, out, _err = self.try_run(["cat", path], 30)
            return json.loads(out) if rc == 0 else None
        except (OSError, ValueError):
            return None

    def remove(self, paths: list[str], folder: str | None = None) -> None:
        """Remove files (gone already is fine) and then the folder when empty; raise OSError when that fails."""
        if not self.remote:
            for path in paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            if folder is not None:
                try:
                    for entry in os.listdir(folder):
                        try:
                            os.unlink(os.path.join(folder, entry))
                        except FileNotFoundError:
                            pass
                    os.rmdir(folder)
                except FileNotFoundError:
                    pass
            return
        argv = ["rm", "-f", "--", *paths]
        if folder is not None:
            argv = ["sh", "-c", 'rm -f -- "$@"; rm -rf -- "$0"', folder, *paths]
        rc, _out, err = self.try_run(argv, 60)
        if rc != 0:
            raise OSError(f"removing {folder or ', '.join(paths)} on {self.name} failed: {err.strip()}")

    def process_alive(self, owner: dict[str, t.Any]) -> bool | None:
        """Whether the vmsafe process named by an owner record runs; None when it ran on another controller."""
        if owner.get("controller", socket.gethostname()) != socket.gethostname():
            return None
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (OSError, ValueError, KeyError):
            return False
        return True

    def owner_record(self, **extra: t.Any) -> dict[str, t.Any]:
        """Who runs this backup, written beside the job's socket so that a later run can tell an abandoned job."""
        record: dict[str, t.Any] = {"pid": os.getpid()}
        if self.remote:
            record["controller"] = socket.gethostname()
        record.update(extra)
        return record

    # -- sockets ------------------------------------------------------------------------------------

    def _control(self) -> str:
        if self._control_dir is None:
            # Unix socket paths are short (108 bytes): a short private folder under /tmp.
            self._control_dir = tempfile.mkdtemp(prefix="vmsafe-ssh-", dir="/tmp")
        return os.path.join(self._control_dir, "c")

    def _connect(self) -> None:
        """Start the multiplexed SSH connection (once): one login for every command and forward."""
        control = self._control()
        if os.path.exists(control):
            return
        # -f: background once logged in; ControlPersist: the master ends on its own 30 s after its last use, even
        # when this process is killed before close() asks it to.
        argv = (["timeout", "-k", str(_KILL_GRACE), "60"] + self._ssh
                + ["-M", "-S", control, "-o", "ControlPersist=30", "-f", "-N", self._target])
        rc, out, err = t.cast(RunCommand, self._run_command)(argv, check_rc=False, expand_user_and_vars=False)
        if rc != 0 or not os.path.exists(control):
            raise ProviderError(f"Failed to open an SSH connection to {self._target} for the backup (the libvirt URI "
                                f"{self.uri} works over SSH, and the backup reads the disks through it): "
                                f"{(err or out).strip() or f'exit code {rc}'}. Check that sshd there allows "
                                f"stream-local forwarding (AllowStreamLocalForwarding, on by default).")

    def local_socket(self, path: str) -> str:
        """A path here that reaches the Unix socket ``path`` on the host (a forward for a remote host)."""
        if not self.remote:
            return path
        local = os.path.join(t.cast(str, self._control_dir or os.path.dirname(self._control())),
                             f"f{len(self._forwards)}")
        spec = f"{local}:{path}"
        self._run_ssh_control("forward", spec)
        self._forwards.append((local, spec))
        return local

    def _run_ssh_control(self, command: str, spec: str | None = None) -> None:
        argv = ["timeout", "-k", str(_KILL_GRACE), "30"] + self._ssh + ["-S", self._control(), "-O", command]
        if spec is not None:
            argv += ["-L", spec]
        rc, out, err = t.cast(RunCommand, self._run_command)(argv + [self._target], check_rc=False,
                                                             expand_user_and_vars=False)
        if rc != 0 and command != "exit":
            raise ProviderError(f"Failed to forward the backup export {spec} from {self._target}: "
                                f"{(err or out).strip() or f'exit code {rc}'}")

    def drop_socket(self, local: str) -> None:
        """End the forward of a socket made by local_socket()."""
        for entry in list(self._forwards):
            if entry[0] == local:
                self._run_ssh_control("cancel", entry[1])
                self._forwards.remove(entry)
                try:
                    os.unlink(local)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        """End the SSH connection and remove its folder; never raises."""
        if self._control_dir is None:
            return
        control = os.path.join(self._control_dir, "c")
        if os.path.exists(control):
            try:
                self._run_ssh_control("exit")
            except ProviderError:
                pass
            deadline = time.monotonic() + 5
            while os.path.exists(control) and time.monotonic() < deadline:
                time.sleep(0.02)
        for entry in os.listdir(self._control_dir) if os.path.isdir(self._control_dir) else []:
            try:
                os.unlink(os.path.join(self._control_dir, entry))
            except OSError:
                pass
        try:
            os.rmdir(self._control_dir)
        except OSError:
            pass
        self._control_dir = None
        self._forwards = []
