"""Why a build or profile Job failed, in the program's own words. Pure.

The Jobs' containers end with ``terminationMessagePolicy: FallbackToLogsOnError``: when
one fails, the kubelet keeps the end of its log as the container's termination message,
and the CLI's last line there is its one-line error. Exit codes mean something
(``recserve`` exits 2 on bad input): the Job's ``podFailurePolicy`` fails the Job at once
on exit 2 (the same input fails the same way every time) and lets the backoff retry
anything else (a crash, an OOM kill, a lost node).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

BAD_INPUT_EXIT = 2


def pod_failure_policy(container: str) -> dict[str, Any]:
    """A Job's podFailurePolicy: bad input fails the Job at once; a pod disrupted (drain,
    preemption) is not counted against the backoff; the rest is retried."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [BAD_INPUT_EXIT],
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def failed_condition(job: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Job's Failed=True condition, if it has failed."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return dict(cond)
    return None


def job_complete(job: Mapping[str, Any]) -> bool:
    """The Job has a Complete=True condition (it succeeded)."""
    return any(
        cond.get("type") == "Complete" and cond.get("status") == "True"
        for cond in (job.get("status") or {}).get("conditions") or []
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        done = state.get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if done and done.get("exitCode") not in (None, 0):
            return dict(done)
    return None


def job_failure(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> str | None:
    """Why ``job`` failed, None while it has not: the last failed pod's own last line and
    exit code, and whether it was retried; the Job controller's words when no pod says
    more (e.g. its deadline passed)."""
    cond = failed_condition(job)
    if cond is None:
        return None
    failed = [(p, t) for p in pods if (t := _terminated(p)) is not None]
    failed.sort(key=lambda pt: str(pt[1].get("finishedAt") or ""))
    controller = str(cond.get("message") or cond.get("reason") or "failed")
    if not failed:
        return controller
    _, last = failed[-1]
    code = int(last.get("exitCode") or 0)
    said = _last_line(str(last.get("message") or ""))
    if not said:
        said = str(last.get("reason") or "") or f"exited {code}"
    runs = "once" if len(failed) == 1 else f"{len(failed)} times"
    if code == BAD_INPUT_EXIT:
        how = "bad input: not retried"
    elif last.get("reason") == "OOMKilled":
        how = f"killed for memory; failed {runs}"
    elif code >= 128:
        how = f"killed by signal {code - 128}; failed {runs}"
    else:
        how = f"failed {runs}"
    return f"{said} (exit {code}, {how})"
