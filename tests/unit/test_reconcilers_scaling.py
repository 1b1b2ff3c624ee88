"""One autoscaling tick of a RecModel: decisions into scale, limits, status and Events,
and every autoscaling field of the policy shown to have its effect."""

from __future__ import annotations

import json
from typing import Any

import pytest

from recserve_operator.api import OptimizationPolicy, RecModel
from recserve_operator.autoscaler import Memory
from recserve_operator.conditions import find
from recserve_operator.observe import PoolMetrics, Snapshot
from recserve_operator.reconcilers.scaling import (
    LIMITS_KEY,
    Observed,
    PlannedPool,
    apply_tick,
    decide_tick,
    limits_config_map,
    limits_of,
    observe_pools,
    stamp,
)
from tests.fakekube import FakeKube
from tests.manifests import example

pytestmark = pytest.mark.unit
NS = "ns1"
NOW = 1_700_000_000.0


def model(**traffic: int) -> RecModel:
    raw = example("movielens-dlrm")
    raw["metadata"] = {"name": "m", "namespace": NS, "uid": "u1", "generation": 1}
    raw["spec"]["traffic"].update(traffic)
    return RecModel.model_validate(raw)


def policy(**autoscaling: Any) -> OptimizationPolicy:
    raw = example("latency-first")
    raw["metadata"]["namespace"] = NS
    raw["spec"]["objectives"]["p99LatencyTargetMilliseconds"] = 100
    raw["spec"]["autoscaling"] = {
        "minReplicas": 1,
        "maxReplicas": 8,
        "scaleUpCooldownSeconds": 0,
        "scaleDownCooldownSeconds": 60,
        **autoscaling,
    }
    return OptimizationPolicy.model_validate(raw)


PLANNED = PlannedPool(
    pool="cpu-pool",
    variant="m-int8",
    deployment="m-cpu-pool",
    limits_config_map="m-cpu-pool-limits",
    planned_replicas=2,
    capacity_rps=100.0,
    batch_size=128,
    ceiling=6,
    serving_label="int8",
)


# the pool's Deployment as the API server holds it: 2 replicas, both ready
SERVED_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "m-cpu-pool", "namespace": NS, "labels": {"recserve.io/model": "m"}},
    "spec": {"replicas": 2},
    "status": {"readyReplicas": 2},
}


def snapshot(rps: float, p99: float = 0.02, ready: int = 2) -> Snapshot:
    m = PoolMetrics(
        served_fast=rps,
        served_stable=rps,
        refused_fast=0.0,
        refused_stable=0.0,
        ready_pods=ready,
        p99_fast=p99,
    )
    return Snapshot(NOW, {(NS, "m", "cpu-pool"): m})


def tick(
    p: OptimizationPolicy,
    snap: Snapshot,
    replicas: int = 2,
    memory: dict[str, Memory] | None = None,
    rm: RecModel | None = None,
) -> Any:
    observed = {"cpu-pool": Observed(replicas, replicas, None)}
    return decide_tick(rm or model(), p, [PLANNED], observed, snap, memory or {}, NOW)


def test_a_burst_scales_up_explains_and_reports_live_figures() -> None:
    out = tick(policy(), snapshot(400.0, p99=0.03))
    assert out.scale == {"m-cpu-pool": 6}  # 400 rps at 70 rps per replica
    placement = out.status["placements"][0]
    assert placement["replicas"] == 6 and placement["plannedReplicas"] == 2
    assert placement["observedRequestsPerSecond"] == 400
    assert placement["observedP99Milliseconds"] == 30
    assert placement["lastScaleTime"]
    assert "2 -> 6" in placement["reason"]
    assert out.status["observedRequestsPerSecond"] == 400
    scaling = find(out.status["conditions"], "Scaling")
    assert scaling is not None and scaling["status"] == "True"
    assert [e[1] for e in out.events] == ["Scaled"]


def test_max_replicas_and_the_pool_ceiling_bound_the_decision() -> None:
    assert tick(policy(maxReplicas=3), snapshot(400.0)).scale == {"m-cpu-pool": 3}
    assert tick(policy(maxReplicas=50), snapshot(4000.0)).scale == {"m-cpu-pool": 6}


def test_min_replicas_is_kept_with_no_load() -> None:
    out = tick(policy(minReplicas=3), snapshot(0.0), replicas=2)
    assert out.scale == {"m-cpu-pool": 3}


