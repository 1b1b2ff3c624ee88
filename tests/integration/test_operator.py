"""The operator, installed with the chart, runs as a pod under its own ServiceAccount."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from recserve_dev.localcluster.cluster import ClusterError
from recserve_operator.api import GROUP, VERSION
from tests.helpers import OPERATOR_PODS, eventually, helm, restart_operator
from tests.manifests import REPO, example

CHART = REPO / "charts" / "recserve"


@pytest.fixture(scope="module")
def operator(
    local_cluster: Any,
    k8s: client.ApiClient,
    crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """helm install into its own namespace; yields namespace and ServiceAccount."""
    store = tmp_path_factory.mktemp("store")
    ns = "recserve-system"
    helm(
        local_cluster,
        "install", "recserve", str(CHART), "-n", ns, "--create-namespace",
        "--set", f"artifactStore.uri={store}",
        "--set", "extraEnv[0].name=RECSERVE_RECONCILE_INTERVAL_SECONDS",
        "--set-string", "extraEnv[0].value=2",
        "--set", "logLevel=debug",  # diffs and API requests: tests tie a pod to its work
    )  # fmt: skip
    core = client.CoreV1Api(k8s)

    def running() -> bool:
        pods = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=operator")
        return any(
            c.type == "Ready" and c.status == "True"
            for p in pods.items
            for c in p.status.conditions or []
        )

    eventually(running, timeout=90)
    yield {"namespace": ns, "serviceAccount": "recserve", "store": str(store)}
    # the last test uninstalls it itself
    helm(local_cluster, "uninstall", "recserve", "-n", ns, "--ignore-not-found")
    core.delete_namespace(ns)


def _custom(k8s: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s)


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return None


@pytest.mark.fault(
    "the operator under the chart's ServiceAccount",
    expect="every verb it needs allowed, others denied",
)
def test_rbac_allows_what_the_operator_needs_and_nothing_more(
    local_cluster: Any, operator: dict[str, str]
) -> None:
    who = f"--as=system:serviceaccount:{operator['namespace']}:{operator['serviceAccount']}"

    def can(*args: str) -> bool:
        try:
            return local_cluster.kubectl("auth", "can-i", who, *args).strip() == "yes"
        except ClusterError:
            return False

    for allowed in (
        ("patch", "recmodels.recserve.io/status", "-n", "any"),
        ("create", "jobs.batch", "-n", "any"),
        ("patch", "deployments.apps", "-n", "any"),
        ("list", "nodes"),
        ("create", "modelvariants.recserve.io", "-n", "any"),
        ("patch", "networkpolicies.networking.k8s.io", "-n", "any"),
    ):
        assert can(*allowed), allowed
    for denied in (
        ("delete", "nodes"),
        ("get", "secrets", "-A"),
        ("list", "secrets", "-n", "default"),
        ("*", "*"),
        ("create", "clusterrolebindings"),
        ("update", "customresourcedefinitions"),
    ):
        assert not can(*denied), denied


def test_hardware_pools_report_their_nodes(k8s: client.ApiClient, operator: dict[str, str]) -> None:
    api = _custom(k8s)
    for name in ("gpu-pool", "fpga-pool", "cpu-pool"):
        api.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", example(name))
    try:

        def status(name: str) -> dict[str, Any]:
            return dict(
                api.get_cluster_custom_object(GROUP, VERSION, "hardwarepools", name).get("status")
                or {}
            )

        gpu = eventually(
            lambda: status("gpu-pool").get("nodeCount") and status("gpu-pool"), timeout=60
        )
        # sim-gpu-0, sim-gpu-1 (kwok, 8 GPUs each) and local-gpu (agent, 4 GPUs) match;
        # the example pool does not tolerate kwok's taint, so only local-gpu takes its pods
        assert gpu["nodeCount"] == 3 and gpu["readyNodeCount"] == 1
        assert gpu["allocatable"] == 4
        assert _condition({"status": gpu}, "Ready")["status"] == "True"  # type: ignore[index]
        # a node change no watch of ours sees (a cordon) is counted by the repair loop
        # (every 15 s for pools), with no RecModel in the cluster
        core = client.CoreV1Api(k8s)
        core.patch_node("local-gpu", {"spec": {"unschedulable": True}})
        try:
            eventually(lambda: status("gpu-pool").get("readyNodeCount") == 0, timeout=60)
        finally:
            core.patch_node("local-gpu", {"spec": {"unschedulable": False}})
        eventually(lambda: status("gpu-pool").get("readyNodeCount") == 1, timeout=60)
    finally:
        for name in ("gpu-pool", "fpga-pool", "cpu-pool"):
            api.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", name)


@pytest.mark.fault(
    "a RecModel applied twice, with a missing reference, then a failing build",
    expect="no duplicate Jobs or Events; the builder's reason in the status",
)
def test_missing_reference_then_failed_build_are_reported_without_duplicates(
    k8s: client.ApiClient,
    operator: dict[str, str],
    namespace: str,
    local_cluster: Any,
    measured: Callable[[str], None],
) -> None:
    api = _custom(k8s)
    model = example("movielens-dlrm")
    model["metadata"]["namespace"] = namespace
    model["spec"]["hardwarePoolRefs"] = [{"name": "cpu-only"}]
    model["spec"]["source"] = {
        "uri": str(Path(operator["store"]) / "missing.pt"),
        "format": "torchscript",
        "featureSpecUri": str(Path(operator["store"]) / "spec.yaml"),
    }
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", model)

    def ready_reason() -> str | None:
        obj = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
        )
        cond = _condition(obj, "Ready")
        return f"{cond['reason']}: {cond['message']}" if cond else None

    reason = eventually(ready_reason, timeout=60)
    assert reason.startswith("ReferenceNotFound"), reason
    assert "OptimizationPolicy" in reason and "HardwarePool cpu-only" in reason

    pool = example("cpu-pool")
    pool["metadata"]["name"] = "cpu-only"
    api.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
    policy = example("latency-first")
    policy["metadata"]["namespace"] = namespace
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "optimizationpolicies", policy)
    started = time.monotonic()
    try:
        reason = eventually(
            lambda: (r := ready_reason()) and r.startswith("BuildFailed") and r, timeout=180
        )
        took = time.monotonic() - started
        assert "build Job movielens-dlrm-build-" in reason
        # the builder's own sentence, and why it was not retried (issue 16)
        missing = Path(operator["store"]) / "missing.pt"
        assert f"model file {missing} does not exist" in reason, reason
        assert "(exit 2, bad input: not retried)" in reason, reason
        assert took <= 60, f"BuildFailed after {took:.0f} s"
        batch = client.BatchV1Api(k8s)
        (job_before,) = batch.list_namespaced_job(namespace).items
        assert [c.reason for c in job_before.status.conditions or [] if c.type == "Failed"] == [
            "PodFailurePolicy"
        ]
        job_pods = client.CoreV1Api(k8s).list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job_before.metadata.name}"
        )
        assert len(job_pods.items) == 1, "bad input runs once"
        measured(f"BuildFailed with the builder's sentence {took:.1f} s after the references")

        # restart the operator: it resumes from the cluster's state, creating nothing twice
        core = client.CoreV1Api(k8s)
        new_pod = restart_operator(core, operator["namespace"])
        # the old operator is gone: only the new one can act on a change made now. Traffic
        # is not part of the build's content hash: re-reconciled, not rebuilt.
        edited = api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", "movielens-dlrm",
            {"spec": {"traffic": {"expectedRequestsPerSecond": 4321}}},
        )  # fmt: skip
        generation = edited["metadata"]["generation"]

        def observed() -> dict[str, Any] | None:
            obj = api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
            )
            cond = _condition(obj, "Ready")
            current = cond and cond["observedGeneration"] == generation
            return cond if current and obj["status"]["observedGeneration"] == generation else None

        cond = eventually(
            observed,
            timeout=60,
            what=f"the new operator observing generation {generation}",
            state=lambda: api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
            ).get("status"),
        )
        assert cond["reason"] == "BuildFailed", cond
        jobs = batch.list_namespaced_job(namespace).items
        assert [j.metadata.uid for j in jobs] == [job_before.metadata.uid], "no second build Job"
        assert jobs[0].metadata.owner_references[0].name == "movielens-dlrm"

        # kubectl describe tells the story once: the phases in order, no Event per pass,
        # none again from the new operator (the phase did not change)
        events = sorted(
            core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=movielens-dlrm"
            ).items,
            key=lambda e: e.first_timestamp or e.event_time,
        )
        told = [(e.type, e.reason, e.count or 1) for e in events]
        assert [r for _, r, _ in told if r != "ReferenceNotFound"] == ["Building", "BuildFailed"]
        assert ("Warning", "BuildFailed", 1) in told, told
        # Exactly one BuildFailed Event, count 1: an operator that told it again would add
        # a second or raise the count. Which operator process posted it is not asserted: a
        # CI run once saw the only BuildFailed Event stamped after the edit (kopf posts
        # Events from a queue); the story was still told once.
        pods = core.list_namespaced_pod(operator["namespace"], label_selector=OPERATOR_PODS)
        assert [p.metadata.uid for p in pods.items] == [new_pod.metadata.uid]
    finally:
        api.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", "cpu-only")


@pytest.mark.fault(
    "helm uninstall with a live RecModel and HardwarePool, then both deleted",
    expect="both gone (no finalizer waits on the operator); children garbage-collected",
)
def test_uninstalled_with_live_objects_everything_still_deletes(
    local_cluster: Any,
    k8s: client.ApiClient,
    operator: dict[str, str],
    measured: Callable[[str], None],
) -> None:
    """helm uninstall while RecModels and HardwarePools exist (this module's last test):
    none carries a finalizer of ours, so once the operator is gone they are deleted at
    once. With kopf timers they each carried kopf's finalizer and stayed Terminating until
    it was removed by hand."""
    api, core = _custom(k8s), client.CoreV1Api(k8s)
    ns = "uninstall-live"
    core.create_namespace({"metadata": {"name": ns}})
    pool = example("cpu-pool")
    pool["metadata"]["name"] = "uninstall-pool"
    api.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
    policy = example("latency-first")
    policy["metadata"]["namespace"] = ns
    api.create_namespaced_custom_object(GROUP, VERSION, ns, "optimizationpolicies", policy)
    model = example("movielens-dlrm")
    model["metadata"]["namespace"] = ns
    model["spec"]["paused"] = True
    model["spec"]["hardwarePoolRefs"] = [{"name": "uninstall-pool"}]
    api.create_namespaced_custom_object(GROUP, VERSION, ns, "recmodels", model)

    def get_model() -> dict[str, Any]:
        return dict(
            api.get_namespaced_custom_object(
                GROUP, VERSION, ns, "recmodels", model["metadata"]["name"]
            )
        )

    def get_pool() -> dict[str, Any]:
        return dict(
            api.get_cluster_custom_object(GROUP, VERSION, "hardwarepools", "uninstall-pool")
        )

    # the operator has handled both, and its repair rounds (every 2 s here) ran since
    eventually(lambda: (_condition(get_model(), "Ready") or {}).get("reason") == "Paused", 60)
    eventually(lambda: "readyNodeCount" in (get_pool().get("status") or {}), 60)
    time.sleep(5)
    assert not get_model()["metadata"].get("finalizers"), get_model()["metadata"]
    assert not get_pool()["metadata"].get("finalizers"), get_pool()["metadata"]

    helm(local_cluster, "uninstall", "recserve", "-n", operator["namespace"], "--wait")
    eventually(
        lambda: (
            not core.list_namespaced_pod(operator["namespace"], label_selector=OPERATOR_PODS).items
        ),
        60,
    )  # the operator's pod is gone (it drains for a few seconds)
    started = time.monotonic()
    api.delete_namespaced_custom_object(GROUP, VERSION, ns, "recmodels", model["metadata"]["name"])
    api.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", "uninstall-pool")
    core.delete_namespace(ns)

    def gone() -> bool:
        models = api.list_namespaced_custom_object(GROUP, VERSION, ns, "recmodels")["items"]
        pools = api.list_cluster_custom_object(GROUP, VERSION, "hardwarepools")["items"]
        return not models and all(p["metadata"]["name"] != "uninstall-pool" for p in pools)

    eventually(gone, 15)
    measured(f"RecModel and pool deleted {time.monotonic() - started:.1f} s after the uninstall")
