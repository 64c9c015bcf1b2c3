# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""The option names of the peer collections (vmware.vmware, community.vmware), where they mean what ours mean.

Only names whose meaning is the same are accepted: ``moid`` is a VM id on vSphere (vm_id already matches MoIDs),
``proxy_host``/``proxy_port`` route the vSphere connection through an HTTP proxy exactly as pyVmomi does for the
peers (CONNECT tunnel), with the same VMWARE_PROXY_* variables. docs/migrating.md lists every name.
"""

from __future__ import annotations

from ansible.module_utils.basic import env_fallback

from ansible_collections.vmsafe.protect.plugins.module_utils._argspec import ArgumentSpec


def proxy_spec() -> ArgumentSpec:
    """proxy_host / proxy_port (doc fragment vmsafe.protect.proxy), used by the vmware provider only."""
    return ArgumentSpec({
        "proxy_host": {"type": "str", "fallback": (env_fallback, ["VMWARE_PROXY_HOST"])},
        "proxy_port": {"type": "int", "fallback": (env_fallback, ["VMWARE_PROXY_PORT"])},
    })


def with_peer_options(spec: ArgumentSpec) -> ArgumentSpec:
    """Add the proxy options, and ``moid`` as an alias of ``vm_id`` when the spec selects a VM; return ``spec``."""
    spec.merge(proxy_spec())
    vm_id = spec.argument_spec.get("vm_id")
    if vm_id is not None:
        vm_id["aliases"] = list(vm_id.get("aliases") or []) + ["moid"]
    return spec
