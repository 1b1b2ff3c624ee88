"""The canary rollout's steps, analyses, promotion and rollback (operator/canary.py)."""

from __future__ import annotations

import pytest

from recserve_operator.api.optimizationpolicy import OptimizationPolicy
from recserve_operator.api.recmodel import CanaryPhase, CanaryRollout
from recserve_operator.canary import (
    CanaryMetrics,
    CanaryRules,
    advance,
    analyse,
    router_weight,
)

pytestmark = pytest.mark.unit

T0 = 1_000_000.0


def policy(**rollout: object) -> OptimizationPolicy:
    return OptimizationPolicy.model_validate(
        {
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "objectives": {"p99LatencyTargetMilliseconds": 100},
                "drift": {"fidelityAgreementBasisPoints": 9000},
                "failover": {"pendingDeadlineSeconds": 120},
                "rollout": rollout,
            },
        }
    )


def rules(fidelity: bool = False, **rollout: object) -> CanaryRules:
    return CanaryRules.of(policy(**rollout), fidelity)


def rollout(
    phase: CanaryPhase = CanaryPhase.PROGRESSING, step: int = 0, weight: int = 5
) -> CanaryRollout:
    return CanaryRollout(
        pool="cpu-pool",
        from_variant="old",
        to_variant="new",
        phase=phase,
        step=step,
        weight_percent=weight,
        started="2026-12-06T10:00:00Z",
        step_started="2026-12-06T10:00:00Z",
    )


GOOD = CanaryMetrics(requests=200, errors=0, p99_s=0.040)
BAD = CanaryMetrics(requests=200, errors=20, p99_s=0.040)


def step(
    r: CanaryRollout, rules_: CanaryRules, metrics: CanaryMetrics | None, at: float, ready: int = 1
) -> CanaryRollout:
    return advance(r, rules_, metrics, ready, T0 + at, f"t+{at}", T0, T0).rollout


def test_analysis_passes_fails_or_holds_on_the_canary_s_own_figures() -> None:
    r = rules()
    assert analyse(GOOD, r).passed is True
    assert analyse(BAD, r).passed is False  # 10% errors > 1%
    slow = CanaryMetrics(requests=200, errors=0, p99_s=0.150)
    assert analyse(slow, r).passed is False
    assert "p99 150 ms > 100 ms" in analyse(slow, r).text
    # no evidence holds, never passes
    assert analyse(None, r).passed is None
    assert analyse(CanaryMetrics(requests=5, errors=0, p99_s=0.01), r).passed is None
    assert analyse(CanaryMetrics(requests=200, errors=0, p99_s=None), r).passed is None


def test_503_refusals_are_not_errors_but_the_error_share_is_the_policy_s() -> None:
    # the query counts 5xx but 503; here the share: 2% passes at 300 bp, fails at 100 bp
    two_pct = CanaryMetrics(requests=200, errors=4, p99_s=0.04)
    assert analyse(two_pct, rules(maxErrorRateBasisPoints=300)).passed is True
    assert analyse(two_pct, rules(maxErrorRateBasisPoints=100)).passed is False


def test_min_requests_is_the_policy_s() -> None:
    few = CanaryMetrics(requests=30, errors=0, p99_s=0.04)
    assert analyse(few, rules(minRequests=20)).passed is True
    assert analyse(few, rules(minRequests=50)).passed is None


def test_a_compressed_canary_is_judged_on_its_fidelity_to_the_reference() -> None:
    r = rules(fidelity=True)
    faithful = CanaryMetrics(requests=200, errors=0, p99_s=0.04, fidelity=0.97, fidelity_pairs=900)
    unfaithful = CanaryMetrics(requests=200, errors=0, p99_s=0.04, fidelity=0.6, fidelity_pairs=900)
    unscored = CanaryMetrics(requests=200, errors=0, p99_s=0.04, fidelity=None, fidelity_pairs=0)
    assert analyse(faithful, r).passed is True
    assert analyse(unfaithful, r).passed is False
    assert "fidelity 60.0% < 90.0%" in analyse(unfaithful, r).text
    assert analyse(unscored, r).passed is None  # a pass needs the evidence
    # an FP32 canary has no reference: fidelity is not asked for
    assert analyse(unscored, rules(fidelity=False)).passed is True
    # sampling off: not analysed either
    assert analyse(unscored, rules(fidelity=True, fidelitySampleBasisPoints=0)).passed is True


