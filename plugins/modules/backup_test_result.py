#!/usr/bin/python
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_test_result
short_description: Record the result of a restore test of a backup in the repository
version_added: 0.2.0
description:
  - Stores that a backup was restored, booted and probed, and whether it passed, as a record in the backup
    repository next to the backup. M(vmsafe.protect.backup_info) then shows the backup's C(tested_status) and
    C(last_tested), and per VM when its backups were last proven restorable; the audit report draws it.
  - The record is encrypted and authenticated with the repository key like a manifest, and bound to the backup it
    names. It is created once and never replaced; every call adds a record.
  - The P(vmsafe.protect.restore_test#role) role calls this module after each test.
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - vmsafe.protect.repository
  - vmsafe.protect.attributes
  - vmsafe.protect.attributes.ACTIONGROUP_BACKUP
attributes:
  check_mode:
    support: full
    details:
      - Checks that the backup exists and returns the record it would write; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Each run records one more test (a test run is an event; running it twice means it was tested twice).
options:
  backup_id:
    description:
      - The backup that was tested. It must still be in the repository (a pruned backup cannot be recorded).
    type: str
    required: true
  result:
    description:
      - Whether the restored VM passed its probes.
    type: str
    required: true
    choices: [passed, failed]
  probes:
    description:
      - What was probed and how it went, one mapping per probe (for example the C(probes) returned by
        M(vmsafe.protect.restore_test_vm)). Values other than strings, numbers and booleans are stored as text.
    type: list
    elements: dict
    default: []
  duration:
    description:
      - Seconds the test took (restore, boot and probes).
    type: float
    default: 0
  reason:
    description:
      - A short text for people, for example why the test failed. Stored as the record's C(message).
    type: str
    default: ""
  restored_as:
    description:
      - The name the backup was restored under for the test.
    type: str
    default: ""
notes:
  - The record takes a shared repository lock, so it runs beside backups and waits for a prune (O(lock_timeout)).
  - A whole record is limited to 64 KiB; keep command output to its last lines.
seealso:
  - module: vmsafe.protect.backup_info
  - module: vmsafe.protect.restore_test_vm
  - module: vmsafe.protect.vm_restore
"""

EXAMPLES = r"""
- name: Record that the newest backup of web01 booted and answered
  vmsafe.protect.backup_test_result:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    backup_id: "{{ newest.id }}"
    result: "{{ 'passed' if probe.passed else 'failed' }}"
    probes: "{{ probe.probes }}"
    duration: "{{ probe.elapsed }}"
    restored_as: web01-restoretest

- name: Record a failed test with the reason
  vmsafe.protect.backup_test_result:
    repository: /backup/vmsafe
    passphrase: "{{ vmsafe_passphrase }}"
    backup_id: "{{ newest.id }}"
    result: failed
    reason: "{{ probe.message }}"
"""

RETURN = r"""
test:
  description: The record written (would be, in check mode).
  returned: success
  type: dict
  sample:
    id: 20261123T051042Z-5b0e1c9a2f3d4e6a
    backup_id: 20261123T020000Z-3f9a1c2e
    vm_name: web01
    time: "2026-11-23T05:10:42Z"
    result: passed
    duration: 41.3
    probes: [{"type": "ssh", "ok": true, "seconds": 14.2, "detail": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"}]
    message: ""
    restored_as: web01-restoretest
object:
  description: The repository object that holds the record.
  returned: success
  type: str
  sample: tests/20261123T020000Z-3f9a1c2e/20261123T051042Z-5b0e1c9a2f3d4e6a
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 0.2
"""

import datetime
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._backup import attest
from ansible_collections.vmsafe.protect.plugins.module_utils._backup.errors import BackupError
from ansible_collections.vmsafe.protect.plugins.module_utils._repo_task import run_repository_module
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import repository_spec, wrap


def work(module: t.Any, repo: t.Any, now: datetime.datetime) -> dict[str, t.Any]:
    params = module.params
    args = (params["result"], params["probes"], params["duration"], params["reason"], params["restored_as"])
    try:
        if module.check_mode:
            test = attest.new_test(repo.get(params["backup_id"]), *args, time=now)
        else:
            test = attest.record_test(repo, params["backup_id"], *args, time=now)
    except BackupError as exc:
        raise wrap(exc, params["repository"]) from exc
    doc = test.to_json()
    doc.pop("version")
    doc["time"] = test.time.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"changed": True, "test": doc, "object": test.object_name}


def main() -> None:
    spec = repository_spec().update_argspec(
        backup_id={"type": "str", "required": True},
        result={"type": "str", "required": True, "choices": ["passed", "failed"]},
        probes={"type": "list", "elements": "dict", "default": []},
        duration={"type": "float", "default": 0},
        reason={"type": "str", "default": ""},
        restored_as={"type": "str", "default": ""},
    )
    run_repository_module(spec, work)


if __name__ == "__main__":
    main()
