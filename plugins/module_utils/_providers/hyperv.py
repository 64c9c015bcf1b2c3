# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Hyper-V through PowerShell over WinRM (pywinrm).

Each operation runs one of the fixed scripts of hyperv_scripts.py in one WinRM shell opened by connect().
Arguments travel as a base64 JSON data block, results come back as one JSON document.

Checkpoint types: a Standard checkpoint of a running VM saves its memory (consistency ``memory``); a
Production checkpoint uses VSS in the guest and saves no memory (``quiesced``); ProductionOnly fails when VSS
cannot run, Production silently falls back to Standard, which we detect from the checkpoint's saved state.
"""

from __future__ import annotations

import base64
import datetime
import difflib
import json
import time
import traceback
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    ConnectionFailed,
    OperationTimeout,
    ProviderError,
    QuiesceFailed,
    SnapshotNotFound,
    UnsupportedOperation,
    VmNotFound,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import (
    ConsolidationStatus,
    CreateResult,
    Disk,
    Leftover,
    Snapshot,
    SnapshotSpec,
    VmRef,
    VmSelector,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_scripts as scripts
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider, Warn
from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv_backup, hyperv_restore

# pywinrm is imported by load_sdk() when this provider is picked: every module ships every provider, and
# importing it up front would cost each libvirt or VMware task ~0.2 s.
Protocol = requests = winrm = None


def load_sdk() -> str | None:
    """Import pywinrm; return the import traceback when it is missing, else None."""
    global Protocol, requests, winrm  # pylint: disable=global-statement
    try:
        import requests.exceptions  # pylint: disable=redefined-outer-name,import-outside-toplevel
        import winrm.exceptions  # pylint: disable=redefined-outer-name,import-outside-toplevel
        from winrm.protocol import Protocol  # pylint: disable=redefined-outer-name,import-outside-toplevel
    except ImportError:
        return traceback.format_exc()
    return None


_STATES = {"Running": "running", "Off": "shutoff", "Paused": "paused", "Saved": "saved", "Starting": "running",
           "Stopping": "running", "Saving": "running", "Pausing": "running", "Resuming": "paused"}
# Checkpoint states that mean memory was saved with it (a Production checkpoint is always 'Off').
_MEMORY_STATES = ("Running", "Paused", "Saved")
_POLL_SECONDS = 0.5
_RECEIVE_SECONDS = 5


def command_line(script: str) -> tuple[str, list[str]]:
    """Return (command, arguments) that run ``script``: PowerShell's -EncodedCommand takes UTF-16LE base64."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return "powershell.exe", ["-NoProfile", "-NonInteractive", "-EncodedCommand", encoded]


def _parse_time(value: str) -> datetime.datetime:
    text = value.strip().replace("Z", "+00:00")
    if "." in text:  # .NET writes 7 fraction digits; Python takes at most 6
        head, rest = text.split(".", 1)
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def checkpoint_type(spec: SnapshotSpec, running: bool) -> str:
    """Return the Hyper-V CheckpointType that gives what ``spec`` asks for."""
    if spec.disk_only:
        raise UnsupportedOperation(
            "Hyper-V has no disk-only snapshot option: every checkpoint covers all disks. Use quiesce=true for a "
            "production checkpoint (VSS in the guest, no memory), or drop disk_only."
        )
    if spec.quiesce and running:
        return "ProductionOnly" if spec.quiesce_fallback == "fail" else "Production"
    return "Standard"


