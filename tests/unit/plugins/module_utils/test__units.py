# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
from __future__ import annotations

import datetime

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._errors import InvalidArgument
from ansible_collections.vmsafe.protect.plugins.module_utils._units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [
    ("36h", 36 * 3600), ("7d", 7 * 86400), ("90m", 5400), ("2w", 14 * 86400), ("1d12h", 129600),
    ("45s", 45), ("3600", 3600), (" 1h 30m ", 5400), ("1.5h", 5400), (0, 0), (120, 120),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text, "older_than") == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7 days", "h", "-1d", "1y", "7d-", "d7", "1.2.3h"])
def test_parse_duration_rejects_with_the_option_and_examples(text):
    with pytest.raises(InvalidArgument, match=r"Invalid older_than .*'36h', '7d'"):
        parse_duration(text, "older_than")


@pytest.mark.parametrize("text, size", [
    ("500MiB", 500 * 1024**2), ("10GB", 10 * 1000**3), ("1.5TiB", int(1.5 * 1024**4)), ("4096", 4096),
    ("1k", 1000), (77, 77), ("2 gib", 2 * 1024**3),
])
def test_parse_size(text, size):
    assert parse_size(text, "larger_than") == size


@pytest.mark.parametrize("text", ["big", "10XB", "", "1e5"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidArgument, match="Invalid larger_than"):
        parse_size(text, "larger_than")


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (60, "1m"), (3 * 86400 + 4 * 3600 + 5, "3d4h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
