"""The RecModel reconcile pass, step by step, against an in-memory Kube and a tmp store.

Each test drives the real kopf handler function (the typed boundary) with a fake Kube
facade, and plays the part of the Jobs by writing their files into a tmp_path artifact
store through the artifact types (Manifest, BuildReport, ProfileReport).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from recserve_operator import children, handlers
from recserve_operator.api import OptimizationPolicy, RecModel
from recserve_operator.children import content_hash
from recserve_operator.conditions import find
from recserve_operator.config import ArtifactStore, OperatorConfig
from recserve_operator.reconcilers.scaling import parse_stamp
from recserve_runtime.artifacts import (
    MANIFEST,
    MODEL_FILE,
    ArtifactFile,
    BuildReport,
    FeatureSpec,
    Manifest,
    ProfiledVariant,
    ProfilePoint,
    ProfileReport,
    Recipe,
    Side,
    SkippedVariant,
    SparseFeature,
    StoreLayout,
    TensorSpec,
    variant_key,
    write_manifest,
)
from tests.fakekube import FakeKube
from tests.manifests import example

pytestmark = pytest.mark.unit

NS, MODEL = "ns1", "movielens-dlrm"
POOLS = ("gpu-pool", "cpu-pool", "fpga-pool")
HARDWARE = {"gpu-pool": "gpu", "cpu-pool": "cpu", "fpga-pool": "fpga"}
# variant name -> (precision, quantization, relative AUC drop in %)
VARIANTS = {
    "fp32": ("fp32", "none", 0.0),
    "fp16": ("fp16", "none", 0.01),
    "int8-dynamic": ("int8", "dynamic", 0.3),
    "student-d8-64": ("fp32", "none", 5.0),  # over the 100 bp budget
}
# microseconds per sample, by pool and precision (plus a fixed 80 us per call)
SPEED = {
    "gpu-pool": {"fp32": 1.0, "fp16": 0.6, "int8": 0.8},
    "cpu-pool": {"fp32": 10.0, "fp16": 12.0, "int8": 4.0},
    "fpga-pool": {"fp32": 20.0, "fp16": 20.0, "int8": 0.5},
}


def points(us_per_sample: float, overhead_us: float = 80.0) -> list[ProfilePoint]:
    out = []
    for batch in (1, 8, 64, 256, 1024):
        p50 = overhead_us + us_per_sample * batch
        out.append(
            ProfilePoint(
                batch_size=batch,
                p50_us=p50,
                p99_us=p50 * 1.3,
                samples_per_second=batch / (p50 / 1e6),
            )
        )
    return out


class World:
    """A namespace with the example RecModel, policy and pools, a store, and the handler."""

    def __init__(self, store: Path) -> None:
        self.kube = FakeKube()
        self.config = OperatorConfig(store=ArtifactStore.from_uri(str(store)))
        self.events: list[tuple[str, str, str]] = []
        model = example(MODEL)
        model["metadata"]["namespace"] = NS
        policy = example("latency-first")
        policy["metadata"]["namespace"] = NS
        self.kube.add(model)
        self.kube.add(policy)
        for name in POOLS:
            self.kube.add(example(name))

    # -- the operator ----------------------------------------------------------------------
    def reconcile(self) -> dict[str, Any]:
        """One pass through the kopf handler; returns the RecModel's stored status."""
        handlers.recmodel(body=self.kube.find("RecModel", MODEL, NS))
        return self.status()

    def status(self) -> dict[str, Any]:
        obj = self.kube.find("RecModel", MODEL, NS)
        assert obj is not None
        return dict(obj.get("status") or {})

    def cond(self, type_: str) -> dict[str, Any]:
        found = find(self.status().get("conditions", []), type_)
        assert found is not None, f"no {type_} condition in {self.status()}"
        return found

    def reason(self, type_: str = "Ready") -> str:
        return str(self.cond(type_)["reason"])

    def edit(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        self.kube.set_spec(kind, name, None if kind == "HardwarePool" else NS, spec)

    # -- the Jobs ------------------------------------------------------------------------
    @property
    def layout(self) -> StoreLayout[Path]:
        model = RecModel.model_validate(self.kube.find("RecModel", MODEL, NS))
        policy = OptimizationPolicy.model_validate(
            self.kube.find("OptimizationPolicy", "latency-first", NS)
        )
        digest = content_hash(model.spec, policy.spec.compression)
        return self.config.store.local_build(NS, MODEL, digest)

    def job(self, component: str, pool: str | None = None) -> dict[str, Any]:
        jobs = [
            j
            for j in self.kube.of_kind("Job", NS)
            if j["metadata"]["labels"]["app.kubernetes.io/component"] == component
            and (pool is None or j["metadata"]["labels"].get("recserve.io/pool") == pool)
        ]
        assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
        return jobs[0]

    def finish_job(self, job: dict[str, Any], outcome: str, message: str = "") -> None:
        cond = {"type": outcome, "status": "True", "reason": outcome, "message": message}
        self.kube.set_status("Job", job["metadata"]["name"], NS, {"conditions": [cond]})

    def build(self, skipped: list[SkippedVariant] | None = None) -> dict[str, str]:
        """What the build Job writes: variants, then the report; returns name -> key."""
        keys = {}
        for name, (precision, quantization, drop) in VARIANTS.items():
            data = f"onnx bytes of {name}".encode()
            digest = hashlib.sha256(data).hexdigest()
            folder = self.layout.variant(variant_key(digest))
            folder.mkdir(parents=True)
            (folder / MODEL_FILE).write_bytes(data)
            write_manifest(
                folder,
                Manifest(
                    name=name,
                    recipe=Recipe(precision=precision, quantization=quantization),
                    artifact=ArtifactFile(sha256=digest, size_bytes=len(data)),
                    inputs=[TensorSpec(name="sparse_ids", dtype="int64", shape=[-1, 1])],
                    outputs=[TensorSpec(name="score", dtype="float32", shape=[-1])],
                    feature_spec=FeatureSpec(
                        sparse=[SparseFeature(name="user", vocab_size=10, side=Side.USER)]
                    ),
                    metrics={"auc": 0.8, "logLoss": 0.45, "aucDropRelPct": drop},
                ),
            )
            keys[name] = folder.name
        BuildReport(hardware="cpu", threads=2, skipped=skipped or []).write(self.layout.report)
        return keys

    def profile(
        self,
        pool: str,
        keys: dict[str, str],
        fallback: str | None = None,
        round_: int = 0,
        slower: float = 1.0,
    ) -> ProfileReport:
        """What a pool's profile Job writes (``round_`` > 0: a re-profile, ``slower``
        times the usual time per sample)."""
        variants = {
            key: ProfiledVariant(
                name=name,
                hardware=HARDWARE[pool],
                execution_provider="CPUExecutionProvider",
                fallback_reason=fallback,
                threads=2,
                points=points(SPEED[pool][VARIANTS[name][0]] * slower),
            )
            for name, key in keys.items()
        }
        report = ProfileReport(
            hardware=HARDWARE[pool],
            execution_provider="CPUExecutionProvider",
            fallback_reason=fallback,
            threads=2,
            variants=variants,
        )
        report.write(self.layout.profile(pool, round_))
        return report

    def built_and_profiled(self, fallbacks: dict[str, str] | None = None) -> dict[str, str]:
        keys = self.build()
        for pool in POOLS:
            self.profile(pool, keys, (fallbacks or {}).get(pool))
        return keys


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World(tmp_path / "store")
    monkeypatch.setitem(handlers._state, "kube", w.kube)
    monkeypatch.setitem(handlers._state, "config", w.config)
    monkeypatch.setattr(handlers, "ANNOUNCED", {})  # what earlier tests' passes announced
    monkeypatch.setattr(handlers, "post_events", lambda _target, events: w.events.extend(events))
    yield w


def warnings(world: World) -> list[str]:
    return [reason for type_, reason, _ in world.events if type_ == "Warning"]


# -- references ---------------------------------------------------------------------------


def test_paused_model_is_left_alone(world: World) -> None:
    world.edit("RecModel", MODEL, {"paused": True})
    world.reconcile()
    assert world.reason() == "Paused"
    assert world.kube.writes == [("patch_status", "RecModel", MODEL)]


def test_missing_references_are_named(world: World) -> None:
    world.kube.delete("", "OptimizationPolicy", "latency-first", NS)
    world.kube.delete("", "HardwarePool", "fpga-pool", None)
    world.reconcile()
    ready = world.cond("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReferenceNotFound")
    assert f"OptimizationPolicy {NS}/latency-first" in ready["message"]
    assert "HardwarePool fpga-pool" in ready["message"]
    assert world.reason("VariantsBuilt") == "ReferenceNotFound"
    assert world.reason("Placed") == "Waiting"
    assert warnings(world) == ["ReferenceNotFound"]
    assert not world.kube.of_kind("Job")


def test_policy_ref_picks_the_policy_the_build_follows(world: World) -> None:
    other = example("latency-first")
    other["metadata"].update(name="int8-only", namespace=NS)
    other["spec"]["compression"]["precisions"] = ["fp32", "int8"]
    world.kube.add(other)

    def precisions() -> list[str]:
        digest = world.status()["contentHash"]
        job = world.kube.find("Job", children.dns_name(MODEL, "build", digest[:8]), NS)
        assert job is not None
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        return [a for a in args if a.startswith("--precisions")]

    world.reconcile()
    assert precisions() == ["--precisions=fp32,fp16,int8,int4"]
    world.edit("RecModel", MODEL, {"policyRef": {"name": "int8-only"}})
    world.reconcile()
    assert precisions() == ["--precisions=fp32,int8"]


def test_invalid_referenced_policy_is_reported_with_its_field_path(world: World) -> None:
    # e.g. written under an older schema that allowed fractional milliseconds
    world.edit(
        "OptimizationPolicy", "latency-first", {"objectives": {"p99LatencyTargetMilliseconds": 2.5}}
    )
    world.reconcile()
    ready = world.cond("Ready")
    assert ready["reason"] == "InvalidReference"
    assert f"OptimizationPolicy {NS}/latency-first" in ready["message"]
    assert "spec.objectives.p99LatencyTargetMilliseconds" in ready["message"]
    assert not world.kube.of_kind("Job")


def test_invalid_referenced_pool_is_reported_with_its_field_path(world: World) -> None:
    pool = world.kube.objects[("HardwarePool", None, "gpu-pool")]
    del pool["spec"]["accelerator"]
    world.reconcile()
    ready = world.cond("Ready")
    assert ready["reason"] == "InvalidReference"
    assert "HardwarePool gpu-pool: spec.accelerator" in ready["message"]


# -- build ------------------------------------------------------------------------------


def test_build_job_is_created_once_with_the_policy_and_runs(world: World) -> None:
    world.reconcile()
    world.reconcile()
    assert world.kube.verbs("create", "Job") == [world.job("build")["metadata"]["name"]]
    ready = world.cond("VariantsBuilt")
    assert (ready["reason"], ready["status"]) == ("Building", "False")
    args = world.job("build")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--json=/artifacts/{NS}/{MODEL}/{world.layout.root.name}/report.json" in args
    assert "--precisions=fp32,fp16,int8,int4" in args
    assert "--prune-bp=3000,5000" in args
    assert world.status()["contentHash"] == world.layout.root.name


def test_failed_build_job_is_reported(world: World) -> None:
    world.reconcile()
    world.finish_job(world.job("build"), "Failed", "BackoffLimitExceeded")
    world.reconcile()
    ready = world.cond("Ready")
    assert ready["reason"] == "BuildFailed"
    assert ready["message"].startswith(f"build Job {MODEL}-build-")
    assert "BackoffLimitExceeded" in ready["message"]
    assert "BuildFailed" in warnings(world)


def test_build_that_completes_without_a_report_failed(world: World) -> None:
    world.reconcile()
    world.finish_job(world.job("build"), "Complete")
    world.reconcile()
    assert world.reason() == "BuildFailed"
    assert "wrote no" in world.cond("Ready")["message"]


def test_report_without_variants_failed(world: World) -> None:
    BuildReport(hardware="cpu", threads=1).write(world.layout.report)
    world.reconcile()
    assert world.reason("VariantsBuilt") == "BuildFailed"
    assert "no variant under" in world.cond("Ready")["message"]


def test_unreadable_build_report_names_the_field(world: World) -> None:
    world.build()
    world.layout.report.write_text('{"threads": 2, "variants": []}')
    world.reconcile()
    ready = world.cond("Ready")
    assert ready["reason"] == "BuildFailed"
    assert "report.json is invalid: hardware: Field required" in ready["message"]


def test_unreadable_manifest_names_the_field(world: World) -> None:
    keys = world.build()
    manifest = world.layout.variant(keys["fp16"]) / MANIFEST
    manifest.write_text(manifest.read_text().replace('"precision": "fp16"', '"precision": 16'))
    world.reconcile()
    ready = world.cond("Ready")
    assert ready["reason"] == "BuildFailed"
    assert f"{keys['fp16']}/manifest.json is invalid: recipe.precision" in ready["message"]


# -- variants and profiles ------------------------------------------------------------------


def test_built_variants_become_model_variants_and_each_pool_gets_a_profile_job(
    world: World,
) -> None:
    keys = world.build(skipped=[SkippedVariant(name="int4", reason="no table to quantize")])
    world.reconcile()
    built = world.cond("VariantsBuilt")
    assert built["status"] == "True"
    assert built["message"] == (
        "4 variants built, 3 within the 100 bp budget; skipped int4: no table to quantize"
    )
    assert (world.reason("Profiled"), world.reason()) == ("Profiling", "Profiling")
    for pool in POOLS:
        job = world.job("profile", pool)
        pod = job["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == example(pool)["spec"]["nodeSelector"]
        assert (
            f"--json=/artifacts/{NS}/{MODEL}/{world.layout.root.name}/profile-{pool}.json"
            in (pod["containers"][0]["args"])
        )
    variants = {mv["metadata"]["name"]: mv for mv in world.kube.of_kind("ModelVariant", NS)}
    int8 = variants[f"{MODEL}-int8-dynamic"]
    assert int8["spec"]["recipe"] == {
        "precision": "int8",
        "quantization": "dynamic",
        "pruningRatioBasisPoints": 0,
    }
    assert int8["spec"]["artifact"]["uri"].endswith(f"/variants/{keys['int8-dynamic']}")
    assert int8["metadata"]["ownerReferences"][0]["name"] == MODEL
    assert int8["status"]["accuracyDropBasisPoints"] == 30
    assert int8["status"]["withinBudget"] is True
    assert variants[f"{MODEL}-student-d8-64"]["status"]["withinBudget"] is False


def test_failed_profile_job_is_reported(world: World) -> None:
    world.build()
    world.reconcile()
    world.finish_job(world.job("profile", "fpga-pool"), "Failed", "DeadlineExceeded")
    world.reconcile()
    ready = world.cond("Ready")
    assert ready["reason"] == "ProfileFailed"
    assert "profile Job for pool fpga-pool: DeadlineExceeded" in ready["message"]
    assert world.cond("VariantsBuilt")["status"] == "True"


def test_profile_jobs_run_one_at_a_time_when_the_pools_share_a_machine(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.config = replace(world.config, profile_jobs_at_once=1)
    monkeypatch.setitem(handlers._state, "config", world.config)
    keys = world.build()

    def profile_jobs() -> list[str]:
        return [
            j["metadata"]["labels"]["recserve.io/pool"]
            for j in world.kube.of_kind("Job", NS)
            if j["metadata"]["labels"]["app.kubernetes.io/component"] == "profile"
        ]

    world.reconcile()
    world.reconcile()  # the first Job still runs: nothing new
    assert profile_jobs() == ["gpu-pool"]
    profiled = world.cond("Profiled")
    assert (profiled["reason"], profiled["message"]) == (
        "Profiling",
        "profiling on gpu-pool; queued, 1 at a time: cpu-pool, fpga-pool",
    )
    # the Job writes its report and completes: the next pool's Job starts
    world.profile("gpu-pool", keys)
    world.finish_job(world.job("profile", "gpu-pool"), "Complete")
    world.reconcile()
    assert sorted(profile_jobs()) == ["cpu-pool", "gpu-pool"]
    assert world.cond("Profiled")["message"] == (
        "profiling on cpu-pool; queued, 1 at a time: fpga-pool"
    )
    # a finished Job without its report yet does not hold the next one back either
    world.finish_job(world.job("profile", "cpu-pool"), "Complete")
    world.reconcile()
    assert sorted(profile_jobs()) == ["cpu-pool", "fpga-pool", "gpu-pool"]
    for pool in ("cpu-pool", "fpga-pool"):
        world.profile(pool, keys)
    world.reconcile()
    assert world.cond("Profiled")["status"] == "True"
    assert world.reason("Placed") == "Planned"


def test_unreadable_profile_report_names_the_field(world: World) -> None:
    keys = world.build()
    world.profile("cpu-pool", keys)
    path = world.layout.profile("cpu-pool")
    path.write_text(path.read_text().replace('"batchSize": 64', '"batchSize": "sixty-four"'))
    world.reconcile()
    ready = world.cond("Ready")
    assert ready["reason"] == "ProfileFailed"
    assert "profile-cpu-pool.json is invalid: variants." in ready["message"]
    assert "batchSize" in ready["message"]


# -- plan and serving --------------------------------------------------------------------


def test_feasible_plan_is_served_then_ready_and_a_second_pass_writes_nothing(
    world: World,
) -> None:
    world.built_and_profiled()
    world.reconcile()
    assert world.cond("Profiled")["message"] == "profiled on 3 pools"
    placed = world.cond("Placed")
    assert (placed["status"], placed["reason"]) == ("True", "Planned")
    status = world.status()
    assert status["plan"] == placed["message"]
    pools = {pl["pool"]: pl for pl in status["placements"]}
    deployments = {d["metadata"]["name"]: d for d in world.kube.of_kind("Deployment", NS)}
    for pool, pl in pools.items():
        server = deployments[f"{MODEL}-{pool}"]
        assert server["spec"]["replicas"] == pl["replicas"]
        args = server["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--slo-p99-ms=25" in args
        assert world.kube.find("Service", f"{MODEL}-{pool}", NS) is not None
    assert f"{MODEL}-router" in deployments
    assert world.reason("Serving") == "WaitingForReplicas"
    assert world.reason() == "WaitingForReplicas"
    selected = [
        mv["metadata"]["name"]
        for mv in world.kube.of_kind("ModelVariant", NS)
        if mv["status"]["selected"]
    ]
    assert sorted(selected) == sorted({pl["variant"] for pl in pools.values()})

    for name in deployments:
        world.kube.set_status("Deployment", name, NS, {"readyReplicas": 1})
    world.reconcile()
    assert world.cond("Ready")["status"] == "True"
    assert world.status()["replicas"] == len(pools)
    assert world.status()["endpoint"] == f"http://{MODEL}-router.{NS}.svc:8080"

    before = list(world.kube.writes)
    world.kube.lists.clear()
    world.reconcile()
    assert world.kube.writes == before, "a steady-state pass only reads"
    # ... and what it reads of its children, the operator's child index answers (the owner
    # label alone): any other selector is a LIST on the API server, every pass, per model.
    answered = {f"{children.MODEL_LABEL}={MODEL}", f"{children.SHARED_LABEL}=true"}
    listed = [(k, sel) for k, sel in world.kube.lists if k in handlers.CHILD_KINDS]
    assert listed and all(sel in answered for _, sel in listed), listed


def test_the_routers_of_a_namespace_share_one_account(world: World) -> None:
    # another model of the namespace was served first: its pass wrote the account
    for obj in children.router_rbac(NS):
        world.kube.apply_if_changed(obj, {})
    world.built_and_profiled()
    world.reconcile()
    assert world.reason("Serving") == "WaitingForReplicas"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        (account,) = world.kube.of_kind(kind, NS)
        assert account["metadata"]["name"] == children.ROUTER_ACCOUNT
        assert "ownerReferences" not in account["metadata"]  # outlives any one model
        writes = [w for w in world.kube.writes if w[1] == kind]
        assert writes == [("apply", kind, children.ROUTER_ACCOUNT)], "written once, not again"
    router = world.kube.find("Deployment", f"{MODEL}-router", NS)
    assert router is not None
    pod = router["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == children.ROUTER_ACCOUNT


def test_infeasible_plan_places_nothing_and_says_why(world: World) -> None:
    world.built_and_profiled()
    world.edit("OptimizationPolicy", "latency-first", {"autoscaling": {"maxBatchSize": 1}})
    world.reconcile()
    placed = world.cond("Placed")
    assert (placed["status"], placed["reason"]) == ("False", "NoFeasiblePlacement")
    assert "within [1, 1] rows" in placed["message"]
    assert world.reason() == "NoFeasiblePlacement"
    assert world.reason("Serving") == "Waiting"
    assert "NoFeasiblePlacement" in warnings(world)
    assert not world.kube.of_kind("Deployment")
    # objectives are not part of the content hash: re-planned, not rebuilt
    assert len(world.kube.of_kind("Job")) == 0


def test_short_capacity_places_what_fits_and_is_not_ready(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"traffic": {"expectedRequestsPerSecond": 10**7}})
    world.reconcile()
    placed = world.cond("Placed")
    assert (placed["status"], placed["reason"]) == ("False", "InsufficientCapacity")
    assert world.kube.of_kind("Deployment")
    assert world.reason() == "InsufficientCapacity"


def test_execution_provider_fallback_is_said_in_profiled_plan_and_placed(world: World) -> None:
    reason = "none of CUDAExecutionProvider is available; measured on CPU instead"
    world.built_and_profiled(fallbacks={"gpu-pool": reason})
    world.reconcile()
    assert f"gpu-pool: {reason}" in world.cond("Profiled")["message"]
    note = f"gpu-pool was profiled on a fallback execution provider: {reason}"
    assert note in world.cond("Placed")["message"]
    assert note in world.status()["plan"]
    gpu_profiles = [
        prof
        for mv in world.kube.of_kind("ModelVariant", NS)
        for prof in mv["status"]["profiles"]
        if prof["pool"] == "gpu-pool"
    ]
    assert gpu_profiles and all(prof["fallbackReason"] == reason for prof in gpu_profiles)


def test_pool_no_longer_placed_loses_its_deployment_and_service(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    assert world.kube.find("Deployment", f"{MODEL}-cpu-pool", NS) is not None
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "gpu-pool"}]})
    world.reconcile()
    assert world.kube.find("Deployment", f"{MODEL}-cpu-pool", NS) is None
    assert world.kube.find("Service", f"{MODEL}-cpu-pool", NS) is None
    assert world.kube.find("Deployment", f"{MODEL}-gpu-pool", NS) is not None
    assert [pl["pool"] for pl in world.status()["placements"]] == ["gpu-pool"]


def test_compression_change_rebuilds(world: World) -> None:
    world.built_and_profiled()
    world.reconcile()
    first = world.status()["contentHash"]
    world.edit(
        "OptimizationPolicy", "latency-first", {"compression": {"staticQuantization": False}}
    )
    world.reconcile()
    assert world.status()["contentHash"] != first
    assert world.reason("VariantsBuilt") == "Building"
    assert ("Normal", "Rebuilding") in [(t, r) for t, r, _ in world.events]
    args = world.job("build")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-static-quantization" in args


# -- the typed boundary ------------------------------------------------------------------


def test_invalid_spec_is_reported_with_its_path_once_without_raising(world: World) -> None:
    world.edit("RecModel", MODEL, {"traffic": {"expectedRequestsPerSecond": 1.5}})
    world.reconcile()
    ready = world.cond("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.traffic.expectedRequestsPerSecond" in ready["message"]
    assert warnings(world) == ["InvalidSpec"]
    assert not world.kube.of_kind("Job")
    before = list(world.kube.writes)
    world.reconcile()  # the timer again: no new status write, no new Event
    assert world.kube.writes == before
    assert warnings(world) == ["InvalidSpec"]


def test_a_status_the_types_refuse_does_not_stop_the_pass(world: World) -> None:
    world.kube.set_status("RecModel", MODEL, NS, {"replicas": "three"})
    world.reconcile()
    assert world.reason("VariantsBuilt") == "Building"


def test_live_demand_over_the_planned_peak_is_planned_for_on_the_next_pool(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"traffic": {"expectedRequestsPerSecond": 1}})
    world.reconcile()
    assert len(world.status()["placements"]) == 1
    one_pool = world.status()["placements"][0]["pool"]
    # the autoscaler saw far more than any one pool carries at its ceiling: a re-plan
    loop = handlers._loop()
    key = f"{NS}/{MODEL}"
    loop._record_demand(key, 10**6, 300)
    try:
        world.reconcile()
        pools = [pl["pool"] for pl in world.status()["placements"]]
        assert len(pools) > 1 and one_pool in pools
        assert world.status()["plan"].startswith("live demand 1000000 req/s over the planned peak")
        # Static replicas stay with the planned peak
        world.edit("OptimizationPolicy", "latency-first", {"autoscaling": {"replicas": "Static"}})
        world.reconcile()
        assert [pl["pool"] for pl in world.status()["placements"]] == [one_pool]
    finally:
        loop.forget(key)


def test_a_pool_without_ready_nodes_fails_over_and_comes_back(world: World) -> None:
    world.built_and_profiled()
    world.edit(
        "RecModel", MODEL, {"hardwarePoolRefs": [{"name": "gpu-pool"}, {"name": "cpu-pool"}]}
    )
    world.reconcile()
    before = {pl["pool"] for pl in world.status()["placements"]}
    gone = sorted(before)[0]
    world.kube.set_status("HardwarePool", gone, None, {"nodeCount": 2, "readyNodeCount": 0})
    world.reconcile()
    after = {pl["pool"] for pl in world.status()["placements"]}
    assert gone not in after and after, after
    assert f"{gone} has no Ready, schedulable node (2 matched)" in world.status()["plan"]
    assert world.kube.find("Deployment", f"{MODEL}-{gone}", NS) is None
    world.kube.set_status("HardwarePool", gone, None, {"readyNodeCount": 2})
    world.reconcile()
    assert {pl["pool"] for pl in world.status()["placements"]} == before


def test_a_pool_whose_replicas_make_no_progress_is_held_out_and_comes_back(
    world: World,
) -> None:
    world.built_and_profiled()
    world.edit(
        "RecModel", MODEL, {"hardwarePoolRefs": [{"name": "gpu-pool"}, {"name": "cpu-pool"}]}
    )
    world.reconcile()
    before = {pl["pool"] for pl in world.status()["placements"]}
    pool = sorted(before)[0]
    server = world.kube.find("Deployment", f"{MODEL}-{pool}", NS)
    assert server is not None
    assert server["spec"]["progressDeadlineSeconds"] == 180  # failover.pendingDeadlineSeconds
    # the Deployment controller gives up on it; its pod says why
    world.kube.set_status(
        "Deployment",
        f"{MODEL}-{pool}",
        NS,
        {
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{MODEL}-{pool}-abc" has timed out progressing.',
                }
            ]
        },
    )
    world.kube.add(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{MODEL}-{pool}-abc-1",
                "namespace": NS,
                "labels": {
                    "recserve.io/model": MODEL,
                    "recserve.io/pool": pool,
                    "app.kubernetes.io/component": "server",
                },
            },
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/4 nodes are available: 1 Insufficient nvidia.com/gpu.",
                    }
                ],
            },
        }
    )
    world.reconcile()
    status = world.status()
    assert pool not in {pl["pool"] for pl in status["placements"]}
    assert status["placements"], "its share went to another pool"
    [held] = status["unavailablePools"]
    assert held["pool"] == pool
    assert "Insufficient nvidia.com/gpu" in held["reason"]
    assert "Insufficient nvidia.com/gpu" in status["plan"]
    assert "PoolUnavailable" in warnings(world)
    assert world.kube.find("Deployment", f"{MODEL}-{pool}", NS) is None
    # held while nothing changes
    world.reconcile()
    assert [u["pool"] for u in world.status()["unavailablePools"]] == [pool]
    # a node is added: back in the plan
    world.kube.set_status(
        "HardwarePool", pool, None, {"nodeCount": 2, "readyNodeCount": 2, "allocatable": 2}
    )
    world.reconcile()
    assert world.status()["unavailablePools"] == []
    assert {pl["pool"] for pl in world.status()["placements"]} == before
    assert any(reason == "PoolRetried" for _, reason, _ in world.events)


