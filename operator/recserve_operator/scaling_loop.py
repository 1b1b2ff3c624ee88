"""The autoscaling loop: which RecModels are due for a tick, and one tick's I/O.

Reconcile passes tell the loop what they planned per pool (:meth:`ScalingLoop.planned`);
every ``tick_seconds`` the loop runs a tick for each model whose policy's
``intervalSeconds`` has passed. A tick and a pass of the same model never overlap
(:class:`KeyedLocks`): a pass waits for a running tick (a tick is one snapshot lookup
and a few writes), a tick skips a model whose pass is running (the next tick comes).
All models share one Prometheus snapshot per tick (:class:`observe.MetricsCache`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from recserve_operator import operator_metrics as om
from recserve_operator.api.optimizationpolicy import OptimizationPolicy
from recserve_operator.api.recmodel import RecModel, RecModelStatus
from recserve_operator.api.validation import ManifestError, parse_object
from recserve_operator.autoscaler import UTILIZATION, Memory
from recserve_operator.kube import Kube
from recserve_operator.observe import MetricsCache
from recserve_operator.reconcilers.scaling import (
    DriftState,
    PlannedPool,
    RolloutTick,
    TickOutcome,
    analysis_due,
    apply_rollouts,
    apply_tick,
    decide_rollouts,
    decide_tick,
    observe_canaries,
    observe_pools,
)

log = logging.getLogger("recserve.scaling")
Events = Callable[[Any, list[tuple[str, str, str]]], None]
# ask for a pass of a model: its key, and its body as just written (None: read it)
Replan = Callable[[str, dict[str, Any] | None], None]


class KeyedLocks:
    """One lock per key, made on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock (waiting for it)."""
        with self.get(key):
            yield


class ScalingLoop:
    """Planned pools, per-pool memory and due times of every RecModel the operator serves."""

    def __init__(self, metrics: MetricsCache, tick_seconds: float) -> None:
        self.metrics = metrics
        self.tick_seconds = tick_seconds
        self.locks = KeyedLocks()
        self._guard = threading.Lock()
        self._planned: dict[str, list[PlannedPool]] = {}
        self._memory: dict[str, dict[str, Memory]] = {}
        self._drift: dict[str, dict[str, DriftState]] = {}
        self._next: dict[str, float] = {}
        # live demand (time.time(), rps, how long it counts) per model, for re-plans
        self._demand: dict[str, list[tuple[float, float, float]]] = {}
        self.ticks = 0
        self.replans = 0

    def planned(self, key: str, pools: list[PlannedPool]) -> None:
        """What the last pass of ``key`` planned (empty: nothing to scale now)."""
        with self._guard:
            if pools:
                self._planned[key] = pools
                self._next.setdefault(key, 0.0)
            else:
                self._planned.pop(key, None)
                self._next.pop(key, None)

    def forget(self, key: str) -> None:
        with self._guard:
            self._planned.pop(key, None)
            self._next.pop(key, None)
            self._memory.pop(key, None)
            self._drift.pop(key, None)
            self._demand.pop(key, None)

    def live_demand(self, key: str, now: float | None = None) -> float | None:
        """The highest demand seen of ``key`` within its scale-down window (what a re-plan
        must carry while it lasts), or None."""
        now = time.time() if now is None else now
        with self._guard:
            recent = [rps for at, rps, keep in self._demand.get(key, []) if now - at < keep]
        return max(recent) if recent else None

    def _record_demand(self, key: str, rps: float, keep: float) -> None:
        now = time.time()
        with self._guard:
            kept = [d for d in self._demand.get(key, []) if now - d[0] < d[2]]
            self._demand[key] = [*kept, (now, rps, keep)]

    def due(self, now: float) -> list[str]:
        """Models whose next tick is due at ``now`` (monotonic seconds)."""
        with self._guard:
            return [key for key, at in self._next.items() if at <= now]

    def tick(self, key: str, kube: Kube, post_events: Events, replan: Replan | None = None) -> None:
        """One tick of ``key``: read, decide, write (skipped while its pass runs). When a
        pool's demand is over its ceiling, ``replan(key)`` asks for a pass, which plans
        for the live demand (the surplus goes to the next pool by cost)."""
        lock = self.locks.get(key)
        if not lock.acquire(blocking=False):
            return
        started = time.perf_counter()
        try:
            over, written = self._tick(key, kube, post_events)
        finally:
            lock.release()
            om.RECONCILE_SECONDS.labels("autoscale").observe(time.perf_counter() - started)
        if (over or written is not None) and replan is not None:
            self.replans += 1
            replan(key, written)

    def _tick(
        self, key: str, kube: Kube, post_events: Events
    ) -> tuple[bool, dict[str, Any] | None]:
        """(demand over the ceilings, the model as written when a re-optimization was
        decided: the pass that runs it must not read a status older than that)."""
        namespace, name = key.split("/", 1)
        with self._guard:
            planned = list(self._planned.get(key) or [])
            memory = dict(self._memory.get(key) or {})
            drift = dict(self._drift.get(key) or {})
        raw = kube.get_custom("recmodels", name, namespace)
        if not planned or raw is None:
            self.forget(key)
            return False, None
        try:
            model = parse_object(RecModel, raw)
            raw_policy = kube.get_custom(
                "optimizationpolicies", model.spec.policy_ref.name, namespace
            )
            policy = parse_object(OptimizationPolicy, raw_policy or {})
        except ManifestError as exc:  # the pass reports it; nothing to scale on
            log.debug("%s: not scaling: %s", key, exc)
            return False, None
        interval = policy.spec.autoscaling.interval_seconds
        with self._guard:
            if key in self._next:
                self._next[key] = time.monotonic() + interval
        if model.spec.paused:
            return False, None
        snapshot = self.metrics.latest()
        if snapshot.error is not None:
            om.PROMETHEUS_ERRORS.inc()
        observed = observe_pools(kube, model, planned)
        outcome = decide_tick(
            model, policy, planned, observed, snapshot, memory, time.time(), drift
        )
        with self._guard:
            self._memory[key] = outcome.memory
            self._drift[key] = outcome.drift
        if outcome.held:
            om.HELD.inc(outcome.held)
        for kind, reason in outcome.decisions:
            om.DECISIONS.labels(kind, reason).inc()
        apply_tick(kube, model, outcome)
        rollouts = self._rollouts(kube, model, policy, outcome)
        self.ticks += 1
        events = outcome.events + (rollouts.events if rollouts else [])
        if events:
            log.info("%s: %s", key, "; ".join(message for _, _, message in events))
            post_events(raw, events)
        if outcome.demand_rps is not None:
            keep = float(policy.spec.autoscaling.scale_down_cooldown_seconds)
            self._record_demand(key, outcome.demand_rps, max(keep, interval))
        planned_rps = sum(p.capacity_rps * UTILIZATION * p.ceiling for p in planned)
        over = outcome.over_ceiling and (outcome.demand_rps or 0.0) > planned_rps
        written = None
        if outcome.optimizations or (rollouts and rollouts.status):
            status = {**outcome.status, **(rollouts.status if rollouts else {})}
            written = {**raw, "status": {**(raw.get("status") or {}), **status}}
        return over, written

    def _rollouts(
        self, kube: Kube, model: RecModel, policy: OptimizationPolicy, outcome: TickOutcome
    ) -> RolloutTick | None:
        """Advance the model's canary rollouts (after the tick's own status patch, which
        they build on: a drift found in the same tick keeps its driftedVariants)."""
        if model.status is None or not model.status.rollouts:
            return None
        if outcome.status:
            merged = {**model.status.to_wire(), **outcome.status}
            model = model.model_copy(update={"status": RecModelStatus.model_validate(merged)})
        now = time.time()
        metrics = (
            self.metrics.canary(str(model.namespace), model.name, policy.spec.rollout.step_seconds)
            if analysis_due(model, policy, now)
            else None
        )
        tick = decide_rollouts(model, policy, observe_canaries(kube, model), metrics, now)
        if tick is not None:
            apply_rollouts(kube, model, tick)
        return tick
