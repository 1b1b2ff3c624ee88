"""RecModel: references -> build Job -> ModelVariants -> profile Jobs -> plan -> serving.

One idempotent pass that derives everything from the spec and what it observes (Jobs,
files in the artifact store, Deployments). It is run on every change and on a timer;
each pass moves the model as far as it can and reports where it stands in conditions
(VariantsBuilt, Profiled, Placed, Serving, Ready). Nothing is remembered between
passes, so an operator restart resumes where the cluster is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recserve_operator import children
from recserve_operator import conditions as c
from recserve_operator.config import OperatorConfig
from recserve_operator.kube import Kube
from recserve_operator.planner import Objectives, Plan, Point, PoolCapacity, VariantProfile, plan

log = logging.getLogger("recserve.recmodel")
CONDITION_TYPES = ("VariantsBuilt", "Profiled", "Placed", "Serving")


@dataclass
class Outcome:
    """What one pass decided: the status to write and the Events to post."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


@dataclass
class Built:
    """One variant found in the artifact store."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def drop_bp(self) -> int:
        drop = self.manifest.get("metrics", {}).get("aucDropRelPct", 0.0)
        return max(round(float(drop) * 100), 0)


class Pass:
    """State of one reconcile pass over one RecModel."""

    def __init__(self, model: dict[str, Any], kube: Kube, config: OperatorConfig) -> None:
        self.model = model
        self.kube = kube
        self.config = config
        self.name = model["metadata"]["name"]
        self.namespace = model["metadata"]["namespace"]
        self.generation = model["metadata"].get("generation")
        self.old_status = dict(model.get("status") or {})
        self.conds: list[dict[str, Any]] = list(self.old_status.get("conditions", []))
        self.status: dict[str, Any] = {k: v for k, v in self.old_status.items()}
        self.events: list[tuple[str, str, str]] = []

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
            self.events.append(("Warning", reason, message))
        return self.finish()

    def finish(self) -> Outcome:
        self.status["conditions"] = self.conds
        self.status["observedGeneration"] = self.generation
        return Outcome(self.status, self.events)


def reconcile_recmodel(model: dict[str, Any], kube: Kube, config: OperatorConfig) -> Outcome:
    """One pass; see the module docstring."""
    p = Pass(model, kube, config)
    spec = model["spec"]
    if spec.get("paused"):
        p.cond("Ready", False, c.PAUSED, "spec.paused is true: not reconciling")
        return p.finish()

    # 1. references
    policy = kube.get_custom("optimizationpolicies", spec["policyRef"]["name"], p.namespace)
    pools = {
        ref["name"]: kube.get_custom("hardwarepools", ref["name"])
        for ref in spec["hardwarePoolRefs"]
    }
    missing = (
        [f"OptimizationPolicy {p.namespace}/{spec['policyRef']['name']}"] if policy is None else []
    )
    missing += [f"HardwarePool {name}" for name, pool in pools.items() if pool is None]
    if missing or policy is None:
        message = f"not found: {', '.join(missing)}; retrying"
        return p.stop("VariantsBuilt", c.REFERENCE_NOT_FOUND, message, warn=True)
    found_pools = {k: v for k, v in pools.items() if v is not None}

    # 2. build
    digest = children.content_hash(spec, policy["spec"].get("compression", {}))
    if p.status.get("contentHash") not in (None, digest):
        p.events.append(("Normal", "Rebuilding", f"model or compression changed: build {digest}"))
    p.status["contentHash"] = digest
    root = config.store.local_path(p.namespace, p.name, digest)
    report = root / "report.json"
    if not report.exists():
        job = kube.create_once(children.build_job(model, digest, policy, config))
        failed = _job_failed(job)
        if failed:
            return p.stop(
                "VariantsBuilt",
                c.BUILD_FAILED,
                f"build Job {job['metadata']['name']}: {failed}",
                warn=True,
            )
        if _job_complete(job):
            return p.stop(
                "VariantsBuilt",
                c.BUILD_FAILED,
                f"build Job finished but wrote no {report}",
                warn=True,
            )
        return p.stop(
            "VariantsBuilt", c.BUILDING, f"build Job {job['metadata']['name']} is running"
        )
    built = _load_variants(root / "variants")
    if not built:
        return p.stop(
            "VariantsBuilt", c.BUILD_FAILED, f"no variant under {root / 'variants'}", warn=True
        )
    budget = int(policy["spec"].get("objectives", {}).get("accuracyBudgetBasisPoints", 100))
    within = sum(1 for b in built if b.drop_bp <= budget)
    p.cond(
        "VariantsBuilt",
        True,
        c.BUILT,
        f"{len(built)} variants built, {within} within the {budget} bp budget",
    )

    # 3. profile on every pool
    profiles: dict[str, dict[str, Any]] = {}
    pending: list[str] = []
    for pool_name, pool in found_pools.items():
        path = root / f"profile-{pool_name}.json"
        if path.exists():
            profiles[pool_name] = json.loads(path.read_text())
            continue
        job = kube.create_once(children.profile_job(model, digest, pool, config))
        failed = _job_failed(job)
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
    if pending:
        return _variants_then_stop(
            p,
            built,
            budget,
            profiles,
            "Profiled",
            c.PROFILING,
            f"profiling on {', '.join(pending)}",
            warn=False,
        )
    fallbacks = [
        f"{k}: {v['fallbackReason']}" for k, v in profiles.items() if v.get("fallbackReason")
    ]
    p.cond(
        "Profiled",
        True,
        c.PROFILED,
        f"profiled on {len(profiles)} pools"
        + (f"; fallbacks: {'; '.join(fallbacks)}" if fallbacks else ""),
    )

    # 4. plan
    decision = plan(
        [_variant_profile(b, profiles) for b in built],
        [_pool_capacity(pool) for pool in found_pools.values()],
        _objectives(model, policy),
    )
    _sync_variants(p, built, budget, profiles, decision)
    if not decision.placements:
        return p.stop("Placed", decision.reason, decision.message, warn=True)
    message = decision.message
    if p.old_status.get("plan") != message:
        p.events.append(("Normal" if decision.feasible else "Warning", decision.reason, message))
    p.status["plan"] = message
    p.cond("Placed", decision.feasible, decision.reason, message)

    # 5. apply serving objects
    placements, router = _apply_serving(p, found_pools, built, decision, policy)

    # 6. report
    ready_pools = [pl for pl in placements if pl["readyReplicas"] > 0]
    router_ready = bool(router and (router.get("status") or {}).get("readyReplicas"))
    p.status["placements"] = placements
    p.status["replicas"] = sum(pl["readyReplicas"] for pl in placements)
    p.status["endpoint"] = (
        f"http://{children.dns_name(p.name, 'router')}.{p.namespace}.svc:{children.ROUTER_PORT}"
    )
    serving = len(ready_pools) == len(placements) and router_ready
    p.cond(
        "Serving",
        serving,
        c.SERVING if serving else c.WAITING_FOR_REPLICAS,
        f"{p.status['replicas']} ready replicas on {len(ready_pools)}/{len(placements)} pools; "
        f"router {'ready' if router_ready else 'not ready'}",
    )
    if not decision.feasible:
        p.cond("Ready", False, decision.reason, decision.message)
    elif not serving:
        p.cond("Ready", False, c.WAITING_FOR_REPLICAS, "placed; waiting for ready replicas")
    else:
        p.cond("Ready", True, c.READY, "serving within the plan")
    return p.finish()


def _job_failed(job: dict[str, Any]) -> str | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("message") or cond.get("reason") or "failed")
    return None


def _job_complete(job: dict[str, Any]) -> bool:
    return any(
        cond.get("type") == "Complete" and cond.get("status") == "True"
        for cond in (job.get("status") or {}).get("conditions") or []
    )


def _load_variants(folder: Path) -> list[Built]:
    if not folder.is_dir():
        return []
    found = []
    for sub in sorted(folder.iterdir()):
        manifest = sub / "manifest.json"
        if manifest.exists():  # written last: a folder without it is unfinished
            found.append(Built(sub, json.loads(manifest.read_text())))
    return found


def _points(raw: dict[str, Any]) -> list[Point]:
    return [
        Point(
            int(pt["batchSize"]),
            float(pt["p50Us"]),
            float(pt["p99Us"]),
            float(pt["samplesPerSecond"]),
        )
        for pt in raw.get("points", [])
    ]


def _variant_profile(b: Built, profiles: dict[str, dict[str, Any]]) -> VariantProfile:
    per_pool = {
        pool: _points(report["variants"][b.folder.name])
        for pool, report in profiles.items()
        if b.folder.name in report.get("variants", {})
    }
    return VariantProfile(
        name=b.name,
        precision=str(b.manifest.get("recipe", {}).get("precision", "fp32")),
        accuracy_drop_bp=b.drop_bp,
        size_bytes=int(b.manifest["artifact"]["sizeBytes"]),
        profiles=per_pool,
    )


def _pool_capacity(pool: dict[str, Any]) -> PoolCapacity:
    spec = pool["spec"]
    status = pool.get("status") or {}
    accel = spec.get("accelerator")
    accel_replicas = None
    if accel and status.get("allocatable") is not None:
        accel_replicas = int(status["allocatable"]) // int(accel.get("amountPerReplica", 1))
    return PoolCapacity(
        name=pool["metadata"]["name"],
        hardware=spec["hardwareType"],
        precisions=tuple(spec.get("supportedPrecisions", ["fp32", "int8"])),
        max_replicas=int(spec.get("maxReplicas", 16)),
        cost_per_replica_hour_millicents=int(spec.get("costPerReplicaHourMillicents", 0)),
        accelerator_replicas=accel_replicas,
    )


def _objectives(model: dict[str, Any], policy: dict[str, Any]) -> Objectives:
    obj = policy["spec"].get("objectives", {})
    scaling = policy["spec"].get("autoscaling", {})
    traffic = model["spec"].get("traffic", {})
    expected = (
        traffic.get("expectedRequestsPerSecond", 100) * traffic.get("peakFactorPercent", 150) / 100
    )
    return Objectives(
        p99_target_ms=int(obj.get("p99LatencyTargetMilliseconds", 25)),
        accuracy_budget_bp=int(obj.get("accuracyBudgetBasisPoints", 100)),
        required_rps=max(float(expected), float(obj.get("throughputFloorRequestsPerSecond", 0))),
        candidates_per_request=int(traffic.get("candidatesPerRequest", 64)),
        cost_weight_percent=int(obj.get("costWeightPercent", 50)),
        min_replicas=int(scaling.get("minReplicas", 1)),
        max_replicas=int(scaling.get("maxReplicas", 8)),
        min_batch_size=int(scaling.get("minBatchSize", 1)),
        max_batch_size=int(scaling.get("maxBatchSize", 1024)),
    )


def variant_object_name(model_name: str, variant_name: str) -> str:
    return children.dns_name(model_name, variant_name)


def _sync_variants(
    p: Pass,
    built: list[Built],
    budget: int,
    profiles: dict[str, dict[str, Any]],
    decision: Plan | None,
) -> None:
    """Create/patch one owned ModelVariant per built variant and write its status."""
    selected: dict[str, list[str]] = {}
    for pp in decision.placements if decision else []:
        selected.setdefault(pp.variant, []).append(pp.pool)
    existing = {
        mv["metadata"]["name"]: mv
        for mv in p.kube.list_custom(
            "modelvariants", p.namespace, f"{children.MODEL_LABEL}={p.name}"
        )
    }
    for b in built:
        name = variant_object_name(p.name, b.name)
        recipe = b.manifest.get("recipe", {})
        student = recipe.get("student")
        spec_recipe: dict[str, Any] = {
            "precision": recipe.get("precision", "fp32"),
            "quantization": recipe.get("quantization", "none"),
            "pruningRatioBasisPoints": int(recipe.get("pruningRatioBasisPoints", 0)),
        }
        if student and student.get("embeddingDim") and student.get("mlpLayers"):
            spec_recipe["student"] = {
                "embeddingDim": int(student["embeddingDim"]),
                "mlpLayers": [int(x) for x in student["mlpLayers"]],
            }
        body = {
            "apiVersion": "recserve.io/v1alpha1",
            "kind": "ModelVariant",
            "metadata": {
                "name": name,
                "namespace": p.namespace,
                "labels": {children.MODEL_LABEL: p.name, **children.MANAGED_BY},
                "ownerReferences": [children.owner_reference(p.model)],
            },
            "spec": {
                "modelRef": {"name": p.name},
                "recipe": spec_recipe,
                "artifact": {
                    "uri": p.config.store.pod_path(
                        p.namespace, p.name, p.status["contentHash"], "variants", b.folder.name
                    ),
                    "sha256": b.manifest["artifact"]["sha256"],
                    "sizeBytes": int(b.manifest["artifact"]["sizeBytes"]),
                },
            },
        }
        current = p.kube.apply_if_changed(body, existing)
        metrics = b.manifest.get("metrics", {})
        pool_profiles = []
        for pool, report in sorted(profiles.items()):
            raw = report.get("variants", {}).get(b.folder.name)
            if not raw:
                continue
            entry: dict[str, Any] = {
                "pool": pool,
                "executionProvider": str(
                    raw.get("executionProvider", report.get("executionProvider"))
                ),
                "points": [
                    {
                        "batchSize": pt.batch_size,
                        "p50Microseconds": round(pt.p50_us),
                        "p99Microseconds": round(pt.p99_us),
                        "samplesPerSecond": round(pt.samples_per_second),
                    }
                    for pt in _points(raw)
                ],
            }
            if raw.get("fallbackReason"):
                entry["fallbackReason"] = raw["fallbackReason"]
            pool_profiles.append(entry)
        status: dict[str, Any] = {
            "observedGeneration": current["metadata"].get("generation"),
            "accuracyDropBasisPoints": b.drop_bp,
            "withinBudget": b.drop_bp <= budget,
            "sizeBytes": int(b.manifest["artifact"]["sizeBytes"]),
            "profiles": pool_profiles,
            "selected": b.name in selected,
            "selectedPools": sorted(selected.get(b.name, [])),
        }
        if "auc" in metrics:
            status["auc"] = float(metrics["auc"])
        if "logLoss" in metrics:
            status["logLoss"] = float(metrics["logLoss"])
        if status != {k: v for k, v in (current.get("status") or {}).items() if k != "conditions"}:
            p.kube.patch_status("modelvariants", name, p.namespace, status)


def _variants_then_stop(
    p: Pass,
    built: list[Built],
    budget: int,
    profiles: dict[str, dict[str, Any]],
    type_: str,
    reason: str,
    message: str,
    warn: bool = True,
) -> Outcome:
    _sync_variants(p, built, budget, profiles, None)
    return p.stop(type_, reason, message, warn=warn)


def _apply_serving(
    p: Pass,
    pools: dict[str, dict[str, Any]],
    built: list[Built],
    decision: Plan,
    policy: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Deployments + Services per placed pool, the router; stale pools are removed.

    Returns the placements and the router Deployment as observed after applying.
    """
    by_name = {b.name: b for b in built}
    selector = f"{children.MODEL_LABEL}={p.name}"
    observed = {
        kind: {o["metadata"]["name"]: o for o in p.kube.list(api, kind, p.namespace, selector)}
        for api, kind in (
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "Role"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        )
    }

    def apply(body: dict[str, Any]) -> dict[str, Any]:
        return p.kube.apply_if_changed(body, observed[body["kind"]])

    target_ms = int(policy["spec"].get("objectives", {}).get("p99LatencyTargetMilliseconds", 25))
    placements = []
    for pp in decision.placements:
        variant_dir = p.config.store.pod_path(
            p.namespace,
            p.name,
            p.status["contentHash"],
            "variants",
            by_name[pp.variant].folder.name,
        )
        deployment = children.server_deployment(
            p.model,
            pools[pp.pool],
            variant_dir,
            pp.variant,
            pp.replicas,
            pp.batch_size,
            target_ms,
            p.config,
        )
        applied = apply(deployment)
        apply(children.service(deployment, p.model))
        placements.append(
            {
                "pool": pp.pool,
                "variant": variant_object_name(p.name, pp.variant),
                "replicas": pp.replicas,
                "readyReplicas": int((applied.get("status") or {}).get("readyReplicas") or 0),
                "batchSize": pp.batch_size,
            }
        )
    placed = {pp.pool for pp in decision.placements}
    for old in observed["Deployment"].values():
        labels = old["metadata"].get("labels", {})
        if labels.get(children.COMPONENT_LABEL) == "server" and (
            labels.get(children.POOL_LABEL) not in placed
        ):
            p.kube.delete("apps/v1", "Deployment", old["metadata"]["name"], p.namespace)
            p.kube.delete("v1", "Service", old["metadata"]["name"], p.namespace)
    for obj in children.router_rbac(p.model):
        apply(obj)
    router = children.router_deployment(p.model, p.config)
    applied_router = apply(router)
    apply(children.service(router, p.model))
    return placements, applied_router
