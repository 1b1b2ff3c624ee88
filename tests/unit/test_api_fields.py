"""Every API field has a unit test that proves it changes what is built, planned or
served, or the field is gone.

The walk lists each leaf of the RecModel, OptimizationPolicy and HardwarePool spec types
(through nested types, by wire name); EFFECT_TESTS names, for each, the test that sets
the field to two values (or set and unset) and sees the build Job, the plan, the pods or
an autoscaling or drift decision differ. A new field fails here until it has one.
"""

from __future__ import annotations

import ast
import typing
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from recserve_operator.api import HardwarePool, OptimizationPolicy, RecModel

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
KINDS: tuple[type[BaseModel], ...] = (RecModel, OptimizationPolicy, HardwarePool)

CHILDREN = "tests/unit/test_children.py"
PLANNER = "tests/unit/test_planner.py"
RECMODEL = "tests/unit/test_reconcilers_recmodel.py"
SCALING = "tests/unit/test_reconcilers_scaling.py"
CANARY = "tests/unit/test_canary.py"
RECALIBRATION = "tests/unit/test_reconcilers_recalibration.py"

EFFECT_TESTS: dict[str, str] = {
    # RecModel: the build Job's flags, the references followed, the planned load
    "RecModel.spec.source.uri": f"{CHILDREN}::test_build_job_passes_every_source_field",
    "RecModel.spec.source.format": f"{CHILDREN}::test_build_job_passes_every_source_field",
    "RecModel.spec.source.sha256": f"{CHILDREN}::test_build_job_passes_every_source_field",
    "RecModel.spec.source.featureSpecUri": f"{CHILDREN}::test_build_job_passes_every_source_field",
    "RecModel.spec.evalDataset.name": f"{CHILDREN}::test_build_job_passes_the_eval_dataset",
    "RecModel.spec.evalDataset.uri": f"{CHILDREN}::test_build_job_passes_the_eval_dataset",
    "RecModel.spec.evalDataset.format": f"{CHILDREN}::test_build_job_passes_the_eval_dataset",
    "RecModel.spec.evalDataset.testUri": f"{CHILDREN}::test_build_job_passes_the_eval_dataset",
    "RecModel.spec.evalDataset.timeColumn": f"{CHILDREN}::test_build_job_passes_the_eval_dataset",
    "RecModel.spec.evalDataset.userColumn": f"{CHILDREN}::test_build_job_passes_the_eval_dataset",
    "RecModel.spec.evalDataset.holdoutBasisPoints": (
        f"{CHILDREN}::test_build_job_passes_the_holdout_share"
    ),
    "RecModel.spec.policyRef.name": (
        f"{RECMODEL}::test_policy_ref_picks_the_policy_the_build_follows"
    ),
    "RecModel.spec.hardwarePoolRefs.name": (
        f"{RECMODEL}::test_pool_no_longer_placed_loses_its_deployment_and_service"
    ),
    "RecModel.spec.traffic.expectedRequestsPerSecond": (
        f"{RECMODEL}::test_short_capacity_places_what_fits_and_is_not_ready"
    ),
    "RecModel.spec.traffic.candidatesPerRequest": (
        f"{SCALING}::test_batch_bounds_are_the_policy_s_and_one_request_fits"
    ),
    "RecModel.spec.traffic.peakFactorPercent": (
        f"{PLANNER}::test_peak_factor_scales_the_planned_load"
    ),
    "RecModel.spec.paused": f"{RECMODEL}::test_paused_model_is_left_alone",
    # OptimizationPolicy: the plan, the build Job, the servers, the autoscaling tick
    "OptimizationPolicy.spec.objectives.p99LatencyTargetMilliseconds": (
        f"{PLANNER}::test_p99_target_in_the_policy_bounds_the_planned_batch"
    ),
    "OptimizationPolicy.spec.objectives.accuracyBudgetBasisPoints": (
        f"{PLANNER}::test_accuracy_budget_in_the_policy_picks_the_variant"
    ),
    "OptimizationPolicy.spec.objectives.throughputFloorRequestsPerSecond": (
        f"{PLANNER}::test_objectives_come_from_the_typed_policy_and_traffic"
    ),
    "OptimizationPolicy.spec.objectives.costWeightPercent": (
        f"{PLANNER}::test_cost_weight_in_the_policy_orders_the_pools"
    ),
    "OptimizationPolicy.spec.compression.precisions": (
        f"{CHILDREN}::test_build_job_passes_the_precisions"
    ),
    "OptimizationPolicy.spec.compression.staticQuantization": (
        f"{CHILDREN}::test_build_job_passes_static_quantization"
    ),
    "OptimizationPolicy.spec.compression.pruningRatiosBasisPoints": (
        f"{CHILDREN}::test_build_job_passes_every_pruning_ratio_or_none"
    ),
    "OptimizationPolicy.spec.compression.distillation.enabled": (
        f"{CHILDREN}::test_build_job_passes_distillation_off"
    ),
    "OptimizationPolicy.spec.compression.distillation.maxStudents": (
        f"{CHILDREN}::test_build_job_passes_the_student_count"
    ),
    "OptimizationPolicy.spec.autoscaling.replicas": (
        f"{SCALING}::test_static_and_external_never_scale"
    ),
    "OptimizationPolicy.spec.autoscaling.batchTuning": (
        f"{SCALING}::test_batch_tuning_follows_load_and_can_be_turned_off"
    ),
    "OptimizationPolicy.spec.autoscaling.minReplicas": (
        f"{SCALING}::test_min_replicas_is_kept_with_no_load"
    ),
    "OptimizationPolicy.spec.autoscaling.spareReplicas": (
        f"{SCALING}::test_spare_replicas_are_kept_beyond_what_the_load_needs_at_full_capacity"
    ),
    "OptimizationPolicy.spec.autoscaling.maxReplicas": (
        f"{SCALING}::test_max_replicas_and_the_pool_ceiling_bound_the_decision"
    ),
    "OptimizationPolicy.spec.autoscaling.minBatchSize": (
        f"{SCALING}::test_min_batch_size_is_the_floor_of_the_servers_batch_limits"
    ),
    "OptimizationPolicy.spec.autoscaling.maxBatchSize": (
        f"{SCALING}::test_batch_bounds_are_the_policy_s_and_one_request_fits"
    ),
    "OptimizationPolicy.spec.autoscaling.intervalSeconds": (
        f"{SCALING}::test_the_loop_ticks_each_model_at_its_policy_s_interval"
    ),
    "OptimizationPolicy.spec.autoscaling.scaleUpCooldownSeconds": (
        f"{SCALING}::test_cooldowns_are_the_policy_s"
    ),
    "OptimizationPolicy.spec.autoscaling.scaleDownCooldownSeconds": (
        f"{SCALING}::test_cooldowns_are_the_policy_s"
    ),
    "OptimizationPolicy.spec.drift.reprofile": (
        f"{SCALING}::test_reprofile_false_reports_drift_and_does_nothing_else"
    ),
    "OptimizationPolicy.spec.drift.latencyDriftBasisPoints": (
        f"{SCALING}::test_drift_thresholds_are_the_policy_s"
    ),
    "OptimizationPolicy.spec.drift.capacityDriftBasisPoints": (
        f"{SCALING}::test_drift_thresholds_are_the_policy_s"
    ),
    "OptimizationPolicy.spec.drift.fidelitySampleBasisPoints": (
        f"{RECMODEL}::test_the_fidelity_sample_share_is_the_policy_s"
    ),
    "OptimizationPolicy.spec.drift.fidelityAgreementBasisPoints": (
        f"{SCALING}::test_drift_thresholds_are_the_policy_s"
    ),
    "OptimizationPolicy.spec.drift.dataDriftPsiThousandths": (
        f"{SCALING}::test_data_drift_is_reported_for_a_human_and_the_plan_is_kept"
    ),
    "OptimizationPolicy.spec.drift.recalibrate": (
        f"{RECALIBRATION}::test_only_a_static_variant_under_a_policy_that_keeps_samples_is_recalibrated"
    ),
    "OptimizationPolicy.spec.drift.recalibrationSampleRows": (
        f"{RECALIBRATION}::test_servers_keep_the_policy_s_request_sample"
    ),
    "OptimizationPolicy.spec.drift.checkIntervalSeconds": (
        f"{SCALING}::test_drift_is_sampled_every_check_interval"
    ),
    "OptimizationPolicy.spec.drift.sustainedSeconds": (
        f"{SCALING}::test_sustained_slow_compute_is_reported_as_drift_once_per_cooldown"
    ),
    "OptimizationPolicy.spec.drift.cooldownSeconds": (
        f"{SCALING}::test_a_re_profile_waits_for_the_policy_s_drift_cooldown"
    ),
    "OptimizationPolicy.spec.failover.pendingDeadlineSeconds": (
        f"{RECMODEL}::test_failover_deadline_and_retry_are_the_policy_s"
    ),
    "OptimizationPolicy.spec.failover.retrySeconds": (
        f"{RECMODEL}::test_failover_deadline_and_retry_are_the_policy_s"
    ),
    "OptimizationPolicy.spec.rollout.canary": (
        f"{RECMODEL}::test_with_canary_off_a_variant_change_updates_the_pool_s_deployment"
    ),
    "OptimizationPolicy.spec.rollout.stepWeightsPercent": (
        f"{CANARY}::test_steps_follow_the_policy_s_weights_and_promote_after_the_last"
    ),
    "OptimizationPolicy.spec.rollout.stepSeconds": (
        f"{CANARY}::test_a_step_is_analysed_only_after_step_seconds"
    ),
    "OptimizationPolicy.spec.rollout.failureLimit": (
        f"{CANARY}::test_failures_count_up_to_the_limit_then_roll_back"
    ),
    "OptimizationPolicy.spec.rollout.maxErrorRateBasisPoints": (
        f"{CANARY}::test_503_refusals_are_not_errors_but_the_error_share_is_the_policy_s"
    ),
    "OptimizationPolicy.spec.rollout.minRequests": f"{CANARY}::test_min_requests_is_the_policy_s",
    "OptimizationPolicy.spec.rollout.fidelitySampleBasisPoints": (
        f"{RECMODEL}::test_the_canary_samples_fidelity_at_the_rollout_s_share"
    ),
    # HardwarePool: the pods placed there, its profile, the plan
    "HardwarePool.spec.hardwareType": f"{CHILDREN}::test_profile_job_runs_on_the_pool_it_profiles",
    "HardwarePool.spec.nodeSelector": (
        f"{CHILDREN}::test_server_pods_are_restricted_pinned_probed_and_scraped"
    ),
    "HardwarePool.spec.accelerator.name": f"{CHILDREN}::test_pool_resources_reach_the_server_pods",
    "HardwarePool.spec.accelerator.amountPerReplica": (
        f"{CHILDREN}::test_pool_resources_reach_the_server_pods"
    ),
    "HardwarePool.spec.resources.cpuMillis": (
        f"{CHILDREN}::test_pool_resources_reach_the_server_pods"
    ),
    "HardwarePool.spec.resources.memoryMebibytes": (
        f"{CHILDREN}::test_pool_resources_reach_the_server_pods"
    ),
    "HardwarePool.spec.tolerations.key": f"{CHILDREN}::test_pool_tolerations_reach_the_server_pods",
    "HardwarePool.spec.tolerations.operator": (
        f"{CHILDREN}::test_pool_tolerations_reach_the_server_pods"
    ),
    "HardwarePool.spec.tolerations.value": (
        f"{CHILDREN}::test_pool_tolerations_reach_the_server_pods"
    ),
    "HardwarePool.spec.tolerations.effect": (
        f"{CHILDREN}::test_pool_tolerations_reach_the_server_pods"
    ),
    "HardwarePool.spec.costPerReplicaHourMillicents": (
        f"{PLANNER}::test_pool_cost_decides_which_pool_is_filled_first"
    ),
    "HardwarePool.spec.maxReplicas": (
        f"{PLANNER}::test_pool_max_replicas_caps_the_pool_and_spills_to_the_next"
    ),
    "HardwarePool.spec.supportedPrecisions": (
        f"{PLANNER}::test_pool_supported_precisions_pick_the_variant_served_there"
    ),
}