def test_failover_deadline_and_retry_are_the_policy_s(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    failover = {"pendingDeadlineSeconds": 300, "retrySeconds": 120}
    world.edit("OptimizationPolicy", "latency-first", {"failover": failover})
    world.reconcile()
    server = world.kube.find("Deployment", f"{MODEL}-cpu-pool", NS)
    assert server is not None and server["spec"]["progressDeadlineSeconds"] == 300
    stalled = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    world.kube.set_status("Deployment", f"{MODEL}-cpu-pool", NS, {"conditions": [stalled]})
    world.reconcile()
    [held] = world.status()["unavailablePools"]
    since, retry = (parse_stamp(held[k]) for k in ("since", "retryAt"))
    assert since is not None and retry is not None and retry - since == 120
    assert "no replica ready within 300 s" in world.status()["plan"]


def test_a_pool_leaving_the_plan_serves_until_the_new_pools_are_ready(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    world.kube.set_status("Deployment", f"{MODEL}-cpu-pool", NS, {"readyReplicas": 1})
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "gpu-pool"}]})
    world.reconcile()
    assert world.kube.find("Deployment", f"{MODEL}-cpu-pool", NS) is not None
    assert "cpu-pool still serving" in world.cond("Serving")["message"]
    assert [pl["pool"] for pl in world.status()["placements"]] == ["gpu-pool"]
    gpu = world.kube.find("Deployment", f"{MODEL}-gpu-pool", NS)
    assert gpu is not None
    world.kube.set_status(
        "Deployment", f"{MODEL}-gpu-pool", NS, {"readyReplicas": gpu["spec"]["replicas"]}
    )
    world.reconcile()
    assert world.kube.find("Deployment", f"{MODEL}-cpu-pool", NS) is None
    assert "still serving" not in world.cond("Serving")["message"]


