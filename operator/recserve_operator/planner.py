"""Placement planning: which variant serves on which pool, with how many replicas.

Pure functions over measured profiles, so that every decision is unit-testable and can
be explained in status and an Event.

Capacity model. A replica batches requests: one request of ``r`` candidates is ``r``
samples, and a call with a ceiling of ``B`` rows serves up to ``B / r`` requests. Beside
the model, every request costs the server HTTP, JSON decoding and validation, its share
of handling the batch, and the answer:
``overhead(r, k) = perRequest + perRow x r + perBatch / k``, measured on the pool's node
by the profile Job's served-path calibration (``ProfileReport.serving``), for ``k``
requests per call. The pod's CPU limit serialises both, so one request costs a replica

    t(r, B) = compute(k x r) / k + overhead(r, k)     (compute(n): one call of n rows)

and a replica serves ``1 / t`` requests per second. ``k`` is ``B / r``, or fewer where the
calibration saw the saturated server batch fewer (a server whose HTTP side is slower
than its model batches what arrived during the last call: 1.5 to 3 requests for a small
student, whatever the ceiling). A profile without the calibration (written by an older
`recserve profile`) counts compute only at ``k = B / r``, and the plan says so.

Latency model. A replica cycles through one call plus the HTTP side of the ``k``
requests it serves; a request waits at most for the cycle in flight and then for its
own, so its p99 latency is bounded by ``2 x (p99(call) + k x overhead(r, k))``. The
planner picks, per (pool, variant), the profiled batch that serves the most requests
among those whose bound meets the target, and plans replicas to run at most
``UTILIZATION`` of the capacity at that batch (headroom for bursts and the batcher's
queueing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from recserve_operator.api.hardwarepool import HardwarePool
from recserve_operator.api.optimizationpolicy import OptimizationPolicySpec
from recserve_operator.api.recmodel import Traffic
from recserve_runtime.artifacts import (
    Manifest,
    ProfilePoint,
    ProfileReport,
    ServingOverhead,
    call_microseconds,
    log_interpolate,
)

UTILIZATION = 0.7
QUEUEING_FACTOR = 2.0


@dataclass(frozen=True)
class Point:
    """One profiled batch size of a variant on a pool."""

    batch_size: int
    p50_us: float
    p99_us: float
    samples_per_second: float

    @classmethod
    def of(cls, point: ProfilePoint) -> Point:
        return cls(point.batch_size, point.p50_us, point.p99_us, point.samples_per_second)


@dataclass(frozen=True)
class ServingCost:
    """A pool's served-path overhead per request:
    ``per_request_us + per_row_us x rows + per_batch_us / requests_per_batch``."""

    per_request_us: float
    per_row_us: float
    per_batch_us: float = 0.0
    # requests per call the saturated server ran at some request sizes, no ceiling in the
    # way: ((candidates, requests per call), ...), by candidates
    batching: tuple[tuple[int, float], ...] = ()

    @classmethod
    def of(cls, serving: ServingOverhead | None) -> ServingCost | None:
        if serving is None:
            return None
        sizes = sorted({p.candidates for p in serving.points})
        return cls(
            serving.per_request_microseconds,
            serving.per_row_microseconds,
            serving.per_batch_microseconds,
            tuple((r, k) for r in sizes if (k := serving.requests_per_batch(r)) is not None),
        )

    def requests_per_batch(self, rows: int) -> float | None:
        """Requests per call at saturation for ``rows`` candidates (see
        :meth:`ServingOverhead.requests_per_batch`), None when not measured."""
        return log_interpolate(self.batching, rows)

    def us_per_request(self, rows: int, requests_per_batch: float) -> float:
        return (
            self.per_request_us
            + self.per_row_us * rows
            + self.per_batch_us / max(requests_per_batch, 1.0)
        )


@dataclass(frozen=True)
class VariantProfile:
    """What the planner knows of one variant."""

    name: str
    precision: str
    accuracy_drop_bp: int
    size_bytes: int
    profiles: dict[str, list[Point]] = field(default_factory=dict)  # pool -> points

    @classmethod
    def of(
        cls, key: str, manifest: Manifest, profiles: Mapping[str, ProfileReport]
    ) -> VariantProfile:
        """A built variant (folder ``key``) with its profile on every pool that has one."""
        return cls(
            name=manifest.name,
            precision=manifest.recipe.precision,
            accuracy_drop_bp=manifest.accuracy_drop_basis_points,
            size_bytes=manifest.artifact.size_bytes,
            profiles={
                pool: [Point.of(pt) for pt in report.variants[key].points]
                for pool, report in profiles.items()
                if key in report.variants
            },
        )


@dataclass(frozen=True)
class PoolCapacity:
    """What the planner knows of one HardwarePool."""

    name: str
    hardware: str
    precisions: tuple[str, ...]
    max_replicas: int
    cost_per_replica_hour_millicents: int
    # replicas the pool's free accelerators allow (None: not limited by accelerators)
    accelerator_replicas: int | None = None
    # why the pool's profile ran on another execution provider than its hardware's, if so
    fallback_reason: str | None = None
    # the served-path overhead measured on the pool's node (None: compute-only profile)
    serving: ServingCost | None = None
    # why the pool takes no replicas now (no Ready, schedulable node), if so
    unavailable: str | None = None

    @classmethod
    def of(
        cls, pool: HardwarePool, profile: ProfileReport | None = None, held: str | None = None
    ) -> PoolCapacity:
        """A HardwarePool as observed (status.allocatable) and as profiled; ``held``: why
        the model's failover holds the pool out of its plan, if it does."""
        spec, status = pool.spec, pool.status
        accelerator_replicas = None
        if spec.accelerator is not None and status is not None and status.allocatable is not None:
            accelerator_replicas = status.allocatable // spec.accelerator.amount_per_replica
        unavailable = None
        if status is not None and status.ready_node_count == 0:  # None: not counted yet
            unavailable = (
                f"{pool.name} has no Ready, schedulable node "
                f"({status.node_count or 0} matched): left out until one is back"
            )
        if held is not None:
            unavailable = held
        return cls(
            name=pool.name,
            hardware=spec.hardware_type.value,
            precisions=tuple(p.value for p in spec.supported_precisions),
            max_replicas=spec.max_replicas,
            cost_per_replica_hour_millicents=spec.cost_per_replica_hour_millicents,
            accelerator_replicas=accelerator_replicas,
            fallback_reason=profile.fallback_reason if profile is not None else None,
            serving=ServingCost.of(profile.serving) if profile is not None else None,
            unavailable=unavailable,
        )