def test_spare_replicas_are_kept_beyond_what_the_load_needs_at_full_capacity() -> None:
    """130 req/s on replicas of 100: two at 70% carry it, but not with one gone; a spare
    makes it three. 350 req/s: the five that 70% asks for carry it with one gone."""
    assert tick(policy(), snapshot(130.0), replicas=2).scale == {}
    assert tick(policy(spareReplicas=1), snapshot(130.0), replicas=2).scale == {"m-cpu-pool": 3}
    assert tick(policy(spareReplicas=2), snapshot(130.0), replicas=2).scale == {"m-cpu-pool": 4}
    for spare in (0, 1):
        assert tick(policy(spareReplicas=spare), snapshot(350.0), replicas=5).scale == {}


def test_cooldowns_are_the_policy_s() -> None:
    memory = {"cpu-pool": Memory(last_up=NOW - 10)}
    assert tick(policy(scaleUpCooldownSeconds=30), snapshot(250.0), 3, memory).scale == {}
    assert tick(policy(scaleUpCooldownSeconds=5), snapshot(250.0), 3, memory).scale == {
        "m-cpu-pool": 4
    }
    # down: the window must have been watched, and the last change be old enough
    watched = {"cpu-pool": Memory(last_up=NOW - 100, watching_since=NOW - 100)}
    assert tick(policy(scaleDownCooldownSeconds=200), snapshot(10.0), 4, watched).scale == {}
    assert tick(policy(scaleDownCooldownSeconds=60), snapshot(10.0), 4, watched).scale == {
        "m-cpu-pool": 2
    }


def test_static_and_external_never_scale() -> None:
    for mode in ("Static", "External"):
        out = tick(policy(replicas=mode), snapshot(4000.0))
        assert out.scale == {}
        assert mode in out.status["placements"][0]["reason"]


def test_unknown_metrics_hold_replicas_and_say_so_in_the_condition() -> None:
    out = tick(policy(), Snapshot(NOW, {}, "Prometheus query failed: ConnectionError"))
    assert out.scale == {}
    scaling = find(out.status["conditions"], "Scaling")
    assert scaling is not None and scaling["status"] == "False"
    assert scaling["reason"] == "MetricsUnknown"
    assert "ConnectionError" in scaling["message"]
    assert "observedRequestsPerSecond" not in out.status


def test_batch_tuning_follows_load_and_can_be_turned_off() -> None:
    loaded = snapshot(180.0, p99=0.02, ready=2)  # 90% of two replicas' capacity
    on = tick(policy(maxBatchSize=1024), loaded)
    assert on.limits["m-cpu-pool-limits"].max_batch_rows == 256
    assert on.status["placements"][0]["batchSize"] == 256
    off = tick(policy(batchTuning=False), loaded)
    assert off.limits["m-cpu-pool-limits"].max_batch_rows == 128  # the plan's


def test_batch_bounds_are_the_policy_s_and_one_request_fits() -> None:
    loaded = snapshot(180.0, p99=0.02, ready=2)
    capped = tick(policy(maxBatchSize=200), loaded)
    assert capped.limits["m-cpu-pool-limits"].max_batch_rows == 200
    floor = tick(policy(minBatchSize=16), loaded, rm=model(candidatesPerRequest=100))
    assert floor.limits["m-cpu-pool-limits"].min_batch_rows == 100


def test_min_batch_size_is_the_floor_of_the_servers_batch_limits() -> None:
    loaded = snapshot(180.0, p99=0.02, ready=2)
    assert tick(policy(), loaded).limits["m-cpu-pool-limits"].min_batch_rows == 64  # a request
    raised = tick(policy(minBatchSize=200), loaded)
    assert raised.limits["m-cpu-pool-limits"].min_batch_rows == 200


def test_apply_writes_scale_limits_and_status_once() -> None:
    kube = FakeKube()
    rm = model()
    stored = kube.add({**rm.to_wire(), "apiVersion": "recserve.io/v1alpha1", "kind": "RecModel"})
    kube.add(SERVED_DEPLOYMENT)
    observed = observe_pools(kube, rm, [PLANNED])
    assert observed["cpu-pool"] == Observed(2, 2, None, limits_seen=False)
    out = decide_tick(rm, policy(), [PLANNED], observed, snapshot(400.0), {}, NOW)
    apply_tick(kube, RecModel.model_validate(stored), out)
    assert kube.verbs("scale") == ["m-cpu-pool"]
    assert (kube.find("Deployment", "m-cpu-pool", NS) or {})["spec"]["replicas"] == 6
    cm = kube.find("ConfigMap", "m-cpu-pool-limits", NS)
    assert cm is not None and json.loads(cm["data"][LIMITS_KEY])["max_batch_rows"] == 256
    assert limits_of(cm) == out.limits["m-cpu-pool-limits"]
    assert kube.verbs("patch_status") == ["m"]
    # the same decision again writes no status
    again = RecModel.model_validate(kube.find("RecModel", "m", NS))
    apply_tick(
        kube,
        again,
        decide_tick(again, policy(), [PLANNED], observed, snapshot(400.0), out.memory, NOW),
    )
    assert kube.verbs("patch_status") == ["m"]


