"""Polling helpers: tests wait for conditions, never for fixed sleeps."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 60, interval: float = 0.25) -> T:
    """Call ``check`` until it returns a truthy value without raising; return that value.

    On timeout, fails with the last exception or the last falsy value.
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
            raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
        time.sleep(interval)


def helm(local_cluster: Any, *args: str) -> str:
    """Run the cached helm against the test cluster; fails the test on a non-zero exit."""
    result = subprocess.run(
        [str(local_cluster.tools.helm), f"--kubeconfig={local_cluster.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
