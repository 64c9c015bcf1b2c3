#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_prune
short_description: Keep a grandfather-father-son set of backups and free the rest
version_added: 0.1.0
description:
  - Applies a retention policy per VM (like borg and restic - last N, hourly, daily, weekly, monthly, yearly,
    within a period), deletes the backups it does not keep, then garbage-collects and repacks the repository.
  - Takes the repository's exclusive lock; a prune never runs during a backup or another prune.
  - Every backup records its complete chunk list (an incremental too), so pruning one backup never breaks another.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Lists what would be deleted and why each kept backup is kept; deletes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  vm_name:
    description:
      - Only prune this VM's backups. All VMs (each with the same policy) when unset.
    type: str
  keep_last:
    description: Keep the newest N backups.
    type: int
    default: 0
  keep_hourly:
    description: Keep the newest backup of each of the last N hours that have one.
    type: int
    default: 0
  keep_daily:
    description: Keep the newest backup of each of the last N days that have one.
    type: int
    default: 0
  keep_weekly:
    description: Keep the newest backup of each of the last N ISO weeks that have one.
    type: int
    default: 0
  keep_monthly:
    description: Keep the newest backup of each of the last N months that have one.
    type: int
    default: 0
  keep_yearly:
    description: Keep the newest backup of each of the last N years that have one.
    type: int
    default: 0
  keep_within:
    description: Keep every backup newer than this (for example V(7d), V(36h)).
    type: str
  break_lock:
    description:
      - Remove every lock on the repository first, also those of operations that still run, then prune.
      - Only for a lock left by a host that is gone (a stale lock of another host expires by itself 30 minutes
        after its last refresh; one of a dead process on this machine at once). An operation whose lock is
        removed fails at its next commit and records nothing, so no backup is damaged, but it is lost.
      - In check mode the locks are listed in RV(locks_broken) and left in place.
    type: bool
    default: false
    version_added: 0.1.0
  test_records_days:
    description:
      - Restore-test records (the results M(vmsafe.protect.backup_test_result) and the C(restore_test) role write) of
        backups that were pruned are removed once they are older than this many days; records of backups that still
        exist, and each VM's newest passing record, always stay. V(0) keeps them all.
    type: int
    default: 400
    version_added: 0.1.0
notes:
  - A policy that keeps nothing is refused.
seealso:
  - module: vmsafe.protect.backup_info
  - module: vmsafe.protect.vm_backup
"""

EXAMPLES = r"""
- name: Keep 7 daily, 4 weekly and 6 monthly backups per VM
  vmsafe.protect.backup_prune:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 6
"""

RETURN = r"""
pruned:
  description: Backups deleted (would be, in check mode).
  returned: success
  type: list
  elements: dict
  sample: [{"id": "20261101T020000Z-0a1b2c3d", "vm_name": "web01", "time": "2026-11-01T02:00:00Z"}]
kept:
  description: Backups kept, with the rule that kept each.
  returned: success
  type: list
  elements: dict
  sample: [{"id": "20261123T020000Z-3f9a1c2e", "vm_name": "web01", "time": "2026-11-23T02:00:00Z", "reason": "daily #1"}]
bytes_freed:
  description: Bytes freed on the storage by garbage collection (0 in check mode).
  returned: success
  type: int
  sample: 1073741824
packs_deleted:
  description: Pack files deleted.
  returned: success
  type: int
  sample: 3
packs_repacked:
  description: Half-empty pack files rewritten.
  returned: success
  type: int
  sample: 1
test_records_removed:
  description: Restore-test records (see M(vmsafe.protect.backup_test_result)) of pruned backups removed because they
    were older than O(test_records_days) (0 in check mode).
  returned: success
  type: int
  sample: 0
uploads_aborted:
  description: Incomplete uploads of dead writers removed by garbage collection (S3 multipart uploads older than a
    lock takes to become stale; always 0 on local and SFTP repositories).
  returned: success
  type: int
  sample: 0
replayed_removed:
  description: Backups whose manifest was back after an earlier prune (replayed from an old copy, or an interrupted
    prune); they never count towards the policy and are removed again (would be, in check mode).
  returned: success
  type: list
  elements: str
  sample: []
locks_broken:
  description: The locks removed by O(break_lock) (would be, in check mode), each with its operation and owner.
  returned: when O(break_lock=true)
  type: list
  elements: dict
  sample: [{"operation": "backup", "exclusive": false, "host": "kvm03", "pid": 41234}]
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 2.4
"""

import datetime
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.locks import list_locks
from ansible_collections.vmsafe.protect.plugins.module_utils._repo_task import run_repository_module
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import repository_spec, wrap
from ansible_collections.vmsafe.protect.plugins.module_utils._units import parse_duration

KEEPS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def _brief(record: t.Any) -> dict[str, t.Any]:
    return {"id": record.id, "vm_name": record.vm_name,
            "time": record.time.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def work(module: t.Any, repo: t.Any, now: t.Any) -> dict[str, t.Any]:
    p = module.params
    policy: dict[str, t.Any] = {k: p[k] for k in KEEPS}
    if p["keep_within"] is not None:
        policy["keep_within"] = parse_duration(p["keep_within"], "keep_within")
    broken = None
    try:
        if p["break_lock"]:
            found = list_locks(repo.backend) if module.check_mode else repo.break_lock()
            broken = [{"operation": lock.get("operation"), "exclusive": bool(lock.get("exclusive")),
                       "host": (lock.get("owner") or {}).get("host"), "pid": (lock.get("owner") or {}).get("pid")}
                      for lock in found]
        result = repo.prune(policy, dry_run=module.check_mode, now=now, vm_name=p["vm_name"],
                            test_records_days=p["test_records_days"])
    except backup_errors.BackupError as exc:
        raise wrap(exc, p["repository"]) from exc
    extra = {} if broken is None else {"locks_broken": broken}
    return {
        **extra,
        "changed": bool(result.pruned) or bool(result.packs_deleted) or bool(result.packs_repacked) or bool(broken)
        or bool(result.replayed_removed) or bool(result.uploads_aborted) or bool(result.test_records_removed),
        "pruned": [_brief(r) for r in result.pruned],
        "kept": [dict(_brief(k.record), reason=k.reason) for k in result.kept],
        "bytes_freed": result.bytes_freed, "packs_deleted": result.packs_deleted,
        "packs_repacked": result.packs_repacked, "replayed_removed": list(result.replayed_removed),
        "uploads_aborted": result.uploads_aborted, "test_records_removed": result.test_records_removed,
    }


def main() -> None:
    spec = repository_spec().update_argspec(vm_name={"type": "str"}, keep_within={"type": "str"},
                                            break_lock={"type": "bool", "default": False},
                                            test_records_days={"type": "int", "default": 400},
                                            **{k: {"type": "int", "default": 0} for k in KEEPS})
    run_repository_module(spec, work)


if __name__ == "__main__":
    main()