def test_a_limits_config_map_the_watch_has_not_seen_is_left_to_the_pass() -> None:
    """The pass creates a pool's limits ConfigMap with the plan's limits. A tick that comes
    before the watch shows it does not write those limits again; one that decides other
    limits writes them; one whose ConfigMap is there but does not parse rewrites it."""
    unseen = {"cpu-pool": Observed(2, 2, None, limits_seen=False)}
    light = snapshot(100.0)
    quiet = decide_tick(model(), policy(batchTuning=False), [PLANNED], unseen, light, {}, NOW)
    assert quiet.limits == {}
    loaded = snapshot(180.0, p99=0.02, ready=2)
    tuned = decide_tick(model(), policy(maxBatchSize=1024), [PLANNED], unseen, loaded, {}, NOW)
    assert tuned.limits["m-cpu-pool-limits"].max_batch_rows == 256
    broken = {"cpu-pool": Observed(2, 2, None)}  # seen, but it does not parse
    again = decide_tick(model(), policy(batchTuning=False), [PLANNED], broken, light, {}, NOW)
    assert again.limits["m-cpu-pool-limits"].max_batch_rows == 128


def test_a_limits_config_map_that_does_not_parse_is_rewritten() -> None:
    cm = limits_config_map(model(), "x", tick(policy(), snapshot(1.0)).limits["m-cpu-pool-limits"])
    assert limits_of(cm) is not None
    cm["data"][LIMITS_KEY] = "{not json"
    assert limits_of(cm) is None


def test_the_loop_ticks_each_model_at_its_policy_s_interval() -> None:
    from recserve_operator.observe import MetricsCache, Windows
    from recserve_operator.scaling_loop import ScalingLoop

    kube = FakeKube()
    kube.add({**model().to_wire(), "apiVersion": "recserve.io/v1alpha1", "kind": "RecModel"})
    raw_policy = policy(intervalSeconds=7).to_wire()
    raw_policy["metadata"]["name"] = model().spec.policy_ref.name
    kube.add({**raw_policy, "apiVersion": "recserve.io/v1alpha1", "kind": "OptimizationPolicy"})
    kube.add(SERVED_DEPLOYMENT)
    loop = ScalingLoop(MetricsCache(lambda _: [], Windows(), 1.0), tick_seconds=1.0)
    key = f"{NS}/m"
    loop.planned(key, [PLANNED])
    assert loop.due(0.0) == [key]  # a new model is due at once
    posted: list[Any] = []
    loop.tick(key, kube, lambda _, events: posted.extend(events))
    import time

    now = time.monotonic()
    assert loop.due(now) == []
    assert loop.due(now + 6.5) == []
    assert loop.due(now + 7.5) == [key]
    # no fresh series: held, said in the status the tick wrote
    status = (kube.find("RecModel", "m", NS) or {})["status"]
    assert find(status["conditions"], "Scaling")["reason"] == "MetricsUnknown"
    # a pass running for the model: the tick skips it
    with loop.locks.held(key):
        loop.tick(key, kube, lambda _, events: posted.extend(events))
    assert loop.ticks == 1
    loop.planned(key, [])
    assert loop.due(now + 100) == []


def test_sustained_slow_compute_is_reported_as_drift_once_per_cooldown() -> None:
    from dataclasses import replace as dc_replace

    pool = dc_replace(PLANNED, profile_p50_s=((64, 0.002), (128, 0.004)))
    p = policy()
    raw = p.to_wire()
    raw["spec"]["drift"] = {
        "checkIntervalSeconds": 10,
        "sustainedSeconds": 60,
        "cooldownSeconds": 600,
        "latencyDriftBasisPoints": 2000,
    }
    p = OptimizationPolicy.model_validate(raw)

    def snap(at: float, compute_s: float) -> Snapshot:
        m = PoolMetrics(
            served_fast=50.0,
            served_stable=50.0,
            refused_fast=0.0,
            refused_stable=0.0,
            ready_pods=2,
            p99_fast=0.02,
            compute_mean_stable=compute_s,
            batch_rows_stable=64.0,
        )
        return Snapshot(at, {(NS, "m", "cpu-pool"): m})

    observed = {"cpu-pool": Observed(2, 2, None)}
    drift: dict[str, Any] = {}
    memory: dict[str, Memory] = {}
    events: list[tuple[str, str, str]] = []
    conds: list[dict[str, Any]] = []
    for i in range(30):  # 10 s apart: normal for 60 s, then twice the profile's p99
        now = NOW + 10 * i
        out = decide_tick(
            model(), p, [pool], observed, snap(now, 0.002 if i < 6 else 0.004), memory, now, drift
        )
        drift, memory = out.drift, out.memory
        events += [e for e in out.events if e[1] == "DriftDetected"]
        conds.append(find(out.status["conditions"], "Drift") or {})
    first = next(i for i, cond in enumerate(conds) if cond.get("status") == "True")
    assert first == 12  # the first window of slow samples only: 6 s .. 12 (60 s)
    assert conds[first]["reason"] == "LatencyDrift"
    assert "4.0 ms per batch of 64 rows" in conds[first]["message"]
    assert all(cond["status"] == "False" for cond in conds[:first])
    assert len(events) == 1 and events[0][0] == "Warning"  # once: the cooldown is 600 s


