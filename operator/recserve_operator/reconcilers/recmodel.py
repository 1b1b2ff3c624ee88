"""RecModel: references -> build Job -> ModelVariants -> profile Jobs -> plan -> serving.

One idempotent pass that derives everything from the spec and what it observes (Jobs,
files in the artifact store, Deployments). It is run on every change and on a timer;
each pass moves the model as far as it can and reports where it stands in conditions
(VariantsBuilt, Profiled, Placed, Serving, Ready). Nothing is remembered between
passes, so an operator restart resumes where the cluster is.

The pass works on validated API types (the kopf handler validates the RecModel; the
policy and pools it references are validated here) and reads what the Jobs wrote
through the artifact types of :mod:`recserve_runtime.artifacts`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from recserve_operator import children
from recserve_operator import conditions as c
from recserve_operator.api.hardwarepool import HardwarePool
from recserve_operator.api.modelvariant import (
    Artifact,
    ModelVariant,
    ModelVariantStatus,
    PoolProfile,
    ProfilePoint,
    Recipe,
)
from recserve_operator.api.optimizationpolicy import OptimizationPolicy, ReplicaScaling
from recserve_operator.api.recmodel import CanaryPhase, PoolPlacement, RecModel
from recserve_operator.api.validation import ManifestError, field_errors, parse_object
from recserve_operator.canary import router_weight
from recserve_operator.config import OperatorConfig
from recserve_operator.failover import Hold, nodes_fingerprint, stalled, update_holds, why_not_ready
from recserve_operator.integrity import STORE_CHECKS
from recserve_operator.jobs import failed_condition, job_complete, job_failure
from recserve_operator.kube import Kube
from recserve_operator.planner import (
    Objectives,
    Plan,
    PoolCapacity,
    PoolPlan,
    VariantProfile,
    plan,
    replica_limit,
)
from recserve_operator.reconcilers import recalibration
from recserve_operator.reconcilers.hardwarepool import observed_status as pool_observed
from recserve_operator.reconcilers.rollout import PoolMove, pool_move
from recserve_operator.reconcilers.scaling import (
    PENDING,
    PlannedPool,
    batch_range,
    limits_config_map,
    parse_stamp,
    stamp,
)
from recserve_runtime.artifacts import (
    MANIFEST,
    BuildReport,
    Manifest,
    ProfileReport,
    StoreLayout,
    load_manifest,
)

log = logging.getLogger("recserve.recmodel")
CONDITION_TYPES = ("VariantsBuilt", "Profiled", "Placed", "Serving")
PHASE_EVENTS = ("VariantsBuilt", "Profiled", "Serving", "Ready")
PLAN_MESSAGE_LIMIT = 4096  # status.plan's maxLength
T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")


@dataclass
class Outcome:
    """What one pass decided: the status to write and the Events to post."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    # the pools planned and served, for the autoscaler's ticks (empty: nothing to scale)
    planned: list[PlannedPool] = field(default_factory=list)


@dataclass
class Built:
    """One variant found in the artifact store: its folder name, its manifest, and the
    recipe and artifact its ModelVariant will show."""

    key: str
    manifest: Manifest
    recipe: Recipe
    artifact: Artifact

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def drop_bp(self) -> int:
        return self.manifest.accuracy_drop_basis_points


def observed_status(model: RecModel) -> dict[str, Any]:
    """The RecModel's status as the API server holds it (the fields it has, as stored)."""
    if model.status is None:
        return {}
    return model.status.model_dump(by_alias=True, exclude_unset=True, mode="json")


