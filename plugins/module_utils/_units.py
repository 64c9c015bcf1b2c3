# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
# PRIVATE to this collection; no compatibility guarantees.
"""Parsing of the human units users type: durations ("36h", "7d") and sizes ("10GiB")."""

from __future__ import annotations

import datetime
import re

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: str | int, option: str) -> datetime.timedelta:
    """Return the timedelta of "90m", "36h", "7d", "2w", "1d12h" or a bare number of seconds.

    Raises InvalidArgument naming the option and the accepted forms.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidArgument(f"{option} must not be negative, got {value}.")
        return datetime.timedelta(seconds=value)
    text = str(value).strip().lower()
    if text.isdigit():
        return datetime.timedelta(seconds=int(text))
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if text[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise InvalidArgument(
            f"Invalid {option} '{value}': use a number followed by a unit s, m, h, d or w, "
            f"for example '90m', '36h', '7d' or '1d12h'."
        )
    return datetime.timedelta(seconds=total)


def parse_size(value: str | int, option: str) -> int:
    """Return bytes for "512MiB", "10GB", "1.5TiB" or a bare number of bytes; raises InvalidArgument."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise InvalidArgument(
            f"Invalid {option} '{value}': use a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), "
            f"for example '500MiB' or '10GB'."
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_duration(seconds: float) -> str:
    """Return a short human form such as "3d4h" or "12m"."""
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return "".join(parts) or f"{seconds}s"