@dataclass(frozen=True)
class Objectives:
    """The policy and traffic facts the plan must satisfy."""

    p99_target_ms: int
    accuracy_budget_bp: int
    required_rps: float
    candidates_per_request: int
    cost_weight_percent: int
    min_replicas: int
    max_replicas: int
    min_batch_size: int
    max_batch_size: int
    spare_replicas: int = 0

    @classmethod
    def of(cls, policy: OptimizationPolicySpec, traffic: Traffic) -> Objectives:
        """An OptimizationPolicy's objectives and bounds for a RecModel's traffic: the
        plan carries the peak (expected x peakFactorPercent), or the policy's floor."""
        objectives, scaling = policy.objectives, policy.autoscaling
        peak = traffic.expected_requests_per_second * traffic.peak_factor_percent / 100
        return cls(
            p99_target_ms=objectives.p99_latency_target_milliseconds,
            accuracy_budget_bp=objectives.accuracy_budget_basis_points,
            required_rps=max(float(peak), float(objectives.throughput_floor_requests_per_second)),
            candidates_per_request=traffic.candidates_per_request,
            cost_weight_percent=objectives.cost_weight_percent,
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            min_batch_size=scaling.min_batch_size,
            max_batch_size=scaling.max_batch_size,
            spare_replicas=scaling.spare_replicas,
        )


@dataclass(frozen=True)
class Option:
    """A variant on a pool at its best SLO-meeting batch size."""

    pool: str
    variant: str
    batch_size: int
    p99_ms: float
    rps_per_replica: float
    cost_per_replica_hour_millicents: int
    accuracy_drop_bp: int
    # requests per second one replica serves at full load (rps_per_replica is UTILIZATION
    # of it), counting the served-path overhead when the pool's profile measured it
    capacity_rps: float = 0.0


@dataclass(frozen=True)
class PoolPlan:
    """The decision for one pool."""

    pool: str
    variant: str
    replicas: int
    batch_size: int
    p99_ms: float
    rps_per_replica: float
    capacity_rps: float = 0.0  # at full load, before UTILIZATION


@dataclass(frozen=True)
class Plan:
    """The whole placement, or why there is none."""

    placements: list[PoolPlan]
    capacity_rps: float
    required_rps: float
    cost_per_hour_millicents: int
    feasible: bool
    reason: str
    message: str


def requests_per_batch(point: Point, rows: int, serving: ServingCost | None) -> float:
    """Requests of ``rows`` candidates one call serves at full load with a ceiling of
    ``point.batch_size`` rows: the ceiling's share, or fewer where the calibration saw
    the saturated server batch fewer."""
    k = max(point.batch_size / rows, 1.0)
    seen = serving.requests_per_batch(rows) if serving is not None else None
    return k if seen is None else min(k, max(seen, 1.0))


