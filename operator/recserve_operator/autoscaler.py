"""Replica and batch-limit decisions for one (RecModel, pool): pure functions.

Replicas (docs/autoscaling.md). Demand is what arrived: requests served plus requests
refused (429/503): at saturation the served rate *is* the capacity, so it alone would
never ask for more. A replica is planned to run at ``UTILIZATION`` of its capacity, the
variant's measured per-replica capacity at its batch ceiling, replaced by the live
per-replica throughput when the pool is saturated (refusing, or over the p99 target)
and serves less than the profile promised.

* **Up, fast**: the fast window's demand (a few scrapes) is acted on at the first tick
  that sees it over ``1 + UP_TOLERANCE`` times the replicas' planned load (the noise of
  a steady load is no burst); the stable window's demand is always acted on. Between
  two scale-ups ``scaleUpCooldownSeconds`` must pass, unless the demand needs at least
  twice the replicas there are (panic, as Knative's KPA), which is acted on at once, or
  the demand has grown past what the last scale-up was sized for (new evidence: a first
  reading taken while a step was still arriving must not hold the rest of the step for
  a whole cooldown).
* **Down, slow and stepwise**: not before ``scaleDownCooldownSeconds`` after any
  change, never below the highest recommendation made within that window (HPA's
  stabilization: a steady but noisy load does not flap), and by at most half the
  replicas per step.
* **Bounds**: ``minReplicas``, and the lower of ``maxReplicas`` and the pool's ceiling;
  demand above the ceiling is reported (the re-plan moves it to the next pool).
* **Unknown metrics hold**: the last decision stays and the reason says why.

Batch limits. The server adapts its batch size per batch (AIMD) within limits; this
layer sets those limits from what one server cannot see, the pool's load against its
capacity and its p99 against the target, on the scale of tens of seconds: under
overload (load at least ``HIGH_LOAD`` of capacity, or refusing) a higher ceiling and a
larger share of the target per batch, as long as one batch's compute p99 has headroom
in that share (larger batches serve more per replica and absorb a step while replicas
start; the p99 of an overloaded pool is queueing, which smaller batches would make
worse); without overload, halving the ceiling while p99 is over the target (the
batches are too long); back to the plan's ceiling with no queue delay when the load is
light (latency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from recserve_operator.observe import Observation, PoolMetrics, Unknown
from recserve_operator.planner import spared

UTILIZATION = 0.7  # as planned (planner.UTILIZATION)
PANIC_FACTOR = 2.0
UP_TOLERANCE = 0.15  # the fast window must exceed the planned load by this much
MAX_DOWN_SHARE = 0.5  # of the replicas, per scale-down step
SATURATED_REFUSED_SHARE = 0.01
HIGH_LOAD = 0.8  # demand / capacity of the ready replicas
LIGHT_LOAD = 0.3
HEADROOM = 0.6  # a batch computing within this share of its budget may grow
BUDGET_SHARE = 0.25  # of the p99 target one batch may use (the server's default)
BUDGET_SHARE_HIGH = 0.4
BUDGET_SHARE_LOW = 0.15
MAX_QUEUE_DELAY_SHARE = 0.05  # of the p99 target, under high load with headroom


@dataclass(frozen=True)
class Bounds:
    """Replica bounds and pace, from the policy and the pool."""

    min_replicas: int
    max_replicas: int  # the lower of the policy's and the pool's
    scale_up_cooldown_s: float
    scale_down_cooldown_s: float
    spare_replicas: int = 0  # beyond the load's need at full capacity (planner.spared)


@dataclass(frozen=True)
class Memory:
    """What the autoscaler remembers of one pool between ticks: its last changes (kept
    in status, so they survive a restart) and its recent recommendations (in memory:
    after a restart nothing scales down until a window of them is seen again)."""

    last_up: float | None = None
    last_down: float | None = None
    # the demand (rps) the last scale-up was sized for (in memory only: after a restart
    # the cooldown holds as if the demand were unchanged)
    up_for_rps: float | None = None
    recommendations: tuple[tuple[float, int], ...] = ()
    watching_since: float | None = None

    @property
    def last_change(self) -> float | None:
        changes = [t for t in (self.last_up, self.last_down) if t is not None]
        return max(changes) if changes else None


@dataclass(frozen=True)
class ReplicaDecision:
    """Replicas to run, why, and the memory to keep."""

    replicas: int
    reason: str
    memory: Memory
    capacity_rps: float | None = None
    wanted: int | None = None  # replicas the demand needs, before bounds (None: unknown)

    @property
    def held(self) -> bool:
        return self.wanted is None


def needed(demand_rps: float, capacity_rps: float, spare: int = 0) -> int:
    """Replicas that serve ``demand_rps`` at ``UTILIZATION`` of ``capacity_rps`` each,
    and at full capacity with ``spare`` of them gone."""
    if demand_rps <= 0:
        return 0
    return max(
        math.ceil(demand_rps / (capacity_rps * UTILIZATION) - 1e-9),
        spared(demand_rps, capacity_rps, spare),
    )


def live_capacity(m: PoolMetrics, profiled_rps: float, slo_s: float) -> float:
    """Per-replica capacity: the profile's, or live throughput where replicas were
    saturated and served less than the profile promised."""
    saturated = m.refused_fast > SATURATED_REFUSED_SHARE * max(m.demand_fast, 1e-9) or (
        m.p99_fast is not None and m.p99_fast > slo_s
    )
    if saturated and m.served_fast > 0:
        # the busiest replica's own rate; the pool's rate over its ready pods undercounts
        # right after a scale-up (new pods are ready but served little of the window),
        # which read as 6-17 instead of 33 req/s per replica and over-scaled (bench)
        per_replica = m.served_per_pod_max_fast
        if per_replica is None and m.ready_pods > 0:
            per_replica = m.served_fast / m.ready_pods
        if per_replica is not None and 0 < per_replica < profiled_rps:
            return per_replica
    return profiled_rps


def decide_replicas(
    now: float,
    current: int,
    observed: Observation,
    profiled_rps: float,
    slo_s: float,
    bounds: Bounds,
    memory: Memory,
) -> ReplicaDecision:
    """Replicas for one pool at ``now`` (seconds); see the module docstring."""
    if isinstance(observed, Unknown):
        # a scale-down needs a whole window of known recommendations again
        memory = replace(memory, watching_since=None, recommendations=())
        return ReplicaDecision(
            current, f"holding {current}: metrics unknown ({observed.reason})", memory
        )
    memory = replace(memory, watching_since=memory.watching_since or now)
    capacity = live_capacity(observed, profiled_rps, slo_s)
    stable = needed(observed.demand_stable, capacity, bounds.spare_replicas)
    # the fast window counts once it is clearly over what the replicas are planned for
    # (noise of a steady load is not a burst)
    burst = observed.demand_fast > current * capacity * UTILIZATION * (1 + UP_TOLERANCE)
    fast = needed(observed.demand_fast, capacity, bounds.spare_replicas) if burst else 0
    wanted = max(fast, stable)
    sized_for = observed.demand_fast if fast >= stable else observed.demand_stable
    window = bounds.scale_down_cooldown_s
    recent = tuple((t, n) for t, n in memory.recommendations if now - t < window)
    history = (*recent, (now, wanted))
    memory = replace(memory, recommendations=history)
    low, high = bounds.min_replicas, max(bounds.min_replicas, bounds.max_replicas)
    target = min(max(wanted, low), high)
    demand = f"{observed.demand_fast:.1f} rps now, {observed.demand_stable:.1f} rps over the window"
    per = f"{capacity:.1f} rps per replica at full load"
    ceiling = f"; {wanted} wanted, over the ceiling of {high}" if wanted > high else ""
    if current < low:
        return _changed(now, current, low, f"raised to minReplicas {low}", memory, capacity, wanted)
    if current > high:
        return _changed(
            now, current, high, f"lowered to the ceiling {high}", memory, capacity, wanted
        )
    if target > current:
        panic = fast >= PANIC_FACTOR * max(current, 1)
        since = None if memory.last_up is None else now - memory.last_up
        grown = memory.up_for_rps is not None and sized_for > memory.up_for_rps * (1 + UP_TOLERANCE)
        if panic or grown or since is None or since >= bounds.scale_up_cooldown_s:
            why = "panic: " if panic else ""
            if grown and not panic and since is not None and since < bounds.scale_up_cooldown_s:
                why = f"demand grew past the {memory.up_for_rps:.1f} rps last sized for: "
            return _changed(
                now,
                current,
                target,
                f"{why}up for {demand}; {per}{ceiling}",
                replace(memory, up_for_rps=sized_for),
                capacity,
                wanted,
            )
        return ReplicaDecision(
            current,
            f"holding {current}: scale-up cooldown "
            f"({since:.0f}/{bounds.scale_up_cooldown_s:.0f} s); {demand}",
            memory,
            capacity,
            wanted,
        )
    if target < current:
        last = memory.last_change
        if last is not None and now - last < bounds.scale_down_cooldown_s:
            wait = bounds.scale_down_cooldown_s - (now - last)
            return ReplicaDecision(
                current,
                f"holding {current}: scale-down cooldown, {wait:.0f} s left; {demand}",
                memory,
                capacity,
                wanted,
            )
        if now - (memory.watching_since or now) < window:
            return ReplicaDecision(
                current,
                f"holding {current}: watching the load for {window:.0f} s before a "
                f"scale-down; {demand}",
                memory,
                capacity,
                wanted,
            )
        highest = max(n for _, n in history)
        step_floor = current - max(1, math.floor(current * MAX_DOWN_SHARE))
        down_to = min(max(highest, step_floor, low), high)
        if down_to < current:
            return _changed(
                now, current, down_to, f"down for {demand}; {per}", memory, capacity, wanted
            )
        return ReplicaDecision(
            current,
            f"holding {current}: {highest} wanted within the last {window:.0f} s; {demand}",
            memory,
            capacity,
            wanted,
        )
    return ReplicaDecision(
        current, f"steady at {current} for {demand}; {per}{ceiling}", memory, capacity, wanted
    )


def _changed(
    now: float, current: int, new: int, reason: str, memory: Memory, capacity: float, wanted: int
) -> ReplicaDecision:
    if new > current:
        memory = replace(memory, last_up=now)
    elif new < current:
        memory = replace(memory, last_down=now)
    return ReplicaDecision(new, f"{current} -> {new}: {reason}", memory, capacity, wanted)


@dataclass(frozen=True)
class BatchLimits:
    """What a pool's servers are given (the server's limits file, milliseconds)."""

    max_batch_rows: int
    min_batch_rows: int
    max_queue_delay_ms: float = 0.0
    batch_budget_fraction: float = BUDGET_SHARE
    slo_p99_ms: float = 100.0

    def to_doc(self) -> dict[str, float | int]:
        """The limits file's JSON (fields of the server's PUT /admin/limits)."""
        return {
            "max_batch_rows": self.max_batch_rows,
            "min_batch_rows": self.min_batch_rows,
            "max_queue_delay_ms": round(self.max_queue_delay_ms, 3),
            "batch_budget_fraction": self.batch_budget_fraction,
            "slo_p99_ms": self.slo_p99_ms,
        }


@dataclass(frozen=True)
class BatchRange:
    """Where batch tuning may move the ceiling: from the plan's batch (the most
    throughput within the target, as profiled) up to the policy's maximum."""

    planned: int
    lowest: int  # the policy's minBatchSize, raised to the candidates of one request
    highest: int  # the policy's maxBatchSize
    slo_ms: float

    def planned_limits(self) -> BatchLimits:
        """The plan's limits: where tuning starts and what it returns to."""
        return BatchLimits(
            max_batch_rows=min(max(self.planned, self.lowest), self.highest),
            min_batch_rows=self.lowest,
            slo_p99_ms=self.slo_ms,
        )


