"""A bounded sample of the rows a server has answered lately, for recalibration.

A statically quantized variant's activation ranges were calibrated on training rows;
when live inputs move away from them, `recserve recalibrate` calibrates again on what
the servers actually see. Each server keeps a reservoir sample (Li's algorithm L: every
row of a window is in it with the same probability) of at most ``capacity`` model input
rows: the sparse ids and dense values the model was run on, nothing else (no request
ids, headers or scores). It is served on the admin port only
(``GET /admin/request-sample``, an ``.npz`` of ``sparse``, ``dense`` and ``seen``).

*Lately*: with ``window_s`` the sample is uniform over the rows of the current window
and the one before it (one to two windows back), not over the server's whole life. A
uniform sample of a long-running server is mostly rows from before the inputs moved:
`recserve bench drift` after 15 minutes of steady load had about 3% of its rows from after the
shift, and the recalibration on it ranked worse than the old variant (0.899 -> 0.872).
The operator sets the window to the drift policy's ``sustainedSeconds``: drift is acted
on only after that long, so the rows are mostly from after the inputs moved.

Written here rather than taken from a library: the sample is preallocated numpy arrays
filled by index, and the request path pays a comparison per answered request once a
window's reservoir is full (algorithm L); a general streaming library would keep Python
objects per row.
"""

from __future__ import annotations

import io
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class SampleRows:
    """A copy of the sample: ``sparse`` int64 [n, F], ``dense`` float32 [n, D], and how
    many rows the server answered in the time it covers (``seen`` >= n)."""

    sparse: np.ndarray
    dense: np.ndarray
    seen: int

    def __len__(self) -> int:
        return int(self.sparse.shape[0])

    def to_npz(self) -> bytes:
        """The wire form (numpy's .npz, no pickled objects)."""
        buf = io.BytesIO()
        np.savez(buf, sparse=self.sparse, dense=self.dense, seen=np.int64(self.seen))
        return buf.getvalue()

    @staticmethod
    def from_npz(data: bytes) -> SampleRows:
        """Parse :meth:`to_npz`'s bytes; ValueError when they are not such a sample."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                sparse, dense, seen = npz["sparse"], npz["dense"], int(npz["seen"])
        except (OSError, EOFError, KeyError, ValueError) as exc:
            raise ValueError(f"not a request sample: {exc}") from None
        if sparse.ndim != 2 or dense.ndim != 2 or len(sparse) != len(dense):
            raise ValueError(f"not a request sample: shapes {sparse.shape} and {dense.shape}")
        return SampleRows(sparse.astype(np.int64), dense.astype(np.float32), seen)

    @staticmethod
    def concat(parts: list[SampleRows]) -> SampleRows:
        """Several servers' samples as one (their widths must agree)."""
        return SampleRows(
            np.concatenate([p.sparse for p in parts]),
            np.concatenate([p.dense for p in parts]),
            sum(p.seen for p in parts),
        )


class _Reservoir:
    """One window's uniform reservoir (algorithm L), preallocated."""

    def __init__(self, capacity: int, n_sparse: int, n_dense: int, rng: random.Random):
        self.capacity = capacity
        self.sparse = np.zeros((capacity, n_sparse), np.int64)
        self.dense = np.zeros((capacity, n_dense), np.float32)
        self.seen = 0
        self._rng = rng
        self._w = 1.0
        self._next: float = math.inf  # the row number that next replaces a slot

    def clear(self) -> None:
        self.seen, self._w, self._next = 0, 1.0, math.inf

    def held(self) -> int:
        return min(self.seen, self.capacity)

    def _u(self) -> float:
        return self._rng.random() or sys.float_info.min  # in (0, 1): log() is defined

    def _skip(self, after: int) -> None:
        """Draw the next replacing row after row ``after`` (algorithm L)."""
        self._w *= math.exp(math.log(self._u()) / self.capacity)
        self._next = after + math.floor(math.log(self._u()) / math.log1p(-self._w)) + 1

    def offer(self, sparse: np.ndarray, dense: np.ndarray) -> None:
        rows, seen, cap = len(sparse), self.seen, self.capacity
        fill = max(0, min(rows, cap - seen))  # slots still empty: taken in order
        if fill:
            self.sparse[seen : seen + fill] = sparse[:fill]
            self.dense[seen : seen + fill] = dense[:fill]
            if seen + fill == cap:
                self._skip(cap - 1)
        while self._next < seen + rows:
            row, slot = int(self._next) - seen, self._rng.randrange(cap)
            self.sparse[slot] = sparse[row]
            self.dense[slot] = dense[row]
            self._skip(int(self._next))
        self.seen = seen + rows


class RequestSample:
    """Reservoir sample of answered rows (thread-safe), uniform over the current and
    the previous window of ``window_s`` seconds (0: over every row answered). Once a
    window's reservoir is full it is Li's algorithm L: the number of rows to pass over
    before the next one replaces a slot is drawn ahead, so a request that brings no
    replacement costs a comparison, not a random draw per row on the request path."""

    def __init__(
        self,
        capacity: int,
        n_sparse: int,
        n_dense: int,
        seed: int | None = None,
        window_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if window_s < 0:
            raise ValueError(f"window_s must be 0 or more, got {window_s}")
        self.capacity = capacity
        self.window_s = window_s
        self._rng = random.Random(seed)
        self._current = _Reservoir(capacity, n_sparse, n_dense, self._rng)
        self._previous = _Reservoir(capacity, n_sparse, n_dense, self._rng)
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()

    def _roll(self) -> None:
        """Start a new window when the current one is over (the previous one is
        dropped; after a quiet spell of two windows or more, both are)."""
        if not self.window_s:
            return
        now = self._clock()
        over = (now - self._started) // self.window_s
        if over < 1:
            return
        self._current, self._previous = self._previous, self._current
        self._current.clear()
        if over >= 2:
            self._previous.clear()
        self._started += over * self.window_s

    def offer(self, sparse: np.ndarray, dense: np.ndarray) -> None:
        """Consider the rows of one answered request."""
        if len(sparse) == 0:
            return
        with self._lock:
            self._roll()
            self._current.offer(sparse, dense)

    def snapshot(self) -> SampleRows:
        """A copy of the rows held now: uniform over the two windows' rows (each
        window's reservoir thinned to its share of the rows answered)."""
        with self._lock:
            self._roll()
            parts = [r for r in (self._current, self._previous) if r.seen]
            seen = sum(r.seen for r in parts)
            if len(parts) < 2:
                held = parts[0].held() if parts else 0
                src = parts[0] if parts else self._current
                return SampleRows(src.sparse[:held].copy(), src.dense[:held].copy(), seen)
            sparse, dense = [], []
            room = self.capacity
            for r in parts:
                take = min(r.held(), room, round(self.capacity * r.seen / seen))
                rows = sorted(self._rng.sample(range(r.held()), take))
                sparse.append(r.sparse[rows])
                dense.append(r.dense[rows])
                room -= take
            return SampleRows(np.concatenate(sparse), np.concatenate(dense), seen)
