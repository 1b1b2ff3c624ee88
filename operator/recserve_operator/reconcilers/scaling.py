"""One autoscaling tick of one RecModel: live metrics -> replicas and batch limits.

The reconcile pass plans each pool (variant, replicas for the peak, per-replica
capacity, batch ceiling) and creates its Deployment and limits ConfigMap; this tick,
every ``autoscaling.intervalSeconds``, decides from the live metrics
(:mod:`recserve_operator.autoscaler`) and says what to write: the Deployments' scale
subresource, the limits ConfigMaps (mounted as the servers' ``--limits-file``), the
RecModel's status (``placements[]``, live p99 and rps, the ``Scaling`` condition) and
an Event per change. :func:`decide_tick` is pure; :func:`apply_tick` does the writes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from recserve_operator import children
from recserve_operator import conditions as c
from recserve_operator.api.optimizationpolicy import OptimizationPolicy, ReplicaScaling
from recserve_operator.api.recmodel import (
    CanaryPhase,
    CanaryRollout,
    Optimization,
    PoolPlacement,
    RecModel,
)
from recserve_operator.autoscaler import (
    SATURATED_REFUSED_SHARE,
    BatchLimits,
    BatchRange,
    Bounds,
    Memory,
    decide_batch,
    decide_replicas,
)
from recserve_operator.canary import CanaryMetrics, CanaryRules, advance, router_weight
from recserve_operator.drift import (
    DriftRules,
    DriftSample,
    Finding,
    capacity_drift,
    data_drift,
    fidelity_drift,
    latency_drift,
)
from recserve_operator.kube import Kube
from recserve_operator.observe import PoolMetrics, Snapshot, Unknown

log = logging.getLogger("recserve.scaling")
SCALING = "Scaling"
METRICS_KNOWN = "MetricsKnown"
METRICS_UNKNOWN = "MetricsUnknown"
STATIC = "Static"
LIMITS_KEY = "limits.json"
DRIFT = "Drift"
NO_DRIFT = "NoDrift"


def _sample_drift(
    state: DriftState,
    metrics: PoolMetrics | Unknown,
    serving_label: str,
    policy: OptimizationPolicy,
    now: float,
) -> DriftState:
    """Add this tick's sample when the check interval has passed (unknown metrics are a
    sample too: they break a detector's window). The fidelity sampled is that of the
    variant the pool's own Deployment serves (``serving_label``, its pod label)."""
    rules = policy.spec.drift
    if state.samples and now - state.samples[-1].at < rules.check_interval_seconds:
        return state
    if isinstance(metrics, PoolMetrics):
        slo_s = policy.spec.objectives.p99_latency_target_milliseconds / 1000
        saturated = metrics.refused_fast > SATURATED_REFUSED_SHARE * max(
            metrics.demand_fast, 1e-9
        ) or (metrics.p99_fast is not None and metrics.p99_fast > slo_s)
        per_replica = metrics.served_fast / metrics.ready_pods if metrics.ready_pods else None
        sample = DriftSample(
            now,
            metrics.compute_mean_stable,
            metrics.batch_rows_stable,
            per_replica,
            saturated,
            metrics.fidelity_of(serving_label),
            metrics.data_psi,
            metrics.data_psi_feature,
        )
    else:
        sample = DriftSample(now, None, None, None, False)
    keep = 2 * rules.sustained_seconds + rules.check_interval_seconds
    return DriftState(
        (*tuple(s for s in state.samples if now - s.at <= keep), sample), state.reported
    )


