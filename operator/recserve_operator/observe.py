"""Live serving metrics from Prometheus, per (namespace, RecModel, pool).

The queries are written once, here, and each is asked once per refresh for every model
at once (grouped by namespace, model and pool), so the cost does not grow with the
number of RecModels. Series come from the servers' own ``/metrics``
(``recserve_runtime/server/metrics.py``), scraped with their pod labels mapped onto
series labels (``recserve.io/model`` -> ``recserve_io_model``), as the local control
plane and the Prometheus community chart's ``kubernetes-pods`` job do.

Unknown is never zero: a pool whose servers have not been scraped within
``STALE_AFTER_SCRAPES`` scrape intervals or twice within the fast window (the least
``rate()`` needs), or a Prometheus that does not answer, gives
:class:`Unknown` with the reason, and the autoscaler holds. A pool whose servers are
scraped but that received no request has a known rate of 0.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from recserve_operator.canary import CanaryMetrics

log = logging.getLogger("recserve.observe")

MODEL = "recserve_io_model"
POOL = "recserve_io_pool"
VARIANT = "recserve_io_variant"  # the pod label recserve.io/variant, as a series label
BY = f"namespace, {MODEL}, {POOL}"
STALE_AFTER_SCRAPES = 3
TRACK = "recserve_io_track"  # the pod label recserve.io/track, as a series label
NOT_CANARY = f'{TRACK}!="canary"'  # a pool's own Deployment's pods carry no track label
SERVED = 'endpoint=~"infer|rank", code=~"2.."'
REFUSED = 'endpoint=~"infer|rank", code=~"429|503"'
Key = tuple[str, str, str]  # (namespace, model, pool)


@dataclass(frozen=True)
class Windows:
    """Rate windows: ``fast`` reacts within a few scrapes (bursts), ``stable`` smooths
    (scale-down, batch tuning)."""

    scrape_seconds: float = 5.0
    stable_seconds: float = 60.0

    @property
    def fast_seconds(self) -> float:
        # rate() needs two samples; three scrapes leave room for one missed scrape
        return 3 * self.scrape_seconds

    @property
    def stale_seconds(self) -> float:
        return STALE_AFTER_SCRAPES * self.scrape_seconds

    @property
    def stale_psi_seconds(self) -> float:
        """A data drift window (2,000 rows by default) that ended longer ago than this
        describes traffic that is gone: ten minutes covers a window at a few rows a second."""
        return 600.0


def _range(seconds: float) -> str:
    return f"{max(round(seconds), 1)}s"


def queries(w: Windows) -> dict[str, str]:
    """Every query the autoscaler asks, by name (a result per namespace/model/pool)."""
    fast, stable = _range(w.fast_seconds), _range(w.stable_seconds)

    def rate(metric: str, labels: str, window: str, fn: str = "rate") -> str:
        return f"sum by ({BY}) ({fn}({metric}{{{labels}}}[{window}]))"

    def quantile(q: float, window: str) -> str:
        return (
            f"histogram_quantile({q}, sum by ({BY}, le) "
            f"(rate(recserve_request_duration_seconds_bucket[{window}])))"
        )

    def mean(metric: str, window: str) -> str:
        return f"{rate(metric + '_sum', '', window)} / {rate(metric + '_count', '', window)}"

    return {
        # irate (the last two scrapes): rate() extrapolates a window its samples do not
        # cover (right after a pod starts or Prometheus resumes) into a low reading,
        # 40% of the true rate two scrapes after an outage, measured
        "served_fast": rate("recserve_requests_total", SERVED, fast, "irate"),
        "served_stable": rate("recserve_requests_total", SERVED, stable),
        "refused_fast": rate("recserve_requests_total", REFUSED, fast, "irate"),
        # the busiest server's own rate: what one replica serves when saturated (the
        # pool's rate over its ready pods undercounts right after new pods are ready)
        "served_per_pod_max_fast": (
            f"max by ({BY}) (sum by ({BY}, pod) "
            f"(irate(recserve_requests_total{{{SERVED}}}[{fast}])))"
        ),
        "refused_stable": rate("recserve_requests_total", REFUSED, stable),
        "p99_fast": quantile(0.99, fast),
        "p99_stable": quantile(0.99, stable),
        "p50_stable": quantile(0.5, stable),
        "queue_wait_fast": mean("recserve_queue_duration_seconds", fast),
        # the model call alone, per batch, and the rows it ran (drift detectors)
        "compute_p99_stable": (
            f"histogram_quantile(0.99, sum by ({BY}, le) "
            f"(rate(recserve_compute_duration_seconds_bucket[{stable}])))"
        ),
        "batch_rows_stable": mean("recserve_batch_size_rows", stable),
        "compute_mean_stable": mean("recserve_compute_duration_seconds", stable),
        "batch_rows_fast": mean("recserve_batch_size_rows", fast),
        # fidelity: share of candidate pairs the served variant orders as the FP32
        # reference does, on the sampled requests the servers scored twice; per variant
        # and from the pool's own Deployment only, so a finding names the variant it
        # serves, also while a rollout or a promotion changes it (a canary's pods are
        # judged by the rollout's analysis, canary_queries)
        "fidelity_by_variant": (
            f"sum by ({BY}, {VARIANT}) (rate(recserve_fidelity_agreeing_pairs_total"
            f"{{{NOT_CANARY}}}[{stable}])) / sum by ({BY}, {VARIANT}) "
            f"(rate(recserve_fidelity_pairs_total{{{NOT_CANARY}}}[{stable}]))"
        ),
        # data drift: the largest PSI of each input column over the pool's servers, from
        # windows that ended recently (a gauge keeps its last window after traffic stops)
        "data_psi_by_feature": (
            f"max by ({BY}, feature) (recserve_feature_psi and on (namespace, pod) "
            f"(time() - recserve_feature_window_end_timestamp_seconds < {w.stale_psi_seconds:.0f}))"
        ),
        # what the router finally refused to clients, per model: a request a server
        # refused and the router retried elsewhere is one request, not two (see
        # snapshot_from_results)
        "router_refused_fast": (
            f"sum by (namespace, {MODEL}) "
            f'(irate(recserve_router_requests_total{{code=~"429|503"}}[{fast}]))'
        ),
        "router_refused_stable": (
            f"sum by (namespace, {MODEL}) "
            f'(rate(recserve_router_requests_total{{code=~"429|503"}}[{stable}]))'
        ),
        "router_seen": f"count by (namespace, {MODEL}) (recserve_router_requests_total)",
        "inflight": f"sum by ({BY}) (recserve_inflight_requests)",
        "ready_pods": f"sum by ({BY}) (recserve_ready)",
        # seconds since the pool's servers were last scraped (staleness)
        "scrape_age": f"min by ({BY}) (time() - timestamp(recserve_ready))",
        # scrapes within the fast window: rate() needs two, or an empty rate would read
        # as no requests (e.g. just after a Prometheus outage)
        "fast_samples": f"max by ({BY}) (count_over_time(recserve_ready[{fast}]))",
        # server pods scraped at least twice within the fast window: the pods the fast
        # rates count. A pod Ready a moment ago is not among them (Prometheus applies
        # new targets every 5 s, then needs two scrapes), though the router already
        # sends it requests: the fast rates then read low
        "rated_pods": f"count by ({BY}) (count_over_time(recserve_ready[{fast}]) >= 2)",
    }


@dataclass(frozen=True)
class PoolMetrics:
    """One pool's live figures (rates in requests per second, times in seconds).
    ``None`` where Prometheus has no value (e.g. p99 of a pool without requests)."""

    served_fast: float
    served_stable: float
    refused_fast: float
    refused_stable: float
    ready_pods: int
    p99_fast: float | None = None
    p99_stable: float | None = None
    p50_stable: float | None = None
    queue_wait_fast: float | None = None
    batch_rows_fast: float | None = None
    inflight: float | None = None
    compute_p99_stable: float | None = None
    batch_rows_stable: float | None = None
    compute_mean_stable: float | None = None
    served_per_pod_max_fast: float | None = None
    # server pods whose fast rates count (scraped twice within the window); None: not asked
    rated_pods: int | None = None
    # pairwise order agreement with the FP32 reference per variant (pod label) served by
    # the pool's own Deployment; a variant without a sampled request scored is absent
    fidelity_by_variant: tuple[tuple[str, float], ...] = ()
    # the largest PSI of an input column against the training data, and that column
    # (None: no recent data drift window)
    data_psi: float | None = None
    data_psi_feature: str | None = None

    def fidelity_of(self, variant: str) -> float | None:
        """The agreement of ``variant`` (its pod label), None where none was scored."""
        return dict(self.fidelity_by_variant).get(variant)

    @property
    def demand_fast(self) -> float:
        """Requests per second that arrived (served or refused) over the fast window."""
        return self.served_fast + self.refused_fast

    @property
    def demand_stable(self) -> float:
        return self.served_stable + self.refused_stable


@dataclass(frozen=True)
class Unknown:
    """No trustworthy figures for a pool, and why."""

    reason: str


Observation = PoolMetrics | Unknown


@dataclass(frozen=True)
class Snapshot:
    """The answers of one refresh: every pool Prometheus knows, or the error for all."""

    taken_at: float  # time.time() of the refresh
    pools: dict[Key, PoolMetrics]
    error: str | None = None

    def of(self, namespace: str, model: str, pool: str) -> Observation:
        """One pool's metrics, or why they are unknown."""
        if self.error is not None:
            return Unknown(self.error)
        found = self.pools.get((namespace, model, pool))
        if found is None:
            return Unknown("no fresh series of the pool's servers in Prometheus")
        return found