def _drifted(world: World, pool: str) -> None:
    """What the autoscaler's tick writes when it asks for a re-profile of ``pool``."""
    world.kube.set_status(
        "RecModel",
        MODEL,
        NS,
        {
            "profileRounds": {pool: 1},
            "lastOptimization": [
                {
                    "time": "2026-11-23T10:00:00Z",
                    "pool": pool,
                    "cause": "LatencyDrift",
                    "evidence": "mean compute 8.0 ms per batch of 64 rows, the profile's 2.0 ms",
                    "action": f"re-profile pool {pool} (round 1), then re-plan",
                    "profileRound": 1,
                    "outcome": "pending",
                }
            ],
        },
    )


def test_drift_re_profiles_the_pool_while_the_old_profile_serves_then_re_plans(
    world: World,
) -> None:
    keys = world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    served = world.status()["placements"]
    _drifted(world, "cpu-pool")
    world.reconcile()
    jobs = [
        j["metadata"]["name"]
        for j in world.kube.of_kind("Job", NS)
        if j["metadata"]["name"].endswith("-r1")
    ]
    assert len(jobs) == 1, jobs
    args = next(j for j in world.kube.of_kind("Job", NS) if j["metadata"]["name"] == jobs[0])[
        "spec"
    ]["template"]["spec"]["containers"][0]["args"]
    assert any(a.endswith("profile-cpu-pool-r1.json") for a in args), args
    # the old profile still serves: same plan, still placed
    assert world.status()["placements"] == served
    assert world.cond("Placed")["status"] == "True"
    assert "re-profiling cpu-pool on drift (round 1)" in world.cond("Profiled")["message"]
    assert world.status()["lastOptimization"][0]["outcome"] == "pending"
    # the new profile: the pool is 30x slower than profiled; the plan follows it
    world.profile("cpu-pool", keys, round_=1, slower=30.0)
    world.reconcile()
    [entry] = world.status()["lastOptimization"]
    assert entry["outcome"].startswith("re-planned from the new profile (changed)"), entry
    assert any(reason == "Reoptimized" for _, reason, _ in world.events)
    replicas = lambda st: sum(pl["plannedReplicas"] for pl in st["placements"])  # noqa: E731
    assert replicas(world.status()) > replicas({"placements": served})