def _look_for_drift(
    model: RecModel,
    pp: PlannedPool,
    state: DriftState,
    policy: OptimizationPolicy,
    now: float,
    out: TickOutcome,
) -> DriftState:
    """Run the detectors; a finding is reported (Event) once per cooldown, and acted on
    (:func:`_reoptimize`) when the policy says so."""
    rules = policy.spec.drift
    interval = max(rules.check_interval_seconds, policy.spec.autoscaling.interval_seconds)
    detector_rules = DriftRules(
        latency_bp=rules.latency_drift_basis_points,
        capacity_bp=rules.capacity_drift_basis_points,
        sustained_s=rules.sustained_seconds,
        max_gap_s=2.5 * interval,
    )
    found = [
        f
        for f in (
            latency_drift(state.samples, pp.profile_p50_s, detector_rules, now),
            capacity_drift(state.samples, pp.capacity_rps, detector_rules, now),
            fidelity_drift(
                state.samples, rules.fidelity_agreement_basis_points, detector_rules, now
            ),
            data_drift(state.samples, rules.data_drift_psi_thousandths, detector_rules, now),
        )
        if f is not None
    ]
    reported = dict(state.reported)
    new: list[Finding] = []
    for finding in found:
        out.findings.append((pp.pool, finding))
        last = reported.get(finding.cause)
        if last is None or now - last >= rules.cooldown_seconds:
            reported[finding.cause] = now
            message = f"pool {pp.pool}: {finding.cause} drift: {finding.evidence}"
            out.events.append(("Warning", "DriftDetected", message))
            out.decisions.append(("drift", finding.cause))
            new.append(finding)
    acted = [f for f in new if f.cause != "data"]
    if acted and rules.reprofile:
        _reoptimize(model, pp, acted, policy, now, out)
    for finding in new:
        if finding.cause == "data":
            _report_data_drift(model, pp, finding, policy, now, out)
    return DriftState(state.samples, tuple(reported.items()))


CAUSES = {
    "latency": "LatencyDrift",
    "capacity": "CapacityDrift",
    "fidelity": "FidelityDrift",
    "data": "DataDrift",
}
REPORTED = "reported: the plan is kept; the inputs moved, retrain or recalibrate"
PENDING = "pending"
KEEP_OPTIMIZATIONS = 10  # status.lastOptimization's maxItems
CANARY_FAILED = "CanaryFailed"


def _reoptimize(
    model: RecModel,
    pp: PlannedPool,
    findings: list[Finding],
    policy: OptimizationPolicy,
    now: float,
    out: TickOutcome,
) -> None:
    """Ask for a new profile of the pool and a re-plan from it: one action for all the
    causes found together, none while one is pending for the pool or within the drift
    cooldown of the last (the pass runs the profile Job and records the outcome). On
    fidelity drift the variant leaves the plan at once, and a statically quantized one
    is also recalibrated on recent requests (a second entry, closed when that is done).
    Fidelity drift during a canary is the stable side's: that variant leaves at once, and
    the pool moves to the canary's variant without waiting for the rollout's steps."""
    pool = pp.pool
    fidelity = any(f.cause == "fidelity" for f in findings)
    variant = (pp.serving_variant if fidelity else None) or pp.variant
    status = model.status
    history = [*(status.last_optimization if status else []), *out.optimizations]
    # a recalibration started on data drift keeps the variant serving until its successor
    # is ready; fidelity drift found meanwhile says the variant now ranks unlike the
    # reference, so it is not held back by that entry: accuracy first
    recalibrating = [
        o
        for o in history
        if o.pool == pool and o.recalibration and o.cause == CAUSES["data"] and o.variant == variant
    ]
    mine = [
        o
        for o in history
        if o.pool == pool and o.outcome != REPORTED and not (fidelity and o in recalibrating)
    ]
    if mine and (
        mine[-1].outcome == PENDING
        or now - (parse_stamp(mine[-1].time) or 0.0) < policy.spec.drift.cooldown_seconds
    ):
        return
    causes = " and ".join(CAUSES[f.cause] for f in findings)
    if fidelity:
        # accuracy first: the variant is taken out of the plan, which re-plans the pool
        # (another variant within the budget); a re-profile would not change its ranking
        action = (
            f"re-plan without variant {variant}, whose ranking departed from the FP32 reference"
        )
        target: dict[str, Any] = {"variant": variant}
        doing, kind = f"re-planning without {variant}", "fidelity"
    else:
        rounds = {**(status.profile_rounds if status else {}), **_rounds(out.optimizations)}
        round_ = rounds.get(pool, 0) + 1
        action = f"re-profile pool {pool} (round {round_}), then re-plan from the new profile"
        target = {"profile_round": round_}
        doing, kind = f"re-profiling (round {round_})", findings[0].cause
    out.optimizations.append(
        Optimization(
            time=stamp(now),
            pool=pool,
            cause=causes,
            evidence="; ".join(f.evidence for f in findings)[:2048],
            action=action,
            outcome=PENDING,
            **target,
        )
    )
    out.events.append(("Normal", "Reoptimizing", f"pool {pool}: {causes}: {doing}"))
    out.decisions.append(("reoptimize", kind))
    underway = [
        o for o in recalibrating if o.outcome == PENDING or o.outcome.startswith("recalibrated ")
    ]
    # recalibrate_as is the planned variant's: none while the pool is moving off another
    if kind == "fidelity" and pp.recalibrate_as and variant == pp.variant and not underway:
        _recalibrate(pp, CAUSES["fidelity"], out.optimizations[-1].evidence, now, out)


