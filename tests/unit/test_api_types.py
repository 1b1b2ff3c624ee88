"""The API types accept the examples and reject bad input with the field path."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from recserve_operator.api import (
    HardwarePool,
    HardwareType,
    ManifestError,
    OptimizationPolicy,
    RecModel,
    validate_manifest,
)
from tests.manifests import BAD_CASES, BadCase, example, examples

pytestmark = pytest.mark.unit


def test_every_example_is_valid() -> None:
    kinds = sorted(validate_manifest(doc).kind for doc in examples().values())
    assert kinds == ["HardwarePool"] * 3 + ["OptimizationPolicy", "RecModel"]


def test_the_bring_your_own_example_is_valid() -> None:
    import yaml

    from tests.manifests import EXAMPLES

    doc = yaml.safe_load((EXAMPLES / "bring-your-own" / "recmodel.yaml").read_text())
    model = validate_manifest(doc)
    assert model.kind == "RecModel"
    assert model.spec.source.format == "torchscript"  # type: ignore[attr-defined]
    assert model.spec.eval_dataset.time_column == "ts"  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_manifest_is_rejected_with_field_path(case: BadCase) -> None:
    with pytest.raises(ManifestError) as caught:
        validate_manifest(case.document())
    assert case.path in caught.value.paths, str(caught.value)
    assert case.path in str(caught.value)


def test_defaults_fill_a_minimal_policy() -> None:
    policy = validate_manifest(
        {
            "apiVersion": "recserve.io/v1alpha1",
            "kind": "OptimizationPolicy",
            "metadata": {"name": "defaults"},
            "spec": {},
        }
    )
    assert isinstance(policy, OptimizationPolicy)
    assert policy.spec.objectives.p99_latency_target_milliseconds == 25
    assert policy.spec.autoscaling.min_replicas <= policy.spec.autoscaling.max_replicas
    assert policy.spec.compression.pruning_ratios_basis_points == [5000]


def test_wire_form_round_trips_in_camel_case() -> None:
    pool = validate_manifest(example("gpu-pool"))
    assert isinstance(pool, HardwarePool)
    assert pool.spec.hardware_type is HardwareType.GPU
    wire = pool.to_wire()
    assert wire["spec"]["nodeSelector"] == {"recserve.io/hardware": "gpu"}
    assert wire["spec"]["accelerator"]["amountPerReplica"] == 1
    assert HardwarePool.model_validate(wire) == pool


def test_cpu_pool_needs_no_accelerator() -> None:
    pool = validate_manifest(example("cpu-pool"))
    assert isinstance(pool, HardwarePool)
    assert pool.spec.accelerator is None


def test_kind_and_api_version_are_checked() -> None:
    doc = example("movielens-dlrm")
    doc["apiVersion"] = "recserve.io/v1"
    with pytest.raises(ManifestError) as caught:
        validate_manifest(doc)
    assert caught.value.paths == ["apiVersion"]
    doc = example("movielens-dlrm")
    doc["kind"] = "Recmodel"
    with pytest.raises(ManifestError) as caught:
        validate_manifest(doc)
    assert caught.value.paths == ["kind"]
    with pytest.raises(ValidationError, match="must be RecModel"):
        RecModel.model_validate({**example("movielens-dlrm"), "kind": "HardwarePool"})


def test_every_problem_is_reported_at_once() -> None:
    doc = example("latency-first")
    doc["spec"]["objectives"]["costWeightPercent"] = 101
    doc["spec"]["drift"]["cooldownSeconds"] = -5
    with pytest.raises(ManifestError) as caught:
        validate_manifest(doc)
    assert set(caught.value.paths) == {
        "spec.objectives.costWeightPercent",
        "spec.drift.cooldownSeconds",
    }


# --- a corpus of hostile manifests: every one is a typed object or a ManifestError ------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a document (mappings and lists), the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(doc) if isinstance(doc, list) else dict(doc)
    copy[path[0]] = _replaced(doc[path[0]], path[1:], value)
    return copy


def _deep(depth: int) -> Any:
    node: Any = "leaf"
    for _ in range(depth):
        node = {"k": node}
    return node


HOSTILE = (
    st.sampled_from([None, "", "x" * 100_000, "é😀\u202e\x00", 2**63, -(2**63) - 1, -1, 0,
                     10**30, 1.5, float("inf"), True, [], {}, ["a"] * 1000, "not-an-enum"])
    | st.text(max_size=300)
    | st.integers()
)  # fmt: skip
DOCS = st.sampled_from(sorted(examples()))


@settings(
    max_examples=int(os.environ.get("RECSERVE_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=DOCS, pick=st.integers(min_value=0), value=HOSTILE, depth=st.none() | st.integers(1, 3000)
)
@pytest.mark.fault(
    "hostile custom resources (huge strings, deep maps, wrong enums, unicode, integers past "
    "every limit; hypothesis)",
    expect="a typed object or an error naming the fields",
)
def test_fuzz_hostile_manifests_are_typed_or_refused_by_field(
    name: str, pick: int, value: Any, depth: int | None
) -> None:
    doc = example(name)
    paths = _paths(doc)
    path = paths[pick % len(paths)]
    # a deep map is built here, not drawn: hypothesis could not print a failing one
    hostile = _deep(depth) if depth is not None else value
    try:
        validate_manifest(_replaced(doc, path, hostile))
    except ManifestError as exc:
        assert exc.errors and all(e.path for e in exc.errors), str(exc)
