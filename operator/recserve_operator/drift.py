"""Drift detectors: has a pool's performance left what its profile predicted? Pure.

* **Latency drift**: the servers' mean compute time per batch
  (``recserve_compute_duration_seconds``: the model call alone, no HTTP, no queueing)
  above the profile's p50 at their mean batch size by more than
  ``drift.latencyDriftBasisPoints``, in every sample of the last
  ``drift.sustainedSeconds``. Comparing compute with compute isolates the device: a
  queue that grows with load is the autoscaler's business, not drift. Means, not p99s:
  a call's cost is close to affine in its rows, so the mean over batches of mixed sizes
  is the cost at the mean size, while the p99 of that mix is the cost of its largest
  batches (compared with the profile's p99 at the mean size, a first version reported a
  2x "drift" on an unchanged emulated device: 63 ms against 31.7 ms at 244 mean rows).
* **Fidelity drift** (label-free accuracy): on a sampled share of live requests, the
  servers of a compressed variant also score the candidates with the FP32 reference
  variant, off the request path, and count the candidate pairs both order alike; that
  pairwise order agreement below ``drift.fidelityAgreementBasisPoints`` throughout the
  window is drift (the inputs moved away from what the variant was calibrated on).
* **Data drift**: the largest population stability index of an input column against
  the training data (:mod:`recserve_runtime.datadrift`; the servers bin what they are
  sent) above ``drift.dataDriftPsiThousandths`` in every sample of the window. The
  inputs, not the device or the variant, have moved: it is reported, not re-planned.
* **Capacity drift**: a saturated pool (refusing, or over its p99 target) whose replicas
  each serve less than the profile's capacity by more than
  ``drift.capacityDriftBasisPoints``, sustained the same way. Unsaturated samples say
  nothing about capacity and break the streak.

A detector needs the whole window covered by samples (a restart or a metrics gap starts
it again): it never reports drift from a single spike, nor from missing data.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from recserve_runtime.artifacts import log_interpolate


@dataclass(frozen=True)
class DriftRules:
    """The policy's drift fields, in seconds and basis points."""

    latency_bp: int
    capacity_bp: int
    sustained_s: float
    max_gap_s: float  # samples further apart than this break the window (metrics gap)


@dataclass(frozen=True)
class DriftSample:
    """One pool at one tick (None: not known at that tick)."""

    at: float
    compute_mean_s: float | None
    batch_rows: float | None
    per_replica_rps: float | None
    saturated: bool
    fidelity: float | None = None  # pairwise order agreement with the FP32 reference
    data_psi: float | None = None  # the largest PSI of an input column (data drift)
    data_feature: str | None = None  # that column


@dataclass(frozen=True)
class Finding:
    """Drift found: its cause and the evidence, in words and figures."""

    cause: str  # "latency", "capacity", "fidelity" or "data"
    evidence: str
    observed: float
    expected: float


def _window(samples: Sequence[DriftSample], now: float, rules: DriftRules) -> list[DriftSample]:
    """The samples of the last ``sustained_s`` if they cover it without gaps, else []."""
    recent = [s for s in samples if now - s.at <= rules.sustained_s]
    if not recent:
        return []
    older = [s for s in samples if now - s.at > rules.sustained_s]
    start = older[-1].at if older else recent[0].at
    if now - start < rules.sustained_s:  # not watched long enough
        return []
    times = [start, *(s.at for s in recent)]
    if any(b - a > rules.max_gap_s for a, b in itertools.pairwise(times)):
        return []
    return recent


def expected_call_s(profile_p50_s: Sequence[tuple[int, float]], rows: float) -> float | None:
    """The profile's p50 of one call of ``rows`` rows: interpolated in log rows within the
    profiled sizes, extended as ``a + b x rows`` (from the two largest) beyond them.
    Batch tuning may raise the ceiling past the largest profiled batch; taking that
    batch's time there (a first version did) reported a 31% "drift" on an unchanged
    emulated device (34.5 ms measured at 290 rows, 26.4 ms profiled at 128)."""
    known = sorted(profile_p50_s)
    if len(known) >= 2 and rows > known[-1][0]:
        (x0, y0), (x1, y1) = known[-2], known[-1]
        return y1 + max(y1 - y0, 0.0) / (x1 - x0) * (rows - x1)
    return log_interpolate(known, rows)