@dataclass(frozen=True)
class BatchDecision:
    limits: BatchLimits
    reason: str


def decide_batch(
    current: BatchLimits,
    observed: Observation,
    capacity_rps: float | None,
    ready: int,
    r: BatchRange,
) -> BatchDecision:
    """Batch limits for one pool; see the module docstring."""
    base = r.planned_limits()
    # the ceiling stays within the range even when the policy changed under it
    current = replace(
        current,
        max_batch_rows=min(max(current.max_batch_rows, r.lowest), r.highest),
        min_batch_rows=r.lowest,
        slo_p99_ms=r.slo_ms,
    )
    if isinstance(observed, Unknown) or capacity_rps is None or ready <= 0:
        why = observed.reason if isinstance(observed, Unknown) else "no ready replica"
        return BatchDecision(current, f"batch limits held: {why}")
    if observed.rated_pods is not None and observed.rated_pods < ready:
        # the fast rates miss the newest replicas' requests: the load would read low
        # (a flash crowd read as "light load, 23%" with 59%) and the ceiling drop
        return BatchDecision(
            current,
            f"batch limits held: {observed.rated_pods} of {ready} ready replicas measured "
            "yet (a new pod's rates need two scrapes)",
        )
    slo_s = r.slo_ms / 1000
    load = observed.demand_fast / (ready * capacity_rps) if capacity_rps > 0 else 1.0
    p99 = observed.p99_fast
    refusing = observed.refused_fast > SATURATED_REFUSED_SHARE * max(observed.demand_fast, 1e-9)
    overloaded = load >= HIGH_LOAD or refusing
    # Under overload p99 is queueing: larger batches serve more per replica, as long as
    # one batch's compute stays well within its share of the target.
    compute = observed.compute_p99_stable
    budget_s = slo_s * BUDGET_SHARE_HIGH
    if overloaded and (compute is None or compute < HEADROOM * budget_s):
        rows = min(max(current.max_batch_rows * 2, base.max_batch_rows), r.highest)
        spent = "" if compute is None else f", batch compute p99 {compute * 1000:.0f} ms"
        return BatchDecision(
            replace(
                current,
                max_batch_rows=rows,
                max_queue_delay_ms=MAX_QUEUE_DELAY_SHARE * r.slo_ms,
                batch_budget_fraction=BUDGET_SHARE_HIGH,
            ),
            f"load {load:.0%} of capacity{spent}: larger batches, ceiling {rows}",
        )
    if overloaded:
        return BatchDecision(
            current, f"batch limits kept: load {load:.0%}, batch compute near its budget"
        )
    if p99 is not None and p99 > slo_s:  # not overloaded: the batches are too long
        rows = max(current.max_batch_rows // 2, r.lowest)
        return BatchDecision(
            replace(
                current,
                max_batch_rows=rows,
                max_queue_delay_ms=0.0,
                batch_budget_fraction=BUDGET_SHARE_LOW,
            ),
            f"p99 {p99 * 1000:.0f} ms over the {r.slo_ms:.0f} ms target at load {load:.0%}: "
            f"batch ceiling {rows}",
        )
    if load <= LIGHT_LOAD:
        return BatchDecision(
            base,
            f"light load ({load:.0%} of capacity): the plan's batch ceiling {base.max_batch_rows}",
        )
    return BatchDecision(current, f"batch limits kept (load {load:.0%} of capacity)")
