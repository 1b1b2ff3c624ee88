"""OptimizationPolicy (namespaced): objectives, compressions to try, scaling and drift rules."""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, Strict, ValidationInfo, field_validator

from recserve_operator.api.common import (
    ApiModel,
    Condition,
    Int,
    Precision,
    Resource,
    cel,
    conditions_field,
    nested,
)
from recserve_runtime.artifacts import P99_TARGET_MS_DEFAULT

# A structured-pruning ratio in basis points: 1% .. 95% of MLP neurons removed.
PruningRatio = Annotated[int, Strict(), Field(ge=100, le=9500)]


def _not_below(low_name: str, low_attr: str, value: int, info: ValidationInfo) -> int:
    """Cross-field check `low <= value`, reported on the value's field (mirrors a CEL rule)."""
    low = info.data.get(low_attr)
    if isinstance(low, int) and value < low:
        raise ValueError(f"must be >= {low_name} ({low}), got {value}")
    return value


class Objectives(ApiModel):
    """What the placement must achieve."""

    p99_latency_target_milliseconds: Int = Field(
        default=P99_TARGET_MS_DEFAULT,
        ge=1,
        le=60000,
        description="p99 end-to-end latency of one ranking request that replicas must meet.",
    )
    accuracy_budget_basis_points: Int = Field(
        default=100,
        ge=0,
        le=10000,
        description="Largest relative AUC drop versus the original model a variant may have "
        "(100 = 1%). Variants over budget are rejected.",
    )
    throughput_floor_requests_per_second: Int = Field(
        default=0,
        ge=0,
        le=10**7,
        description="Requests per second the placement must sustain at least, even if the "
        "RecModel expects less.",
    )
    cost_weight_percent: Int = Field(
        default=50,
        ge=0,
        le=100,
        description="How much the planner weighs cost against latency headroom "
        "(0: fastest, 100: cheapest that meets the target).",
    )


class Distillation(ApiModel):
    """Knowledge distillation into smaller student models."""

    enabled: bool = Field(
        default=True,
        description="Search and build distilled students (false: no student variants, "
        "`recserve optimize --no-distillation`).",
    )
    max_students: Int = Field(
        default=4,
        ge=1,
        le=16,
        description="Student shapes the hardware-aware search tries, taken in order from "
        "the builder's built-in list (`recserve optimize --max-students`).",
    )


class Compression(ApiModel):
    """Which compressions the variant builder tries."""

    precisions: list[Precision] = Field(
        default_factory=lambda: [Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4],
        min_length=1,
        max_length=4,
        description="Precisions to build variants in (`recserve optimize --precisions`). "
        "fp32 is the reference every variant's accuracy drop is measured against and is "
        "always built, listed or not. fp16 applies to the original model; int8 is dynamic "
        "INT8 of every model built (original, pruned, student); int4 stores embedding "
        "tables row-wise in INT4 (with the MLP in INT8 too when int8 is listed).",
        json_schema_extra={"default": ["fp32", "fp16", "int8", "int4"]},
    )
    static_quantization: bool = Field(
        default=True,
        description="Also build INT8 with static QDQ calibrated on training data (needs "
        "int8 in precisions; `recserve optimize --[no-]static-quantization`).",
    )
    pruning_ratios_basis_points: list[PruningRatio] = Field(
        default_factory=lambda: [5000],
        max_length=8,
        description="Structured pruning ratios of MLP neurons to try (5000 = 50%). Each "
        "ratio gives its own fine-tuned pruned variants of the original model and of the "
        "distilled student, in the int8/int4 precisions listed; empty: no pruning "
        "(`recserve optimize --prune-bp` / `--no-pruning`).",
        json_schema_extra={"default": [5000]},
    )
    distillation: Distillation = nested(Distillation, "Distillation settings.")


class ReplicaScaling(StrEnum):
    """Who sets a serving Deployment's replicas."""

    AUTO = "Auto"
    STATIC = "Static"
    EXTERNAL = "External"


