"""The pure parts of `recserve bench drift`: medians with their spread, the false-alarm
rate (only over an hour or more), the canary's share of requests, the side-by-side
watch of a scenario's marks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from recserve_dev.bench.drift import (
    false_alarms_per_hour,
    first_times,
    median_spread,
    share_pct,
)

pytestmark = pytest.mark.unit


def test_median_spread_ignores_unknown_and_infinite_values_but_lists_them() -> None:
    assert median_spread([30.0, None, 10.0, 20.0]) == (20.0, [30.0, None, 10.0, 20.0])
    assert median_spread([12.345, math.inf, 20.0]) == (16.17, [12.35, math.inf, 20.0])
    assert median_spread([None, None]) == (None, [None, None])
    assert median_spread([]) == (None, [])


def test_false_alarms_are_a_rate_only_over_an_hour_or_more() -> None:
    assert false_alarms_per_hour(0, 3599.9) is None  # 0 in an hour needs an hour
    assert false_alarms_per_hour(0, 3600) == 0
    assert false_alarms_per_hour(3, 7200) == 1.5
    assert false_alarms_per_hour(2, 600) is None


def test_share_pct() -> None:
    assert share_pct(7, 100) == 7.0
    assert share_pct(1, 3) == 33.33
    assert share_pct(0, 0) is None


def test_first_times_marks_each_check_when_it_first_holds_not_in_listed_order() -> None:
    """The fidelity scenario's marks: a later-listed check that holds first (the
    recalibration closing before fidelity drift is found) is marked first; waiting for
    the checks one after another marked both at once."""
    polls = {"slow": 0, "fast": 0}

    def after(name: str, n: int) -> Callable[[], int | None]:
        def check() -> int | None:
            polls[name] += 1
            return polls[name] if polls[name] >= n else None

        return check

    marked: list[str] = []
    got = first_times({"slow": after("slow", 4), "fast": after("fast", 2)}, 5, marked.append, 0)
    assert marked == ["fast", "slow"]
    assert got == {"slow": 4, "fast": 2}
    assert polls == {"slow": 4, "fast": 2}  # a check that held is not asked again
    with pytest.raises(AssertionError, match="not seen within 0 s: never"):
        first_times({"never": lambda: None, "now": lambda: 1}, 0, marked.append, 0)
    # an error (the API once away) is asked again, and said if it lasts
    calls = iter([ConnectionError("refused"), None, 7])

    def flaky() -> int | None:
        got = next(calls)
        if isinstance(got, Exception):
            raise got
        return got

    assert first_times({"flaky": flaky}, 5, marked.append, 0) == {"flaky": 7}

    def broken() -> None:
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match=r"broken \(last error ConnectionError: refused\)"):
        first_times({"broken": broken}, 0, marked.append, 0)