class HypervProvider(HypervisorProvider):
    """One WinRM connection to a Hyper-V host."""

    name = "hyperv"
    unique_snapshot_names = False

    def __init__(self, params: dict[str, t.Any], warn: Warn) -> None:
        super().__init__(params, warn)
        load_sdk()  # a no-op after the first call; create_provider() has reported a missing SDK already
        self.hostname: str = params.get("hostname") or ""
        self.port: int = params.get("port") or 5986
        self.transport: str = params.get("transport") or "ntlm"
        self.protocol: t.Any = None
        self.shell_id: str | None = None
        self._points: dict[str, dict[str, t.Any]] = {}  # VM id -> its reference points and disks, read once a run

    @property
    def host(self) -> str:
        return f"{self.hostname}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"https://{self.hostname}:{self.port}/wsman"

    # -- connection -------------------------------------------------------------------------------

    def connect(self) -> None:
        if Protocol is None:  # the runner checks first; this guards direct use
            raise ConnectionFailed("The pywinrm package is not installed: pip install pywinrm.")
        if not self.hostname:
            raise ConnectionFailed("hypervisor=hyperv needs hostname (or VMSAFE_HOST): the Hyper-V host to reach "
                                   "over WinRM HTTPS.")
        timeout = int(self.params.get("connect_timeout") or 30)
        kwargs: dict[str, t.Any] = {
            "transport": self.transport,
            "username": self.params.get("username"),
            "password": self.params.get("password"),
            "server_cert_validation": "validate" if self.params.get("validate_certs", True) else "ignore",
            "ca_trust_path": self.params.get("ca_path"),
            # pywinrm waits read_timeout_sec for each HTTP answer; it must outlast the WS-Man operation timeout.
            # Each WS-Man Receive waits at most this long; run_text() loops until the operation's own timeout.
            "operation_timeout_sec": _RECEIVE_SECONDS,
            "read_timeout_sec": timeout + _RECEIVE_SECONDS,
        }
        if self.transport == "certificate":
            kwargs.update(cert_pem=self.params.get("client_cert"), cert_key_pem=self.params.get("client_key"))
        try:
            self.protocol = Protocol(self.endpoint, **kwargs)
            self.shell_id = self.protocol.open_shell()
        except requests.exceptions.SSLError as exc:
            raise ConnectionFailed(
                f"Failed to connect to Hyper-V host {self.host}: the WinRM listener's TLS certificate could not be "
                f"verified ({exc}). Set ca_path to the CA certificate that signed it; validate_certs=false turns "
                f"the check off and is only for labs."
            ) from exc
        except winrm.exceptions.InvalidCredentialsError as exc:
            if self.transport == "certificate":
                raise ConnectionFailed(
                    f"Failed to log in to Hyper-V host {self.host} with transport certificate: {exc}. Set client_cert "
                    f"and client_key (PEM), and map the certificate to a local account on the host "
                    f"(New-Item WSMan:\\localhost\\ClientCertificate)."
                ) from exc
            raise ConnectionFailed(
                f"Failed to log in to Hyper-V host {self.host} with transport {self.transport}: {exc}. Check "
                f"username and password (DOMAIN\\\\user or user@domain), and that the account may use WinRM "
                f"(member of 'Remote Management Users' and 'Hyper-V Administrators')."
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise ConnectionFailed(
                f"Failed to connect to Hyper-V host {self.host}: {exc}. Check that WinRM listens on HTTPS there "
                f"(winrm enumerate winrm/config/listener) and that port {self.port} is open."
            ) from exc
        except winrm.exceptions.WinRMError as exc:
            raise ConnectionFailed(f"Failed to open a WinRM shell on Hyper-V host {self.host}: {exc}") from exc

    def close(self) -> None:
        if self.protocol is not None and self.shell_id is not None:
            try:
                self.protocol.close_shell(self.shell_id)
            except (winrm.exceptions.WinRMError, requests.exceptions.RequestException, AssertionError):
                pass  # AssertionError: pywinrm asserts the answer's RelatesTo; closing is best effort
        self.protocol = None
        self.shell_id = None

    # -- running scripts --------------------------------------------------------------------------

    def run(self, name: str, payload: dict[str, t.Any], verb: str, timeout: float | None = None,
            stdin: t.Iterable[bytes] | None = None) -> t.Any:
        """Run the shipped script ``name`` with ``payload`` as data; return its ``data``.

        Raises VmNotFound/SnapshotNotFound for objects the script did not find, OperationTimeout when it runs
        longer than ``timeout`` seconds (connect_timeout when None), ProviderError otherwise; ``verb``
        ("create checkpoint 'x' of VM 'y'") goes into the message.
        """
        return self.run_text(scripts.render(name, payload), verb, timeout, stdin)

    def run_text(self, script: str, verb: str, timeout: float | None = None,
                 stdin: t.Iterable[bytes] | None = None) -> t.Any:
        """Run a script; ``stdin`` (pieces of bytes) is sent through WS-Man Send before the output is read."""
        command, args = command_line(script)
        limit = float(timeout if timeout is not None else (self.params.get("connect_timeout") or 30))
        started = time.monotonic()
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        code = -1
        try:
            command_id = self.protocol.run_command(self.shell_id, command, args)
            try:
                if stdin is not None:
                    for piece in stdin:
                        self.protocol.send_command_input(self.shell_id, command_id, piece, end=False)
                        if time.monotonic() - started >= limit:
                            raise OperationTimeout(f"Failed to {verb} on hyperv host {self.host}: sending the data "
                                                   f"took longer than {limit:g} s; raise timeout if the host is slow.")
                    self.protocol.send_command_input(self.shell_id, command_id, b"", end=True)
                # Not pywinrm's get_command_output(): it retries WS-Man operation timeouts forever.
                while True:
                    try:
                        out, err, code, done = self.protocol.get_command_output_raw(self.shell_id, command_id)
                        stdout.append(out)
                        stderr.append(err)
                        if done:
                            break
                    except winrm.exceptions.WinRMOperationTimeoutError:
                        pass  # the command runs on; WS-Man only ended this Receive
                    took = time.monotonic() - started
                    if took >= limit:
                        raise OperationTimeout(
                            f"Failed to {verb} on hyperv host {self.host}: no result after {took:.1f} s (timeout "
                            f"{limit:g} s). PowerShell was told to stop, but Hyper-V may still finish the "
                            f"operation: check with vmsafe.protect.vm_snapshot_info, and raise timeout if the host "
                            f"is slow."
                        )
            finally:
                self._cleanup(command_id)
        except (winrm.exceptions.WinRMError, requests.exceptions.RequestException) as exc:
            raise ProviderError(f"Failed to {verb} on hyperv host {self.host}: WinRM error: {exc}") from exc
        return self._answer(b"".join(stdout), b"".join(stderr), code, verb)

    def _cleanup(self, command_id: str) -> None:
        """Signal terminate: ends the command if it still runs and frees it on the host; best effort."""
        try:
            self.protocol.cleanup_command(self.shell_id, command_id)
        except (winrm.exceptions.WinRMError, requests.exceptions.RequestException, AssertionError):
            pass  # AssertionError: pywinrm asserts the answer's RelatesTo

    def _answer(self, stdout: bytes, stderr: bytes, code: int, verb: str) -> t.Any:
        try:
            answer = json.loads(stdout.decode("utf-8", "replace") or "null")
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "ok" not in answer:
            err = stderr.decode("utf-8", "replace").strip()[:2000]
            raise ProviderError(f"Failed to {verb} on hyperv host {self.host}: PowerShell exited with {code} and "
                                f"no JSON result. stderr: {err or '(empty)'}")
        if not answer["ok"]:
            message = f"Failed to {verb} on hyperv host {self.host}: {answer.get('error')}"
            if answer.get("reason") == "ItemNotFoundException":
                if "checkpoint" in str(answer.get("error")):
                    raise SnapshotNotFound(message + ". It was removed meanwhile; list them with vm_snapshot_info.")
                raise VmNotFound(message + ". The VM was removed or renamed meanwhile.")
            raise ProviderError(message)
        return answer.get("data")

    # -- VMs --------------------------------------------------------------------------------------

    def _ref(self, data: dict[str, t.Any]) -> VmRef:
        return VmRef(id=data["id"], name=data["name"], state=_STATES.get(data["state"], data["state"].lower()),
                     host=self.host)

    def list_vms(self) -> list[VmRef]:
        return [self._ref(v) for v in self.run("list_vms", {}, "list VMs") or []]

    def find_vm(self, selector: VmSelector) -> VmRef:
        vms = self.list_vms()
        if selector.id is not None:
            found = [v for v in vms if v.id.lower() == selector.id.lower()]
        else:
            found = [v for v in vms if v.name.lower() == str(selector.name).lower()]
        if len(found) > 1:
            ids = ", ".join(v.id for v in found)
            raise VmNotFound(f"Hyper-V host {self.host} has {len(found)} VMs named '{selector.name}' ({ids}); "
                             f"select one with vm_id.")
        if not found:
            close = difflib.get_close_matches(selector.name or selector.id or "", [v.name for v in vms], n=3)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise VmNotFound(f"No VM {selector.describe()} on Hyper-V host {self.host}.{hint}")
        return found[0]

    # -- snapshots (checkpoints) ------------------------------------------------------------------

    def _snapshot(self, data: dict[str, t.Any], current: str) -> Snapshot:
        return Snapshot(
            id=data["id"], name=data["name"], created=_parse_time(data["created"]), description=data.get("notes") or "",
            parent=data.get("parent") or None, current=bool(current) and data["id"] == current,
            memory=data.get("state") in _MEMORY_STATES, quiesced=None, kind="internal",
            vm_state=_STATES.get(data.get("state") or "", ""),
        )

    def list_snapshots(self, vm: VmRef) -> list[Snapshot]:
        data = self.run("list_checkpoints", {"vm_id": vm.id}, f"list checkpoints of VM '{vm.name}'")
        return tree.link([self._snapshot(s, data.get("current") or "") for s in data.get("checkpoints") or []])

    def list_vms_with_snapshots(self) -> list[tuple[VmRef, list[Snapshot]]]:
        """Every VM with its checkpoints, in one WinRM command (not one per VM)."""
        return [(self._ref(v), tree.link([self._snapshot(s, v.get("current") or "") for s in v.get("checkpoints") or []]))
                for v in self.run("list_vms_checkpoints", {}, "list VMs and their checkpoints") or []]

    def create_snapshot(self, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
        running = vm.state in ("running", "paused")
        kind = checkpoint_type(spec, running)
        warnings: list[str] = []
        if spec.description:
            warnings.append("Hyper-V checkpoints keep no description here; description was not stored.")
        try:
            data = self.run("create_checkpoint", {"vm_id": vm.id, "name": spec.name, "checkpoint_type": kind},
                            f"create checkpoint '{spec.name}' of VM '{vm.name}'", timeout)
        except ProviderError as exc:
            if kind == "ProductionOnly":
                raise QuiesceFailed(
                    f"{exc}. A production checkpoint needs VSS (Windows) or fsfreeze via the integration services "
                    f"(Linux) in the guest. Fix the guest, or set quiesce_fallback=crash_consistent to accept a "
                    f"standard checkpoint."
                ) from exc
            raise
        snap = self._snapshot(data, data["id"])
        if not running:
            consistency = "offline"
        elif snap.memory:
            consistency = "memory"
            if kind == "Production":
                msg = (f"VM '{vm.name}' could not make a production checkpoint (VSS in the guest failed); Hyper-V "
                       f"made a standard checkpoint with memory instead.")
                warnings.append(msg)
        else:
            consistency = "quiesced" if kind != "Standard" else "crash_consistent"
        snap.quiesced = consistency == "quiesced"
        for warning in warnings:
            self.warn(warning)
        return CreateResult(snapshot=snap, consistency=consistency, warnings=warnings)

    def revert_snapshot(self, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
        self.run("restore_checkpoint", {"vm_id": vm.id, "snapshot_id": snapshot.id},
                 f"restore checkpoint '{snapshot.name}' of VM '{vm.name}'", timeout)

    def rename_snapshot(self, vm: VmRef, snapshot: Snapshot, new_name: str, timeout: int) -> Snapshot:
        """Rename a checkpoint (Rename-VMSnapshot); return it as it is now. Hyper-V only: no module uses it yet."""
        data = self.run("rename_checkpoint", {"vm_id": vm.id, "snapshot_id": snapshot.id, "new_name": new_name},
                        f"rename checkpoint '{snapshot.name}' of VM '{vm.name}'", timeout)
        return self._snapshot(data, data["id"] if snapshot.current else "")

    def delete_snapshot(self, vm: VmRef, snapshot: Snapshot, children: bool, timeout: int) -> None:
        started = time.monotonic()
        self.run("remove_checkpoint", {"vm_id": vm.id, "snapshot_id": snapshot.id, "children": children},
                 f"remove checkpoint '{snapshot.name}' of VM '{vm.name}'", timeout)
        self.wait_for_merge(vm, timeout, f"remove checkpoint '{snapshot.name}'", started)

    def wait_for_merge(self, vm: VmRef, timeout: int, what: str, started: float | None = None) -> None:
        """Poll until the host has merged the AVHDX files; raise OperationTimeout ``timeout`` seconds after
        ``started`` (a time.monotonic() value; now when None)."""
        started = time.monotonic() if started is None else started
        while True:
            status = self._disk_status(vm)
            if not self._merging(status):
                return
            took = time.monotonic() - started
            if took >= timeout:
                raise OperationTimeout(
                    f"Failed to {what} of VM '{vm.name}' on hyperv host {self.host}: the host still merges the "
                    f"disks after {took:.1f} s (timeout {timeout} s). The merge goes on in the background; raise "
                    f"timeout, and check Get-VM '{vm.name}' | Select Status before the next change."
                )
            time.sleep(_POLL_SECONDS)

    # -- consolidation ----------------------------------------------------------------------------

    def _disk_status(self, vm: VmRef) -> dict[str, t.Any]:
        return t.cast(dict, self.run("disk_status", {"vm_id": vm.id}, f"read the disks of VM '{vm.name}'"))

    @staticmethod
    def _merging(status: dict[str, t.Any]) -> bool:
        return "MergingDisks" in (status.get("operational") or []) or "Merging" in str(status.get("status") or "")

    def consolidation_status(self, vm: VmRef, snapshots: list[Snapshot] | None = None) -> ConsolidationStatus:
        status = self._disk_status(vm)
        disks = []
        for disk in status.get("disks") or []:
            chain = [layer["path"] for layer in disk.get("chain") or []]
            top = (disk.get("chain") or [{}])[0]
            disks.append(Disk(target=disk["target"], path=chain[0] if chain else "", format=top.get("format", ""),
                              chain=chain, virtual_size=top.get("size"), allocation=top.get("file_size")))
        depth = max((len(d.chain) for d in disks), default=0)
        reasons: list[str] = []
        leftovers: list[Leftover] = []
        if self._merging(status):
            reasons.append(f"the host is merging checkpoint disks ({status.get('status')})")
            detail = f"Hyper-V merge in progress: {status.get('status')}"
            leftovers.append(Leftover(kind="block_job", disk="*", detail=detail))
        return ConsolidationStatus(needed=bool(reasons), chain_depth=depth, reasons=reasons, leftovers=leftovers,
                                   disks=disks)

    def repair_leftover(self, vm: VmRef, leftover: Leftover, timeout: int) -> None:
        if leftover.kind == "block_job":
            self.wait_for_merge(vm, timeout, "wait for the disk merge")
            return
        raise UnsupportedOperation(f"Failed to repair {leftover.kind} of VM '{vm.name}' on hyperv host {self.host}: "
                                   f"Hyper-V merges checkpoint disks itself; nothing else is repaired.")

    # -- backups (Recovery checkpoint + RCT; see hyperv_backup) ------------------------------------

    def _reference_points(self, vm: VmRef) -> dict[str, t.Any]:
        """The VM's reference points (with their RCT ids) and disks; backup_base and backup_begin share one read."""
        if vm.id not in self._points:
            self._points[vm.id] = self.run("list_reference_points", {"vm_id": vm.id},
                                           f"list the reference points of VM '{vm.name}'")
        return self._points[vm.id]

    def backup_base(self, vm: VmRef, last: dict[str, t.Any] | None) -> tuple[str | None, str]:
        if last is None:
            return None, "no earlier backup of this VM in the repository"
        point = last.get("checkpoint")
        data = self._reference_points(vm)
        points = {p["id"]: p.get("rct") or [] for p in data.get("reference_points") or []}
        if not point or point not in points:
            return None, (f"the reference point of the last backup ({point or 'none'}) is gone from the VM (a failed "
                          f"run, a VM moved or restored, or removed by hand)")
        disks = {d["target"]: int(d["size"]) for d in data.get("disks") or []}
        if set(disks) != set(last.get("disks", {})):
            return None, f"the VM's disks changed ({', '.join(sorted(disks))} now)"
        for target, size in disks.items():
            if size != last["disks"][target]:
                return None, f"disk {target} was resized from {last['disks'][target]} to {size} bytes"
        if len(points[point]) != len(disks) or not all(points[point]):
            return None, f"reference point {point} has no change tracking id for every disk (RCT off or unsupported)"
        return point, f"reference point {point} of the last backup is intact"

    def backup_begin(self, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str) -> t.Any:
        rct: dict[str, str] = {}
        if since:
            data = self._reference_points(vm)
            point = next((p for p in data.get("reference_points") or [] if p["id"] == since), None)
            if point is None:
                raise ProviderError(f"Reference point {since} of VM '{vm.name}' vanished before the backup began; run "
                                    f"again (mode auto takes a full backup).")
            targets = sorted(d["target"] for d in data.get("disks") or [])
            rct = dict(zip(targets, point.get("rct") or []))
        level = 1 if quiesce and vm.state == "running" else 2
        verb = f"take the backup checkpoint of VM '{vm.name}'"
        try:
            begun = self.run("backup_begin", {"vm_id": vm.id, "consistency_level": level}, verb)
        except ProviderError as exc:
            if level != 1 or quiesce_fallback != "crash_consistent":
                if level == 1:
                    raise QuiesceFailed(f"{exc}. An application-consistent checkpoint needs VSS (Windows) or the "
                                        f"integration services' fsfreeze (Linux) in the guest; set "
                                        f"quiesce_fallback=crash_consistent to accept a crash-consistent backup.") from exc
                raise
            self.warn(f"VM '{vm.name}': application-consistent checkpoint failed ({exc}); taking a crash-consistent one.")
            begun = self.run("backup_begin", {"vm_id": vm.id, "consistency_level": 2}, verb)
        if vm.state != "running":
            consistency = "offline"
        else:
            consistency = "quiesced" if int(begun.get("consistency_level") or 2) == 1 else "crash_consistent"
        disks = [hyperv_backup.HypervDisk(target=d["target"], size=int(d["size"]), path=d["path"],
                                          limit_id=rct.get(d["target"]), run=self.run, vm=vm)
                 for d in begun.get("disks") or []]
        return hyperv_backup.HypervBackupSession(
            vm=vm, checkpoint=str(begun["checkpoint"]), previous=since, consistency=consistency,
            vm_definition=json.dumps(begun.get("definition") or {}, sort_keys=True), disks=disks, run=self.run,
            warn=self.warn)

    # -- restores (see hyperv_restore) ------------------------------------------------------------

    restore_location = "remote"
    restore_format = "raw"  # vm_restore writes raw images, which are sent into new VHDX files on the host
    restore_options = frozenset({"keep_macs", "backup_id"})

    def vm_disks(self, vm: VmRef) -> dict[str, str]:
        return hyperv_restore.vm_disks(self, vm)

    def prepare_restore_in_place(self, vm: VmRef) -> None:
        hyperv_restore.check_shut_off(self, vm)

    def restore_paths(self, vm: VmRef, names: list[str], token: str) -> dict[str, str]:
        return hyperv_restore.restore_paths(self, vm, names, token)

    def restore_over_vm(self, vm: VmRef, disk_files: dict[str, str], paths: dict[str, str], timeout: int) -> None:
        hyperv_restore.restore_over(self, vm, disk_files, paths, timeout)

    def restored_from(self, vm: VmRef) -> str | None:
        return hyperv_restore.restored_from(self, vm)

    def define_restored_vm(self, definition: str, name: str, disk_files: dict[str, tuple[str, str]],
                           start: bool, keep_macs: bool = False, backup_id: str = "") -> VmRef:
        return hyperv_restore.define(self, definition, name, disk_files, start, keep_macs, backup_id)