# Fields no code reads yet: accepted and ignored. Each is a bug (wire it up, or remove the
# field); test_no_field_is_accepted_and_ignored fails while this is not empty.
NO_EFFECT_YET: frozenset[str] = frozenset()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The API type an annotation holds (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


@cache
def leaf_fields() -> tuple[str, ...]:
    """Every leaf field of the kinds' spec types, e.g. ``HardwarePool.spec.tolerations.key``."""
    leaves: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}.{field.alias or name}"
            nested = _model_in(field.annotation)
            if nested is None:
                leaves.append(path)
            else:
                walk(nested, path)

    for kind in KINDS:
        spec = _model_in(kind.model_fields["spec"].annotation)
        assert spec is not None, kind
        walk(spec, f"{kind.__name__}.spec")
    return tuple(leaves)


@cache
def _module_tests(path: str) -> frozenset[str]:
    """Names of the module-level test functions of a test file (empty if there is none)."""
    file = REPO / path
    if not file.is_file():
        return frozenset()
    tree = ast.parse(file.read_text(), filename=path)
    return frozenset(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    )


def _missing(node_id: str) -> str | None:
    """Why a pytest node id names no test we accept, or None if it does."""
    path, _, name = node_id.partition("::")
    name = name.split("[", 1)[0]  # a parametrized case: its function
    if not path.startswith(("tests/unit/", "tests/integration/")):
        return "not a unit (or integration) test file"
    if not name.startswith("test_"):
        return "no test function named"
    if name not in _module_tests(path):
        return f"no module-level def {name} in {path}"
    return None