class Autoscaling(ApiModel):
    """Bounds and pace of replica and batch-size scaling (docs/autoscaling.md)."""

    replicas: ReplicaScaling = Field(
        default=ReplicaScaling.AUTO,
        description="Auto: the operator scales each pool's replicas from live Prometheus "
        "metrics and the variant's measured capacity, within minReplicas..maxReplicas "
        "and the pool's ceiling. Static: the plan's replicas for the peak "
        "(traffic.expectedRequestsPerSecond x peakFactorPercent), fixed. External: "
        "another autoscaler (an HPA, KEDA) owns the replicas; the operator sets the "
        "plan's count once, when it creates the Deployment.",
    )
    batch_tuning: bool = Field(
        default=True,
        description="Set each pool's batching limits (batch ceiling, queue delay, share of "
        "the p99 target one batch may use) from the observed p99 and load; false: the "
        "plan's batch ceiling, fixed. The server's own controller adapts the batch size "
        "per batch within these limits either way.",
    )
    min_replicas: Int = Field(default=1, ge=1, le=10000, description="Fewest replicas per pool.")
    spare_replicas: Int = Field(
        default=0,
        ge=0,
        le=100,
        description="Replicas each serving pool keeps beyond what its load needs at full "
        "capacity, so that this many can fail at once (a crash, an eviction) and the rest "
        "still carry the load without refusing it: at least ceil(load / one replica's "
        "capacity) + spareReplicas, in the plan and when autoscaling, within maxReplicas "
        "and the pool's ceiling (which win). The plan's 70% utilization already covers "
        "that where a pool runs many replicas; 0: no spare.",
    )
    max_replicas: Int = Field(
        default=8, ge=1, le=10000, description="Most replicas per pool (also capped by the pool)."
    )
    min_batch_size: Int = Field(
        default=1,
        ge=1,
        le=65536,
        description="Smallest batch row limit the server's batcher may fall to (raised to "
        "the RecModel's candidatesPerRequest when that is larger).",
    )
    max_batch_size: Int = Field(
        default=1024,
        ge=1,
        le=65536,
        description="Largest batch row limit: the planner's batch and batch tuning stay within it.",
    )
    interval_seconds: Int = Field(
        default=15,
        ge=1,
        le=3600,
        description="How often live metrics are read and acted on (the operator's "
        "autoscaling tick, RECSERVE_AUTOSCALE_TICK_SECONDS, is the finest grain).",
    )
    scale_up_cooldown_seconds: Int = Field(
        default=30,
        ge=0,
        le=86400,
        description="Least time between two scale-ups for the same demand. Acted on at "
        "once: panic (the last interval's demand needs at least twice the current "
        "replicas), and demand more than 15% over what the last scale-up was sized for.",
    )
    scale_down_cooldown_seconds: Int = Field(
        default=300,
        ge=0,
        le=86400,
        description="Least time after any change before a scale-down, and the window "
        "whose highest recommendation a scale-down may not go below (no flapping). A "
        "scale-down removes at most half the replicas.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "minReplicas must be <= maxReplicas",
                    ".maxReplicas",
                ),
                cel(
                    "self.minBatchSize <= self.maxBatchSize",
                    "minBatchSize must be <= maxBatchSize",
                    ".maxBatchSize",
                ),
            ]
        }
    )

    @field_validator("max_replicas")
    @classmethod
    def _max_replicas_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        return _not_below("minReplicas", "min_replicas", value, info)

    @field_validator("max_batch_size")
    @classmethod
    def _max_batch_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        return _not_below("minBatchSize", "min_batch_size", value, info)