def _number(sample: dict[str, Any]) -> float | None:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def _pool_key(labels: dict[str, Any]) -> Key | None:
    """A series' (namespace, model, pool), None when a label is missing."""
    key = (labels.get("namespace"), labels.get(MODEL), labels.get(POOL))
    return None if None in key else (str(key[0]), str(key[1]), str(key[2]))


def snapshot_from_results(
    results: dict[str, list[dict[str, Any]]], w: Windows, taken_at: float
) -> Snapshot:
    """Assemble query results (``custom_query`` answers by query name) into pools.

    A pool is known when its servers were scraped within ``w.stale_seconds``; a rate
    missing for a known pool is 0 (no request of that kind), any other missing figure
    is None.
    """
    by_name: dict[str, dict[Key, float | None]] = {}
    per_model: dict[str, dict[tuple[str, str], float]] = {}
    for name in ("router_refused_fast", "router_refused_stable", "router_seen"):
        per_model[name] = {
            (str(s["metric"].get("namespace")), str(s["metric"].get(MODEL))): _number(s) or 0.0
            for s in results.get(name, [])
        }
    fidelity: dict[Key, dict[str, float]] = {}
    for sample in results.get("fidelity_by_variant", []):
        labels = sample.get("metric") or {}
        pool_key, value = _pool_key(labels), _number(sample)
        if pool_key is None or value is None or not labels.get(VARIANT):
            continue
        fidelity.setdefault(pool_key, {})[str(labels[VARIANT])] = value
    worst_psi: dict[Key, tuple[float, str]] = {}
    for sample in results.get("data_psi_by_feature", []):
        labels = sample.get("metric") or {}
        pool_key, value = _pool_key(labels), _number(sample)
        if pool_key is None or value is None:
            continue
        if pool_key not in worst_psi or value > worst_psi[pool_key][0]:
            worst_psi[pool_key] = (value, str(labels.get("feature", "?")))
    for name, samples in results.items():
        if name in per_model or name in ("data_psi_by_feature", "fidelity_by_variant"):
            continue
        values: dict[Key, float | None] = {}
        for sample in samples:
            pool_key = _pool_key(sample.get("metric") or {})
            if pool_key is not None:
                values[pool_key] = _number(sample)
        by_name[name] = values
    pools: dict[Key, PoolMetrics] = {}
    for key, age in by_name.get("scrape_age", {}).items():
        if age is None or age > w.stale_seconds:
            continue
        if "fast_samples" in by_name and (by_name["fast_samples"].get(key) or 0) < 2:
            continue

        def get(name: str, pool: Key = key) -> float | None:
            return by_name.get(name, {}).get(pool)

        def rate(name: str) -> float:
            return max(get(name) or 0.0, 0.0)

        rated = get("rated_pods")
        pools[key] = PoolMetrics(
            served_fast=rate("served_fast"),
            served_stable=rate("served_stable"),
            refused_fast=rate("refused_fast"),
            refused_stable=rate("refused_stable"),
            ready_pods=round(get("ready_pods") or 0.0),
            p99_fast=get("p99_fast"),
            p99_stable=get("p99_stable"),
            p50_stable=get("p50_stable"),
            queue_wait_fast=get("queue_wait_fast"),
            batch_rows_fast=get("batch_rows_fast"),
            inflight=get("inflight"),
            compute_p99_stable=get("compute_p99_stable"),
            batch_rows_stable=get("batch_rows_stable"),
            compute_mean_stable=get("compute_mean_stable"),
            served_per_pod_max_fast=get("served_per_pod_max_fast"),
            rated_pods=None if rated is None else round(rated),
            fidelity_by_variant=tuple(sorted(fidelity.get(key, {}).items())),
            data_psi=worst_psi[key][0] if key in worst_psi else None,
            data_psi_feature=worst_psi[key][1] if key in worst_psi else None,
        )
    return Snapshot(taken_at, _count_refusals_once(pools, per_model))