def _recalibrate(pp: PlannedPool, cause: str, evidence: str, now: float, out: TickOutcome) -> None:
    """Ask for the served variant's recalibration on the pool's recent requests (the
    pass runs the Job: reconcilers/recalibration.py)."""
    assert pp.recalibrate_as is not None
    out.optimizations.append(
        Optimization(
            time=stamp(now),
            pool=pp.pool,
            cause=cause,
            evidence=evidence,
            action=f"recalibrate {pp.variant} on the recent requests of pool {pp.pool} as "
            f"{pp.recalibrate_as}, then move the pool to it by canary",
            variant=pp.variant,
            recalibration=pp.recalibrate_as,
            outcome=PENDING,
        )
    )
    out.events.append(
        ("Normal", "Reoptimizing", f"pool {pp.pool}: {cause}: recalibrating {pp.variant}")
    )
    out.decisions.append(("recalibrate", cause))


def _report_data_drift(
    model: RecModel,
    pp: PlannedPool,
    finding: Finding,
    policy: OptimizationPolicy,
    now: float,
    out: TickOutcome,
) -> None:
    """Record data drift for a human: the inputs moved away from the training data, which
    neither a re-profile nor another variant undoes. A statically quantized variant
    still calibrated on training rows is recalibrated on recent requests (when no other
    action is pending for the pool); otherwise the plan is kept. Once per cooldown per
    pool, also across operator restarts (the status keeps the last report)."""
    pool = pp.pool
    status = model.status
    history = [*(status.last_optimization if status else []), *out.optimizations]
    last = [o for o in history if o.pool == pool and o.cause == CAUSES["data"]]
    if last and now - (parse_stamp(last[-1].time) or 0.0) < policy.spec.drift.cooldown_seconds:
        return
    busy = any(o.pool == pool and o.outcome == PENDING for o in history)
    if pp.recalibrate_as and not pp.recalibrated and not busy:
        _recalibrate(pp, CAUSES["data"], finding.evidence[:2048], now, out)
        return
    out.optimizations.append(
        Optimization(
            time=stamp(now),
            pool=pool,
            cause=CAUSES["data"],
            evidence=finding.evidence[:2048],
            action="none automatic: a model trained or calibrated on recent inputs is needed",
            outcome=REPORTED,
        )
    )
    out.decisions.append(("drift_reported", "data"))


def _rounds(optimizations: list[Optimization]) -> dict[str, int]:
    """The profile round each pool's latest re-profile asked for."""
    return {o.pool: o.profile_round for o in optimizations if o.profile_round is not None}


@dataclass(frozen=True)
class PlannedPool:
    """What the reconcile pass planned for one pool (the tick's fixed inputs)."""

    pool: str
    variant: str  # ModelVariant object name
    deployment: str
    limits_config_map: str
    planned_replicas: int
    capacity_rps: float  # one replica at full load, as profiled
    batch_size: int  # the plan's batch ceiling
    ceiling: int  # the lower of the policy's maxReplicas and the pool's
    # the profile of the served variant on this pool: (batch rows, p50 s of one call)
    profile_p50_s: tuple[tuple[int, float], ...] = ()
    # what a recalibration of the served variant on recent requests would be called (None:
    # not statically quantized, or the policy says no), and whether it is one already
    recalibrate_as: str | None = None
    recalibrated: bool = False
    # the variant (object name) the pool's own Deployment still serves while a canary
    # moves the pool to ``variant``; None when it serves ``variant``. The drift
    # detectors' fidelity is that Deployment's (the canary is judged by its analysis).
    serving_variant: str | None = None
    # the pod label (recserve.io/variant) of the variant the pool's own Deployment
    # serves: the fidelity the drift detectors read is that variant's
    serving_label: str = ""