class Drift(ApiModel):
    """When observed performance has drifted from what a pool's profile predicted, and
    what to do about it (docs/autoscaling.md#drift): drift is reported (the RecModel's
    Drift condition and a DriftDetected Event) and, with ``reprofile``, the pool is
    profiled again and the model re-planned from the new profile."""

    reprofile: bool = Field(
        default=True,
        description="On latency or capacity drift of a pool, run a new profile Job there and "
        "re-plan from it (at most once per cooldownSeconds per pool; one action when "
        "several causes are found together). false: report only.",
    )

    latency_drift_basis_points: Int = Field(
        default=2000,
        ge=100,
        le=100000,
        description="Latency drift: the servers' mean compute time per batch exceeds the "
        "profile's p50 at their mean batch size by this much (2000 = 20%) throughout "
        "sustainedSeconds.",
    )
    capacity_drift_basis_points: Int = Field(
        default=2000,
        ge=100,
        le=10000,
        description="Capacity drift: saturated replicas each serve less than the profile's "
        "capacity by this much (2000 = 20%) throughout sustainedSeconds.",
    )
    fidelity_sample_basis_points: Int = Field(
        default=100,
        ge=0,
        le=10000,
        description="Share of live requests a server of a compressed variant also scores "
        "with the FP32 reference variant, off the request path (100 = 1%; 0: off).",
    )
    fidelity_agreement_basis_points: Int = Field(
        default=9000,
        ge=1000,
        le=10000,
        description="Fidelity drift: the share of candidate pairs the served variant ranks "
        "in the same order as the FP32 reference (pairwise order agreement, over the "
        "sampled requests) stays below this (9000 = 90%) throughout sustainedSeconds.",
    )
    data_drift_psi_thousandths: Int = Field(
        default=250,
        ge=10,
        le=100000,
        description="Data drift: some input column's population stability index against "
        "the training data (its bins are in the manifest; servers export "
        "recserve_feature_psi per window of rows) stays above this (250 = 0.25, the usual "
        "'significant shift') throughout sustainedSeconds. Reported for a human (the Drift "
        "condition, a DriftDetected Event and a lastOptimization entry naming the column). "
        "A re-profile or another variant does not undo a shift of the inputs, so the plan "
        "is kept, except that a statically quantized variant calibrated on training rows is "
        "recalibrated on recent requests (see recalibrate); retraining is out of recserve's "
        "scope.",
    )
    recalibrate: bool = Field(
        default=True,
        description="On fidelity or data drift of a pool serving a statically quantized "
        "variant, calibrate that variant again on the pool's recent requests (a "
        "`recserve recalibrate` Job, which refuses a result that ranks them further from the "
        "FP32 reference or loses more AUC than the accuracy budget), then move the pool to "
        "the new variant by canary. Needs recalibrationSampleRows > 0. false: never.",
    )
    recalibration_sample_rows: Int = Field(
        default=2048,
        ge=0,
        le=65536,
        description="Rows of answered requests each server keeps for recalibration: a "
        "uniform sample of their feature ids and values, nothing else, on the admin port "
        "only, of the rows answered in the last one to two sustainedSeconds (at least "
        "checkIntervalSeconds) (0: none kept, no recalibration). A recalibration Job waits "
        "(up to 2 minutes) until the pool's servers hold this many rows.",
    )
    check_interval_seconds: Int = Field(
        default=60,
        ge=5,
        le=86400,
        description="How often a pool's figures are sampled for the detectors (at least "
        "the autoscaling interval).",
    )
    sustained_seconds: Int = Field(
        default=120,
        ge=0,
        le=86400,
        description="Drift must be seen in every sample of this window, without gaps, "
        "before it is reported (ignores short spikes and missing metrics).",
    )
    cooldown_seconds: Int = Field(
        default=900,
        ge=0,
        le=604800,
        description="Least time between two reports (Events) of the same drift of a pool, "
        "and between two re-profiles of a pool.",
    )


class Failover(ApiModel):
    """When a pool is taken out of a model's plan and tried again (docs/autoscaling.md#failover).

    A pool without a Ready, schedulable node is left out at once. A pool whose new
    replicas do not become ready in time (Pending: Insufficient memory or
    nvidia.com/gpu, an image that cannot be pulled, a crash loop) is left out for
    ``retrySeconds``, or until the pool changes; its share goes to the other pools.
    """

    pending_deadline_seconds: Int = Field(
        default=180,
        ge=30,
        le=3600,
        description="Seconds a pool's replicas may make no progress towards ready (its "
        "server Deployment's progressDeadlineSeconds); past it the pool is left out of the "
        "plan and the reason is written to status.unavailablePools.",
    )
    retry_seconds: Int = Field(
        default=900,
        ge=60,
        le=86400,
        description="Seconds a pool left out for that reason stays out before it is tried "
        "again; a change of the pool (its spec, or its nodes' count, ready count or "
        "allocatable) brings it back sooner.",
    )


