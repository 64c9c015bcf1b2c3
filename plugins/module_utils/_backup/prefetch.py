# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Read ahead in a thread: a disk source's reads overlap the backup engine's work on earlier data.

Socket and file reads release the GIL, so while the reader waits for the hypervisor or the disk the main thread
keeps hashing and queueing chunks. The items must stay valid after the producer moves on (copies, not views).

PRIVATE to this collection; no compatibility guarantees.
"""

from __future__ import annotations

import queue
import threading
import typing as t

T = t.TypeVar("T")

_END = object()


def prefetched(items: t.Iterable[T], depth: int = 4, name: str = "vmsafe-read-ahead") -> t.Iterator[T]:
    """Yield what ``items`` yields, produced up to ``depth`` items ahead by a daemon thread.

    An exception in the producer is raised in the consumer at the same position. When the consumer
    stops early (close(), an exception), the producer is told to stop and its iterator is closed.
    """
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def offer(item: t.Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not offer((item, None)):
                    return
            offer((_END, None))
        except BaseException as exc:  # pylint: disable=broad-except  # handed to the consumer, raised there
            offer((_END, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=30)
