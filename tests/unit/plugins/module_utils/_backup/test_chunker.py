# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""iter_chunks: whole chunks read in batches (one preadv for READ_BATCH chunks), short reads, partial chunks."""

from __future__ import annotations

import os
import threading
import typing as t

import pytest

from ansible_collections.vmsafe.protect.plugins.module_utils._backup.chunker import (
    FULL,
    PARTIAL,
    READ_BATCH,
    BufferPool,
    FileRange,
    PoolClosed,
    iter_chunks,
)

CHUNK = 4096


class ShortReader:
    """Reads from bytes at most ``most`` bytes per call, with or without readinto_many."""

    def __init__(self, data: bytes, offset: int, most: int, many: bool) -> None:
        self.data, self.pos, self.most, self.calls = data, offset, most, 0
        if many:
            self.readinto_many = self._many

    def readinto(self, buf: t.Any) -> int:
        return self._many([buf])

    def _many(self, bufs: t.Sequence[t.Any]) -> int:
        self.calls += 1
        total = 0
        for buf in bufs:
            count = min(len(buf), self.most - total, len(self.data) - self.pos)
            buf[:count] = self.data[self.pos:self.pos + count]
            self.pos += count
            total += count
            if count < len(buf):
                break
        return total


def assemble(pieces: t.Iterable[t.Any], pool: BufferPool, size: int) -> tuple[bytearray, list[int]]:
    out = bytearray(size)
    kinds = []
    for piece in pieces:
        start = piece.index * CHUNK
        if piece.kind == FULL:
            out[start:start + piece.length] = piece.buf[:piece.length]
        else:
            for lo, hi in piece.intervals:
                out[start + lo:start + hi] = piece.buf[lo:hi]
        kinds.append(piece.kind)
        pool.put(piece.buf)
    return out, kinds


@pytest.mark.parametrize("most", [10**9, 3 * CHUNK + 100, 1000])
@pytest.mark.parametrize("many", [True, False])
@pytest.mark.parametrize("slabs", [True, False])
def test_batched_reads_give_the_same_chunks_with_short_reads(most: int, many: bool, slabs: bool) -> None:
    size = 41 * CHUNK + 123  # a last partial chunk
    data = os.urandom(size)
    offset = CHUNK + 500  # an extent that starts inside a chunk
    reader = ShortReader(data, offset, most, many)
    pool = BufferPool(READ_BATCH + 2, CHUNK, slab_chunks=READ_BATCH if slabs else 0)
    out, kinds = assemble(iter_chunks([(offset, size - offset, reader)], size, CHUNK, pool), pool, size)
    assert out[offset:] == data[offset:] and out[:offset] == bytes(offset)
    assert kinds[0] == PARTIAL and kinds.count(PARTIAL) == 1 and len(kinds) == 41  # chunks 1..41
    if many and most > size:
        assert reader.calls < 10, "whole chunks are read READ_BATCH at a time"
    if slabs and many:
        kinds_of_buffers = set()
        for piece in iter_chunks([(0, size, ShortReader(data, 0, most, many))], size, CHUNK, pool):
            kinds_of_buffers.add(type(piece.buf))
            pool.put(piece.buf)
        assert memoryview in kinds_of_buffers, "whole chunks are views of a slab that one read filled"


def test_file_range_reads_many_buffers_in_one_call(tmp_path: t.Any) -> None:
    path = tmp_path / "img"
    data = os.urandom(READ_BATCH * CHUNK * 3)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        pool = BufferPool(READ_BATCH + 2, CHUNK)
        out, kinds = assemble(iter_chunks([(0, len(data), FileRange(fd, 0))], len(data), CHUNK, pool), pool, len(data))
    finally:
        os.close(fd)
    assert out == data and set(kinds) == {FULL}


def test_a_source_that_ends_early_is_an_error() -> None:
    size = 20 * CHUNK
    reader = ShortReader(os.urandom(size // 2), 0, 10**9, True)
    pool = BufferPool(READ_BATCH + 2, CHUNK)
    with pytest.raises(Exception, match="ended before"):
        assemble(iter_chunks([(0, size, reader)], size, CHUNK, pool), pool, size)


def test_the_pool_counts_chunks_not_buffers_and_close_wakes_a_waiter() -> None:
    """Slabs partly put back still count only their chunks out; a get blocks at the capacity in chunks and resumes
    when a chunk comes back; close() ends a blocked get with PoolClosed (the read-ahead thread of a failed backup)."""
    pool = BufferPool(8, CHUNK, slab_chunks=4)
    slabs = [pool.get_slab(4)[1] for _unused in range(2)]  # 8 chunks out: the capacity
    for views in slabs:
        for view in views[:3]:
            pool.put(view)  # 2 chunks still out, in two different slabs
    got = pool.get_slab(4)  # 6 out
    single = pool.get()  # 7 out
    assert len(got[0]) == 4 * CHUNK and len(single) == CHUNK
    results: list[t.Any] = []

    def take(count: int) -> None:
        try:
            results.append(pool.get_slab(count))
        except PoolClosed as exc:
            results.append(exc)

    waiter = threading.Thread(target=take, args=(2,))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), "9 chunks would be out: the get waits"
    pool.put(single)
    waiter.join(5)
    assert not waiter.is_alive() and isinstance(results[0], tuple)
    assert len(results[0][1]) == 2
    blocked = threading.Thread(target=take, args=(4,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()
    pool.close()
    blocked.join(5)
    assert not blocked.is_alive() and isinstance(results[1], PoolClosed)
    with pytest.raises(PoolClosed):
        pool.get()


def test_a_whole_slab_is_reused_only_when_all_its_chunks_are_back() -> None:
    pool = BufferPool(64, CHUNK, slab_chunks=4)
    whole, views = pool.get_slab(4)
    first = whole.obj
    for view in views[:3]:
        pool.put(view)
    again = pool.get_slab(4)[0]
    assert again.obj is not first, "a slab with a chunk still out is not handed out again"
    pool.put(views[3])
    assert pool.get_slab(4)[0].obj is first
