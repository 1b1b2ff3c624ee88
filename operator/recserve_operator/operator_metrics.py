"""The operator's own Prometheus metrics (``/metrics`` on ``--metrics-port``)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

REGISTRY = CollectorRegistry()
DECISIONS = Counter(
    "recserve_operator_scaling_decisions",
    "Autoscaler changes by kind (replicas_up, replicas_down, batch) and reason",
    ["kind", "reason"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "recserve_operator_reconcile_duration_seconds",
    "Time of one reconcile pass or autoscaling tick, by what ran",
    ["what"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
PROMETHEUS_ERRORS = Counter(
    "recserve_operator_prometheus_query_errors",
    "Metric refreshes that got no answer from Prometheus (decisions were held)",
    registry=REGISTRY,
)
HELD = Counter(
    "recserve_operator_scaling_held",
    "Autoscaling ticks that held a pool's replicas because its metrics were unknown",
    registry=REGISTRY,
)


def serve(port: int, host: str = "0.0.0.0") -> bool:
    """Expose the registry over HTTP (a daemon thread); False (and a log line) when the
    port is taken: the operator's work does not depend on its own metrics."""
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        logging.getLogger("recserve.metrics").error("no /metrics on port %d: %s", port, exc)
        return False
    return True