def test_a_failed_re_profile_keeps_the_current_plan_and_says_why(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    served = world.status()["placements"]
    _drifted(world, "cpu-pool")
    world.reconcile()
    job = next(j for j in world.kube.of_kind("Job", NS) if j["metadata"]["name"].endswith("-r1"))
    world.finish_job(job, "Failed", "BackoffLimitExceeded")
    world.reconcile()
    [entry] = world.status()["lastOptimization"]
    assert entry["outcome"].startswith("failed: profile Job"), entry
    assert "kept the current plan" in entry["outcome"]
    assert "ReoptimizeFailed" in warnings(world)
    assert "re-profile of cpu-pool (round 1) failed" in world.cond("Profiled")["message"]
    assert world.status()["placements"] == served
    # no loop: the next pass neither retries the Job nor reports again
    events = len(world.events)
    world.reconcile()
    assert len(world.events) == events
    assert (
        len([j for j in world.kube.of_kind("Job", NS) if j["metadata"]["name"].endswith("-r1")])
        == 1
    )


BUILDER_SAYS = (
    "error: model file /nonexistent/model.pt does not exist: pass a checkpoint written by "
    "`recserve train`, or a TorchScript file with --feature-spec"
)


def test_a_failed_build_is_said_in_the_builders_words_once(world: World) -> None:
    world.reconcile()
    job = world.job("build")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    world.finish_job(job, "Failed", "PodFailurePolicy")
    world.kube.add(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job['metadata']['name']}-x1",
                "namespace": NS,
                "labels": {"batch.kubernetes.io/job-name": job["metadata"]["name"]},
            },
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "build",
                        "state": {
                            "terminated": {
                                "exitCode": 2,
                                "reason": "Error",
                                "message": f"reading the model\n{BUILDER_SAYS}\n",
                            }
                        },
                    }
                ],
            },
        }
    )
    world.reconcile()
    built = world.cond("VariantsBuilt")
    assert built["reason"] == "BuildFailed"
    assert BUILDER_SAYS in built["message"]
    assert "(exit 2, bad input: not retried)" in built["message"]
    assert BUILDER_SAYS in world.cond("Ready")["message"]
    failures = [e for e in world.events if e[1] == "BuildFailed"]
    assert len(failures) == 1 and failures[0][0] == "Warning" and BUILDER_SAYS in failures[0][2]
    world.reconcile()
    world.reconcile()
    assert len([e for e in world.events if e[1] == "BuildFailed"]) == 1, "no Event per pass"


