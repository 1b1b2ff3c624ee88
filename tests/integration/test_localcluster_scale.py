"""kwok simulates nodes at scale; the real scheduler places pods on them."""

from __future__ import annotations

from kubernetes import client

from recserve_dev.localcluster.scale import run_scale


def test_fake_nodes_and_pods_are_scheduled(k8s: client.ApiClient, namespace: str) -> None:
    result = run_scale(k8s, namespace, nodes=50, pods=100, timeout=180)
    print(result.summary())
    assert result.nodes == 50 and result.pods == 100
