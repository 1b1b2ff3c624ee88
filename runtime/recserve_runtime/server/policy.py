"""Batching and admission policy: pure logic, no threads, no clocks of its own.

* **Batch size** follows AIMD against a per-batch compute budget (Clipper): each batch
  that finishes under ``budget`` raises the row limit by ``step``; one over it cuts the
  limit by ``decrease``. Under light load the worker takes whatever is queued at once
  (no artificial wait), so latency stays minimal; under load batches grow by themselves
  up to the limit.
* **Queue delay**: an optional wait for more rows before a batch, capped by
  ``max_queue_delay_s`` (0 on CPU, where waiting buys little; useful on GPUs).
* **Admission** keeps accepted requests within the SLO: a request is admitted only if
  the work queued or running ahead of it plus one full batch (its own), at the measured
  cost per row, finish within ``admit_fraction`` of the SLO, and the queue holds fewer
  than ``max_queue`` requests.
  Otherwise the server answers 429 with Retry-After.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from recserve_runtime.artifacts import P99_TARGET_MS_DEFAULT


@dataclass
class Limits:
    """Run-time adjustable limits (admin endpoint / watched file)."""

    slo_p99_s: float = P99_TARGET_MS_DEFAULT / 1000
    max_batch_rows: int = 4096  # hard ceiling of the adaptive batch size
    min_batch_rows: int = 64
    max_queue: int = 1024  # hard cap on queued requests
    max_queue_delay_s: float = 0.0
    admit_fraction: float = 0.8  # share of the SLO the queue wait may use
    batch_budget_fraction: float = 0.25  # share of the SLO one batch's compute may use

    def validate(self) -> None:
        """Raise ValueError on an inconsistent combination."""
        if self.slo_p99_s <= 0:
            raise ValueError("slo_p99_ms must be > 0")
        if not 1 <= self.min_batch_rows <= self.max_batch_rows:
            raise ValueError("need 1 <= min_batch_rows <= max_batch_rows")
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if self.max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_ms must be >= 0")
        if not 0 < self.admit_fraction <= 1 or not 0 < self.batch_budget_fraction <= 1:
            raise ValueError("fractions must be in (0, 1]")


@dataclass
class AIMD:
    """Additive-increase / multiplicative-decrease of the batch row limit."""

    limits: Limits
    step: int = 64
    decrease: float = 0.5
    current: int = 0

    def __post_init__(self) -> None:
        if self.current <= 0:
            self.current = max(self.limits.min_batch_rows, min(512, self.limits.max_batch_rows))

    @property
    def budget_s(self) -> float:
        """Compute time one batch may take."""
        return self.limits.slo_p99_s * self.limits.batch_budget_fraction

    def observe(self, rows: int, compute_s: float) -> int:
        """Feed one finished batch; returns the new row limit."""
        lo, hi = self.limits.min_batch_rows, self.limits.max_batch_rows
        if compute_s > self.budget_s:
            self.current = int(self.current * self.decrease)
        elif rows >= self.current * 0.5:
            # only grow when the limit is actually being used
            self.current += self.step
        self.current = max(lo, min(hi, self.current))
        return self.current


@dataclass
class CostModel:
    """A batch's compute time as ``per_call_s + per_row_s x rows``, learnt from finished
    batches by exponentially weighted least squares (weight ``alpha`` per batch), plus an
    EWMA of batch sizes.

    Both terms are fitted because devices differ in which one dominates: a CPU's cost is
    mostly per row, a GPU's (and the emulated device of the benchmarks) has a large fixed
    cost per call. A per-row-only model charges that fixed cost to every row, so it
    overestimates a backlog run in large batches several times over and admission refuses
    work the server would finish well within the SLO (measured: 6-13% refused at p99
    150-270 ms against a 500 ms SLO, on a device of 40 ms + 0.15 ms per row). While batch
    sizes barely vary (light load: one request per batch) the two terms cannot be told
    apart; the fixed term then keeps its last estimate (at first the prior
    ``per_call_s``) and the per-row term takes the rest.

    One sample moves the estimate by at most 4x either way, so a single stall (the machine
    busy elsewhere) does not make admission refuse everything for a while.
    """

    alpha: float = 0.2
    per_row_s: float = 20e-6
    per_call_s: float = 100e-6
    batch_rows: float = 0.0
    _seen: int = 0
    # exponentially weighted moments of (rows, seconds) for the fit
    _mean_rows: float = 0.0
    _mean_s: float = 0.0
    _var_rows: float = 0.0
    _cov: float = 0.0

    def observe(self, rows: int, compute_s: float) -> None:
        """Update from one batch of ``rows`` rows that took ``compute_s`` seconds."""
        rows = max(rows, 1)
        if self._seen == 0:
            self.per_call_s = min(self.per_call_s, compute_s * 0.5)
            self.per_row_s = (compute_s - self.per_call_s) / rows
            self.batch_rows = float(rows)
            self._mean_rows, self._mean_s = float(rows), compute_s
            self._seen = 1
            return
        predicted = self.per_call_s + self.per_row_s * rows
        compute_s = min(max(compute_s, predicted / 4), predicted * 4)
        w = self.alpha
        d_rows, d_s = rows - self._mean_rows, compute_s - self._mean_s
        self._mean_rows += w * d_rows
        self._mean_s += w * d_s
        self._var_rows = (1 - w) * (self._var_rows + w * d_rows * d_rows)
        self._cov = (1 - w) * (self._cov + w * d_rows * d_s)
        self.batch_rows += w * (rows - self.batch_rows)
        self._seen += 1
        mean_rows, mean_s = self._mean_rows, self._mean_s
        if self._var_rows > (0.1 * mean_rows) ** 2:  # sizes vary enough to fit a slope
            slope = min(max(self._cov / self._var_rows, 0.0), mean_s / mean_rows)
            self.per_row_s = slope
            self.per_call_s = mean_s - slope * mean_rows
        else:
            self.per_call_s = min(self.per_call_s, mean_s)
            self.per_row_s = (mean_s - self.per_call_s) / mean_rows

    def seconds(self, rows: int, batch_rows: int) -> float:
        """Estimated compute time for ``rows`` rows run in batches of ``batch_rows``."""
        calls = math.ceil(rows / max(batch_rows, 1)) if rows else 0
        return rows * self.per_row_s + calls * self.per_call_s


@dataclass
class Admission:
    """Decides admit / reject for a new request given the queue ahead of it."""

    limits: Limits
    cost: CostModel = field(default_factory=CostModel)

    def wait_estimate_s(self, rows_ahead: int, rows: int, batch_rows: int, workers: int) -> float:
        """Worst-case time until a new request of ``rows`` rows is answered: the work ahead
        of it (shared by the workers) plus the batch it will ride in — itself alone when
        nothing is ahead (the worker takes it at once), else twice the recent batch size
        (later requests join it while it waits), within the row limit."""
        ahead = self.cost.seconds(rows_ahead, batch_rows) / max(workers, 1)
        if rows_ahead == 0:
            own = rows
        else:  # later arrivals join its batch: twice the usual batch, within the limit
            own = max(rows, min(batch_rows, int(2 * self.cost.batch_rows) or batch_rows))
        return ahead + self.cost.seconds(own, batch_rows)

    def admit(
        self, queued_requests: int, rows_ahead: int, rows: int, batch_rows: int, workers: int
    ) -> tuple[bool, float]:
        """(admitted, retry_after_s). ``rows_ahead`` counts queued and running rows."""
        if queued_requests >= self.limits.max_queue:
            return False, self.retry_after_s(rows_ahead, batch_rows, workers)
        wait = self.wait_estimate_s(rows_ahead, rows, batch_rows, workers)
        if wait > self.limits.slo_p99_s * self.limits.admit_fraction:
            return False, self.retry_after_s(rows_ahead, batch_rows, workers)
        return True, 0.0

    def retry_after_s(self, rows_ahead: int, batch_rows: int, workers: int) -> float:
        """When the current backlog will have drained."""
        return self.cost.seconds(rows_ahead, batch_rows) / max(workers, 1)


def retry_after_header(seconds: float) -> str:
    """HTTP Retry-After is whole seconds; at least 1."""
    return str(max(1, math.ceil(seconds)))
