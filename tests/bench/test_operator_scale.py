"""Benchmark: 200 RecModels on 1,000 kwok nodes reach Placed (`make bench`).

The variants are built once (a small synthetic model, profiled for real) and laid into
every model's folder of the artifact store before the models are un-paused, so the run
measures the control loop (references, variants, plan, Deployments, router), not
training. Reports reconcile latency p50/p95 (un-pause to Placed) and the operator's
peak memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from recserve_dev.localcluster.scale import SCALE_LABEL, _node
from recserve_operator.api import GROUP, VERSION, OptimizationPolicy, RecModel
from recserve_operator.children import content_hash
from recserve_runtime.artifacts import BuildReport, ProfileReport, StoreLayout
from tests.manifests import example

pytestmark = pytest.mark.bench
MODELS, NODES = 200, 1000


def _prepare_variant(root: Path) -> tuple[Path, ProfileReport]:
    from recserve_dev.testmodel import write_variant

    variants = root / "template" / "variants"
    folder = write_variant(variants)
    out = root / "template" / "profile.json"
    subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "profile", f"--variants={variants}",
         f"--json={out}", "--seconds=0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder, ProfileReport.read(out)


def test_200_recmodels_on_1000_fake_nodes(
    local_cluster: Any, k8s: client.ApiClient, crds: list[str], namespace: str, tmp_path: Path
) -> None:
    core, custom = client.CoreV1Api(k8s), client.CustomObjectsApi(k8s)
    # Only fake nodes here: cordon the agent's nodes, or the 200 routers would really run.
    local = [
        n.metadata.name for n in core.list_node(label_selector="recserve.io/node-agent=true").items
    ]
    for name in local:
        core.patch_node(name, {"spec": {"unschedulable": True}})
    for i in range(NODES):
        core.create_node(_node(i))
    store = tmp_path / "store"
    folder, profile = _prepare_variant(tmp_path)
    pool = example("cpu-pool")
    pool["metadata"]["name"] = "scale-pool"
    pool["spec"]["nodeSelector"] = {SCALE_LABEL: "true"}
    pool["spec"]["tolerations"] = [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}]
    pool["spec"]["supportedPrecisions"] = ["fp32", "int8"]
    custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
    policy = example("latency-first")
    policy["metadata"]["namespace"] = namespace
    policy["spec"]["autoscaling"]["minReplicas"] = 1
    created_policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    names = [f"m{i:03d}" for i in range(MODELS)]
    for name in names:
        model = example("movielens-dlrm")
        model["metadata"] = {"name": name, "namespace": namespace}
        model["spec"]["hardwarePoolRefs"] = [{"name": "scale-pool"}]
        model["spec"]["paused"] = True
        model["spec"]["traffic"]["expectedRequestsPerSecond"] = 50
        stored = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", model
        )
        digest = content_hash(
            RecModel.model_validate(stored).spec,
            OptimizationPolicy.model_validate(created_policy).spec.compression,
        )
        layout = StoreLayout.of(store, namespace, name, digest)
        shutil.copytree(folder, layout.variant(folder.name))
        profile.write(layout.profile("scale-pool"))
        BuildReport(hardware="cpu", threads=1, model={"synthetic": True}).write(layout.report)

    env = {
        **os.environ,
        "KUBECONFIG": str(local_cluster.admin_kubeconfig),
        "RECSERVE_ARTIFACT_STORE": str(store),
        "RECSERVE_RECONCILE_INTERVAL_SECONDS": "30",
    }
    log = (tmp_path / "operator.log").open("w")
    operator = subprocess.Popen(
        ["recserve-operator", "--liveness=", "-n", namespace], env=env, stdout=log, stderr=log
    )
    try:
        time.sleep(5)  # operator started and watching
        started: dict[str, float] = {}
        for name in names:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "recmodels", name, {"spec": {"paused": False}}
            )
            started[name] = time.monotonic()
        placed: dict[str, float] = {}
        deadline = time.monotonic() + 900
        while len(placed) < MODELS and time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels")
            now = time.monotonic()
            for obj in items["items"]:
                name = obj["metadata"]["name"]
                conds = (obj.get("status") or {}).get("conditions", [])
                if name not in placed and any(
                    c["type"] == "Placed" and c["status"] == "True" for c in conds
                ):
                    placed[name] = now - started[name]
            time.sleep(1)
        peak_kib = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{operator.pid}/status").read_text().splitlines()
                if line.startswith("VmHWM")
            )
        )
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        core.delete_collection_node(label_selector=f"{SCALE_LABEL}=true")
        for name in local:
            core.patch_node(name, {"spec": {"unschedulable": False}})
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", "scale-pool")
    latencies = np.array(sorted(placed.values()))
    result = {
        "recmodels": MODELS,
        "fake_nodes": NODES,
        "placed": len(placed),
        "reconcile_to_placed_p50_s": round(float(np.percentile(latencies, 50)), 2),
        "reconcile_to_placed_p95_s": round(float(np.percentile(latencies, 95)), 2),
        "operator_peak_rss_mib": round(peak_kib / 1024, 1),
    }
    print(json.dumps(result))
    assert len(placed) == MODELS
