"""Assembling Prometheus answers into per-pool metrics: unknown is never zero."""

from __future__ import annotations

from typing import Any

import pytest

from recserve_operator.observe import (
    MetricsCache,
    PoolMetrics,
    Unknown,
    Windows,
    queries,
    snapshot_from_results,
)

pytestmark = pytest.mark.unit
W = Windows(scrape_seconds=5.0)
LABELS = {"namespace": "ns", "recserve_io_model": "m", "recserve_io_pool": "cpu"}


def sample(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": {**LABELS, **labels}, "value": [1700000000.0, value]}


def test_a_scraped_pool_without_requests_has_a_known_rate_of_zero() -> None:
    snap = snapshot_from_results(
        {"scrape_age": [sample("2.5")], "ready_pods": [sample("2")]}, W, 0.0
    )
    m = snap.of("ns", "m", "cpu")
    assert isinstance(m, PoolMetrics)
    assert m.demand_fast == 0.0 and m.ready_pods == 2
    assert m.p99_fast is None  # no request: no latency, not zero latency
    assert m.rated_pods is None  # not asked: no claim about which pods count
    rated = snapshot_from_results(
        {"scrape_age": [sample("1")], "ready_pods": [sample("3")], "rated_pods": [sample("2")]},
        W,
        0.0,
    ).of("ns", "m", "cpu")
    assert isinstance(rated, PoolMetrics) and (rated.ready_pods, rated.rated_pods) == (3, 2)


def test_stale_or_missing_series_and_errors_are_unknown() -> None:
    stale = snapshot_from_results({"scrape_age": [sample("16")]}, W, 0.0)
    assert isinstance(stale.of("ns", "m", "cpu"), Unknown)
    empty = snapshot_from_results({}, W, 0.0)
    assert "no fresh series" in str(empty.of("ns", "m", "cpu"))
    nan = snapshot_from_results({"scrape_age": [sample("NaN")]}, W, 0.0)
    assert isinstance(nan.of("ns", "m", "cpu"), Unknown)
    # fresh, but one scrape in the fast window (just after an outage): rate() is empty,
    # which must not read as no requests
    one = snapshot_from_results(
        {"scrape_age": [sample("1")], "fast_samples": [sample("1")]}, W, 0.0
    )
    assert isinstance(one.of("ns", "m", "cpu"), Unknown)
    two = snapshot_from_results(
        {"scrape_age": [sample("1")], "fast_samples": [sample("3")]}, W, 0.0
    )
    assert isinstance(two.of("ns", "m", "cpu"), PoolMetrics)

    def down(_: str) -> list[dict[str, Any]]:
        raise ConnectionError("refused")

    snap = MetricsCache(down, W, refresh_seconds=10).latest()
    found = snap.of("ns", "m", "cpu")
    assert isinstance(found, Unknown) and "ConnectionError" in found.reason
    assert isinstance(MetricsCache(None, W, 10).latest().of("ns", "m", "cpu"), Unknown)


def test_rates_add_refusals_to_demand_and_nan_latency_is_none() -> None:
    results = {
        "scrape_age": [sample("1")],
        "served_fast": [sample("90")],
        "refused_fast": [sample("10")],
        "p99_fast": [sample("NaN")],
        "p50_stable": [sample("0.004")],
    }
    m = snapshot_from_results(results, W, 0.0).of("ns", "m", "cpu")
    assert isinstance(m, PoolMetrics)
    assert m.demand_fast == 100.0 and m.p99_fast is None and m.p50_stable == 0.004


def test_the_cache_asks_once_per_refresh_for_all_models() -> None:
    asked: list[str] = []

    def ask(query: str) -> list[dict[str, Any]]:
        asked.append(query)
        return []

    cache = MetricsCache(ask, W, refresh_seconds=60)
    cache.latest()
    cache.latest()
    assert len(asked) == len(queries(W))
    assert all("by (namespace, recserve_io_model" in q for q in asked)  # all models at once


def test_a_refusal_the_router_retried_elsewhere_counts_once() -> None:
    model = {"namespace": "ns", "recserve_io_model": "m"}
    results = {
        "scrape_age": [sample("1"), sample("1", recserve_io_pool="gpu")],
        "served_fast": [sample("100"), sample("50", recserve_io_pool="gpu")],
        # servers refused 60/s, the router retried most elsewhere and refused 15/s in the end
        "refused_fast": [sample("40"), sample("20", recserve_io_pool="gpu")],
        "router_refused_fast": [{"metric": model, "value": [0, "15"]}],
        "router_seen": [{"metric": model, "value": [0, "2"]}],
    }
    snap = snapshot_from_results(results, W, 0.0)
    cpu, gpu = snap.of("ns", "m", "cpu"), snap.of("ns", "m", "gpu")
    assert isinstance(cpu, PoolMetrics) and isinstance(gpu, PoolMetrics)
    assert cpu.refused_fast == 10.0 and gpu.refused_fast == 5.0
    assert cpu.demand_fast + gpu.demand_fast == 165.0  # served + what the router refused
    # without router series, the servers' counts stand
    del results["router_seen"], results["router_refused_fast"]
    alone = snapshot_from_results(results, W, 0.0).of("ns", "m", "cpu")
    assert isinstance(alone, PoolMetrics) and alone.refused_fast == 40.0


def test_data_drift_is_the_worst_column_of_the_pool_and_none_without_a_window() -> None:
    assert (
        "recserve_feature_window_end_timestamp_seconds < 600" in queries(W)["data_psi_by_feature"]
    )
    snap = snapshot_from_results(
        {
            "scrape_age": [sample("1")],
            "data_psi_by_feature": [
                sample("0.04", feature="user"),
                sample("0.61", feature="age"),
                sample("NaN", feature="genre"),
            ],
        },
        W,
        0.0,
    )
    m = snap.of("ns", "m", "cpu")
    assert isinstance(m, PoolMetrics)
    assert (m.data_psi, m.data_psi_feature) == (0.61, "age")
    quiet = snapshot_from_results({"scrape_age": [sample("1")]}, W, 0.0).of("ns", "m", "cpu")
    assert isinstance(quiet, PoolMetrics) and quiet.data_psi is None


def test_canary_figures_come_per_pool_from_the_canary_pods_only() -> None:
    from recserve_operator.observe import canary_from_results, canary_queries

    texts = canary_queries("ns1", "m", 30)
    assert all(
        'recserve_io_track="canary"' in q and 'recserve_io_model="m"' in q for q in texts.values()
    )
    assert all("[30s]" in q for q in texts.values())
    assert 'code!="503"' in texts["errors"]  # an overload refusal is not an error

    def one(pool: str, value: float) -> list[dict[str, Any]]:
        return [{"metric": {"recserve_io_pool": pool}, "value": [0, str(value)]}]

    got = canary_from_results(
        {
            "requests": one("cpu-pool", 200) + one("gpu-pool", 50),
            "errors": [],  # no 5xx series yet: none happened
            "p99": one("cpu-pool", 0.04) + one("gpu-pool", float("nan")),
            "pairs": one("cpu-pool", 400),
            "agreeing": one("cpu-pool", 380),
        }
    )
    cpu, gpu = got["cpu-pool"], got["gpu-pool"]
    assert (cpu.requests, cpu.errors, cpu.p99_s) == (200, 0, 0.04)
    assert cpu.fidelity == pytest.approx(0.95) and cpu.fidelity_pairs == 400
    assert gpu.p99_s is None and gpu.fidelity is None  # unknown, never 0
    # a pool without a request series is absent: its analysis holds
    assert canary_from_results({"requests": [], "p99": one("cpu-pool", 0.04)}) == {}


def test_the_drift_detectors_fidelity_is_per_variant_without_the_canary_pods() -> None:
    """A drift finding names the variant the pool's own Deployment serves, so its
    fidelity is per variant (old and new pods overlap in the window after a move) and
    leaves the canary's pods out (judged by the rollout's analysis)."""
    fidelity = queries(Windows())["fidelity_by_variant"]
    assert fidelity.count('recserve_io_track!="canary"') == 2, fidelity
    assert fidelity.count("recserve_io_variant") == 2, fidelity
    results = {
        "scrape_age": [sample("1")],
        "fidelity_by_variant": [
            sample("0.84", recserve_io_variant="int8"),
            sample("0.9", recserve_io_variant="int8-recal1"),
            sample("NaN", recserve_io_variant="fp32"),
        ],
    }
    m = snapshot_from_results(results, W, 0.0).of("ns", "m", "cpu")
    assert isinstance(m, PoolMetrics)
    assert (m.fidelity_of("int8"), m.fidelity_of("int8-recal1")) == (0.84, 0.9)
    assert m.fidelity_of("fp32") is None  # nothing scored: absent, never 0
