# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Provider name -> class. Imports are static so that AnsiballZ ships every provider a module can pick;
each provider imports its SDK only when picked (``load_sdk``)."""

from __future__ import annotations

import typing as t

from ansible_collections.vmsafe.protect.plugins.module_utils._providers import hyperv as _hyperv
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import libvirt as _libvirt
from ansible_collections.vmsafe.protect.plugins.module_utils._providers import vmware as _vmware

if t.TYPE_CHECKING:  # pragma: no cover
    from ansible_collections.vmsafe.protect.plugins.module_utils._providers.base import HypervisorProvider

# name -> (provider class, pip package it needs, SDK loader returning the import traceback or None)
PROVIDERS: dict[str, tuple[type[HypervisorProvider], str, t.Callable[[], str | None]]] = {
    "hyperv": (_hyperv.HypervProvider, "pywinrm", _hyperv.load_sdk),
    "libvirt": (_libvirt.LibvirtProvider, "libvirt-python", _libvirt.load_sdk),
    "vmware": (_vmware.VmwareProvider, "pyvmomi", _vmware.load_sdk),
}
