"""Drift detectors on recorded series: steady (no drift), spikes, gaps, sustained drift."""

from __future__ import annotations

import random

import pytest

from recserve_operator.drift import (
    DriftRules,
    DriftSample,
    capacity_drift,
    data_drift,
    fidelity_drift,
    latency_drift,
)

pytestmark = pytest.mark.unit
RULES = DriftRules(latency_bp=2000, capacity_bp=2000, sustained_s=120, max_gap_s=30)
# the profile: one call of b rows takes 1 ms + 10 us per row at p99
PROFILE = [(b, 0.001 + 0.00001 * b) for b in (1, 8, 64, 256, 1024)]


def series(
    p99: float | None, rows: float = 64, start: float = 0, end: float = 300, every: float = 15
):
    t = start
    out = []
    while t <= end:
        out.append(DriftSample(t, p99, rows, 100.0, saturated=False))
        t += every
    return out


def test_a_steady_pool_within_its_profile_never_drifts() -> None:
    noise = random.Random(3)
    expected = 0.001 + 0.00001 * 64
    samples = [
        DriftSample(t, expected * noise.uniform(0.8, 1.15), 64, 100.0, False)
        for t in range(0, 3600, 15)
    ]
    for now in range(120, 3600, 15):
        seen = [s for s in samples if s.at <= now]
        assert latency_drift(seen, PROFILE, RULES, now) is None


def test_a_sustained_slowdown_is_latency_drift_with_its_evidence() -> None:
    slow = 2 * (0.001 + 0.00001 * 64)
    samples = series(0.00164, end=100) + series(slow, start=115, end=400)
    # normal until 90 s, slow from 115 s: not while the window holds a normal sample
    assert latency_drift([s for s in samples if s.at <= 205], PROFILE, RULES, 205) is None
    found = latency_drift([s for s in samples if s.at <= 220], PROFILE, RULES, 220)
    assert found is not None and found.cause == "latency"
    assert found.observed == pytest.approx(slow) and found.expected == pytest.approx(0.00164)
    assert "3.3 ms per batch of 64 rows" in found.evidence and "100% slower" in found.evidence


def test_the_prediction_follows_the_batch_size_run() -> None:
    # 2.4 ms is slow for 64 rows, normal for 128 (1 + 1.28 = 2.28 ms; +20% = 2.7 ms)
    assert latency_drift(series(0.0024, rows=64), PROFILE, RULES, 300) is not None
    assert latency_drift(series(0.0024, rows=128), PROFILE, RULES, 300) is None


def test_a_spike_or_a_gap_is_not_drift() -> None:
    slow = 0.005
    spike = series(0.00164, end=300)
    spike[10] = DriftSample(spike[10].at, slow, 64, 100.0, False)
    assert all(
        latency_drift(spike[: i + 1], PROFILE, RULES, spike[i].at) is None
        for i in range(len(spike))
    )
    gap = [s for s in series(slow, end=300) if not 100 < s.at < 160]
    assert latency_drift(gap, PROFILE, RULES, 220) is None  # the gap is within the window
    unknown = series(slow, end=300)
    unknown[-3] = DriftSample(unknown[-3].at, None, None, None, False)
    assert latency_drift(unknown, PROFILE, RULES, 300) is None


def test_capacity_drift_needs_saturation_throughout() -> None:
    def cap(rps: float, saturated: bool, start: float = 0, end: float = 300) -> list[DriftSample]:
        return [
            DriftSample(float(t), None, None, rps, saturated)
            for t in range(int(start), int(end) + 1, 15)
        ]

    assert capacity_drift(cap(60, True), 100.0, RULES, 300) is not None
    assert capacity_drift(cap(90, True), 100.0, RULES, 300) is None  # within 20%
    assert capacity_drift(cap(60, False), 100.0, RULES, 300) is None  # light load says nothing
    mixed = cap(60, True, end=200) + cap(60, False, start=215, end=230) + cap(60, True, start=245)
    assert capacity_drift(mixed, 100.0, RULES, 300) is None
    found = capacity_drift(cap(50, True), 100.0, RULES, 300)
    assert found is not None and "50% less" in found.evidence


