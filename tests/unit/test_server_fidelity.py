"""Unit tests of recserve_runtime.server.fidelity: pairwise agreement and the sampler."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from recserve_runtime.server.fidelity import FidelitySampler, pairwise_agreement
from recserve_runtime.server.metrics import ServerMetrics

pytestmark = pytest.mark.unit


def test_pairwise_agreement_counts_concordant_pairs() -> None:
    ref = np.array([0.9, 0.5, 0.1], np.float32)
    assert pairwise_agreement(ref, ref) == (3, 3)
    assert pairwise_agreement(ref[::-1].copy(), ref) == (3, 0)
    swapped = np.array([0.5, 0.9, 0.1], np.float32)  # the top two swapped: 2 of 3 pairs
    assert pairwise_agreement(swapped, ref) == (3, 2)
    # pairs the reference ties are not counted; one candidate has no pair
    assert pairwise_agreement(np.array([1.0, 2.0]), np.array([0.3, 0.3])) == (0, 0)
    assert pairwise_agreement(np.array([1.0]), np.array([1.0])) == (0, 0)


def test_a_monotone_transform_agrees_and_noise_agrees_half_the_time() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(200).astype(np.float32)
    pairs, agree = pairwise_agreement(np.tanh(ref) * 3 + 1, ref)
    assert agree == pairs == 200 * 199 // 2
    pairs, agree = pairwise_agreement(rng.standard_normal(200).astype(np.float32), ref)
    assert 0.45 < agree / pairs < 0.55


def _value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_the_sampler_scores_its_share_off_the_request_path() -> None:
    metrics = ServerMetrics()
    calls = []

    def reference(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        calls.append(len(sparse))
        return -dense[:, 0]  # the reverse of what is served below

    sampler = FidelitySampler(reference, 0.5, metrics, seed=1)
    sampler.start()
    dense = np.arange(8, dtype=np.float32).reshape(-1, 1)
    for _ in range(400):
        sampler.offer(np.zeros((8, 1), np.int64), dense, dense[:, 0])
    sampler.stop()
    scored = _value(metrics, "recserve_fidelity_samples_total", outcome="scored")
    dropped = _value(metrics, "recserve_fidelity_samples_total", outcome="dropped")
    assert 160 < scored + dropped < 240  # about half were taken
    assert scored == len(calls) > 0
    assert _value(metrics, "recserve_fidelity_pairs_total") == scored * 28
    assert _value(metrics, "recserve_fidelity_agreeing_pairs_total") == 0  # all reversed


def test_a_slow_reference_drops_samples_instead_of_queueing_them() -> None:
    metrics = ServerMetrics()
    release = threading.Event()

    def slow(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        release.wait(5)
        return dense[:, 0]

    sampler = FidelitySampler(slow, 1.0, metrics, queue_size=2)
    sampler.start()
    started = time.perf_counter()
    x = np.ones((4, 1), np.float32)
    for _ in range(50):
        sampler.offer(np.zeros((4, 1), np.int64), x, x[:, 0])
    assert time.perf_counter() - started < 0.5, "offer never waits"
    assert _value(metrics, "recserve_fidelity_samples_total", outcome="dropped") >= 45
    release.set()
    sampler.stop()


def test_a_failing_reference_costs_the_sample_only() -> None:
    metrics = ServerMetrics()

    def broken(sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    sampler = FidelitySampler(broken, 1.0, metrics)
    sampler.start()
    x = np.ones((4, 1), np.float32)
    sampler.offer(np.zeros((4, 1), np.int64), x, x[:, 0])
    sampler.stop()
    assert _value(metrics, "recserve_fidelity_samples_total", outcome="failed") == 1
