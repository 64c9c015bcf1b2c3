# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""run_module(): the only code that touches AnsibleModule.

It builds the module, opens the provider, lets the task plan, applies the plan unless in check
mode, and turns VmsafeError into fail_json with whatever the task had done so far.
"""

from __future__ import annotations

import datetime
import time
import traceback
import typing as t

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import mask_url_passwords
from ansible_collections.vmsafe.protect.plugins.module_utils._changes import ChangeSet
from ansible_collections.vmsafe.protect.plugins.module_utils._connection import resolve_connection
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import VmNotFound, VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._models import VmRef, VmSelector
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.registry import PROVIDERS

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible.module_utils.basic import AnsibleModule

    from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec
    from ansible_collections.vmsafe.protect.plugins.module_utils._models import ConsolidationStatus, Snapshot
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider


class ProviderTask:
    """Base of every module's task. Subclasses implement plan() and result()."""

    def __init__(self, module: AnsibleModule, provider: HypervisorProvider | None) -> None:
        self.module = module
        self.params: dict[str, t.Any] = module.params
        # None only for tasks whose needs_provider() said no; they never touch it.
        self.provider = t.cast("HypervisorProvider", provider)
        self.check_mode: bool = module.check_mode
        self.now = datetime.datetime.now(datetime.timezone.utc)
        self.partial: dict[str, t.Any] = {}  # returned with fail_json when a step fails

    # What prestart() returned, handed to the task before plan().
    early: t.Any = None

    @classmethod
    def prestart(cls, params: dict[str, t.Any]) -> t.Any:
        """Start work that needs only the options (a key derivation, say) before the provider is loaded.

        Runs before the provider's code is imported and connected, so a thread started here overlaps with
        that; the result reaches the task as ``self.early``.
        """
        return None

    @classmethod
    def needs_provider(cls, params: dict[str, t.Any]) -> bool:
        """Whether the task talks to the hypervisor at all (a restore to image files does not)."""
        return True

    def selector(self) -> VmSelector | None:
        if self.params.get("vm_name") is None and self.params.get("vm_id") is None:
            return None
        return VmSelector(name=self.params.get("vm_name"), id=self.params.get("vm_id"))

    def vms(self) -> list[VmRef]:
        """The selected VM, or every VM on the connection when none was named."""
        selector = self.selector()
        return [self.provider.find_vm(selector)] if selector is not None else self.provider.list_vms()

    def vms_with_snapshots(self) -> t.Iterator[tuple[VmRef, list[Snapshot], ConsolidationStatus]]:
        """Each VM of vms() with its snapshots and consolidation status.

        Over a whole host, a VM deleted while the module runs is skipped with a warning (it is no failure of this
        run); a VM the user named that is gone raises VmNotFound.
        """
        for vm in self.vms():
            try:
                snaps = self.provider.list_snapshots(vm)
                status = self.provider.consolidation_status(vm, snaps)
            except VmNotFound as exc:
                if self.selector() is not None:
                    raise
                self.module.warn(f"Skipped VM '{vm.name}': it disappeared while the module ran ({exc}).")
                continue
            yield vm, snaps, status

    def plan(self, changes: ChangeSet) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release what the task opened besides the provider (a repository, a lock); never raises."""

    def result(self, changes: ChangeSet) -> dict[str, t.Any]:
        raise NotImplementedError


def create_provider(module: AnsibleModule) -> HypervisorProvider:
    """Return the provider the ``hypervisor`` option names, or fail when its SDK is missing."""
    load, package = PROVIDERS[module.params["hypervisor"]]
    cls, import_error = load()
    if import_error is not None:
        module.fail_json(msg=missing_required_lib(package), exception=import_error)
    provider = cls(module.params, module.warn)
    provider.run_command = module.run_command
    return provider


def resolve_module_connection(module: AnsibleModule) -> None:
    """Fill unset connection options from the environment for the chosen hypervisor (never VMWARE_* for others)."""
    secrets: list[str] = []
    try:
        secrets = resolve_connection(module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    # AnsibleModule masks only the no_log values it saw; a password read here must be masked too.
    module.no_log_values.update(secrets)


def run_module(spec: ArgumentSpec, task_class: type[ProviderTask], **module_kwargs: t.Any) -> None:
    module = spec.create_ansible_module(supports_check_mode=True, **module_kwargs)
    mask_url_passwords(module)
    started = time.monotonic()
    resolve_module_connection(module)
    early = task_class.prestart(module.params)
    # A task that never talks to the hypervisor (a restore to image files) neither loads nor connects a provider,
    # so it runs where no hypervisor library is installed.
    provider = create_provider(module) if task_class.needs_provider(module.params) else None
    task: ProviderTask | None = None
    changes = ChangeSet()
    try:
        if provider is not None:
            provider.connect()
        task = task_class(module, provider)
        task.early = early
        task.plan(changes)
        if not module.check_mode:
            changes.apply()
        result = task.result(changes)
        result["changed"] = changes.changed
        if module._diff:  # pylint: disable=protected-access  # the documented way to see --diff
            diff = changes.diff()
            if diff is not None:
                result["diff"] = diff
    except VmsafeError as exc:
        partial = dict(task.partial) if task is not None else {}
        partial.setdefault("applied", changes.applied)
        module.fail_json(msg=str(exc), exception=traceback.format_exc(), changed=bool(changes.applied), **partial)
    except Exception as exc:  # pylint: disable=broad-except  # the one place that turns any crash into fail_json
        module.fail_json(msg=f"Unexpected error ({type(exc).__name__}): {exc}", exception=traceback.format_exc(),
                         changed=bool(changes.applied), applied=changes.applied)
    finally:
        if task is not None:
            task.cleanup()
        if provider is not None:
            provider.close()
    result["elapsed"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)
