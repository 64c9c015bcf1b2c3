# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Make ``ansible_collections.vmsafe.protect`` importable from this checkout, whatever its folder is called."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".lab", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "vmsafe", "protect")

if not os.path.islink(LINK) or os.path.realpath(LINK) != ROOT:
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    if os.path.lexists(LINK):
        os.unlink(LINK)
    os.symlink(ROOT, LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
os.environ["VMSAFE_COLLECTIONS_PATH"] = COLLECTIONS
