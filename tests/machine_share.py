"""This machine shared between pytest-xdist workers: most tests share it, a test marked
``alone`` (it measures how fast this machine serves) has it to itself.

A readers-writer lock across processes, from two ``flock``ed files in a folder every
worker sees. The turnstile makes an exclusive holder that is waiting block new shared
holders, so a worker that takes the shared lock test after test cannot starve it.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

TURNSTILE, LOCK = "machine.turnstile", "machine.lock"


@contextlib.contextmanager
def machine_share(folder: Path, exclusive: bool) -> Iterator[None]:
    """Hold the machine, shared or exclusively, for the body of the ``with``."""
    with open(folder / TURNSTILE, "a") as turnstile, open(folder / LOCK, "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:  # an exclusive holder keeps the turnstile until it is done
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
