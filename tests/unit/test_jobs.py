"""Unit tests of recserve_operator.jobs: a failed Job's cause in its program's words."""

from __future__ import annotations

from typing import Any

import pytest

from recserve_operator.jobs import job_failure, pod_failure_policy

pytestmark = pytest.mark.unit

SENTENCE = (
    "error: model file /nonexistent/model.pt does not exist: pass a checkpoint written by "
    "`recserve train`, or a TorchScript file with --feature-spec"
)


def failed_job(reason: str = "PodFailurePolicy") -> dict[str, Any]:
    cond = {"type": "Failed", "status": "True", "reason": reason, "message": f"{reason} hit"}
    return {"status": {"conditions": [cond]}}


def pod(
    code: int, message: str = "", finished: str = "2026-11-23T10:00:00Z", **extra: Any
) -> dict[str, Any]:
    done = {"exitCode": code, "message": message, "finishedAt": finished, **extra}
    return {"status": {"containerStatuses": [{"name": "build", "state": {"terminated": done}}]}}


def test_a_running_job_has_no_failure() -> None:
    assert job_failure({"status": {"active": 1}}, [pod(2, SENTENCE)]) is None


def test_bad_input_is_said_in_the_builders_words_and_not_retried() -> None:
    log = f"loading the model\n{SENTENCE}\n\n"
    assert job_failure(failed_job(), [pod(2, log)]) == (
        f"{SENTENCE} (exit 2, bad input: not retried)"
    )


def test_a_crash_says_how_often_it_was_tried_and_the_last_words() -> None:
    pods = [
        pod(1, "Traceback ...\nRuntimeError: first", "2026-11-23T10:00:00Z"),
        pod(1, "Traceback ...\nRuntimeError: second", "2026-11-23T10:01:00Z"),
    ]
    assert job_failure(failed_job("BackoffLimitExceeded"), pods) == (
        "RuntimeError: second (exit 1, failed 2 times)"
    )


def test_kills_are_named() -> None:
    oom = pod(137, "", reason="OOMKilled")
    assert (
        job_failure(failed_job(), [oom]) == "OOMKilled (exit 137, killed for memory; failed once)"
    )
    assert (
        job_failure(failed_job(), [pod(137)])
        == "exited 137 (exit 137, killed by signal 9; failed once)"
    )


def test_without_pods_the_controller_speaks() -> None:
    assert job_failure(failed_job("DeadlineExceeded"), []) == "DeadlineExceeded hit"


def test_the_policy_fails_bad_input_at_once_and_ignores_disruptions() -> None:
    rules = pod_failure_policy("build")["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "build", "operator": "In", "values": [2]},
    }
    assert rules[1]["action"] == "Ignore"
