"""Unit tests of recserve_operator.reconcilers.recalibration: naming, the profile a
recalibrated variant inherits, and the pass's part (the Job, its outcome, the plan)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from recserve_operator import children
from recserve_operator.api.optimizationpolicy import OptimizationPolicy
from recserve_operator.reconcilers.recalibration import (
    next_name,
    recalibratable,
    with_recalibrated,
)
from recserve_operator.reconcilers.recmodel import Built
from recserve_runtime.artifacts import (
    MODEL_FILE,
    ArtifactFile,
    FeatureSpec,
    Manifest,
    ProfiledVariant,
    ProfileReport,
    Recipe,
    Side,
    SparseFeature,
    TensorSpec,
    variant_key,
    write_manifest,
)
from tests.manifests import example
from tests.unit.test_reconcilers_recmodel import MODEL, NS, POOLS, World, points
from tests.unit.test_reconcilers_recmodel import world as world  # the fixture

pytestmark = pytest.mark.unit

STATIC = "int8-static-qdq"
NEW = f"{STATIC}-recal1"


def _manifest(name: str, quantization: str = "static", origin: str | None = None) -> Manifest:
    data = f"onnx bytes of {name}".encode()
    return Manifest(
        name=name,
        recipe=Recipe(precision="int8", quantization=quantization),
        artifact=ArtifactFile(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)),
        inputs=[TensorSpec(name="sparse_ids", dtype="int64", shape=[-1, 1])],
        outputs=[TensorSpec(name="score", dtype="float32", shape=[-1])],
        feature_spec=FeatureSpec(
            sparse=[SparseFeature(name="user", vocab_size=10, side=Side.USER)]
        ),
        metrics={
            "auc": 0.8,
            "aucDropRelPct": 0.2,
            "calibrationRows": 768.0,
            "recentAgreementBefore": 0.81,
            "recentAgreementAfter": 0.93,
        },
        recalibrated_from=origin,
    )


def _policy(**drift: Any) -> OptimizationPolicy:
    raw = example("latency-first")
    raw["spec"]["drift"] = drift
    return OptimizationPolicy.model_validate(raw)


def _built(m: Manifest) -> Built:
    from recserve_operator.api.modelvariant import Artifact
    from recserve_operator.api.modelvariant import Recipe as ApiRecipe

    key = variant_key(m.artifact.sha256)
    art = Artifact(uri=f"/store/{key}", sha256=m.artifact.sha256, size_bytes=1)
    return Built(key, m, ApiRecipe.model_validate(m.recipe.model_dump()), art)


def test_a_recalibration_is_named_after_the_variant_first_calibrated_on_training_rows() -> None:
    assert next_name(STATIC, ["fp32", STATIC]) == NEW
    assert next_name(NEW, ["fp32", STATIC, NEW]) == f"{STATIC}-recal2"
    assert next_name(STATIC, [STATIC, NEW, f"{STATIC}-recal7", "other-recal9"]) == (
        f"{STATIC}-recal8"
    )


def test_only_a_static_variant_under_a_policy_that_keeps_samples_is_recalibrated() -> None:
    static, dynamic = _built(_manifest(STATIC)), _built(_manifest("int8", "dynamic"))
    assert recalibratable(static, _policy(), [STATIC]) == NEW
    assert recalibratable(dynamic, _policy(), [STATIC]) is None
    assert recalibratable(static, _policy(recalibrate=False), [STATIC]) is None
    assert recalibratable(static, _policy(recalibrationSampleRows=0), [STATIC]) is None


def test_a_recalibrated_variant_takes_its_origin_s_profile_until_measured() -> None:
    old, new = _built(_manifest(STATIC)), _built(_manifest(NEW, origin=STATIC))
    measured = ProfiledVariant(
        name=STATIC, hardware="cpu", execution_provider="CPUExecutionProvider", threads=1,
        points=points(4.0),
    )  # fmt: skip
    own = measured.model_copy(update={"name": NEW, "points": points(9.0)})
    reports = {
        "cpu-pool": ProfileReport(
            hardware="cpu", execution_provider="CPUExecutionProvider", threads=1,
            variants={old.key: measured},
        ),
        "gpu-pool": ProfileReport(
            hardware="gpu", execution_provider="CPUExecutionProvider", threads=1,
            variants={old.key: measured, new.key: own},
        ),
    }  # fmt: skip
    out = with_recalibrated(reports, [old, new])
    assert out["cpu-pool"].variants[new.key] == measured  # inherited
    assert out["gpu-pool"].variants[new.key] == own  # measured there: kept
    assert new.key not in reports["cpu-pool"].variants  # the inputs are left alone


# -- the pass ---------------------------------------------------------------------------------


def _with_static(world: World) -> dict[str, str]:
    """The example build plus a static INT8 variant, profiled on every pool."""
    keys = world.build()
    keys[STATIC] = _write(world, _manifest(STATIC))
    for pool in POOLS:
        report = world.profile(pool, {k: v for k, v in keys.items() if k != STATIC})
        int8 = next(v for v in report.variants.values() if v.name == "int8-dynamic")
        variants = {**report.variants, keys[STATIC]: int8.model_copy(update={"name": STATIC})}
        report.model_copy(update={"variants": variants}).write(world.layout.profile(pool))
    return keys


def _write(world: World, m: Manifest) -> str:
    folder = world.layout.variant(variant_key(m.artifact.sha256))
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(f"onnx bytes of {m.name}".encode())
    write_manifest(folder, m)
    return folder.name


def _ask(world: World, cause: str = "FidelityDrift") -> None:
    """The tick's decision: recalibrate the static variant served on cpu-pool."""
    entry = {
        "time": "2026-12-06T21:00:00Z",
        "pool": "cpu-pool",
        "cause": cause,
        "evidence": "agreement 80.0% of candidate pairs",
        "action": f"recalibrate {MODEL}-{STATIC} ...",
        "variant": f"{MODEL}-{STATIC}",
        "recalibration": NEW,
        "outcome": "pending",
    }
    world.kube.set_status("RecModel", MODEL, NS, {"lastOptimization": [entry]})


