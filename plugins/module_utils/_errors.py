# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""The error tree. ``str(exc)`` is shown to the user as-is, so it names the problem and the fix."""

from __future__ import annotations


class VmsafeError(Exception):
    """Base class of every error the collection raises on purpose."""


class InvalidArgument(VmsafeError):
    """An option value the module cannot use (bad duration, unknown size unit, ...)."""


class ConnectionFailed(VmsafeError):
    """The hypervisor could not be reached or refused the login."""


class VmNotFound(VmsafeError):
    """No VM matches the selector."""


class SnapshotNotFound(VmsafeError):
    """No snapshot matches the name or id."""


class AmbiguousSnapshot(VmsafeError):
    """More than one snapshot has the requested name."""


class UnsupportedOperation(VmsafeError):
    """The hypervisor or the VM's current state cannot do what was asked."""


class QuiesceFailed(VmsafeError):
    """The guest file systems could not be frozen and the fallback is ``fail``."""


class OperationTimeout(VmsafeError):
    """A hypervisor operation did not finish within ``timeout`` seconds."""


class Busy(VmsafeError):
    """Another job (backup, block job, migration) holds the VM."""


class ProviderError(VmsafeError):
    """The hypervisor SDK reported an error we did not expect; the cause is chained."""
