"""Accuracy gate, Pareto frontier and selection rule (pure logic)."""

from __future__ import annotations

import pytest

from recserve_runtime.builder.selection import Candidate, pareto_front, select, within_budget

pytestmark = pytest.mark.unit


def test_gate_compares_percent_with_basis_points() -> None:
    assert within_budget(0.99, 100)
    assert within_budget(1.0, 100)
    assert not within_budget(1.01, 100)
    assert within_budget(-0.2, 0)  # better than the teacher passes any budget
    assert not within_budget(0.01, 0)


CANDS = [
    Candidate("fp32", 0.0, 1000.0, 100),
    Candidate("int8", 0.1, 400.0, 25),
    Candidate("slow-and-big", 0.2, 1200.0, 200),  # dominated by fp32
    Candidate("student", 0.8, 100.0, 10),
    Candidate("tiny-bad", 3.0, 50.0, 5),  # fastest but over budget
]


def test_pareto_front_drops_dominated() -> None:
    assert pareto_front(CANDS) == ["fp32", "int8", "student", "tiny-bad"]


def test_equal_candidates_do_not_dominate_each_other() -> None:
    a, b = Candidate("a", 0.1, 10.0, 5), Candidate("b", 0.1, 10.0, 5)
    assert pareto_front([a, b]) == ["a", "b"]


def test_selection_fastest_within_budget_and_target() -> None:
    name, reason = select(CANDS, 100, 500.0)
    assert name == "student"
    assert "within the accuracy budget" in reason
    name, _ = select(CANDS, 50, 500.0)  # student now over budget
    assert name == "int8"


def test_selection_when_nothing_meets_latency_target() -> None:
    name, reason = select(CANDS, 50, 10.0)
    assert name == "int8" and "no accepted variant meets" in reason


def test_selection_when_nothing_is_accepted() -> None:
    name, reason = select([Candidate("x", 5.0, 1.0, 1)], 100, 1e9)
    assert name is None and "accuracy budget" in reason


def test_selection_tie_breaks_on_size() -> None:
    cands = [Candidate("big", 0.0, 10.0, 100), Candidate("small", 0.1, 10.0, 50)]
    assert select(cands, 100, 100.0)[0] == "small"