@dataclass(frozen=True)
class Observed:
    """One pool's Deployment and limits as the operator last saw them."""

    replicas: int | None  # spec.replicas (None: no Deployment yet)
    ready: int
    limits: BatchLimits | None  # None: no limits ConfigMap seen, or one that does not parse
    limits_seen: bool = True  # False: the operator's watch has no limits ConfigMap yet


@dataclass(frozen=True)
class DriftState:
    """A pool's recent samples for the drift detectors, and when each cause was last
    reported (held by the operator process: a restart watches a window again)."""

    samples: tuple[DriftSample, ...] = ()
    reported: tuple[tuple[str, float], ...] = ()


@dataclass
class TickOutcome:
    """What a tick decided for one RecModel."""

    scale: dict[str, int] = field(default_factory=dict)  # Deployment -> replicas
    limits: dict[str, BatchLimits] = field(default_factory=dict)  # ConfigMap -> limits
    status: dict[str, Any] = field(default_factory=dict)  # merge patch of status
    events: list[tuple[str, str, str]] = field(default_factory=list)
    memory: dict[str, Memory] = field(default_factory=dict)  # pool -> memory
    drift: dict[str, DriftState] = field(default_factory=dict)  # pool -> drift samples
    findings: list[tuple[str, Finding]] = field(default_factory=list)  # (pool, finding)
    decisions: list[tuple[str, str]] = field(default_factory=list)  # (kind, reason) counted
    # requests per second that arrived at all pools (stable window); None if any unknown
    demand_rps: float | None = None
    # some pool's demand wants more replicas than its ceiling: a re-plan may add a pool
    over_ceiling: bool = False
    held: int = 0  # pools whose replicas were held because their metrics were unknown
    # re-optimizations decided (the pass runs them)
    optimizations: list[Optimization] = field(default_factory=list)


def stamp(at: float) -> str:
    """RFC 3339 of a time.time() value."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def batch_range(model: RecModel, policy: OptimizationPolicy, planned: PlannedPool) -> BatchRange:
    scaling = policy.spec.autoscaling
    lowest = min(
        max(scaling.min_batch_size, model.spec.traffic.candidates_per_request),
        scaling.max_batch_size,
    )
    return BatchRange(
        planned=planned.batch_size,
        lowest=lowest,
        highest=scaling.max_batch_size,
        slo_ms=float(policy.spec.objectives.p99_latency_target_milliseconds),
    )


def limits_config_map(model: RecModel, name: str, limits: BatchLimits) -> dict[str, Any]:
    """The ConfigMap a pool's servers read their batching limits from."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": children.owned_metadata(name, model, {children.COMPONENT_LABEL: "limits"}),
        "data": {LIMITS_KEY: json.dumps(limits.to_doc(), sort_keys=True)},
    }


