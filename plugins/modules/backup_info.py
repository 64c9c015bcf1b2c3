#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_info
short_description: List the backups in a vmsafe repository
version_added: 0.1.0
description:
  - Lists backups per VM with their age, size, chain (parent) and consistency, oldest first.
  - Shows each backup's restore-test status (recorded by M(vmsafe.protect.backup_test_result), for example from the
    P(vmsafe.protect.restore_test#role) role) and, per VM, when its backups were last proven restorable.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_BACKUP
  - vmsafe.protect.attributes.INFO_MODULE
options:
  vm_name:
    description:
      - Only the backups of this VM.
    type: str
  history_days:
    description:
      - Also return RV(history) for the last this many days (UTC), with per VM a state per day, and the repository's
        stored bytes and deduplication per day. V(0) returns no history.
    type: int
    default: 0
    version_added: 0.2.0
seealso:
  - module: vmsafe.protect.vm_backup
  - module: vmsafe.protect.backup_prune
  - module: vmsafe.protect.backup_test_result
"""

EXAMPLES = r"""
- name: List the backups of web01
  vmsafe.protect.backup_info:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    vm_name: web01
  register: backups

- name: Fail when the newest backup is older than a day
  ansible.builtin.assert:
    that: backups.vms.web01.newest_age_seconds < 86400

- name: Fail when web01 was not proven restorable in the last week
  ansible.builtin.assert:
    that: backups.vms.web01.last_proven_restorable_age_seconds | default(none) is not none
      and backups.vms.web01.last_proven_restorable_age_seconds < 7 * 86400
"""

RETURN = r"""
backups:
  description: The backups, oldest first.
  returned: success
  type: list
  elements: dict
  sample:
    - id: 20261123T020000Z-3f9a1c2e
      vm_name: web01
      time: "2026-11-23T02:00:00Z"
      age_seconds: 3600
      parent: 20261122T020000Z-91be0d44
      mode: incremental
      consistency: quiesced
      size: 21474836480
      bytes_stored: 10735472
      tags: {"schedule": "nightly"}
      disks: [{"name": "vda", "size": 21474836480, "digest": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]
      tested_status: passed
      last_tested: "2026-11-23T05:10:42Z"
      tests: 1
vms:
  description:
    - Per VM, the number of backups, the newest and oldest backup ids and the newest one's age.
    - C(last_proven_restorable) is the time of the newest passing restore test of any of the VM's backups (pruned ones
      included, as the test records outlive them), C(last_proven_backup) that backup's id and
      C(last_proven_restorable_age_seconds) its age; C(last_test) is the newest test, passed or failed (with its
      C(message), why it failed). They are
      C(null) when no test was recorded.
  returned: success
  type: dict
  sample:
    web01:
      count: 9
      newest: 20261123T020000Z-3f9a1c2e
      oldest: 20261101T020000Z-0a1b2c3d
      newest_age_seconds: 3600
      last_proven_restorable: "2026-11-23T05:10:42Z"
      last_proven_restorable_age_seconds: 1200
      last_proven_backup: 20261123T020000Z-3f9a1c2e
      last_test: {"time": "2026-11-23T05:10:42Z", "result": "passed", "backup_id": "20261123T020000Z-3f9a1c2e", "message": ""}
history:
  description:
    - With O(history_days) above 0. C(nights) holds per VM one entry per UTC day, oldest first, with the day's
      C(state) (V(proven) when a backup of that day passed a restore test, V(failed) when a restore test of one
      failed, else V(backed_up) or V(missing)), the number of C(backups) (pruned ones included, from their tombstones) and of
      C(tests_passed) and C(tests_failed), and C(details) (per backup of that day, its id and its last restore test).
    - C(storage) holds per day the bytes the backups still kept had added to the repository by then
      (C(stored_bytes)), their non-zero data (C(data_bytes)) and C(dedup_ratio) (data per stored byte); bytes of
      pruned backups are not in it. C(packs_bytes) is what the pack files take now.
  returned: when O(history_days) > 0
  type: dict
  sample:
    nights:
      web01:
        - date: "2026-11-23"
          state: proven
          backups: 1
          tests_passed: 1
          tests_failed: 0
          details: ["backup 20261123T020000Z-3f9a1c2e: restore test passed"]
    storage: [{"date": "2026-11-23", "stored_bytes": 1043211, "data_bytes": 8388608, "dedup_ratio": 8.04}]
    packs_bytes: 1043211
test_record_problems:
  description: Restore-test records that do not authenticate or parse; they are ignored (and warned about).
  returned: success
  type: list
  elements: str
  sample: []
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 0.05
"""

import datetime
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import attest
from ansible_collections.vmsafe.protect.plugins.module_utils._repo_task import record_to_dict, run_repository_module
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import repository_spec


def work(module: t.Any, repo: t.Any, now: t.Any) -> dict[str, t.Any]:
    records = repo.list(module.params["vm_name"])
    tests, problems = attest.list_tests(repo, module.params["vm_name"])
    for problem in problems:
        module.warn(problem)
    backups = [record_to_dict(r, now) for r in records]
    by_backup: dict[str, list[t.Any]] = {}
    for test in tests:
        by_backup.setdefault(test.backup_id, []).append(test)
    for item in backups:
        done = by_backup.get(item["id"], [])
        item.update(tests=len(done), tested_status=done[-1].result if done else "untested",
                    last_tested=stamp(done[-1].time) if done else None)
    vms: dict[str, dict[str, t.Any]] = {}
    for item in backups:
        entry = vms.setdefault(item["vm_name"], {"count": 0, "oldest": item["id"]})
        entry.update(count=entry["count"] + 1, newest=item["id"], newest_age_seconds=item["age_seconds"])
    for test in tests:  # oldest first: the last one written wins
        entry = vms.setdefault(test.vm_name, {"count": 0, "oldest": None, "newest": None, "newest_age_seconds": None})
        entry["last_test"] = {"time": stamp(test.time), "result": test.result, "backup_id": test.backup_id,
                              "message": test.message}
        if test.passed:
            entry.update(last_proven_restorable=stamp(test.time), last_proven_backup=test.backup_id,
                         last_proven_restorable_age_seconds=max(0, int((now - test.time).total_seconds())))
    for entry in vms.values():
        for key in ("last_test", "last_proven_restorable", "last_proven_backup", "last_proven_restorable_age_seconds"):
            entry.setdefault(key, None)
    result: dict[str, t.Any] = {"changed": False, "backups": backups, "vms": vms, "test_record_problems": problems}
    days = module.params["history_days"]
    if days > 0:
        past = [(b, vm, w) for b, vm, w in attest.past_backups(repo) if module.params["vm_name"] in (None, vm)]
        kept = [(r.id, r.vm_name, r.time) for r in records]
        result["history"] = {
            "nights": attest.night_strip(kept + past, tests, days, now.date(), {r.id for r in records}),
            "storage": attest.storage_series(repo.list() if module.params["vm_name"] else records, days, now.date()),
            "packs_bytes": attest.packs_bytes(repo),
        }
    return result


def stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> None:
    spec = repository_spec().update_argspec(vm_name={"type": "str"}, history_days={"type": "int", "default": 0})
    run_repository_module(spec, work)


if __name__ == "__main__":
    main()
