"""leader.decide: who leads, from what the Lease says (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from recserve_operator.leader import Action, LeaseRecord, decide

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)


def held(holder: str | None, renewed_s_ago: float, duration_s: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, NOW - timedelta(seconds=renewed_s_ago), duration_s, 3)


def test_no_lease_is_created() -> None:
    assert decide(None, "a", NOW) == Action.CREATE


def test_own_lease_is_renewed_even_when_late() -> None:
    assert decide(held("a", 1), "a", NOW) == Action.RENEW
    assert decide(held("a", 100), "a", NOW) == Action.RENEW


def test_a_fresh_lease_of_another_is_waited_on() -> None:
    assert decide(held("b", 0), "a", NOW) == Action.WAIT
    assert decide(held("b", 14.9), "a", NOW) == Action.WAIT


def test_a_lease_not_renewed_for_its_duration_is_taken_over() -> None:
    assert decide(held("b", 15), "a", NOW) == Action.TAKE_OVER
    assert decide(held("b", 5, duration_s=4), "a", NOW) == Action.TAKE_OVER


def test_a_released_lease_is_taken_over_at_once() -> None:
    assert decide(held(None, 0), "a", NOW) == Action.TAKE_OVER
    assert decide(LeaseRecord("", None, 15), "a", NOW) == Action.TAKE_OVER