StepWeight = Annotated[int, Strict(), Field(ge=1, le=100)]


class Rollout(ApiModel):
    """How a pool moves to another variant (docs/autoscaling.md#canary): the new
    variant's servers start beside the old ones, the router sends them a growing share
    of requests, and each step is analysed on the new variant's own requests before the
    next; a failed analysis rolls back to the variant that served before."""

    canary: bool = Field(
        default=True,
        description="Roll a pool's variant change out by canary (a second Deployment, a "
        "growing share of requests, analysis at each step, rollback on failure); false: "
        "the pool's Deployment is updated in place (a rolling update, no analysis).",
    )
    step_weights_percent: list[StepWeight] = Field(
        default_factory=lambda: [5, 10, 25, 50, 100],
        min_length=1,
        max_length=10,
        description="The shares of the model's requests (percent) the router sends to the "
        "new variant's servers, step by step, increasing; after the last step passes, the "
        "pool's Deployment is moved to the new variant (promotion).",
    )
    step_seconds: Int = Field(
        default=60,
        ge=5,
        le=3600,
        description="Each step lasts at least this long; its analysis covers the new "
        "variant's requests of the last stepSeconds.",
    )
    failure_limit: Int = Field(
        default=2,
        ge=1,
        le=20,
        description="Failed analyses (over the whole rollout) before it is rolled back; a "
        "failed step is analysed again after stepSeconds at the same share.",
    )
    max_error_rate_basis_points: Int = Field(
        default=100,
        ge=0,
        le=10000,
        description="An analysis fails when more than this share of the new variant's "
        "requests failed with a server error (5xx other than 503, its overload refusal; "
        "100 = 1%). Its p99 must also be within objectives.p99LatencyTargetMilliseconds, "
        "and a compressed variant's fidelity at least drift.fidelityAgreementBasisPoints.",
    )
    min_requests: Int = Field(
        default=20,
        ge=1,
        le=1000000,
        description="Fewer requests than this to the new variant in a step's window (or "
        "metrics missing) hold the step: no evidence is never counted as success.",
    )
    fidelity_sample_basis_points: Int = Field(
        default=1000,
        ge=0,
        le=10000,
        description="Share of the new variant's requests its servers also score with the "
        "FP32 reference while it is a canary (1000 = 10%; 0: fidelity is not analysed), "
        "when the new variant is a compressed one.",
    )

    @field_validator("step_weights_percent")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"must increase step by step, got {value}")
        return value

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.stepWeightsPercent.isSorted() && self.stepWeightsPercent.all("
                    "w, self.stepWeightsPercent.filter(x, x == w).size() == 1)",
                    "stepWeightsPercent must increase step by step",
                    ".stepWeightsPercent",
                ),
            ]
        }
    )


class OptimizationPolicySpec(ApiModel):
    """Desired state of an OptimizationPolicy."""

    objectives: Objectives = nested(Objectives, "Latency, accuracy, throughput and cost goals.")
    compression: Compression = nested(Compression, "Compressions the variant builder tries.")
    autoscaling: Autoscaling = nested(Autoscaling, "Replica and batch-size scaling bounds.")
    drift: Drift = nested(Drift, "Drift detection and re-optimization pace.")
    failover: Failover = nested(Failover, "When a pool is left out of the plan and tried again.")
    rollout: Rollout = nested(Rollout, "How a pool moves to another variant (canary).")


class OptimizationPolicyStatus(ApiModel):
    """Observed state of an OptimizationPolicy."""

    observed_generation: Int | None = Field(
        default=None, description="metadata.generation this status reflects."
    )
    conditions: list[Condition] = conditions_field()


class OptimizationPolicy(Resource):
    """Objectives and rules a RecModel's optimization and scaling follow."""

    KIND: ClassVar[str] = "OptimizationPolicy"

    kind: str = Field(default="OptimizationPolicy", description="OptimizationPolicy.")
    spec: OptimizationPolicySpec = Field(
        default_factory=OptimizationPolicySpec, description="Desired state."
    )
    status: OptimizationPolicyStatus | None = Field(default=None, description="Observed state.")
