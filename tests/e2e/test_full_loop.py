"""Applying the examples leads, with no manual step, to a Ready RecModel whose router
answers ranking requests: variants built and measured on real MovieLens data, profiled
on every pool, placed, served by real processes."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from recserve_operator.api import GROUP, VERSION
from tests.helpers import (
    OPERATOR_PODS,
    apply_byom_example,
    eventually,
    helm,
    pod_log,
    restart_operator,
)
from tests.manifests import REPO, example

POOLS = ("gpu-pool", "fpga-pool", "cpu-pool")
OPERATOR_NS = "recserve-e2e"

# Time budgets in seconds; the waits below use them and the test's timeout is their sum.
# pytest-timeout counts fixture setup and teardown too, and when this test is the
# session's first it pays for starting the cluster. Measured on 2 cores shared with
# other work (load average 4-9), whole run 546 s: setup 31, building 10, restart 3,
# ready 492 (430 in another run), checks 1, replan 2, teardown 4.
SETUP_S = 180  # cluster start (its own limit: 180), CRDs, helm install, pools, namespace
BUILDING_S = 60  # the operator creates the build Job
RESTART_S = 90  # the old operator pod is gone, a new one is Ready
READY_S = 1000  # build (--quick), profile on 3 pools, place, serve: Ready=True
REPLAN_S = 120  # an infeasible policy is re-planned
CHECKS_S = 60  # API reads, one ranking request
TEARDOWN_S = 60  # namespace, pools, cluster stop
# the namespace's last RecModel deleted: its routers' account goes after two repair rounds
# (3 s each here) without a RecModel
ACCOUNT_GONE_S = 30
TIMEOUT_S = (
    SETUP_S + BUILDING_S + RESTART_S + READY_S + REPLAN_S + CHECKS_S + ACCOUNT_GONE_S + TEARDOWN_S
)


@pytest.fixture(scope="module")
def installed(
    local_cluster: Any,
    k8s: client.ApiClient,
    crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    store = tmp_path_factory.mktemp("e2e-store")
    helm(
        local_cluster,
        "install", "recserve-e2e", str(REPO / "charts" / "recserve"),
        "-n", "recserve-e2e", "--create-namespace",
        "--set", f"artifactStore.uri={store}",
        "--set", "extraEnv[0].name=RECSERVE_RECONCILE_INTERVAL_SECONDS",
        "--set-string", "extraEnv[0].value=3",
        "--set", "extraEnv[1].name=RECSERVE_OPTIMIZE_ARGS",
        "--set-string", "extraEnv[1].value=--quick",
        "--set", "logLevel=debug",  # logs each API request: tests tie a pod to its writes
    )  # fmt: skip
    custom = client.CustomObjectsApi(k8s)
    for name in POOLS:
        custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", example(name))
    yield store
    for name in POOLS:
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", name)
    # the operator goes too: left running, it reconciles the next modules' RecModels
    # from its own artifact store (a second operator creating build Jobs and Events)
    helm(local_cluster, "uninstall", "recserve-e2e", "-n", OPERATOR_NS)
    client.CoreV1Api(k8s).delete_namespace(OPERATOR_NS)


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _summary(obj: dict[str, Any]) -> dict[str, str]:
    """Conditions in one line each, for failure messages."""
    return {t: f"{c['status']} {c['reason']}: {c['message']}" for t, c in _conditions(obj).items()}


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.fault(
    "the operator pod restarted mid-build", expect="the new pod resumes; one build Job; Ready"
)
def test_examples_become_a_served_model(
    installed: Path, k8s: client.ApiClient, local_cluster: Any, namespace: str
) -> None:
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    started = time.monotonic()
    steps: dict[str, float] = {}  # seconds per step, printed at the end

    def step(name: str) -> None:
        steps[name] = round(time.monotonic() - started - sum(steps.values()), 1)

    def status() -> dict[str, Any]:
        """The model's conditions and the operator pods' restarts, for failure messages."""
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
        )
        pods = core.list_namespaced_pod(OPERATOR_NS, label_selector=OPERATOR_PODS).items
        restarts = {
            p.metadata.name: sum(c.restart_count for c in p.status.container_statuses or [])
            for p in pods
        }
        return {"conditions": _summary(obj), "operator pod restarts": restarts}

    policy = example("latency-first")
    policy["metadata"]["namespace"] = namespace
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    # a child that already exists with our name (not ours yet) is adopted, not an error
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "movielens-dlrm-router", "labels": {"team": "x"}},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": "http"}]},
        },
    )
    model = example("movielens-dlrm")
    model["metadata"]["namespace"] = namespace
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", model)

    def building() -> bool:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
        )
        cond = _conditions(obj).get("VariantsBuilt")
        return bool(cond and cond["reason"] == "Building")

    # restart the operator mid-build: it resumes from what it finds, creating nothing twice
    eventually(
        building, timeout=BUILDING_S, interval=1, what="VariantsBuilt=Building", state=status
    )
    step("building")
    batch = client.BatchV1Api(k8s)
    (build_job,) = batch.list_namespaced_job(
        namespace, label_selector="app.kubernetes.io/component=build"
    ).items
    new_pod = restart_operator(core, OPERATOR_NS, timeout=RESTART_S)
    step("restart")

    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
        )
        cond = _conditions(obj).get("Ready")
        if cond and cond["reason"] in ("BuildFailed", "ProfileFailed", "NoFeasiblePlacement"):
            pytest.fail(f"{cond['reason']}: {cond['message']}")
        return dict(obj) if cond and cond["status"] == "True" else None

    # the old operator is gone: only the new pod can move the model on from Building
    obj = eventually(
        ready,
        timeout=READY_S,
        interval=3,
        what="Ready=True after the operator restart (build, profile, place, serve)",
        state=status,
    )
    step("ready")
    status_write = (
        f"PATCH /apis/{GROUP}/{VERSION}/namespaces/{namespace}/recmodels/movielens-dlrm/status"
    )
    assert status_write in pod_log(local_cluster, new_pod), (
        f"the new operator pod {new_pod.metadata.name} never wrote the model's status"
    )
    conds = _conditions(obj)
    for type_ in ("VariantsBuilt", "Profiled", "Placed", "Serving"):
        assert conds[type_]["status"] == "True", conds[type_]
    assert conds["Ready"]["observedGeneration"] == obj["metadata"]["generation"]

    variants = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "modelvariants")[
        "items"
    ]
    assert len(variants) >= 4
    for mv in variants:
        assert mv["metadata"]["ownerReferences"][0]["name"] == "movielens-dlrm"
        assert 0.5 < mv["status"]["auc"] < 1.0, "accuracy measured on held-out MovieLens data"
        assert {p["pool"] for p in mv["status"]["profiles"]} == set(POOLS)
    selected = [mv for mv in variants if mv["status"]["selected"]]
    assert selected and all(mv["status"]["withinBudget"] for mv in selected)

    # server pods run on the nodes of the pools they were placed on
    for placement in obj["status"]["placements"]:
        pods = core.list_namespaced_pod(
            namespace,
            label_selector=f"recserve.io/model=movielens-dlrm,recserve.io/pool={placement['pool']}",
        ).items
        assert pods
        hardware = example(placement["pool"])["spec"]["hardwareType"]
        for pod in pods:
            node = core.read_node(pod.spec.node_name)
            assert node.metadata.labels["recserve.io/hardware"] == hardware

    router = next(  # a Ready one: the model is Ready with one of its router pods
        pod
        for pod in core.list_namespaced_pod(
            namespace,
            label_selector="recserve.io/model=movielens-dlrm,app.kubernetes.io/component=router",
        ).items
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    )
    from recserve_dev.testmodel import rank_bodies
    from recserve_runtime.artifacts import load_manifest

    chosen = selected[0]["spec"]["artifact"]["uri"].removeprefix("/artifacts/")
    body = rank_bodies(load_manifest(installed / chosen), count=1, candidates=64)[0]
    request = urllib.request.Request(
        f"http://{router.status.pod_ip}:8080/v1/rank",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.load(resp)
    scores = [item["score"] for item in answer["items"]] if "items" in answer else answer["scores"]
    assert len(scores) == 64
    assert scores == sorted(scores, reverse=True)

    # a policy no pool can meet: re-planned (no rebuild), Ready=False with the reason
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", "latency-first",
        {"spec": {"autoscaling": {"minBatchSize": 1, "maxBatchSize": 1}}},
    )  # fmt: skip

    def infeasible() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
        )
        cond = _conditions(obj).get("Ready")
        return cond if cond and cond["reason"] == "NoFeasiblePlacement" else None

    adopted = core.read_namespaced_service("movielens-dlrm-router", namespace)
    assert adopted.metadata.owner_references[0].name == "movielens-dlrm"
    assert adopted.spec.selector == {
        "recserve.io/model": "movielens-dlrm",
        "app.kubernetes.io/component": "router",
    }
    routers = core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=router"
    ).items
    assert routers and {p.spec.service_account_name for p in routers} == {"recserve-router"}

    step("checks")
    cond = eventually(
        infeasible,
        timeout=REPLAN_S,
        interval=2,
        what="Ready=False NoFeasiblePlacement after the policy edit",
        state=status,
    )
    step("replan")
    assert cond["status"] == "False" and "within [1, 1] rows" in cond["message"]
    jobs = batch.list_namespaced_job(namespace, label_selector="app.kubernetes.io/component=build")
    assert [j.metadata.uid for j in jobs.items] == [build_job.metadata.uid], (
        "one build Job: the restart resumed it, changing objectives re-planned without rebuilding"
    )
    operators = core.list_namespaced_pod(OPERATOR_NS, label_selector=OPERATOR_PODS).items
    assert [p.metadata.uid for p in operators] == [new_pod.metadata.uid]

    # the namespace's last RecModel goes: the routers' shared account goes after it
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", "movielens-dlrm")

    def account_gone() -> bool:
        try:
            core.read_namespaced_service_account("recserve-router", namespace)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    eventually(account_gone, timeout=ACCOUNT_GONE_S, interval=1, what="the routers' account gone")
    step("account-gone")
    print(f"e2e step seconds: {steps}")


def _ready_or_fail(custom: Any, namespace: str, name: str) -> Any:
    """A probe for ``eventually``: the RecModel when Ready, None before; fails the test at
    once on a terminal reason."""

    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", name)
        cond = _conditions(obj).get("Ready")
        if cond and cond["reason"] in ("BuildFailed", "ProfileFailed", "NoFeasiblePlacement"):
            pytest.fail(f"{cond['reason']}: {cond['message']}")
        return dict(obj) if cond and cond["status"] == "True" else None

    return ready


def _apply_byom(store: Path, k8s: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The bring-your-own example, as a user runs it: its script writes the model and
    the data into the artifact store, then its RecModel (named ``name``) is applied with
    a two-variant policy (the gate and the plan are the same as for more). Returns the
    script's facts (the model's own test AUC)."""
    import subprocess
    import sys

    script = REPO / "examples" / "bring-your-own" / "make_model_and_data.py"
    facts = store / "byom" / "facts.json"
    if not facts.exists():  # one module writes it once (the same seed gives the same files)
        done = subprocess.run(
            [sys.executable, str(script), "--out", str(store / "byom"), "--rows", "20000"],
            capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        facts.write_text(done.stdout.splitlines()[-1])
    apply_byom_example(k8s, namespace, name)
    return dict(json.loads(facts.read_text()))


BYOM_READY_S = 600  # data + model script, build (2 variants), profile on 1 pool, serve


@pytest.mark.timeout(SETUP_S + BYOM_READY_S + CHECKS_S + TEARDOWN_S)
def test_bring_your_own_model_and_data_become_a_served_model(
    installed: Path, k8s: client.ApiClient, namespace: str
) -> None:
    """The bring-your-own example: a TorchScript DeepFM taking (dense_feats, ids) and a
    Parquet data set, both in the artifact store, reach Ready and answer /v1/rank and OIP
    v2 with the model's own input names; accuracy is measured on that data."""
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    name = "byom-deepfm"
    facts = _apply_byom(installed, k8s, namespace, name)
    ready = _ready_or_fail(custom, namespace, name)

    def state() -> dict[str, str]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", name)
        return _summary(obj)

    obj = eventually(ready, timeout=BYOM_READY_S, interval=3, what="Ready=True", state=state)
    variants = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "modelvariants")[
        "items"
    ]
    by_recipe = {mv["spec"]["recipe"]["precision"]: mv for mv in variants}
    assert set(by_recipe) == {"fp32", "int8"}
    # the FP32 variant's AUC is the model's own on the same held-out rows (time split)
    assert abs(by_recipe["fp32"]["status"]["auc"] - facts["model_test_auc"]) < 1e-3
    assert by_recipe["int8"]["status"]["withinBudget"]

    (placement,) = obj["status"]["placements"]
    chosen = next(mv for mv in variants if mv["metadata"]["name"] == placement["variant"])
    from recserve_dev.testmodel import rank_bodies
    from recserve_runtime.artifacts import load_manifest

    manifest = load_manifest(
        installed / chosen["spec"]["artifact"]["uri"].removeprefix("/artifacts/")
    )
    assert [t.name for t in manifest.inputs] == ["ids", "dense_feats"]
    router = core.list_namespaced_pod(
        namespace, label_selector=f"recserve.io/model={name},app.kubernetes.io/component=router"
    ).items[0]
    base = f"http://{router.status.pod_ip}:8080"

    def post(path: str, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            base + path, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.load(resp))

    answer = post("/v1/rank", rank_bodies(manifest, count=1, candidates=32)[0])
    scores = [item["score"] for item in answer["items"]] if "items" in answer else answer["scores"]
    assert len(scores) == 32 and scores == sorted(scores, reverse=True)
    # OIP v2 with the model's own input names; an unseen user id (900) maps to the OOV row
    infer = {
        "inputs": [
            {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [3, 5, 7, 900, 5, 7]},
            {"name": "dense_feats", "shape": [2, 3], "datatype": "FP32", "data": [9.5, 0, 1] * 2},
        ]
    }
    out = post(f"/v2/models/{manifest.name}/infer", json.dumps(infer).encode())
    (score,) = out["outputs"]
    assert score["name"] == "score" and len(score["data"]) == 2
    assert all(0.0 <= s <= 1.0 for s in score["data"])


