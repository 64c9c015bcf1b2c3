# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Connection and VM-selector options shared by every module (see the doc fragments of the same names)."""

from __future__ import annotations

import os
import typing as t

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec

HYPERVISORS = ["libvirt", "vmware", "hyperv", "virtualbox", "azure"]

# Environment fallbacks of the options that reach vCenter or a Hyper-V host, in the order they are read: the
# hypervisor's own variables first, then VMSAFE_* for every hypervisor. They are resolved after the hypervisor is
# known (resolve_connection), not by AnsibleModule's env_fallback: VMWARE_* belong to vSphere only (vmware.vmware and
# community.vmware read them, AWX's "VMware vCenter" credential injects them), so a Hyper-V task must never send
# vCenter credentials to the vCenter's name, nor turn off WinRM certificate checks because of VMWARE_VALIDATE_CERTS.
# VMSAFE_HYPERV_* let one job hold a vCenter and a Hyper-V credential at once.
_SPECIFIC = {"vmware": "VMWARE_", "hyperv": "VMSAFE_HYPERV_"}
_SUFFIX = {"hostname": "HOST", "username": "USER", "password": "PASSWORD", "port": "PORT",
           "validate_certs": "VALIDATE_CERTS"}
ENV_FALLBACKS: dict[str, dict[str, list[str]]] = {
    option: dict({hv: [prefix + suffix] for hv, prefix in _SPECIFIC.items()}, all=["VMSAFE_" + suffix])
    for option, suffix in _SUFFIX.items()
}
# What an option is when neither the task nor the environment set it.
DEFAULTS: dict[str, t.Any] = {"validate_certs": True}
AZURE_CLOUDS = ["AzureCloud", "AzureChinaCloud", "AzureUSGovernment"]


def connection_spec() -> ArgumentSpec:
    """Options that choose and reach the hypervisor (doc fragment vmsafe.protect.connection)."""
    return ArgumentSpec({
        "hypervisor": {"type": "str", "default": "libvirt", "choices": HYPERVISORS,
                       "fallback": (env_fallback, ["VMSAFE_HYPERVISOR"])},
        "uri": {"type": "str", "fallback": (env_fallback, ["VMSAFE_LIBVIRT_URI", "LIBVIRT_DEFAULT_URI"])},
        "connect_timeout": {"type": "int", "default": 30},
        # vmware and hyperv; names as in vmware.vmware and community.vmware. Their environment fallbacks
        # (ENV_FALLBACKS) depend on the hypervisor: resolve_connection() reads them.
        "hostname": {"type": "str"},
        "username": {"type": "str", "aliases": ["user", "admin"]},
        "password": {"type": "str", "aliases": ["pass", "pwd"], "no_log": True},
        # No default: 443 for vSphere, 5986 (WinRM HTTPS) for Hyper-V, chosen by each provider.
        "port": {"type": "int"},
        # No default in the spec, so that "not set" can be told from "true": DEFAULTS applies after the environment.
        "validate_certs": {"type": "bool"},
        # vmware only
        "datacenter": {"type": "str"},
        "folder": {"type": "str"},
        # hyperv only
        "transport": {"type": "str", "default": "ntlm", "choices": ["ntlm", "kerberos", "credssp", "certificate"]},
        "ca_path": {"type": "path"},
        "client_cert": {"type": "path"},
        "client_key": {"type": "path", "no_log": False},
        # virtualbox only (hostname, username, password, port and validate_certs above reach it over SSH)
        "vboxmanage": {"type": "str", "fallback": (env_fallback, ["VMSAFE_VBOXMANAGE"])},
        "ssh_key_file": {"type": "path", "no_log": False, "fallback": (env_fallback, ["VMSAFE_SSH_KEY_FILE"])},
        "ssh_known_hosts": {"type": "path", "fallback": (env_fallback, ["VMSAFE_SSH_KNOWN_HOSTS"])},
        # azure only; names and AZURE_* variables as in azure.azcollection (and azure-identity's own)
        "auth_source": {"type": "str", "default": "auto", "choices": ["auto", "cli", "credential_file", "env", "msi"],
                        "fallback": (env_fallback, ["ANSIBLE_AZURE_AUTH_SOURCE"])},
        "profile": {"type": "str", "fallback": (env_fallback, ["AZURE_PROFILE"])},
        "subscription_id": {"type": "str", "fallback": (env_fallback, ["AZURE_SUBSCRIPTION_ID"])},
        "client_id": {"type": "str", "fallback": (env_fallback, ["AZURE_CLIENT_ID"])},
        "secret": {"type": "str", "no_log": True, "fallback": (env_fallback, ["AZURE_SECRET", "AZURE_CLIENT_SECRET"])},
        "tenant": {"type": "str", "fallback": (env_fallback, ["AZURE_TENANT", "AZURE_TENANT_ID"])},
        "cloud_environment": {"type": "str", "default": "AzureCloud", "choices": AZURE_CLOUDS,
                              "fallback": (env_fallback, ["AZURE_CLOUD_ENVIRONMENT"])},
        "base_url": {"type": "str", "fallback": (env_fallback, ["VMSAFE_AZURE_BASE_URL"])},
        "authority_host": {"type": "str", "fallback": (env_fallback, ["AZURE_AUTHORITY_HOST"])},
        "resource_group": {"type": "str"},
    })


def env_value(option: str, hypervisor: str, environ: t.Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """Return (variable name, value) of the first environment fallback of ``option`` set for ``hypervisor``."""
    env = os.environ if environ is None else environ
    names = ENV_FALLBACKS[option]
    for name in names.get(hypervisor, []) + names["all"]:
        if env.get(name):
            return name, env[name]
    return None


def resolve_connection(params: dict[str, t.Any], environ: t.Mapping[str, str] | None = None) -> list[str]:
    """Fill the connection options the task left unset from the environment (ENV_FALLBACKS), then DEFAULTS.

    Changes ``params`` in place and returns the secret values read from the environment, which the caller must
    hide from the output (AnsibleModule's no_log covers only the values it saw). Raises ValueError naming the
    variable when a value does not parse.
    """
    hypervisor = params.get("hypervisor") or "libvirt"
    secrets: list[str] = []
    for option in ENV_FALLBACKS:
        if params.get(option) is not None:
            continue
        found = env_value(option, hypervisor, environ)
        if found is None:
            params[option] = DEFAULTS.get(option)
            continue
        name, raw = found
        try:
            if option == "port":
                params[option] = int(raw)
            elif option == "validate_certs":
                params[option] = boolean(raw, strict=True)
            else:
                params[option] = raw
        except (TypeError, ValueError) as exc:
            raise ValueError(f"The environment variable {name}={raw!r} is not a valid {option}: {exc}") from exc
        if option == "password":
            secrets.append(raw)
    return secrets


def vm_selector_spec(required: bool) -> ArgumentSpec:
    """vm_name | vm_id (doc fragment vmsafe.protect.vm_selector)."""
    spec = ArgumentSpec(
        {"vm_name": {"type": "str", "aliases": ["name"]}, "vm_id": {"type": "str", "aliases": ["uuid"]}},
        mutually_exclusive=[["vm_name", "vm_id"]],
    )
    if required:
        spec.update(required_one_of=[["vm_name", "vm_id"]])
    return spec


def vm_argument_spec(vm_required: bool = True) -> ArgumentSpec:
    return connection_spec().merge(vm_selector_spec(vm_required))