def fidelity_series(values: list[float | None], every: float = 15) -> list[DriftSample]:
    return [DriftSample(i * every, 0.002, 64, 100.0, False, v) for i, v in enumerate(values)]


def test_fidelity_near_the_reference_with_noise_never_drifts() -> None:
    noise = random.Random(5)
    samples = fidelity_series([noise.uniform(0.93, 0.99) for _ in range(240)])
    for now in range(120, 3600, 15):
        seen = [s for s in samples if s.at <= now]
        assert fidelity_drift(seen, 9000, RULES, now) is None


def test_fidelity_sustained_below_the_floor_is_drift_with_its_evidence() -> None:
    samples = fidelity_series([0.97] * 10 + [0.71] * 12)  # falls at 150 s
    assert fidelity_drift(samples[:18], 9000, RULES, 255) is None  # 105 s of it
    found = fidelity_drift(samples, 9000, RULES, 315)
    assert found is not None and found.cause == "fidelity"
    assert "at most 71.0% of candidate pairs" in found.evidence
    assert (found.observed, found.expected) == (0.71, 0.9)


def test_fidelity_unknown_or_one_dip_is_not_drift() -> None:
    dip = fidelity_series([0.97] * 10 + [0.5] + [0.97] * 10)
    assert all(fidelity_drift(dip[: i + 1], 9000, RULES, i * 15) is None for i in range(21))
    unscored = fidelity_series([0.5] * 5 + [None] + [0.5] * 5)
    assert fidelity_drift(unscored, 9000, RULES, 150) is None


def test_batches_larger_than_any_profiled_are_expected_to_cost_more() -> None:
    # an emulated device of 20 ms + 50 us per row, profiled up to 128 rows; batch tuning
    # ran 290-row batches: 34.5 ms is what the device costs there, not drift
    profile = [(b, 0.020 + 0.00005 * b) for b in (1, 8, 64, 128)]
    samples = [DriftSample(t, 0.0345, 290, 100.0, False) for t in range(0, 300, 15)]
    assert latency_drift(samples, profile, RULES, 285) is None
    slow = [DriftSample(t, 0.0345 * 1.5, 290, 100.0, False) for t in range(0, 300, 15)]
    assert latency_drift(slow, profile, RULES, 285) is not None


def psi_series(values: list[float | None], every: float = 15) -> list[DriftSample]:
    return [
        DriftSample(i * every, 0.002, 64, 100.0, False, None, v, None if v is None else "age")
        for i, v in enumerate(values)
    ]


def test_inputs_like_the_training_data_never_drift() -> None:
    noise = random.Random(7)
    samples = psi_series([noise.uniform(0.0, 0.2) for _ in range(240)])  # 0.2: moderate
    for now in range(120, 3600, 15):
        assert data_drift([s for s in samples if s.at <= now], 250, RULES, now) is None


def test_a_sustained_shift_of_the_inputs_is_data_drift_naming_the_column() -> None:
    samples = psi_series([0.05] * 10 + [0.9] * 12)  # shifts at 150 s
    assert data_drift(samples[:18], 250, RULES, 255) is None  # 105 s of it
    found = data_drift(samples, 250, RULES, 315)
    assert found is not None and found.cause == "data"
    assert "PSI of age 0.90" in found.evidence and "threshold 0.25" in found.evidence
    assert (found.observed, found.expected) == (0.9, 0.25)
    assert data_drift(samples, 1000, RULES, 315) is None  # the policy's threshold


def test_one_window_over_or_no_recent_window_is_not_data_drift() -> None:
    spike = psi_series([0.05] * 10 + [2.0] + [0.05] * 10)
    assert all(data_drift(spike[: i + 1], 250, RULES, i * 15) is None for i in range(21))
    gap = psi_series([0.9] * 5 + [None] + [0.9] * 5)
    assert data_drift(gap, 250, RULES, 150) is None
