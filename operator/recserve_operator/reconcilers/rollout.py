"""The reconcile pass's part of a canary rollout: per pool, whether its Deployment takes
the planned variant now, whether a canary Deployment runs beside it, and the rollout
recorded in status (pure). The autoscaling tick moves a rollout through its steps
(:mod:`recserve_operator.canary`); the pass starts it, promotes the pool's Deployment
when the tick says so, and removes the canary when the rollout is over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recserve_operator import children
from recserve_operator.api.recmodel import CanaryPhase, CanaryRollout
from recserve_operator.canary import Event


@dataclass(frozen=True)
class PoolMove:
    """What the pass does for one pool's serving Deployments."""

    apply_stable: bool  # write the pool's Deployment with the planned variant
    canary: bool  # keep (or start) the canary Deployment of the planned variant
    rollout: CanaryRollout | None  # the rollout to keep in status
    events: tuple[Event, ...] = ()


def template_variant(deployment: dict[str, Any] | None) -> str | None:
    """The variant (label value) a Deployment's pods serve."""
    if not deployment:
        return None
    template = (deployment.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    value = labels.get(children.VARIANT_LABEL)
    return str(value) if value else None


def ready_replicas(deployment: dict[str, Any] | None) -> int:
    """Its ready replicas (0 without it)."""
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def rolled_out(deployment: dict[str, Any]) -> bool:
    """The Deployment's last change is complete: every replica updated and ready, no
    old one left (what ``kubectl rollout status`` waits for)."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    want = int(spec.get("replicas") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= generation
        and int(status.get("updatedReplicas") or 0) >= want
        and int(status.get("readyReplicas") or 0) >= want
        and int(status.get("replicas") or 0) <= want
    )


def pool_move(
    pool: str,
    variant: str,
    stable: dict[str, Any] | None,
    rollout: CanaryRollout | None,
    canary_on: bool,
    now: str,
    bad: frozenset[str] = frozenset(),
) -> PoolMove:
    """One pool: ``variant`` is the plan's (its name), ``stable`` the pool's Deployment as
    observed, ``rollout`` the one in status, ``now`` the time (RFC 3339), ``bad`` the
    variants (label values) known to be wrong: drifted from the reference, or corrupt.

    A canary starts only where there is something to protect: a serving Deployment
    (ready replicas) of another variant that is not known to be bad. A new Deployment,
    one with no ready replica, or one serving a bad variant takes the planned variant at
    once (the canary guards against the new variant; leaving a bad one must not wait).
    A rollout whose stable side becomes known bad is promoted at once.
    """
    want = children.dns_name(variant)
    serving = template_variant(stable)
    if rollout is not None and rollout.phase == CanaryPhase.ROLLED_BACK:
        # over: the tick took the variant out of the plan (driftedVariants)
        rollout = None
    moving = (
        canary_on
        and serving is not None
        and serving not in bad
        and ready_replicas(stable) > 0
        and serving != want
    )
    if not moving:
        promoting = rollout is not None and rollout.phase == CanaryPhase.PROMOTING
        if promoting and serving == want and stable is not None and not rolled_out(stable):
            return PoolMove(True, True, rollout)  # the canary serves until the pool has moved
        if (
            rollout is not None
            and not promoting
            and rollout.to_variant == variant
            and serving in bad
            and serving != want
        ):
            # its stable side was found bad meanwhile: the new variant is promoted without
            # the remaining steps, its canary taking every request until the pool's
            # Deployment has moved to it (deleting the canary would leave them all to the
            # bad one while the new pods start)
            message = (
                f"{serving}, the variant the pool served, is known bad: promoting {variant} "
                "without the remaining steps"
            )
            early = rollout.model_copy(
                update={
                    "phase": CanaryPhase.PROMOTING,
                    "weight_percent": 100,
                    "step_started": now,
                    "message": message,
                }
            )
            event = ("Warning", "CanaryPromotedEarly", f"pool {pool}: {message}")
            return PoolMove(True, True, early, (event,))
        events: tuple[Event, ...] = ()
        if promoting and rollout is not None and serving == want:
            events = (("Normal", "CanaryDone", f"pool {pool}: now serving {variant}"),)
        return PoolMove(True, False, None, events)
    if rollout is None or rollout.to_variant != variant:
        rollout = CanaryRollout(
            pool=pool,
            from_variant=serving or "",
            to_variant=variant,
            phase=CanaryPhase.STARTING,
            started=now,
            step_started=now,
            message="starting the new variant's servers beside the current ones",
        )
        started = f"pool {pool}: rolling out {variant} by canary (serving {serving})"
        return PoolMove(False, True, rollout, (("Normal", "CanaryStarted", started),))
    return PoolMove(rollout.phase == CanaryPhase.PROMOTING, True, rollout)
