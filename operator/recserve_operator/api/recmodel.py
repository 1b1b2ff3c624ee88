"""RecModel (namespaced): a trained recommendation model to optimize and serve."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from recserve_operator.api.common import (
    SHA256_PATTERN,
    ApiModel,
    Condition,
    Int,
    ObjectRef,
    Resource,
    cel,
    conditions_field,
    nested,
)


class ModelFormat(StrEnum):
    """What the model file at source.uri is."""

    DEMO = "demo"
    CHECKPOINT = "checkpoint"
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


class EvalFormat(StrEnum):
    """How a custom eval data file is stored."""

    PARQUET = "parquet"
    CSV = "csv"
    CRITEO = "criteo"


KNOWN_DATASETS = ("movielens-100k", "custom")
# what the CEL rules and the types' validators say (the API server runs the one, the
# operator's parsing the other)
UNKNOWN_DATASET = "unknown dataset: the builder knows movielens-100k (or custom with uri)"
CUSTOM_NEEDS_URI = "a custom evalDataset needs uri (a Parquet, CSV or Criteo TSV file)"
CUSTOM_ONLY = "uri, format, testUri, timeColumn and userColumn are read only for name: custom"
CUSTOM_NEEDS_SPLIT = (
    "a custom evalDataset needs a declared split: timeColumn (and userColumn for a per-user "
    "split) or testUri"
)
USER_NEEDS_TIME = "userColumn splits each user's rows by time: set timeColumn too"
FILE_NEEDS_SPEC = "a torchscript or onnx source needs featureSpecUri (its inputs and columns)"
DEMO_IS_DEMO = "format demo goes with uri demo, and has no sha256 (the model is trained here)"


class ModelSource(ApiModel):
    """Where the trained model is and what it must hash to."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description="Location of the model: `demo` (the bundled MovieLens teacher, trained on "
        "first use), a path as the build Job sees it (the artifact store is mounted at "
        "/artifacts), or any fsspec URI (file://, s3://, gs://, http(s)://).",
    )
    format: ModelFormat = Field(
        default=ModelFormat.TORCHSCRIPT,
        description="What the file is: demo, checkpoint (from `recserve train`: every "
        "compression, pruning and distillation included), torchscript or onnx (both: the "
        "ONNX-level variants, and need featureSpecUri). The build fails if the file is "
        "something else.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="Expected sha256 of the model file (lowercase hex), checked before the "
        "model is used (a mismatch fails the build); immutable once set (create a new "
        "RecModel to change the model).",
    )
    feature_spec_uri: str | None = Field(
        default=None,
        validate_default=True,
        max_length=2048,
        description="YAML/JSON feature spec (path or fsspec URI): the model's input names, "
        "its sparse and dense features, and which data columns feed them "
        "(docs/bring-your-own-model.md). Needed for torchscript and onnx; optional for a "
        "checkpoint, which carries its own.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(oldSelf.sha256) || (has(self.sha256) && self.sha256 == oldSelf.sha256)",
                    "sha256 is immutable once set",
                    ".sha256",
                ),
                cel(
                    "!(self.format == 'torchscript' || self.format == 'onnx') "
                    "|| has(self.featureSpecUri)",
                    FILE_NEEDS_SPEC,
                    ".featureSpecUri",
                ),
                cel("(self.format == 'demo') == (self.uri == 'demo')", DEMO_IS_DEMO, ".format"),
                cel("self.format != 'demo' || !has(self.sha256)", DEMO_IS_DEMO, ".sha256"),
            ]
        }
    )

    # the same rules for the operator's own parsing (the API server runs the CEL above)
    @field_validator("format")
    @classmethod
    def _demo_is_demo(cls, value: ModelFormat, info: ValidationInfo) -> ModelFormat:
        if (value == ModelFormat.DEMO) != (info.data.get("uri") == "demo"):
            raise ValueError(DEMO_IS_DEMO)
        return value

    @field_validator("sha256")
    @classmethod
    def _no_sha_for_demo(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("format") == ModelFormat.DEMO:
            raise ValueError(DEMO_IS_DEMO)
        return value

    @field_validator("feature_spec_uri")
    @classmethod
    def _files_need_spec(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("format") in (ModelFormat.TORCHSCRIPT, ModelFormat.ONNX):
            raise ValueError(FILE_NEEDS_SPEC)
        return value


class EvalDataset(ApiModel):
    """Held-out data accuracy is measured on."""

    name: str = Field(
        default="movielens-100k",
        max_length=253,
        description="A known dataset name (movielens-100k) or `custom`: your own data at uri.",
    )
    uri: str | None = Field(
        default=None,
        validate_default=True,
        max_length=2048,
        description="custom: a Parquet file or folder, a CSV file or a Criteo TSV file (path "
        "as the build Job sees it, or fsspec URI), columns mapped by the feature spec.",
    )
    format: EvalFormat | None = Field(
        default=None,
        description="custom: parquet, csv or criteo (default: from uri's extension).",
    )
    test_uri: str | None = Field(
        default=None,
        max_length=2048,
        description="custom: a ready-made test file (same format); uri is then the training "
        "part (validation and static-quantization calibration rows).",
    )
    time_column: str | None = Field(
        default=None,
        validate_default=True,
        max_length=253,
        description="custom: split by this time column; the latest holdoutBasisPoints of "
        "rows are held out.",
    )
    user_column: str | None = Field(
        default=None,
        max_length=253,
        description="custom, with timeColumn: hold out each user's latest "
        "holdoutBasisPoints of rows instead.",
    )
    holdout_basis_points: Int = Field(
        default=2000,
        ge=100,
        le=5000,
        description="Share of the rows held out for evaluation (2000 = 20%; `recserve "
        "optimize --holdout-bp`): each user's latest for movielens-100k (the demo model is "
        "trained without them), the latest by timeColumn for custom data.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.name == 'movielens-100k' || self.name == 'custom'",
                    UNKNOWN_DATASET,
                    ".name",
                ),
                cel("self.name != 'custom' || has(self.uri)", CUSTOM_NEEDS_URI, ".uri"),
                cel(
                    "self.name == 'custom' || !(has(self.uri) || has(self.format) || "
                    "has(self.testUri) || has(self.timeColumn) || has(self.userColumn))",
                    CUSTOM_ONLY,
                    ".uri",
                ),
                cel(
                    "self.name != 'custom' || has(self.timeColumn) || has(self.testUri)",
                    CUSTOM_NEEDS_SPLIT,
                    ".timeColumn",
                ),
                cel(
                    "!has(self.userColumn) || has(self.timeColumn)", USER_NEEDS_TIME, ".userColumn"
                ),
            ]
        }
    )

    # the same rules for the operator's own parsing (the API server runs the CEL above)
    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in KNOWN_DATASETS:
            raise ValueError(UNKNOWN_DATASET)
        return value

    @field_validator("uri", "format", "test_uri", "time_column", "user_column")
    @classmethod
    def _custom_only(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and info.data.get("name") not in (None, "custom"):
            raise ValueError(CUSTOM_ONLY)
        return value

    @field_validator("uri")
    @classmethod
    def _custom_needs_uri(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("name") == "custom":
            raise ValueError(CUSTOM_NEEDS_URI)
        return value

    @field_validator("time_column")
    @classmethod
    def _custom_needs_split(cls, value: str | None, info: ValidationInfo) -> str | None:
        custom = info.data.get("name") == "custom"
        if custom and value is None and info.data.get("test_uri") is None:
            raise ValueError(CUSTOM_NEEDS_SPLIT)
        return value

    @field_validator("user_column")
    @classmethod
    def _user_needs_time(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("time_column") is None:
            raise ValueError(USER_NEEDS_TIME)
        return value


class Traffic(ApiModel):
    """The load the RecModel is expected to serve."""

    expected_requests_per_second: Int = Field(
        default=100, ge=0, le=10**7, description="Steady-state ranking requests per second."
    )
    candidates_per_request: Int = Field(
        default=64, ge=1, le=100000, description="Items scored per ranking request."
    )
    peak_factor_percent: Int = Field(
        default=150,
        ge=100,
        le=1000,
        description="Peak load as a percentage of the expected load (150 = 1.5x); "
        "replicas are planned for the peak.",
    )


class RecModelSpec(ApiModel):
    """Desired state of a RecModel."""

    source: ModelSource = Field(description="The trained model.")
    eval_dataset: EvalDataset = nested(EvalDataset, "Data accuracy is evaluated on.")
    policy_ref: ObjectRef = Field(description="OptimizationPolicy (same namespace) to follow.")
    hardware_pool_refs: list[ObjectRef] = Field(
        min_length=1,
        max_length=16,
        description="HardwarePools the model may be placed on.",
    )
    traffic: Traffic = nested(Traffic, "Expected traffic.")
    paused: bool = Field(
        default=False, description="Stop reconciling (keeps what runs; for maintenance)."
    )


class PoolPlacement(ApiModel):
    """What runs in one pool, and the autoscaler's last word on it."""

    pool: str = Field(description="HardwarePool name.")
    variant: str = Field(description="ModelVariant served there.")
    replicas: Int = Field(ge=0, description="Replicas the Deployment is scaled to.")
    planned_replicas: Int | None = Field(
        default=None, ge=0, description="Replicas the plan gives for the peak traffic."
    )
    ready_replicas: Int = Field(default=0, ge=0, description="Replicas ready.")
    batch_size: Int = Field(
        default=1, ge=1, description="Batch row ceiling the pool's servers are given."
    )
    capacity_requests_per_second: Int | None = Field(
        default=None,
        ge=0,
        description="Requests per second one replica serves at full load: the profile, or "
        "live throughput where replicas were saturated.",
    )
    observed_requests_per_second: Int | None = Field(
        default=None, ge=0, description="Requests per second the pool received (live)."
    )
    observed_p99_milliseconds: Int | None = Field(
        default=None, ge=0, description="Live p99 latency in the pool's servers."
    )
    reason: str | None = Field(
        default=None, max_length=1024, description="Why the replicas and batch are what they are."
    )
    last_scale_time: str | None = Field(
        default=None, description="When the autoscaler last changed the replicas (RFC 3339)."
    )


class UnavailablePool(ApiModel):
    """A pool left out of this model's plan because its replicas made no progress."""

    pool: str = Field(max_length=253, description="HardwarePool name.")
    reason: str = Field(max_length=1024, description="Why, in the scheduler's or kubelet's words.")
    since: str = Field(description="When it was left out (RFC 3339).")
    retry_at: str = Field(description="When it is tried again at the latest (RFC 3339).")
    nodes: str = Field(
        max_length=128,
        description="The pool's node count, ready count, allocatable and generation when it "
        "was left out; a change brings the pool back before retryAt.",
    )


class Optimization(ApiModel):
    """One re-optimization: what caused it, what was done, how it ended."""

    time: str = Field(description="When it was decided (RFC 3339).")
    pool: str = Field(max_length=253, description="The pool it acted on.")
    cause: str = Field(
        max_length=64,
        description="What was detected: LatencyDrift, CapacityDrift, FidelityDrift, "
        "DataDrift or CanaryFailed.",
    )
    evidence: str = Field(max_length=2048, description="The detector's figures.")
    action: str = Field(max_length=512, description="What the operator did about it.")
    profile_round: Int | None = Field(
        default=None,
        ge=1,
        description="Latency or capacity drift: the pool's profile round the action asked "
        "for (profileRounds).",
    )
    variant: str | None = Field(
        default=None,
        max_length=253,
        description="Fidelity drift or a failed canary: the ModelVariant the action took "
        "out of the plan (driftedVariants).",
    )
    recalibration: str | None = Field(
        default=None,
        max_length=253,
        description="Fidelity or data drift of a statically quantized variant "
        "(drift.recalibrate): the name of the variant its recalibration on recent requests "
        "builds; once built, it replaces the old one in the plan (driftedVariants).",
    )
    outcome: str = Field(
        max_length=2048,
        description="Pending while the pool is re-profiled or the variant recalibrated; then "
        "the new plan against the old one, or why it failed (the current plan is kept).",
    )


class CanaryPhase(StrEnum):
    """Where a pool's canary rollout stands."""

    STARTING = "Starting"  # the new variant's servers are not ready yet
    PROGRESSING = "Progressing"  # a share of requests goes to them, step by step
    PROMOTING = "Promoting"  # every step passed: the pool's Deployment moves to it
    ROLLED_BACK = "RolledBack"  # an analysis failed failureLimit times


class CanaryRollout(ApiModel):
    """One pool's move to another variant by canary (OptimizationPolicy rollout.*)."""

    pool: str = Field(max_length=253, description="HardwarePool name.")
    from_variant: str = Field(
        max_length=253, description="The variant that served the pool before (dns name)."
    )
    to_variant: str = Field(max_length=253, description="The variant rolled out (plan name).")
    phase: CanaryPhase = Field(description="Starting, Progressing, Promoting or RolledBack.")
    step: Int = Field(
        default=-1,
        ge=-1,
        description="Index into rollout.stepWeightsPercent of the share in force (-1: none).",
    )
    weight_percent: Int = Field(
        default=0, ge=0, le=100, description="Share of requests the router sends to it now."
    )
    failures: Int = Field(default=0, ge=0, description="Failed analyses so far.")
    started: str = Field(description="When the rollout began (RFC 3339).")
    step_started: str = Field(description="When the current step (or phase) began (RFC 3339).")
    message: str = Field(
        default="",
        max_length=1024,
        description="The last analysis: the new variant's requests, errors, p99 and "
        "fidelity, and the verdict.",
    )


class RecModelStatus(ApiModel):
    """Observed state of a RecModel."""

    observed_generation: Int | None = Field(
        default=None, description="metadata.generation this status reflects."
    )
    content_hash: str | None = Field(
        default=None,
        description="Hash of the model source and compression settings the variants were "
        "built from; a change triggers a rebuild.",
    )
    replicas: Int | None = Field(default=None, description="Ready replicas over all pools.")
    plan: str | None = Field(
        default=None,
        max_length=4096,
        description="The last placement decision, explained (also posted as an Event when it "
        "changes).",
    )
    placements: list[PoolPlacement] = Field(
        default_factory=list, max_length=16, description="Placement per pool."
    )
    observed_p99_milliseconds: Int | None = Field(
        default=None, description="Live p99 latency in the servers, the worst pool."
    )
    observed_requests_per_second: Int | None = Field(
        default=None, description="Requests per second over all pools (live)."
    )
    endpoint: str | None = Field(
        default=None, description="URL of the router that serves this model."
    )
    profile_rounds: dict[str, Int] = Field(
        default_factory=dict,
        description="Per pool, how many times it was re-profiled on drift (absent: profiled "
        "once). Each round is a profile Job; the plan uses the newest finished one.",
    )
    drifted_variants: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="ModelVariants taken out of the plan because their live fidelity to "
        "the FP32 reference fell (fidelity drift) or their canary rollout failed; the plan "
        "picks among the others until the next build.",
    )
    corrupt_variants: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="ModelVariants whose artifact in the store no longer matches its "
        "manifest (sha256, size): servers would refuse them, so the plan picks among the "
        "others until the file verifies again.",
    )
    last_optimization: list[Optimization] = Field(
        default_factory=list,
        max_length=10,
        description="The latest re-optimizations (newest last): cause, evidence, action, outcome.",
    )
    unavailable_pools: list[UnavailablePool] = Field(
        default_factory=list,
        max_length=16,
        description="Pools left out of the plan because their replicas made no progress "
        "(OptimizationPolicy failover.*).",
    )
    rollouts: list[CanaryRollout] = Field(
        default_factory=list,
        max_length=16,
        description="Canary rollouts in progress, one per pool moving to another variant.",
    )
    conditions: list[Condition] = conditions_field()


class RecModel(Resource):
    """A trained recommendation model that recserve optimizes, places and serves."""

    KIND: ClassVar[str] = "RecModel"

    kind: str = Field(default="RecModel", description="RecModel.")
    spec: RecModelSpec = Field(description="Desired state.")
    status: RecModelStatus | None = Field(default=None, description="Observed state.")