def _count_refusals_once(
    pools: dict[Key, PoolMetrics], per_model: dict[str, dict[tuple[str, str], float]]
) -> dict[Key, PoolMetrics]:
    """Servers count a request the router retried elsewhere as refused at one and served
    (or refused again) at another; the demand is what arrived at the router. Each pool's
    refusals are scaled so that they add up to what the router finally refused (when the
    router's series are there; otherwise they are counted as the servers saw them)."""
    out = dict(pools)
    for model in {(ns, m) for ns, m, _ in pools}:
        if model not in per_model["router_seen"]:
            continue
        keys = [k for k in pools if (k[0], k[1]) == model]
        for window in ("fast", "stable"):
            refused = sum(getattr(pools[k], f"refused_{window}") for k in keys)
            final = per_model[f"router_refused_{window}"].get(model, 0.0)
            share = min(final / refused, 1.0) if refused > 0 else 1.0
            for k in keys:
                m = out[k]
                out[k] = replace(
                    m, **{f"refused_{window}": getattr(m, f"refused_{window}") * share}
                )
    return out


Query = Callable[[str], list[dict[str, Any]]]


def prometheus_query(url: str, timeout_s: float = 5.0) -> Query:
    """``custom_query`` of prometheus-api-client against ``url`` (no retries: the next
    refresh is the retry, and a hung Prometheus must not stall the autoscaler)."""
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    connection = PrometheusConnect(
        url=url, disable_ssl=True, timeout=max(1, round(timeout_s)), retry=Retry(total=0)
    )

    def ask(query: str) -> list[dict[str, Any]]:
        return list(connection.custom_query(query))

    return ask


