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
seealso:
  - module: vmsafe.protect.vm_backup
  - module: vmsafe.protect.backup_prune
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
vms:
  description: Per VM, the number of backups, the newest and oldest backup ids and the newest one's age.
  returned: success
  type: dict
  sample: {"web01": {"count": 9, "newest": "20261123T020000Z-3f9a1c2e", "oldest": "20261101T020000Z-0a1b2c3d", "newest_age_seconds": 3600}}
elapsed:
  description: Seconds the module ran.
  returned: success
  type: float
  sample: 0.05
"""

import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._repo_task import record_to_dict, run_repository_module
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import repository_spec


def work(module: t.Any, repo: t.Any, now: t.Any) -> dict[str, t.Any]:
    backups = [record_to_dict(r, now) for r in repo.list(module.params["vm_name"])]
    vms: dict[str, dict[str, t.Any]] = {}
    for item in backups:
        entry = vms.setdefault(item["vm_name"], {"count": 0, "oldest": item["id"]})
        entry.update(count=entry["count"] + 1, newest=item["id"], newest_age_seconds=item["age_seconds"])
    return {"changed": False, "backups": backups, "vms": vms}


def main() -> None:
    run_repository_module(repository_spec().update_argspec(vm_name={"type": "str"}), work)


if __name__ == "__main__":
    main()
