# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""An argument spec that carries its constraints, so shared pieces merge in one call."""

from __future__ import annotations

import copy
import typing as t
import urllib.parse

from ansible.module_utils.basic import AnsibleModule

_CONSTRAINTS = ("mutually_exclusive", "required_together", "required_one_of", "required_if", "required_by")


class ArgumentSpec:
    """Options plus mutually_exclusive, required_if, ... lists; ``merge`` joins two of them."""

    def __init__(self, argument_spec: dict[str, t.Any] | None = None, **constraints: t.Any) -> None:
        unknown = set(constraints) - set(_CONSTRAINTS)
        if unknown:
            raise ValueError(f"unknown constraint(s): {', '.join(sorted(unknown))}")
        self.argument_spec: dict[str, t.Any] = copy.deepcopy(argument_spec or {})
        self.constraints: dict[str, t.Any] = {
            name: copy.deepcopy(constraints.get(name) or ({} if name == "required_by" else []))
            for name in _CONSTRAINTS
        }

    def update_argspec(self, **options: t.Any) -> ArgumentSpec:
        self.argument_spec.update(options)
        return self

    def update(self, **constraints: t.Any) -> ArgumentSpec:
        for name, value in constraints.items():
            if name == "required_by":
                self.constraints[name].update(value)
            else:
                self.constraints[name].extend(value)
        return self

    def merge(self, other: ArgumentSpec) -> ArgumentSpec:
        self.argument_spec.update(copy.deepcopy(other.argument_spec))
        return self.update(**copy.deepcopy(other.constraints))

    def create_ansible_module(self, **kwargs: t.Any) -> AnsibleModule:
        return AnsibleModule(argument_spec=self.argument_spec, **self.constraints, **kwargs)


def mask_url_passwords(module: t.Any, options: t.Iterable[str] = ("repository",)) -> None:
    """Add a password written into a URL option (``sftp://user:pw@host/...``) to the module's no_log values, so
    that Ansible masks it in ``invocation``, messages and results even though the option itself is not secret.
    The engine then refuses such a URL (the password belongs in its own no_log option)."""
    for option in options:
        value = module.params.get(option)
        if isinstance(value, str) and "://" in value:
            try:
                password = urllib.parse.urlsplit(value).password
            except ValueError:
                continue
            if password:
                module.no_log_values.update({password, urllib.parse.unquote(password)})
