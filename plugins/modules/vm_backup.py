#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_backup
short_description: Back up every disk of a VM into a deduplicated, encrypted repository
version_added: 0.1.0
description:
  - Takes a full or an incremental backup of every disk of a VM into a vmsafe backup repository
    (deduplicated, zstd-compressed, AES-256-GCM encrypted unless the repository was made with O(encryption=none)).
  - Incrementals read only the extents that changed since the previous backup, from the hypervisor's change
    tracking (libvirt checkpoints and QEMU dirty bitmaps; Hyper-V Resilient Change Tracking since the reference
    point the last backup left; Azure page-range diffs between incremental snapshots), never the whole disk.
  - The VM definition is stored with the backup, so M(vmsafe.protect.vm_restore) can make a new VM from it.
  - Leaves nothing on the VM but the checkpoint the next incremental needs. A failed or interrupted backup leaves the
    VM running, the repository and every earlier backup intact, and the next run working.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.connection
  - vmsafe.protect.proxy
  - vmsafe.protect.vm_selector
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_VMSAFE_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Says whether the backup would be full or incremental, and why; reads and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Every run takes a new backup; use M(vmsafe.protect.backup_prune) to keep a set.
options:
  mode:
    description:
      - V(auto) takes an incremental when the chain to the last backup is intact, and a full backup when it is not
        (no earlier backup, checkpoint missing, VM reverted, disks added or resized, bitmap inconsistent), and says
        why in RV(reason).
      - V(incremental) fails instead of falling back to a full backup.
    type: str
    default: auto
    choices: [auto, full, incremental]
  quiesce:
    description:
      - Freeze the guest file systems through the guest agent while the backup point is taken (a fraction of a second).
    type: bool
    default: false
  quiesce_fallback:
    description:
      - V(fail) fails without backing anything up when the guest cannot be quiesced. V(crash_consistent) backs up
        anyway and reports RV(consistency=crash_consistent) with a warning.
    type: str
    default: fail
    choices: [fail, crash_consistent]
  tags:
    description:
      - Labels stored with the backup (for example the change ticket).
    type: dict
    default: {}
  init:
    description:
      - Create the repository when it does not exist yet (with O(encryption) and O(compression_level)).
    type: bool
    default: false
  encryption:
    description:
      - Encryption of a repository created by O(init=true). V(none) must be chosen explicitly.
    type: str
    default: aes-256-gcm
    choices: [aes-256-gcm, none]
  compression_level:
    description:
      - zstd level of a repository created by O(init=true); the same default as M(vmsafe.protect.backup_repository).
      - Level 2 is the default because on 64 KiB chunks level 3 stores about 0.3 % less for about a quarter more
        compression time (docs/backup.md).
    type: int
    default: 2
  timeout:
    description:
      - Seconds the whole backup may take. When it is hit the backup job is aborted, nothing is committed to the
        repository, the VM keeps running, and the module fails.
    type: int
    default: 21600
