#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_files
short_description: List or extract files and folders from a disk in a backup, without restoring the disk
version_added: 0.2.0
description:
  - Opens one disk of a backup taken by M(vmsafe.protect.vm_backup) read-only with libguestfs and lists, or copies
    out, the files and folders that O(path) matches. Nothing is written to the repository or to any VM.
  - Reads what libguestfs reads (ext2/3/4, XFS, Btrfs, NTFS, FAT, LVM logical volumes, MBR and GPT partitions).
    With O(filesystem) unset, the filesystems of the operating system found on the disk are mounted at their mount
    points (C(/), C(/boot), ...); a disk without an operating system must hold exactly one filesystem.
  - Without O(dest), lists what O(path) matches (a folder with its direct children) and writes nothing.
  - With O(dest), copies each match to O(dest) under its path in the guest (C(/etc/hosts) to C(<dest>/etc/hosts)),
    folders recursively, keeping numeric owner, group, mode and modification time (run as root to keep owners).
  - The disk is not restored anywhere. The module serves it read-only over NBD on a private Unix socket, and
    libguestfs reads only the blocks it needs; each chunk read is authenticated and checked against its id.
author: vmsafe.protect contributors (@vmsafe-protect)
requirements:
  - libguestfs with its Python binding for the system Python (Debian/Ubuntu C(libguestfs-tools python3-guestfs),
    Fedora/RHEL C(guestfs-tools python3-libguestfs)), on the host that runs the module.
extends_documentation_fragment:
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Lists what would be copied (folders with their direct children only) and checks O(dest); writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - With O(dest), a second run fails on the files the first wrote unless O(force=true), which copies again.
options:
  backup_id:
    description:
      - The backup to read. When unset, the newest backup of O(vm_name).
    type: str
  vm_name:
    description:
      - The VM whose newest backup to read (with O(backup_id) unset).
    type: str
  disk:
    description:
      - The disk to read, by target name (for example V(vda)). The backup's first disk when unset.
    type: str
  filesystem:
    description:
      - The filesystem to mount at C(/), as libguestfs names it (V(/dev/sda1), V(/dev/vg0/root); the disk itself is
        V(/dev/sda)). When unset, the operating system's filesystems, or the only filesystem on the disk.
    type: str
  path:
    description:
      - Absolute paths inside the guest; shell globs (V(*), V(?), V([...])) are expanded. A path that matches nothing
        fails the module, naming it.
    type: list
    elements: str
    required: true
  dest:
    description:
      - Existing folder to copy the matches into. When unset, the module only lists them.
    type: path
  force:
    description:
      - Overwrite files and folders already in O(dest). Otherwise existing ones fail the module before anything is
        copied.
    type: bool
    default: false
  guestfs_python:
    description:
      - The Python interpreter that can import libguestfs' binding C(guestfs) (the system one; a venv cannot).
    type: path
    default: /usr/bin/python3
  timeout:
    description:
      - Seconds reading the files with libguestfs may take.
    type: int
    default: 3600
notes:
  - libguestfs starts a small appliance VM to read the disk (KVM when C(/dev/kvm) is usable, else software emulation,
    which takes longer); the first run on a host also builds the appliance (supermin) from the host's packages.
seealso:
  - module: vmsafe.protect.vm_restore
  - module: vmsafe.protect.backup_info
"""

EXAMPLES = r"""
- name: See what was in /etc/nginx of web01 last night
  vmsafe.protect.backup_files:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    vm_name: web01
    path: [/etc/nginx]
  register: listing

