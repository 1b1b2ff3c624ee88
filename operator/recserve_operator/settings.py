"""Every kopf setting of the operator, in one commented place.

Applied at startup by :func:`configure`. Values come from environment variables so the
chart can tune them without a new image; each default is chosen for one replica.
"""

from __future__ import annotations

import os
from typing import Any

from recserve_operator.api.common import GROUP

FINALIZER = f"{GROUP}/finalizer"
PROGRESS_ANNOTATION_PREFIX = GROUP


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer number of seconds, got {raw!r}") from None


def configure(settings: Any) -> None:
    """Apply recserve's kopf settings (called from the @kopf.on.startup handler)."""
    import kopf

    # Silently dead watch streams are kopf's most reported production problem: ask the
    # API server to end each watch after a while, and give up on a stuck connection.
    settings.watching.server_timeout = _int_env("RECSERVE_WATCH_SERVER_TIMEOUT_SECONDS", 300)
    settings.watching.client_timeout = _int_env("RECSERVE_WATCH_CLIENT_TIMEOUT_SECONDS", 330)
    settings.watching.connect_timeout = _int_env("RECSERVE_WATCH_CONNECT_TIMEOUT_SECONDS", 30)
    # Back off between retries of failed handlers instead of retrying in a hot loop.
    settings.watching.reconnect_backoff = 1.0
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60, 120, 300)
    # API errors (429, 5xx, resets): kopf retries with these delays and honours Retry-After.
    settings.networking.error_backoffs = (1, 2, 5, 10, 20, 30)
    # On SIGTERM, give running handlers this long, then stop (the chart's grace is 30 s).
    settings.batching.exit_timeout = _int_env("RECSERVE_EXIT_TIMEOUT_SECONDS", 20)
    settings.networking.request_timeout = _int_env("RECSERVE_REQUEST_TIMEOUT_SECONDS", 60)
    # Progress of multi-step handlers lives in annotations on the object itself (survives
    # an operator restart without extra status fields that users might edit).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=PROGRESS_ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PROGRESS_ANNOTATION_PREFIX
    )
    settings.persistence.finalizer = FINALIZER
    # One replica by default (chart: replicas 1, strategy Recreate). For a standby
    # replica, run kopf peering (`--peering`), which lets only one instance act.
    settings.peering.standalone = os.environ.get("RECSERVE_PEERING", "") == ""
    settings.posting.level = 20  # Events for INFO and above
