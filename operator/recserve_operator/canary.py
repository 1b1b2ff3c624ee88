"""Canary rollout of a pool's new variant: step, analyse, promote or roll back (pure).

When the plan moves a serving pool to another variant, the reconcile pass starts the
new variant's servers beside the old ones (a second Deployment, its pods labelled
``recserve.io/track=canary``) and records a :class:`CanaryRollout` in the RecModel's
status. Each autoscaling tick then calls :func:`advance` with the canary's own figures
over the last ``rollout.stepSeconds``: once its servers are ready the router sends it
the first share of requests (``stepWeightsPercent``); after each step an analysis
checks its server errors, its p99 against the SLO and, for a compressed variant, its
fidelity to the FP32 reference; a pass moves to the next share, a failure counts
against ``failureLimit`` and is analysed again a step later, and the last failure rolls
back. Too few requests, or no figures at all, *hold* the step: no evidence is never
success (Flagger and Argo Rollouts count a missing metric as a failure; we hold, so a
Prometheus outage cannot roll back a good variant, and a step is never passed blind).
After the last step the pool's own Deployment is moved to the new variant (the pass
does that, then removes the canary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recserve_operator.api.optimizationpolicy import OptimizationPolicy
from recserve_operator.api.recmodel import CanaryPhase, CanaryRollout

Event = tuple[str, str, str]  # (type, reason, message)


@dataclass(frozen=True)
class CanaryRules:
    """The policy's rollout rules, in plain units."""

    steps: tuple[int, ...]  # percent of requests, increasing
    step_seconds: float
    failure_limit: int
    max_error_rate: float  # share of requests
    min_requests: int
    p99_target_s: float
    min_fidelity: float | None  # None: fidelity is not analysed
    ready_deadline_s: float  # the canary's servers must be ready within this

    @classmethod
    def of(cls, policy: OptimizationPolicy, fidelity_checked: bool) -> CanaryRules:
        """Rules from the policy; ``fidelity_checked``: the canary's servers score a
        share of their requests with the FP32 reference (a compressed variant)."""
        spec = policy.spec
        rollout = spec.rollout
        return cls(
            steps=tuple(rollout.step_weights_percent),
            step_seconds=float(rollout.step_seconds),
            failure_limit=rollout.failure_limit,
            max_error_rate=rollout.max_error_rate_basis_points / 10000,
            min_requests=rollout.min_requests,
            p99_target_s=spec.objectives.p99_latency_target_milliseconds / 1000,
            min_fidelity=(
                spec.drift.fidelity_agreement_basis_points / 10000
                if fidelity_checked and rollout.fidelity_sample_basis_points > 0
                else None
            ),
            ready_deadline_s=float(spec.failover.pending_deadline_seconds),
        )


@dataclass(frozen=True)
class CanaryMetrics:
    """The canary's figures over the analysis window (None: no value in Prometheus)."""

    requests: float  # answered and failed, refusals included
    errors: float  # 5xx other than 503 (the servers' overload refusal)
    p99_s: float | None = None
    fidelity: float | None = None  # pairwise order agreement with the FP32 reference
    fidelity_pairs: float = 0.0  # candidate pairs scored twice (the evidence behind it)


@dataclass(frozen=True)
class Verdict:
    """One analysis: passed (True), failed (False) or held (None), and its figures."""

    passed: bool | None
    text: str


MIN_FIDELITY_PAIRS = 50.0  # fewer pairs scored twice is not evidence of fidelity


def analyse(metrics: CanaryMetrics | None, rules: CanaryRules) -> Verdict:
    """Judge one step's window of the canary's figures against the rules."""
    if metrics is None:
        return Verdict(None, "holding: no figures of the new variant in Prometheus")
    if metrics.requests < rules.min_requests:
        return Verdict(
            None,
            f"holding: {metrics.requests:.0f} requests to the new variant in the window, "
            f"{rules.min_requests} needed",
        )
    error_rate = metrics.errors / metrics.requests
    figures = [f"{metrics.requests:.0f} requests", f"errors {100 * error_rate:.2f}%"]
    failed: list[str] = []
    if error_rate > rules.max_error_rate:
        failed.append(f"errors {100 * error_rate:.2f}% > {100 * rules.max_error_rate:.2f}%")
    if metrics.p99_s is None:
        return Verdict(None, "holding: no p99 of the new variant yet; " + ", ".join(figures))
    figures.append(f"p99 {1000 * metrics.p99_s:.0f} ms")
    if metrics.p99_s > rules.p99_target_s:
        failed.append(f"p99 {1000 * metrics.p99_s:.0f} ms > {1000 * rules.p99_target_s:.0f} ms")
    if rules.min_fidelity is not None:
        if metrics.fidelity is None or metrics.fidelity_pairs < MIN_FIDELITY_PAIRS:
            if not failed:  # a failure stands without it; a pass needs it
                return Verdict(
                    None,
                    f"holding: {metrics.fidelity_pairs:.0f} pairs scored against the "
                    f"reference, {MIN_FIDELITY_PAIRS:.0f} needed; " + ", ".join(figures),
                )
        else:
            figures.append(f"fidelity {100 * metrics.fidelity:.1f}%")
            if metrics.fidelity < rules.min_fidelity:
                failed.append(
                    f"fidelity {100 * metrics.fidelity:.1f}% < {100 * rules.min_fidelity:.1f}%"
                )
    if failed:
        return Verdict(False, "failed: " + "; ".join(failed) + " (" + ", ".join(figures) + ")")
    return Verdict(True, "passed: " + ", ".join(figures))