- name: Get back a deleted site config and a user's home folder from a given backup
  vmsafe.protect.backup_files:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    backup_id: 20261123T020000Z-3f9a1c2e
    path:
      - /etc/nginx/sites-available/*.conf
      - /home/alice
    dest: /srv/restore/web01

- name: Read a data volume of an LVM disk
  vmsafe.protect.backup_files:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    vm_name: db01
    disk: vdb
    filesystem: /dev/vgdata/pgdata
    path: [/backups/nightly.dump]
    dest: /srv/restore/db01
"""

RETURN = r"""
backup_id:
  description: The backup read.
  returned: success
  type: str
  sample: 20261123T020000Z-3f9a1c2e
vm_name:
  description: The VM the backup is of.
  returned: success
  type: str
  sample: web01
disk:
  description: The disk read.
  returned: success
  type: str
  sample: vda
filesystems:
  description: Every filesystem libguestfs found on the disk, device to type.
  returned: success
  type: dict
  sample: {"/dev/sda1": "ext4", "/dev/sda2": "swap"}
mounted:
  description: The filesystems read, mount point to device.
  returned: success
  type: dict
  sample: {"/": "/dev/sda1"}
files:
  description:
    - Listing (no O(dest), or check mode) - each match, and after a folder its direct children.
    - Extraction - each match and everything copied under it, with where it was written and the sha256 of files.
    - RV(files[].mode) is octal text; RV(files[].uid) and RV(files[].gid) are the guest's numeric ids.
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: Path in the guest.
      type: str
    matched:
      description: Whether O(path) matched this entry itself (else it is inside a matched folder).
      type: bool
    type:
      description: V(file), V(directory), V(link) or V(other).
      type: str
    size:
      description: Size in bytes.
      type: int
    mode:
      description: Permission bits, octal.
      type: str
    uid:
      description: Owner's numeric id.
      type: int
    gid:
      description: Group's numeric id.
      type: int
    mtime:
      description: Modification time, seconds since the epoch.
      type: int
    link_target:
      description: Where a symbolic link points.
      type: str
      returned: for links
    dest:
      description: Where it was written.
      type: str
      returned: when extracted
    sha256:
      description: SHA-256 of the written file.
      type: str
      returned: for extracted files
  sample:
    - {"path": "/etc/hosts", "matched": true, "dest": "/srv/restore/web01/etc/hosts", "type": "file", "size": 186,
       "mode": "0644", "uid": 0, "gid": 0, "mtime": 1763863200,
       "sha256": "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"}
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 48.2
"""

import glob
import os
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument
from ansible_collections.vmsafe.protect.plugins.module_utils._file_restore import read_files
from ansible_collections.vmsafe.protect.plugins.module_utils._repo_task import run_repository_module
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import repository_spec, wrap


def refuse_existing(dest: str, guest_paths: list[str]) -> None:
    """Raise InvalidArgument when a guest path's place under dest is taken."""
    real = os.path.realpath(dest)
    existing = [path for path in (os.path.join(real, g.lstrip("/")) for g in guest_paths) if os.path.lexists(path)]
    if existing:
        raise InvalidArgument(f"{', '.join(existing)} already exist(s) in dest; set force: true to overwrite, or "
                              f"choose another dest.")


def work(module: t.Any, repo: t.Any, now: t.Any) -> dict[str, t.Any]:  # pylint: disable=unused-argument
    p = module.params
    dest = p["dest"]
    if dest is not None and not os.path.isdir(dest):
        raise InvalidArgument(f"dest must be an existing folder, got {dest!r}.")
    if dest is not None and not p["force"]:
        # paths without glob characters: refused before the disk is read
        refuse_existing(dest, [path for path in p["path"] if not glob.has_magic(path)])
    try:
        if p["backup_id"]:
            record = repo.get(p["backup_id"])
        else:
            records = repo.list(p["vm_name"])
            if not records:
                raise InvalidArgument(f"Repository {p['repository']} has no backup of VM '{p['vm_name']}'; list them "
                                      f"with vmsafe.protect.backup_info.")
            record = records[-1]
    except backup_errors.BackupError as exc:
        raise wrap(exc, p["repository"]) from exc
    if dest is None or module.check_mode:
        result = read_files(repo, record, p, None, module.run_command)
        if dest is not None and not p["force"]:
            refuse_existing(dest, [f["path"] for f in result["files"] if f["matched"]])
        result["changed"] = dest is not None
        return result
    result = read_files(repo, record, p, dest, module.run_command)
    result["changed"] = True
    return result


def main() -> None:
    spec = repository_spec().update_argspec(
        backup_id={"type": "str"},
        vm_name={"type": "str"},
        disk={"type": "str"},
        filesystem={"type": "str"},
        path={"type": "list", "elements": "str", "required": True},
        dest={"type": "path"},
        force={"type": "bool", "default": False},
        guestfs_python={"type": "path", "default": "/usr/bin/python3"},
        timeout={"type": "int", "default": 3600},
    ).update(required_one_of=[["backup_id", "vm_name"]])
    run_repository_module(spec, work)


if __name__ == "__main__":
    main()
