"""kwok scale smoke: many fake nodes and pods through the real API server and scheduler."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from recserve_dev.localcluster.nodes import SIMULATED_SHAPE, node_manifest

SCALE_LABEL = "recserve.io/scale-test"


@dataclass(frozen=True)
class ScaleResult:
    """Timings of one scale run, in seconds."""

    nodes: int
    pods: int
    nodes_ready_seconds: float
    pods_running_seconds: float
    cleanup_seconds: float

    def summary(self) -> str:
        return (
            f"kwok scale: {self.nodes} nodes Ready in {self.nodes_ready_seconds:.1f}s, "
            f"{self.pods} pods scheduled and Running in {self.pods_running_seconds:.1f}s, "
            f"cleanup {self.cleanup_seconds:.1f}s"
        )


def _node(i: int) -> dict[str, Any]:
    node = node_manifest(f"scale-{i:05d}", "cpu", SIMULATED_SHAPE, simulated=True)
    node["metadata"]["labels"][SCALE_LABEL] = "true"
    return node


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {SCALE_LABEL: "true"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "c",
                            "image": "fake",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }


def _wait(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(1)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s")


def run_scale(
    api: client.ApiClient, namespace: str, nodes: int, pods: int, timeout: float = 600
) -> ScaleResult:
    """Create ``nodes`` kwok nodes and one Deployment of ``pods`` replicas; time both."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    selector = f"{SCALE_LABEL}=true"
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: core.create_node(_node(i)), range(nodes)))

    def nodes_ready() -> bool:
        items = core.list_node(label_selector=selector).items
        ready = sum(
            1
            for n in items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
        )
        return ready == nodes

    _wait(nodes_ready, timeout, f"{nodes} Ready nodes")
    nodes_ready_s = time.monotonic() - start

    start = time.monotonic()
    apps.create_namespaced_deployment(namespace, _deployment("scale", pods))

    def pods_running() -> bool:
        listed = core.list_namespaced_pod(namespace, label_selector="app=scale")
        return sum(1 for p in listed.items if p.status.phase == "Running") == pods

    _wait(pods_running, timeout, f"{pods} Running pods")
    pods_running_s = time.monotonic() - start

    start = time.monotonic()
    apps.delete_namespaced_deployment("scale", namespace)
    core.delete_collection_node(label_selector=selector)
    cleanup_s = time.monotonic() - start
    return ScaleResult(
        nodes, pods, round(nodes_ready_s, 1), round(pods_running_s, 1), round(cleanup_s, 1)
    )
