# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Standard attribute texts shared by the modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
"""

    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
"""

    ACTIONGROUP_VMSAFE = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/vmsafe.protect.vmsafe) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - vmsafe.protect.vmsafe
"""

    ACTIONGROUP_BACKUP = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/vmsafe.protect.backup) in C(module_defaults) to set the repository options once.
    support: full
    membership:
      - vmsafe.protect.backup
"""

    ACTIONGROUP_VMSAFE_BACKUP = r"""
options: {}
attributes:
  action_group:
    description:
      - Use C(group/vmsafe.protect.vmsafe) in C(module_defaults) for the connection options, and
        C(group/vmsafe.protect.backup) for the repository options.
    support: full
    membership:
      - vmsafe.protect.vmsafe
      - vmsafe.protect.backup
"""
