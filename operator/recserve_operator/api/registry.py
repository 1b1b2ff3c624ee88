"""Per-kind CRD facts that are not part of the types: names, scope, printer columns."""

from __future__ import annotations

from dataclasses import dataclass, field

from recserve_operator.api.common import Resource
from recserve_operator.api.hardwarepool import HardwarePool
from recserve_operator.api.modelvariant import ModelVariant
from recserve_operator.api.optimizationpolicy import OptimizationPolicy
from recserve_operator.api.recmodel import RecModel

READY = '.status.conditions[?(@.type=="Ready")].status'


def column(
    name: str, type_: str, path: str, description: str, priority: int = 0
) -> dict[str, object]:
    """An additionalPrinterColumns entry."""
    col: dict[str, object] = {
        "name": name,
        "type": type_,
        "jsonPath": path,
        "description": description,
    }
    if priority:
        col["priority"] = priority
    return col


AGE = column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


@dataclass(frozen=True)
class CrdKind:
    """One custom resource kind and how it appears to kubectl."""

    model: type[Resource]
    plural: str
    short_names: list[str]
    namespaced: bool
    columns: list[dict[str, object]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.model.KIND

    @property
    def singular(self) -> str:
        return self.kind.lower()


KINDS: list[CrdKind] = [
    CrdKind(
        RecModel,
        "recmodels",
        ["rm"],
        True,
        [
            column("Ready", "string", READY, "Whether the model is served within its objectives."),
            column("Replicas", "integer", ".status.replicas", "Ready replicas over all pools."),
            column("P99ms", "integer", ".status.observedP99Milliseconds", "Live p99 latency."),
            column("RPS", "integer", ".status.observedRequestsPerSecond", "Live request rate."),
            column("Endpoint", "string", ".status.endpoint", "Router URL.", priority=1),
            AGE,
        ],
    ),
    CrdKind(
        HardwarePool,
        "hardwarepools",
        ["hwp"],
        False,
        [
            column("Type", "string", ".spec.hardwareType", "gpu, cpu or fpga."),
            column("Nodes", "integer", ".status.nodeCount", "Nodes matching the selector."),
            column("Ready", "string", READY, "Whether the pool has ready nodes."),
            column("Allocatable", "integer", ".status.allocatable", "Accelerators.", priority=1),
            column("Used", "integer", ".status.used", "Accelerators in use.", priority=1),
            AGE,
        ],
    ),
    CrdKind(
        OptimizationPolicy,
        "optimizationpolicies",
        ["optpol"],
        True,
        [
            column(
                "P99Target",
                "integer",
                ".spec.objectives.p99LatencyTargetMilliseconds",
                "p99 target in ms.",
            ),
            column(
                "AccuracyBudgetBp",
                "integer",
                ".spec.objectives.accuracyBudgetBasisPoints",
                "Accuracy budget in basis points.",
            ),
            AGE,
        ],
    ),
    CrdKind(
        ModelVariant,
        "modelvariants",
        ["mv"],
        True,
        [
            column("Model", "string", ".spec.modelRef.name", "Source RecModel."),
            column("Precision", "string", ".spec.recipe.precision", "Numeric precision."),
            column(
                "PruningBp",
                "integer",
                ".spec.recipe.pruningRatioBasisPoints",
                "Share of MLP neurons pruned (basis points).",
            ),
            column("SizeBytes", "integer", ".spec.artifact.sizeBytes", "Artifact size."),
            column(
                "AccDropBp",
                "integer",
                ".status.accuracyDropBasisPoints",
                "Relative AUC drop (basis points).",
            ),
            column("Selected", "boolean", ".status.selected", "Served by some pool."),
            AGE,
        ],
    ),
]


def kind_for(kind: str) -> CrdKind:
    """The CrdKind of a kind name; KeyError with the known kinds otherwise."""
    for crd in KINDS:
        if crd.kind == kind:
            return crd
    raise KeyError(f"unknown kind {kind!r}; known: {', '.join(k.kind for k in KINDS)}")
