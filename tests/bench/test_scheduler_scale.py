"""Benchmark: 1,000 kwok nodes and 2,000 pods through the real scheduler (`make bench`)."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from recserve_dev.localcluster.scale import run_scale

pytestmark = pytest.mark.bench


def test_kwok_1000_nodes_2000_pods(k8s: client.ApiClient, namespace: str) -> None:
    result = run_scale(k8s, namespace, nodes=1000, pods=2000, timeout=900)
    print(result.summary())
    print(
        json.dumps(
            {
                "kwok_nodes": result.nodes,
                "kwok_pods": result.pods,
                "nodes_ready_s": result.nodes_ready_seconds,
                "pods_running_s": result.pods_running_seconds,
            }
        )
    )
    assert result.pods == 2000
