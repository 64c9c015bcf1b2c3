# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Connection and VM-selector options shared by every module (see the doc fragments of the same names)."""

from __future__ import annotations

from ansible.module_utils.basic import env_fallback

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec

HYPERVISORS = ["libvirt", "hyperv"]


def connection_spec() -> ArgumentSpec:
    """Options that choose and reach the hypervisor (doc fragment vmsafe.protect.connection)."""
    return ArgumentSpec({
        "hypervisor": {"type": "str", "default": "libvirt", "choices": HYPERVISORS,
                       "fallback": (env_fallback, ["VMSAFE_HYPERVISOR"])},
        "uri": {"type": "str", "fallback": (env_fallback, ["VMSAFE_LIBVIRT_URI", "LIBVIRT_DEFAULT_URI"])},
        "connect_timeout": {"type": "int", "default": 30},
        # --- Hyper-V (WinRM) options; hostname/username/password/port/validate_certs are shared with VMware ---
        "hostname": {"type": "str", "fallback": (env_fallback, ["VMSAFE_HOST"])},
        "username": {"type": "str", "fallback": (env_fallback, ["VMSAFE_USER"])},
        "password": {"type": "str", "no_log": True, "fallback": (env_fallback, ["VMSAFE_PASSWORD"])},
        "port": {"type": "int"},
        "validate_certs": {"type": "bool", "default": True},
        "transport": {"type": "str", "default": "ntlm", "choices": ["ntlm", "kerberos", "credssp", "certificate"]},
        "ca_path": {"type": "path"},
        "client_cert": {"type": "path"},
        "client_key": {"type": "path", "no_log": False},
        # --- end of Hyper-V options ---
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
