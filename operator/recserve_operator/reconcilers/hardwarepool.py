"""HardwarePool: count the nodes its selector matches and their accelerator capacity."""

from __future__ import annotations

from typing import Any

from recserve_operator import conditions as c
from recserve_operator.api.hardwarepool import HardwarePool
from recserve_operator.api.validation import ManifestError
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


def observed_status(pool: HardwarePool) -> dict[str, Any]:
    """The pool's status as the API server holds it (the fields it has, as stored)."""
    if pool.status is None:
        return {}
    return pool.status.model_dump(by_alias=True, exclude_unset=True, mode="json")


def _tolerated(taint: dict[str, Any], pool: HardwarePool) -> bool:
    """Whether the pool's pods tolerate a node's taint (PreferNoSchedule never blocks)."""
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for tol in pool.spec.tolerations:
        if tol.effect is not None and tol.effect.value and tol.effect.value != taint.get("effect"):
            continue
        if tol.operator.value == "Exists" and (not tol.key or tol.key == taint.get("key")):
            return True
        if tol.key == taint.get("key") and tol.value == (taint.get("value") or ""):
            return True
    return False


def pool_status(
    pool: HardwarePool, nodes: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> dict[str, Any]:
    """Status of a pool from the nodes and the pods on them (pure, unit-tested)."""
    spec = pool.spec
    selector = spec.node_selector
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
        and all(_tolerated(taint, pool) for taint in n.get("spec", {}).get("taints") or [])
    ]
    resource = spec.accelerator.name if spec.accelerator is not None else None
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
    generation = pool.generation
    conds = list(observed_status(pool).get("conditions", []))
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


def reconcile_hardwarepool(pool: HardwarePool, kube: Kube) -> dict[str, Any]:
    """Observe the pool's nodes and write its status when it changed; returns the status."""
    selector = ",".join(f"{k}={v}" for k, v in pool.spec.node_selector.items())
    nodes = kube.list("v1", "Node", None, selector)
    pods = kube.list("v1", "Pod", None) if nodes else []
    status = pool_status(pool, nodes, pods)
    if status != observed_status(pool):
        kube.patch_status("hardwarepools", pool.name, None, status)
    return status


def reject_hardwarepool(raw: dict[str, Any], error: ManifestError, kube: Kube) -> dict[str, Any]:
    """A pool body its type refuses: Ready=False, reason InvalidSpec, every bad field
    named (written only when that changes); returns the status."""
    status = c.rejected(raw, error.summary)
    if status != (raw.get("status") or {}):
        kube.patch_status("hardwarepools", str(raw["metadata"]["name"]), None, status)
    return status