def _drifting_policy(**drift: Any) -> OptimizationPolicy:
    raw = policy().to_wire()
    raw["spec"]["drift"] = {
        "checkIntervalSeconds": 10,
        "sustainedSeconds": 30,
        "cooldownSeconds": 600,
        **drift,
    }
    return OptimizationPolicy.model_validate(raw)


def _run_drifting(
    p: OptimizationPolicy,
    ticks: int,
    rm: RecModel | None = None,
    fidelity: float | None = None,
    data_psi: float | None = None,
    slow: bool = True,
    fast_ticks: frozenset[int] = frozenset(),
    planned: PlannedPool = PLANNED,
    fidelity_of: str = "int8",
) -> Any:
    """Ticks 10 s apart on a pool twice as slow as its profile and saturated (both
    latency and capacity drift; ``slow=False``, and at ``fast_ticks``: as fast as
    profiled, not saturated); the model's status carries each tick's writes, as the API
    server would. Returns the last model and every re-optimization event."""
    from dataclasses import replace as dc_replace

    pool = dc_replace(planned, profile_p50_s=((64, 0.002), (128, 0.004)))
    rm = rm or model()
    drift: dict[str, Any] = {}
    memory: dict[str, Memory] = {}
    actions: list[str] = []
    for i in range(ticks):
        now = NOW + 10 * i
        slow_now = slow and i not in fast_ticks
        m = PoolMetrics(
            served_fast=40.0,
            served_stable=40.0,
            refused_fast=20.0 if slow_now else 0.0,
            refused_stable=20.0 if slow_now else 0.0,
            ready_pods=2,
            p99_fast=0.2 if slow_now else 0.01,
            compute_mean_stable=0.004 if slow_now else 0.002,
            batch_rows_stable=64.0,
            fidelity_by_variant=() if fidelity is None else ((fidelity_of, fidelity),),
            data_psi=data_psi,
            data_psi_feature=None if data_psi is None else "genre",
        )
        observed = {"cpu-pool": Observed(2, 2, None)}
        snap = Snapshot(now, {(NS, "m", "cpu-pool"): m})
        out = decide_tick(rm, p, [pool], observed, snap, memory, now, drift)
        drift, memory = out.drift, out.memory
        actions += [msg for _, reason, msg in out.events if reason == "Reoptimizing"]
        wire = rm.to_wire()
        wire["status"] = {**(wire.get("status") or {}), **out.status}
        rm = RecModel.model_validate(wire)
    return rm, actions


def test_drift_asks_once_for_a_re_profile_whatever_the_causes() -> None:
    rm, actions = _run_drifting(_drifting_policy(), 12)
    assert len(actions) == 1, actions
    assert rm.status is not None
    assert rm.status.profile_rounds == {"cpu-pool": 1}
    [entry] = rm.status.last_optimization
    assert entry.cause == "LatencyDrift and CapacityDrift"  # found together: one action
    assert entry.outcome == "pending" and entry.profile_round == 1
    assert "re-profile pool cpu-pool (round 1)" in entry.action
    assert "4.0 ms per batch" in entry.evidence


def test_no_second_re_profile_while_one_is_pending_or_within_the_cooldown() -> None:
    # pending: the drift goes on past the cooldown, no second action
    rm, actions = _run_drifting(_drifting_policy(cooldownSeconds=60), 30)
    assert len(actions) == 1
    # finished 100 s ago, cooldown 600 s: none; finished long ago: round 2
    assert rm.status is not None
    for ago, expected in ((100, 0), (1000, 1)):
        wire = rm.to_wire()
        entry = wire["status"]["lastOptimization"][0]
        entry["outcome"] = "re-planned from the new profile (unchanged): ..."
        entry["time"] = stamp(NOW - ago)
        done = RecModel.model_validate(wire)
        again, more = _run_drifting(_drifting_policy(), 12, done)
        assert len(more) == expected, (ago, more)
        if expected:
            assert again.status is not None
            assert again.status.profile_rounds == {"cpu-pool": 2}
            assert [o.profile_round for o in again.status.last_optimization] == [1, 2]


