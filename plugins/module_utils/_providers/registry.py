# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Provider name -> class, imported only when picked.

AnsiballZ finds module_utils by reading every import statement of a module, function bodies included, so each
provider still ships with every module; importing (and, from AnsiballZ's zip, compiling) only the one a task uses
saves the others' cost on every task. Each provider also imports its SDK only then (``load_sdk``).
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider

Loaded = t.Tuple[t.Type["HypervisorProvider"], t.Optional[str]]  # provider class, SDK import traceback or None


def _azure() -> Loaded:
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import azure  # pylint: disable=import-outside-toplevel

    return azure.AzureProvider, azure.load_sdk()


def _hyperv() -> Loaded:
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv  # pylint: disable=import-outside-toplevel

    return hyperv.HypervProvider, hyperv.load_sdk()


def _libvirt() -> Loaded:
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import libvirt  # pylint: disable=import-outside-toplevel

    return libvirt.LibvirtProvider, libvirt.load_sdk()


def _vmware() -> Loaded:
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware  # pylint: disable=import-outside-toplevel

    return vmware.VmwareProvider, vmware.load_sdk()


def _virtualbox() -> Loaded:
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers import virtualbox  # pylint: disable=import-outside-toplevel

    return virtualbox.VirtualboxProvider, virtualbox.load_sdk()


# name -> (loader returning the provider class and its SDK import traceback, pip package it needs)
PROVIDERS: dict[str, tuple[t.Callable[[], Loaded], str]] = {
    "azure": (_azure, "azure-mgmt-compute, azure-identity and azure-storage-blob"),
    "hyperv": (_hyperv, "pywinrm"),
    "libvirt": (_libvirt, "libvirt-python"),
    "virtualbox": (_virtualbox, "paramiko"),
    "vmware": (_vmware, "pyvmomi"),
}
