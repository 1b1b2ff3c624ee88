"""Standard conditions: stamped with the generation, transition time kept when unchanged."""

from __future__ import annotations

import datetime as dt
from typing import Any

# Reasons are named constants (CamelCase), as the API conventions ask.
REFERENCE_NOT_FOUND = "ReferenceNotFound"
INVALID_SPEC = "InvalidSpec"  # the object's spec is refused by its type (field path in message)
INVALID_REFERENCE = "InvalidReference"  # a referenced policy or pool is refused by its type
BUILDING = "Building"
BUILD_FAILED = "BuildFailed"
BUILT = "Built"
PROFILING = "Profiling"
PROFILE_FAILED = "ProfileFailed"
PROFILED = "Profiled"
PLANNED = "Planned"
WAITING_FOR_REPLICAS = "WaitingForReplicas"
SERVING = "Serving"
READY = "Ready"
NOT_READY = "NotReady"
PAUSED = "Paused"
NODES_MATCHED = "NodesMatched"
NO_MATCHING_NODES = "NoMatchingNodes"
NO_READY_NODES = "NoReadyNodes"
READY_TYPE = "Ready"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new list with ``type_`` set; lastTransitionTime moves only when status changes."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    stamp = old["lastTransitionTime"] if old and old.get("status") == value else now()
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:32000],
        "observedGeneration": generation,
        "lastTransitionTime": stamp,
    }
    return [c for c in conditions if c.get("type") != type_] + [new]


def rejected(raw: dict[str, Any], problems: str) -> dict[str, Any]:
    """The status of an object whose type refuses its body (e.g. one written under an
    older schema): what it had, with Ready=False, reason InvalidSpec, the bad fields named.
    """
    status = dict(raw.get("status") or {})
    generation = (raw.get("metadata") or {}).get("generation")
    conditions = list(status.get("conditions") or [])
    message = f"invalid: {problems}"
    status["conditions"] = set_condition(
        conditions, READY_TYPE, False, INVALID_SPEC, message, generation
    )
    status["observedGeneration"] = generation
    return status


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of ``type_``, if set."""
    return next((cond for cond in conditions if cond.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def same_status(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` would change nothing (status is written only on change)."""
    return (old or {}) == new
