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
attributes:
  check_mode:
    support: full
    details:
      - Verification changes nothing; with O(repair), check mode reports what would be dropped.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A second O(repair) finds nothing more to drop.
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
  repair:
    description:
      - Repair the repository instead of failing. Rebuild the index from the packs, read every chunk (implies
        O(read_data)), and drop the index entries of damaged chunks, so that the next backup of a VM whose disk
        still holds that data stores it again. That also heals every older backup that uses the same chunk.
      - Takes the repository alone (waits up to O(lock_timeout) for running backups). The task reports
        C(changed) when entries were dropped; backups listed in RV(repaired.damaged_backups) stay unrestorable
        until then.
      - In check mode, reports what would be dropped and changes nothing.
    type: bool
    default: false
    version_added: 0.1.0
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

- name: After a failed check, drop the damaged chunks so that tonight's backups store them again
  vmsafe.protect.backup_verify:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    repair: true
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
repaired:
  description: What O(repair) did (would do, in check mode).
  returned: when O(repair=true)
  type: dict
  contains:
    entries_dropped:
      description: Index entries of damaged chunks dropped.
      type: int
    damaged_backups:
      description: Backups that use a damaged chunk; each is restorable again once a new backup stored that data.
      type: list
      elements: str
  sample: {"entries_dropped": 1, "damaged_backups": ["20261203T020000Z-0a1b2c3d"]}
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
        if p["repair"] and not module.check_mode:
            outcome = repo.repair()
            report, dropped = outcome.report, outcome.entries_dropped
        else:
            report = repo.verify(p["backup_id"], read_data=p["read_data"] or p["repair"])
            dropped = len({d.chunk_id for d in report.damaged})
    except backup_errors.BackupError as exc:
        raise wrap(exc, p["repository"]) from exc
    result: dict[str, t.Any] = {
        "changed": False, "ok": report.ok, "backups_checked": report.backups_checked,
        "chunks_checked": report.chunks_checked, "bytes_checked": report.bytes_checked,
        "errors": list(report.errors), "damaged": [dataclasses.asdict(d) for d in report.damaged],
    }
    if p["repair"]:
        backups = sorted({d.backup_id for d in report.damaged if d.backup_id})
        result["repaired"] = {"entries_dropped": dropped, "damaged_backups": backups}
        result["changed"] = dropped > 0
        if backups:
            module.warn(f"{len(backups)} backup(s) use damaged data ({', '.join(backups[:5])}); they restore again "
                        "once the next backup of the same VM has stored that data.")
        if report.errors:
            module.fail_json(msg=f"Repository {p['repository']} has damage that repair cannot mend: "
                             + "; ".join(report.errors[:5]) + ". Restore the named files from a copy.", **result)
        return result
    if not report.ok:
        problems = list(report.errors) + [f"chunk {d.chunk_id[:16]} of backup {d.backup_id} disk {d.disk_name}: "
                                          f"{d.reason}" for d in report.damaged]
        module.fail_json(msg=f"Repository {p['repository']} failed verification: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                         + ". Do not prune the remaining good backups; run backup_verify with repair: true so that "
                         "the next backups store the damaged data again.", **result)
    if report.backups_checked == 0 and p["backup_id"] is None:
        module.warn("The repository holds no backup: nothing was verified.")
    return result


def main() -> None:
    spec = repository_spec().update_argspec(backup_id={"type": "str"}, read_data={"type": "bool", "default": False},
                                            repair={"type": "bool", "default": False})
    spec.update(mutually_exclusive=[["backup_id", "repair"]])
    run_repository_module(spec, work)


if __name__ == "__main__":
    main()
