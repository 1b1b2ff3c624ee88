"""ModelVariant (namespaced, owned by a RecModel): one built, measured variant."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from recserve_operator.api.common import (
    SHA256_PATTERN,
    ApiModel,
    Condition,
    Int,
    ObjectRef,
    Precision,
    Resource,
    conditions_field,
)


class QuantizationMethod(StrEnum):
    """How weights were quantized."""

    NONE = "none"
    DYNAMIC = "dynamic"
    STATIC = "static"
    ROWWISE = "rowwise"


class StudentShape(ApiModel):
    """Shape of a distilled student model."""

    embedding_dim: Int = Field(ge=1, le=4096, description="Embedding dimension.")
    mlp_layers: list[Int] = Field(
        min_length=1, max_length=16, description="Widths of the top MLP's hidden layers."
    )


class Recipe(ApiModel):
    """How the variant was derived from the RecModel's source model."""

    precision: Precision = Field(default=Precision.FP32, description="Numeric precision.")
    quantization: QuantizationMethod = Field(
        default=QuantizationMethod.NONE, description="Quantization method."
    )
    pruning_ratio_basis_points: Int = Field(
        default=0, ge=0, le=9500, description="Share of MLP neurons removed (5000 = 50%)."
    )
    student: StudentShape | None = Field(
        default=None, description="Set when the variant is a distilled student."
    )


class Artifact(ApiModel):
    """The built ONNX file."""

    uri: str = Field(min_length=1, max_length=2048, description="Where the ONNX file is.")
    sha256: str = Field(pattern=SHA256_PATTERN, description="sha256 of the ONNX file.")
    size_bytes: Int = Field(ge=0, description="Size on disk in bytes.")


class ModelVariantSpec(ApiModel):
    """Desired state of a ModelVariant (written by the operator)."""

    model_ref: ObjectRef = Field(description="The RecModel this variant was built from.")
    recipe: Recipe = Field(description="How it was built.")
    artifact: Artifact = Field(description="The built file.")


class ProfilePoint(ApiModel):
    """Latency and throughput at one batch size."""

    batch_size: Int = Field(ge=1, description="Samples per call.")
    p50_microseconds: Int = Field(ge=0, description="Median latency of one call.")
    p99_microseconds: Int = Field(ge=0, description="99th percentile latency of one call.")
    samples_per_second: Int = Field(ge=0, description="Throughput at this batch size.")


class PoolProfile(ApiModel):
    """A variant's measured profile on one HardwarePool."""

    pool: str = Field(description="HardwarePool name.")
    execution_provider: str = Field(description="onnxruntime execution provider actually used.")
    fallback_reason: str | None = Field(
        default=None, description="Why the pool's preferred provider was not used, if it was not."
    )
    points: list[ProfilePoint] = Field(
        default_factory=list, max_length=32, description="One entry per batch size."
    )


class ModelVariantStatus(ApiModel):
    """Observed state of a ModelVariant."""

    observed_generation: Int | None = Field(
        default=None, description="metadata.generation this status reflects."
    )
    auc: float | None = Field(default=None, description="ROC AUC on the held-out split.")
    log_loss: float | None = Field(default=None, description="Log-loss on the held-out split.")
    accuracy_drop_basis_points: Int | None = Field(
        default=None, description="Relative AUC drop versus the source model (100 = 1%)."
    )
    within_budget: bool | None = Field(
        default=None, description="Whether the drop is within the policy's accuracy budget."
    )
    size_bytes: Int | None = Field(default=None, description="Artifact size in bytes.")
    profiles: list[PoolProfile] = Field(
        default_factory=list, max_length=16, description="Profile per HardwarePool."
    )
    selected: bool = Field(default=False, description="Whether any pool serves this variant.")
    selected_pools: list[str] = Field(
        default_factory=list, max_length=16, description="Pools that serve this variant."
    )
    conditions: list[Condition] = conditions_field()


class ModelVariant(Resource):
    """One compressed variant of a RecModel, with its accuracy and per-pool profile."""

    KIND: ClassVar[str] = "ModelVariant"

    kind: str = Field(default="ModelVariant", description="ModelVariant.")
    spec: ModelVariantSpec = Field(description="Desired state.")
    status: ModelVariantStatus | None = Field(default=None, description="Observed state.")
