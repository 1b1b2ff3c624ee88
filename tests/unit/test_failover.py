"""Unit tests of recserve_operator.failover: stalled Deployments, reasons, holds."""

from __future__ import annotations

from typing import Any

import pytest

from recserve_operator.failover import (
    Hold,
    nodes_fingerprint,
    stalled,
    update_holds,
    why_not_ready,
)

pytestmark = pytest.mark.unit


def deployment(reason: str, status: str = "False") -> dict[str, Any]:
    cond = {"type": "Progressing", "status": status, "reason": reason, "message": "timed out"}
    return {"status": {"conditions": [{"type": "Available", "status": "False"}, cond]}}


def test_only_a_passed_progress_deadline_is_a_stall() -> None:
    assert stalled(deployment("ProgressDeadlineExceeded")) == "timed out"
    assert stalled(deployment("ReplicaSetUpdated", "True")) is None
    assert stalled(deployment("NewReplicaSetAvailable", "True")) is None
    assert stalled({"status": {}}) is None


def test_the_reason_is_the_schedulers_or_the_containers() -> None:
    unschedulable = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    pulling = {
        "status": {
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
            ],
        }
    }
    creating = {
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}
    }
    assert why_not_ready([unschedulable]) == (
        "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )
    assert why_not_ready([creating, pulling]) == "ImagePullBackOff: not found"
    assert why_not_ready([creating]) is None


def test_the_fingerprint_is_the_pools_spec_and_nodes_not_its_pods() -> None:
    a = {"nodeCount": 2, "readyNodeCount": 2, "allocatable": 4, "used": 1}
    assert nodes_fingerprint(a, 1) == nodes_fingerprint({**a, "used": 3}, 1)
    assert nodes_fingerprint(a, 1) != nodes_fingerprint({**a, "allocatable": 8}, 1)
    assert nodes_fingerprint(a, 1) != nodes_fingerprint({**a, "readyNodeCount": 1}, 1)
    assert nodes_fingerprint(a, 1) != nodes_fingerprint(a, 2)  # its spec was edited


NODES = {"gpu": "nodes=1 ready=1 allocatable=1", "cpu": "nodes=2 ready=2 allocatable=8000"}


def test_a_stalled_pool_is_held_until_its_retry_time() -> None:
    first = update_holds([], {"gpu": "Insufficient nvidia.com/gpu"}, NODES, 1000.0, 900)
    assert [h.pool for h in first.held] == ["gpu"] and not first.released
    hold = first.holds[0]
    assert (hold.since, hold.retry_at, hold.nodes) == (1000.0, 1900.0, NODES["gpu"])
    # still stalled (its Deployment not deleted yet): one hold, not a second
    again = update_holds(first.holds, {"gpu": "again"}, NODES, 1010.0, 900)
    assert again.holds == first.holds and not again.held
    later = update_holds(again.holds, {}, NODES, 1899.0, 900)
    assert later.holds == first.holds
    retried = update_holds(later.holds, {}, NODES, 1900.0, 900)
    assert not retried.holds
    assert [(h.pool, why) for h, why in retried.released] == [("gpu", "retry after 900 s")]


def test_a_change_of_the_pools_nodes_ends_the_hold_early() -> None:
    held = update_holds([], {"gpu": "Insufficient nvidia.com/gpu"}, NODES, 0.0, 900).holds
    grown = {**NODES, "gpu": "nodes=2 ready=2 allocatable=2"}
    after = update_holds(held, {}, grown, 10.0, 900)
    assert not after.holds
    assert "the pool changed" in after.released[0][1]


def test_a_pool_the_model_no_longer_uses_is_released_and_unknown_pools_are_not_held() -> None:
    hold = Hold("fpga", "x", 0.0, 900.0, "n")
    after = update_holds([hold], {"tpu": "stalled"}, NODES, 1.0, 900)
    assert not after.holds and after.released[0][0] == hold