class MetricsCache:
    """The latest :class:`Snapshot`, refreshed at most once per ``refresh_seconds``
    whoever asks (one set of queries per tick for all RecModels), thread-safe."""

    def __init__(self, query: Query | None, windows: Windows, refresh_seconds: float) -> None:
        self._query = query
        self.windows = windows
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._latest: Snapshot | None = None
        self.errors = 0  # refreshes that failed (the operator's own metrics export it)

    def latest(self) -> Snapshot:
        """A snapshot no older than ``refresh_seconds`` (refreshing it if needed)."""
        with self._lock:
            now = time.time()
            if self._latest is not None and now - self._latest.taken_at < self.refresh_seconds:
                return self._latest
            self._latest = self._refresh(now)
            return self._latest

    def _refresh(self, now: float) -> Snapshot:
        if self._query is None:
            return Snapshot(now, {}, "no Prometheus URL configured (RECSERVE_PROMETHEUS_URL)")
        results: dict[str, list[dict[str, Any]]] = {}
        try:
            for name, text in queries(self.windows).items():
                results[name] = self._query(text)
        except Exception as exc:  # any failure to get an answer means unknown, never 0
            self.errors += 1
            reason = f"Prometheus query failed: {type(exc).__name__}: {exc}"[:300]
            log.warning("%s", reason)
            return Snapshot(now, {}, reason)
        return snapshot_from_results(results, self.windows, now)

    def canary(
        self, namespace: str, model: str, window_s: float
    ) -> dict[str, CanaryMetrics] | None:
        """The canary figures of one model's pools over the last ``window_s`` (None when
        Prometheus does not answer). Asked only while a rollout is analysed, so not
        part of the per-refresh queries every model pays for."""
        if self._query is None:
            return None
        try:
            results = {
                name: self._query(text)
                for name, text in canary_queries(namespace, model, window_s).items()
            }
        except Exception as exc:  # unknown, never "no errors": the rollout holds
            self.errors += 1
            log.warning("canary query failed: %s: %s", type(exc).__name__, exc)
            return None
        return canary_from_results(results)


