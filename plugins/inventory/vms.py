# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors

from __future__ import annotations

DOCUMENTATION = r"""
name: vms
short_description: VMs of libvirt, VMware and Hyper-V hosts as inventory hosts, with their snapshot and backup state
version_added: 0.1.0
description:
  - Lists the VMs of one or more hypervisors (O(sources)) as inventory hosts, so that C(playbooks/safe_patch.yml),
    C(playbooks/nightly_backup.yml) and the roles target VMs the way AWX users target them.
  - Each host gets its hypervisor, power state, snapshot count, the age of its oldest snapshot and, when
    O(repository) is set, the age of its newest backup as variables, and C(vmsafe_connection) (the source's
    connection options B(without) the password), which every role and playbook of the collection reads.
  - "Groups: C(has_old_snapshots) (oldest snapshot older than O(old_snapshot_age)), C(no_backup_24h) (with
    O(repository): no backup in the last 24 hours), C(hypervisor_libvirt), C(hypervisor_vmware),
    C(hypervisor_hyperv), plus what O(groups) and O(keyed_groups) build."
  - One retrieval per source - for VMware one property-collector request for every VM (the fleet path of
    M(vmsafe.protect.vm_snapshot_info)), for Hyper-V one WinRM command for every VM and its checkpoints, for
    libvirt one connection - and the repository read once; with O(cache) the whole result is
    kept in the inventory cache and the hypervisors are not asked again until it expires.
  - The file must be named C(*.vms.yml) or C(*.vms.yaml) (or C(vmsafe.yml)/C(vmsafe.yaml)).
author: vmsafe.protect contributors (@vmsafe-protect)
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
requirements:
  - libvirt-python, pyvmomi or pywinrm for the hypervisors of O(sources), on the controller (or in the EE).
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices: [vmsafe.protect.vms]
  sources:
    description:
      - The hypervisors to list. Each entry takes the connection options of the modules (O(sources[].hypervisor),
        O(sources[].uri), O(sources[].hostname), ...), with the same environment fallbacks, read for that
        entry's hypervisor only (E(VMWARE_*) for V(vmware), E(VMSAFE_HYPERV_*) for V(hyperv), then E(VMSAFE_*)).
      - Keep passwords out of this file; AWX credentials inject them into the environment (see docs/awx.md).
    type: list
    elements: dict
    default: [{hypervisor: libvirt}]
    suboptions:
      name:
        description: A label for the source (host variable C(vmsafe_source)); default the hypervisor and host.
        type: str
      prefix:
        description: Put before every VM name to make the inventory host name.
        type: str
        default: ""
      name_pattern:
        description: Regular expression; only VMs whose name matches are listed.
        type: str
      hypervisor:
        description: V(libvirt), V(vmware) or V(hyperv).
        type: str
        default: libvirt
        choices: [libvirt, vmware, hyperv]
      uri:
        description: libvirt connection URI (E(VMSAFE_LIBVIRT_URI), E(LIBVIRT_DEFAULT_URI), then V(qemu:///system)).
        type: str
      connect_timeout:
        description: Seconds to wait for the connection.
        type: int
        default: 30
      hostname:
        description: vCenter, ESXi or Hyper-V host.
        type: str
      username:
        description: Account to log in with.
        type: str
      password:
        description: Password of O(sources[].username); never stored in host variables or the cache.
        type: str
      port:
        description: TCP port (443 for vSphere, 5986 for Hyper-V when unset).
        type: int
      validate_certs:
        description: Verify the TLS certificate (V(true) when unset).
        type: bool
      datacenter:
        description: vSphere datacenter to list.
        type: str
      folder:
        description: vSphere VM folder to list.
        type: str
      transport:
        description: Hyper-V WinRM authentication.
        type: str
        default: ntlm
        choices: [ntlm, kerberos, credssp, certificate]
      ca_path:
        description: Hyper-V, CA certificates (PEM) for the WinRM listener.
        type: path
      client_cert:
        description: Hyper-V certificate authentication, client certificate.
        type: path
      client_key:
        description: Hyper-V certificate authentication, client key.
        type: path
      proxy_host:
        description: vSphere, an HTTP proxy to reach vCenter through (E(VMWARE_PROXY_HOST) when not set).
        type: str
      proxy_port:
        description: vSphere, the port of O(sources[].proxy_host) (E(VMWARE_PROXY_PORT), then V(80), when not set).
        type: int
  old_snapshot_age:
    description: A VM whose oldest snapshot is older than this is in the group C(has_old_snapshots).
    type: str
    default: 3d
  repository:
    description:
      - A vmsafe backup repository (path or V(sftp://) URL) to read the newest backup of each VM from; no backup
        variables or C(no_backup_24h) group without it.
    type: str
    env:
      - name: VMSAFE_REPOSITORY
  passphrase:
    description: The repository's passphrase; never stored in host variables or the cache.
    type: str
    env:
      - name: VMSAFE_PASSPHRASE
  repository_key_file:
    description: SSH private key for an V(sftp://) repository.
    type: path
  repository_known_hosts:
    description: known_hosts file for an V(sftp://) repository.
    type: path
notes:
  - Host names are the VM names (with O(sources[].prefix)); a name seen in an earlier source gets C(@<source name>)
    appended, with a warning.
  - Ages are computed when the inventory is read, from the times kept in the cache, so they stay right while the
    cache is used.
  - A source that cannot be read fails the inventory (a hypervisor missing from a backup or patch run must not go
    unnoticed).
  - Hyper-V is verified against the project's WinRM simulator only (tests/hyperv_sim), VMware against vcsim.
seealso:
  - module: vmsafe.protect.vm_snapshot_info
  - module: vmsafe.protect.backup_info
"""

