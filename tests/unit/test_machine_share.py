"""The lock that lets an ``alone`` test have the machine to itself under pytest-xdist."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.machine_share import machine_share

pytestmark = pytest.mark.unit


def _holders(folder: Path, *holders: tuple[str, bool, float]) -> list[str]:
    """Start each (name, exclusive, seconds held) 0.1 s after the one before; the order in
    which they went in and out."""
    events: list[str] = []

    def hold(name: str, exclusive: bool, seconds: float) -> None:
        with machine_share(folder, exclusive):
            events.append(f"{name} in")
            time.sleep(seconds)
            events.append(f"{name} out")

    threads = []
    for holder in holders:
        threads.append(threading.Thread(target=hold, args=holder))
        threads[-1].start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    return events


def test_shared_holders_overlap_and_an_exclusive_one_waits_for_them(tmp_path: Path) -> None:
    events = _holders(tmp_path, ("a", False, 0.5), ("b", False, 0.5), ("alone", True, 0.2))
    assert events[:2] == ["a in", "b in"]
    assert events.index("alone in") > max(events.index("a out"), events.index("b out"))


def test_a_waiting_exclusive_holder_goes_before_shared_ones_that_came_after_it(
    tmp_path: Path,
) -> None:
    events = _holders(tmp_path, ("a", False, 0.5), ("alone", True, 0.3), ("late", False, 0.1))
    assert events == ["a in", "a out", "alone in", "alone out", "late in", "late out"]
