"""Polling: wait for a condition, never for a fixed sleep (tests and benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    check: Callable[[], T],
    timeout: float = 60,
    interval: float = 0.25,
    what: str = "condition",
    state: Callable[[], object] | None = None,
) -> T:
    """Call ``check`` until it returns a truthy value without raising; return that value.

    On timeout, fails naming ``what`` was awaited, with the last exception or the last
    falsy value and, when given, ``state()`` (e.g. the object's status) at that moment.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            message = f"{what} not met within {timeout:g}s; last: {last!r}"
            if state is not None:
                try:
                    message += f"; state: {state()!r}"
                except Exception as exc:
                    message += f"; state unavailable: {exc!r}"
            raise AssertionError(message)
        time.sleep(interval)
