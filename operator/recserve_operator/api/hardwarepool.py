"""HardwarePool (cluster-scoped): a set of nodes of one hardware type."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from recserve_operator.api.common import (
    ApiModel,
    Condition,
    HardwareType,
    Int,
    Precision,
    Resource,
    cel,
    conditions_field,
    nested,
)

# A label or extended-resource key: optional DNS prefix, then a name.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EQUAL = "Equal"
    EXISTS = "Exists"


class TaintEffect(StrEnum):
    """Effect of the taint a toleration tolerates (empty: all effects)."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A toleration copied onto every inference pod placed in the pool."""

    key: str = Field(
        default="", max_length=316, description="Taint key to tolerate; empty with Exists: all."
    )
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL, description="Equal (key and value) or Exists (key)."
    )
    value: str = Field(default="", max_length=63, description="Taint value for Equal.")
    effect: TaintEffect | None = Field(
        default=None, description="Taint effect to tolerate; unset tolerates every effect."
    )


class AcceleratorResource(ApiModel):
    """The extended resource each replica asks for, e.g. nvidia.com/gpu: 1."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=LABEL_KEY_PATTERN,
        description="Extended resource name advertised by the nodes' device plugin "
        "(e.g. nvidia.com/gpu, xilinx.com/fpga).",
    )
    amount_per_replica: Int = Field(
        default=1, ge=1, le=64, description="Units of the resource per inference replica."
    )


class ReplicaResources(ApiModel):
    """CPU and memory requested (and limited to) per inference replica."""

    cpu_millis: Int = Field(
        default=1000, ge=10, le=256000, description="CPU per replica in millicores."
    )
    memory_mebibytes: Int = Field(
        default=1024, ge=64, le=1048576, description="Memory per replica in MiB."
    )


class HardwarePoolSpec(ApiModel):
    """Desired state of a HardwarePool."""

    hardware_type: HardwareType = Field(
        description="What the nodes carry: gpu, cpu or fpga. It picks the onnxruntime "
        "execution provider the pool's profile and servers use (cpu: CPU, gpu: TensorRT "
        "then CUDA, fpga: Vitis AI); a missing provider falls back to CPU, said in the "
        "plan and the Placed condition."
    )
    node_selector: dict[str, str] = Field(
        min_length=1,
        max_length=16,
        description="Node labels that select the pool's nodes; copied into each pod's "
        "nodeSelector.",
    )
    accelerator: AcceleratorResource | None = Field(
        default=None,
        validate_default=True,
        description="Extended resource per replica. Required for gpu and fpga pools; "
        "cpu pools leave it unset.",
    )
    resources: ReplicaResources = nested(ReplicaResources, "CPU and memory per replica.")
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=16,
        description="Tolerations for the pool's node taints, copied onto its pods.",
    )
    cost_per_replica_hour_millicents: Int = Field(
        default=0,
        ge=0,
        le=10**12,
        description="Cost of one replica for one hour in thousandths of a US cent "
        "(100000 = 1 USD); the planner minimizes total cost.",
    )
    max_replicas: Int = Field(
        default=16, ge=0, le=10000, description="Ceiling on replicas placed in this pool."
    )
    supported_precisions: list[Precision] = Field(
        default_factory=lambda: [Precision.FP32, Precision.INT8],
        min_length=1,
        max_length=4,
        description="Precisions the hardware runs efficiently; variants of other precisions "
        "are not placed here.",
        json_schema_extra={"default": ["fp32", "int8"]},
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.hardwareType == 'cpu' || has(self.accelerator)",
                    "gpu and fpga pools must name their accelerator resource",
                    ".accelerator",
                ),
            ]
        }
    )

    @field_validator("supported_precisions")
    @classmethod
    def _unique_precisions(cls, value: list[Precision]) -> list[Precision]:
        if len(set(value)) != len(value):
            raise ValueError("precisions must not repeat")
        return value

    @field_validator("accelerator")
    @classmethod
    def _accelerator_for_gpu_and_fpga(
        cls, value: AcceleratorResource | None, info: ValidationInfo
    ) -> AcceleratorResource | None:
        hardware = info.data.get("hardware_type")
        if value is None and hardware in (HardwareType.GPU, HardwareType.FPGA):
            raise ValueError(f"required for {hardware} pools (e.g. nvidia.com/gpu: 1)")
        return value


class HardwarePoolStatus(ApiModel):
    """Observed state of a HardwarePool."""

    observed_generation: Int | None = Field(
        default=None, description="metadata.generation this status reflects."
    )
    node_count: Int | None = Field(default=None, description="Nodes matching the selector.")
    ready_node_count: Int | None = Field(
        default=None,
        description="Matching nodes that are Ready, not cordoned, and whose taints the "
        "pool's tolerations tolerate (0: the pool takes no replicas; its share fails over).",
    )
    allocatable: Int | None = Field(
        default=None,
        description="Sum of the accelerator resource allocatable on the matching nodes "
        "(cpu pools: millicores).",
    )
    used: Int | None = Field(
        default=None, description="Part of `allocatable` requested by scheduled pods."
    )
    conditions: list[Condition] = conditions_field()


class HardwarePool(Resource):
    """A set of nodes of one hardware type that inference replicas may be placed on."""

    KIND: ClassVar[str] = "HardwarePool"

    kind: str = Field(default="HardwarePool", description="HardwarePool.")
    spec: HardwarePoolSpec = Field(description="Desired state.")
    status: HardwarePoolStatus | None = Field(default=None, description="Observed state.")