def test_the_canary_takes_the_first_share_once_its_servers_are_ready() -> None:
    r = rules()
    start = rollout(CanaryPhase.STARTING, step=-1, weight=0)
    assert step(start, r, None, 10, ready=0).phase == CanaryPhase.STARTING
    out = advance(start, r, None, 1, T0 + 10, "t", T0, T0)
    assert (out.rollout.phase, out.rollout.weight_percent, out.rollout.step) == (
        CanaryPhase.PROGRESSING,
        5,
        0,
    )
    assert [reason for _, reason, _ in out.events] == ["CanaryStep"]


def test_servers_never_ready_roll_back_after_the_pending_deadline() -> None:
    start = rollout(CanaryPhase.STARTING, step=-1, weight=0)
    assert step(start, rules(), None, 100, ready=0).phase == CanaryPhase.STARTING
    out = advance(start, rules(), None, 0, T0 + 121, "t", T0, T0)
    assert out.rollout.phase == CanaryPhase.ROLLED_BACK and out.settled
    assert "not ready within 120 s" in out.rollout.message


def test_steps_follow_the_policy_s_weights_and_promote_after_the_last() -> None:
    r = rules(stepWeightsPercent=[10, 50, 100], stepSeconds=30)
    now = rollout(weight=10)
    weights = [now.weight_percent]
    for _ in range(3):
        out = advance(now, r, GOOD, 1, T0 + 30, "t", T0, T0)
        now = out.rollout
        weights.append(now.weight_percent)
    assert weights == [10, 50, 100, 100]
    assert now.phase == CanaryPhase.PROMOTING and out.settled
    assert [reason for _, reason, _ in out.events] == ["CanaryPromoted"]


def test_a_step_is_analysed_only_after_step_seconds() -> None:
    r = rules(stepSeconds=60)
    assert step(rollout(), r, GOOD, 59).weight_percent == 5
    assert step(rollout(), r, GOOD, 60).weight_percent == 10
    assert step(rollout(), rules(stepSeconds=30), GOOD, 30).weight_percent == 10


def test_failures_count_up_to_the_limit_then_roll_back() -> None:
    r = rules(failureLimit=2)
    once = advance(rollout(), r, BAD, 1, T0 + 60, "t", T0, T0)
    assert once.rollout.phase == CanaryPhase.PROGRESSING and once.rollout.failures == 1
    assert once.rollout.weight_percent == 5  # analysed again at the same share
    assert [reason for _, reason, _ in once.events] == ["CanaryAnalysisFailed"]
    twice = advance(once.rollout, r, BAD, 1, T0 + 120, "t", T0, T0 + 60)
    assert twice.rollout.phase == CanaryPhase.ROLLED_BACK and twice.settled
    assert twice.rollout.weight_percent == 0
    assert "rolled back to old" in twice.rollout.message
    # a limit of 1 rolls back on the first failure
    assert step(rollout(), rules(failureLimit=1), BAD, 60).phase == CanaryPhase.ROLLED_BACK


def test_missing_metrics_hold_the_step_and_never_count() -> None:
    held = advance(rollout(), rules(failureLimit=1), None, 1, T0 + 600, "t", T0, T0)
    assert held.rollout.phase == CanaryPhase.PROGRESSING
    assert (held.rollout.failures, held.rollout.weight_percent) == (0, 5)
    assert held.rollout.message.startswith("step 1/5 at 5%: holding")
    assert not held.events


def test_the_routers_share_is_the_slowest_rollout_s() -> None:
    assert router_weight([]) == 0
    assert router_weight([rollout(CanaryPhase.STARTING, -1, 0)]) == 0
    assert router_weight([rollout(weight=25), rollout(weight=5)]) == 5
    assert router_weight([rollout(CanaryPhase.PROMOTING, 4, 100)]) == 100
    assert router_weight([rollout(CanaryPhase.ROLLED_BACK, 0, 0)]) == 0


def test_step_weights_must_increase() -> None:
    with pytest.raises(ValueError, match="must increase"):
        policy(stepWeightsPercent=[10, 10, 100])
    with pytest.raises(ValueError):
        policy(stepWeightsPercent=[0, 100])
