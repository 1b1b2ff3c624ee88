"""The autoscaler's decisions on recorded metric series: steady, step, noise, gaps."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from recserve_operator.autoscaler import (
    BatchLimits,
    BatchRange,
    Bounds,
    Memory,
    ReplicaDecision,
    decide_batch,
    decide_replicas,
    live_capacity,
    needed,
)
from recserve_operator.observe import (
    Observation,
    PoolMetrics,
    Unknown,
    Windows,
    snapshot_from_results,
)

pytestmark = pytest.mark.unit
CAPACITY = 100.0  # rps per replica at full load: 70 rps planned per replica
SLO_S = 0.1
BOUNDS = Bounds(min_replicas=1, max_replicas=10, scale_up_cooldown_s=30, scale_down_cooldown_s=120)


def metrics(
    fast: float,
    stable: float | None = None,
    refused: float = 0.0,
    p99: float | None = 0.02,
    ready: int = 1,
) -> PoolMetrics:
    return PoolMetrics(
        served_fast=fast,
        served_stable=fast if stable is None else stable,
        refused_fast=refused,
        refused_stable=0.0,
        ready_pods=ready,
        p99_fast=p99,
    )


def run(
    series: Callable[[float], Observation],
    seconds: float,
    start: int = 1,
    every: float = 5.0,
    bounds: Bounds = BOUNDS,
) -> list[tuple[float, ReplicaDecision]]:
    """Tick the autoscaler over a recorded series; replicas follow its decisions."""
    replicas, memory = start, Memory()
    out = []
    t = 0.0
    while t <= seconds:
        d = decide_replicas(t, replicas, series(t), CAPACITY, SLO_S, bounds, memory)
        replicas, memory = d.replicas, d.memory
        out.append((t, d))
        t += every
    return out


def reversals(decisions: list[tuple[float, ReplicaDecision]]) -> int:
    moves = []
    last = None
    for _, d in decisions:
        if last is not None and d.replicas != last:
            moves.append(1 if d.replicas > last else -1)
        last = d.replicas
    return sum(1 for a, b in itertools.pairwise(moves) if a != b)


def test_needed_plans_at_seventy_percent_of_capacity() -> None:
    assert needed(0.0, CAPACITY) == 0
    assert needed(70.0, CAPACITY) == 1
    assert needed(70.1, CAPACITY) == 2
    assert needed(700.0, CAPACITY) == 10


def test_steady_load_settles_and_never_flaps() -> None:
    noise = random.Random(7)
    # 200 rps +-8%: needs 3 replicas (2.86), the noise crosses 2 and 3 all the time
    out = run(lambda t: metrics(200 * (1 + noise.uniform(-0.08, 0.08)), 200), 3600, start=3)
    counts = {d.replicas for _, d in out}
    assert counts <= {3, 4}
    assert reversals(out) <= 2


def test_a_step_is_acted_on_at_the_first_tick_that_sees_it() -> None:
    # 4x step at t=100 s, seen by the fast window at once and by the stable one later
    def series(t: float) -> PoolMetrics:
        return metrics(400, 100 + 300 * min(max(t - 100, 0) / 60, 1)) if t >= 100 else metrics(100)

    out = run(series, 300, start=2)
    first_up = next(t for t, d in out if d.replicas > 2)
    assert first_up == 100
    assert dict(out)[100].replicas == needed(400, CAPACITY) == 6
    assert "up for" in dict(out)[100].reason


def test_second_scale_up_for_the_same_demand_waits_for_its_cooldown() -> None:
    # 200 -> 215 rps within the cooldown: one more replica by the numbers (2.86 -> 3.07),
    # but within the tolerance of the demand the last scale-up was sized for: waits 30 s
    def slow(t: float) -> PoolMetrics:
        return metrics(200 if t < 10 else 215)

    out = dict(run(slow, 60, start=2))
    assert out[0].replicas == 3
    assert out[10].replicas == 3 and "scale-up cooldown" in out[10].reason
    assert out[25].replicas == 3
    assert out[30].replicas == 4
    # after a restart the demand last sized for is not known: the cooldown holds
    restarted = Memory(last_up=0.0)
    d = decide_replicas(10, 3, metrics(250), CAPACITY, SLO_S, BOUNDS, restarted)
    assert d.replicas == 3 and "scale-up cooldown" in d.reason


def test_demand_grown_past_the_last_scale_up_is_acted_on_within_the_cooldown() -> None:
    # a step read while it was still arriving (150 rps), then in full (250 rps): the
    # second reading is new evidence, not the same demand again
    out = dict(run(lambda t: metrics(150 if t < 10 else 250), 60, start=2))
    assert out[0].replicas == 3
    assert out[10].replicas == 4 and "demand grew past the 150.0 rps" in out[10].reason
    assert all(out[t].replicas == 4 for t in range(15, 61, 5))  # and holds there


def test_a_flash_crowd_needing_twice_the_replicas_is_panic() -> None:
    out = dict(run(lambda t: metrics(150 if t < 10 else 900), 20, start=2))
    assert out[0].replicas == 3
    assert out[10].replicas == 10 and "panic" in out[10].reason


def test_scale_down_waits_for_the_cooldown_and_steps_by_half() -> None:
    def drop(t: float) -> PoolMetrics:
        return metrics(600 if t < 200 else 50)

    out = run(drop, 900, start=9)
    at = dict(out)
    assert at[195].replicas == 9
    # no scale-down while a high recommendation is within the window (120 s)
    assert all(d.replicas == 9 for t, d in out if t < 195 + 120)
    downs = [(t, d.replicas) for t, d in out if "down for" in d.reason]
    assert downs[0] == (315, 5)  # the last high recommendation left the window; half
    assert [n for _, n in downs] == [5, 3, 2, 1]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(downs)]
    assert all(g >= BOUNDS.scale_down_cooldown_s for g in gaps)


def test_unknown_metrics_hold_and_say_why() -> None:
    def gap(t: float) -> Observation:
        if 100 <= t < 400:
            return Unknown("Prometheus query failed: ConnectionError")
        return metrics(500 if t < 100 else 60)

    out = run(gap, 600, start=1)
    at = dict(out)
    assert at[95].replicas == 8
    held = [d for t, d in out if 100 <= t < 400]
    assert all(d.replicas == 8 and d.held for d in held)
    assert "metrics unknown (Prometheus query failed" in held[0].reason
    # back: the low load is acted on only after a window of known recommendations
    assert at[400].replicas == 8


def test_refused_requests_count_as_demand_and_saturation_corrects_capacity() -> None:
    # 2 replicas serve 120 rps and refuse 80: the demand is 200, and a replica serves 60
    m = metrics(120, 120, refused=80, p99=0.15, ready=2)
    d = decide_replicas(0, 2, m, CAPACITY, SLO_S, BOUNDS, Memory())
    assert d.capacity_rps == pytest.approx(60)
    assert d.replicas == needed(200, 60) == 5


def test_bounds_and_the_ceiling_are_obeyed_and_said() -> None:
    bounds = Bounds(min_replicas=2, max_replicas=4, scale_up_cooldown_s=0, scale_down_cooldown_s=0)
    d = decide_replicas(0, 3, metrics(2000), CAPACITY, SLO_S, bounds, Memory())
    assert d.replicas == 4 and "over the ceiling of 4" in d.reason
    d = decide_replicas(0, 1, metrics(0), CAPACITY, SLO_S, bounds, Memory())
    assert d.replicas == 2 and "minReplicas" in d.reason
    d = decide_replicas(0, 7, metrics(100), CAPACITY, SLO_S, bounds, Memory())
    assert d.replicas == 4 and "ceiling" in d.reason


RANGE = BatchRange(planned=128, lowest=64, highest=1024, slo_ms=100.0)
START = RANGE.planned_limits()


def test_batch_limits_grow_under_load_with_headroom_and_return_when_light() -> None:
    high = metrics(180, p99=0.03, ready=2)  # 90% of 2 x 100 rps, p99 30% of the target
    d = decide_batch(START, high, CAPACITY, 2, RANGE)
    assert d.limits.max_batch_rows == 256
    assert d.limits.batch_budget_fraction > START.batch_budget_fraction
    assert d.limits.max_queue_delay_ms > 0
    d2 = decide_batch(d.limits, high, CAPACITY, 2, RANGE)
    assert d2.limits.max_batch_rows == 512
    light = decide_batch(d2.limits, metrics(20, p99=0.01, ready=2), CAPACITY, 2, RANGE)
    assert light.limits == START
    assert "light load" in light.reason


def test_batch_ceiling_halves_while_p99_is_over_the_target_but_not_below_one_request() -> None:
    over = metrics(100, p99=0.2, ready=2)
    limits = BatchLimits(max_batch_rows=512, min_batch_rows=64, slo_p99_ms=100.0)
    seen = []
    for _ in range(6):
        limits = decide_batch(limits, over, CAPACITY, 2, RANGE).limits
        seen.append(limits.max_batch_rows)
    assert seen == [256, 128, 64, 64, 64, 64]


def test_batch_limits_hold_when_metrics_are_unknown() -> None:
    current = BatchLimits(max_batch_rows=512, min_batch_rows=64, slo_p99_ms=100.0)
    d = decide_batch(current, Unknown("stale"), CAPACITY, 2, RANGE)
    assert d.limits == current and "stale" in d.reason


def test_batch_limits_hold_while_new_replicas_are_not_measured_yet() -> None:
    """Six replicas Ready, two of them scraped twice: the fast rate counts only what those
    two served (what the bench's flash crowd read as light load, and dropped the ceiling)."""
    current = BatchLimits(max_batch_rows=512, min_batch_rows=64, slo_p99_ms=100.0)
    partial = replace(metrics(100, p99=0.01, ready=6), rated_pods=2)
    d = decide_batch(current, partial, CAPACITY, 6, RANGE)
    assert d.limits == current and "2 of 6 ready replicas measured" in d.reason
    whole = replace(partial, rated_pods=6)
    assert decide_batch(current, whole, CAPACITY, 6, RANGE).limits == START  # light load


RECORDED = Path(__file__).parent / "data" / "autoscale_step_recorded.json"


def replay(doc: dict[str, Any]) -> list[tuple[float, Observation]]:
    """What the operator's queries answered at each 2 s step of a recorded run (the
    local control plane's Prometheus, `RECSERVE_RECORD_SERIES` of
    tests/integration/test_autoscaling.py), assembled as the operator does."""
    labels = {"namespace": "ns", "recserve_io_model": "m", "recserve_io_pool": "cpu"}
    by_time: dict[float, dict[str, list[dict[str, Any]]]] = {}
    for name, points in doc.items():
        if not isinstance(points, list):
            continue
        for at, value in points:
            by_time.setdefault(at, {}).setdefault(name, []).append(
                {"metric": labels, "value": [at, value]}
            )
    windows = Windows(scrape_seconds=5.0)
    return [
        (at, snapshot_from_results(by_time[at], windows, at).of("ns", "m", "cpu"))
        for at in sorted(by_time)
    ]


def test_a_recorded_step_with_a_prometheus_outage() -> None:
    """A real run: idle, a step to 130 req/s (about 3 replicas' worth at 76 req/s each),
    Prometheus stopped for about 30 s at the peak, then the load ends."""
    doc = json.loads(RECORDED.read_text())
    series = replay(doc)
    bounds = Bounds(min_replicas=1, max_replicas=8, scale_up_cooldown_s=0, scale_down_cooldown_s=30)
    replicas, memory = 1, Memory()
    decisions = []
    for at, observed in series:
        d = decide_replicas(at, replicas, observed, 75.8, 1.0, bounds, memory)
        replicas, memory = d.replicas, d.memory
        decisions.append((at, observed, d))
    known = [(at, o) for at, o, _ in decisions if isinstance(o, PoolMetrics)]
    step = next(at for at, o in known if o.demand_fast > 50)
    up = next(at for at, _, d in decisions if d.replicas >= 3)
    assert up - step <= 4.0  # acted on at the first or second 2 s tick that saw it
    # the outage: unknown ticks hold, whatever the replicas were
    gap = [(at, d) for at, o, d in decisions if isinstance(o, Unknown) and at > step]
    assert gap, "the recording has the outage"
    held_at = {d.replicas for _, d in gap}
    assert len(held_at) == 1 and all(d.held for _, d in gap)
    # after the load: down only after the cooldown, and no flapping over the whole run
    ended = doc["load_ended"]
    downs = [at for at, _, d in decisions if "down for" in d.reason]
    assert downs and min(downs) - ended >= 0
    assert reversals([(at, d) for at, _, d in decisions]) <= 2
    peak = max(d.replicas for _, _, d in decisions)
    assert peak >= 3 and decisions[-1][2].replicas <= peak // 2 + 1  # stepping down


def test_an_overloaded_pool_gets_larger_batches_even_with_p99_over_the_target() -> None:
    # 2 replicas refusing with p99 over the target: queueing, not long batches
    over = PoolMetrics(
        served_fast=120, served_stable=120, refused_fast=30, refused_stable=30,
        ready_pods=2, p99_fast=0.3, compute_p99_stable=0.01,
    )  # fmt: skip
    d = decide_batch(START, over, CAPACITY, 2, RANGE)
    assert d.limits.max_batch_rows == 256 and "larger batches" in d.reason
    # but not when one batch already takes most of its share of the target
    slow = replace(over, compute_p99_stable=0.035)  # of 40 ms (40% of 100 ms)
    assert decide_batch(START, slow, CAPACITY, 2, RANGE).limits == START


def test_live_capacity_is_the_busiest_replica_s_not_the_pool_s_over_new_pods() -> None:
    # just after 2 -> 4 replicas: 120 req/s served over the window by the 2 old pods
    m = replace(metrics(120, 120, refused=40, p99=0.15, ready=4), served_per_pod_max_fast=60.0)
    assert live_capacity(m, CAPACITY, SLO_S) == 60.0  # not 120 / 4
    d = decide_replicas(0, 4, m, CAPACITY, SLO_S, BOUNDS, Memory())
    assert d.replicas == needed(160, 60.0) == 4