def test_the_walk_lists_leaves_by_wire_name() -> None:
    leaves = leaf_fields()
    assert "OptimizationPolicy.spec.autoscaling.minReplicas" in leaves
    assert "HardwarePool.spec.tolerations.key" in leaves
    assert "OptimizationPolicy.spec.compression.distillation.maxStudents" in leaves
    assert "RecModel.spec.hardwarePoolRefs.name" in leaves
    assert not any(p.endswith((".spec.tolerations", ".spec.source")) for p in leaves)
    assert len(leaves) == len(set(leaves))


def test_every_api_field_has_a_test_of_its_effect() -> None:
    unmapped = [p for p in leaf_fields() if p not in EFFECT_TESTS and p not in NO_EFFECT_YET]
    assert not unmapped, (
        "API fields without a test of their effect: "
        + ", ".join(unmapped)
        + ". A new field needs a unit test that sets it to two values and sees what is "
        "built, planned or served differ; add it to EFFECT_TESTS in "
        "tests/unit/test_api_fields.py (or remove the field)."
    )


def test_no_field_is_accepted_and_ignored() -> None:
    assert not NO_EFFECT_YET, (
        "API fields that no code reads (accepted and ignored): "
        + ", ".join(sorted(NO_EFFECT_YET))
        + ". Give each an effect and a test of it, or remove it from the API."
    )


def test_the_map_names_only_fields_that_exist() -> None:
    leaves = set(leaf_fields())
    stale = sorted((set(EFFECT_TESTS) | NO_EFFECT_YET) - leaves)
    assert not stale, f"no such API field (renamed or gone? drop the entry): {', '.join(stale)}"
    both = sorted(set(EFFECT_TESTS) & NO_EFFECT_YET)
    assert not both, f"both with a test of their effect and without: {', '.join(both)}"


def test_every_named_effect_test_exists() -> None:
    broken = {
        field: f"{node_id} ({why})"
        for field, node_id in EFFECT_TESTS.items()
        if (why := _missing(node_id)) is not None
    }
    assert not broken, "EFFECT_TESTS names tests that do not exist:\n" + "\n".join(
        f"  {field}: {test}" for field, test in sorted(broken.items())
    )