def request_microseconds(
    points: list[Point], point: Point, rows: int, serving: ServingCost | None
) -> float:
    """What one request of ``rows`` candidates costs a replica whose batch ceiling is
    ``point.batch_size``: its share of the call (``points``: the variant's profile on
    the pool) plus its served-path overhead."""
    if serving is None:
        return rows / point.samples_per_second * 1e6
    k = requests_per_batch(point, rows, serving)
    if k * rows >= point.batch_size:  # full calls of the profiled batch
        compute = rows / point.samples_per_second * 1e6
    else:  # smaller calls: their time from the profile, shared by k requests
        compute = call_microseconds(points, k * rows) / k
    return compute + serving.us_per_request(rows, k)


def cycle_p99_microseconds(point: Point, rows: int, serving: ServingCost | None) -> float:
    """p99 of one call plus the served-path overhead of the requests it serves."""
    if serving is None:
        return point.p99_us
    k = requests_per_batch(point, rows, serving)
    return point.p99_us + k * serving.us_per_request(rows, k)


def replica_capacity_rps(
    points: list[Point], point: Point, rows: int, serving: ServingCost | None
) -> float:
    """Requests per second one replica serves at full load (see the module docstring)."""
    return 1e6 / request_microseconds(points, point, rows, serving)


def best_option(
    variant: VariantProfile, pool: PoolCapacity, objectives: Objectives
) -> Option | None:
    """The batch of ``variant`` on ``pool`` that serves the most requests within the p99
    target, if any."""
    points = variant.profiles.get(pool.name, [])
    target_us = objectives.p99_target_ms * 1000.0
    rows = max(objectives.candidates_per_request, 1)
    # A call never scores less than one request's candidates, so smaller profiled batches
    # say nothing about serving (unless no profiled batch is that large).
    largest = max((p.batch_size for p in points), default=0)
    floor = min(objectives.candidates_per_request, largest)
    candidates = [
        p
        for p in points
        if p.batch_size >= floor
        and objectives.min_batch_size <= p.batch_size <= objectives.max_batch_size
        and p.samples_per_second > 0
        and QUEUEING_FACTOR * cycle_p99_microseconds(p, rows, pool.serving) <= target_us
    ]
    if not candidates:
        return None
    best = max(candidates, key=lambda p: replica_capacity_rps(points, p, rows, pool.serving))
    capacity = replica_capacity_rps(points, best, rows, pool.serving)
    return Option(
        pool=pool.name,
        variant=variant.name,
        batch_size=best.batch_size,
        p99_ms=QUEUEING_FACTOR * cycle_p99_microseconds(best, rows, pool.serving) / 1000.0,
        rps_per_replica=capacity * UTILIZATION,
        cost_per_replica_hour_millicents=pool.cost_per_replica_hour_millicents,
        accuracy_drop_bp=variant.accuracy_drop_bp,
        capacity_rps=capacity,
    )


def pool_choice(
    variants: list[VariantProfile], pool: PoolCapacity, objectives: Objectives
) -> Option | None:
    """Per pool, the Pareto-best eligible variant: most requests per replica, then least
    accuracy drop, then smallest (variants over the accuracy budget never qualify)."""
    options = []
    for variant in variants:
        if variant.accuracy_drop_bp > objectives.accuracy_budget_bp:
            continue
        if variant.precision not in pool.precisions:
            continue
        option = best_option(variant, pool, objectives)
        if option is not None:
            options.append((option, variant.size_bytes))
    if not options:
        return None
    return max(options, key=lambda o: (o[0].rps_per_replica, -o[0].accuracy_drop_bp, -o[1]))[0]


def spared(load_rps: float, capacity_rps: float, spare: int) -> int:
    """Replicas that carry ``load_rps`` at full ``capacity_rps`` each with ``spare`` of
    them gone (0 without spares or load: the utilization target alone decides)."""
    if spare <= 0 or load_rps <= 0 or capacity_rps <= 0:
        return 0
    return math.ceil(load_rps / capacity_rps - 1e-9) + spare


def replica_limit(pool: PoolCapacity, objectives: Objectives) -> int:
    """The most replicas a pool may run: its own ceiling, its free accelerators and the
    policy's maxReplicas."""
    if pool.unavailable:
        return 0
    limit = min(pool.max_replicas, objectives.max_replicas)
    if pool.accelerator_replicas is not None:
        limit = min(limit, pool.accelerator_replicas)
    return max(limit, 0)


