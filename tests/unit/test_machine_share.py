"""The lock that lets an ``alone`` test have the machine to itself under pytest-xdist."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.machine_share import machine_share

pytestmark = pytest.mark.unit


def _hold(folder: Path, exclusive: bool, events: list[str], name: str, seconds: float) -> None:
    with machine_share(folder, exclusive):
        events.append(f"{name} in")
        time.sleep(seconds)
        events.append(f"{name} out")


def _start(*args: object) -> threading.Thread:
    thread = threading.Thread(target=_hold, args=args)
    thread.start()
    time.sleep(0.1)  # in this order
    return thread


def test_shared_holders_overlap_and_an_exclusive_one_waits_for_them(tmp_path: Path) -> None:
    events: list[str] = []
    threads = [
        _start(tmp_path, False, events, "a", 0.5),
        _start(tmp_path, False, events, "b", 0.5),
        _start(tmp_path, True, events, "alone", 0.2),
    ]
    for thread in threads:
        thread.join()
    assert events[:2] == ["a in", "b in"]
    assert events.index("alone in") > max(events.index("a out"), events.index("b out"))


def test_a_waiting_exclusive_holder_goes_before_shared_ones_that_came_after_it(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    threads = [
        _start(tmp_path, False, events, "a", 0.5),
        _start(tmp_path, True, events, "alone", 0.3),
        _start(tmp_path, False, events, "late", 0.1),
    ]
    for thread in threads:
        thread.join()
    assert events == ["a in", "a out", "alone in", "alone out", "late in", "late out"]
