"""Prometheus metrics of the server (names documented in docs/serving.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192)


class ServerMetrics:
    """All server metrics on one registry (one per server, so tests can run several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "recserve_requests", "Requests answered, by endpoint and HTTP status code",
            ["endpoint", "code"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "recserve_request_duration_seconds", "Total time in the server per request",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "recserve_queue_duration_seconds", "Time a request waited in the batch queue",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "recserve_compute_duration_seconds", "Model execution time per batch",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "recserve_batch_size_rows", "Rows per executed batch", buckets=BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "recserve_batch_size_requests", "Requests merged per executed batch",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "recserve_queue_depth", "Requests waiting in the batch queue", registry=r
        )
        self.queue_rows = Gauge(
            "recserve_queue_rows", "Rows waiting in the batch queue", registry=r
        )
        self.inflight = Gauge(
            "recserve_inflight_requests", "Requests inside the server (HTTP handlers)", registry=r
        )
        self.batch_limit = Gauge(
            "recserve_batch_limit_rows", "Current adaptive batch row limit (AIMD)", registry=r
        )
        self.rejected = Counter(
            "recserve_rejected", "Requests refused before compute, by reason "
            "(queue_full, slo, deadline, not_ready, draining)", ["reason"], registry=r,
        )  # fmt: skip
        self.ready = Gauge("recserve_ready", "1 when the model is loaded and serving", registry=r)
        self.load_seconds = Gauge(
            "recserve_model_load_seconds", "Time to fetch, verify and open the model", registry=r
        )
        self.load_failures = Counter(
            "recserve_model_load_failures", "Failed model loads by reason "
            "(ChecksumMismatch, ManifestUnreadable, SessionCreateFailed)", ["reason"],
            registry=r,
        )  # fmt: skip
        self.variant_info = Gauge(
            "recserve_variant_info", "The served variant (value 1)",
            ["variant", "sha256", "precision", "hardware", "provider"], registry=r,
        )  # fmt: skip
        self.fidelity_samples = Counter(
            "recserve_fidelity_samples", "Requests sampled for scoring with the FP32 reference, "
            "by outcome (scored, dropped: the scorer was behind, failed)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.fidelity_pairs = Counter(
            "recserve_fidelity_pairs", "Candidate pairs of sampled requests that the "
            "reference variant orders strictly", registry=r,
        )  # fmt: skip
        self.fidelity_agreeing_pairs = Counter(
            "recserve_fidelity_agreeing_pairs", "Of those pairs, the ones the served variant "
            "orders the same way (pairwise order agreement = this / pairs)", registry=r,
        )  # fmt: skip
        self.feature_psi = Gauge(
            "recserve_feature_psi", "Population stability index of an input column against "
            "the training data, over the last window of rows (over 0.25: a significant "
            "shift; the operator's data drift)", ["feature"], registry=r,
        )  # fmt: skip
        self.feature_window_rows = Gauge(
            "recserve_feature_window_rows", "Rows in the last data drift window", registry=r
        )
        self.feature_window_end = Gauge(
            "recserve_feature_window_end_timestamp_seconds",
            "When the last data drift window ended (unix seconds): PSI older than a few "
            "windows describes traffic that is gone", registry=r,
        )  # fmt: skip
        self.feature_sketch_dropped = Counter(
            "recserve_feature_sketch_dropped", "Requests not binned for data drift because "
            "the sketch thread was behind", registry=r,
        )  # fmt: skip
        self.provider_fallback = Gauge(
            "recserve_execution_provider_fallback",
            "1 when the hardware's execution provider was missing and the CPU is used",
            ["hardware", "wanted", "used"], registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