EXAMPLES = r"""
# vmsafe.vms.yml: two vCenters' worth of credentials come from AWX credentials (VMWARE_*, VMSAFE_HYPERV_*)
plugin: vmsafe.protect.vms
sources:
  - name: kvm01
    hypervisor: libvirt
    uri: qemu+ssh://virt@kvm01/system
  - name: vcenter01
    hypervisor: vmware
    datacenter: DC1
  - name: hv01
    hypervisor: hyperv
    prefix: hv01-
repository: sftp://backup@vault01/srv/vmsafe
old_snapshot_age: 2d
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/tmp/vmsafe-inventory
cache_timeout: 600
keyed_groups:
  - key: vmsafe_power_state
    prefix: power
"""

import datetime
import os
import re
import subprocess
import typing as t

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

from ansible_collections.vmsafe.protect.plugins.module_utils._connection import resolve_connection
from ansible_collections.vmsafe.protect.plugins.module_utils._errors import VmsafeError
from ansible_collections.vmsafe.protect.plugins.module_utils._providers.registry import PROVIDERS
from ansible_collections.vmsafe.protect.plugins.module_utils._units import parse_duration

CONNECTION_KEYS = ("hypervisor", "uri", "connect_timeout", "hostname", "username", "password", "port",
                   "validate_certs", "datacenter", "folder", "transport", "ca_path", "client_cert", "client_key",
                   "proxy_host", "proxy_port")
SECRET_KEYS = frozenset(("password",))
_REMOTE = ("hypervisor", "connect_timeout", "hostname", "username", "port", "validate_certs")
RELEVANT = {
    "libvirt": ("hypervisor", "uri", "connect_timeout"),
    "vmware": _REMOTE + ("datacenter", "folder", "proxy_host", "proxy_port"),
    "hyperv": _REMOTE + ("transport", "ca_path", "client_cert", "client_key"),
}
NO_BACKUP_AGE = 24 * 3600  # the no_backup_24h group


def _iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(iso: str | None, now: datetime.datetime) -> int | None:
    if iso is None:
        return None
    when = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return max(0, int((now - when).total_seconds()))