def latency_drift(
    samples: Sequence[DriftSample],
    profile_p50_s: Sequence[tuple[int, float]],
    rules: DriftRules,
    now: float,
) -> Finding | None:
    """Latency drift of one pool (see the module docstring); ``profile_p50_s``: the
    profile's (batch rows, p50 seconds of one call) points (interpolated in log rows)."""
    window = _window(samples, now, rules)
    if not window:
        return None
    factor = 1 + rules.latency_bp / 10000
    ratios = []
    for s in window:
        if s.compute_mean_s is None or s.batch_rows is None:
            return None
        expected = expected_call_s(profile_p50_s, s.batch_rows)
        if expected is None or expected <= 0 or s.compute_mean_s <= expected * factor:
            return None
        ratios.append((s.compute_mean_s / expected, s.compute_mean_s, expected, s.batch_rows))
    least, observed, expected, rows = min(ratios)
    return Finding(
        "latency",
        f"mean compute {observed * 1000:.1f} ms per batch of {rows:.0f} rows, the profile's "
        f"p50 {expected * 1000:.1f} ms: at least {least - 1:.0%} slower for "
        f"{rules.sustained_s:.0f} s (threshold {rules.latency_bp / 100:.0f}%)",
        observed,
        expected,
    )


def capacity_drift(
    samples: Sequence[DriftSample], profiled_rps: float, rules: DriftRules, now: float
) -> Finding | None:
    """Capacity drift of one pool (see the module docstring)."""
    window = _window(samples, now, rules)
    if not window or profiled_rps <= 0:
        return None
    floor = profiled_rps * (1 - rules.capacity_bp / 10000)
    served = []
    for s in window:
        if not s.saturated or s.per_replica_rps is None or s.per_replica_rps >= floor:
            return None
        served.append(s.per_replica_rps)
    worst = max(served)
    return Finding(
        "capacity",
        f"saturated replicas serve at most {worst:.1f} req/s each, the profile says "
        f"{profiled_rps:.1f}: {1 - worst / profiled_rps:.0%} less for "
        f"{rules.sustained_s:.0f} s (threshold {rules.capacity_bp / 100:.0f}%)",
        worst,
        profiled_rps,
    )


def fidelity_drift(
    samples: Sequence[DriftSample], floor_bp: int, rules: DriftRules, now: float
) -> Finding | None:
    """Fidelity drift of one pool: its sampled requests' pairwise order agreement with the
    FP32 reference below ``floor_bp`` in every sample of the window. A sample without
    scored requests (nothing sampled yet, or a pool serving the reference itself) says
    nothing and breaks the window, as a metrics gap does."""
    window = _window(samples, now, rules)
    if not window:
        return None
    floor = floor_bp / 10000
    seen = []
    for s in window:
        if s.fidelity is None or s.fidelity >= floor:
            return None
        seen.append(s.fidelity)
    best = max(seen)
    return Finding(
        "fidelity",
        f"the served variant orders at most {best:.1%} of candidate pairs as the FP32 "
        f"reference does, for {rules.sustained_s:.0f} s (threshold {floor:.0%})",
        best,
        floor,
    )


def data_drift(
    samples: Sequence[DriftSample], psi_thousandths: int, rules: DriftRules, now: float
) -> Finding | None:
    """Data drift of one pool: some input column's PSI above ``psi_thousandths`` / 1000 in
    every sample of the window (the column may differ from sample to sample; the
    evidence names the one of the latest). A sample without a recent window breaks it."""
    window = _window(samples, now, rules)
    if not window:
        return None
    threshold = psi_thousandths / 1000
    seen = []
    for s in window:
        if s.data_psi is None or s.data_psi <= threshold:
            return None
        seen.append(s.data_psi)
    least = min(seen)
    return Finding(
        "data",
        f"the inputs moved away from the training data: PSI of {window[-1].data_feature} "
        f"{window[-1].data_psi:.2f} (at least {least:.2f} on some column for "
        f"{rules.sustained_s:.0f} s; threshold {threshold:.2f})",
        least,
        threshold,
    )