def _entry(world: World) -> dict[str, Any]:
    [entry] = [e for e in world.status()["lastOptimization"] if e.get("recalibration")]
    return dict(entry)


def test_a_recalibration_runs_once_on_the_pool_s_servers_then_replaces_the_variant(
    world: World,
) -> None:
    _with_static(world)
    world.reconcile()
    _ask(world)
    world.reconcile()
    job = world.job("recalibrate")
    pod = job["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[0] == "recalibrate"
    # the pool's servers, found by the Job when it runs, as an account that reads pods
    assert (
        f"--servers-selector=recserve.io/model={MODEL},app.kubernetes.io/component=server,"
        "recserve.io/pool=cpu-pool"
    ) in args
    assert f"--namespace={NS}" in args and "--admin-port=8001" in args
    assert pod["serviceAccountName"] == children.ROUTER_ACCOUNT
    assert f"--variant={STATIC}" in args and f"--name={NEW}" in args
    assert "--reference=fp32" in args and "--accuracy-budget-bp=100" in args
    assert "--dataset=movielens-100k" in args  # accuracy on the build's held-out data
    # it waits for a whole sample (the policy's), not a few requests of servers just started
    assert "--min-rows=2048" in args  # recalibrationSampleRows, by default
    assert _entry(world)["outcome"] == "pending"
    world.reconcile()
    jobs = [j for j in world.kube.of_kind("Job", NS) if "recalibrate" in j["metadata"]["name"]]
    assert len(jobs) == 1  # once
    assert _entry(world)["outcome"] == "pending"

    _write(world, _manifest(NEW, origin=STATIC))  # what the Job writes
    world.reconcile()
    entry = _entry(world)
    assert entry["outcome"].startswith(f"recalibrated {STATIC} as {NEW} on 768 recent rows")
    assert "0.810 -> 0.930" in entry["outcome"], entry
    assert world.status()["driftedVariants"] == [f"{MODEL}-{STATIC}"]
    assert any(e[1] == "Recalibrated" for e in world.events)
    # the new variant is a ModelVariant, planned with its origin's profile on every pool
    variant = world.kube.find("ModelVariant", f"{MODEL}-{NEW}", NS)
    assert variant is not None
    assert {p["pool"] for p in variant["status"]["profiles"]} == set(POOLS)
    placed = {p["variant"] for p in world.status()["placements"]}
    assert f"{MODEL}-{STATIC}" not in placed


def test_a_failed_recalibration_job_keeps_the_plan_and_says_why(world: World) -> None:
    _with_static(world)
    world.reconcile()
    _ask(world)
    world.reconcile()
    before = world.status()["placements"]
    job = world.job("recalibrate")
    world.finish_job(job, "Failed", "BackoffLimitExceeded")
    world.reconcile()
    entry = _entry(world)
    assert entry["outcome"].startswith(f"failed: recalibration Job {job['metadata']['name']}")
    assert entry["outcome"].endswith("kept the current plan")
    assert not world.status().get("driftedVariants")
    assert world.status()["placements"] == before
    assert any(e[1] == "ReoptimizeFailed" for e in world.events)


def test_another_try_after_a_failed_recalibration_gets_a_job_of_its_own(world: World) -> None:
    """Data drift's recalibration failed; fidelity drift then asks again (the pool's new
    servers hold newer rows). The failed Job stays, and must not answer for the new
    try (seen in `recserve bench drift`: the second try was closed as failed at once,
    with the first one's reason)."""
    _with_static(world)
    world.reconcile()
    _ask(world, cause="DataDrift")
    world.reconcile()
    first = world.job("recalibrate")
    world.finish_job(first, "Failed", "BackoffLimitExceeded")
    world.reconcile()
    [failed] = world.status()["lastOptimization"]
    assert failed["outcome"].startswith("failed")
    again = {**failed, "cause": "FidelityDrift", "outcome": "pending"}
    world.kube.set_status("RecModel", MODEL, NS, {"lastOptimization": [failed, again]})
    world.reconcile()
    jobs = sorted(
        j["metadata"]["name"]
        for j in world.kube.of_kind("Job", NS)
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "recalibrate"
    )
    assert jobs == sorted([first["metadata"]["name"], f"{first['metadata']['name']}-a2"]), jobs
    assert world.status()["lastOptimization"][1]["outcome"] == "pending"  # running, not failed
    world.reconcile()  # and only one Job per try
    assert (
        len([j for j in world.kube.of_kind("Job", NS) if "recalibrate" in j["metadata"]["name"]])
        == 2
    )


def test_servers_keep_the_policy_s_request_sample(world: World) -> None:
    world.built_and_profiled()

    def sample_args() -> set[str]:
        return {
            a
            for d in world.kube.of_kind("Deployment", NS)
            if d["metadata"]["labels"][children.COMPONENT_LABEL] == "server"
            for a in d["spec"]["template"]["spec"]["containers"][0]["args"]
            if a.startswith("--request-sample-")
        }

    world.reconcile()
    # the default; the rows of the last one to two sustainedSeconds (default 120)
    assert sample_args() == {"--request-sample-rows=2048", "--request-sample-seconds=120"}
    drift = {"recalibrationSampleRows": 512, "sustainedSeconds": 30, "checkIntervalSeconds": 10}
    world.edit("OptimizationPolicy", "latency-first", {"drift": drift})
    world.reconcile()
    assert sample_args() == {"--request-sample-rows=512", "--request-sample-seconds=30"}
    world.edit("OptimizationPolicy", "latency-first", {"drift": {"recalibrationSampleRows": 0}})
    world.reconcile()
    assert sample_args() == set()
    world.edit("OptimizationPolicy", "latency-first", {"drift": {"recalibrate": False}})
    world.reconcile()
    assert sample_args() == set()


def test_after_data_drift_the_recalibrated_variant_is_rolled_out_by_canary(world: World) -> None:
    """The old variant was not wrong, only calibrated on older inputs: unlike a variant
    whose fidelity fell, the pool keeps serving it while its successor is a canary."""
    from tests.unit.test_reconcilers_recmodel import _ready, _variant_label

    _with_static(world)
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    name = f"{MODEL}-cpu-pool"
    _ready(world, name)
    served = _variant_label(world.kube.find("Deployment", name, NS))
    assert served == children.dns_name(STATIC), "the static INT8 serves cpu-pool first"
    _ask(world, cause="DataDrift")
    world.reconcile()
    _write(world, _manifest(NEW, origin=STATIC))
    world.reconcile()
    assert world.status()["driftedVariants"] == [f"{MODEL}-{STATIC}"]
    assert _variant_label(world.kube.find("Deployment", name, NS)) == served  # kept
    canary = world.kube.find("Deployment", f"{name}-canary", NS)
    assert canary is not None and _variant_label(canary) == children.dns_name(NEW)
    [rollout] = world.status()["rollouts"]
    assert rollout["toVariant"] == NEW and rollout["phase"] == "Starting"
    world.reconcile()  # and on the next pass too (the status now lists it as drifted)
    assert world.kube.find("Deployment", f"{name}-canary", NS) is not None