def run_command(args: list[str], check_rc: bool = False, data: str | None = None, binary_data: bool = False,
                **_unused: t.Any) -> tuple[int, str, str]:
    """What the providers get as AnsibleModule.run_command in a module, here on the controller: argv, no shell.

    ``check_rc`` is accepted and not acted on: the providers always pass False and judge the exit code themselves.
    """
    del check_rc
    if data is not None and not binary_data:
        data += "\n"  # as AnsibleModule.run_command does
    proc = subprocess.run(args, input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def read_source(source: dict[str, t.Any], warn: t.Callable[[str], None]) -> list[dict[str, t.Any]]:
    """Return every VM of one hypervisor as plain data (what the cache keeps): one connection, one listing.

    Raises AnsibleError naming the source when the provider's SDK is missing or the hypervisor cannot be read.
    """
    params = {key: source.get(key) for key in CONNECTION_KEYS}
    params["hypervisor"] = params["hypervisor"] or "libvirt"
    params["connect_timeout"] = params["connect_timeout"] or 30
    params["transport"] = params["transport"] or "ntlm"
    try:
        resolve_connection(params)
    except ValueError as exc:
        raise AnsibleError(f"vmsafe.protect.vms source {source.get('name')!r}: {exc}") from exc
    load, package = PROVIDERS[params["hypervisor"]]
    cls, import_error = load()
    if import_error is not None:
        raise AnsibleError(f"vmsafe.protect.vms source {source.get('name')!r} needs the Python package {package} on "
                           f"the controller (or in the execution environment): {import_error.strip().splitlines()[-1]}")
    pattern = re.compile(source["name_pattern"]) if source.get("name_pattern") else None
    provider = cls(params, warn)
    provider.run_command = run_command  # the libvirt provider runs qemu-img through it (disk sizes)
    label = source.get("name") or f"{params['hypervisor']}:{params.get('hostname') or params.get('uri') or 'local'}"
    if params["hypervisor"] == "libvirt" and not params["uri"]:
        params["uri"] = os.environ.get("VMSAFE_LIBVIRT_URI") or os.environ.get("LIBVIRT_DEFAULT_URI") or None
    if params["hypervisor"] == "vmware" and not params["proxy_host"] and os.environ.get("VMWARE_PROXY_HOST"):
        params["proxy_host"] = os.environ["VMWARE_PROXY_HOST"]
        params["proxy_port"] = params["proxy_port"] or int(os.environ.get("VMWARE_PROXY_PORT") or 80)
    # what the jobs need to reach the same hypervisor: the options that apply to it, never a secret
    connection = {k: v for k, v in params.items()
                  if v is not None and k not in SECRET_KEYS and k in RELEVANT[params["hypervisor"]]}
    vms: list[dict[str, t.Any]] = []
    try:
        provider.connect()
        for vm, snaps in provider.list_vms_with_snapshots():
            if pattern is not None and not pattern.search(vm.name):
                continue
            vms.append({
                "name": vm.name, "id": vm.id, "state": vm.state, "host": vm.host, "source": label,
                "snapshot_count": len(snaps),
                "oldest_snapshot": _iso(min((s.created for s in snaps), default=None)),
                "connection": connection,
            })
    except VmsafeError as exc:
        raise AnsibleError(f"vmsafe.protect.vms could not list the VMs of source {label!r}: {exc}") from exc
    finally:
        provider.close()
    return vms


def read_backups(options: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
    """Return VM name -> its newest backup (id, time) in the repository; read without a lock, changes nothing."""
    # imported here: only a configuration with a repository needs the backup engine
    from ansible_collections.vmsafe.protect.plugins.module_utils._backup import errors as backup_errors  # pylint: disable=import-outside-toplevel
    from ansible_collections.vmsafe.protect.plugins.module_utils._repository import open_repository  # pylint: disable=import-outside-toplevel

    try:
        repo = open_repository(options)
    except VmsafeError as exc:
        raise AnsibleError(f"vmsafe.protect.vms could not open the repository: {exc}") from exc
    try:
        newest: dict[str, dict[str, t.Any]] = {}
        for record in repo.list():
            when = _iso(record.time)
            if record.vm_name not in newest or (when or "") > newest[record.vm_name]["time"]:
                newest[record.vm_name] = {"id": record.id, "time": when}
        return newest
    except (backup_errors.BackupError, VmsafeError) as exc:
        raise AnsibleError(f"vmsafe.protect.vms could not read the repository's backups: {exc}") from exc
    finally:
        repo.close()


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Hosts are VMs; variables and groups describe their snapshot and backup state."""

    NAME = "vmsafe.protect.vms"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(
            ("vms.yml", "vms.yaml", "vmsafe.yml", "vmsafe.yaml"))

    def parse(self, inventory: t.Any, loader: t.Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        data = None
        if use_cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if data is None:
            data = self._fetch()
        if update_cache:
            self._cache[cache_key] = data
        self._populate(data)

    def _fetch(self) -> dict[str, t.Any]:
        sources = self.get_option("sources") or [{"hypervisor": "libvirt"}]
        vms: list[dict[str, t.Any]] = []
        for index, source in enumerate(sources):
            if not isinstance(source, dict):
                raise AnsibleParserError(f"vmsafe.protect.vms: sources[{index}] is not a mapping")
            unknown = set(source) - set(CONNECTION_KEYS) - {"name", "prefix", "name_pattern"}
            if unknown:
                raise AnsibleParserError(f"vmsafe.protect.vms: sources[{index}] has unknown keys "
                                         f"{', '.join(sorted(unknown))}")
            for vm in read_source(source, self.display.warning):
                vm["prefix"] = source.get("prefix") or ""
                vms.append(vm)
        backups = None
        if self.get_option("repository"):
            backups = read_backups({
                "repository": self.get_option("repository"), "passphrase": self.get_option("passphrase"),
                "repository_key_file": self.get_option("repository_key_file"),
                "repository_known_hosts": self.get_option("repository_known_hosts"),
            })
        return {"vms": vms, "backups": backups}

    def _populate(self, data: dict[str, t.Any]) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            old = parse_duration(self.get_option("old_snapshot_age"), "old_snapshot_age").total_seconds()
        except VmsafeError as exc:
            raise AnsibleParserError(str(exc)) from exc
        strict = self.get_option("strict")
        backups = data.get("backups")
        for group in ("has_old_snapshots", "hypervisor_libvirt", "hypervisor_vmware", "hypervisor_hyperv") + (
                ("no_backup_24h",) if backups is not None else ()):
            self.inventory.add_group(group)
        for vm in data["vms"]:
            host = vm["prefix"] + vm["name"]
            if host in self.inventory.hosts:
                self.display.warning(f"vmsafe.protect.vms: a VM named {host!r} was listed already; the one of "
                                     f"source {vm['source']!r} is {host}@{vm['source']}")
                host = f"{host}@{vm['source']}"
            self.inventory.add_host(host)
            oldest_age = _age(vm["oldest_snapshot"], now)
            hostvars: dict[str, t.Any] = {
                "vmsafe_vm_name": vm["name"], "vmsafe_vm_id": vm["id"],
                "vmsafe_hypervisor": vm["connection"]["hypervisor"], "vmsafe_source": vm["source"],
                "vmsafe_power_state": vm["state"], "vmsafe_snapshot_count": vm["snapshot_count"],
                "vmsafe_oldest_snapshot_age": oldest_age, "vmsafe_connection": dict(vm["connection"]),
            }
            if backups is not None:
                newest = backups.get(vm["name"])
                hostvars["vmsafe_last_backup_id"] = newest["id"] if newest else None
                hostvars["vmsafe_last_backup_age"] = _age(newest["time"], now) if newest else None
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            self.inventory.add_child(f"hypervisor_{hostvars['vmsafe_hypervisor']}", host)
            if oldest_age is not None and oldest_age > old:
                self.inventory.add_child("has_old_snapshots", host)
            if backups is not None and (hostvars["vmsafe_last_backup_age"] is None
                                        or hostvars["vmsafe_last_backup_age"] > NO_BACKUP_AGE):
                self.inventory.add_child("no_backup_24h", host)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)
