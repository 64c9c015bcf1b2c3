# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Read-ahead: same items in the same order, errors at the same place, and an early stop stops the reader."""

from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.prefetch import prefetched


def test_same_items_in_order_and_read_ahead():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    out = prefetched(source(), depth=3)
    assert next(out) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    # one handed over, up to three queued, one blocked in put(): the reader ran ahead but within bounds
    assert 3 <= len(produced) <= 5
    assert [0] + list(out) == list(range(50))


def test_error_is_raised_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise OSError("disk went away")

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for item in prefetched(source()):
            got.append(item)
    assert got == [1, 2]


def test_consumer_stopping_early_stops_and_closes_the_reader():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    out = prefetched(source(), depth=2)
    assert [next(out), next(out), next(out)] == [0, 1, 2]
    out.close()
    assert closed.wait(5), "the reader thread kept running after the consumer stopped"
    assert not any(th.name == "vmsafe-read-ahead" and th.is_alive() for th in threading.enumerate())
