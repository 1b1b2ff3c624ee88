"""The pure parts of `recserve bench autoscale`: traces, arrivals, p99, restore time,
replica-hours (measured and the oracle's), reversals, outage losses, the headline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recserve_dev.bench.autoscale import (
    Samples,
    Trace,
    headline,
    make_traces,
    oracle_replica_hours,
    outage_losses,
    p99_all,
    replica_hours,
    restore_time,
    reversals,
    rolling_p99,
)
from recserve_dev.loadgen import thinned_arrivals

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("quick", [True, False])
def test_trace_shapes(quick: bool) -> None:
    traces = make_traces(quick, 10.0)
    assert set(traces) == {"step", "diurnal", "flash", "steady"}
    step = traces["step"]
    assert step.rate(step.step_at_s - 0.1) == 10 and step.rate(step.step_at_s) == 40
    assert step.outage is not None and step.outage[0] > step.step_at_s  # at the peak
    assert sum(step.outage) <= step.duration_s
    sine = traces["diurnal"]
    assert sine.rate(0) == pytest.approx(10)  # trough
    assert sine.rate(sine.period_s / 2) == pytest.approx(40)  # peak: 4x the trough
    assert all(10 - 1e-9 <= sine.rate(t) <= 40 + 1e-9 for t in np.linspace(0, 90, 50))
    flash = traces["flash"]
    assert flash.rate(flash.step_at_s + 1) == 100
    assert flash.rate(flash.step_at_s + flash.burst_s) == 10
    assert flash.peak_rps == 100
    assert {traces["steady"].rate(t) for t in (0, 5, 29)} == {25}


def test_thinned_arrivals_follow_the_rate_and_repeat_with_the_seed() -> None:
    trace = Trace("s", "step", 200, 20, 4, step_at_s=100)
    a = thinned_arrivals(trace.rate, trace.duration_s, trace.peak_rps, seed=1)
    b = thinned_arrivals(trace.rate, trace.duration_s, trace.peak_rps, seed=1)
    assert np.array_equal(a, b)
    assert np.all(np.diff(a) >= 0) and a[-1] < 200
    low, high = np.count_nonzero(a < 100), np.count_nonzero(a >= 100)
    assert low == pytest.approx(2000, rel=0.1)
    assert high == pytest.approx(8000, rel=0.05)


def test_p99_counts_failures_as_infinite_and_rolls_over_a_window() -> None:
    assert p99_all(np.array([0.1] * 99 + [math.inf])) == 0.1
    assert p99_all(np.array([0.1] * 98 + [math.inf] * 2)) == math.inf
    assert math.isnan(p99_all(np.array([])))
    send = np.arange(0.0, 30.0, 0.1)
    lat = np.where(send < 10, 0.05, 2.0)  # slow from 10 s on
    roll = rolling_p99(send, lat, np.array([5.0, 9.9, 15.0, 25.0]), window_s=10)
    assert roll[0] == 0.05 and roll[1] == 0.05
    assert roll[2] == 2.0 and roll[3] == 2.0


def test_restore_time() -> None:
    grid = np.arange(1.0, 61.0)
    p99 = np.full(60, 0.1)
    p99[20:35] = 1.0  # over the SLO from t=21 to t=35
    assert restore_time(grid, p99, 0.5, 20, 60) == 16.0  # back at t=36
    assert restore_time(grid, np.full(60, 0.1), 0.5, 20, 60) == 0.0
    p99[-1] = 1.0  # over again at the end: never restored for good
    assert restore_time(grid, p99, 0.5, 20, 61) is None
    assert restore_time(grid, p99, 0.5, 20, 50) == 16.0  # the window ends earlier
    nan = np.full(60, np.nan)  # no request sent: not a violation
    assert restore_time(grid, nan, 0.5, 0, 60) == 0.0


def test_replica_hours_and_oracle() -> None:
    # 2 replicas for the first half hour, 4 for the second (samples held)
    assert replica_hours([0.0, 1800.0], [2, 4], 3600) == pytest.approx(3.0)
    # the first sample holds from the start, samples before it count from 0
    assert replica_hours([-2.0, -1.0, 1800.0], [1, 2, 4], 3600) == pytest.approx(3.0)
    assert replica_hours([], [], 3600) == 0
    # demand of 10 rps for a minute, 45 rps the next; capacity 20 -> 1 then 3 replicas
    send = np.concatenate([np.linspace(0, 59.9, 600), np.linspace(60, 119.9, 2700)])
    assert oracle_replica_hours(send, 120, 20.0, 60) == pytest.approx((1 + 3) * 60 / 3600)
    # no demand still runs one replica
    assert oracle_replica_hours(np.array([]), 60, 20.0, 60) == pytest.approx(60 / 3600)


def test_reversals() -> None:
    assert reversals([1, 1, 2, 3, 3]) == 0
    assert reversals([1, 3, 3, 2]) == 1
    assert reversals([1, 2, 1, 2, 1]) == 3
    assert reversals([4, 2, 2, 1]) == 0
    assert reversals([]) == 0


def test_outage_losses() -> None:
    s = Samples(
        t=[0, 10, 19, 20, 30, 40, 60, 70],
        replicas=[1, 3, 3, 3, 2, 3, 3, 3],
        ready=[1, 2, 3, 3, 2, 2, 3, 3],
        ceiling=[128] * 8,
    )
    assert outage_losses(s, (20, 30)) == (1, 1)  # 3 before, 2 at the lowest
    s.replicas[4] = 3
    s.ready[4] = 3
    s.ready[5] = 3
    assert outage_losses(s, (20, 30)) == (0, 0)


def test_headline_ratios() -> None:
    traces = make_traces(True, 10)

    def run(v: int, n: int = 1000, **extra: object) -> dict[str, object]:
        return {"slo_violations": v, "requests": n, "slo_violation_pct": 100 * v / n, **extra}

    summaries = {
        "recserve": {
            "step": run(10, p99_restore_s=12.0, outage_replicas_lost=0),
            "diurnal": run(0, replica_hours=0.05, oracle_replica_hours=0.04),
            "flash": run(0),
            "steady": run(0, reversals_per_hour=0.0),
        },
        "recserve-nobatch": {"step": run(40)},
        "keda": {t: run(20 if t == "step" else 5) for t in traces},
        "keda-tuned": {t: run(10 if t == "step" else 5) for t in traces},
        "static": {"diurnal": run(0, replica_hours=0.1)},
    }
    h = headline(summaries, traces)  # type: ignore[arg-type]
    assert h["step4x_p99_restore_s"] == 12.0
    assert h["slo_violation_pct"] == pytest.approx(0.25)
    assert h["slo_violation_vs_keda"] == pytest.approx(10 / 35, abs=1e-3)
    assert h["slo_violation_vs_keda_tuned"] == pytest.approx(10 / 25, abs=1e-3)
    assert h["batch_tuning_violation_ratio"] == 0.25
    assert h["replica_hours_vs_oracle"] == 1.25
    assert h["replica_hours_vs_static_peak"] == 0.5
    assert h["reversals_per_hour_steady"] == 0.0
    assert h["prometheus_outage_replicas_lost"] == 0


def test_keda_tuned_differs_from_keda_only_in_its_window_and_polling() -> None:
    from recserve_dev.bench.autoscale import Bench

    bench = Bench.__new__(Bench)
    bench.down_window_s = 60
    bench.cluster = type("C", (), {"state": type("S", (), {"prometheus_url": "http://p"})()})()
    plain = bench.scaled_object("m", "ns", 23.8)["spec"]
    tuned = bench.scaled_object("m", "ns", 23.8, "keda-tuned")["spec"]
    assert plain["pollingInterval"] == 30 and "[1m]" in plain["triggers"][0]["metadata"]["query"]
    assert tuned["pollingInterval"] == 5 and "[15s]" in tuned["triggers"][0]["metadata"]["query"]
    tuned["pollingInterval"] = 30
    tuned["triggers"][0]["metadata"]["query"] = plain["triggers"][0]["metadata"]["query"]
    assert tuned == plain


def test_json_has_no_infinities() -> None:
    from recserve_dev.bench.autoscale import finite

    assert finite({"a": math.inf, "b": [1.0, -math.inf], "c": (math.nan,), "d": 2}) == {
        "a": "inf",
        "b": [1.0, "-inf"],
        "c": ["nan"],
        "d": 2,
    }
