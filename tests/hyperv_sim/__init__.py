# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""A small WS-Management (WinRM) simulator of a Hyper-V host, for tests only. See server.py."""
