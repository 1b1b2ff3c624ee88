"""Placement planning from measured profiles."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from recserve_operator.api import HardwarePool, OptimizationPolicy, RecModel
from recserve_operator.api.optimizationpolicy import OptimizationPolicySpec
from recserve_operator.api.recmodel import Traffic
from recserve_operator.planner import (
    UTILIZATION,
    Objectives,
    Point,
    PoolCapacity,
    ServingCost,
    VariantProfile,
    best_option,
    plan,
    pool_choice,
)
from recserve_runtime.artifacts import (
    ArtifactFile,
    FeatureSpec,
    Manifest,
    ProfileReport,
    Recipe,
    ServingOverhead,
    ServingPoint,
)
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


def typed(objectives: dict[str, int] | None = None, **traffic: int) -> Objectives:
    """The objectives of a policy with these ``objectives`` for 200 req/s (and ``traffic``)."""
    policy = OptimizationPolicySpec.model_validate({"objectives": objectives or {}})
    load = Traffic.model_validate({"expectedRequestsPerSecond": 200, **traffic})
    return Objectives.of(policy, load)


def typed_pool(name: str, **spec: Any) -> PoolCapacity:
    """An example HardwarePool with ``spec`` changes, as the planner sees it."""
    doc = example(name)
    doc["spec"].update(spec)
    return PoolCapacity.of(HardwarePool.model_validate(doc))


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


# -- the served path ----------------------------------------------------------------------

SERVED = ServingCost(per_request_us=300.0, per_row_us=8.0, per_batch_us=200.0)


def test_capacity_counts_the_served_path_per_request_row_and_batch() -> None:
    student = variants()[2]  # 1 us per sample + 80 us per call
    served_pool = replace(CPU, serving=SERVED)
    obj = objectives(accuracy_budget_bp=500, candidates_per_request=64, p99_target_ms=100)
    bare = best_option(student, CPU, obj)
    served = best_option(student, served_pool, obj)
    assert bare is not None and served is not None
    assert served.batch_size == bare.batch_size == 1024
    point = next(p for p in student.profiles["cpu-pool"] if p.batch_size == served.batch_size)
    k = served.batch_size / 64
    compute_us = point.p50_us / k  # the profile's calls: 80 us + 1 us per sample
    overhead_us = 300 + 8 * 64 + 200 / k
    assert served.capacity_rps == pytest.approx(1e6 / (compute_us + overhead_us))
    assert served.rps_per_replica == pytest.approx(UTILIZATION * served.capacity_rps)
    assert bare.capacity_rps == pytest.approx(1e6 / compute_us)
    assert bare.capacity_rps > 5 * served.capacity_rps  # HTTP dominates a small model
    # the latency bound counts the HTTP side of the requests of a cycle
    cycle_us = point.p99_us + k * overhead_us
    assert served.p99_ms == pytest.approx(2 * cycle_us / 1000)


def test_one_request_per_batch_pays_the_whole_batch_cost() -> None:
    student = variants()[2]
    pool = replace(CPU, serving=SERVED)
    obj = objectives(accuracy_budget_bp=500, candidates_per_request=256, max_batch_size=256)
    option = best_option(student, pool, obj)
    assert option is not None and option.batch_size == 256
    point = student.profiles["cpu-pool"][3]
    assert option.capacity_rps == pytest.approx(1e6 / (point.p50_us + 300 + 8 * 256 + 200))


def test_plan_says_the_capacity_it_used_and_when_it_counts_compute_only() -> None:
    obj = objectives(accuracy_budget_bp=500)
    served = plan(variants(), [replace(CPU, serving=SERVED)], obj)
    pp = served.placements[0]
    assert f"~{pp.rps_per_replica:.0f} req/s each" in served.message
    assert f"of the {pp.capacity_rps:.0f} a replica serves" in served.message
    assert "compute only" not in served.message
    bare = plan(variants(), [CPU, replace(GPU, serving=SERVED)], obj)
    assert (
        "cpu-pool: the profile has no served-path calibration, so capacity counts model "
        "compute only"
    ) in bare.message


def test_pool_capacity_takes_the_serving_calibration_from_its_profile() -> None:
    report = ProfileReport(
        hardware="cpu",
        serving=ServingOverhead(
            per_request_microseconds=310.0,
            per_row_microseconds=8.5,
            per_batch_microseconds=150.0,
            variant="student",
            threads=1,
            concurrency=8,
        ),
    )
    cap = PoolCapacity.of(HardwarePool.model_validate(example("cpu-pool")), report)
    assert cap.serving == ServingCost(310.0, 8.5, 150.0)
    old = ProfileReport.model_validate({"hardware": "cpu", "variants": {}})  # before --serving
    assert PoolCapacity.of(HardwarePool.model_validate(example("cpu-pool")), old).serving is None


def test_a_server_that_batches_fewer_requests_than_its_ceiling_is_planned_so() -> None:
    # the calibration saw 3 requests per call at 8 candidates and 1.5 at 256 (HTTP slower
    # than the model): at 64 candidates, 2 per call (linear in log candidates), not 256 / 64
    served = replace(SERVED, batching=((8, 3.0), (256, 1.5)))
    assert served.requests_per_batch(64) == pytest.approx(2.1)
    assert served.requests_per_batch(4) == 3.0 and served.requests_per_batch(1000) == 1.5
    student = variants()[2]  # 80 us per call + 1 us per sample
    obj = objectives(accuracy_budget_bp=500, candidates_per_request=64, max_batch_size=256)
    option = best_option(student, replace(CPU, serving=served), obj)
    assert option is not None and option.batch_size == 256
    k = 2.1
    compute_us = (80 + 1.0 * k * 64) / k  # the profile's call of k x 64 rows, shared
    overhead_us = 300 + 8 * 64 + 200 / k
    assert option.capacity_rps == pytest.approx(1e6 / (compute_us + overhead_us), rel=1e-3)
    # a server that fills its batches is planned at its ceiling
    full = replace(SERVED, batching=((8, 40.0), (256, 6.0)))
    filled = best_option(student, replace(CPU, serving=full), obj)
    point = student.profiles["cpu-pool"][3]
    assert filled is not None
    assert filled.capacity_rps == pytest.approx(1e6 / (point.p50_us / 4 + 300 + 8 * 64 + 50))


def test_serving_cost_takes_the_batching_the_calibration_saw() -> None:
    points = [
        ServingPoint(
            candidates=r,
            max_batch_rows=ceiling,
            measured_requests_per_second=1.0,
            server_cores=1.0,
            server_microseconds_per_request=1.0,
            mean_batch_rows=r * k,
            requests_per_batch=k,
            compute_microseconds_per_request=0.0,
            overhead_microseconds_per_request=1.0,
        )
        for r, ceiling, k in ((8, 8, 1.0), (8, 4096, 3.0), (256, 256, 1.0), (256, 4096, 1.5))
    ]
    serving = ServingOverhead(
        per_request_microseconds=300.0,
        per_row_microseconds=8.0,
        per_batch_microseconds=200.0,
        variant="student",
        threads=1,
        concurrency=8,
        points=points,
    )
    assert ServingCost.of(serving) == replace(SERVED, batching=((8, 3.0), (256, 1.5)))


# -- each policy, traffic and pool field changes the plan -------------------------------


def test_p99_target_in_the_policy_bounds_the_planned_batch() -> None:
    fp32 = variants()[0]  # batch 1024: 2 x 13.4 ms p99
    strict = best_option(fp32, CPU, typed({"p99LatencyTargetMilliseconds": 10}))
    relaxed = best_option(fp32, CPU, typed({"p99LatencyTargetMilliseconds": 30}))
    assert strict is not None and relaxed is not None
    assert (strict.batch_size, relaxed.batch_size) == (256, 1024)


def test_accuracy_budget_in_the_policy_picks_the_variant() -> None:
    tight = pool_choice(variants(), CPU, typed({"accuracyBudgetBasisPoints": 100}))
    generous = pool_choice(variants(), CPU, typed({"accuracyBudgetBasisPoints": 500}))
    assert tight is not None and generous is not None
    assert (tight.variant, generous.variant) == ("int8", "student")


def test_cost_weight_in_the_policy_orders_the_pools() -> None:
    cheapest = plan(variants(), [GPU, CPU], typed({"costWeightPercent": 100}))
    fastest = plan(variants(), [CPU, GPU], typed({"costWeightPercent": 0}))
    assert (cheapest.placements[0].pool, fastest.placements[0].pool) == ("cpu-pool", "gpu-pool")


def test_peak_factor_scales_the_planned_load() -> None:
    usual, tripled = typed(peakFactorPercent=100), typed(peakFactorPercent=300)
    assert (usual.required_rps, tripled.required_rps) == (200.0, 600.0)
    slow = [replace(v, profiles={"cpu-pool": points(100)}) for v in variants()]
    replicas = [plan(slow, [CPU], o).placements[0].replicas for o in (usual, tripled)]
    assert replicas[0] < replicas[1]


def test_pool_cost_decides_which_pool_is_filled_first() -> None:
    by_cost = typed({"costWeightPercent": 100})
    cpu, gpu = typed_pool("cpu-pool"), typed_pool("gpu-pool")
    assert plan(variants(), [gpu, cpu], by_cost).placements[0].pool == "cpu-pool"
    dear = typed_pool("cpu-pool", costPerReplicaHourMillicents=10**9)
    assert plan(variants(), [dear, gpu], by_cost).placements[0].pool == "gpu-pool"


def test_pool_max_replicas_caps_the_pool_and_spills_to_the_next() -> None:
    busy = typed({"costWeightPercent": 100}, expectedRequestsPerSecond=20000)
    gpu = typed_pool("gpu-pool")
    for ceiling in (1, 4):
        result = plan(variants(), [typed_pool("cpu-pool", maxReplicas=ceiling), gpu], busy)
        first, second = result.placements[:2]
        assert (first.pool, first.replicas, second.pool) == ("cpu-pool", ceiling, "gpu-pool")


def test_pool_supported_precisions_pick_the_variant_served_there() -> None:
    usual, fp32_only = typed_pool("cpu-pool"), typed_pool("cpu-pool", supportedPrecisions=["fp32"])
    int8, fp32 = (pool_choice(variants(), pool, typed()) for pool in (usual, fp32_only))
    assert int8 is not None and fp32 is not None
    assert (int8.variant, fp32.variant) == ("int8", "fp32")


def test_spare_replicas_in_the_policy_keep_the_load_carried_with_that_many_gone() -> None:
    slow = [replace(v, profiles={"cpu-pool": points(100)}) for v in variants()]

    def placed(rps: int, spare: int) -> Any:
        scaling = {"spareReplicas": spare, "maxReplicas": 50}
        policy = OptimizationPolicySpec.model_validate({"autoscaling": scaling})
        load = Traffic.model_validate({"expectedRequestsPerSecond": rps, "peakFactorPercent": 100})
        [pp] = plan(slow, [CPU], Objectives.of(policy, load)).placements
        return pp

    small = placed(200, 0)
    # at 70% each, one replica fewer than planned is over full capacity: no spare
    assert (small.replicas - 1) * small.capacity_rps < 200
    spared = placed(200, 1)
    assert spared.replicas == small.replicas + 1
    assert (spared.replicas - 1) * spared.capacity_rps >= 200  # one may fail
    assert placed(200, 2).replicas == small.replicas + 2
    # many replicas at 70% already carry the load with one gone: nothing added
    many = placed(2000, 0)
    assert (many.replicas - 1) * many.capacity_rps >= 2000
    assert placed(2000, 1).replicas == many.replicas