def test_reprofile_false_reports_drift_and_does_nothing_else() -> None:
    rm, actions = _run_drifting(_drifting_policy(reprofile=False), 12)
    assert not actions
    assert rm.status is not None and not rm.status.last_optimization
    assert find(rm.status.to_wire()["conditions"], "Drift")["status"] == "True"


def test_drift_thresholds_are_the_policy_s() -> None:
    """Twice the profile's compute, a fifth of its capacity, 60% agreement: each is drift
    at the usual thresholds, and not once the policy's threshold is past it."""
    causes = ["LatencyDrift", "CapacityDrift", "FidelityDrift"]
    rm, _ = _run_drifting(_drifting_policy(), 12, fidelity=0.6)
    assert rm.status is not None
    assert rm.status.last_optimization[0].cause == " and ".join(causes)
    for field, value, cause in (
        ("latencyDriftBasisPoints", 10000, "LatencyDrift"),
        ("capacityDriftBasisPoints", 9000, "CapacityDrift"),
        ("fidelityAgreementBasisPoints", 5000, "FidelityDrift"),
    ):
        rm, _ = _run_drifting(_drifting_policy(**{field: value}), 12, fidelity=0.6)
        assert rm.status is not None
        found = rm.status.last_optimization[0].cause
        assert found == " and ".join(c for c in causes if c != cause), (field, found)


def test_drift_is_sampled_every_check_interval() -> None:
    """Every other tick (10 s apart) is as fast as profiled: checked every 10 s, the streak
    always breaks; checked every 20 s, only slow ticks are sampled."""
    odd = frozenset(range(1, 30, 2))
    _, every_tick = _run_drifting(_drifting_policy(checkIntervalSeconds=10), 12, fast_ticks=odd)
    _, every_other = _run_drifting(_drifting_policy(checkIntervalSeconds=20), 12, fast_ticks=odd)
    assert (len(every_tick), len(every_other)) == (0, 1)


def test_a_re_profile_waits_for_the_policy_s_drift_cooldown() -> None:
    rm, _ = _run_drifting(_drifting_policy(), 12)
    wire = rm.to_wire()
    entry = wire["status"]["lastOptimization"][0]
    entry["outcome"] = "re-planned from the new profile (unchanged): ..."
    entry["time"] = stamp(NOW - 300)  # the drift goes on 300 to 410 s after it
    done = RecModel.model_validate(wire)
    for cooldown, expected in ((600, 0), (200, 1)):
        _, more = _run_drifting(_drifting_policy(cooldownSeconds=cooldown), 12, done)
        assert len(more) == expected, (cooldown, more)


def test_fidelity_drift_takes_the_variant_out_one_action_for_all_causes() -> None:
    rm, actions = _run_drifting(_drifting_policy(), 12, fidelity=0.6)
    assert len(actions) == 1 and "re-planning without m-int8" in actions[0], actions
    assert rm.status is not None
    assert rm.status.drifted_variants == ["m-int8"]
    assert rm.status.profile_rounds == {}  # accuracy first: no re-profile as well
    [entry] = rm.status.last_optimization
    assert entry.cause == "LatencyDrift and CapacityDrift and FidelityDrift"
    assert entry.variant == "m-int8" and entry.profile_round is None
    assert "60.0% of candidate pairs" in entry.evidence
    assert find(rm.status.to_wire()["conditions"], "Drift")["status"] == "True"


def test_fidelity_within_the_floor_is_no_action_on_accuracy() -> None:
    rm, actions = _run_drifting(_drifting_policy(), 12, fidelity=0.97)
    assert rm.status is not None and not rm.status.drifted_variants
    assert "re-profiling" in actions[0]  # the latency and capacity drift remain


