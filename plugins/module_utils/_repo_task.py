# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Modules that work on a backup repository only (no hypervisor): info, verify, prune."""

from __future__ import annotations

import datetime
import time
import traceback
import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import mask_url_passwords
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._repository import open_repository

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible.module_utils.basic import AnsibleModule

    from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec


def record_to_dict(record: t.Any, now: datetime.datetime) -> dict[str, t.Any]:
    """A backup as modules return it: no VM definition (large), sizes and chain instead."""
    return {
        "id": record.id,
        "vm_name": record.vm_name,
        "time": record.time.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "age_seconds": max(0, int((now - record.time).total_seconds())),
        "parent": record.parent,
        "mode": record.tags.get("mode", "full" if record.parent is None else "incremental"),
        "consistency": record.tags.get("consistency"),
        "size": record.size,
        "bytes_stored": int(record.stats.get("new_bytes", 0)),
        "tags": {k: v for k, v in record.tags.items() if k not in ("mode", "consistency")},
        "disks": [{"name": d.name, "size": d.size, "digest": d.content_digest} for d in record.disks],
    }


def run_repository_module(spec: ArgumentSpec,
                          work: t.Callable[[AnsibleModule, t.Any, datetime.datetime], dict[str, t.Any]]) -> None:
    """Open the repository, call ``work(module, repo, now)``, and exit with its result (``changed`` included)."""
    module = spec.create_ansible_module(supports_check_mode=True)
    mask_url_passwords(module)
    started = time.monotonic()
    repo = None
    try:
        repo = open_repository(module.params)
        result = work(module, repo, datetime.datetime.now(datetime.timezone.utc))
    except VmsafeError as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    except Exception as exc:  # pylint: disable=broad-except  # the one place that turns any crash into fail_json
        module.fail_json(msg=f"Unexpected error ({type(exc).__name__}): {exc}", exception=traceback.format_exc())
    finally:
        if repo is not None:
            repo.close()
    result["elapsed"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)
