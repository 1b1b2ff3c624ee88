"""The variant artifact contract shared by the builder, the profiler and the server.

A variant is a folder named by the first 16 hex digits of its ONNX file's sha256
(content-addressed), holding ``model.onnx`` and ``manifest.json``::

    <store>/<sha256[:16]>/model.onnx
    <store>/<sha256[:16]>/manifest.json

The manifest is written last, so a folder without one is an unfinished build and is
never loaded. Stores are local paths or any fsspec URI.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
SCHEMA_VERSION = 1


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Side(StrEnum):
    """Where a feature's value comes from in a ranking request."""

    USER = "user"  # same for every candidate of a request (user context)
    ITEM = "item"  # differs per candidate


class TensorSpec(_Wire):
    """One model input or output: name, dtype, shape (-1 for the batch axis)."""

    name: str
    dtype: str = Field(description="numpy dtype name: int64, float32, float16 ...")
    shape: list[int]


class SparseFeature(_Wire):
    """A categorical feature: one column of the int64 sparse input."""

    name: str
    vocab_size: int = Field(ge=1, description="ids must be in [0, vocab_size)")
    side: Side


class DenseFeature(_Wire):
    """A numeric feature: ``width`` columns of the float32 dense input."""

    name: str
    width: int = Field(default=1, ge=1)
    side: Side


class FeatureSpec(_Wire):
    """How request features map onto the model's input tensors (in column order)."""

    sparse_input: str = "sparse_ids"
    dense_input: str = "dense"
    sparse: list[SparseFeature]
    dense: list[DenseFeature] = Field(default_factory=list)


class Recipe(_Wire):
    """How the variant was derived (mirrors ModelVariant.spec.recipe)."""

    precision: str = "fp32"
    quantization: str = "none"
    pruning_ratio_basis_points: int = 0
    student: dict[str, Any] | None = None


class ArtifactFile(_Wire):
    file: str = MODEL_FILE
    sha256: str
    size_bytes: int


class ProfilePoint(_Wire):
    batch_size: int
    p50_us: float
    p99_us: float
    samples_per_second: float


class Profile(_Wire):
    hardware: str
    execution_provider: str
    fallback_reason: str | None = None
    threads: int
    points: list[ProfilePoint] = Field(default_factory=list)


class Manifest(_Wire):
    """manifest.json of one variant."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(description="Variant name, e.g. int8-dynamic, student-w256-d1-int8")
    model: dict[str, Any] = Field(
        default_factory=dict,
        description="Source model facts: name, arch, dataset, synthetic (bool)",
    )
    recipe: Recipe = Field(default_factory=Recipe)
    artifact: ArtifactFile
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    feature_spec: FeatureSpec
    metrics: dict[str, float] = Field(
        default_factory=dict, description="auc, logLoss, aucDropRelPct ... on held-out data"
    )
    profile: Profile | None = None


class IntegrityError(RuntimeError):
    """The model file does not match the manifest's sha256 or size."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(variant_dir: Path) -> Manifest:
    """Read and parse a variant folder's manifest.json."""
    return Manifest.model_validate_json((variant_dir / MANIFEST).read_text())


def verify(variant_dir: Path, manifest: Manifest | None = None) -> Path:
    """Check the model file against the manifest; returns its path or raises IntegrityError."""
    manifest = manifest or load_manifest(variant_dir)
    path = variant_dir / manifest.artifact.file
    if not path.exists():
        raise IntegrityError(f"{path} is missing")
    size = path.stat().st_size
    if size != manifest.artifact.size_bytes:
        raise IntegrityError(
            f"{path}: size {size} bytes, manifest says {manifest.artifact.size_bytes}"
        )
    actual = sha256_file(path)
    if actual != manifest.artifact.sha256:
        raise IntegrityError(f"{path}: sha256 {actual}, manifest says {manifest.artifact.sha256}")
    return path


def write_manifest(variant_dir: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file + rename): it marks the variant complete."""
    target = variant_dir / MANIFEST
    tmp = variant_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(by_alias=True, mode="json"), indent=2))
    tmp.replace(target)
    return target
