# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Connection and VM-selector options shared by every module (see the doc fragments of the same names)."""

from __future__ import annotations

from ansible.module_utils.basic import env_fallback

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec

HYPERVISORS = ["libvirt", "vmware", "hyperv", "azure"]
AZURE_CLOUDS = ["AzureCloud", "AzureChinaCloud", "AzureUSGovernment"]


def connection_spec() -> ArgumentSpec:
    """Options that choose and reach the hypervisor (doc fragment vmsafe.protect.connection)."""
    return ArgumentSpec({
        "hypervisor": {"type": "str", "default": "libvirt", "choices": HYPERVISORS,
                       "fallback": (env_fallback, ["VMSAFE_HYPERVISOR"])},
        "uri": {"type": "str", "fallback": (env_fallback, ["VMSAFE_LIBVIRT_URI", "LIBVIRT_DEFAULT_URI"])},
        "connect_timeout": {"type": "int", "default": 30},
        # vmware and hyperv; names and VMWARE_* variables as in vmware.vmware and community.vmware
        "hostname": {"type": "str", "fallback": (env_fallback, ["VMSAFE_HOST", "VMWARE_HOST"])},
        "username": {"type": "str", "aliases": ["user", "admin"],
                     "fallback": (env_fallback, ["VMSAFE_USER", "VMWARE_USER"])},
        "password": {"type": "str", "aliases": ["pass", "pwd"], "no_log": True,
                     "fallback": (env_fallback, ["VMSAFE_PASSWORD", "VMWARE_PASSWORD"])},
        # No default: 443 for vSphere, 5986 (WinRM HTTPS) for Hyper-V, chosen by each provider.
        "port": {"type": "int", "fallback": (env_fallback, ["VMWARE_PORT"])},
        "validate_certs": {"type": "bool", "default": True, "fallback": (env_fallback, ["VMWARE_VALIDATE_CERTS"])},
        # vmware only
        "datacenter": {"type": "str"},
        "folder": {"type": "str"},
        # hyperv only
        "transport": {"type": "str", "default": "ntlm", "choices": ["ntlm", "kerberos", "credssp", "certificate"]},
        "ca_path": {"type": "path"},
        "client_cert": {"type": "path"},
        "client_key": {"type": "path", "no_log": False},
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
