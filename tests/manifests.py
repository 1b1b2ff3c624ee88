"""Example manifests and the bad-input cases shared by unit and integration tests.

Each bad case is a valid example with one mutation; `path` is the field the error must
name. The unit tests check the pydantic types; the integration tests send the same
documents to a real API server and check its answer names the same field.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def examples() -> dict[str, dict[str, Any]]:
    """Every example document by name."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["metadata"]["name"]] = doc
    return docs


def example(name: str) -> dict[str, Any]:
    """A deep copy of one example document."""
    return copy.deepcopy(examples()[name])


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _delete(doc: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        node = node[part]
    del node[leaf]


@dataclass(frozen=True)
class BadCase:
    """One invalid manifest: an example, a mutation and the field the error names."""

    id: str
    base: str
    mutate: Callable[[dict[str, Any]], None]
    path: str
    # False where only our client-side types catch it (the API server prunes unknown
    # fields instead of rejecting them, and accepts 25.0 as the integer 25).
    server_rejects: bool = True

    def document(self) -> dict[str, Any]:
        doc = example(self.base)
        self.mutate(doc)
        return doc


def setting(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: _set(doc, dotted, value)


def removing(dotted: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: _delete(doc, dotted)


BAD_CASES: list[BadCase] = [
    BadCase(
        "float-in-spec",
        "latency-first",
        setting("spec.objectives.p99LatencyTargetMilliseconds", 25.5),
        "spec.objectives.p99LatencyTargetMilliseconds",
    ),
    BadCase(
        "integral-float-in-spec",
        "latency-first",
        setting("spec.autoscaling.maxBatchSize", 512.0),
        "spec.autoscaling.maxBatchSize",
        server_rejects=False,
    ),
    BadCase(
        "negative-min-replicas",
        "latency-first",
        setting("spec.autoscaling.minReplicas", -1),
        "spec.autoscaling.minReplicas",
    ),
    BadCase(
        "negative-pool-max-replicas",
        "cpu-pool",
        setting("spec.maxReplicas", -3),
        "spec.maxReplicas",
    ),
    BadCase(
        "unknown-hardware-type",
        "gpu-pool",
        setting("spec.hardwareType", "tpu"),
        "spec.hardwareType",
    ),
    BadCase(
        "unknown-precision",
        "cpu-pool",
        setting("spec.supportedPrecisions", ["fp32", "int3"]),
        "spec.supportedPrecisions[1]",
    ),
    BadCase(
        "custom-eval-dataset-without-uri",
        "movielens-dlrm",
        setting("spec.evalDataset", {"name": "custom"}),
        "spec.evalDataset.uri",
    ),
    BadCase(
        "unknown-eval-dataset",
        "movielens-dlrm",
        setting("spec.evalDataset", {"name": "movielens-1m"}),
        "spec.evalDataset.name",
    ),
    BadCase(
        "eval-dataset-uri-without-custom",
        "movielens-dlrm",
        setting("spec.evalDataset", {"name": "movielens-100k", "uri": "s3://data/eval.parquet"}),
        "spec.evalDataset.uri",
    ),
    BadCase(
        "custom-eval-dataset-without-a-split",
        "movielens-dlrm",
        setting("spec.evalDataset", {"name": "custom", "uri": "/artifacts/data/eval.parquet"}),
        "spec.evalDataset.timeColumn",
    ),
    BadCase(
        "user-column-without-time-column",
        "movielens-dlrm",
        setting(
            "spec.evalDataset",
            {
                "name": "custom",
                "uri": "/artifacts/data/eval.parquet",
                "testUri": "/artifacts/data/test.parquet",
                "userColumn": "user_id",
            },
        ),
        "spec.evalDataset.userColumn",
    ),
    BadCase(
        "torchscript-source-without-feature-spec",
        "movielens-dlrm",
        setting("spec.source", {"uri": "/artifacts/models/m.pt", "format": "torchscript"}),
        "spec.source.featureSpecUri",
    ),
    BadCase(
        "demo-format-with-a-model-file",
        "movielens-dlrm",
        setting("spec.source", {"uri": "/artifacts/models/m.pt", "format": "demo"}),
        "spec.source.format",
    ),
    BadCase(
        "missing-policy-ref",
        "movielens-dlrm",
        removing("spec.policyRef"),
        "spec.policyRef",
    ),
    BadCase(
        "missing-node-selector",
        "cpu-pool",
        removing("spec.nodeSelector"),
        "spec.nodeSelector",
    ),
    BadCase(
        "empty-pool-refs",
        "movielens-dlrm",
        setting("spec.hardwarePoolRefs", []),
        "spec.hardwarePoolRefs",
    ),
    BadCase(
        "min-replicas-above-max",
        "latency-first",
        setting("spec.autoscaling.minReplicas", 9),
        "spec.autoscaling.maxReplicas",
    ),
    BadCase(
        "min-batch-above-max",
        "latency-first",
        setting("spec.autoscaling.minBatchSize", 1024),
        "spec.autoscaling.maxBatchSize",
    ),
    BadCase(
        "gpu-pool-without-accelerator",
        "gpu-pool",
        removing("spec.accelerator"),
        "spec.accelerator",
    ),
    BadCase(
        "malformed-sha256",
        "movielens-dlrm",
        setting("spec.source.sha256", "not-a-digest"),
        "spec.source.sha256",
    ),
    BadCase(
        "pruning-ratio-out-of-range",
        "latency-first",
        setting("spec.compression.pruningRatiosBasisPoints", [5000, 9900]),
        "spec.compression.pruningRatiosBasisPoints[1]",
    ),
    BadCase(
        "unknown-field",
        "movielens-dlrm",
        setting("spec.trafic", {"expectedRequestsPerSecond": 5}),
        "spec.trafic",
        server_rejects=False,
    ),
]
