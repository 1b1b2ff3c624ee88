"""The adaptive batcher: a bounded queue in front of worker threads running the model.

The event loop only appends to the queue (a short lock) and awaits a future; worker
threads form batches (up to the AIMD row limit), run onnxruntime (which releases the
GIL), and hand results back with one ``call_soon_threadsafe`` per batch.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from recserve_runtime.server.metrics import ServerMetrics
from recserve_runtime.server.policy import AIMD, Admission, CostModel, Limits

RunFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Overloaded(Exception):
    """The request was not admitted; ``retry_after_s`` says when to come back."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The client's deadline passed while the request was queued."""


@dataclass
class _Item:
    sparse: np.ndarray
    dense: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float | None

    @property
    def rows(self) -> int:
        return int(self.sparse.shape[0])


class Batcher:
    """Bounded, adaptive batch queue with ``workers`` model threads."""

    def __init__(
        self,
        run: RunFn,
        limits: Limits,
        metrics: ServerMetrics,
        workers: int = 1,
        emulate_us_per_row: float = 0.0,
        emulate_us_per_batch: float = 0.0,
    ) -> None:
        self._run = run
        self.limits = limits
        self.metrics = metrics
        self.workers = workers
        self.set_emulation(emulate_us_per_row, emulate_us_per_batch)
        self.aimd = AIMD(limits)
        self.cost = CostModel()
        self.admission = Admission(limits, self.cost)
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._running_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the worker threads; results are delivered on ``loop``."""
        self._loop = loop
        self.metrics.batch_limit.set(self.aimd.current)
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"recserve-batch-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let the workers finish what is queued, then end them (blocking)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout_s)

    @property
    def depth(self) -> int:
        """Queued requests."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """Work queued or running."""
        return bool(self._queue) or self._running_rows > 0

    def set_emulation(self, us_per_row: float, us_per_batch: float) -> None:
        """The emulated device's cost per row and per batch (microseconds; 0 and 0: off).
        Read by each batch as it runs: a change applies from the next batch."""
        self.emulate_s_per_row = us_per_row / 1e6
        self.emulate_s_per_batch = us_per_batch / 1e6

    def set_limits(self, limits: Limits) -> None:
        """Apply new limits at run time (admin endpoint)."""
        limits.validate()
        with self._cond:
            for name in Limits.__dataclass_fields__:
                setattr(self.limits, name, getattr(limits, name))
            self.aimd.current = max(
                limits.min_batch_rows, min(limits.max_batch_rows, self.aimd.current)
            )
            self.metrics.batch_limit.set(self.aimd.current)
            self._cond.notify_all()

    # --- event-loop side ------------------------------------------------------------

    def precheck(self) -> Overloaded | None:
        """Cheap admission check before the body is parsed (rejects when even a 1-row
        request would not be admitted), so overload is shed before spending CPU on it."""
        with self._cond:
            if self._stopping:
                return Overloaded("draining", 1.0)
            ok, retry = self.admission.admit(
                len(self._queue),
                self._queued_rows + self._running_rows,
                1,
                self.aimd.current,
                self.workers,
            )
        if ok:
            return None
        reason = "queue_full" if len(self._queue) >= self.limits.max_queue else "slo"
        return Overloaded(reason, retry)

    def submit(
        self, sparse: np.ndarray, dense: np.ndarray, deadline: float | None = None
    ) -> asyncio.Future[np.ndarray]:
        """Queue one request's rows; raises Overloaded when not admitted (never blocks)."""
        assert self._loop is not None, "start() first"
        rows = int(sparse.shape[0])
        with self._cond:
            if self._stopping:
                raise Overloaded("draining", 1.0)
            ok, retry = self.admission.admit(
                len(self._queue),
                self._queued_rows + self._running_rows,
                rows,
                self.aimd.current,
                self.workers,
            )
            if not ok:
                reason = "queue_full" if len(self._queue) >= self.limits.max_queue else "slo"
                raise Overloaded(reason, retry)
            fut: asyncio.Future[np.ndarray] = self._loop.create_future()
            self._queue.append(_Item(sparse, dense, fut, time.perf_counter(), deadline))
            self._queued_rows += rows
            self.metrics.queue_depth.set(len(self._queue))
            self.metrics.queue_rows.set(self._queued_rows)
            self._cond.notify()
        return fut

    # --- worker side --------------------------------------------------------------

    def _take(self) -> list[_Item] | None:
        """Block until a batch is ready; None when stopping and empty."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            delay = self.limits.max_queue_delay_s
            if delay > 0:
                until = self._queue[0].enqueued + delay
                while self._queued_rows < self.aimd.current and not self._stopping:
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    if not self._queue:
                        return []
            limit = self.aimd.current
            items: list[_Item] = []
            rows = 0
            while self._queue and (not items or rows + self._queue[0].rows <= limit):
                item = self._queue.popleft()
                items.append(item)
                rows += item.rows
            self._queued_rows -= rows
            self._running_rows += rows
            self.metrics.queue_depth.set(len(self._queue))
            self.metrics.queue_rows.set(self._queued_rows)
            return items

    def _worker(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            if not items:
                continue
            taken_rows = sum(i.rows for i in items)
            now = time.perf_counter()
            live = [i for i in items if i.deadline is None or i.deadline > now]
            expired = [i for i in items if not (i.deadline is None or i.deadline > now)]
            for i in live:
                self.metrics.queue_seconds.observe(now - i.enqueued)
            result: list[tuple[_Item, np.ndarray | BaseException]] = [
                (i, DeadlineExceeded()) for i in expired
            ]
            if expired:
                self.metrics.rejected.labels("deadline").inc(len(expired))
            if live:
                result += self._compute(live)
            with self._cond:
                self._running_rows -= taken_rows
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(_deliver, result)

    def _compute(self, items: list[_Item]) -> list[tuple[_Item, np.ndarray | BaseException]]:
        sparse = items[0].sparse if len(items) == 1 else np.concatenate([i.sparse for i in items])
        dense = items[0].dense if len(items) == 1 else np.concatenate([i.dense for i in items])
        rows = int(sparse.shape[0])
        start = time.perf_counter()
        try:
            scores = self._run(sparse, dense)
        except Exception as exc:  # a model failure fails this batch, not the server
            return [(i, exc) for i in items]
        took = time.perf_counter() - start
        if self.emulate_s_per_row > 0 or self.emulate_s_per_batch > 0:
            # benchmark aid: a slower device, without using CPU
            device_s = self.emulate_s_per_batch + rows * self.emulate_s_per_row
            if device_s > took:
                time.sleep(device_s - took)
                took = device_s
        with self._cond:
            self.cost.observe(rows, took)
            limit = self.aimd.observe(rows, took)
        self.metrics.compute_seconds.observe(took)
        self.metrics.batch_rows.observe(rows)
        self.metrics.batch_requests.observe(len(items))
        self.metrics.batch_limit.set(limit)
        out: list[tuple[_Item, np.ndarray | BaseException]] = []
        pos = 0
        for i in items:
            out.append((i, scores[pos : pos + i.rows]))
            pos += i.rows
        return out


def _deliver(result: list[tuple[_Item, np.ndarray | BaseException]]) -> None:
    for item, value in result:
        if item.future.done():  # client went away
            continue
        if isinstance(value, BaseException):
            item.future.set_exception(value)
        else:
            item.future.set_result(value)
