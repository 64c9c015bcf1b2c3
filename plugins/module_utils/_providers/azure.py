# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Azure VMs with managed disks, through the Azure SDK for Python (azure-identity, azure-mgmt-compute).

A VM "snapshot" is a *set*: one incremental managed-disk snapshot per disk (OS and data disks), started together and
tagged with the set's name, id and time, so the set is listed, reverted and removed as one. Nothing is kept in the
VM itself: a revert creates new disks from the set, deallocates the VM, swaps the OS disk and the data disks (by LUN)
in one VM update, starts the VM again if it was running, and keeps the replaced disks (tagged, reported by
consolidation_status, removed by snapshot_consolidate). Every long-running operation is polled with a deadline;
throttled requests (429) are retried after the Retry-After the service sends.
"""

from __future__ import annotations

import configparser
import datetime
import difflib
import os
import time
import traceback
import typing as t
import urllib.parse
import uuid

from ansible_collections.vmsafe.protect.plugins.module_utils import _snapshot_tree as tree
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import (
    ConnectionFailed,
    InvalidArgument,
    OperationTimeout,
    ProviderError,
    QuiesceFailed,
    UnsupportedOperation,
    VmNotFound,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._models import (
    ConsolidationStatus,
    CreateResult,
    Disk,
    Leftover,
    Snapshot,
    SnapshotSpec,
    VmRef,
    VmSelector,
)
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider, Warn

# The SDK is imported by load_sdk() when this provider is picked (every module ships every provider).
identity = compute = exceptions = None

TAG_SET = "vmsafe-set"  # the set's name (the snapshot_name the user gave)
TAG_SET_ID = "vmsafe-set-id"
TAG_VM = "vmsafe-vm"  # the VM's vmId (a GUID that survives renames of nothing, but not re-creation)
TAG_DISK = "vmsafe-disk"  # os | lun<N>
TAG_DISKS = "vmsafe-disks"  # every slot of the set, comma-separated: a set missing one is partial
TAG_TIME = "vmsafe-created"
TAG_DESC = "vmsafe-description"
TAG_STATE = "vmsafe-vm-state"
TAG_PURPOSE = "vmsafe-purpose"  # snapshot | backup
TAG_COPY = "vmsafe-copy-of"  # on CopyStart copies: the source snapshot's id
TAG_CURRENT = "vmsafe-current-set"  # on the VM after a revert
TAG_REPLACED = "vmsafe-replaced-from"  # on a disk a revert took out of the VM: the VM's vmId
TAG_REPLACED_BY = "vmsafe-replaced-by-set"
TAG_REPLACED_AT = "vmsafe-replaced-at"

CLOUDS = {
    "AzureCloud": ("https://management.azure.com", "https://login.microsoftonline.com"),
    "AzureChinaCloud": ("https://management.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
    "AzureUSGovernment": ("https://management.usgovcloudapi.net", "https://login.microsoftonline.us"),
}
_POWER = {"running": "running", "starting": "running", "stopping": "running", "deallocating": "running",
          "stopped": "shutoff", "deallocated": "shutoff"}
_RETRIES = 5  # throttled (429) or failed-over (5xx) requests, each after the Retry-After the service asks for


def load_sdk() -> str | None:
    """Import azure-identity and azure-mgmt-compute; return the import traceback when missing, else None."""
    global identity, compute, exceptions  # pylint: disable=global-statement
    try:
        from azure import identity  # pylint: disable=redefined-outer-name,import-outside-toplevel
        from azure.core import exceptions  # pylint: disable=redefined-outer-name,import-outside-toplevel
        from azure.mgmt import compute  # pylint: disable=redefined-outer-name,import-outside-toplevel
    except ImportError:
        return traceback.format_exc()
    return None


def text(value: t.Any) -> str:
    """The string of an SDK enum member (or of a plain string); '' for None."""
    return "" if value is None else str(getattr(value, "value", value))


def parse_id(resource_id: str) -> dict[str, str]:
    """Split an ARM id into subscription, group, type and name (lower-case keys)."""
    parts = resource_id.strip("/").split("/")
    pairs = {parts[i].lower(): parts[i + 1] for i in range(0, len(parts) - 1, 2)}
    return {"subscription": pairs.get("subscriptions", ""), "group": pairs.get("resourcegroups", ""),
            "name": parts[-1] if parts else ""}


def same_id(one: str | None, other: str | None) -> bool:
    return bool(one) and bool(other) and one.strip("/").lower() == other.strip("/").lower()  # type: ignore[union-attr]


def _time(value: str | None) -> datetime.datetime:
    if not value:
        return datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)).astimezone(datetime.timezone.utc)


def resource_name(*parts: str) -> str:
    """A managed-disk or snapshot name (at most 80 characters of letters, digits, '_', '-', '.')."""
    clean = "-".join("".join(c if c.isalnum() or c in "_-." else "-" for c in p) for p in parts if p)
    return clean[:80].rstrip(".-")


class AzureProvider(HypervisorProvider):
    """One subscription of Azure Resource Manager."""

    name = "azure"
    unique_snapshot_names = True
    restore_format = "raw"  # vm_restore target=new_vm: raw images, uploaded as fixed VHDs (azure_backup)

    def __init__(self, params: dict[str, t.Any], warn: Warn) -> None:
        super().__init__(params, warn)
        load_sdk()
        self.cloud = params.get("cloud_environment") or "AzureCloud"
        arm, authority = CLOUDS.get(self.cloud, CLOUDS["AzureCloud"])
        self.arm = (params.get("base_url") or arm).rstrip("/")
        self.authority = (params.get("authority_host") or authority).rstrip("/")
        self.scope = arm + "/.default"
        self.subscription: str = params.get("subscription_id") or ""
        self.group: str | None = params.get("resource_group")
        self.credential: t.Any = None
        self.client: t.Any = None
        self.poll = float(os.environ.get("VMSAFE_AZURE_POLL_SECONDS") or 2)
        self._vms: dict[str, t.Any] = {}

    @property
    def host(self) -> str:
        return f"{urllib.parse.urlsplit(self.arm).netloc} (subscription {self.subscription or '?'})"

    @property
    def verify(self) -> t.Any:
        """What the SDK's transports take as connection_verify: a CA bundle, or whether to check at all."""
        return self.params.get("ca_path") or bool(self.params.get("validate_certs", True))

    def sdk_kwargs(self) -> dict[str, t.Any]:
        timeout = int(self.params.get("connect_timeout") or 30)
        return {"connection_verify": self.verify, "connection_timeout": timeout, "read_timeout": max(timeout, 60),
                "retry_total": _RETRIES, "retry_on_methods": ["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"],
                "retry_backoff_max": 60}

    # -- connection -------------------------------------------------------------------------------

    def _credential_file(self) -> dict[str, str]:
        """The profile of ~/.azure/credentials (azure.azcollection's credential_file), or {}."""
        path = os.path.expanduser("~/.azure/credentials")
        parser = configparser.ConfigParser()
        if not parser.read(path):
            return {}
        profile = self.params.get("profile") or "default"
        if not parser.has_section(profile):
            raise ConnectionFailed(f"Profile '{profile}' is not in {path}; it has {', '.join(parser.sections()) or 'none'}.")
        return dict(parser.items(profile))

    def _make_credential(self) -> tuple[t.Any, str]:
        """Return (credential, how it was chosen) following auth_source as azure.azcollection does."""
        p = self.params
        source = p.get("auth_source") or "auto"
        kwargs: dict[str, t.Any] = {"authority": self.authority, "connection_verify": self.verify}
        if urllib.parse.urlsplit(self.authority).netloc not in {urllib.parse.urlsplit(a).netloc for _arm, a in CLOUDS.values()}:
            kwargs["disable_instance_discovery"] = True  # Azure Stack, ADFS or a test authority

        def secret_credential(values: dict[str, t.Any], origin: str) -> tuple[t.Any, str]:
            missing = [k for k in ("client_id", "secret", "tenant") if not values.get(k)]
            if missing:
                raise ConnectionFailed(f"auth_source={source} found no {', '.join(missing)} ({origin}). Set client_id, "
                                       f"secret and tenant, or the AZURE_CLIENT_ID, AZURE_SECRET and AZURE_TENANT "
                                       f"environment variables, or a profile in ~/.azure/credentials.")
            if not self.subscription:
                self.subscription = values.get("subscription_id") or ""
            return identity.ClientSecretCredential(values["tenant"], values["client_id"], values["secret"],
                                                   **kwargs), origin

        if source in ("auto", "env") and p.get("client_id") and p.get("secret"):
            return secret_credential(p, "module options or AZURE_* environment variables")
        if source in ("auto", "credential_file"):
            found = self._credential_file()
            if found or source == "credential_file":
                return secret_credential(found, f"profile '{p.get('profile') or 'default'}' of ~/.azure/credentials")
        if source == "env":
            return secret_credential(p, "AZURE_* environment variables")
        if source == "cli":
            return identity.AzureCliCredential(), "the Azure CLI's login (az login)"
        if source == "msi":
            msi = {"client_id": p["client_id"]} if p.get("client_id") else {}
            return identity.ManagedIdentityCredential(connection_verify=self.verify, **msi), "managed identity"
        return identity.DefaultAzureCredential(**kwargs), "DefaultAzureCredential (environment, managed identity, CLI)"

    def connect(self) -> None:
        if compute is None:
            raise ConnectionFailed("The azure-mgmt-compute and azure-identity packages are not installed: "
                                   "pip install azure-mgmt-compute azure-identity azure-storage-blob.")
        self.credential, origin = self._make_credential()
        if not self.subscription:
            raise ConnectionFailed("hypervisor=azure needs subscription_id (or AZURE_SUBSCRIPTION_ID, or subscription_id "
                                   "in the ~/.azure/credentials profile).")
        self.client = compute.ComputeManagementClient(self.credential, self.subscription, base_url=self.arm,
                                                      credential_scopes=[self.scope], **self.sdk_kwargs())
        try:
            self.credential.get_token(self.scope)
        except exceptions.ClientAuthenticationError as exc:
            raise ConnectionFailed(f"Failed to log in to Azure ({self.authority}) with {origin}: {self._cause(exc)}. "
                                   f"Check client_id, secret and tenant (or the service principal's expiry).") from exc
        except exceptions.ServiceRequestError as exc:
            raise ConnectionFailed(f"Failed to reach the Azure authority {self.authority}: {exc}. Set ca_path when a "
                                   f"proxy or private endpoint uses its own CA.") from exc

    def close(self) -> None:
        for item in (self.client, self.credential):
            try:
                if item is not None:
                    item.close()
            except (AttributeError, OSError):
                pass
        self.client = self.credential = None

    # -- calls, errors and long-running operations ---------------------------------------------------

    @staticmethod
    def _cause(exc: BaseException) -> str:
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None)
        message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
        return f"({code}) {message}" if code and f"({code})" not in str(message) else str(message).strip()

    def error(self, verb: str, exc: BaseException, hint: str = "") -> ProviderError:
        """A ProviderError for an SDK exception: ``Failed to <verb> on azure host <host>: <cause>``."""
        status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status_code", None)
        cause = self._cause(exc)
        if status == 429:
            hint = (f"Azure Resource Manager kept throttling the requests (429) after {_RETRIES} retries, each after "
                    f"the Retry-After it asked for. Run fewer tasks at once (forks, serial) or try again later.")
        elif isinstance(exc, exceptions.ClientAuthenticationError):
            hint = "The service principal was refused: check its role assignment on the resource group."
        return ProviderError(f"Failed to {verb} on azure host {self.host}: {cause.rstrip('.')}.{' ' + hint if hint else ''}")

    def call(self, verb: str, func: t.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
        """Run one SDK call; SDK errors become ProviderError naming ``verb``."""
        try:
            return func(*args, **kwargs)
        except exceptions.ResourceNotFoundError as exc:
            raise self.error(verb, exc, "It was removed meanwhile.") from exc
        except exceptions.AzureError as exc:
            raise self.error(verb, exc) from exc

    def begin(self, verb: str, func: t.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> tuple[str, t.Any]:
        """Start a long-running operation; return (verb, poller) for wait()."""
        return verb, self.call(verb, func, *args, polling_interval=self.poll, **kwargs)

    def wait(self, pollers: list[tuple[str, t.Any]], deadline: float, hint: str = "") -> list[t.Any]:
        """Wait for every poller until ``deadline`` (time.monotonic()); return their results in order.

        All are waited for even when one fails, so nothing runs on unseen; then the first failure is raised
        (ProviderError), or OperationTimeout naming what still runs.
        """
        results: list[t.Any] = []
        failure: ProviderError | None = None
        running: list[str] = []
        for verb, poller in pollers:
            try:
                poller.wait(max(0.0, deadline - time.monotonic()))  # re-raises what failed the polling thread
                if not poller.done():
                    running.append(verb)
                    results.append(None)
                    continue
                results.append(poller.result())
            except exceptions.AzureError as exc:
                results.append(None)
                failure = failure or self.error(verb, exc, hint)
        if failure is not None:
            raise failure
        if running:
            raise OperationTimeout(f"Failed to {running[0]} on azure host {self.host}: still running at the timeout "
                                   f"({len(running)} operation(s): {'; '.join(running)}). Azure cannot cancel it; it "
                                   f"goes on in the background. {hint}".rstrip())
        return results

    # -- VMs ----------------------------------------------------------------------------------------

    def _get_vm(self, group: str, name: str) -> t.Any:
        return self.call(f"read VM '{name}'", self.client.virtual_machines.get, group, name, expand="instanceView")

    @staticmethod
    def power_state(vm: t.Any) -> str:
        """Azure's own power state of an SDK VM read with its instance view (running, stopped, deallocated...)."""
        for status in getattr(vm.instance_view, "statuses", None) or []:
            if (status.code or "").startswith("PowerState/"):
                return status.code.split("/", 1)[1]
        return "unknown"

    def _ref(self, vm: t.Any) -> VmRef:
        power = self.power_state(vm)
        state = _POWER.get(power, power)
        self._vms[vm.id.lower()] = vm
        return VmRef(id=vm.id, name=vm.name, state=state, host=self.host)

    def vm_model(self, vm: VmRef, fresh: bool = False) -> t.Any:
        """The SDK model of ``vm`` (read once a run unless ``fresh``)."""
        if fresh or vm.id.lower() not in self._vms:
            ids = parse_id(vm.id)
            self._ref(self._get_vm(ids["group"], ids["name"]))
        return self._vms[vm.id.lower()]

    def _list_models(self) -> list[t.Any]:
        if self.group:
            return list(self.call(f"list the VMs of resource group '{self.group}'",
                                  lambda: list(self.client.virtual_machines.list(self.group))))
        return list(self.call("list the VMs of the subscription", lambda: list(self.client.virtual_machines.list_all())))

    def list_vms(self) -> list[VmRef]:
        return [self.vm_ref_of(m) for m in self._list_models()]

    def vm_ref_of(self, model: t.Any) -> VmRef:
        ids = parse_id(model.id)
        return self._ref(self._get_vm(ids["group"], model.name))

    def find_vm(self, selector: VmSelector) -> VmRef:
        if selector.id is not None and selector.id.startswith("/"):
            ids = parse_id(selector.id)
            try:
                return self._ref(self.client.virtual_machines.get(ids["group"], ids["name"], expand="instanceView"))
            except exceptions.ResourceNotFoundError as exc:
                raise VmNotFound(f"No VM with id '{selector.id}' in subscription {self.subscription}.") from exc
            except exceptions.AzureError as exc:
                raise self.error(f"read VM '{ids['name']}'", exc) from exc
        models = self._list_models()
        if selector.id is not None:
            found = [m for m in models if (m.vm_id or "").lower() == selector.id.lower()]
        else:
            found = [m for m in models if m.name.lower() == str(selector.name).lower()]
        where = f"resource group '{self.group}'" if self.group else f"subscription {self.subscription}"
        if len(found) > 1:
            ids = ", ".join(m.id for m in found)
            raise VmNotFound(f"{len(found)} VMs are named '{selector.name}' in {where} ({ids}); set resource_group, or "
                             f"select one with vm_id (its resource id).")
        if not found:
            close = difflib.get_close_matches(selector.name or selector.id or "", [m.name for m in models], n=3)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise VmNotFound(f"No VM {selector.describe()} in {where} on azure host {self.host}.{hint}")
        return self.vm_ref_of(found[0])

    def vm_slots(self, model: t.Any) -> dict[str, t.Any]:
        """Slot name (``os``, ``lun0``...) -> the SDK disk entry of the VM; refuses what has no managed disk."""
        profile = model.storage_profile
        os_disk = profile.os_disk
        if os_disk.managed_disk is None or not os_disk.managed_disk.id:
            raise UnsupportedOperation(f"VM '{model.name}' has an unmanaged OS disk (a VHD in a storage account); only "
                                       f"managed disks can be snapshotted as sets. Convert it to managed disks first.")
        if getattr(os_disk, "diff_disk_settings", None) is not None:
            raise UnsupportedOperation(f"VM '{model.name}' has an ephemeral OS disk, which Azure cannot snapshot.")
        slots = {"os": os_disk}
        for disk in profile.data_disks or []:
            if disk.managed_disk is None or not disk.managed_disk.id:
                raise UnsupportedOperation(f"Data disk at LUN {disk.lun} of VM '{model.name}' is unmanaged; only "
                                           f"managed disks can be snapshotted.")
            slots[f"lun{disk.lun}"] = disk
        return slots

    # -- snapshot sets ------------------------------------------------------------------------------

    def _group_of(self, vm: VmRef) -> str:
        return parse_id(vm.id)["group"]

    def set_members(self, vm: VmRef, purpose: str = "snapshot") -> dict[str, list[t.Any]]:
        """Set id -> its snapshot resources (SDK models) of ``vm`` for ``purpose``, copies included."""
        model = self.vm_model(vm)
        group = self._group_of(vm)
        snaps = self.call(f"list the snapshots of resource group '{group}'",
                          lambda: list(self.client.snapshots.list_by_resource_group(group)))
        sets: dict[str, list[t.Any]] = {}
        for snap in snaps:
            tags = snap.tags or {}
            if tags.get(TAG_VM) == model.vm_id and tags.get(TAG_PURPOSE, "snapshot") == purpose and tags.get(TAG_SET_ID):
                sets.setdefault(tags[TAG_SET_ID], []).append(snap)
        return sets

    def _as_snapshot(self, set_id: str, members: list[t.Any], current: str | None) -> Snapshot:
        own = [m for m in members if not (m.tags or {}).get(TAG_COPY)] or members
        tags = own[0].tags or {}
        sizes = [m.disk_size_bytes for m in own if m.disk_size_bytes]
        return Snapshot(
            id=set_id, name=tags.get(TAG_SET, set_id), created=_time(tags.get(TAG_TIME)),
            description=tags.get(TAG_DESC, ""), current=current == set_id, memory=False, quiesced=False,
            kind="external", size_bytes=sum(sizes) if sizes else None, vm_state=tags.get(TAG_STATE, ""),
            files=sorted(m.id for m in members),
        )

    def list_snapshots(self, vm: VmRef) -> list[Snapshot]:
        current = (self.vm_model(vm).tags or {}).get(TAG_CURRENT)
        found = [self._as_snapshot(k, v, current) for k, v in self.set_members(vm).items()]
        return tree.link(sorted(found, key=lambda s: (s.created, s.id)))

    @staticmethod
    def new_set_id() -> str:
        return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dt%H%M%S") + uuid.uuid4().hex[:6]

    def snapshot_disks(self, vm: VmRef, tags: dict[str, str], set_id: str, deadline: float,
                       verb: str) -> list[t.Any]:
        """Take one incremental snapshot of every disk of ``vm``, all started before any is waited for.

        On failure, removes those that were made, then raises. Returns the snapshot models.
        """
        model = self.vm_model(vm, fresh=True)
        slots = self.vm_slots(model)
        group = self._group_of(vm)
        all_tags = {**tags, TAG_SET_ID: set_id, TAG_VM: model.vm_id, TAG_DISKS: ",".join(slots)}
        names = {slot: resource_name(model.name[:40], slot, set_id) for slot in slots}
        pollers = []
        try:
            for slot, disk in slots.items():
                body = {"location": model.location, "tags": {**all_tags, TAG_DISK: slot},
                        "properties": {"incremental": True,
                                       "creationData": {"createOption": "Copy", "sourceResourceId": disk.managed_disk.id}}}
                pollers.append(self.begin(f"{verb}: snapshot disk {slot} ({disk.name}) of VM '{vm.name}'",
                                          self.client.snapshots.begin_create_or_update, group, names[slot], body))
            return self.wait(pollers, deadline)
        except (ProviderError, OperationTimeout):
            if len(pollers) < len(names):  # a request was refused: let those already started finish first
                try:
                    self.wait(pollers, deadline)
                except (ProviderError, OperationTimeout):
                    pass
            self._remove_quietly(group, list(names.values()), "snapshots")
            raise

    def _remove_quietly(self, group: str, names: list[str], kind: str) -> None:
        """Delete what a failed step made; warn about what could not be deleted (never raises)."""
        table = self.client.snapshots if kind == "snapshots" else self.client.disks
        pollers = []
        for name in names:
            try:
                pollers.append((name, table.begin_delete(group, name, polling_interval=self.poll)))
            except exceptions.ResourceNotFoundError:
                continue
            except exceptions.AzureError as exc:
                self.warn(f"Could not remove {kind[:-1]} '{name}' in resource group '{group}': {self._cause(exc)}. "
                          f"Remove it by hand.")
        deadline = time.monotonic() + max(60, int(self.params.get("connect_timeout") or 30))
        for name, poller in pollers:
            try:
                poller.wait(max(0.0, deadline - time.monotonic()))
                if poller.done():
                    poller.result()
                else:
                    self.warn(f"Removing {kind[:-1]} '{name}' still runs in Azure; check it is gone later.")
            except exceptions.AzureError as exc:
                self.warn(f"Could not remove {kind[:-1]} '{name}' in resource group '{group}': {self._cause(exc)}.")

    def create_snapshot(self, vm: VmRef, spec: SnapshotSpec, timeout: int) -> CreateResult:
        warnings: list[str] = []
        running = vm.state == "running"
        if spec.memory and running:
            warnings.append("Azure managed-disk snapshots keep no memory; the set is crash consistent (a revert boots "
                            "the VM from its disks).")
        if spec.quiesce and running:
            if spec.quiesce_fallback == "fail":
                raise QuiesceFailed(f"Failed to create snapshot '{spec.name}' of VM '{vm.name}' on azure host "
                                    f"{self.host}: application-consistent sets (restore points) are not supported by "
                                    f"this collection yet. Set quiesce_fallback=crash_consistent, or deallocate the VM "
                                    f"first for an offline set.")
            warnings.append("Application-consistent sets (restore points) are not supported yet; the set is crash "
                            "consistent.")
        deadline = time.monotonic() + timeout
        set_id = self.new_set_id()
        created = datetime.datetime.now(datetime.timezone.utc)
        tags = {TAG_SET: spec.name, TAG_TIME: created.isoformat(), TAG_PURPOSE: "snapshot", TAG_STATE: vm.state}
        if spec.description:
            tags[TAG_DESC] = spec.description[:256]
        members = self.snapshot_disks(vm, tags, set_id, deadline, f"create snapshot '{spec.name}'")
        if running and len(members) > 1:
            warnings.append(f"VM '{vm.name}' runs and has {len(members)} disks: their snapshots were started together "
                            f"but Azure does not take them at one instant. Deallocate the VM first when the disks must "
                            f"agree exactly.")
        copy_to = self.params.get("copy_to_location")
        if copy_to:
            self.copy_set(vm, members, copy_to, deadline)
            members = self.set_members(vm).get(set_id, members)
        for warning in warnings:
            self.warn(warning)
        snap = self._as_snapshot(set_id, members, None)
        return CreateResult(snapshot=snap, consistency="crash_consistent" if running else "offline", warnings=warnings)

    def copy_set(self, vm: VmRef, members: list[t.Any], location: str, deadline: float) -> None:
        """Copy each snapshot of a set to another region (createOption CopyStart); wait until the copies are whole."""
        group = self._group_of(vm)
        pollers = []
        for snap in members:
            tags = {**(snap.tags or {}), TAG_COPY: snap.id}
            body = {"location": location, "tags": tags,
                    "properties": {"incremental": True,
                                   "creationData": {"createOption": "CopyStart", "sourceResourceId": snap.id}}}
            pollers.append(self.begin(f"copy snapshot '{snap.name}' to region {location}",
                                      self.client.snapshots.begin_create_or_update, group,
                                      resource_name(snap.name[:70], location[:9]), body))
        copies = self.wait(pollers, deadline, "The copies are tagged with the set; removing the set removes them.")
        for copy in copies:
            while (getattr(copy, "completion_percent", None) or 100.0) < 100.0:
                if time.monotonic() >= deadline:
                    raise OperationTimeout(f"Failed to copy snapshot '{copy.name}' to {location} on azure host "
                                           f"{self.host}: {copy.completion_percent} % copied at the timeout; the copy "
                                           f"goes on in Azure.")
                time.sleep(self.poll)
                copy = self.call(f"read snapshot '{copy.name}'", self.client.snapshots.get, group, copy.name)

    def delete_snapshot(self, vm: VmRef, snapshot: Snapshot, children: bool, timeout: int) -> None:
        self.delete_set(vm, snapshot.files, f"remove snapshot '{snapshot.name}' of VM '{vm.name}'",
                        time.monotonic() + timeout)

    def delete_set(self, vm: VmRef, ids: list[str], verb: str, deadline: float) -> None:
        pollers = []
        for snap_id in ids:
            ids_ = parse_id(snap_id)
            pollers.append(self.begin(f"{verb}: delete {ids_['name']}", self.client.snapshots.begin_delete,
                                      ids_["group"], ids_["name"]))
        self.wait(pollers, deadline, "Run the task again to remove what is left.")

    # -- revert: new disks from the set, swapped in -------------------------------------------------

    def revert_snapshot(self, vm: VmRef, snapshot: Snapshot, timeout: int) -> None:
        from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure_revert  # pylint: disable=import-outside-toplevel

        azure_revert.Revert(self, vm, snapshot, time.monotonic() + timeout).run()

    # -- consolidation: partial sets and the disks reverts replaced ------------------------------------

    def replaced_disks(self, vm: VmRef) -> list[t.Any]:
        model = self.vm_model(vm)
        group = self._group_of(vm)
        disks = self.call(f"list the disks of resource group '{group}'",
                          lambda: list(self.client.disks.list_by_resource_group(group)))
        return [d for d in disks if (d.tags or {}).get(TAG_REPLACED) == model.vm_id and not d.managed_by]

    def consolidation_status(self, vm: VmRef, snapshots: list[Snapshot] | None = None) -> ConsolidationStatus:
        model = self.vm_model(vm)
        disks = [Disk(target=slot, path=d.managed_disk.id, format="managed",
                      chain=[d.managed_disk.id], virtual_size=(d.disk_size_gb or 0) * 1024 ** 3 or None)
                 for slot, d in self.vm_slots(model).items()]
        leftovers: list[Leftover] = []
        reasons: list[str] = []
        for set_id, members in self.set_members(vm).items():
            own = [m for m in members if not (m.tags or {}).get(TAG_COPY)]
            wanted = set(((own or members)[0].tags or {}).get(TAG_DISKS, "").split(","))
            have = {(m.tags or {}).get(TAG_DISK) for m in own}
            if wanted - have:
                name = ((own or members)[0].tags or {}).get(TAG_SET, set_id)
                reasons.append(f"snapshot set '{name}' lacks disk(s) {', '.join(sorted(wanted - have))}")
                leftovers.append(Leftover(kind="partial_set", disk=",".join(sorted(have)), snapshot=name,
                                          detail=f"snapshot set '{name}' ({set_id}) lacks {', '.join(sorted(wanted - have))}",
                                          files=sorted(m.id for m in members)))
        for disk in self.replaced_disks(vm):
            tags = disk.tags or {}
            leftovers.append(Leftover(
                kind="replaced_disk", disk=disk.name, files=[disk.id], bytes=disk.disk_size_bytes,
                snapshot=tags.get(TAG_REPLACED_BY),
                detail=f"disk {disk.name} was taken out of the VM by the revert to '{tags.get(TAG_REPLACED_BY)}' at "
                       f"{tags.get(TAG_REPLACED_AT)}; kept until removed"))
        # Replaced disks are kept on purpose (the way back from a revert): reported, not a reason to consolidate.
        return ConsolidationStatus(needed=bool(reasons), chain_depth=1, reasons=reasons, leftovers=leftovers, disks=disks)

    def repair_leftover(self, vm: VmRef, leftover: Leftover, timeout: int) -> None:
        deadline = time.monotonic() + timeout
        if leftover.kind == "partial_set":
            self.delete_set(vm, leftover.files, f"remove partial snapshot set '{leftover.snapshot}'", deadline)
        elif leftover.kind == "replaced_disk":
            ids = parse_id(leftover.files[0])
            current = self.call(f"read disk '{ids['name']}'", self.client.disks.get, ids["group"], ids["name"])
            if current.managed_by:
                raise UnsupportedOperation(f"Disk {ids['name']} is attached to {current.managed_by} again; not removed.")
            self.wait([self.begin(f"delete replaced disk '{ids['name']}'", self.client.disks.begin_delete,
                                  ids["group"], ids["name"])], deadline)
        else:
            raise InvalidArgument(f"Unknown leftover kind {leftover.kind} on azure.")

    # -- backups and restores (azure_backup) ----------------------------------------------------------

    def backup_base(self, vm: VmRef, last: dict[str, t.Any] | None) -> tuple[str | None, str]:
        from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure_backup  # pylint: disable=import-outside-toplevel

        return azure_backup.backup_base(self, vm, last)

    def backup_begin(self, vm: VmRef, since: str | None, quiesce: bool, quiesce_fallback: str) -> t.Any:
        from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure_backup  # pylint: disable=import-outside-toplevel

        return azure_backup.backup_begin(self, vm, since, quiesce, quiesce_fallback)

    def define_restored_vm(self, definition: str, name: str, disk_files: dict[str, tuple[str, str]],
                           start: bool) -> VmRef:
        from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure_backup  # pylint: disable=import-outside-toplevel

        return azure_backup.define_restored_vm(self, definition, name, disk_files, start)
