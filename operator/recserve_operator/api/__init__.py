"""The recserve.io/v1alpha1 API: one pydantic model per custom resource.

Everything else (CRD YAML, the chart's CRDs, the API reference) is generated from
these types by :mod:`recserve_operator.api.crdgen`.
"""

from recserve_operator.api.common import (
    API_VERSION,
    GROUP,
    VERSION,
    Condition,
    ConditionStatus,
    HardwareType,
    ObjectRef,
    Precision,
)
from recserve_operator.api.hardwarepool import HardwarePool, HardwarePoolSpec, HardwarePoolStatus
from recserve_operator.api.modelvariant import ModelVariant, ModelVariantSpec, ModelVariantStatus
from recserve_operator.api.optimizationpolicy import (
    OptimizationPolicy,
    OptimizationPolicySpec,
    OptimizationPolicyStatus,
)
from recserve_operator.api.recmodel import RecModel, RecModelSpec, RecModelStatus
from recserve_operator.api.registry import KINDS, CrdKind, kind_for

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "CrdKind",
    "HardwarePool",
    "HardwarePoolSpec",
    "HardwarePoolStatus",
    "HardwareType",
    "ModelVariant",
    "ModelVariantSpec",
    "ModelVariantStatus",
    "ObjectRef",
    "OptimizationPolicy",
    "OptimizationPolicySpec",
    "OptimizationPolicyStatus",
    "Precision",
    "RecModel",
    "RecModelSpec",
    "RecModelStatus",
    "kind_for",
]

from recserve_operator.api.validation import (
    FieldError,
    ManifestError,
    parse_object,
    validate_files,
    validate_manifest,
)

__all__ += ["FieldError", "ManifestError", "parse_object", "validate_files", "validate_manifest"]
