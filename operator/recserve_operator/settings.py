"""Every kopf setting of the operator, in one commented place.

Applied at startup by :func:`configure`. Values come from environment variables so the
chart can tune them without a new image; each default is chosen for one replica.
"""

from __future__ import annotations

import os
from typing import Any

from recserve_operator.api.common import GROUP
from recserve_operator.diffbase import LeanDiffBaseStorage

FINALIZER = f"{GROUP}/finalizer"
PROGRESS_ANNOTATION_PREFIX = GROUP


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


# Threads that run handlers (every reconcile pass is a synchronous handler, mostly
# waiting on API calls): how many RecModels reconcile at once. kopf's default is
# Python's (CPU count + 4, so 6 on two cores), which left 200 models queued for minutes
# behind passes that were waiting on the API server. The same number of threads writes
# a pass's independent objects side by side (Kube.map), and the Kubernetes client keeps
# one connection per thread (handlers.py): this also bounds the operator's connections.
MAX_WORKERS_DEFAULT = 24


def max_workers() -> int:
    """RECSERVE_MAX_WORKERS: handler threads (and kept-alive API connections)."""
    workers = _int_env("RECSERVE_MAX_WORKERS", MAX_WORKERS_DEFAULT)
    if workers < 1:
        raise SystemExit(f"RECSERVE_MAX_WORKERS must be at least 1, got {workers}")
    return workers


def configure(settings: Any) -> None:
    """Apply recserve's kopf settings (called from the @kopf.on.startup handler)."""
    import kopf

    settings.execution.max_workers = max_workers()

    # Silently dead watch streams are kopf's most reported production problem: ask the
    # API server to end each watch after a while, and give up on a stuck connection.
    settings.watching.server_timeout = _int_env("RECSERVE_WATCH_SERVER_TIMEOUT_SECONDS", 300)
    settings.watching.client_timeout = _int_env("RECSERVE_WATCH_CLIENT_TIMEOUT_SECONDS", 330)
    settings.watching.connect_timeout = _int_env("RECSERVE_WATCH_CONNECT_TIMEOUT_SECONDS", 30)
    # Back off between retries of failed handlers instead of retrying in a hot loop.
    settings.watching.reconnect_backoff = 1.0
    settings.queueing.error_delays = (1, 2, 5, 10, 30, 60, 120, 300)
    # API errors (429, 5xx, resets): kopf retries with these delays and honours Retry-After.
    settings.networking.error_backoffs = (1, 2, 5, 10, 20, 30)
    # On SIGTERM, give running handlers this long, then stop (the chart's grace is 30 s).
    settings.queueing.exit_timeout = _int_env("RECSERVE_EXIT_TIMEOUT_SECONDS", 20)
    settings.networking.request_timeout = _int_env("RECSERVE_REQUEST_TIMEOUT_SECONDS", 60)
    # Progress of multi-step handlers lives in annotations on the object itself (survives
    # an operator restart without extra status fields that users might edit).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=PROGRESS_ANNOTATION_PREFIX
    )
    # kopf's annotation storage, with a build that copies only what the essence keeps
    # (diffbase.py: a tenth of the operator's CPU time in a burst of 200 models).
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix=PROGRESS_ANNOTATION_PREFIX)
    settings.persistence.finalizer = FINALIZER
    # One replica by default (chart: strategy Recreate); with more, a Lease elects the one
    # that acts (recserve_operator/leader.py), so kopf's peering stays off.
    settings.peering.standalone = True
    settings.posting.level = 20  # Events for INFO and above