notes:
  - On libvirt a running VM's disks are served by QEMU over NBD (a pull-mode backup job); a shut-off VM's image files
    are read with a read-only C(qemu-nbd) on the KVM host, which keeps the VM from starting until the read ends.
  - On libvirt disks of any format are backed up (image files and block devices such as LVM volumes); only qcow2
    disks keep the dirty bitmaps incrementals need, so other disks are read whole in every backup. Network disks
    (RBD, iSCSI) are skipped with a warning.
  - On libvirt with a C(qemu+ssh://) URI the KVM host's NBD sockets and image files are reached through the URI's own
    SSH login (user, port, C(keyfile), C(known_hosts), C(no_verify)); the host needs C(qemu-utils) and sshd's
    stream-local forwarding (on by default). See docs/backup.md in the collection.
  - On Hyper-V a Recovery checkpoint freezes the disks, which are read through a read-only mount over WinRM, a few
    MiB per command; the checkpoint then becomes the reference point of the next incremental. Tested against the
    project's WS-Management simulator only (see docs/hyperv.md).
  - On VirtualBox there is no changed-block tracking, so every backup is a full read (RV(mode=full), RV(reason) says
    why); the repository's deduplication stores only the chunks that changed. Each disk of a temporary snapshot is
    cloned to a flat file next to the VM (free space the size of the disk is needed there), streamed in, and removed
    with the snapshot. Verified against the project's fake VBoxManage only (see docs/virtualbox.md).
  - On Azure (O(hypervisor=azure)) each backup takes an incremental snapshot set and reads it through time-limited
    SAS URLs, reading the written pages for a full backup and the page-range diff to the last backup's set for an
    incremental.
    That set is kept as the next incremental's base (tagged C(vmsafe-purpose=backup), not listed as a snapshot); the
    previous one is deleted. Crash consistent; O(quiesce) is not supported there yet. Tested against the project's
    Azure fake only (see docs/azure.md).
  - Run long backups with C(async) and C(poll); the result reports the bytes read and stored.
seealso:
  - module: vmsafe.protect.vm_restore
  - module: vmsafe.protect.backup_info
  - module: vmsafe.protect.backup_verify
  - module: vmsafe.protect.backup_prune
"""

EXAMPLES = r"""
- name: Nightly backup (incremental when possible) to an SFTP repository
  vmsafe.protect.vm_backup:
    vm_name: web01
    repository: sftp://backup@vault01.example.com/srv/vmsafe
    repository_key_file: /etc/vmsafe/id_ed25519
    passphrase: "{{ vmsafe_passphrase }}"
    quiesce: true
    quiesce_fallback: crash_consistent
    tags:
      schedule: nightly
  async: 21600
  poll: 30
  register: backup

- name: First backup into a new local repository
  vmsafe.protect.vm_backup:
    vm_name: db01
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    init: true
    mode: full
"""

RETURN = r"""
backup_id:
  description: Id of the new backup (V(null) in check mode).
  returned: success
  type: str
  sample: 20261123T020000Z-3f9a1c2e
mode:
  description: V(full) or V(incremental), as taken (or planned in check mode).
  returned: success
  type: str
  sample: incremental
reason:
  description: Why this mode was chosen.
  returned: success
  type: str
  sample: checkpoint vmsafe-20261122T020000123456Z of the last backup is intact
parent:
  description: The backup an incremental builds on.
  returned: success
  type: str
  sample: 20261122T020000Z-91be0d44
checkpoint:
  description:
    - The hypervisor's change-tracking reference kept for the next incremental.
    - V(null) when no disk of the VM can track changes (libvirt VMs with raw disks only).
  returned: success, not in check mode
  type: str
  sample: vmsafe-20261123T020000123456Z
consistency:
  description:
    - V(quiesced) (the guest agent froze the file systems), V(crash_consistent), or V(shutdown) (a libvirt VM that
      was shut down normally and backed up shut off).
  returned: success, not in check mode
  type: str
  sample: crash_consistent
bytes_read:
  description: Bytes read from the VM's disks.
  returned: success
  type: int
  sample: 42991616
bytes_stored:
  description: Bytes added to the repository (after deduplication, compression and encryption).
  returned: success
  type: int
  sample: 10735472
reduction_ratio:
  description: RV(bytes_read) divided by RV(bytes_stored) (deduplication and compression together).
  returned: success
  type: float
  sample: 4.0
duration:
  description: Seconds the backup took.
  returned: success
  type: float
  sample: 3.41
disks:
  description:
    - Per disk, its name, size, and the content digest at the backup point (SHA-256 over the SHA-256 of each
      repository chunk, see docs/repository-format.md), which every restore checks.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "vda", "size": 21474836480, "digest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]
vm:
  description: The VM backed up.
  returned: success
  type: dict
  sample: {"id": "0b3aba08-caf1-45d6-a9fd-0f81ba99ba45", "name": "web01", "state": "running", "host": "qemu:///system"}
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 41.3
applied:
  description:
    - When the module failed, the steps that had completed before the failure. The backup is one step, so this
      is an empty list when the backup failed.
  returned: failure
  type: list
  elements: str
  sample: []
"""

import concurrent.futures
import threading
import time
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.repository import DiskSource
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import vm_argument_spec
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import OperationTimeout, VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._peer_options import with_peer_options
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import open_repository, repository_spec, wrap
from ansible_collections.vmsafe.protect.plugins.module_utils._runner import ProviderTask, run_module

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet


class BackupTask(ProviderTask):
    """Take one backup of one VM."""

    repo: t.Any = None
    session: t.Any = None
    speculation: t.Any = None  # (guessed last_info, since, reason, future of the session) begun before the key is open

    @classmethod
    def prestart(cls, params: dict[str, t.Any]) -> concurrent.futures.Future:
        """Open the repository in a thread: unlocking its key (Argon2id, GIL-free) overlaps with loading the provider."""
        opener = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vmsafe-open")
        try:
            return opener.submit(open_repository, params)
        finally:
            opener.shutdown(wait=False)

    def _open(self) -> t.Any:
        """The repository, opened early; created here (after the VM was found) when it is missing and init is set."""
        p = self.params
        try:
            return self.early.result() if self.early is not None else open_repository(p)
        except VmsafeError:
            if not p["init"]:
                raise
        if self.check_mode:
            return None  # would be created
        return open_repository(p, create={"encryption": p["encryption"], "compression_level": p["compression_level"]})

    def plan(self, changes: ChangeSet) -> None:
        p = self.params
        self.vm = self.provider.find_vm(self.selector())
        self.partial["vm"] = self.vm.to_dict()
        self._speculate()
        self.repo = self._open()
        self.last = None
        if self.repo is not None:
            mine = [r for r in self.repo.list(self.vm.name) if r.tags.get("vm_id") == self.vm.id]
            self.last = mine[-1] if mine else None
        last_info = None
        if self.last is not None:
            last_info = {"checkpoint": self.last.tags.get("checkpoint"), "disks": {d.name: d.size for d in self.last.disks}}
        if self.speculation is not None and self.speculation[0] == last_info:
            since, reason = self.speculation[1:3]  # the same question, answered while the key was unlocked
        else:
            since, reason = self.provider.backup_base(self.vm, last_info)
        if p["mode"] == "full":
            since, reason = None, "mode: full was requested"
        elif p["mode"] == "incremental" and since is None:
            raise VmsafeError(f"Cannot take an incremental backup of VM '{self.vm.name}': {reason}. Use mode: auto "
                              f"(falls back to a full backup) or mode: full.")
        if self.speculation is not None and self.speculation[1] != since:
            self._drop_speculation()  # guessed wrong: that export has the wrong base; _run begins the right one
        self.since, self.reason = since, reason
        self.mode = "incremental" if since else "full"
        self.record: t.Any = None
        self.duration = 0.0
        changes.step(f"{self.mode} backup of VM '{self.vm.name}' into {p['repository']} ({reason})", self._run)

    def _speculate(self) -> None:
        """Begin the export (checkpoint, NBD server) in a thread now, while the repository key is still unlocked
        (Argon2id, 0.1-0.5 s), on the base the provider guesses the last backup has; plan() keeps it only when the
        repository's record gives the same base, and drops it (with its new checkpoint) otherwise."""
        p = self.params
        guess = getattr(self.provider, "backup_base_guess", None)
        if guess is None or self.check_mode:
            return
        try:
            info = guess(self.vm) if p["mode"] != "full" else None
            since, reason = self.provider.backup_base(self.vm, info) if p["mode"] != "full" else (None, "")
        except Exception:  # pylint: disable=broad-except  # only a guess: plan() asks again and reports what fails
            return
        if p["mode"] == "full":
            since = None
        starter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vmsafe-begin")
        try:
            begun = starter.submit(self.provider.backup_begin, self.vm, since, p["quiesce"], p["quiesce_fallback"])
        finally:
            starter.shutdown(wait=False)
        self.speculation = (info, since, reason, begun)

    def _drop_speculation(self) -> None:
        """End an export begun by _speculate that is not used (wrong base, or the task failed before _run)."""
        begun = self.speculation[3]
        self.speculation = None
        if begun.exception() is None:
            begun.result().close(False)

    def _run(self) -> None:
        p = self.params
        started = time.monotonic()
        timed_out = threading.Event()
        watchdog: threading.Timer | None = None

        def on_timeout() -> None:
            timed_out.set()
            if self.session is not None:
                self.session.abort()

        # The hypervisor starts its export (checkpoint, NBD server, ...) in a thread while the repository is
        # locked and its index loaded; the engine asks for the disks once it is ready for them.
        starter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vmsafe-begin")
        if self.speculation is not None:  # begun already, on this base
            begun = self.speculation[3]
            self.speculation = None
        else:
            begun = starter.submit(self.provider.backup_begin, self.vm, self.since, p["quiesce"], p["quiesce_fallback"])

        def disks() -> list[DiskSource]:
            nonlocal watchdog
            self.session = begun.result()
            watchdog = threading.Timer(max(0.0, p["timeout"] - (time.monotonic() - started)), on_timeout)
            watchdog.daemon = True
            watchdog.start()
            return [DiskSource(name=d.target, size=d.size, extents=d.extents()) for d in self.session.disks]

        def finalize() -> dict[str, str]:
            finish = getattr(self.session, "finalize", None)
            tags = {"checkpoint": self.session.checkpoint, "consistency": self.session.consistency}
            tags.update(finish() if finish is not None else {})  # Hyper-V names its reference point only now
            return tags

        success = False
        try:
            tags = {str(k): str(v) for k, v in p["tags"].items()}
            tags.update(vm_id=self.vm.id, mode=self.mode, hypervisor=self.provider.name)
            self.record = self.repo.backup(self.vm.name, disks, vm_definition=lambda: self.session.vm_definition,
                                           tags=tags, parent=self.last.id if self.since else None, finalize=finalize)
            success = True
        except Exception as exc:
            # Whatever the abort made fail (a read, the engine), the cause was the timeout.
            if timed_out.is_set():
                raise OperationTimeout(f"Timed out after {p['timeout']} s backing up VM '{self.vm.name}': the backup "
                                       f"job was aborted and nothing was committed; the VM keeps running. Raise the "
                                       f"timeout option.") from exc
            if isinstance(exc, backup_errors.BackupError):
                raise wrap(exc, p["repository"]) from exc
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
            starter.shutdown(wait=True)  # a failure before the disks were asked for: let the start finish, then end it
            if self.session is None and begun.exception() is None:
                self.session = begun.result()
            if self.session is not None:
                self.session.close(success)
            self.duration = round(time.monotonic() - started, 3)

    def cleanup(self) -> None:
        if self.speculation is not None:
            self._drop_speculation()
        if self.session is not None and not self.session.done:
            self.session.close(False)
        if self.repo is None and self.early is not None and self.early.done() and self.early.exception() is None:
            self.repo = self.early.result()  # opened early, then the task failed before it took it over
        if self.repo is not None:
            self.repo.close()

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        result: dict[str, t.Any] = {
            "vm": self.vm.to_dict(), "mode": self.mode, "reason": self.reason,
            "parent": self.last.id if self.since and self.last else None,
            "backup_id": None, "bytes_read": 0, "bytes_stored": 0, "reduction_ratio": None, "duration": 0.0,
            "disks": [],
        }
        if self.record is not None:
            stats = self.record.stats
            read, stored = int(stats.get("read_bytes", 0)), int(stats.get("new_bytes", 0))
            result.update(
                backup_id=self.record.id, checkpoint=self.session.checkpoint or None, consistency=self.session.consistency,
                bytes_read=read, bytes_stored=stored, reduction_ratio=round(read / stored, 2) if stored else None,
                duration=self.duration,
                disks=[{"name": d.name, "size": d.size, "digest": d.content_digest} for d in self.record.disks],
            )
        return result


def main() -> None:
    spec = with_peer_options(vm_argument_spec()).merge(repository_spec()).update_argspec(
        mode={"type": "str", "default": "auto", "choices": ["auto", "full", "incremental"]},
        quiesce={"type": "bool", "default": False},
        quiesce_fallback={"type": "str", "default": "fail", "choices": ["fail", "crash_consistent"]},
        tags={"type": "dict", "default": {}},
        init={"type": "bool", "default": False},
        encryption={"type": "str", "default": "aes-256-gcm", "choices": ["aes-256-gcm", "none"]},
        compression_level={"type": "int", "default": 2},
        timeout={"type": "int", "default": 21600},
    )
    run_module(spec, BackupTask)


if __name__ == "__main__":
    main()
