# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""MapSegment.stored_count counts exactly the non-hole records, whatever bytes their lengths use."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.manifest import RECORD, MapSegment


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.just(0), st.integers(1, 2**32 - 1), st.sampled_from([1, 256, 65536, 1 << 24])),
                min_size=0, max_size=600))
def test_stored_count_matches_a_plain_count(lengths):
    seg = MapSegment(1000, len(lengths), 65536)
    for i, length in enumerate(lengths):
        seg.set(1000 + i, bytes([i % 256]) * 32, b"s" * 32, length)
    assert seg.stored_count() == sum(1 for length in lengths if length)
    assert seg.stored_count() == sum(1 for _i, _s, length in RECORD.iter_unpack(seg.buf) if length)
    if lengths:
        seg.clear(1000)
        assert seg.stored_count() == sum(1 for length in lengths[1:] if length)
