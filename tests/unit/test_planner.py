"""Placement planning from measured profiles."""

from __future__ import annotations

from dataclasses import replace

import pytest

from recserve_operator.api import HardwarePool, OptimizationPolicy, RecModel
from recserve_operator.api.optimizationpolicy import OptimizationPolicySpec
from recserve_operator.api.recmodel import Traffic
from recserve_operator.planner import (
    Objectives,
    Point,
    PoolCapacity,
    VariantProfile,
    best_option,
    plan,
    pool_choice,
)
from recserve_runtime.artifacts import ArtifactFile, FeatureSpec, Manifest, ProfileReport, Recipe
from tests.manifests import example

pytestmark = pytest.mark.unit


def points(us_per_sample: float, overhead_us: float = 80.0) -> list[Point]:
    """A simple latency model: fixed call overhead plus linear cost per sample."""
    out = []
    for batch in (1, 8, 64, 256, 1024):
        p50 = overhead_us + us_per_sample * batch
        out.append(Point(batch, p50, p50 * 1.3, batch / (p50 / 1e6)))
    return out


CPU = PoolCapacity("cpu-pool", "cpu", ("fp32", "int8", "int4"), 32, 4000)
GPU = PoolCapacity("gpu-pool", "gpu", ("fp32", "fp16", "int8"), 8, 250000, accelerator_replicas=4)


def variants() -> list[VariantProfile]:
    return [
        VariantProfile("fp32", "fp32", 0, 1000, {"cpu-pool": points(10), "gpu-pool": points(1)}),
        VariantProfile("int8", "int8", 5, 300, {"cpu-pool": points(4), "gpu-pool": points(0.8)}),
        VariantProfile(
            "student", "fp32", 400, 100, {"cpu-pool": points(1), "gpu-pool": points(0.5)}
        ),
    ]


def objectives(**over: int | float) -> Objectives:
    """The default policy's objectives for 200 req/s at a 150% peak, with changes."""
    base = Objectives.of(OptimizationPolicySpec(), Traffic(expected_requests_per_second=200))
    assert base.required_rps == 300.0 and base.p99_target_ms == 25
    return replace(base, **over)  # type: ignore[arg-type]


def test_batch_is_the_largest_that_meets_the_target_with_queueing() -> None:
    option = best_option(variants()[0], CPU, objectives(p99_target_ms=10))
    assert option is not None
    # 2 x p99 must fit in 10 ms: batch 256 (p99 3.4 ms -> 6.8 ms) fits, 1024 does not
    assert option.batch_size == 256
    assert option.p99_ms <= 10
    assert best_option(variants()[0], CPU, objectives(p99_target_ms=0)) is None


def test_variant_over_budget_is_never_chosen_even_if_fastest() -> None:
    choice = pool_choice(variants(), CPU, objectives())
    assert choice is not None and choice.variant == "int8"
    generous = pool_choice(variants(), CPU, objectives(accuracy_budget_bp=500))
    assert generous is not None and generous.variant == "student"


def test_unsupported_precision_is_not_placed_on_a_pool() -> None:
    fpga = PoolCapacity("fpga-pool", "fpga", ("int8",), 4, 120000)
    only_fp32 = [v for v in variants() if v.precision == "fp32"]
    for v in only_fp32:
        v.profiles["fpga-pool"] = points(0.1)
    assert pool_choice(only_fp32, fpga, objectives(accuracy_budget_bp=10000)) is None


def test_cheapest_pool_first_when_cost_dominates() -> None:
    result = plan(variants(), [GPU, CPU], objectives(cost_weight_percent=100))
    assert result.feasible, result.message
    assert result.placements[0].pool == "cpu-pool"
    assert result.capacity_rps >= result.required_rps
    # fewest replicas that carry the load
    first = result.placements[0]
    assert (first.replicas - 1) * first.rps_per_replica < result.required_rps


def test_fastest_pool_first_when_latency_dominates() -> None:
    result = plan(variants(), [CPU, GPU], objectives(cost_weight_percent=0))
    assert result.placements[0].pool == "gpu-pool"


def test_spills_to_a_second_pool_when_the_first_is_full() -> None:
    small_cpu = PoolCapacity("cpu-pool", "cpu", ("int8",), 1, 4000)
    result = plan(
        variants(), [small_cpu, GPU], objectives(required_rps=10000, cost_weight_percent=100)
    )
    assert [p.pool for p in result.placements] == ["cpu-pool", "gpu-pool"]
    assert result.placements[0].replicas == 1


