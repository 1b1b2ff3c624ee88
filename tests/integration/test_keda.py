"""KEDA, the peer autoscaler, on the local control plane (docs/keda.md).

A ScaledObject with a Prometheus trigger whose value the test controls (``vector(N)``)
must make the HPA that KEDA creates scale a Deployment to ceil(N / threshold): the whole
chain, KEDA operator -> HPA in kube-controller-manager -> external metrics API through
the aggregation layer -> KEDA's adapter -> gRPC to the operator -> the local Prometheus.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.helpers import eventually

THRESHOLD = 2


@pytest.fixture(scope="module")
def keda_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A control plane of its own, with KEDA (the session cluster runs without it)."""
    from recserve_dev.localcluster.cluster import LocalCluster
    from recserve_dev.localcluster.keda import find_keda_tools
    from recserve_dev.localcluster.tools import ToolsMissing, find_tools

    try:
        keda_tools = find_keda_tools()
    except ToolsMissing as exc:
        pytest.skip(str(exc))
    cluster = LocalCluster(
        Path(tmp_path_factory.mktemp("keda-cluster")),
        find_tools(),
        simulated={"cpu": 1},
        agent=False,
        keda=True,
    )
    assert cluster.keda_tools == keda_tools
    cluster.start(timeout=240)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def api(keda_cluster: Any) -> client.ApiClient:
    from recserve_dev.localcluster.access import api_client, assert_test_cluster

    api = api_client(keda_cluster.admin_kubeconfig)
    assert_test_cluster(api, keda_cluster.state.cluster_id)
    return api


def deployment(name: str) -> dict[str, Any]:
    """One replica on the kwok CPU node (pods there are simulated, not run)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [
                        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [{"name": "server", "image": "recserve-server:test"}],
                },
            },
        },
    }


def scaled_object(name: str, prometheus_url: str, value: int) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": 1,
            "maxReplicaCount": 10,
            "pollingInterval": 5,
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": f"vector({value})",
                        "threshold": str(THRESHOLD),
                    },
                }
            ],
        },
    }


def test_keda_scales_a_deployment_through_the_real_hpa(keda_cluster: Any, api: Any) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    autoscaling = client.AutoscalingV2Api(api)
    ns = f"keda-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    eventually(lambda: core.read_namespaced_service_account("default", ns), timeout=30)
    name = "ranker"
    apps.create_namespaced_deployment(ns, deployment(name))

    def replicas() -> tuple[int, int]:
        """Wanted (what the HPA sets) and created replicas. Not readiness: kwok's nodes
        heartbeat about every 45 s against a 40 s grace period, so their pods flap."""
        dep = apps.read_namespaced_deployment(name, ns)
        return dep.spec.replicas, dep.status.replicas or 0

    def hpa_state() -> object:
        hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{name}", ns)
        pods = core.list_namespaced_pod(ns, label_selector=f"app={name}").items
        phases = sorted(f"{p.metadata.name}:{p.status.phase}:{p.spec.node_name}" for p in pods)
        return {"replicas": replicas(), "pods": phases, "hpa": hpa.status.to_dict()}

    eventually(lambda: replicas() == (1, 1), timeout=60, what="1 replica", state=replicas)

    created = time.monotonic()
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        "keda.sh", "v1alpha1", ns, "scaledobjects",
        scaled_object(name, keda_cluster.state.prometheus_url, 8),
    )  # fmt: skip
    hpa = eventually(
        lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{name}", ns),
        timeout=60,
        what="the HPA KEDA creates",
    )
    metric = hpa.spec.metrics[0].external
    assert metric.target.type == "AverageValue"

    # The external metrics API answers through the aggregation layer with the value.
    path = (
        f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric.metric.name}"
        f"?labelSelector=scaledobject.keda.sh%2Fname%3D{name}"
    )
    items = eventually(
        lambda: json.loads(keda_cluster.kubectl("get", f"--raw={path}"))["items"],
        timeout=60,
        what="the external metric",
    )
    assert float(items[0]["value"]) == 8

    # 8 / threshold 2 -> 4 replicas, set by kube-controller-manager's HPA controller.
    eventually(lambda: replicas() == (4, 4), timeout=120, what="4 replicas", state=hpa_state)
    print(f"KEDA: ScaledObject to 4 replicas in {time.monotonic() - created:.1f}s")

    # It follows the value: 14 / 2 -> 7.
    triggers = scaled_object(name, keda_cluster.state.prometheus_url, 14)["spec"]["triggers"]
    custom.patch_namespaced_custom_object(
        "keda.sh", "v1alpha1", ns, "scaledobjects", name, {"spec": {"triggers": triggers}}
    )
    eventually(lambda: replicas() == (7, 7), timeout=120, what="7 replicas", state=hpa_state)
    status = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", name)
    conditions = {c["type"]: c["status"] for c in status["status"]["conditions"]}
    assert conditions["Ready"] == "True", status["status"]
    core.delete_namespace(ns)