HA_S = 600  # two replicas up, build, the leader frozen mid-build, takeover, Ready


def _operator_process(pod_name: str) -> int:
    """The pid of the operator running in ``pod_name`` (local control plane pods are
    processes of this machine)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"POD_NAME={pod_name}".encode() in environ and b"recserve-operator" in cmdline:
            return int(proc.name)
    raise AssertionError(f"no operator process for pod {pod_name}")


@pytest.mark.timeout(SETUP_S + HA_S + TEARDOWN_S)
@pytest.mark.fault(
    "the leader of two operator replicas hangs (SIGSTOP) mid-build",
    expect="the standby takes over; one build Job; the thawed leader exits instead of acting",
)
def test_a_standby_operator_takes_over_when_the_leader_hangs_mid_build(
    installed: Path,
    k8s: client.ApiClient,
    local_cluster: Any,
    namespace: str,
    measured: Callable[[str], None],
) -> None:
    """Two operator replicas elect a leader on a Lease; the leader freezes (SIGSTOP: a
    hung or cut-off process, no release) while the build Job runs. The standby pod takes
    the Lease over once it expires and carries the model to Ready, with no second build
    Job; the old leader, thawed, finds the Lease gone and exits instead of acting."""
    import os
    import signal

    helm(
        local_cluster,
        "upgrade", "recserve-e2e", str(REPO / "charts" / "recserve"), "-n", OPERATOR_NS,
        "--reuse-values", "--set", "replicaCount=2", "--set", "leaderElection.enabled=true",
        "--set", "leaderElection.leaseDurationSeconds=6",
    )  # fmt: skip
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    leases = client.CoordinationV1Api(k8s)

    def lease_holder() -> str | None:
        try:
            spec = leases.read_namespaced_lease("recserve-operator", OPERATOR_NS).spec
        except client.ApiException:
            return None
        return spec.holder_identity  # type: ignore[no-any-return]

    def two_up_one_leading() -> str | None:
        pods = core.list_namespaced_pod(OPERATOR_NS, label_selector=OPERATOR_PODS).items
        running = [
            p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        ]
        names = {p.metadata.name for p in running}
        holder = lease_holder()
        leading = holder is not None and holder.rsplit("_", 1)[0] in names
        return holder if len(running) == 2 and leading else None

    first = eventually(two_up_one_leading, timeout=180, interval=1, what="2 replicas, 1 leader")
    _apply_byom(installed, k8s, namespace, "byom-ha")
    batch = client.BatchV1Api(k8s)

    def build_jobs() -> list[Any]:
        return list(
            batch.list_namespaced_job(
                namespace, label_selector="app.kubernetes.io/component=build"
            ).items
        )

    eventually(build_jobs, timeout=120, interval=0.5, what="the leader created the build Job")
    frozen = _operator_process(first.rsplit("_", 1)[0])
    os.kill(frozen, signal.SIGSTOP)
    frozen_at = time.monotonic()

    def taken_over() -> str | None:
        holder = lease_holder()
        return holder if holder not in (None, first) else None

    try:
        second = eventually(taken_over, timeout=60, interval=0.5, what="another leader")
        takeover_s = time.monotonic() - frozen_at
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert second.rsplit("_", 1)[0] != first.rsplit("_", 1)[0], "the standby pod took over"

    def stepped_down() -> bool:
        return (
            not Path(f"/proc/{frozen}").exists()
            or b"zombie" in Path(f"/proc/{frozen}/status").read_bytes().replace(b"(", b"").lower()
        )

    eventually(stepped_down, timeout=30, interval=0.5, what="the thawed old leader exits")

    ready = _ready_or_fail(custom, namespace, "byom-ha")
    eventually(ready, timeout=HA_S - 240, interval=2, what="Ready after the takeover")
    ready_s = time.monotonic() - frozen_at
    jobs = build_jobs()
    assert len(jobs) == 1, [j.metadata.name for j in jobs]
    lease = leases.read_namespaced_lease("recserve-operator", OPERATOR_NS).spec
    assert lease.holder_identity == second and lease.lease_transitions >= 1
    # the lease must run out first (6 s); then a standby retrying every 2 s takes it
    assert takeover_s < 20, f"takeover took {takeover_s:.1f} s (lease 6 s, retry 2 s)"
    measured(
        f"HA: leader {first} frozen; {second} leads after {takeover_s:.1f} s; Ready {ready_s:.1f} s"
    )