def test_data_drift_is_reported_for_a_human_and_the_plan_is_kept() -> None:
    rm, actions = _run_drifting(_drifting_policy(), 12, data_psi=0.8, slow=False)
    assert not actions  # nothing re-profiled or re-planned
    assert rm.status is not None and rm.status.profile_rounds == {}
    assert not rm.status.drifted_variants
    [entry] = rm.status.last_optimization
    assert entry.cause == "DataDrift" and entry.outcome.startswith("reported")
    assert "PSI of genre 0.80" in entry.evidence
    drift = find(rm.status.to_wire()["conditions"], "Drift")
    assert (drift["status"], drift["reason"]) == ("True", "DataDrift")
    # the threshold is the policy's
    calm, _ = _run_drifting(
        _drifting_policy(dataDriftPsiThousandths=900), 12, data_psi=0.8, slow=False
    )
    assert calm.status is not None and not calm.status.last_optimization


def test_a_data_drift_report_does_not_hold_back_a_re_profile() -> None:
    reported, _ = _run_drifting(_drifting_policy(), 12, data_psi=0.8, slow=False)
    rm, actions = _run_drifting(_drifting_policy(), 12, reported, data_psi=0.8)
    assert len(actions) == 1 and "re-profiling" in actions[0], actions
    assert rm.status is not None
    assert [o.cause for o in rm.status.last_optimization] == [
        "DataDrift",
        "LatencyDrift and CapacityDrift",
    ]


STATIC_POOL = PlannedPool(**{**PLANNED.__dict__, "recalibrate_as": "int8-static-recal1"})


def test_fidelity_drift_of_a_static_variant_also_recalibrates_it_on_recent_requests() -> None:
    rm, actions = _run_drifting(_drifting_policy(), 12, fidelity=0.6, planned=STATIC_POOL)
    assert len(actions) == 2 and "recalibrating m-int8" in actions[1], actions
    assert rm.status is not None
    replan, recal = rm.status.last_optimization
    assert replan.variant == "m-int8" and replan.recalibration is None
    assert recal.cause == "FidelityDrift" and recal.outcome == "pending"
    assert (recal.variant, recal.recalibration) == ("m-int8", "int8-static-recal1")
    assert "as int8-static-recal1" in recal.action
    assert rm.status.drifted_variants == ["m-int8"]  # accuracy first, as before
    # nothing more while the recalibration is pending, whatever the drift
    again, more = _run_drifting(
        _drifting_policy(cooldownSeconds=0), 12, rm, 0.6, planned=STATIC_POOL
    )
    assert not more and again.status is not None
    assert len(again.status.last_optimization) == 2


def test_data_drift_of_a_static_variant_recalibrates_it_and_keeps_it_until_then() -> None:
    rm, actions = _run_drifting(
        _drifting_policy(), 12, data_psi=0.8, slow=False, planned=STATIC_POOL
    )
    assert len(actions) == 1 and "DataDrift: recalibrating m-int8" in actions[0], actions
    assert rm.status is not None
    [entry] = rm.status.last_optimization
    assert (entry.cause, entry.recalibration, entry.outcome) == (
        "DataDrift",
        "int8-static-recal1",
        "pending",
    )
    assert not rm.status.drifted_variants  # served until the new one is built
    # already calibrated on recent requests, or no recalibration possible: reported only
    for planned in (PlannedPool(**{**STATIC_POOL.__dict__, "recalibrated": True}), PLANNED):
        rm, actions = _run_drifting(
            _drifting_policy(), 12, data_psi=0.8, slow=False, planned=planned
        )
        assert not actions and rm.status is not None
        [entry] = rm.status.last_optimization
        assert entry.outcome.startswith("reported") and entry.recalibration is None


def test_fidelity_drift_during_a_data_drift_recalibration_takes_the_variant_out_now() -> None:
    """Data drift first: the static variant is recalibrated and keeps serving meanwhile.
    Its ranking then departs from the reference (fidelity drift): accuracy first, it
    leaves the plan at once, the pending recalibration is not held against that, and no
    second recalibration is asked for (seen in `recserve bench drift`: the INT8 served
    at 83% agreement until its successor was rolled out)."""
    rm, _ = _run_drifting(_drifting_policy(), 12, data_psi=0.8, slow=False, planned=STATIC_POOL)
    assert rm.status is not None and not rm.status.drifted_variants
    again, actions = _run_drifting(
        _drifting_policy(), 12, rm, 0.6, data_psi=0.8, slow=False, planned=STATIC_POOL
    )
    assert len(actions) == 1 and "re-planning without m-int8" in actions[0], actions
    assert again.status is not None
    assert again.status.drifted_variants == ["m-int8"]
    recal, replan = again.status.last_optimization
    assert (recal.cause, recal.outcome) == ("DataDrift", "pending")  # still under way
    assert replan.cause == "FidelityDrift" and replan.recalibration is None
    # a re-profile pending for the pool still holds fidelity drift back, as before
    reprofiling, _ = _run_drifting(_drifting_policy(), 12)
    held, more = _run_drifting(_drifting_policy(), 12, reprofiling, 0.6, planned=STATIC_POOL)
    assert not more and held.status is not None and not held.status.drifted_variants


