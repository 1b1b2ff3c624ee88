"""Building blocks shared by every recserve.io kind.

Conventions (Kubernetes API conventions): no floats in spec (basis points,
milli-units, integer seconds named ``...Seconds``), references named ``...Ref``,
string enums, conditions in the standard shape.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "recserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Integers in spec are strict: 1.5 and 1.0 are both rejected, as is "1" and True.
Int = Annotated[int, Strict()]

# A DNS-1123 subdomain, the shape of most object names.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"


class ApiModel(BaseModel):
    """Base of every API object part: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One ``x-kubernetes-validations`` entry (checked by the API server at admission)."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def nested(model: type[BaseModel], description: str) -> Any:
    """A sub-object that defaults to its own defaults, in Python and in the CRD schema.

    The schema default is spelled out in full (not ``{}``): the API server validates
    defaults, CEL rules included, before it applies the nested fields' own defaults.
    """
    default = model().model_dump(by_alias=True, mode="json", exclude_none=True)
    return Field(
        default_factory=model, description=description, json_schema_extra={"default": default}
    )


class HardwareType(StrEnum):
    """Kind of accelerator a HardwarePool's nodes carry."""

    GPU = "gpu"
    CPU = "cpu"
    FPGA = "fpga"


class Precision(StrEnum):
    """Numeric precision of a model variant's weights and compute."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"


class ConditionStatus(StrEnum):
    """Status of a condition, as in metav1.Condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ObjectRef(ApiModel):
    """Reference to another object by name (same namespace for namespaced kinds)."""

    name: str = Field(
        min_length=1, max_length=253, pattern=NAME_PATTERN, description="Name of the object."
    )


class Condition(ApiModel):
    """A standard condition (metav1.Condition): one observed aspect of the object's state."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, e.g. Ready.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        max_length=1024,
        description="One-word CamelCase reason for the last transition (a named constant).",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details of the transition."
    )
    observed_generation: Int | None = Field(
        default=None,
        ge=0,
        description="metadata.generation the condition was computed from.",
    )
    last_transition_time: str | None = Field(
        default=None,
        description="When the status last changed (RFC 3339).",
        json_schema_extra={"format": "date-time"},
    )


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def conditions_field() -> Any:
    """The ``conditions`` list of a status: a list map keyed by type."""
    return Field(
        default_factory=list,
        max_length=32,
        description="Current state as standard conditions; `Ready` summarizes them.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )


class Resource(ApiModel):
    """Envelope shared by every kind: apiVersion, kind, metadata, spec and status."""

    KIND: ClassVar[str] = ""

    api_version: str = Field(default=API_VERSION, description="Always recserve.io/v1alpha1.")
    kind: str = Field(description="Kind of the object.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")

    @property
    def name(self) -> str:
        """metadata.name."""
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str | None:
        """metadata.namespace (None for cluster-scoped kinds)."""
        value = self.metadata.get("namespace")
        return None if value is None else str(value)

    @property
    def generation(self) -> int | None:
        """metadata.generation (None before the API server has stored the object)."""
        value = self.metadata.get("generation")
        return None if value is None else int(value)

    @field_validator("api_version")
    @classmethod
    def _known_api_version(cls, value: str) -> str:
        if value != API_VERSION:
            raise ValueError(f"must be {API_VERSION}, got {value!r}")
        return value

    @field_validator("kind")
    @classmethod
    def _matching_kind(cls, value: str) -> str:
        if cls.KIND and value != cls.KIND:
            raise ValueError(f"must be {cls.KIND}, got {value!r}")
        return value
