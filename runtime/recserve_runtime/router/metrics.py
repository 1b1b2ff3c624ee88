"""Prometheus metrics of the router (names in docs/serving.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from recserve_runtime.server.metrics import LATENCY_BUCKETS


class RouterMetrics:
    """All router metrics on one registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "recserve_router_requests", "Requests answered by the router, by HTTP status code",
            ["code"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "recserve_router_request_duration_seconds", "Total time in the router per request",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream = Counter(
            "recserve_router_upstream_requests", "Requests sent to each backend, by outcome",
            ["backend", "outcome"], registry=r,
        )  # fmt: skip
        self.upstream_seconds = Histogram(
            "recserve_router_upstream_duration_seconds", "Backend latency seen by the router",
            ["backend"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ewma = Gauge(
            "recserve_router_backend_latency_ewma_seconds", "Live latency estimate per backend",
            ["backend"], registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            "recserve_router_backend_inflight", "Requests in flight per backend", ["backend"],
            registry=r,
        )  # fmt: skip
        self.healthy = Gauge(
            "recserve_router_backend_healthy", "1 when the backend receives traffic",
            ["backend"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "recserve_router_retries", "Requests retried on another backend", registry=r
        )
        self.canary_percent = Gauge(
            "recserve_router_canary_percent",
            "Share of requests the router sends to canary backends (the weight in force)",
            registry=r,
        )
        self.track_requests = Counter(
            "recserve_router_track_requests",
            "Final answers from a backend, by the track (stable|canary) of that backend",
            ["track"], registry=r,
        )  # fmt: skip
        self.ejections = Counter(
            "recserve_router_ejections", "Backends taken out of rotation", ["backend"], registry=r
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
