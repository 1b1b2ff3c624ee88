"""The real scheduler places accelerator pods on the right simulated nodes."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tests.helpers import eventually

GPU_TOLERATIONS = [
    {"key": "recserve.io/hardware", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
    {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
]


def gpu_deployment(name: str, gpus: int) -> dict[str, Any]:
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
                    "nodeSelector": {"recserve.io/hardware": "gpu", "type": "kwok"},
                    "tolerations": GPU_TOLERATIONS,
                    "containers": [
                        {
                            "name": "server",
                            "image": "recserve-server:test",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def _pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"app={app}").items)


def test_gpu_pod_lands_on_a_gpu_node(k8s: client.ApiClient, namespace: str) -> None:
    client.AppsV1Api(k8s).create_namespaced_deployment(namespace, gpu_deployment("fits", 1))
    core = client.CoreV1Api(k8s)

    def running_pod() -> client.V1Pod | None:
        pods = [p for p in _pods(core, namespace, "fits") if p.status.phase == "Running"]
        return pods[0] if pods else None

    pod = eventually(running_pod, timeout=60)
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["recserve.io/hardware"] == "gpu"
    assert pod.spec.node_name.startswith("sim-gpu-")


def test_pod_asking_for_too_many_gpus_stays_pending_with_reason(
    k8s: client.ApiClient, namespace: str
) -> None:
    client.AppsV1Api(k8s).create_namespaced_deployment(namespace, gpu_deployment("too-big", 64))
    core = client.CoreV1Api(k8s)

    def unschedulable() -> Any:
        for pod in _pods(core, namespace, "too-big"):
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return pod, cond
        return None

    pod, cond = eventually(unschedulable, timeout=60)
    assert pod.status.phase == "Pending"
    assert "Insufficient nvidia.com/gpu" in cond.message
