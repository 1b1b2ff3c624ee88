"""Accuracy gate, Pareto frontier and the selection rule (pure logic, no I/O).

- Gate: a variant is rejected when its relative AUC drop versus the teacher exceeds the
  policy's budget (basis points; 100 = 1%). Rejected variants stay in the report.
- Pareto frontier over (relative AUC drop, p99 latency at the SLO batch size, size):
  a variant is on it when no other variant is at least as good on all three and
  strictly better on one.
- Selection: among accepted variants, those whose p99 at the SLO batch meets the
  latency target; the lowest p99 wins, ties go to the smaller, then the more accurate.
  When none meets the target, the fastest accepted variant is chosen and the reason
  says so. When none is accepted, nothing is selected.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """What the planner needs to know about one variant."""

    name: str
    auc_drop_rel_pct: float
    p99_us: float
    size_bytes: int


def within_budget(drop_rel_pct: float, budget_basis_points: int) -> bool:
    """True when the relative AUC drop (percent) is within the budget (basis points)."""
    return drop_rel_pct * 100.0 <= budget_basis_points + 1e-9


def _dominates(a: Candidate, b: Candidate) -> bool:
    ka = (a.auc_drop_rel_pct, a.p99_us, a.size_bytes)
    kb = (b.auc_drop_rel_pct, b.p99_us, b.size_bytes)
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb


def pareto_front(cands: list[Candidate]) -> list[str]:
    """Names of the non-dominated candidates, in input order."""
    return [c.name for c in cands if not any(_dominates(o, c) for o in cands if o is not c)]


def select(
    cands: list[Candidate], budget_basis_points: int, p99_target_us: float
) -> tuple[str | None, str]:
    """(selected name or None, reason)."""
    accepted = [c for c in cands if within_budget(c.auc_drop_rel_pct, budget_basis_points)]
    if not accepted:
        return None, f"no variant is within the accuracy budget ({budget_basis_points} bp)"

    def key(c: Candidate) -> tuple[float, int, float]:
        return c.p99_us, c.size_bytes, c.auc_drop_rel_pct

    meeting = [c for c in accepted if c.p99_us <= p99_target_us]
    if meeting:
        best = min(meeting, key=key)
        return best.name, (
            f"lowest p99 ({best.p99_us:.0f} µs) among {len(meeting)} variants within the "
            f"accuracy budget and the {p99_target_us:.0f} µs target"
        )
    best = min(accepted, key=key)
    return best.name, (
        f"no accepted variant meets the {p99_target_us:.0f} µs p99 target; "
        f"fastest accepted ({best.p99_us:.0f} µs)"
    )
