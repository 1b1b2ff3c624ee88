"""kopf handlers: thin wrappers that call plain reconcile functions.

Only startup configuration exists so far; the per-kind reconcilers arrive with the
operator issue.
"""

from __future__ import annotations

from typing import Any

import kopf

from recserve_operator.settings import configure


@kopf.on.startup()  # type: ignore[untyped-decorator,unused-ignore]
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Apply recserve's kopf settings before any watch starts."""
    configure(settings)