def limits_of(config_map: dict[str, Any] | None) -> BatchLimits | None:
    """The limits a ConfigMap holds (None if absent or unreadable: then rewritten)."""
    if not config_map:
        return None
    try:
        doc = json.loads((config_map.get("data") or {}).get(LIMITS_KEY) or "")
        return BatchLimits(
            max_batch_rows=int(doc["max_batch_rows"]),
            min_batch_rows=int(doc["min_batch_rows"]),
            max_queue_delay_ms=float(doc.get("max_queue_delay_ms", 0.0)),
            batch_budget_fraction=float(doc.get("batch_budget_fraction", 0.25)),
            slo_p99_ms=float(doc["slo_p99_ms"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def decide_tick(
    model: RecModel,
    policy: OptimizationPolicy,
    planned: list[PlannedPool],
    observed: dict[str, Observed],
    snapshot: Snapshot,
    memory: dict[str, Memory],
    now: float,
    drift: dict[str, DriftState] | None = None,
) -> TickOutcome:
    """Decide replicas and batch limits for every planned pool of ``model``, and look
    for drift (``drift``: each pool's detector state from the last tick)."""
    scaling = policy.spec.autoscaling
    slo_s = policy.spec.objectives.p99_latency_target_milliseconds / 1000
    out = TickOutcome()
    placements: list[dict[str, Any]] = []
    unknown: list[str] = []
    total_rps = 0.0
    demand = 0.0
    worst_p99: float | None = None
    old = {pl.pool: pl for pl in (model.status.placements if model.status else [])}
    for pp in planned:
        seen = observed.get(pp.pool) or Observed(None, 0, None)
        if seen.replicas is None:  # the pass has not created the Deployment yet
            continue
        metrics = snapshot.of(str(model.namespace), model.name, pp.pool)
        mem = memory.get(pp.pool)
        if mem is None:  # after a restart: the last change is in status
            last = parse_stamp(old[pp.pool].last_scale_time if pp.pool in old else None)
            mem = Memory(last_up=last, last_down=last)
        bounds = Bounds(
            scaling.min_replicas,
            min(scaling.max_replicas, pp.ceiling),
            scaling.scale_up_cooldown_seconds,
            scaling.scale_down_cooldown_seconds,
            scaling.spare_replicas,
        )
        if scaling.replicas == ReplicaScaling.AUTO:
            decision = decide_replicas(
                now, seen.replicas, metrics, pp.capacity_rps, slo_s, bounds, mem
            )
            replicas, reason, mem = decision.replicas, decision.reason, decision.memory
            capacity = decision.capacity_rps
            if decision.held:
                out.held += 1
            elif decision.wanted is not None and decision.wanted > bounds.max_replicas:
                out.over_ceiling = True
        else:
            replicas, capacity = seen.replicas, pp.capacity_rps
            reason = f"{scaling.replicas.value}: {seen.replicas} replicas" + (
                " (the plan's, for the peak)"
                if scaling.replicas == ReplicaScaling.STATIC
                else " (set by another autoscaler)"
            )
        out.memory[pp.pool] = mem
        if replicas != seen.replicas:
            out.scale[pp.deployment] = replicas
            out.events.append(("Normal", "Scaled", f"pool {pp.pool}: {reason}"))
            out.decisions.append(
                ("replicas_up" if replicas > seen.replicas else "replicas_down", _kind(reason))
            )
        rng = batch_range(model, policy, pp)
        planned_limits = rng.planned_limits()
        if scaling.batch_tuning:
            batch = decide_batch(seen.limits or planned_limits, metrics, capacity, seen.ready, rng)
            limits, batch_reason = batch.limits, batch.reason
        else:
            limits, batch_reason = planned_limits, "batch tuning off: the plan's batch ceiling"
        # A ConfigMap not seen yet is the pass's own, created with the plan's limits a
        # moment ago (the watch lags the write): writing the same limits again was one
        # more apply per new model. One that was deleted, the next pass creates again.
        pass_creates_it = not seen.limits_seen and limits == planned_limits
        if limits != seen.limits and not pass_creates_it:
            out.limits[pp.limits_config_map] = limits
            if seen.limits is not None and limits.max_batch_rows != seen.limits.max_batch_rows:
                out.events.append(("Normal", "BatchLimits", f"pool {pp.pool}: {batch_reason}"))
                out.decisions.append(("batch", _kind(batch_reason)))
        state = (drift or {}).get(pp.pool) or DriftState()
        state = _sample_drift(state, metrics, pp.serving_label, policy, now)
        state = _look_for_drift(model, pp, state, policy, now, out)
        out.drift[pp.pool] = state
        if isinstance(metrics, Unknown):
            unknown.append(f"{pp.pool}: {metrics.reason}")
        placement = PoolPlacement(
            pool=pp.pool,
            variant=pp.variant,
            replicas=replicas,
            planned_replicas=pp.planned_replicas,
            ready_replicas=seen.ready,
            batch_size=limits.max_batch_rows,
            capacity_requests_per_second=None if capacity is None else round(capacity),
            reason=f"{reason}; {batch_reason}"[:1024],
            last_scale_time=stamp(mem.last_change) if mem.last_change else None,
        )
        if isinstance(metrics, PoolMetrics):
            placement.observed_requests_per_second = round(metrics.demand_fast)
            total_rps += metrics.demand_fast
            demand += metrics.demand_stable
            if metrics.p99_fast is not None:
                placement.observed_p99_milliseconds = round(metrics.p99_fast * 1000)
                worst_p99 = max(worst_p99 or 0.0, metrics.p99_fast)
        elif pp.pool in old:  # unknown: keep the last figures, the reason says why
            placement.observed_requests_per_second = old[pp.pool].observed_requests_per_second
            placement.observed_p99_milliseconds = old[pp.pool].observed_p99_milliseconds
        placements.append(placement.to_wire())
    if not placements:
        return out
    conds = list((model.status.to_wire() if model.status else {}).get("conditions") or [])
    if unknown:
        message = "holding the last decision, metrics unknown: " + "; ".join(unknown)
        conds = c.set_condition(conds, SCALING, False, METRICS_UNKNOWN, message, model.generation)
    else:
        tuning = "on" if scaling.batch_tuning else "off"
        message = f"{scaling.replicas.value} replicas, batch tuning {tuning}"
        conds = c.set_condition(conds, SCALING, True, METRICS_KNOWN, message, model.generation)
    if out.findings:
        evidence = "; ".join(f"{pool}: {f.cause} drift: {f.evidence}" for pool, f in out.findings)
        cause = CAUSES[out.findings[0][1].cause]
        conds = c.set_condition(conds, DRIFT, True, cause, evidence, model.generation)
    else:
        watched = sum(1 for s in out.drift.values() if s.samples)
        conds = c.set_condition(
            conds, DRIFT, False, NO_DRIFT, f"no drift on {watched} watched pools", model.generation
        )
    out.status = {"placements": placements, "conditions": conds}
    if out.optimizations:
        status = model.status
        out.status["profileRounds"] = {
            **(status.profile_rounds if status else {}),
            **_rounds(out.optimizations),
        }
        # a recalibration's variant leaves the plan only once the new one is built
        new_drifted = [
            o.variant for o in out.optimizations if o.variant is not None and not o.recalibration
        ]
        drifted = [*(status.drifted_variants if status else []), *new_drifted]
        if drifted:
            out.status["driftedVariants"] = list(dict.fromkeys(drifted))
        history = [*(status.last_optimization if status else []), *out.optimizations]
        out.status["lastOptimization"] = [
            o.model_dump(by_alias=True, mode="json") for o in history[-KEEP_OPTIMIZATIONS:]
        ]
    if not unknown:
        out.demand_rps = demand
        out.status["observedRequestsPerSecond"] = round(total_rps)
        if worst_p99 is not None:
            out.status["observedP99Milliseconds"] = round(worst_p99 * 1000)
    return out


def _kind(reason: str) -> str:
    """A short label for the operator's decision counter, from a reason's wording."""
    for word in ("panic", "minReplicas", "ceiling", "down", "up", "over the", "light load", "load"):
        if word in reason:
            return word.replace(" ", "_")
    return "other"


def observe_pools(kube: Kube, model: RecModel, planned: list[PlannedPool]) -> dict[str, Observed]:
    """The planned pools' Deployments and limits ConfigMaps (from the operator's watch)."""
    namespace = str(model.namespace)
    selector = f"{children.MODEL_LABEL}={model.name}"
    deployments = {
        d["metadata"]["name"]: d for d in kube.list("apps/v1", "Deployment", namespace, selector)
    }
    config_maps = {
        m["metadata"]["name"]: m for m in kube.list("v1", "ConfigMap", namespace, selector)
    }
    out: dict[str, Observed] = {}
    for pp in planned:
        dep = deployments.get(pp.deployment)
        replicas = None if dep is None else int((dep.get("spec") or {}).get("replicas") or 0)
        ready = 0 if dep is None else int((dep.get("status") or {}).get("readyReplicas") or 0)
        config_map = config_maps.get(pp.limits_config_map)
        out[pp.pool] = Observed(replicas, ready, limits_of(config_map), config_map is not None)
    return out


def apply_tick(kube: Kube, model: RecModel, outcome: TickOutcome) -> None:
    """Write what a tick decided: scale, limits, status (only what changed)."""
    namespace = str(model.namespace)
    for name, replicas in outcome.scale.items():
        kube.scale_deployment(name, namespace, replicas)
    for name, limits in outcome.limits.items():
        kube.apply(limits_config_map(model, name, limits))
    if not outcome.status:
        return
    old = model.status.to_wire() if model.status else {}
    if any(old.get(k) != v for k, v in outcome.status.items()):
        kube.patch_status("recmodels", model.name, namespace, outcome.status)


@dataclass(frozen=True)
class CanaryObserved:
    """A pool's canary Deployment as the operator last saw it."""

    ready: int
    fidelity_checked: bool  # its servers score a share of requests with the reference


def observe_canaries(kube: Kube, model: RecModel) -> dict[str, CanaryObserved]:
    """The model's canary Deployments, by pool. Read from the API server (the index
    keeps no container args): only while the model has a rollout."""
    selector = f"{children.MODEL_LABEL}={model.name},{children.TRACK_LABEL}={children.CANARY}"
    out: dict[str, CanaryObserved] = {}
    for dep in kube.list("apps/v1", "Deployment", str(model.namespace), selector):
        pool = str(dep["metadata"].get("labels", {}).get(children.POOL_LABEL) or "")
        containers = dep["spec"]["template"]["spec"]["containers"]
        args = [str(a) for c_ in containers for a in c_.get("args") or []]
        out[pool] = CanaryObserved(
            ready=int((dep.get("status") or {}).get("readyReplicas") or 0),
            fidelity_checked=any(a.startswith("--reference-variant=") for a in args),
        )
    return out


def analysis_due(model: RecModel, policy: OptimizationPolicy, now: float) -> bool:
    """Some rollout of ``model`` has served a whole step and waits for its analysis
    (only then are the canary's figures asked of Prometheus)."""
    step = policy.spec.rollout.step_seconds
    return any(
        r.phase == CanaryPhase.PROGRESSING and now - (parse_stamp(r.step_started) or now) >= step
        for r in (model.status.rollouts if model.status else [])
    )


@dataclass
class RolloutTick:
    """What a tick decided for a model's canary rollouts."""

    status: dict[str, Any] = field(default_factory=dict)  # merge patch of status
    events: list[tuple[str, str, str]] = field(default_factory=list)
    weight: int = 0  # the routers' canary share


def decide_rollouts(
    model: RecModel,
    policy: OptimizationPolicy,
    canaries: dict[str, CanaryObserved],
    metrics: dict[str, CanaryMetrics] | None,
    now: float,
) -> RolloutTick | None:
    """Advance each rollout of ``model`` (None: it has none). A rolled-back variant goes
    into ``driftedVariants`` with a ``lastOptimization`` entry (cause CanaryFailed),
    so the pass re-plans without it and does not start it again (no rollback loop)."""
    status = model.status
    rollouts = status.rollouts if status else []
    if not rollouts:
        return None
    out = RolloutTick()
    after: list[CanaryRollout] = []
    failed: list[Optimization] = []
    for r in rollouts:
        seen = canaries.get(r.pool) or CanaryObserved(0, False)
        step = advance(
            r,
            CanaryRules.of(policy, seen.fidelity_checked),
            None if metrics is None else metrics.get(r.pool),
            seen.ready,
            now,
            stamp(now),
            parse_stamp(r.started) or now,
            parse_stamp(r.step_started) or now,
        )
        after.append(step.rollout)
        out.events += step.events
        if step.rollout.phase == CanaryPhase.ROLLED_BACK and r.phase != CanaryPhase.ROLLED_BACK:
            failed.append(
                Optimization(
                    time=stamp(now),
                    pool=r.pool,
                    cause=CANARY_FAILED,
                    evidence=step.rollout.message[:2048],
                    action=f"rolled back to {r.from_variant}; re-plan without {r.to_variant}",
                    variant=children.dns_name(model.name, r.to_variant),
                    outcome=PENDING,
                )
            )
    out.weight = router_weight(after)
    if after != rollouts:
        out.status["rollouts"] = [r.model_dump(by_alias=True, mode="json") for r in after]
    if failed and status is not None:
        drifted = [*status.drifted_variants, *(o.variant for o in failed if o.variant)]
        out.status["driftedVariants"] = list(dict.fromkeys(drifted))
        history = [*status.last_optimization, *failed]
        out.status["lastOptimization"] = [
            o.model_dump(by_alias=True, mode="json") for o in history[-KEEP_OPTIMIZATIONS:]
        ]
    return out


def apply_rollouts(kube: Kube, model: RecModel, tick: RolloutTick) -> None:
    """Write the routers' share (only when it changed) and the rollouts' status."""
    namespace = str(model.namespace)
    name = children.router_weights_name(model.name)
    body = children.router_weights(model, tick.weight)
    selector = f"{children.MODEL_LABEL}={model.name}"
    maps = kube.list("v1", "ConfigMap", namespace, selector)
    current = next((m for m in maps if m["metadata"]["name"] == name), None)
    if current is None or (current.get("data") or {}) != body["data"]:
        kube.apply(body)
    if tick.status:
        kube.patch_status("recmodels", model.name, namespace, tick.status)