class Pass:
    """State of one reconcile pass over one RecModel."""

    def __init__(
        self,
        model: RecModel,
        kube: Kube,
        config: OperatorConfig,
        announced: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        self.model = model
        self.announced = {} if announced is None else announced
        self.kube = kube
        self.config = config
        self.name = model.name
        self.namespace = str(model.namespace)
        self.generation = model.generation
        self.old_status = observed_status(model)
        self.conds: list[dict[str, Any]] = list(self.old_status.get("conditions", []))
        self.status: dict[str, Any] = dict(self.old_status)
        if "lastOptimization" in self.status:  # entries the pass closes (outcome)
            self.status["lastOptimization"] = [dict(o) for o in self.status["lastOptimization"]]
        self.events: list[tuple[str, str, str]] = []
        self.draining: list[str] = []  # pools out of the plan kept until the new ones are ready
        self.warned: set[str] = set()  # condition reasons that are failures (Warning Events)

    def cond(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.conds = c.set_condition(self.conds, type_, ok, reason, message, self.generation)

    def stop(self, failed_type: str, reason: str, message: str, warn: bool = False) -> Outcome:
        """End the pass at ``failed_type``: later conditions are Unknown-ish False."""
        self.cond(failed_type, False, reason, message)
        later = CONDITION_TYPES[CONDITION_TYPES.index(failed_type) + 1 :]
        for type_ in later:
            self.cond(type_, False, "Waiting", f"waiting for {failed_type}")
        self.cond("Ready", False, reason, message)
        if warn:
            self.warned.add(reason)
        return self.finish()

    def finish(self) -> Outcome:
        self.status["conditions"] = self.conds
        self.status["observedGeneration"] = self.generation
        # in the order they happened: build and profile before the pass's own Events
        # (the plan's), serving and Ready after them
        self.events[:0] = self._phase_events(PHASE_EVENTS[:2])
        self.events += self._phase_events(PHASE_EVENTS[2:])
        return Outcome(self.status, self.events)

    def _phase_events(self, phases: tuple[str, ...]) -> list[tuple[str, str, str]]:
        """One Event per phase change, none when a pass changes nothing (kubectl describe
        tells the story: build started, variants built, profiling, profiled, serving,
        Ready, or the failure and its cause). A plan is told by its own Event (posted
        when it changes); a phase waiting on an earlier one, and Ready False (its cause
        is the failing phase's Event), say nothing more."""
        old = {
            cond["type"]: (cond.get("status"), cond.get("reason"))
            for cond in self.old_status.get("conditions", [])
        }
        new = {cond["type"]: cond for cond in self.conds}
        events = []
        for type_ in phases:
            cond = new.get(type_)
            if cond is None:
                continue
            now = (str(cond["status"]), str(cond["reason"]))
            told = self.announced.get(type_)
            self.announced[type_] = now
            if now in (old.get(type_), told):
                continue
            if cond["reason"] == "Waiting" or (type_ == "Ready" and cond["status"] != "True"):
                continue
            kind = "Warning" if cond["reason"] in self.warned else "Normal"
            events.append((kind, str(cond["reason"]), str(cond["message"])))
        return events


def rejected(raw: dict[str, Any], error: ManifestError) -> Outcome:
    """The outcome for a RecModel body its type refuses (e.g. written under an older
    schema): Ready=False, reason InvalidSpec, every bad field named; a Warning Event only
    when that message is new (the timer re-runs this every interval)."""
    status = c.rejected(raw, error.summary)
    old = c.find((raw.get("status") or {}).get("conditions") or [], c.READY_TYPE)
    new = c.find(status["conditions"], c.READY_TYPE) or {}
    if old is not None and (old.get("reason"), old.get("message")) == (
        new.get("reason"),
        new.get("message"),
    ):
        return Outcome(status)
    return Outcome(status, [("Warning", c.INVALID_SPEC, str(new.get("message")))])


def reconcile_recmodel(
    model: RecModel,
    kube: Kube,
    config: OperatorConfig,
    live_demand_rps: float | None = None,
    announced: dict[str, tuple[str, str]] | None = None,
) -> Outcome:
    """One pass; see the module docstring. ``live_demand_rps``: the demand the
    autoscaler saw lately (when it is over the planned peak, the plan carries it: the
    surplus over a pool's ceiling goes to the next pool by cost). ``announced``: the
    phases already told in Events, kept by the caller across passes (updated here)."""
    p = Pass(model, kube, config, announced)
    spec = model.spec
    if spec.paused:
        p.cond("Ready", False, c.PAUSED, "spec.paused is true: not reconciling")
        return p.finish()

    # 1. references, validated into their types
    policy_name = spec.policy_ref.name
    raw_policy = kube.get_custom("optimizationpolicies", policy_name, p.namespace)
    raw_pools = {
        ref.name: kube.get_custom("hardwarepools", ref.name) for ref in spec.hardware_pool_refs
    }
    missing = [f"OptimizationPolicy {p.namespace}/{policy_name}"] if raw_policy is None else []
    missing += [f"HardwarePool {name}" for name, pool in raw_pools.items() if pool is None]
    if missing or raw_policy is None:
        message = f"not found: {', '.join(missing)}; retrying"
        return p.stop("VariantsBuilt", c.REFERENCE_NOT_FOUND, message, warn=True)
    invalid: list[str] = []
    policy: OptimizationPolicy | None = None
    try:
        policy = parse_object(OptimizationPolicy, raw_policy)
    except ManifestError as exc:
        invalid.append(f"OptimizationPolicy {p.namespace}/{policy_name}: {exc.summary}")
    pools: dict[str, HardwarePool] = {}
    for name, raw_pool in raw_pools.items():
        try:
            pools[name] = parse_object(HardwarePool, raw_pool)
        except ManifestError as exc:
            invalid.append(f"HardwarePool {name}: {exc.summary}")
    if invalid or policy is None:
        message = f"invalid reference: {'; '.join(invalid)}"
        return p.stop("VariantsBuilt", c.INVALID_REFERENCE, message, warn=True)

    # 2. build
    digest = children.content_hash(spec, policy.spec.compression)
    if p.status.get("contentHash") not in (None, digest):
        p.events.append(("Normal", "Rebuilding", f"model or compression changed: build {digest}"))
        if p.status.get("driftedVariants"):  # judged on the old build's variants
            p.status["driftedVariants"] = []
    p.status["contentHash"] = digest
    layout = config.store.local_build(p.namespace, p.name, digest)
    if not layout.report.exists():
        job = kube.create_once(children.build_job(model, digest, policy, config))
        failed = _job_failed(p, job)
        if failed:
            return p.stop(
                "VariantsBuilt",
                c.BUILD_FAILED,
                f"build Job {job['metadata']['name']}: {failed}",
                warn=True,
            )
        if job_complete(job):
            return p.stop(
                "VariantsBuilt",
                c.BUILD_FAILED,
                f"build Job finished but wrote no {layout.report}",
                warn=True,
            )
        return p.stop(
            "VariantsBuilt", c.BUILDING, f"build Job {job['metadata']['name']} is running"
        )
    try:
        report = _read(BuildReport, layout.report)
        built = _load_variants(layout, children.pod_layout(model, digest, config))
    except _Unreadable as exc:
        return p.stop("VariantsBuilt", c.BUILD_FAILED, str(exc), warn=True)
    if not built:
        return p.stop(
            "VariantsBuilt", c.BUILD_FAILED, f"no variant under {layout.variants}", warn=True
        )
    budget = policy.spec.objectives.accuracy_budget_basis_points
    within = sum(1 for b in built if b.drop_bp <= budget)
    skipped = "".join(f"; skipped {s.name}: {s.reason}" for s in report.skipped)
    p.cond(
        "VariantsBuilt",
        True,
        c.BUILT,
        f"{len(built)} variants built, {within} within the {budget} bp budget{skipped}",
    )

    # recalibrations on recent requests the tick asked for (reconcilers/recalibration.py)
    reference = _reference(built)
    recalibration.advance(
        kube,
        model,
        policy,
        config,
        digest,
        built,
        reference.name if reference else None,
        p.status,
        p.events,
        functools.partial(_job_failed, p),
    )

    # 3. profile on every pool (at most config.profile_jobs_at_once Jobs at a time)
    profiles: dict[str, ProfileReport] = {}
    pending: list[str] = []
    queued: list[str] = []
    observed: dict[str, dict[str, Any]] | None = None  # the model's profile Jobs, if limited
    rounds = p.model.status.profile_rounds if p.model.status else {}
    reprofiling: list[str] = []
    for pool_name, pool in pools.items():
        round_ = rounds.get(pool_name, 0)
        path = layout.profile(pool_name, round_)
        if round_ > 0 and not path.exists():
            # re-profile on drift: the Job runs while the newest finished round serves
            older = next(
                (
                    layout.profile(pool_name, r)
                    for r in range(round_ - 1, -1, -1)
                    if layout.profile(pool_name, r).exists()
                ),
                None,
            )
            if older is not None:
                reprofiling.append(_reprofile(p, digest, pool, round_))
                path = older
        if path.exists():
            try:
                profiles[pool_name] = _read(ProfileReport, path)
            except _Unreadable as exc:
                return _variants_then_stop(
                    p, built, budget, profiles, "Profiled", c.PROFILE_FAILED, str(exc)
                )
            continue
        body = children.profile_job(model, digest, pool, config, round_)
        if config.profile_jobs_at_once > 0:
            if observed is None:
                observed = _profile_jobs(p)
            job = observed.get(body["metadata"]["name"]) or {}
            if not job:
                running = [j for j in observed.values() if not _job_finished(j)]
                if len(running) >= config.profile_jobs_at_once:
                    queued.append(pool_name)
                    continue
                job = observed[body["metadata"]["name"]] = kube.create_once(body)
        else:
            job = kube.create_once(body)
        failed = _job_failed(p, job)
        if failed:
            return _variants_then_stop(
                p,
                built,
                budget,
                profiles,
                "Profiled",
                c.PROFILE_FAILED,
                f"profile Job for pool {pool_name}: {failed}",
            )
        pending.append(pool_name)
    if pending or queued:
        waiting = f"; queued, {config.profile_jobs_at_once} at a time: {', '.join(queued)}"
        return _variants_then_stop(
            p,
            built,
            budget,
            profiles,
            "Profiled",
            c.PROFILING,
            (f"profiling on {', '.join(pending)}" if pending else "waiting for a profile Job")
            + (waiting if queued else ""),
            warn=False,
        )
    profiles = recalibration.with_recalibrated(profiles, built)
    fallbacks = [f"{k}: {v.fallback_reason}" for k, v in profiles.items() if v.fallback_reason]
    p.cond(
        "Profiled",
        True,
        c.PROFILED,
        f"profiled on {len(profiles)} pools"
        + (f"; fallbacks: {'; '.join(fallbacks)}" if fallbacks else "")
        + (f"; {'; '.join(reprofiling)}" if reprofiling else ""),
    )

    # 4. plan, without the pools whose replicas made no progress (failover)
    held = _failover(p, pools, policy)
    capacities = {
        name: PoolCapacity.of(pool, profiles.get(name), held=held.get(name))
        for name, pool in pools.items()
    }
    objectives = Objectives.of(policy.spec, spec.traffic)
    live = (
        live_demand_rps
        if live_demand_rps is not None
        and policy.spec.autoscaling.replicas == ReplicaScaling.AUTO
        and live_demand_rps > objectives.required_rps
        else None
    )
    if live is not None:
        objectives = dataclasses.replace(objectives, required_rps=live)
    drifted = set(p.status.get("driftedVariants") or [])  # with this pass's recalibrations
    decision, damaged = _plan_verified(p, layout, built, profiles, drifted, capacities, objectives)
    _report_damaged(p, damaged)
    _reoptimized(p, layout, decision)
    variant_writes = _variant_writes(p, built, budget, profiles, decision)
    live_note = f"live demand {live:.0f} req/s over the planned peak; " if live else ""
    message = (live_note + decision.message)[:PLAN_MESSAGE_LIMIT]
    if p.old_status.get("plan") != message:  # the plan's Event: once per plan
        p.events.append(("Normal" if decision.feasible else "Warning", decision.reason, message))
    p.status["plan"] = message
    if not decision.placements:
        p.kube.map(_call, variant_writes)
        return p.stop("Placed", decision.reason, message)
    p.cond("Placed", decision.feasible, decision.reason, message)

    # 5. apply serving objects
    by_name = {b.name: b.key for b in built}
    built_by_name = {b.name: b for b in built}
    planned = [
        PlannedPool(
            pool=pp.pool,
            variant=variant_object_name(p.name, pp.variant),
            deployment=children.dns_name(p.name, pp.pool),
            limits_config_map=children.limits_config_map_name(p.name, pp.pool),
            planned_replicas=pp.replicas,
            capacity_rps=pp.capacity_rps,
            batch_size=pp.batch_size,
            ceiling=replica_limit(capacities[pp.pool], objectives),
            profile_p50_s=_profile_p50(profiles.get(pp.pool), by_name.get(pp.variant)),
            recalibrate_as=recalibration.recalibratable(
                built_by_name[pp.variant], policy, list(built_by_name)
            ),
            recalibrated=built_by_name[pp.variant].manifest.recalibrated_from is not None,
            serving_label=children.dns_name(pp.variant),
        )
        for pp in decision.placements
    ]
    placements, router = _apply_serving(p, pools, built, decision, policy, variant_writes, planned)

    # 6. report
    ready_pools = [pl for pl in placements if pl.ready_replicas > 0]
    router_ready = bool(router and (router.get("status") or {}).get("readyReplicas"))
    p.status["placements"] = [pl.to_wire() for pl in placements]
    p.status["replicas"] = sum(pl.ready_replicas for pl in placements)
    p.status["endpoint"] = (
        f"http://{children.dns_name(p.name, 'router')}.{p.namespace}.svc:{children.ROUTER_PORT}"
    )
    serving = len(ready_pools) == len(placements) and router_ready
    p.cond(
        "Serving",
        serving,
        c.SERVING if serving else c.WAITING_FOR_REPLICAS,
        f"{p.status['replicas']} ready replicas on {len(ready_pools)}/{len(placements)} pools; "
        f"router {'ready' if router_ready else 'not ready'}"
        + (
            f"; {', '.join(sorted(p.draining))} still serving until the new pools are ready"
            if p.draining
            else ""
        ),
    )
    if not decision.feasible:
        p.cond("Ready", False, decision.reason, message)
    elif not serving:
        p.cond("Ready", False, c.WAITING_FOR_REPLICAS, "placed; waiting for ready replicas")
    else:
        p.cond("Ready", True, c.READY, "serving within the plan")
    outcome = p.finish()
    outcome.planned = _with_serving_variants(p, planned, built)
    return outcome


def _with_serving_variants(
    p: Pass, planned: list[PlannedPool], built: list[Built]
) -> list[PlannedPool]:
    """The planned pools, each naming the variant its own Deployment serves: the planned
    one, or, while this pass's canary rollout moves the pool to it and has not been
    promoted, the one it moves from (fidelity drift found meanwhile is that one's)."""
    by_label = {children.dns_name(b.name): variant_object_name(p.name, b.name) for b in built}
    moving = {
        str(r["pool"]): str(r.get("fromVariant") or "")
        for r in p.status.get("rollouts") or []
        if r.get("phase") in (CanaryPhase.STARTING.value, CanaryPhase.PROGRESSING.value)
    }
    return [
        dataclasses.replace(
            pl, serving_label=moving[pl.pool], serving_variant=by_label.get(moving[pl.pool])
        )
        if moving.get(pl.pool) and moving[pl.pool] != pl.serving_label
        else pl
        for pl in planned
    ]


def _plan_verified(
    p: Pass,
    layout: StoreLayout[Path],
    built: list[Built],
    profiles: dict[str, ProfileReport],
    drifted: set[str],
    capacities: dict[str, PoolCapacity],
    objectives: Objectives,
) -> tuple[Plan, dict[str, str]]:
    """Plan, then check the placed variants' artifacts in the store; plan again without
    any that is damaged (its servers would refuse it) until every placed one verifies.
    Returns the plan and the damaged variants' object names with what is wrong."""
    status = p.model.status
    suspects = {
        pl.variant
        for pl in (status.placements if status else [])
        if pl.ready_replicas < pl.replicas
    }
    by_name = {b.name: b for b in built}
    damaged: dict[str, str] = {}
    while True:
        left_out = drifted | damaged.keys()
        decision = plan(
            [
                VariantProfile.of(b.key, b.manifest, profiles)
                for b in built
                if variant_object_name(p.name, b.name) not in left_out
            ],
            list(capacities.values()),
            objectives,
        )
        found = {}
        for name in {pp.variant for pp in decision.placements}:
            obj = variant_object_name(p.name, name)
            problem = STORE_CHECKS.problem(layout.variant(by_name[name].key), obj in suspects)
            if problem is not None:
                found[obj] = problem
        if not found:
            return decision, damaged
        damaged.update(found)


def _report_damaged(p: Pass, damaged: dict[str, str]) -> None:
    """Damaged artifacts: in status (corruptVariants) and, when the set changes, a Warning
    Event per variant; one that verifies again is simply planned again."""
    before = set(p.old_status.get("corruptVariants") or [])
    for variant, problem in sorted(damaged.items()):
        if variant not in before:
            message = (
                f"{variant}: {problem}; planned without it until it verifies again "
                "(restore the file, or delete this build's folder and its build Job to rebuild)"
            )
            p.events.append(("Warning", "ArtifactCorrupt", message[:1024]))
    if damaged or before:
        p.status["corruptVariants"] = sorted(damaged)


def _pending(
    p: Pass, pool: str, round_: int | None = None, variant: str | None = None
) -> list[dict[str, Any]]:
    """The pending re-optimizations of ``pool`` (the pass's own copies): at profile
    ``round_``, or taking ``variant`` out."""
    return [
        o
        for o in p.status.get("lastOptimization", [])
        if o["pool"] == pool
        and o["outcome"] == PENDING
        and (round_ is None or o.get("profileRound") == round_)
        and (variant is None or o.get("variant") == variant)
        and not o.get("recalibration")  # closed by reconcilers/recalibration.py
    ]


def _pending_any(p: Pass) -> bool:
    return any(o["outcome"] == PENDING for o in p.status.get("lastOptimization", []))


def _reprofile(p: Pass, digest: str, pool: HardwarePool, round_: int) -> str:
    """Run (once) the re-profile Job of ``pool`` at ``round_``; a failed one ends its
    re-optimization (the current plan stays). Returns what to say in Profiled."""
    job = p.kube.create_once(children.profile_job(p.model, digest, pool, p.config, round_))
    failed = _job_failed(p, job)
    if failed is None:
        return f"re-profiling {pool.name} on drift (round {round_})"
    for entry in _pending(p, pool.name, round_):
        entry["outcome"] = (
            f"failed: profile Job {job['metadata']['name']}: {failed}; kept the current plan"
        )[:2048]
        p.events.append(("Warning", "ReoptimizeFailed", f"pool {pool.name}: {entry['outcome']}"))
    return f"re-profile of {pool.name} (round {round_}) failed: {failed}; kept the current plan"


def _summary(placements: list[tuple[str, str, int]]) -> str:
    return ", ".join(f"{pool}: {variant} x{replicas}" for pool, variant, replicas in placements)


def _reoptimized(p: Pass, layout: StoreLayout[Path], decision: Plan) -> None:
    """Close the pending re-optimizations whose profile round has finished: the outcome is
    the new plan against the one it replaces."""
    if not _pending_any(p):
        return
    rounds = p.model.status.profile_rounds if p.model.status else {}
    before = [
        (pl.pool, pl.variant, pl.replicas)
        for pl in (p.model.status.placements if p.model.status else [])
    ]
    after = [
        (pp.pool, variant_object_name(p.name, pp.variant), pp.replicas)
        for pp in decision.placements
    ]
    changed = "unchanged" if sorted(before) == sorted(after) else "changed"
    now = _summary(after) or f"nothing placed ({decision.reason}: {decision.message})"
    was = _summary(before) or "nothing"
    done: list[tuple[dict[str, Any], str]] = []
    for pool, round_ in rounds.items():
        if layout.profile(pool, round_).exists():
            done += [(e, "from the new profile") for e in _pending(p, pool, round_=round_)]
    for variant in p.model.status.drifted_variants if p.model.status else []:
        entries = p.status.get("lastOptimization", [])
        for pool in sorted({e["pool"] for e in entries if e.get("variant") == variant}):
            done += [(e, f"without {variant}") for e in _pending(p, pool, variant=variant)]
    for entry, how in done:
        entry["outcome"] = f"re-planned {how} ({changed}): {now}; was {was}"[:2048]
        p.events.append(("Normal", "Reoptimized", f"pool {entry['pool']}: {entry['outcome']}"))


def _failover(
    p: Pass, pools: dict[str, HardwarePool], policy: OptimizationPolicy
) -> dict[str, str]:
    """Hold out of the plan the pools whose server Deployment passed its progress deadline
    (:mod:`recserve_operator.failover`); release holds that ended. Writes
    ``status.unavailablePools`` and an Event per change; returns why each held pool is out."""
    old = [
        Hold(u.pool, u.reason, parse_stamp(u.since) or 0.0, parse_stamp(u.retry_at) or 0.0, u.nodes)
        for u in (p.model.status.unavailable_pools if p.model.status else [])
    ]
    held_before = {h.pool for h in old}
    selector = f"{children.MODEL_LABEL}={p.name},{children.COMPONENT_LABEL}=server"
    newly: dict[str, str] = {}
    # Listed by the owner label alone (the operator's child index answers that without a
    # LIST; a LIST per pass was the operator's costliest read at scale), servers picked here.
    owned = p.kube.list("apps/v1", "Deployment", p.namespace, f"{children.MODEL_LABEL}={p.name}")
    for deployment in owned:
        labels = deployment["metadata"].get("labels") or {}
        if labels.get(children.COMPONENT_LABEL) != "server":
            continue
        pool = labels.get(children.POOL_LABEL)
        message = stalled(deployment)
        if message is None or pool not in pools or pool in held_before:
            continue
        pods = p.kube.list("v1", "Pod", p.namespace, f"{selector},{children.POOL_LABEL}={pool}")
        newly[pool] = (why_not_ready(pods) or message)[:900]
    nodes = {
        name: nodes_fingerprint(pool_observed(pool), pool.generation)
        for name, pool in pools.items()
    }
    retry_s = policy.spec.failover.retry_seconds
    update = update_holds(old, newly, nodes, time.time(), retry_s)
    deadline = policy.spec.failover.pending_deadline_seconds
    left_out = {
        h.pool: f"{h.pool}: no replica ready within {deadline} s ({h.reason}); left out of "
        f"the plan until {stamp(h.retry_at)} or the pool changes"
        for h in update.holds
    }
    for hold in update.held:
        p.events.append(("Warning", "PoolUnavailable", f"pool {left_out[hold.pool]}"))
    for hold, why in update.released:
        p.events.append(("Normal", "PoolRetried", f"pool {hold.pool} back in the plan: {why}"))
    if update.holds or p.old_status.get("unavailablePools"):
        p.status["unavailablePools"] = [
            {
                "pool": h.pool,
                "reason": h.reason,
                "since": stamp(h.since),
                "retryAt": stamp(h.retry_at),
                "nodes": h.nodes,
            }
            for h in update.holds
        ]
    return left_out


def _profile_p50(report: ProfileReport | None, key: str | None) -> tuple[tuple[int, float], ...]:
    """(batch rows, p50 seconds of one call) of a variant's profile on a pool."""
    measured = report.variants.get(key) if report is not None and key else None
    if measured is None:
        return ()
    return tuple(sorted((pt.batch_size, pt.p50_us / 1e6) for pt in measured.points))


class _Unreadable(Exception):
    """A file a Job wrote that its artifact type refuses (the message names the field)."""


def _unreadable(path: Path, exc: ValidationError) -> _Unreadable:
    return _Unreadable(f"{path} is invalid: {'; '.join(str(e) for e in field_errors(exc))}")


def _read(kind: type[T], path: Path) -> T:
    """A report file a Job wrote, through its artifact type."""
    try:
        return kind.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise _unreadable(path, exc) from None


def _job_failed(p: Pass, job: dict[str, Any]) -> str | None:
    """Why ``job`` failed, in its program's words (:mod:`recserve_operator.jobs`); None
    while it has not. Its pods are read only once it has failed."""
    if failed_condition(job) is None:
        return None
    name = job["metadata"]["name"]
    pods = p.kube.list("v1", "Pod", p.namespace, f"batch.kubernetes.io/job-name={name}")
    return job_failure(job, pods)


def _profile_jobs(p: Pass) -> dict[str, dict[str, Any]]:
    """The model's profile Jobs (of any build) by name."""
    selector = f"{children.MODEL_LABEL}={p.name},{children.COMPONENT_LABEL}=profile"
    return {
        job["metadata"]["name"]: job
        for job in p.kube.list("batch/v1", "Job", p.namespace, selector)
    }


def _job_finished(job: dict[str, Any]) -> bool:
    return failed_condition(job) is not None or job_complete(job)


def _load_variants(layout: StoreLayout[Path], pods: StoreLayout[PurePosixPath]) -> list[Built]:
    """Every finished variant of the build (a folder without its manifest is unfinished).

    ``layout`` is where the operator reads the build, ``pods`` where servers will.
    """
    if not layout.variants.is_dir():
        return []
    found = []
    for sub in sorted(layout.variants.iterdir()):
        if not (sub / MANIFEST).exists():
            continue
        try:
            manifest = load_manifest(sub)
            recipe = Recipe.model_validate(manifest.recipe.model_dump(exclude_none=True))
            artifact = Artifact(
                uri=str(pods.variant(sub.name)),
                sha256=manifest.artifact.sha256,
                size_bytes=manifest.artifact.size_bytes,
            )
        except ValidationError as exc:
            raise _unreadable(sub / MANIFEST, exc) from None
        found.append(Built(sub.name, manifest, recipe, artifact))
    return found


def variant_object_name(model_name: str, variant_name: str) -> str:
    return children.dns_name(model_name, variant_name)


def _pool_profiles(b: Built, profiles: dict[str, ProfileReport]) -> list[PoolProfile]:
    out = []
    for pool, report in sorted(profiles.items()):
        measured = report.variants.get(b.key)
        if measured is None:
            continue
        out.append(
            PoolProfile(
                pool=pool,
                execution_provider=measured.execution_provider,
                fallback_reason=measured.fallback_reason,
                points=[
                    ProfilePoint(
                        batch_size=pt.batch_size,
                        p50_microseconds=round(pt.p50_us),
                        p99_microseconds=round(pt.p99_us),
                        samples_per_second=round(pt.samples_per_second),
                    )
                    for pt in measured.points
                ],
            )
        )
    return out


def _call(write: Callable[[], R]) -> R:
    return write()


def _sync_variants(
    p: Pass,
    built: list[Built],
    budget: int,
    profiles: dict[str, ProfileReport],
    decision: Plan | None,
) -> None:
    """Create/patch one owned ModelVariant per built variant and write its status."""
    p.kube.map(_call, _variant_writes(p, built, budget, profiles, decision))


def _variant_writes(
    p: Pass,
    built: list[Built],
    budget: int,
    profiles: dict[str, ProfileReport],
    decision: Plan | None,
) -> list[Callable[[], None]]:
    """One write per built variant (independent of each other): create/patch its owned
    ModelVariant, then write that one's status if it changed."""
    selected: dict[str, list[str]] = {}
    for pp in decision.placements if decision else []:
        selected.setdefault(pp.variant, []).append(pp.pool)
    existing = {
        mv["metadata"]["name"]: mv
        for mv in p.kube.list_custom(
            "modelvariants", p.namespace, f"{children.MODEL_LABEL}={p.name}"
        )
    }

    def sync(b: Built) -> None:
        name = variant_object_name(p.name, b.name)
        manifest = b.manifest
        body = children.model_variant(p.model, name, b.recipe, b.artifact)
        current = p.kube.apply_if_changed(body, existing)
        metrics = manifest.metrics
        status = ModelVariantStatus(
            observed_generation=(current.get("metadata") or {}).get("generation"),
            auc=metrics.get("auc"),
            log_loss=metrics.get("logLoss"),
            accuracy_drop_basis_points=b.drop_bp,
            within_budget=b.drop_bp <= budget,
            size_bytes=manifest.artifact.size_bytes,
            profiles=_pool_profiles(b, profiles),
            selected=b.name in selected,
            selected_pools=sorted(selected.get(b.name, [])),
        ).model_dump(by_alias=True, exclude_none=True, exclude={"conditions"}, mode="json")
        if status != _variant_status(current):
            p.kube.patch_status("modelvariants", name, p.namespace, status)

    return [functools.partial(sync, b) for b in built]


def _variant_status(observed: dict[str, Any]) -> dict[str, Any]:
    """An observed ModelVariant's status as stored, conditions aside (empty when its type
    refuses it: the next write replaces it)."""
    try:
        variant = parse_object(ModelVariant, observed)
    except ManifestError as exc:
        log.warning("%s", exc)
        return {}
    if variant.status is None:
        return {}
    return variant.status.model_dump(
        by_alias=True, exclude_unset=True, exclude={"conditions"}, mode="json"
    )


def _variants_then_stop(
    p: Pass,
    built: list[Built],
    budget: int,
    profiles: dict[str, ProfileReport],
    type_: str,
    reason: str,
    message: str,
    warn: bool = True,
) -> Outcome:
    _sync_variants(p, built, budget, profiles, None)
    return p.stop(type_, reason, message, warn=warn)


def _reference(built: list[Built]) -> Built | None:
    """The FP32 variant of the source model itself (no quantization, pruning or
    distillation): what a compressed variant's fidelity is measured against."""
    plain = [
        b
        for b in built
        if b.recipe.precision.value == "fp32"
        and b.recipe.quantization.value == "none"
        and b.recipe.pruning_ratio_basis_points == 0
        and b.recipe.student is None
    ]
    return min(plain, key=lambda b: b.drop_bp, default=None)  # the source model: no drop


def _moves(
    p: Pass,
    decision: Plan,
    deployments: dict[str, dict[str, Any]],
    built: list[Built],
    policy: OptimizationPolicy,
) -> dict[str, PoolMove]:
    """Per placed pool, what happens to its Deployments (canary rollouts,
    reconcilers/rollout.py); their Events go out once."""
    status = p.model.status
    rollouts = {r.pool: r for r in (status.rollouts if status else [])}
    known_bad = {
        *(status.drifted_variants if status else []),
        *(status.corrupt_variants if status else []),
    } - recalibration.superseded(p.status.get("lastOptimization", []))
    bad = frozenset(
        children.dns_name(b.name) for b in built if variant_object_name(p.name, b.name) in known_bad
    )
    moves = {
        pp.pool: pool_move(
            pp.pool,
            pp.variant,
            deployments.get(children.dns_name(p.name, pp.pool)),
            rollouts.get(pp.pool),
            policy.spec.rollout.canary,
            stamp(time.time()),
            bad,
        )
        for pp in decision.placements
    }
    for pool, move in moves.items():
        for event in move.events:
            # once: a pass over a body older than the last pass's write decides again
            told = (event[1], move.rollout.to_variant if move.rollout else "")
            if p.announced.get(f"canary/{pool}") != told:
                p.announced[f"canary/{pool}"] = told
                p.events.append(event)
    return moves


def _apply_serving(
    p: Pass,
    pools: dict[str, HardwarePool],
    built: list[Built],
    decision: Plan,
    policy: OptimizationPolicy,
    variant_writes: list[Callable[[], None]],
    planned: list[PlannedPool],
) -> tuple[list[PoolPlacement], dict[str, Any]]:
    """Deployments + Services per placed pool, the router; stale pools are removed.

    Writes that do not depend on each other go side by side (``Kube.map``), the
    ModelVariants' (``variant_writes``) among them: a pass then takes as long as its
    slowest write, not their sum. The router's Deployment follows its ServiceAccount (a
    pod that names a missing one is refused, and its ReplicaSet backs off).

    Returns the placements and the router Deployment as observed after applying.
    """
    by_name = {b.name: b for b in built}
    selector = f"{children.MODEL_LABEL}={p.name}"
    observed = {
        kind: {o["metadata"]["name"]: o for o in p.kube.list(api, kind, p.namespace, selector)}
        for api, kind in (
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("v1", "ConfigMap"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
        )
    }
    shared = f"{children.SHARED_LABEL}=true"
    observed |= {
        kind: {o["metadata"]["name"]: o for o in p.kube.list(api, kind, p.namespace, shared)}
        for api, kind in (
            ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        )
    }

    def apply(body: dict[str, Any]) -> dict[str, Any]:
        return p.kube.apply_if_changed(body, observed[body["kind"]])

    target_ms = policy.spec.objectives.p99_latency_target_milliseconds
    mode = policy.spec.autoscaling.replicas
    static = mode == ReplicaScaling.STATIC
    reference = _reference(built)

    def server_body(
        pp: PoolPlan, canary: bool = False, replicas: int | None = None
    ) -> dict[str, Any]:
        sample_bp = (
            policy.spec.rollout.fidelity_sample_basis_points
            if canary
            else policy.spec.drift.fidelity_sample_basis_points
        )
        return children.server_deployment(
            p.model,
            pools[pp.pool],
            by_name[pp.variant].artifact.uri,
            pp.variant,
            replicas if canary else (pp.replicas if static else None),
            pp.batch_size,
            target_ms,
            p.config,
            progress_deadline_s=policy.spec.failover.pending_deadline_seconds,
            reference_dir=(
                reference.artifact.uri
                if reference is not None and reference.name != pp.variant
                else None
            ),
            fidelity_sample_bp=sample_bp,
            request_sample_rows=(
                policy.spec.drift.recalibration_sample_rows if policy.spec.drift.recalibrate else 0
            ),
            # drift is acted on only once sustained this long: the rows since are what a
            # recalibration needs, not the server's whole life (mostly older inputs)
            request_sample_seconds=max(
                policy.spec.drift.sustained_seconds, policy.spec.drift.check_interval_seconds
            ),
            canary=canary,
        )

    servers = [server_body(pp) for pp in decision.placements]
    # canary rollouts: which pools keep their Deployment as it is while the planned
    # variant runs beside it (reconcilers/rollout.py)
    deployments = observed["Deployment"]
    moves = _moves(p, decision, deployments, built, policy)
    kept = [m.rollout for m in moves.values() if m.rollout]
    p.status["rollouts"] = [r.model_dump(by_alias=True, mode="json") for r in kept]
    # the routers' canary share: the tick moves it step by step; the pass only sets it
    # to 0 where no canary takes requests (a new rollout begins at 0, an ended one ends
    # there) or to 100 where every rollout is being promoted (a canary whose stable side
    # was found bad is promoted by the pass), and leaves a live share to the tick,
    # whose word is newer
    share = router_weight(kept)
    weights = [children.router_weights(p.model, share)] if share in (0, 100) else []

    def stable_replicas(pp: PoolPlan) -> int:
        stable = deployments.get(children.dns_name(p.name, pp.pool)) or {}
        return int((stable.get("spec") or {}).get("replicas") or pp.replicas)

    # a canary runs as many replicas as the pool's Deployment (it may take every request)
    canaries = [
        server_body(pp, canary=True, replicas=max(1, stable_replicas(pp)))
        for pp in decision.placements
        if moves[pp.pool].canary
    ]
    kept_canaries = {c["metadata"]["name"] for c in canaries}
    # a pool's limits ConfigMap starts at the plan's limits; the autoscaler owns it after
    new_limits = [
        limits_config_map(
            p.model, pl.limits_config_map, batch_range(p.model, policy, pl).planned_limits()
        )
        for pl in planned
        if pl.limits_config_map not in observed["ConfigMap"]
    ]
    router = children.router_deployment(p.model, p.config)
    rbac = children.router_rbac(p.namespace)

    def router_after_its_account() -> dict[str, Any]:
        # one after the other, in router_rbac's order: a RoleBinding applied before its
        # Role exists is refused (404, the API server's escalation check cannot read the
        # Role), and a pod that names a missing ServiceAccount is refused (the
        # namespace's account: written by its first model's pass, read from the index
        # by the others)
        for obj in rbac:
            apply(obj)
        return apply(router)

    others = [
        *(children.service(deployment, p.model) for deployment in servers),
        children.service(router, p.model),
        *(children.network_policies(p.model, p.config) if p.config.network_policies else []),
    ]
    if new_limits:  # before the servers that mount them
        p.kube.map(p.kube.create_once, new_limits)

    def stable_write(pp: PoolPlan, deployment: dict[str, Any]) -> Callable[[], Any]:
        if moves[pp.pool].apply_stable:
            return functools.partial(apply, deployment)
        as_is = deployments[deployment["metadata"]["name"]]  # while its canary is analysed
        return lambda: as_is

    writes: list[Callable[[], Any]] = [
        *(stable_write(pp, d) for pp, d in zip(decision.placements, servers, strict=True)),
        router_after_its_account,
        *(functools.partial(apply, obj) for obj in others),
        *variant_writes,
        *(functools.partial(apply, canary) for canary in canaries),
        *(functools.partial(apply, w) for w in weights),
    ]
    applied: list[Any] = p.kube.map(_call, writes)
    for name, old in deployments.items():  # canaries whose rollout is over
        labels = old["metadata"].get("labels", {})
        if labels.get(children.TRACK_LABEL) == children.CANARY and name not in kept_canaries:
            p.kube.delete("apps/v1", "Deployment", name, p.namespace)
    # A Deployment the autoscaler (or another one) will own starts at the plan's count.
    # Generation 1: no spec change since it was created, so never scaled, whether the
    # Deployment is new or a pass failed between its create and its scale.
    for pl, server in zip(planned, applied[: len(servers)], strict=True):
        generation = int((server.get("metadata") or {}).get("generation") or 0)
        replicas_now = int((server.get("spec") or {}).get("replicas") or 1)
        if not static and generation <= 1 and replicas_now != pl.planned_replicas:
            p.kube.scale_deployment(pl.deployment, p.namespace, pl.planned_replicas)
            server.setdefault("spec", {})["replicas"] = pl.planned_replicas
    before = {pl.pool: pl for pl in (p.model.status.placements if p.model.status else [])}
    placements = []
    for pp, pl, server in zip(decision.placements, planned, applied[: len(servers)], strict=True):
        last = before.get(pp.pool)
        placement = PoolPlacement(
            pool=pp.pool,
            variant=pl.variant,
            replicas=int((server.get("spec") or {}).get("replicas") or 0),
            planned_replicas=pp.replicas,
            ready_replicas=int((server.get("status") or {}).get("readyReplicas") or 0),
            batch_size=last.batch_size if last and last.variant == pl.variant else pp.batch_size,
            capacity_requests_per_second=round(pp.capacity_rps),
        )
        if last is not None and last.variant == pl.variant:  # the autoscaler's last word
            placement.observed_requests_per_second = last.observed_requests_per_second
            placement.observed_p99_milliseconds = last.observed_p99_milliseconds
            placement.reason = last.reason
            placement.last_scale_time = last.last_scale_time
            placement.capacity_requests_per_second = last.capacity_requests_per_second
        placements.append(placement)
    placed = {pp.pool for pp in decision.placements}
    # make before break: a pool leaving the plan keeps its ready replicas (the router
    # still sends them requests) until every pool of the new plan has its own ready
    settled = all(pl.ready_replicas >= max(pl.replicas, 1) for pl in placements)
    for old in observed["Deployment"].values():
        labels = old["metadata"].get("labels", {})
        if labels.get(children.TRACK_LABEL) == children.CANARY:
            continue  # above
        if labels.get(children.COMPONENT_LABEL) == "server" and (
            labels.get(children.POOL_LABEL) not in placed
        ):
            if not settled and int((old.get("status") or {}).get("readyReplicas") or 0) > 0:
                p.draining.append(str(labels.get(children.POOL_LABEL)))
                continue
            gone = old["metadata"]["name"]
            p.kube.delete("apps/v1", "Deployment", gone, p.namespace)
            p.kube.delete("v1", "Service", gone, p.namespace)
            pool = labels.get(children.POOL_LABEL) or ""
            p.kube.delete(
                "v1", "ConfigMap", children.limits_config_map_name(p.name, pool), p.namespace
            )
    applied_router: dict[str, Any] = applied[len(servers)]
    return placements, applied_router
