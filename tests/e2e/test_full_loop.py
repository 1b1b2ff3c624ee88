"""Applying the examples leads, with no manual step, to a Ready RecModel whose router
answers ranking requests: variants built and measured on real MovieLens data, profiled
on every pool, placed, served by real processes."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.helpers import eventually, helm
from tests.manifests import REPO, example

GROUP, VERSION = "recserve.io", "v1alpha1"
POOLS = ("gpu-pool", "fpga-pool", "cpu-pool")


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
    )  # fmt: skip
    custom = client.CustomObjectsApi(k8s)
    for name in POOLS:
        custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", example(name))
    yield store
    for name in POOLS:
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", name)


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def test_examples_become_a_served_model(
    installed: Path, k8s: client.ApiClient, local_cluster: Any, namespace: str
) -> None:
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    policy = example("latency-first")
    policy["metadata"]["namespace"] = namespace
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    # a child that already exists with our name (not ours yet) is adopted, not an error
    core.create_namespaced_service_account(
        namespace, {"metadata": {"name": "movielens-dlrm-router", "labels": {"team": "x"}}}
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
    eventually(building, timeout=60)
    for pod in core.list_namespaced_pod("recserve-e2e").items:
        core.delete_namespaced_pod(pod.metadata.name, "recserve-e2e")

    def ready() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", "movielens-dlrm"
        )
        cond = _conditions(obj).get("Ready")
        if cond and cond["reason"] in ("BuildFailed", "ProfileFailed", "NoFeasiblePlacement"):
            pytest.fail(f"{cond['reason']}: {cond['message']}")
        return dict(obj) if cond and cond["status"] == "True" else None

    obj = eventually(ready, timeout=1500, interval=3)
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

    router = core.list_namespaced_pod(
        namespace,
        label_selector="recserve.io/model=movielens-dlrm,app.kubernetes.io/component=router",
    ).items[0]
    from recserve_runtime.artifacts import load_manifest
    from recserve_runtime.server.testmodel import rank_bodies

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

    adopted = core.read_namespaced_service_account("movielens-dlrm-router", namespace)
    assert adopted.metadata.owner_references[0].name == "movielens-dlrm"

    cond = eventually(infeasible, timeout=120, interval=2)
    assert cond["status"] == "False" and "within [1, 1] rows" in cond["message"]
    jobs = client.BatchV1Api(k8s).list_namespaced_job(
        namespace, label_selector="app.kubernetes.io/component=build"
    )
    assert len(jobs.items) == 1, "changing objectives re-plans without rebuilding"
