"""A bounded, uniform sample of the rows a server has answered, for recalibration.

A statically quantized variant's activation ranges were calibrated on training rows;
when live inputs move away from them, `recserve recalibrate` calibrates again on what
the servers actually see. Each server keeps a reservoir sample (Li's algorithm L:
every row answered so far is in it with the same probability) of at most ``capacity``
model input rows: the sparse ids and dense values the model was run on, nothing else (no
request ids, headers or scores). It is served on the admin port only
(``GET /admin/request-sample``, an ``.npz`` of ``sparse``, ``dense`` and ``seen``).

Written here rather than taken from a library: the sample is two preallocated numpy
arrays filled by index, and the request path pays a comparison per answered request
once the sample is full (algorithm L); a general streaming library would keep Python
objects per row.
"""

from __future__ import annotations

import io
import math
import random
import sys
import threading
from dataclasses import dataclass

import numpy as np

CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class SampleRows:
    """A copy of the sample: ``sparse`` int64 [n, F], ``dense`` float32 [n, D], and how
    many rows the server had answered (``seen`` >= n)."""

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


class RequestSample:
    """Reservoir sample of answered rows (thread-safe). Once full it is Li's algorithm L:
    the number of rows to pass over before the next one replaces a slot is drawn ahead,
    so a request that brings no replacement costs a comparison (replacements get rarer
    as ``capacity / rows seen``), not a random draw per row on the request path."""

    def __init__(self, capacity: int, n_sparse: int, n_dense: int, seed: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._sparse = np.zeros((capacity, n_sparse), np.int64)
        self._dense = np.zeros((capacity, n_dense), np.float32)
        self._seen = 0
        self._rng = random.Random(seed)
        self._w = 1.0
        self._next: float = math.inf  # the row number that next replaces a slot
        self._lock = threading.Lock()

    def _u(self) -> float:
        return self._rng.random() or sys.float_info.min  # in (0, 1): log() is defined

    def _skip(self, after: int) -> None:
        """Draw the next replacing row after row ``after`` (algorithm L)."""
        self._w *= math.exp(math.log(self._u()) / self.capacity)
        self._next = after + math.floor(math.log(self._u()) / math.log1p(-self._w)) + 1

    def offer(self, sparse: np.ndarray, dense: np.ndarray) -> None:
        """Consider the rows of one answered request."""
        rows = len(sparse)
        if rows == 0:
            return
        with self._lock:
            seen, cap = self._seen, self.capacity
            fill = max(0, min(rows, cap - seen))  # slots still empty: taken in order
            if fill:
                self._sparse[seen : seen + fill] = sparse[:fill]
                self._dense[seen : seen + fill] = dense[:fill]
                if seen + fill == cap:
                    self._skip(cap - 1)
            while self._next < seen + rows:
                row, slot = int(self._next) - seen, self._rng.randrange(cap)
                self._sparse[slot] = sparse[row]
                self._dense[slot] = dense[row]
                self._skip(int(self._next))
            self._seen = seen + rows

    def snapshot(self) -> SampleRows:
        """A copy of the rows held now."""
        with self._lock:
            n = min(self._seen, self.capacity)
            return SampleRows(self._sparse[:n].copy(), self._dense[:n].copy(), self._seen)
