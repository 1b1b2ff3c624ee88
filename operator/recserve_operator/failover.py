"""Pool failover for replicas that make no progress: which pools to leave out. Pure.

A pool whose nodes are all NotReady, cordoned or tainted is left out by the planner
from the HardwarePool's own status (``readyNodeCount``). This module covers the other
case: Ready nodes that cannot run the model's replicas (Pending on ``Insufficient
memory`` or ``nvidia.com/gpu``, an image that cannot be pulled, a crash loop). The
signal is the server Deployment's own: its ``progressDeadlineSeconds`` is the policy's
``failover.pendingDeadlineSeconds``, and the Deployment controller sets ``Progressing``
to False with reason ``ProgressDeadlineExceeded`` when no replica has become ready for
that long. Such a pool is *held* out of the plan (its share goes to the other pools)
until ``failover.retrySeconds`` have passed or the pool changes (its spec, or its nodes'
count, ready count or allocatable), whichever comes first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class Hold:
    """A pool left out of one model's plan."""

    pool: str
    reason: str
    since: float  # unix seconds
    retry_at: float
    nodes: str  # the pool when held (see :func:`nodes_fingerprint`)


def stalled(deployment: Mapping[str, Any]) -> str | None:
    """The Deployment controller's message when it gave up waiting for progress, else None."""
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "Progressing"
            and cond.get("status") == "False"
            and cond.get("reason") == DEADLINE_EXCEEDED
        ):
            return str(cond.get("message") or DEADLINE_EXCEEDED)
    return None


def nodes_fingerprint(status: Mapping[str, Any] | None, generation: int | None) -> str:
    """What says a HardwarePool changed: its spec (``generation``: a user fixed its
    resources) or its nodes (count, ready count, allocatable; not ``used``: pods that
    come and go on the same nodes, ours among them, do not bring a pool back)."""
    status = status or {}
    return (
        f"nodes={status.get('nodeCount')} ready={status.get('readyNodeCount')} "
        f"allocatable={status.get('allocatable')} generation={generation}"
    )


def why_not_ready(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The first reason a pod gives for not running: the scheduler's (PodScheduled
    False) or a container's waiting reason (ImagePullBackOff, CrashLoopBackOff...)."""
    for pod in pods:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"{cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}"
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                return f"{waiting.get('reason')}: {waiting.get('message') or ''}".rstrip(": ")
    return None


@dataclass(frozen=True)
class HoldUpdate:
    """The holds after an update and what changed, for Events."""

    holds: tuple[Hold, ...]
    held: tuple[Hold, ...]  # new this time
    released: tuple[tuple[Hold, str], ...]  # (hold, why it ended)


def update_holds(
    holds: Iterable[Hold],
    newly_stalled: Mapping[str, str],
    nodes: Mapping[str, str],
    now: float,
    retry_s: float,
) -> HoldUpdate:
    """Holds after this pass: ended ones released (retry time reached, nodes changed, pool
    gone from the model), pools whose Deployment stalled held with ``newly_stalled``'s
    reason. ``nodes``: each of the model's pools' current fingerprint."""
    kept: list[Hold] = []
    released: list[tuple[Hold, str]] = []
    for hold in holds:
        if hold.pool not in nodes:
            released.append((hold, "the pool is no longer one of the model's"))
        elif now >= hold.retry_at:
            released.append((hold, f"retry after {retry_s:.0f} s"))
        elif nodes[hold.pool] != hold.nodes:
            released.append((hold, f"the pool changed ({hold.nodes} -> {nodes[hold.pool]})"))
        else:
            kept.append(hold)
    held_pools = {h.pool for h in kept}
    new = tuple(
        Hold(pool, reason, now, now + retry_s, nodes[pool])
        for pool, reason in sorted(newly_stalled.items())
        if pool not in held_pools and pool in nodes
    )
    return HoldUpdate((*kept, *new), new, tuple(released))
