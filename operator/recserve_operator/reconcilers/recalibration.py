"""Recalibration of statically quantized variants on recent requests (the pass's part).

The autoscaling tick decides (``reconcilers.scaling``): on fidelity or data drift of a
pool serving a static INT8 variant it records a pending ``lastOptimization`` entry whose
``recalibration`` names the variant to build. Each reconcile pass then, per pending
entry: runs the `recserve recalibrate` Job once (:func:`children.recalibrate_job`, fed by
the pool's servers' request samples); when the new variant is in the store, closes
the entry and takes the old variant out of the plan (``driftedVariants``), so that the
plan moves the pool to the new one (by canary); when the Job fails, closes the entry with
its reason and keeps the plan.

A recalibrated variant has the graph of the one it recalibrates (the same operators and
shapes; only the quantization constants differ), so until a pool is profiled again it is
planned with that variant's profile there (:func:`with_recalibrated`); the canary's p99
check then measures it live.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from recserve_operator import children
from recserve_operator.api.optimizationpolicy import OptimizationPolicy
from recserve_operator.api.recmodel import RecModel
from recserve_operator.config import OperatorConfig
from recserve_operator.jobs import job_complete
from recserve_operator.kube import Kube
from recserve_operator.reconcilers.scaling import CAUSES, PENDING
from recserve_runtime.artifacts import Manifest, ProfileReport

_SUFFIX = re.compile(r"-recal(\d+)$")


class BuiltVariant(Protocol):
    """What this module reads of a variant found in the store."""

    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def drop_bp(self) -> int: ...


def next_name(origin: str, names: Sequence[str]) -> str:
    """The name the next recalibration of ``origin`` gets: ``<root>-recal<n>``, ``root``
    the variant first calibrated on training rows, ``n`` one past the highest taken."""
    root = _SUFFIX.sub("", origin)
    highest = max(
        (int(m.group(1)) for n in names if (m := _SUFFIX.search(n)) and n[: m.start()] == root),
        default=0,
    )
    return f"{root}-recal{highest + 1}"


def recalibratable(
    variant: BuiltVariant, policy: OptimizationPolicy, names: Sequence[str]
) -> str | None:
    """The name a recalibration of ``variant`` would build, or None where none applies:
    not statically quantized, or the policy keeps no request sample or says no."""
    rules = policy.spec.drift
    if (
        variant.manifest.recipe.quantization != "static"
        or not rules.recalibrate
        or rules.recalibration_sample_rows <= 0
    ):
        return None
    return next_name(variant.name, names)


def with_recalibrated(
    profiles: Mapping[str, ProfileReport], built: Sequence[BuiltVariant]
) -> dict[str, ProfileReport]:
    """``profiles`` where each recalibrated variant not profiled on a pool yet has the
    profile of the variant it recalibrates there (same graph; see the module docstring)."""
    keys = {b.name: b.key for b in built}
    out = dict(profiles)
    for b in built:
        origin = keys.get(b.manifest.recalibrated_from or "")
        if origin is None:
            continue
        for pool, report in out.items():
            if b.key not in report.variants and origin in report.variants:
                variants = {**report.variants, b.key: report.variants[origin]}
                out[pool] = report.model_copy(update={"variants": variants})
    return out


def superseded(entries: Sequence[Mapping[str, Any]]) -> set[str]:
    """Variants (object names) that a recalibration after data drift replaced: out of the
    plan (driftedVariants), but not wrong, only calibrated on older inputs, so the move to
    their successor is guarded by a canary like any other. A variant whose fidelity fell
    is left at once instead, also when that is found after its recalibration (it may be
    the stable side of its successor's canary by then)."""
    recalibrated = {
        str(e["variant"])
        for e in entries
        if e.get("recalibration")
        and e.get("variant")
        and e.get("cause") == CAUSES["data"]
        and str(e.get("outcome", "")).startswith("recalibrated")
    }
    ranked_unlike = {
        str(e["variant"])
        for e in entries
        if not e.get("recalibration")
        and e.get("variant")
        and CAUSES["fidelity"] in str(e.get("cause"))
    }
    return recalibrated - ranked_unlike


def advance(
    kube: Kube,
    model: RecModel,
    policy: OptimizationPolicy,
    config: OperatorConfig,
    digest: str,
    built: Sequence[BuiltVariant],
    reference: str | None,
    status: dict[str, Any],
    events: list[tuple[str, str, str]],
    job_failed: Callable[[dict[str, Any]], str | None],
) -> None:
    """Move each pending recalibration on (see the module docstring): writes the entries'
    outcomes and ``driftedVariants`` into ``status``, Events into ``events``."""
    by_name = {b.name: b for b in built}
    by_object = {children.dns_name(model.name, b.name): b for b in built}
    failed: dict[str, int] = {}  # earlier tries at a name that failed: a new Job each
    for entry in status.get("lastOptimization", []):
        name = entry.get("recalibration")
        if name and str(entry.get("outcome", "")).startswith("failed"):
            failed[name] = failed.get(name, 0) + 1
        if not name or entry.get("outcome") != PENDING:
            continue
        pool = entry["pool"]
        origin = by_object.get(entry.get("variant") or "")
        new = by_name.get(name)
        if new is not None:
            m = new.manifest.metrics
            entry["outcome"] = (
                f"recalibrated {new.manifest.recalibrated_from} as {name} on "
                f"{int(m.get('calibrationRows', 0))} recent rows: pairwise agreement with the "
                f"reference {m.get('recentAgreementBefore', 0):.3f} -> "
                f"{m.get('recentAgreementAfter', 0):.3f} on held-back rows, AUC drop "
                f"{new.drop_bp} bp on the held-out data; it replaces the old variant in the plan"
            )[:2048]
            drifted = list(status.get("driftedVariants") or [])
            if entry.get("variant") and entry["variant"] not in drifted:
                status["driftedVariants"] = [*drifted, entry["variant"]]
            events.append(("Normal", "Recalibrated", f"pool {pool}: {entry['outcome']}"))
            continue
        attempt = failed.get(name, 0) + 1
        why = _run(
            kube, model, policy, config, digest, origin, reference, name, pool, job_failed, attempt
        )
        if why is not None:
            entry["outcome"] = f"failed: {why}; kept the current plan"[:2048]
            events.append(("Warning", "ReoptimizeFailed", f"pool {pool}: {entry['outcome']}"))


def _run(
    kube: Kube,
    model: RecModel,
    policy: OptimizationPolicy,
    config: OperatorConfig,
    digest: str,
    origin: BuiltVariant | None,
    reference: str | None,
    name: str,
    pool: str,
    job_failed: Callable[[dict[str, Any]], str | None],
    attempt: int,
) -> str | None:
    """Create (once) or watch one recalibration Job; why it cannot go on, else None.
    ``attempt``: how many tries at ``name`` this one is (a failed try's Job stays, and
    must not answer for the next: seen in `recserve bench drift`)."""
    if origin is None or reference is None:
        return "the variant to recalibrate or the FP32 reference is not in this build"
    body = children.recalibrate_job(
        model, digest, policy, config, origin.name, reference, name, pool, attempt
    )
    job_name = body["metadata"]["name"]
    existing = kube.create_once(body)
    failed = job_failed(existing)
    if failed is not None:
        return f"recalibration Job {job_name}: {failed}"
    if job_complete(existing):
        return f"recalibration Job {job_name} finished but wrote no variant {name}"
    return None