def test_the_events_tell_each_phase_once_in_order(world: World) -> None:
    world.reconcile()  # build started
    world.reconcile()
    keys = world.build()
    world.finish_job(world.job("build"), "Complete")
    world.reconcile()  # built; profiling
    world.reconcile()
    for pool in POOLS:
        world.profile(pool, keys)
    world.reconcile()  # profiled, placed, waiting for replicas
    for d in world.kube.of_kind("Deployment", NS):
        world.kube.set_status("Deployment", d["metadata"]["name"], NS, {"readyReplicas": 1})
    world.reconcile()  # serving, Ready
    world.reconcile()
    reasons = [reason for _, reason, _ in world.events]
    assert reasons == [
        "Building",
        "Built",
        "Profiling",
        "Profiled",
        "Planned",
        "WaitingForReplicas",
        "Serving",
        "Ready",
    ], reasons


def test_a_variant_whose_fidelity_drifted_is_planned_around(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    [served] = world.status()["placements"]
    world.kube.set_status(
        "RecModel",
        MODEL,
        NS,
        {
            "driftedVariants": [served["variant"]],
            "lastOptimization": [
                {
                    "time": "2026-11-23T10:00:00Z",
                    "pool": "cpu-pool",
                    "cause": "FidelityDrift",
                    "evidence": "at most 61.0% of candidate pairs ordered as the reference",
                    "action": f"re-plan without variant {served['variant']}",
                    "variant": served["variant"],
                    "outcome": "pending",
                }
            ],
        },
    )
    world.reconcile()
    [now] = world.status()["placements"]
    assert now["variant"] != served["variant"]
    [entry] = world.status()["lastOptimization"]
    assert entry["outcome"].startswith(f"re-planned without {served['variant']} (changed)")
    assert any(reason == "Reoptimized" for _, reason, _ in world.events)


def test_a_damaged_variant_is_reported_and_planned_around_until_it_verifies_again(
    world: World,
) -> None:
    keys = world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    [served] = world.status()["placements"]
    name = served["variant"].removeprefix(f"{MODEL}-")
    model_file = world.layout.variant(keys[name]) / MODEL_FILE
    original = model_file.read_bytes()
    model_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    world.reconcile()
    [now] = world.status()["placements"]
    assert now["variant"] != served["variant"]
    assert world.status()["corruptVariants"] == [served["variant"]]
    assert warnings(world).count("ArtifactCorrupt") == 1
    [message] = [m for _, reason, m in world.events if reason == "ArtifactCorrupt"]
    assert message.startswith(f"{served['variant']}: checksum mismatch") and str(model_file) in (
        message
    )
    world.reconcile()  # still damaged: reported once
    assert warnings(world).count("ArtifactCorrupt") == 1
    model_file.write_bytes(original)
    world.reconcile()
    assert [p["variant"] for p in world.status()["placements"]] == [served["variant"]]
    assert world.status()["corruptVariants"] == []


def test_servers_of_a_compressed_variant_sample_fidelity_against_the_fp32_reference(
    world: World,
) -> None:
    world.built_and_profiled()
    world.reconcile()
    served = {pl["pool"]: pl["variant"] for pl in world.status()["placements"]}
    reference = next(
        mv
        for mv in world.kube.of_kind("ModelVariant", NS)
        if mv["metadata"]["name"].endswith("-fp32")
    )
    checked = set()
    for pool, variant in served.items():
        server = world.kube.find("Deployment", f"{MODEL}-{pool}", NS)
        assert server is not None
        args = server["spec"]["template"]["spec"]["containers"][0]["args"]
        sampling = [a for a in args if a.startswith(("--reference-variant", "--fidelity"))]
        if variant == reference["metadata"]["name"]:
            assert sampling == [], args  # the reference is not compared with itself
        else:
            assert sampling == [
                f"--reference-variant={reference['spec']['artifact']['uri']}",
                "--fidelity-sample-bp=100",  # drift.fidelitySampleBasisPoints' default
            ], args
        checked.add(variant == reference["metadata"]["name"])
    assert False in checked, served  # at least one compressed variant is served


def test_the_fidelity_sample_share_is_the_policy_s(world: World) -> None:
    world.built_and_profiled()

    def sampling() -> set[str]:
        servers = [
            d
            for d in world.kube.of_kind("Deployment", NS)
            if d["metadata"]["labels"][children.COMPONENT_LABEL] == "server"
        ]
        assert servers
        return {
            a
            for d in servers
            for a in d["spec"]["template"]["spec"]["containers"][0]["args"]
            if a.startswith("--fidelity-sample-bp")
        }

    world.edit("OptimizationPolicy", "latency-first", {"drift": {"fidelitySampleBasisPoints": 250}})
    world.reconcile()
    assert sampling() == {"--fidelity-sample-bp=250"}
    world.edit("OptimizationPolicy", "latency-first", {"drift": {"fidelitySampleBasisPoints": 0}})
    world.reconcile()
    assert sampling() == set()  # 0: off


def test_a_rebuild_clears_the_drifted_variants(world: World) -> None:
    world.built_and_profiled()
    world.reconcile()
    world.kube.set_status("RecModel", MODEL, NS, {"driftedVariants": [f"{MODEL}-int8-dynamic"]})
    world.reconcile()
    assert world.status()["driftedVariants"] == [f"{MODEL}-int8-dynamic"]
    world.edit("OptimizationPolicy", "latency-first", {"compression": {"precisions": ["fp32"]}})
    world.reconcile()
    assert world.status()["driftedVariants"] == []


def test_a_pass_over_a_stale_body_does_not_announce_a_phase_again(world: World) -> None:
    import copy

    world.reconcile()
    world.finish_job(world.job("build"), "Failed", "BackoffLimitExceeded")
    stale = copy.deepcopy(world.kube.find("RecModel", MODEL, NS))  # says Building
    world.reconcile()
    assert len([e for e in world.events if e[1] == "BuildFailed"]) == 1
    handlers.recmodel(body=stale)  # the operator's copy lags its own status write
    assert len([e for e in world.events if e[1] == "BuildFailed"]) == 1


def test_servers_get_a_network_policy_unless_the_operator_is_told_not_to(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.built_and_profiled()
    world.reconcile()
    policies = world.kube.of_kind("NetworkPolicy", NS)
    assert sorted(p["metadata"]["name"] for p in policies) == [
        f"{MODEL}-router",
        f"{MODEL}-servers",
    ]
    for policy in policies:
        assert policy["spec"]["podSelector"]["matchLabels"][children.MODEL_LABEL] == MODEL
        world.kube.delete("networking.k8s.io/v1", "NetworkPolicy", policy["metadata"]["name"], NS)
    world.config = replace(world.config, network_policies=False)
    monkeypatch.setitem(handlers._state, "config", world.config)
    world.reconcile()
    assert world.cond("Placed")["status"] == "True"
    assert not world.kube.of_kind("NetworkPolicy", NS)


# -- canary rollouts ------------------------------------------------------------------------


def _serving_then_replanned(world: World, pool: str = "cpu-pool") -> tuple[str, str, str]:
    """The pool serving an uncompressed variant (a 20 bp accuracy budget), its Deployment
    ready; then the budget raised to 100 bp: the next pass moves the pool to the faster
    INT8 variant. Returns the Deployment's name, the old variant's label and its object
    name."""
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": pool}]})
    budget = {"objectives": {"accuracyBudgetBasisPoints": 20}}
    world.edit("OptimizationPolicy", "latency-first", budget)
    world.reconcile()
    [served] = world.status()["placements"]
    name = f"{MODEL}-{pool}"
    _ready(world, name)
    old = world.kube.find("Deployment", name, NS)
    assert old is not None
    label = old["spec"]["template"]["metadata"]["labels"][children.VARIANT_LABEL]
    budget = {"objectives": {"accuracyBudgetBasisPoints": 100}}
    world.edit("OptimizationPolicy", "latency-first", budget)
    return name, label, served["variant"]


def _ready(world: World, name: str) -> None:
    """The Deployment's replicas all updated and ready (what the cluster reports)."""
    dep = world.kube.find("Deployment", name, NS)
    assert dep is not None
    n = int(dep["spec"].get("replicas") or 1)
    status = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": n,
        "updatedReplicas": n,
        "readyReplicas": n,
    }
    world.kube.set_status("Deployment", name, NS, status)


def _promotion_completes(world: World, name: str) -> None:
    """The pool's Deployment has moved: the canary is removed, the share back to 0."""
    _ready(world, name)
    world.reconcile()
    assert world.kube.find("Deployment", f"{name}-canary", NS) is None
    assert world.status()["rollouts"] == []
    assert _weight(world) == 0
    assert any(reason == "CanaryDone" for _, reason, _ in world.events)


def _weight(world: World) -> int:
    cm = world.kube.find("ConfigMap", f"{MODEL}-router-weights", NS)
    assert cm is not None
    return int(json.loads(cm["data"]["weights.json"])["canaryPercent"])


def _variant_label(dep: dict[str, Any] | None) -> str:
    assert dep is not None
    return str(dep["spec"]["template"]["metadata"]["labels"][children.VARIANT_LABEL])


def test_a_serving_pool_moves_to_another_variant_by_canary_then_promotion(world: World) -> None:
    name, old, _ = _serving_then_replanned(world)
    world.reconcile()
    # the pool's Deployment still serves the old variant; the new one runs beside it
    assert _variant_label(world.kube.find("Deployment", name, NS)) == old
    canary = world.kube.find("Deployment", f"{name}-canary", NS)
    assert canary is not None and _variant_label(canary) != old
    assert canary["spec"]["selector"]["matchLabels"][children.TRACK_LABEL] == "canary"
    assert canary["spec"]["template"]["metadata"]["labels"][children.TRACK_LABEL] == "canary"
    [rollout] = world.status()["rollouts"]
    assert (rollout["phase"], rollout["fromVariant"], rollout["weightPercent"]) == (
        "Starting",
        old,
        0,
    )
    assert _weight(world) == 0  # no request to it before the tick's first step
    assert any(reason == "CanaryStarted" for _, reason, _ in world.events)
    router = world.kube.find("Deployment", f"{MODEL}-router", NS)
    assert router is not None
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--weights-config-map={MODEL}-router-weights" in args
    # a second pass while it is analysed changes nothing
    world.reconcile()
    assert _variant_label(world.kube.find("Deployment", name, NS)) == old
    # the tick promotes it: the pool's Deployment moves; the canary serves until it has
    world.kube.set_status(
        "RecModel",
        MODEL,
        NS,
        {"rollouts": [{**rollout, "phase": "Promoting", "weightPercent": 100}]},
    )
    world.reconcile()
    new = _variant_label(canary)
    assert _variant_label(world.kube.find("Deployment", name, NS)) == new
    assert world.kube.find("Deployment", f"{name}-canary", NS) is not None
    assert world.status()["rollouts"][0]["phase"] == "Promoting"
    _promotion_completes(world, name)


def test_a_rolled_back_canary_is_removed_and_the_old_variant_keeps_serving(world: World) -> None:
    name, old, old_object = _serving_then_replanned(world)
    world.reconcile()
    [rollout] = world.status()["rollouts"]
    canary_variant = f"{MODEL}-{rollout['toVariant']}"
    # the tick rolled it back: the new variant is out of the plan, the old one is back
    world.kube.set_status(
        "RecModel",
        MODEL,
        NS,
        {
            "rollouts": [{**rollout, "phase": "RolledBack", "weightPercent": 0}],
            "driftedVariants": [canary_variant],
        },
    )
    world.reconcile()
    assert world.kube.find("Deployment", f"{name}-canary", NS) is None
    assert _variant_label(world.kube.find("Deployment", name, NS)) == old
    assert world.status()["rollouts"] == []
    [placement] = world.status()["placements"]
    assert placement["variant"] == old_object
    # and it is not rolled out again (no loop)
    world.reconcile()
    assert world.kube.find("Deployment", f"{name}-canary", NS) is None


def test_with_canary_off_a_variant_change_updates_the_pool_s_deployment(world: World) -> None:
    world.edit("OptimizationPolicy", "latency-first", {"rollout": {"canary": False}})
    name, old, _ = _serving_then_replanned(world)
    world.reconcile()
    assert world.kube.find("Deployment", f"{name}-canary", NS) is None
    assert _variant_label(world.kube.find("Deployment", name, NS)) != old
    assert world.status()["rollouts"] == []


def test_a_pool_without_ready_replicas_takes_the_new_variant_at_once(world: World) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    [served] = world.status()["placements"]
    name = f"{MODEL}-cpu-pool"
    old = _variant_label(world.kube.find("Deployment", name, NS))
    world.kube.set_status("RecModel", MODEL, NS, {"driftedVariants": [served["variant"]]})
    world.reconcile()  # nothing serves: nothing to protect
    assert world.kube.find("Deployment", f"{name}-canary", NS) is None
    assert _variant_label(world.kube.find("Deployment", name, NS)) != old


def test_the_canary_samples_fidelity_at_the_rollout_s_share(world: World) -> None:
    world.edit(
        "OptimizationPolicy", "latency-first", {"rollout": {"fidelitySampleBasisPoints": 2500}}
    )
    name, _, _ = _serving_then_replanned(world)
    world.reconcile()
    canary = world.kube.find("Deployment", f"{name}-canary", NS)
    assert canary is not None
    args = canary["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(a.startswith("--reference-variant=") for a in args), args  # compressed
    assert "--fidelity-sample-bp=2500" in args, args
    stable = world.kube.find("Deployment", name, NS)
    assert stable is not None
    assert (
        "--fidelity-sample-bp=2500"
        not in stable["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_a_pool_serving_a_drifted_variant_leaves_it_at_once_without_canary(
    world: World,
) -> None:
    world.built_and_profiled()
    world.edit("RecModel", MODEL, {"hardwarePoolRefs": [{"name": "cpu-pool"}]})
    world.reconcile()
    [served] = world.status()["placements"]
    name = f"{MODEL}-cpu-pool"
    _ready(world, name)
    old = _variant_label(world.kube.find("Deployment", name, NS))
    # its ranking departed from the reference: protecting it with a canary makes no sense
    world.kube.set_status("RecModel", MODEL, NS, {"driftedVariants": [served["variant"]]})
    world.reconcile()
    assert world.kube.find("Deployment", f"{name}-canary", NS) is None
    assert _variant_label(world.kube.find("Deployment", name, NS)) != old
    assert world.status()["rollouts"] == []


def test_a_pass_over_a_stale_body_does_not_start_a_canary_again(world: World) -> None:
    import copy

    _serving_then_replanned(world)
    stale = copy.deepcopy(world.kube.find("RecModel", MODEL, NS))  # no rollout yet
    world.reconcile()
    handlers.recmodel(body=stale)  # the operator's copy lags its own status write
    assert [e[1] for e in world.events].count("CanaryStarted") == 1


def test_a_canary_whose_stable_side_drifted_is_promoted_at_once(
    world: World,
) -> None:
    """A data-drift recalibration closed, its successor is being rolled out by canary, and
    then the old variant's own fidelity falls (seen in `recserve bench drift`: the old
    INT8 kept most requests for 80 s more). The tick is told which variant the pool's
    Deployment serves meanwhile; once that variant is known to rank unlike the
    reference, the new variant is promoted without the remaining steps."""
    name, old, old_object = _serving_then_replanned(world)
    world.reconcile()
    [rollout] = world.status()["rollouts"]
    key = handlers._key(NS, MODEL)
    [planned] = handlers._loop()._planned[key]
    to_object = f"{MODEL}-{rollout['toVariant']}"
    assert (planned.serving_variant, planned.variant) == (old_object, to_object)
    assert planned.serving_label == old  # the fidelity the tick reads is the old one's
    at = "2026-12-07T10:00:00Z"
    recalibrated = {
        "time": at,
        "pool": "cpu-pool",
        "cause": "DataDrift",
        "evidence": "PSI of genre 0.8",
        "action": f"recalibrate {old_object} on the recent requests of pool cpu-pool",
        "variant": old_object,
        "recalibration": f"{old}-recal1",
        "outcome": f"recalibrated {old} as {old}-recal1 on 800 recent rows",
    }
    # the old variant serves the rollout's stable side: recalibrated, not wrong, so the
    # canary goes on
    world.kube.set_status(
        "RecModel", MODEL, NS, {"driftedVariants": [old_object], "lastOptimization": [recalibrated]}
    )
    world.reconcile()
    assert world.kube.find("Deployment", f"{name}-canary", NS) is not None
    assert _variant_label(world.kube.find("Deployment", name, NS)) == old
    # then its fidelity falls: the tick's entry names it
    fell = {
        "time": at,
        "pool": "cpu-pool",
        "cause": "FidelityDrift",
        "evidence": "the served variant orders at most 84% of candidate pairs as the reference",
        "action": f"re-plan without variant {old_object}",
        "variant": old_object,
        "outcome": "pending",
    }
    world.kube.set_status("RecModel", MODEL, NS, {"lastOptimization": [recalibrated, fell]})
    world.reconcile()
    # promoted without the remaining steps: the pool's Deployment moves to the new
    # variant, whose canary takes every request until it has
    assert _variant_label(world.kube.find("Deployment", name, NS)) == rollout["toVariant"]
    assert world.kube.find("Deployment", f"{name}-canary", NS) is not None
    [early] = world.status()["rollouts"]
    assert (early["phase"], early["weightPercent"]) == ("Promoting", 100), early
    assert _weight(world) == 100
    assert any(reason == "CanaryPromotedEarly" for _, reason, _ in world.events)
    [planned] = handlers._loop()._planned[key]
    assert (planned.serving_variant, planned.serving_label) == (None, rollout["toVariant"])
    _promotion_completes(world, name)