def test_infeasible_policy_explains_why() -> None:
    none_within = plan(variants(), [CPU], objectives(accuracy_budget_bp=-1))
    assert not none_within.feasible and none_within.reason == "NoVariantWithinBudget"
    too_strict = plan(variants(), [CPU, GPU], objectives(p99_target_ms=0))
    assert not too_strict.feasible and too_strict.reason == "NoFeasiblePlacement"
    assert "within [1, 1024] rows" in too_strict.message
    short = plan(
        variants(),
        [PoolCapacity("cpu-pool", "cpu", ("int8",), 1, 4000)],
        objectives(required_rps=1e6),
    )
    assert not short.feasible and short.reason == "InsufficientCapacity"
    assert short.placements and "required" in short.message


def test_batches_smaller_than_one_request_are_not_planned() -> None:
    option = best_option(variants()[2], CPU, objectives(candidates_per_request=64))
    assert option is not None and option.batch_size >= 64
    tiny = VariantProfile("t", "fp32", 0, 1, {"cpu-pool": points(1)[:2]})  # batches 1 and 8
    fallback = best_option(tiny, CPU, objectives(candidates_per_request=64))
    assert fallback is not None and fallback.batch_size == 8


def test_objectives_come_from_the_typed_policy_and_traffic() -> None:
    policy = OptimizationPolicy.model_validate(example("latency-first")).spec
    traffic = RecModel.model_validate(example("movielens-dlrm")).spec.traffic
    obj = Objectives.of(policy, traffic)
    assert (obj.p99_target_ms, obj.accuracy_budget_bp, obj.cost_weight_percent) == (25, 100, 30)
    assert obj.required_rps == 300.0  # 200 req/s at a 150% peak (floor 50)
    assert (obj.max_replicas, obj.max_batch_size, obj.candidates_per_request) == (6, 512, 64)
    floor = policy.model_copy(
        update={
            "objectives": policy.objectives.model_copy(
                update={"throughput_floor_requests_per_second": 1000}
            )
        }
    )
    assert Objectives.of(floor, traffic).required_rps == 1000.0


def test_pool_capacity_from_the_typed_pool_and_its_profile() -> None:
    doc = example("gpu-pool")
    doc["status"] = {"allocatable": 20}
    report = ProfileReport(hardware="gpu", fallback_reason="no CUDA; measured on CPU")
    cap = PoolCapacity.of(HardwarePool.model_validate(doc), report)
    assert (cap.name, cap.hardware, cap.precisions) == ("gpu-pool", "gpu", ("fp32", "fp16", "int8"))
    assert (cap.max_replicas, cap.cost_per_replica_hour_millicents) == (8, 250000)
    assert cap.accelerator_replicas == 20 and cap.fallback_reason == "no CUDA; measured on CPU"
    cpu = PoolCapacity.of(HardwarePool.model_validate(example("cpu-pool")))
    assert cpu.accelerator_replicas is None and cpu.fallback_reason is None


def test_variant_profile_from_the_manifest_and_profile_reports() -> None:
    manifest = Manifest(
        name="int8-dynamic",
        recipe=Recipe(precision="int8", quantization="dynamic"),
        artifact=ArtifactFile(sha256="0" * 64, size_bytes=300),
        inputs=[],
        outputs=[],
        feature_spec=FeatureSpec(sparse=[]),
        metrics={"aucDropRelPct": 0.25},
    )
    report = ProfileReport.model_validate(
        {
            "hardware": "cpu",
            "variants": {
                "abc": {
                    "name": "int8-dynamic",
                    "hardware": "cpu",
                    "executionProvider": "CPUExecutionProvider",
                    "threads": 1,
                    "points": [
                        {"batchSize": 64, "p50Us": 100.0, "p99Us": 150.0, "samplesPerSecond": 6e5}
                    ],
                }
            },
        }
    )
    v = VariantProfile.of(
        "abc", manifest, {"cpu-pool": report, "gpu-pool": ProfileReport(hardware="gpu")}
    )
    assert (v.name, v.precision, v.accuracy_drop_bp, v.size_bytes) == (
        "int8-dynamic",
        "int8",
        25,
        300,
    )
    assert v.profiles == {"cpu-pool": [Point(64, 100.0, 150.0, 6e5)]}


def test_fallback_execution_provider_is_said_in_the_plan() -> None:
    slow = replace(GPU, fallback_reason="CUDA missing; measured on CPU")
    result = plan(variants(), [CPU, slow], objectives())
    assert "gpu-pool was profiled on a fallback execution provider: CUDA missing" in (
        result.message
    )
    none = plan(variants(), [CPU, slow], objectives(p99_target_ms=0))
    assert not none.feasible and "fallback execution provider" in none.message
