"""A worker thread that takes items off the request path (fidelity scoring, data drift).

The request path only offers (``put_nowait``; a full queue drops the item, counted by the
caller), the thread does the work, and :meth:`OffPathWorker.stop` lets it finish what is
queued, bounded in time: the thread is a daemon, so a stuck worker never holds the
process past the timeout.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class OffPathWorker(Generic[T]):
    """A bounded queue of ``T`` and the daemon thread that drains it (:meth:`_run`)."""

    def __init__(self, name: str, queue_size: int) -> None:
        self._queue: queue.Queue[T | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish what is queued, then end the thread (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(max(deadline - time.monotonic(), 0.0))

    def _put(self, item: T) -> bool:
        """Queue ``item`` without waiting; False when the queue is full (dropped)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        raise NotImplementedError