def plan(variants: list[VariantProfile], pools: list[PoolCapacity], objectives: Objectives) -> Plan:
    """Choose a variant per pool and the fewest, cheapest replicas that carry the load.

    Pools are filled in order of a score mixing cost per request and latency, weighted
    by the policy's costWeightPercent; each pool used gets at least minReplicas. Pools
    profiled with a fallback execution provider, pools whose profile has no served-path
    calibration (capacity counts compute only), and pools left out because none of
    their nodes is Ready and schedulable (failover: their share goes to the others
    until they are back) are named in the message.
    """
    decision = _plan(variants, pools, objectives)
    notes = [p.unavailable for p in pools if p.unavailable]
    notes += [
        f"{p.name} was profiled on a fallback execution provider: {p.fallback_reason}"
        for p in pools
        if p.fallback_reason
    ]
    uncalibrated = [p.name for p in pools if p.serving is None]
    if uncalibrated:
        notes.append(
            f"{', '.join(uncalibrated)}: the profile has no served-path calibration, so "
            "capacity counts model compute only and overstates what a replica serves "
            "(re-profile with `recserve profile --serving`)"
        )
    if not notes:
        return decision
    return replace(decision, message=f"{decision.message}; {'; '.join(notes)}")


def _plan(
    variants: list[VariantProfile], pools: list[PoolCapacity], objectives: Objectives
) -> Plan:
    choices = {p.name: pool_choice(variants, p, objectives) for p in pools}
    usable = [
        (p, o) for p in pools if (o := choices[p.name]) is not None and replica_limit(p, objectives)
    ]
    if not usable:
        within = [v for v in variants if v.accuracy_drop_bp <= objectives.accuracy_budget_bp]
        if not within:
            reason, why = (
                "NoVariantWithinBudget",
                (f"no variant is within the accuracy budget of {objectives.accuracy_budget_bp} bp"),
            )
        else:
            reason, why = (
                "NoFeasiblePlacement",
                (
                    f"no pool runs a variant within budget at p99 <= {objectives.p99_target_ms} ms "
                    f"(with queueing) with batches of {objectives.candidates_per_request} "
                    f"candidates within [{objectives.min_batch_size}, "
                    f"{objectives.max_batch_size}] rows, and has replicas to spare"
                ),
            )
        return Plan([], 0.0, objectives.required_rps, 0, False, reason, why)

    weight = objectives.cost_weight_percent / 100.0
    min_cost = min(o.cost_per_replica_hour_millicents / o.rps_per_replica for _, o in usable)
    min_latency = min(o.p99_ms for _, o in usable)

    def score(option: Option) -> float:
        cost = option.cost_per_replica_hour_millicents / option.rps_per_replica
        return weight * (cost / min_cost if min_cost else 1.0) + (1 - weight) * (
            option.p99_ms / min_latency
        )

    ordered = sorted(usable, key=lambda po: score(po[1]))
    placements: list[PoolPlan] = []
    capacity = 0.0
    for pool, option in ordered:
        if capacity >= objectives.required_rps and placements:
            break
        missing = max(objectives.required_rps - capacity, 0.0)
        replicas = max(
            math.ceil(missing / option.rps_per_replica),
            spared(missing, option.capacity_rps, objectives.spare_replicas),
            objectives.min_replicas,
            1,
        )
        replicas = min(replicas, replica_limit(pool, objectives))
        placements.append(
            PoolPlan(
                pool.name,
                option.variant,
                replicas,
                option.batch_size,
                round(option.p99_ms, 3),
                round(option.rps_per_replica, 1),
                round(option.capacity_rps, 1),
            )
        )
        capacity += replicas * option.rps_per_replica
    cost = sum(
        pp.replicas * next(p for p in pools if p.name == pp.pool).cost_per_replica_hour_millicents
        for pp in placements
    )
    summary = ", ".join(
        f"{pp.pool}: {pp.replicas} x {pp.variant} (batch {pp.batch_size}, "
        f"~{pp.rps_per_replica:.0f} req/s each = {UTILIZATION:.0%} of the "
        f"{pp.capacity_rps:.0f} a replica serves, p99 <= {pp.p99_ms:.1f} ms)"
        for pp in placements
    )
    if capacity < objectives.required_rps:
        return Plan(
            placements,
            capacity,
            objectives.required_rps,
            cost,
            False,
            "InsufficientCapacity",
            f"pools can carry {capacity:.0f} req/s of the {objectives.required_rps:.0f} "
            f"required; placed what fits: {summary}",
        )
    return Plan(
        placements,
        capacity,
        objectives.required_rps,
        cost,
        True,
        "Planned",
        f"{capacity:.0f} req/s capacity for {objectives.required_rps:.0f} required at "
        f"{cost / 100000:.2f} USD/h: {summary}",
    )