@dataclass
class Advance:
    """What one tick does to a rollout: its new state and the Events to post."""

    rollout: CanaryRollout
    events: list[Event] = field(default_factory=list)
    settled: bool = False  # promoted or rolled back: the pass acts on the Deployments


def advance(
    rollout: CanaryRollout,
    rules: CanaryRules,
    metrics: CanaryMetrics | None,
    canary_ready: int,
    now: float,
    stamp: str,
    started_at: float,
    step_started_at: float,
) -> Advance:
    """The next state of ``rollout`` at ``now`` (``stamp``: the same time, RFC 3339;
    ``started_at``, ``step_started_at``: its ``started`` and ``stepStarted``, seconds)."""
    r = rollout.model_copy()
    out = Advance(r)
    where = f"pool {r.pool}: {r.to_variant}"
    if r.phase == CanaryPhase.STARTING:
        if canary_ready > 0:
            r.phase, r.step, r.weight_percent = CanaryPhase.PROGRESSING, 0, rules.steps[0]
            r.step_started = stamp
            r.message = f"its servers are ready; {r.weight_percent}% of requests"
            out.events.append(
                ("Normal", "CanaryStep", f"{where}: {r.weight_percent}% of requests (step 1)")
            )
        elif now - started_at > rules.ready_deadline_s:
            r.phase, r.weight_percent = CanaryPhase.ROLLED_BACK, 0
            r.message = (
                f"its servers were not ready within {rules.ready_deadline_s:.0f} s "
                "(failover.pendingDeadlineSeconds)"
            )
            out.settled = True
            out.events.append(("Warning", "CanaryRolledBack", f"{where}: {r.message}"))
        return out
    if r.phase != CanaryPhase.PROGRESSING or now - step_started_at < rules.step_seconds:
        return out
    verdict = analyse(metrics, rules)
    step_text = f"step {r.step + 1}/{len(rules.steps)} at {r.weight_percent}%"
    if verdict.passed is None:
        r.message = f"{step_text}: {verdict.text}"
        return out
    r.step_started = stamp
    if verdict.passed:
        if r.step + 1 >= len(rules.steps):
            r.phase, r.weight_percent = CanaryPhase.PROMOTING, 100
            r.message = f"{step_text}: {verdict.text}; promoting"
            out.settled = True
            out.events.append(("Normal", "CanaryPromoted", f"{where}: {r.message}"))
        else:
            r.step += 1
            r.weight_percent = rules.steps[r.step]
            r.message = f"{step_text}: {verdict.text}; now {r.weight_percent}%"
            out.events.append(("Normal", "CanaryStep", f"{where}: {r.message}"))
        return out
    r.failures += 1
    r.message = f"{step_text}: {verdict.text}; {r.failures}/{rules.failure_limit} failures"
    if r.failures >= rules.failure_limit:
        r.phase, r.weight_percent = CanaryPhase.ROLLED_BACK, 0
        r.message += f"; rolled back to {r.from_variant}"
        out.settled = True
        out.events.append(("Warning", "CanaryRolledBack", f"{where}: {r.message}"))
    else:
        out.events.append(("Warning", "CanaryAnalysisFailed", f"{where}: {r.message}"))
    return out


def router_weight(rollouts: list[CanaryRollout]) -> int:
    """The share of a model's requests its routers send to canary pods: the lowest share
    among its rollouts that send any (two pools rolling out at once move at the pace of
    the slower), 100 while every one is being promoted, 0 without any."""
    live = [
        r.weight_percent
        for r in rollouts
        if r.phase in (CanaryPhase.PROGRESSING, CanaryPhase.PROMOTING)
    ]
    return min(live) if live else 0
