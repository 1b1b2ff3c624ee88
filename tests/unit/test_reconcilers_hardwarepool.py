"""The HardwarePool reconcile pass against an in-memory Kube: nodes, accelerators,
readiness, status written only on change, and a refused body reported, not raised."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from recserve_operator import handlers
from recserve_operator.api import HardwarePool
from recserve_operator.conditions import find
from recserve_operator.reconcilers.hardwarepool import pool_status
from tests.fakekube import FakeKube
from tests.manifests import example

pytestmark = pytest.mark.unit


def node(name: str, hw: str, ready: bool = True, gpus: int = 0, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"recserve.io/hardware": hw}},
        "spec": spec,
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "4"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(name: str, node_name: str, phase: str = "Running", **resources: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns1"},
        "spec": {"nodeName": node_name, "containers": [{"resources": resources}]},
        "status": {"phase": phase},
    }


@pytest.fixture()
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    fake = FakeKube()
    monkeypatch.setitem(handlers._state, "kube", fake)
    for name in ("gpu-pool", "cpu-pool", "fpga-pool"):
        fake.add(example(name))
    yield fake


def reconcile(kube: FakeKube, name: str) -> dict[str, Any]:
    """One pass through the kopf handler; returns the stored status."""
    handlers.hardwarepool(body=kube.find("HardwarePool", name))
    obj = kube.find("HardwarePool", name)
    assert obj is not None
    return dict(obj.get("status") or {})


def ready(status: dict[str, Any]) -> dict[str, Any]:
    cond = find(status["conditions"], "Ready")
    assert cond is not None
    return cond


def test_counts_matching_ready_nodes_and_accelerators_in_use(kube: FakeKube) -> None:
    kube.add(node("a", "gpu", gpus=8))
    kube.add(node("b", "gpu", ready=False, gpus=8))
    kube.add(node("c", "gpu", gpus=4, unschedulable=True))
    kube.add(node("d", "cpu"))
    kube.add(pod("p1", "a", limits={"nvidia.com/gpu": "3"}))
    kube.add(pod("p2", "a", requests={"nvidia.com/gpu": "1"}))
    kube.add(pod("done", "a", phase="Succeeded", requests={"nvidia.com/gpu": "4"}))
    kube.add(pod("elsewhere", "d", requests={"nvidia.com/gpu": "1"}))
    status = reconcile(kube, "gpu-pool")
    assert (status["nodeCount"], status["readyNodeCount"]) == (3, 1)
    assert (status["allocatable"], status["used"]) == (8, 4)
    assert ready(status)["status"] == "True"
    assert ready(status)["reason"] == "NodesMatched"
    assert ready(status)["observedGeneration"] == 1
    assert "4 of 8 nvidia.com/gpu free" in ready(status)["message"]


def test_cpu_pool_counts_millicores(kube: FakeKube) -> None:
    kube.add(node("c1", "cpu"))
    kube.add(pod("p", "c1", requests={"cpu": "1500m"}))
    status = reconcile(kube, "cpu-pool")
    assert (status["allocatable"], status["used"]) == (4000, 1500)


def test_no_matching_nodes_and_no_ready_nodes_are_told_apart(kube: FakeKube) -> None:
    kube.add(node("g", "gpu", gpus=8))
    status = reconcile(kube, "fpga-pool")
    assert (ready(status)["status"], ready(status)["reason"]) == ("False", "NoMatchingNodes")
    assert status["nodeCount"] == 0
    kube.add(node("f", "fpga", ready=False))
    status = reconcile(kube, "fpga-pool")
    assert ready(status)["reason"] == "NoReadyNodes"
    assert status["nodeCount"] == 1


def test_status_is_written_only_when_it_changes(kube: FakeKube) -> None:
    kube.add(node("a", "gpu", gpus=8))
    first = reconcile(kube, "gpu-pool")
    assert kube.verbs("patch_status") == ["gpu-pool"]
    assert reconcile(kube, "gpu-pool") == first
    assert kube.verbs("patch_status") == ["gpu-pool"]
    kube.add(pod("p", "a", limits={"nvidia.com/gpu": "2"}))
    assert reconcile(kube, "gpu-pool")["used"] == 2
    assert kube.verbs("patch_status") == ["gpu-pool", "gpu-pool"]
    # the transition time moves only when the status does
    assert (
        ready(first)["lastTransitionTime"]
        == ready(reconcile(kube, "gpu-pool"))["lastTransitionTime"]
    )


def test_refused_body_is_reported_with_its_path_and_not_raised(kube: FakeKube) -> None:
    pool = kube.objects[("HardwarePool", None, "gpu-pool")]
    pool["spec"]["maxReplicas"] = -3  # e.g. written before the schema had a minimum
    status = reconcile(kube, "gpu-pool")
    assert (ready(status)["status"], ready(status)["reason"]) == ("False", "InvalidSpec")
    assert "spec.maxReplicas" in ready(status)["message"]
    reconcile(kube, "gpu-pool")
    assert kube.verbs("patch_status") == ["gpu-pool"], "reported once, not in a loop"


def test_pool_status_is_a_pure_function_of_the_typed_pool() -> None:
    pool = HardwarePool.model_validate(example("fpga-pool"))
    status = pool_status(pool, [node("f", "fpga", gpus=0)], [])
    assert status["nodeCount"] == 1 and status["allocatable"] == 0


def test_nodes_whose_taints_the_pool_does_not_tolerate_or_cordoned_do_not_count(
    kube: FakeKube,
) -> None:
    kwok = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
    gpu_taint = {"key": "recserve.io/hardware", "value": "gpu", "effect": "NoSchedule"}
    kube.add(node("fake-cpu", "cpu", taints=[kwok]))
    kube.add(node("cordoned-cpu", "cpu", unschedulable=True))
    kube.add(node("soft-cpu", "cpu", taints=[{"key": "x", "effect": "PreferNoSchedule"}]))
    kube.add(node("gpu-1", "gpu", gpus=2, taints=[gpu_taint]))  # the gpu-pool tolerates it
    cpu = reconcile(kube, "cpu-pool")
    assert (cpu["nodeCount"], cpu["readyNodeCount"]) == (3, 1)
    gpu = reconcile(kube, "gpu-pool")
    assert gpu["readyNodeCount"] == 1
    kube.set_spec("Node", "soft-cpu", None, {"taints": [kwok]})
    assert reconcile(kube, "cpu-pool")["readyNodeCount"] == 0