def test_fidelity_drift_during_a_canary_names_the_variant_the_stable_side_serves() -> None:
    """The data-drift recalibration closed and the pool is moving to its successor by
    canary, the old variant still on the pool's own Deployment: fidelity drift found
    then is the old variant's (the detectors read that Deployment). It gets the
    FidelityDrift entry, the recalibration's cooldown does not hold it back, and no
    recalibration of the successor is asked for (in `recserve bench drift` the finding
    was taken for the successor's and held: the old INT8 kept most requests 80 s more)."""
    from dataclasses import replace as dc_replace

    rm, _ = _run_drifting(_drifting_policy(), 12, data_psi=0.8, slow=False, planned=STATIC_POOL)
    wire = rm.to_wire()
    wire["status"]["lastOptimization"][0]["outcome"] = "recalibrated m-int8 as int8-static-recal1"
    wire["status"]["driftedVariants"] = ["m-int8"]
    rm = RecModel.model_validate(wire)
    moving = dc_replace(
        STATIC_POOL,
        variant="m-int8-static-recal1",
        serving_variant="m-int8",
        recalibrate_as="int8-static-recal2",
        recalibrated=True,
    )
    # the successor's own agreement (its canary pods, or after promotion) is not read
    # as the old variant's
    quiet, none = _run_drifting(
        _drifting_policy(), 12, rm, 0.6, data_psi=0.8, slow=False, planned=moving,
        fidelity_of="int8-static-recal1",
    )  # fmt: skip
    assert not none and quiet.status is not None and len(quiet.status.last_optimization) == 1
    again, actions = _run_drifting(
        _drifting_policy(), 12, rm, 0.6, data_psi=0.8, slow=False, planned=moving
    )
    assert len(actions) == 1 and "re-planning without m-int8" in actions[0], actions
    assert again.status is not None
    _, replan = again.status.last_optimization
    assert (replan.cause, replan.variant, replan.recalibration) == ("FidelityDrift", "m-int8", None)
    assert again.status.drifted_variants == ["m-int8"]


# -- canary rollouts: the tick's part -------------------------------------------------------


def _rolling_out(phase: str = "Progressing", weight: int = 5, step_started: float = NOW - 120):
    from recserve_operator.reconcilers.scaling import stamp

    rm = model()
    wire = rm.to_wire()
    wire["status"] = {
        "rollouts": [
            {
                "pool": "cpu-pool",
                "fromVariant": "fp32",
                "toVariant": "int8-dynamic",
                "phase": phase,
                "step": 0 if phase == "Progressing" else -1,
                "weightPercent": weight,
                "started": stamp(NOW - 300),
                "stepStarted": stamp(step_started),
            }
        ]
    }
    return RecModel.model_validate(wire)


def _canary_deployment(ready: int, reference: bool = False) -> dict[str, Any]:
    args = ["serve", "--variant=/x"] + (["--reference-variant=/ref"] if reference else [])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "m-cpu-pool-canary",
            "namespace": NS,
            "labels": {
                "recserve.io/model": "m",
                "recserve.io/pool": "cpu-pool",
                "recserve.io/track": "canary",
            },
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"args": args}]}}},
        "status": {"readyReplicas": ready},
    }


def _canary_answers(requests: float, errors: float, p99: float):
    """A Prometheus that answers the canary queries with these figures (and nothing else)."""

    def ask(query: str) -> list[dict[str, Any]]:
        if 'recserve_io_track="canary"' not in query:
            return []
        if "histogram_quantile" in query:
            value = p99
        elif 'code=~"5.."' in query:
            value = errors
        elif "recserve_requests_total" in query:
            value = requests
        else:
            return []
        return [{"metric": {"recserve_io_pool": "cpu-pool"}, "value": [NOW, str(value)]}]

    return ask


def _loop_with(rm: RecModel, ask: Any, *deployments: dict[str, Any]) -> tuple[Any, FakeKube]:
    from recserve_operator.observe import MetricsCache, Windows
    from recserve_operator.scaling_loop import ScalingLoop

    kube = FakeKube()
    kube.add({**rm.to_wire(), "apiVersion": "recserve.io/v1alpha1", "kind": "RecModel"})
    raw_policy = policy().to_wire()
    raw_policy["metadata"]["name"] = rm.spec.policy_ref.name
    raw_policy["spec"]["rollout"] = {"stepSeconds": 30, "failureLimit": 1}
    kube.add({**raw_policy, "apiVersion": "recserve.io/v1alpha1", "kind": "OptimizationPolicy"})
    kube.add(SERVED_DEPLOYMENT)
    for d in deployments:
        kube.add(d)
    loop = ScalingLoop(MetricsCache(ask, Windows(), 1.0), tick_seconds=1.0)
    loop.planned(f"{NS}/m", [PLANNED])
    return loop, kube


