# SPDX-License-Identifier: GPL-3.0-or-later
"""Microsoft's cmdlet and CIM reference, as data, and a checker for the shipped PowerShell scripts."""