def canary_queries(namespace: str, model: str, window_s: float) -> dict[str, str]:
    """The canary analysis's queries: the canary pods' requests, server errors, p99 and
    fidelity pairs over the window, per pool (the router's own counters cannot tell
    pools apart; the servers' can)."""
    w = _range(window_s)
    pods = f'namespace="{namespace}", {MODEL}="{model}", {TRACK}="canary"'

    def increase(metric: str, labels: str = "") -> str:
        return f"sum by ({POOL}) (increase({metric}{{{pods}{labels}}}[{w}]))"

    return {
        "requests": increase("recserve_requests_total", ', endpoint=~"infer|rank"'),
        "errors": increase(
            "recserve_requests_total", ', endpoint=~"infer|rank", code=~"5..", code!="503"'
        ),
        "p99": (
            f"histogram_quantile(0.99, sum by ({POOL}, le) "
            f'(increase(recserve_request_duration_seconds_bucket{{{pods}, endpoint=~"infer|rank"}}'
            f"[{w}])))"
        ),
        "pairs": increase("recserve_fidelity_pairs_total"),
        "agreeing": increase("recserve_fidelity_agreeing_pairs_total"),
    }


def canary_from_results(results: dict[str, list[dict[str, Any]]]) -> dict[str, CanaryMetrics]:
    """Per pool, the canary's figures; a pool without a request series is absent (its
    analysis holds). No error series with requests present is 0 errors: a counter's
    series for a code appears with its first such answer."""
    values: dict[str, dict[str, float]] = {}
    for name, samples in results.items():
        for sample in samples:
            pool = str((sample.get("metric") or {}).get(POOL) or "")
            value = _number(sample)
            if pool and value is not None:
                values.setdefault(pool, {})[name] = value
    out: dict[str, CanaryMetrics] = {}
    for pool, v in values.items():
        if "requests" not in v:
            continue
        pairs = v.get("pairs", 0.0)
        out[pool] = CanaryMetrics(
            requests=v["requests"],
            errors=v.get("errors", 0.0),
            p99_s=v.get("p99"),
            fidelity=v["agreeing"] / pairs if pairs > 0 and "agreeing" in v else None,
            fidelity_pairs=pairs,
        )
    return out
