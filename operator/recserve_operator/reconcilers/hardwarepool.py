"""HardwarePool: count the nodes its selector matches and their accelerator capacity."""

from __future__ import annotations

from typing import Any

from recserve_operator import conditions as c
from recserve_operator.kube import Kube


def _quantity(value: Any) -> int:
    """Integer units of a resource quantity (cpu in millicores)."""
    text = str(value or "0")
    if text.endswith("m"):
        return int(text[:-1])
    return int(float(text) * 1000) if "." in text else int(text) * 1000


def _units(value: Any, resource: str | None) -> int:
    if resource is None:  # cpu pools: millicores
        return _quantity(value)
    return int(str(value or "0"))


def pool_status(
    pool: dict[str, Any], nodes: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> dict[str, Any]:
    """Status of a pool from the nodes and the pods on them (pure, unit-tested)."""
    spec = pool["spec"]
    selector = spec["nodeSelector"]
    matched = [
        n
        for n in nodes
        if all(n["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
    ]
    ready = [
        n
        for n in matched
        if any(
            cond.get("type") == "Ready" and cond.get("status") == "True"
            for cond in n.get("status", {}).get("conditions", [])
        )
        and not n.get("spec", {}).get("unschedulable")
    ]
    resource = (spec.get("accelerator") or {}).get("name")
    key = resource or "cpu"
    allocatable = sum(
        _units(n.get("status", {}).get("allocatable", {}).get(key), resource) for n in ready
    )
    names = {n["metadata"]["name"] for n in matched}
    used = 0
    for pod in pods:
        if pod.get("spec", {}).get("nodeName") not in names:
            continue
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for container in pod["spec"].get("containers", []):
            requests = container.get("resources", {}).get("requests", {}) or container.get(
                "resources", {}
            ).get("limits", {})
            used += _units(requests.get(key), resource)
    generation = pool["metadata"].get("generation")
    conds = list((pool.get("status") or {}).get("conditions", []))
    if not matched:
        conds = c.set_condition(
            conds,
            "Ready",
            False,
            c.NO_MATCHING_NODES,
            f"no node matches nodeSelector {selector}",
            generation,
        )
    elif not ready:
        conds = c.set_condition(
            conds,
            "Ready",
            False,
            c.NO_READY_NODES,
            f"{len(matched)} nodes match but none is Ready and schedulable",
            generation,
        )
    else:
        conds = c.set_condition(
            conds,
            "Ready",
            True,
            c.NODES_MATCHED,
            f"{len(ready)}/{len(matched)} matching nodes ready; {allocatable - used} of "
            f"{allocatable} {key} free",
            generation,
        )
    return {
        "observedGeneration": generation,
        "nodeCount": len(matched),
        "readyNodeCount": len(ready),
        "allocatable": allocatable,
        "used": used,
        "conditions": conds,
    }


def reconcile_hardwarepool(pool: dict[str, Any], kube: Kube) -> dict[str, Any]:
    """Observe the pool's nodes and write its status when it changed; returns the status."""
    selector = ",".join(f"{k}={v}" for k, v in pool["spec"]["nodeSelector"].items())
    nodes = kube.list("v1", "Node", None, selector)
    pods = kube.list("v1", "Pod", None) if nodes else []
    status = pool_status(pool, nodes, pods)
    if status != (pool.get("status") or {}):
        kube.patch_status("hardwarepools", pool["metadata"]["name"], None, status)
    return status
