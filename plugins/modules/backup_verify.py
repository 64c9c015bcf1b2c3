#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_verify
short_description: Check that backups in a vmsafe repository are whole and restorable
version_added: 0.1.0
description:
  - Checks the repository structure (manifests, index, packs), and with O(read_data=true) decrypts and hash-checks
    every chunk a backup needs.
  - Fails, naming each damaged backup, disk and chunk, when anything is wrong.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_BACKUP
  - vmsafe.protect.attributes.INFO_MODULE
options:
  backup_id:
    description:
      - Only this backup. Every backup when unset.
    type: str
  read_data:
    description:
      - Read, decrypt and hash-check every chunk, not only the structure.
    type: bool
    default: false
seealso:
  - module: vmsafe.protect.vm_backup
  - module: vmsafe.protect.backup_info
"""

EXAMPLES = r"""
- name: Weekly full read check
  vmsafe.protect.backup_verify:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    read_data: true
"""

RETURN = r"""
ok:
  description: Whether everything checked is intact.
  returned: always
  type: bool
  sample: true
backups_checked:
  description: Number of backups checked.
  returned: always
  type: int
  sample: 12
chunks_checked:
  description: Number of chunks checked.
  returned: always
  type: int
  sample: 40960
bytes_checked:
  description: Bytes read and checked.
  returned: always
  type: int
  sample: 1073741824
errors:
  description: Each problem found, naming the backup, disk and chunk.
  returned: always
  type: list
  elements: str
  sample: []
damaged:
  description: Damaged chunks with C(backup_id), C(disk_name), C(chunk_index), C(offset), C(chunk_id) and C(reason).
  returned: always
  type: list
  elements: dict
  sample: []
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 3.9
"""

import dataclasses
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._repo_task import run_repository_module
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import repository_spec, wrap
from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors


def work(module: t.Any, repo: t.Any, now: t.Any) -> dict[str, t.Any]:
    p = module.params
    try:
        report = repo.verify(p["backup_id"], read_data=p["read_data"])
    except backup_errors.BackupError as exc:
        raise wrap(exc, p["repository"]) from exc
    result = {
        "changed": False, "ok": report.ok, "backups_checked": report.backups_checked,
        "chunks_checked": report.chunks_checked, "bytes_checked": report.bytes_checked,
        "errors": list(report.errors), "damaged": [dataclasses.asdict(d) for d in report.damaged],
    }
    if not report.ok:
        module.fail_json(msg=f"Repository {p['repository']} failed verification: " + "; ".join(report.errors[:5])
                         + (f" (and {len(report.errors) - 5} more)" if len(report.errors) > 5 else "")
                         + ". Do not prune the remaining good backups; take a new full backup.", **result)
    if report.backups_checked == 0 and p["backup_id"] is None:
        module.warn("The repository holds no backup: nothing was verified.")
    return result


def main() -> None:
    spec = repository_spec().update_argspec(backup_id={"type": "str"}, read_data={"type": "bool", "default": False})
    run_repository_module(spec, work)


if __name__ == "__main__":
    main()
