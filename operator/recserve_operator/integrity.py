"""Is a variant in the store still what its build wrote?

A variant folder holds ``model.onnx`` and a ``manifest.json`` with its sha256 and size.
Servers check them before they load (and refuse a mismatch: not Ready); the operator
checks the variants it places, so that a damaged artifact is reported and planned around
instead of leaving the model with pods that never become Ready.

Hashing a model is proportional to its size, so a result is kept while the files' size
and modification time stay the same. Damage that leaves both unchanged (bit rot under
the file system) is caught when a placement has pods that are not Ready: those variants
are hashed again, at most once per ``recheck_seconds``. A damaged variant is hashed
again at that pace too, so that one restored in place is planned again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recserve_runtime.artifacts import MANIFEST, IntegrityError, verify

# (name, size, mtime_ns) of each file in the variant folder: unchanged, the verdict stands.
_Stamp = tuple[tuple[str, int, int], ...]


@dataclass
class _Verdict:
    stamp: _Stamp
    problem: str | None
    checked_at: float


class ArtifactChecks:
    """Verdicts on variant folders, kept per folder while its files are unchanged."""

    def __init__(
        self, recheck_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self.hashed = 0  # variant folders hashed (tests read it)
        self._verdicts: dict[Path, _Verdict] = {}

    def problem(self, folder: Path, suspect: bool = False) -> str | None:
        """Why the variant in ``folder`` is not what its manifest says, or None.

        ``suspect``: its servers are not all Ready, so hash again even if the files look
        unchanged (at most once per ``recheck_seconds``)."""
        stamp = _stamp(folder)
        now = self.clock()
        seen = self._verdicts.get(folder)
        if seen is not None and seen.stamp == stamp:
            doubted = suspect or seen.problem is not None  # a damaged one may be restored
            if not doubted or now - seen.checked_at < self.recheck_seconds:
                return seen.problem
        problem: str | None = None
        try:
            self.hashed += 1
            verify(folder)  # reads the manifest itself
        except IntegrityError as exc:
            problem = f"checksum mismatch: {exc}"
        except (OSError, ValueError) as exc:  # a manifest gone or unreadable since it was read
            problem = f"unreadable: {exc}"
        self._verdicts[folder] = _Verdict(stamp, problem, now)
        return problem


def _stamp(folder: Path) -> _Stamp:
    out = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file():
            st = path.stat()
            out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out) or ((MANIFEST, -1, -1),)


# The operator process's verdicts (one store, one process).
STORE_CHECKS = ArtifactChecks()