def _weights(kube: FakeKube) -> int | None:
    cm = kube.find("ConfigMap", "m-router-weights", NS)
    return None if cm is None else int(json.loads(cm["data"]["weights.json"])["canaryPercent"])


def test_a_tick_moves_a_good_canary_to_its_next_share_and_asks_for_a_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import recserve_operator.scaling_loop as sl

    monkeypatch.setattr(sl.time, "time", lambda: NOW)
    loop, kube = _loop_with(
        _rolling_out(), _canary_answers(200, 0, 0.04), _canary_deployment(ready=2)
    )
    posted: list[Any] = []
    replans: list[Any] = []
    loop.tick(f"{NS}/m", kube, lambda _, e: posted.extend(e), lambda k, w: replans.append(w))
    [r] = (kube.find("RecModel", "m", NS) or {})["status"]["rollouts"]
    assert (r["phase"], r["weightPercent"], r["step"]) == ("Progressing", 10, 1)
    assert _weights(kube) == 10
    assert [reason for _, reason, _ in posted if reason.startswith("Canary")] == ["CanaryStep"]
    assert replans and replans[0]["status"]["rollouts"][0]["weightPercent"] == 10


def test_a_failing_canary_is_rolled_back_and_its_variant_taken_out_of_the_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import recserve_operator.scaling_loop as sl

    monkeypatch.setattr(sl.time, "time", lambda: NOW)
    loop, kube = _loop_with(
        _rolling_out(), _canary_answers(200, 30, 0.04), _canary_deployment(ready=2)
    )
    posted: list[Any] = []
    loop.tick(f"{NS}/m", kube, lambda _, e: posted.extend(e), lambda k, w: None)
    status = (kube.find("RecModel", "m", NS) or {})["status"]
    [r] = status["rollouts"]
    assert (r["phase"], r["weightPercent"]) == ("RolledBack", 0)
    assert _weights(kube) == 0
    assert status["driftedVariants"] == ["m-int8-dynamic"]
    [entry] = status["lastOptimization"]
    assert (entry["cause"], entry["variant"], entry["outcome"]) == (
        "CanaryFailed",
        "m-int8-dynamic",
        "pending",
    )
    assert "errors 15.00% > 1.00%" in entry["evidence"]
    assert "CanaryRolledBack" in [reason for _, reason, _ in posted]


def test_a_canary_is_held_while_prometheus_is_away_and_nothing_is_asked_before_its_step_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import recserve_operator.scaling_loop as sl

    monkeypatch.setattr(sl.time, "time", lambda: NOW)
    asked: list[str] = []

    def down(query: str) -> list[dict[str, Any]]:
        asked.append(query)
        raise ConnectionError("Prometheus is away")

    loop, kube = _loop_with(_rolling_out(), down, _canary_deployment(ready=2))
    loop.tick(f"{NS}/m", kube, lambda _, e: None, lambda k, w: None)
    [r] = (kube.find("RecModel", "m", NS) or {})["status"]["rollouts"]
    assert (r["phase"], r["weightPercent"], r["failures"]) == ("Progressing", 5, 0)
    assert "holding" in r["message"]
    assert any('recserve_io_track="canary"' in q for q in asked)
    # mid-step: the canary's figures are not asked for at all
    asked.clear()
    loop, kube = _loop_with(_rolling_out(step_started=NOW - 10), down, _canary_deployment(ready=2))
    loop.tick(f"{NS}/m", kube, lambda _, e: None, lambda k, w: None)
    assert not any('recserve_io_track="canary"' in q for q in asked)


def test_a_compressed_canary_is_analysed_on_fidelity(monkeypatch: pytest.MonkeyPatch) -> None:
    import recserve_operator.scaling_loop as sl

    monkeypatch.setattr(sl.time, "time", lambda: NOW)
    # good errors and p99, but no pair scored against the reference: held
    loop, kube = _loop_with(
        _rolling_out(),
        _canary_answers(200, 0, 0.04),
        _canary_deployment(ready=2, reference=True),
    )
    loop.tick(f"{NS}/m", kube, lambda _, e: None, lambda k, w: None)
    [r] = (kube.find("RecModel", "m", NS) or {})["status"]["rollouts"]
    assert r["weightPercent"] == 5 and "pairs scored against the reference" in r["message"]
