"""`recserve bench autoscale`: recserve's autoscaler against KEDA and static provisioning.

On the local control plane (real kube-apiserver, controller manager with the real HPA
controller, scheduler, the node agent running pods as local processes, Prometheus, and
KEDA when built), the chart is installed against the local Prometheus and each system
serves the same synthetic model behind its router, one system after the other:

* ``recserve``: the operator's autoscaler (``replicas: Auto``, ``batchTuning: true``);
* ``recserve-nobatch``: the same with batch tuning off (the A/B for batch autoscaling);
* ``keda``: KEDA with a Prometheus trigger on the request rate per replica (threshold:
  the plan's per-replica rate, ``capacityRequestsPerSecond x 0.7``) driving the real
  HPA; the policy says ``replicas: External`` and ``batchTuning: false``;
* ``keda-tuned``: the same KEDA trigger as a user tuning it for bursts would write: a
  15 s rate window and 5 s polling (the HPA's 15 s sync is the cluster's, unchanged);
* ``static``: the plan's replicas for the trace's peak (``replicas: Static``).

EMULATED: the replicas share this machine's two cores, so every server runs in
emulated-device mode: a batch costs a fixed time per batch plus one per row, *slept*,
not computed (``--emulate-us-per-batch``, ``--emulate-us-per-row``), so that a replica
has a fixed capacity that does not use CPU; the variant's profile is written to match
(the store is laid out in advance: no build, no profile Jobs). Everything else is real:
HTTP through the router, Prometheus scrapes, the operator's decisions, KEDA, the HPA,
pod start-up.

Traces (open loop through the router, Poisson arrivals by thinning, the same seed for
every system; latency from each request's scheduled send time): a 4x step (with
Prometheus stopped (SIGSTOP) for a while at the peak: replicas lost), a diurnal sine
(4x peak to trough, a day compressed to 20 minutes), a 10x flash crowd for 60 s, and a
steady load. ``--quick`` compresses them (about 25 minutes for all five systems; the
full mode about 4 h). Every system starts each trace from a fresh RecModel
(same starting replicas, except static, which is sized for the peak).

The last stdout line is one JSON object; a PNG per trace (load, replicas, batch
ceiling, rolling p99, all systems) and details.json are written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

US_PER_BATCH, US_PER_ROW = 40000.0, 150.0  # the emulated device
CANDIDATES = 64
POOL = "bench-cpu"
SYSTEMS = ("recserve", "recserve-nobatch", "keda", "keda-tuned", "static")
# KEDA's trigger: (rate window, polling seconds) as its docs show it, and tuned for bursts
KEDA_TRIGGERS = {"keda": ("1m", 30), "keda-tuned": ("15s", 5)}
KEDA_SYSTEMS = frozenset(KEDA_TRIGGERS)
TRACES = ("step", "diurnal", "flash", "steady")
UTILIZATION = 0.7  # the plan's per-replica share of capacity (KEDA's threshold too)
MAX_REPLICAS = 8
MAX_BATCH_ROWS = 512
ROLLING_S = 10.0
SEED = 20240601
SCALING_REASONS = frozenset({"Scaled", "BatchLimits", "SuccessfulRescale", "ScalingReplicaSet"})


def _log(msg: str) -> None:
    print(f"[bench autoscale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- traces (pure) --------------------------------------------------------------------
@dataclass(frozen=True)
class Trace:
    """An offered load over time: ``rate(t)`` requests per second for ``duration_s``."""

    name: str
    kind: str  # step | sine | flash | steady
    duration_s: float
    base_rps: float
    factor: float = 1.0  # peak / base
    step_at_s: float = 0.0  # step and flash start
    burst_s: float = 0.0  # flash length
    period_s: float = 0.0  # sine period
    outage: tuple[float, float] | None = None  # Prometheus stopped: (start, seconds)
    oracle_bin_s: float = 60.0  # the oracle's "minute"

    @property
    def peak_rps(self) -> float:
        return self.base_rps * self.factor

    def rate(self, t: float) -> float:
        """Offered requests per second at ``t`` seconds from the start."""
        b, f = self.base_rps, self.factor
        if self.kind == "step":
            return b * f if t >= self.step_at_s else b
        if self.kind == "flash":
            return b * f if self.step_at_s <= t < self.step_at_s + self.burst_s else b
        if self.kind == "sine":  # trough at t=0, peak at half the period
            mid, amp = b * (1 + f) / 2, b * (f - 1) / 2
            return mid - amp * math.cos(2 * math.pi * t / self.period_s)
        return b


def make_traces(quick: bool, base_rps: float) -> dict[str, Trace]:
    """The four traces; ``quick`` compresses them (same shapes, shorter)."""
    b = base_rps
    if quick:
        return {
            "step": Trace("step", "step", 80, b, 4, step_at_s=10, outage=(50, 25)),
            "diurnal": Trace("diurnal", "sine", 60, b, 4, period_s=60, oracle_bin_s=3),
            "flash": Trace("flash", "flash", 60, b, 10, step_at_s=10, burst_s=40),
            "steady": Trace("steady", "steady", 30, 2.5 * b),
        }
    return {
        "step": Trace("step", "step", 360, b, 4, step_at_s=60, outage=(200, 60)),
        # a day compressed 72x: one period in 20 minutes; the oracle decides per minute
        "diurnal": Trace("diurnal", "sine", 1200, b, 4, period_s=1200, oracle_bin_s=60),
        "flash": Trace("flash", "flash", 360, b, 10, step_at_s=120, burst_s=60),
        "steady": Trace("steady", "steady", 900, 2.5 * b),
    }


# -- measures (pure) ------------------------------------------------------------------
def p99_all(latency_s: np.ndarray) -> float:
    """p99 where failures (latency inf) count as infinitely slow; nan when empty."""
    n = len(latency_s)
    if n == 0:
        return math.nan
    srt = np.sort(latency_s)
    return float(srt[math.ceil(0.99 * n) - 1])


def rolling_p99(
    send_s: np.ndarray, latency_s: np.ndarray, grid: np.ndarray, window_s: float = ROLLING_S
) -> np.ndarray:
    """p99 of the requests sent in ``(t - window_s, t]`` for each ``t`` of ``grid``
    (``send_s`` sorted; failures as inf; nan where none was sent)."""
    hi = np.searchsorted(send_s, grid, side="right")
    lo = np.searchsorted(send_s, grid - window_s, side="right")
    return np.array([p99_all(latency_s[a:b]) for a, b in zip(lo, hi, strict=True)])


def restore_time(
    grid: np.ndarray, p99: np.ndarray, slo_s: float, start_s: float, end_s: float
) -> float | None:
    """Seconds from ``start_s`` until the rolling p99 is within the SLO and stays so up
    to ``end_s`` (0 if it never left; None if it is over the SLO at the end)."""
    inside = (grid >= start_s) & (grid < end_s)
    ts, ps = grid[inside], p99[inside]
    bad = np.nonzero(~np.isnan(ps) & (ps > slo_s))[0]
    if len(bad) == 0:
        return 0.0
    last = int(bad[-1])
    if last == len(ts) - 1:
        return None
    return float(ts[last + 1] - start_s)


def violations(latency_s: np.ndarray, ok: np.ndarray, slo_s: float) -> int:
    """Requests over the SLO or failed."""
    return int(np.count_nonzero(~ok | (latency_s > slo_s)))


def replica_hours(times: list[float], replicas: list[int], duration_s: float) -> float:
    """Replicas integrated over ``[0, duration_s]`` (sample and hold; the first sample
    holds from 0)."""
    if not times:
        return 0.0
    total = 0.0
    for i, (t, n) in enumerate(zip(times, replicas, strict=True)):
        a = min(max(t, 0.0), duration_s)
        b = min(max(times[i + 1], 0.0), duration_s) if i + 1 < len(times) else duration_s
        if i == 0:
            a = 0.0
        total += n * max(b - a, 0.0)
    return total / 3600


def oracle_replica_hours(
    send_s: np.ndarray, duration_s: float, capacity_rps: float, bin_s: float
) -> float:
    """Each bin (the oracle's minute) runs the fewest replicas whose capacity covers that
    bin's demand (at least one)."""
    total = 0.0
    start = 0.0
    while start < duration_s - 1e-9:
        end = min(start + bin_s, duration_s)
        count = np.count_nonzero((send_s >= start) & (send_s < end))
        demand = count / (end - start)
        total += max(1, math.ceil(demand / capacity_rps - 1e-9)) * (end - start)
        start = end
    return total / 3600


def reversals(series: list[int]) -> int:
    """Direction changes of a replica count (up then down, or down then up)."""
    count, last = 0, 0
    for a, b in itertools.pairwise(series):
        d = (b > a) - (b < a)
        if d:
            if last and d != last:
                count += 1
            last = d
    return count


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is unknown; inf when only b is 0."""
    if a is None or b is None:
        return None
    if b == 0:
        return None if a == 0 else math.inf
    return a / b


# -- the run --------------------------------------------------------------------------
@dataclass
class Samples:
    """Once a second: Deployment spec.replicas, readyReplicas, the batch ceiling."""

    t: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    ceiling: list[int | None] = field(default_factory=list)


class Sampler:
    """Samples a pool's Deployment and limits ConfigMap every second on a thread."""

    def __init__(self, api: Any, namespace: str, deployment: str, limits: str) -> None:
        from kubernetes import client

        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.ns, self.deployment, self.limits = namespace, deployment, limits
        self.samples = Samples()
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _sample(self) -> None:
        try:
            dep = self.apps.read_namespaced_deployment(self.deployment, self.ns)
            ceiling: int | None = None
            try:
                cm = self.core.read_namespaced_config_map(self.limits, self.ns)
                ceiling = int(json.loads(cm.data["limits.json"])["max_batch_rows"])
            except Exception:
                ceiling = None
            self.samples.t.append(time.monotonic())
            self.samples.replicas.append(int(dep.spec.replicas or 0))
            self.samples.ready.append(int(dep.status.ready_replicas or 0))
            self.samples.ceiling.append(ceiling)
        except Exception as exc:  # a missed sample is held over by the next one
            _log(f"  sample failed: {exc}")

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self._sample()
            self._stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))

    def stop(self) -> Samples:
        self._stop.set()
        self._thread.join()
        self.samples.t = [t - self.t0 for t in self.samples.t]  # from the trace's start
        return self.samples


@dataclass
class Run:
    """One system on one trace."""

    system: str
    trace: str
    duration_s: float
    send_s: np.ndarray
    latency_s: np.ndarray
    ok: np.ndarray
    samples: Samples
    capacity_rps: float | None  # status.placements[].capacityRequestsPerSecond
    start_replicas: int
    load_avg: tuple[float, float]  # 1-min load average before and after
    codes: dict[str, int]
    outage_lost: int | None = None
    outage_ready_lost: int | None = None
    hpa: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)

    def summary(self, slo_s: float, trace: Trace, oracle_capacity: float) -> dict[str, Any]:
        n = len(self.send_s)
        v = violations(self.latency_s, self.ok, slo_s)
        grid = np.arange(1.0, math.floor(self.duration_s) + 1.0)
        roll = rolling_p99(self.send_s, self.latency_s, grid)
        out: dict[str, Any] = {
            "requests": n,
            "failed": int(np.count_nonzero(~self.ok)),
            "slo_violations": v,
            "slo_violation_pct": round(100 * v / n, 3) if n else None,
            "p99_ms": _ms(p99_all(self.latency_s)),
            "p50_ms": _ms(float(np.median(self.latency_s))) if n else None,
            "replica_hours": round(
                replica_hours(self.samples.t, self.samples.replicas, self.duration_s), 5
            ),
            "ready_replica_hours": round(
                replica_hours(self.samples.t, self.samples.ready, self.duration_s), 5
            ),
            "reversals": reversals(self.samples.replicas),
            "max_replicas": max(self.samples.replicas, default=None),
            "start_replicas": self.start_replicas,
            "max_batch_ceiling": max((c for c in self.samples.ceiling if c), default=None),
            "capacity_rps_status": self.capacity_rps,
            "load_avg_1m": list(self.load_avg),
            "codes": self.codes,
        }
        out["reversals_per_hour"] = round(out["reversals"] / (self.duration_s / 3600), 2)
        if trace.kind in ("step", "flash"):
            # step: the whole high segment (the Prometheus outage included); flash: the burst
            end = trace.duration_s
            if trace.kind == "flash":
                end = trace.step_at_s + trace.burst_s
            out["p99_restore_s"] = restore_time(grid, roll, slo_s, trace.step_at_s, end)
        if trace.outage:
            out["outage_replicas_lost"] = self.outage_lost
            out["outage_ready_replicas_lost"] = self.outage_ready_lost
        if trace.kind == "sine":
            out["oracle_replica_hours"] = round(
                oracle_replica_hours(
                    self.send_s, self.duration_s, oracle_capacity, trace.oracle_bin_s
                ),
                5,
            )
        return out


def _ms(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return math.inf if math.isinf(seconds) else round(seconds * 1000, 1)


class Bench:
    """The cluster, the chart and the systems under test."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.slo_s = args.slo_ms / 1000
        self.quick = bool(args.quick)
        self.down_window_s = 60 if self.quick else 300
        self.cluster: Any = None
        self.api: Any = None
        self.keda_note: str | None = None
        self.store = work / "store"
        self.folder: Path | None = None
        self.profile: Any = None
        self.bodies: list[bytes] = []

    # -- setup ------------------------------------------------------------------------
    def start(self, want_keda: bool) -> None:
        from recserve_dev.localcluster.access import api_client, assert_test_cluster
        from recserve_dev.localcluster.cluster import LocalCluster
        from recserve_dev.localcluster.tools import ToolsMissing, find_tools

        keda = False
        if want_keda:
            from recserve_dev.localcluster.keda import find_keda_tools

            try:
                find_keda_tools()
                keda = True
            except ToolsMissing as exc:
                self.keda_note = f"KEDA skipped: {exc}"
                _log(self.keda_note)
        root = Path(self.args.root) if self.args.root else self.work / "cluster"
        self.cluster = LocalCluster(
            root, find_tools(), keda=keda, scrape_seconds=self.args.scrape_seconds
        )
        _log(f"starting the local control plane in {root} (KEDA {'on' if keda else 'off'})")
        state = self.cluster.start(timeout=300)
        _log(
            f"control plane ready in {state.ready_seconds:.1f}s; Prometheus {state.prometheus_url}"
        )
        self.api = api_client(self.cluster.admin_kubeconfig)
        assert_test_cluster(self.api, state.cluster_id)
        self._install()
        self._template()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    def server_args(self) -> list[str]:
        """Extra `recserve serve` arguments of every server: the emulated device."""
        return [f"--emulate-us-per-row={US_PER_ROW}", f"--emulate-us-per-batch={US_PER_BATCH}"]

    def _install(self) -> None:
        from kubernetes import client

        from recserve_dev.localcluster.cluster import free_port
        from recserve_dev.localcluster.tools import repo_root
        from recserve_operator.api import GROUP, VERSION

        repo = repo_root()
        self.store.mkdir(parents=True, exist_ok=True)
        self.cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(repo / "crds")
        )
        subprocess.run(
            [
                str(self.cluster.tools.helm), f"--kubeconfig={self.cluster.admin_kubeconfig}",
                "upgrade", "--install", "recserve", str(repo / "charts" / "recserve"),
                "-n", "recserve-bench", "--create-namespace",
                "--set", f"artifactStore.uri={self.store}",
                "--set", f"prometheus.url={self.cluster.state.prometheus_url}",
                "--set", f"prometheus.scrapeIntervalSeconds={self.cluster.scrape_seconds}",
                "--set", "autoscaler.tickSeconds=1",
                "--set", f"metrics.port={free_port()}",
                *(
                    arg
                    for i, server_arg in enumerate(self.server_args())
                    for arg in ("--set-string", f"serverArgs[{i}]={server_arg}")
                ),
                "--set", "extraEnv[0].name=RECSERVE_RECONCILE_INTERVAL_SECONDS",
                "--set-string", "extraEnv[0].value=2",
            ],
            check=True, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        pool = _examples(repo)["cpu-pool"]
        pool["metadata"] = {"name": POOL}
        pool["spec"]["resources"] = {"cpuMillis": 500, "memoryMebibytes": 512}
        pool["spec"]["maxReplicas"] = 16
        custom = client.CustomObjectsApi(self.api)
        custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
        _log("chart installed (operator reads the local Prometheus); HardwarePool bench-cpu")

    def _template(self) -> None:
        from recserve_dev.testmodel import (
            emulated_profile,
            quick_profile,
            rank_bodies,
            write_variant,
        )
        from recserve_runtime.artifacts import load_manifest

        variants = self.work / "template" / "variants"
        self.folder = write_variant(variants)
        real = quick_profile(variants, self.work / "template" / "profile.json")
        self.profile = emulated_profile(real, US_PER_BATCH, US_PER_ROW)
        self.bodies = rank_bodies(load_manifest(self.folder), count=64, candidates=CANDIDATES)

    # -- documents --------------------------------------------------------------------
    def policy_doc(self, system: str, namespace: str) -> dict[str, Any]:
        from recserve_dev.localcluster.tools import repo_root

        policy = _examples(repo_root())["latency-first"]
        policy["metadata"] = {"name": "bench", "namespace": namespace}
        objectives = policy["spec"]["objectives"]
        objectives["p99LatencyTargetMilliseconds"] = int(self.args.slo_ms)
        objectives["throughputFloorRequestsPerSecond"] = 1
        replicas = (
            "External" if system in KEDA_SYSTEMS else "Static" if system == "static" else "Auto"
        )
        policy["spec"]["autoscaling"] = {
            "replicas": replicas,
            "batchTuning": system == "recserve",
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "minBatchSize": 1,
            "maxBatchSize": MAX_BATCH_ROWS,
            "intervalSeconds": self.args.interval_seconds,
            "scaleUpCooldownSeconds": 30,
            "scaleDownCooldownSeconds": self.down_window_s,
        }
        return policy

    def model_doc(self, system: str, trace: Trace, namespace: str) -> dict[str, Any]:
        from recserve_dev.localcluster.tools import repo_root

        model = _examples(repo_root())["movielens-dlrm"]
        model["metadata"] = {"name": trace.name, "namespace": namespace}
        model["spec"]["policyRef"] = {"name": "bench"}
        model["spec"]["hardwarePoolRefs"] = [{"name": POOL}]
        expected = trace.peak_rps if system == "static" else trace.rate(0.0)
        model["spec"]["traffic"] = {
            "expectedRequestsPerSecond": max(1, round(expected)),
            "peakFactorPercent": 100,
            "candidatesPerRequest": CANDIDATES,
        }
        return model

    def scaled_object(
        self, name: str, namespace: str, threshold: float, system: str = "keda"
    ) -> dict[str, Any]:
        deployment = f"{name}-{POOL}"
        window, polling = KEDA_TRIGGERS[system]
        selector = (
            f'namespace="{namespace}",recserve_io_model="{name}",recserve_io_pool="{POOL}",'
            'endpoint=~"infer|rank"'
        )
        spec: dict[str, Any] = {
            "scaleTargetRef": {"name": deployment},
            "minReplicaCount": 1,
            "maxReplicaCount": MAX_REPLICAS,
            "pollingInterval": polling,  # 30: KEDA's default
            "cooldownPeriod": 300,  # KEDA's default (scale to zero only; min is 1)
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": self.cluster.state.prometheus_url,
                        "query": f"sum(rate(recserve_requests_total{{{selector}}}[{window}]))",
                        "threshold": f"{threshold:.2f}",
                    },
                }
            ],
        }
        if self.down_window_s != 300:  # quick mode: the same window as recserve's
            spec["advanced"] = {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": self.down_window_s}}
                }
            }
        return {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }

    # -- one run ----------------------------------------------------------------------
    def namespace(self, name: str, system: str | None) -> None:
        from kubernetes import client

        from recserve_operator.api import GROUP, VERSION

        core = client.CoreV1Api(self.api)
        try:
            core.read_namespace(name)
            return
        except client.ApiException:
            pass
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        _until(lambda: core.read_namespaced_service_account("default", name), 60, "namespace")
        if system is not None:
            client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                GROUP, VERSION, name, "optimizationpolicies", self.policy_doc(system, name)
            )

    def deploy(self, system: str, trace: Trace, namespace: str) -> dict[str, Any]:
        """Create the RecModel, lay out its store, wait for Ready and ready replicas."""
        from kubernetes import client

        from recserve_operator.api import GROUP, VERSION, OptimizationPolicy, RecModel
        from recserve_operator.children import content_hash
        from recserve_runtime.artifacts import BuildReport, StoreLayout

        assert self.folder is not None
        custom = client.CustomObjectsApi(self.api)
        policy = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "optimizationpolicies", "bench"
        )
        doc = self.model_doc(system, trace, namespace)
        compression = OptimizationPolicy.model_validate(policy).spec.compression

        def lay_out(digest: str) -> None:
            assert self.folder is not None
            layout = StoreLayout.of(self.store, namespace, trace.name, digest)
            shutil.copytree(self.folder, layout.variant(self.folder.name), dirs_exist_ok=True)
            self.profile.write(layout.profile(POOL))
            BuildReport(hardware="cpu", threads=1, model={"synthetic": True}).write(layout.report)

        # the store is laid out BEFORE the RecModel exists: laid out after, the operator
        # may see an empty store first and start a build Job (torch, on the shared cores)
        local = content_hash(RecModel.model_validate(doc).spec, compression)
        lay_out(local)
        stored = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", doc)
        digest = content_hash(RecModel.model_validate(stored).spec, compression)
        if digest != local:  # the API server's defaults changed the spec's hash
            _log(f"  the stored spec hashes to {digest}, not {local}: laid out late")
            lay_out(digest)

        def ready() -> dict[str, Any] | None:
            obj = dict(
                custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "recmodels", trace.name
                )
            )
            conds = (obj.get("status") or {}).get("conditions") or []
            ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
            return obj if ok and (obj.get("status") or {}).get("placements") else None

        obj: dict[str, Any] = _until(ready, 300, f"{namespace}/{trace.name} Ready")
        apps = client.AppsV1Api(self.api)

        def replicas_ready() -> bool:
            dep = apps.read_namespaced_deployment(f"{trace.name}-{POOL}", namespace)
            return bool(dep.spec.replicas and (dep.status.ready_replicas or 0) >= dep.spec.replicas)

        _until(replicas_ready, 180, "the Deployment's replicas ready")
        return obj

    def start_at_plan(self, namespace: str, deployment: str, planned: int) -> int:
        """Every system starts a trace at the plan's replicas: where the operator left a
        new Auto/External Deployment at another count (seen: 1 instead of the plan's 2,
        see docs/bench-autoscale.md), scale it to the plan, as the operator means to."""
        from kubernetes import client

        apps = client.AppsV1Api(self.api)
        current = int(apps.read_namespaced_deployment(deployment, namespace).spec.replicas or 0)
        if current != planned:
            _log(
                f"  {namespace}/{deployment} starts at {current} replicas, not the plan's "
                f"{planned}: scaled to {planned} (operator issue; same start for every system)"
            )
            apps.patch_namespaced_deployment_scale(
                deployment, namespace, {"spec": {"replicas": planned}}
            )

            def ready() -> bool:
                dep = apps.read_namespaced_deployment(deployment, namespace)
                return (dep.status.ready_replicas or 0) >= planned

            _until(ready, 120, f"{planned} ready replicas")
        return planned

    def router(self, name: str, namespace: str) -> str:
        from kubernetes import client

        core = client.CoreV1Api(self.api)

        def ip() -> str | None:
            pods = core.list_namespaced_pod(
                namespace,
                label_selector=f"recserve.io/model={name},app.kubernetes.io/component=router",
            )
            for pod in pods.items:
                conds = pod.status.conditions or []
                if any(c.type == "Ready" and c.status == "True" for c in conds):
                    return str(pod.status.pod_ip)
            return None

        return str(_until(ip, 120, "a ready router pod"))

    def events(
        self,
        namespace: str,
        name: str,
        t0: float,
        involved: tuple[str, ...] | None = None,
        reasons: frozenset[str] | None = SCALING_REASONS,
    ) -> list[str]:
        """Events of the run, oldest first, with seconds from ``t0`` (``time.monotonic()``):
        by default the scaling ones (the operator's on the RecModel, the HPA's on the
        Deployment); ``involved`` names other objects, ``reasons=None`` keeps every
        reason."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        wall0 = time.time() - (time.monotonic() - t0)
        out: list[tuple[float, str]] = []
        for obj in involved or (name, f"{name}-{POOL}", f"keda-hpa-{name}"):
            try:
                items = core.list_namespaced_event(
                    namespace, field_selector=f"involvedObject.name={obj}"
                ).items
            except client.ApiException:
                continue
            for e in items:
                if reasons is not None and e.reason not in reasons:
                    continue
                when = e.last_timestamp or e.event_time or e.first_timestamp
                at = when.timestamp() - wall0 if when else math.nan
                out.append((at, f"{at:7.1f}s {obj} {e.reason}: {e.message}"))
        return [text for _, text in sorted(out)]

    def remove(self, system: str, name: str, namespace: str) -> None:
        from kubernetes import client

        from recserve_operator.api import GROUP, VERSION

        custom = client.CustomObjectsApi(self.api)
        if system in KEDA_SYSTEMS:
            with contextlib.suppress(client.ApiException):
                custom.delete_namespaced_custom_object(
                    "keda.sh", "v1alpha1", namespace, "scaledobjects", name
                )
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", name)
        core = client.CoreV1Api(self.api)

        def gone() -> bool:
            pods = core.list_namespaced_pod(namespace, label_selector=f"recserve.io/model={name}")
            return not pods.items

        try:
            _until(gone, 120, f"{namespace}/{name}'s pods gone")
        except AssertionError as exc:  # not fatal here
            _log(f"  {exc} (going on)")

    def run(self, system: str, trace: Trace) -> Run:
        from kubernetes import client

        from recserve_dev.loadgen import Target, open_loop_trace, thinned_arrivals

        namespace = f"bench-{system}"
        self.namespace(namespace, system)
        obj = self.deploy(system, trace, namespace)
        placement = obj["status"]["placements"][0]
        capacity = placement.get("capacityRequestsPerSecond")
        start_replicas = self.start_at_plan(
            namespace, f"{trace.name}-{POOL}", int(placement.get("plannedReplicas") or 1)
        )
        hpa_info: dict[str, Any] | None = None
        if system in KEDA_SYSTEMS:
            threshold = float(capacity) * UTILIZATION
            doc = self.scaled_object(trace.name, namespace, threshold, system)
            client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                "keda.sh", "v1alpha1", namespace, "scaledobjects", doc
            )
            auto = client.AutoscalingV2Api(self.api)
            hpa = _until(
                lambda: auto.read_namespaced_horizontal_pod_autoscaler(
                    f"keda-hpa-{trace.name}", namespace
                ),
                120,
                "the HPA KEDA creates",
            )
            hpa_info = {
                "scaledObject": doc["spec"],
                "hpaBehavior": (hpa.spec.behavior.to_dict() if hpa.spec.behavior else None),
            }
        ip = self.router(trace.name, namespace)
        target = Target(ip, 8080, "/v1/rank", self.bodies)
        offsets = thinned_arrivals(trace.rate, trace.duration_s, trace.peak_rps, seed=SEED)
        sampler = Sampler(
            self.api, namespace, f"{trace.name}-{POOL}", f"{trace.name}-{POOL}-limits"
        )
        sampler.start()
        time.sleep(2)  # a couple of samples before the start
        outage_timer: list[threading.Timer] = []
        stopped = threading.Event()
        pid = self.cluster.state.pids["prometheus"]

        def stop_prometheus() -> None:
            os.kill(pid, signal.SIGSTOP)
            stopped.set()
            _log(f"  Prometheus stopped (SIGSTOP {pid})")

        def resume_prometheus() -> None:
            os.kill(pid, signal.SIGCONT)
            if stopped.is_set():
                _log("  Prometheus resumed (SIGCONT)")

        def on_start(t0: float) -> None:
            sampler.t0 = t0
            if trace.outage:
                a, length = trace.outage
                outage_timer.extend(
                    [
                        threading.Timer(a, stop_prometheus),
                        threading.Timer(a + length, resume_prometheus),
                    ]
                )
                for timer in outage_timer:
                    timer.start()

        load_before = os.getloadavg()[0]
        _log(
            f"{system} / {trace.name}: {len(offsets)} requests over {trace.duration_s:.0f} s "
            f"(base {trace.base_rps:g} rps, peak {trace.peak_rps:g}); start replicas "
            f"{start_replicas}; router {ip}"
        )
        try:
            result = asyncio.run(
                open_loop_trace(target, offsets, timeout_s=self.args.timeout_s, on_start=on_start)
            )
        finally:
            for timer in outage_timer:
                timer.cancel()
            if trace.outage:
                os.kill(pid, signal.SIGCONT)
        time.sleep(1)
        samples = sampler.stop()
        load_after = os.getloadavg()[0]
        run = Run(
            system=system,
            trace=trace.name,
            duration_s=trace.duration_s,
            send_s=result.send_s,
            # a failed request (429, 503, timeout) counts as infinitely slow
            latency_s=np.where(result.ok, result.latency_s, np.inf),
            ok=result.ok,
            samples=samples,
            capacity_rps=None if capacity is None else float(capacity),
            start_replicas=start_replicas,
            load_avg=(round(load_before, 2), round(load_after, 2)),
            codes=result.codes,
            hpa=hpa_info,
        )
        if trace.outage:
            run.outage_lost, run.outage_ready_lost = outage_losses(samples, trace.outage)
        run.events = self.events(namespace, trace.name, sampler.t0)
        np.savez_compressed(
            Path(self.args.out) / f"requests-{system}-{trace.name}.npz",
            send_s=result.send_s,
            latency_s=result.latency_s,
            status=result.status,
        )
        self.remove(system, trace.name, namespace)
        return run

    # -- calibration ------------------------------------------------------------------
    def calibrate(self) -> dict[str, float]:
        """One replica's goodput (p99 within the SLO) at the plan's batch ceiling and at
        the policy's maximum, measured through the router: the oracle's capacity."""
        from kubernetes import client

        from recserve_dev.loadgen import Target, find_goodput

        namespace = "bench-calibrate"
        self.namespace(namespace, "static")
        trace = Trace("calibrate", "steady", 1, 1.0)
        obj = self.deploy("static", trace, namespace)
        target = Target(self.router(trace.name, namespace), 8080, "/v1/rank", self.bodies)
        core = client.CoreV1Api(self.api)
        server = next(
            p.status.pod_ip
            for p in core.list_namespaced_pod(
                namespace,
                label_selector=f"recserve.io/model={trace.name},app.kubernetes.io/component=server",
            ).items
            if p.status.pod_ip
        )
        profiled = float(obj["status"]["placements"][0]["capacityRequestsPerSecond"])
        out = {"profile_at_plan_ceiling": profiled}
        for label, rows in (("plan_ceiling", None), ("max_ceiling", MAX_BATCH_ROWS)):
            if rows is not None:
                body = json.dumps({"max_batch_rows": rows}).encode()
                req = urllib.request.Request(
                    f"http://{server}:8001/admin/limits", data=body, method="PUT"
                )
                with urllib.request.urlopen(req, timeout=5):
                    pass
            res = asyncio.run(
                find_goodput(
                    target, self.slo_s, start_rate=profiled * 0.6, growth=1.3,
                    refine_steps=2, duration_s=4.0, max_rate=profiled * 6,
                )
            )  # fmt: skip
            out[f"measured_at_{label}"] = round(res.goodput, 1)
            _log(f"calibration: one replica at the {label}: goodput {res.goodput:.1f} rps")
        self.remove("static", trace.name, namespace)
        return out


def outage_losses(samples: Samples, outage: tuple[float, float]) -> tuple[int, int]:
    """Replicas (spec, ready) gone during the outage: the count just before it minus the
    lowest count while it lasted (and 5 s after)."""
    start, length = outage
    t = np.array(samples.t)
    if len(t) == 0:
        return 0, 0
    before = np.nonzero(t < start)[0]
    during = np.nonzero((t >= start) & (t <= start + length + 5))[0]
    if len(before) == 0 or len(during) == 0:
        return 0, 0
    i = int(before[-1])
    spec = samples.replicas[i] - min(samples.replicas[j] for j in during)
    ready = samples.ready[i] - min(samples.ready[j] for j in during)
    return max(0, spec), max(0, ready)


def _until(check: Any, timeout: float, what: str) -> Any:
    """Poll ``check`` every 0.5 s until it returns a truthy value (AssertionError when
    ``timeout`` passes)."""
    from recserve_dev.waiting import eventually

    return eventually(check, timeout, 0.5, what)


def _examples(repo: Path) -> dict[str, dict[str, Any]]:
    import yaml

    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((repo / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["metadata"]["name"]] = doc
    return docs


# -- report ---------------------------------------------------------------------------
def headline(
    summaries: dict[str, dict[str, dict[str, Any]]], traces: dict[str, Trace]
) -> dict[str, Any]:
    """The final JSON's keys from the per-system, per-trace summaries."""

    def get(system: str, trace: str, key: str) -> Any:
        return summaries.get(system, {}).get(trace, {}).get(key)

    def pct(system: str) -> float | None:
        runs = summaries.get(system)
        if not runs or any(t not in runs for t in traces):
            return None
        v = sum(r["slo_violations"] for r in runs.values())
        n = sum(r["requests"] for r in runs.values())
        return 100 * v / n if n else None

    ours, keda, tuned = pct("recserve"), pct("keda"), pct("keda-tuned")
    diurnal_ours = get("recserve", "diurnal", "replica_hours")
    steady = get("recserve", "steady", "reversals_per_hour")
    return {
        "step4x_p99_restore_s": get("recserve", "step", "p99_restore_s"),
        "slo_violation_pct": None if ours is None else round(ours, 3),
        "slo_violation_vs_keda": _round(ratio(ours, keda)),
        "slo_violation_vs_keda_tuned": _round(ratio(ours, tuned)),
        "batch_tuning_violation_ratio": _round(
            ratio(
                get("recserve", "step", "slo_violation_pct"),
                get("recserve-nobatch", "step", "slo_violation_pct"),
            )
        ),
        "replica_hours_vs_oracle": _round(
            ratio(diurnal_ours, get("recserve", "diurnal", "oracle_replica_hours"))
        ),
        "replica_hours_vs_static_peak": _round(
            ratio(diurnal_ours, get("static", "diurnal", "replica_hours"))
        ),
        "reversals_per_hour_steady": steady,
        "prometheus_outage_replicas_lost": get("recserve", "step", "outage_replicas_lost"),
    }


def _round(x: float | None) -> float | None:
    return None if x is None or math.isinf(x) else round(x, 3)


def plot(trace: Trace, runs: dict[str, Run], slo_s: float, path: Path) -> None:
    """Load, replicas, batch ceiling and rolling p99 over time, all systems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    grid = np.arange(1.0, math.floor(trace.duration_s) + 1.0)
    axes[0].plot(grid, [trace.rate(t) for t in grid], color="black", label="offered rate(t)")
    first = next(iter(runs.values()), None)
    if first is not None:  # identical arrivals for every system
        sent = np.histogram(first.send_s, bins=np.arange(0, trace.duration_s + 1.0))[0]
        axes[0].plot(
            np.arange(len(sent)) + 1,
            sent,
            alpha=0.4,
            label="arrivals/s (the same for every system)",
        )
    axes[0].set_ylabel("requests/s")
    for system, run in runs.items():
        s = run.samples
        (line,) = axes[1].step(s.t, s.replicas, where="post", label=f"{system} spec")
        axes[1].step(s.t, s.ready, where="post", linestyle=":", color=line.get_color())
        axes[2].step(
            s.t, [c or 0 for c in s.ceiling], where="post", label=system, color=line.get_color()
        )
        roll = rolling_p99(run.send_s, run.latency_s, grid)
        axes[3].plot(grid, np.minimum(roll * 1000, 10 * slo_s * 1000), label=system)
    axes[1].set_ylabel("replicas (solid spec, dotted ready)")
    axes[2].set_ylabel("batch ceiling (rows)")
    axes[3].axhline(slo_s * 1000, color="red", linestyle="--", label="SLO")
    axes[3].set_ylabel(f"p99 ms, rolling {ROLLING_S:g} s (capped)")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("seconds")
    for ax in axes:
        if trace.outage:
            ax.axvspan(trace.outage[0], sum(trace.outage), color="grey", alpha=0.2)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"recserve bench autoscale: {trace.name} (emulated device: {US_PER_BATCH / 1000:g} ms/"
        f"batch + {US_PER_ROW:g} us/row, slept)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def finite(x: Any) -> Any:
    """``x`` with every inf/nan float as a string (strict JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def _keda_version() -> str:
    from recserve_dev.localcluster.keda import KEDA_VERSION

    return KEDA_VERSION


def pick(text: str, known: tuple[str, ...], what: str) -> list[str]:
    """The comma-separated names of ``text``; SystemExit naming any not in ``known``."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    return names


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    began = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    systems = pick(args.systems, SYSTEMS, "systems")
    traces = make_traces(args.quick, args.base_rps)
    if args.traces:
        traces = {k: v for k, v in traces.items() if k in args.traces.split(",")}
    b = Bench(args, work)
    runs: dict[str, dict[str, Run]] = {t: {} for t in traces}
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    load_start = os.getloadavg()
    calibration: dict[str, float] = {}
    try:
        b.start(want_keda=bool(KEDA_SYSTEMS & set(systems)))
        if b.keda_note:
            systems = [s for s in systems if s not in KEDA_SYSTEMS]
        calibration = b.calibrate()
        oracle_capacity = (
            max(
                calibration.get("measured_at_plan_ceiling", 0.0),
                calibration.get("measured_at_max_ceiling", 0.0),
            )
            or calibration["profile_at_plan_ceiling"]
        )
        for system in systems:
            for name, trace in traces.items():
                run = b.run(system, trace)
                runs[name][system] = run
                s = run.summary(b.slo_s, trace, oracle_capacity)
                summaries.setdefault(system, {})[name] = s
                _log(
                    f"  -> {system}/{name}: SLO violations {s['slo_violations']}/{s['requests']}"
                    f" ({s['slo_violation_pct']}%), p99 {s['p99_ms']} ms, replica-hours "
                    f"{s['replica_hours']}, reversals {s['reversals']}, max replicas "
                    f"{s['max_replicas']}, max ceiling {s['max_batch_ceiling']}"
                    + (f", restore {s['p99_restore_s']} s" if "p99_restore_s" in s else "")
                    + (
                        f", outage lost {s['outage_replicas_lost']}"
                        if "outage_replicas_lost" in s
                        else ""
                    )
                )
        pngs = []
        for name, trace in traces.items():
            if runs[name]:
                path = out / f"autoscale-{name}.png"
                plot(trace, runs[name], b.slo_s, path)
                pngs.append(str(path))
    finally:
        b.stop()
    keda_runs: dict[str, Any] = {}
    for by_system in runs.values():
        for system, r in by_system.items():
            if system in KEDA_SYSTEMS and r.hpa:
                keda_runs.setdefault(system, r.hpa)
    report: dict[str, Any] = {
        **headline(summaries, traces),
        "mode": "quick" if args.quick else "full",
        "systems_run": systems,
        "traces": {
            n: {
                "kind": t.kind,
                "duration_s": t.duration_s,
                "base_rps": t.base_rps,
                "peak_rps": t.peak_rps,
                "prometheus_outage": t.outage,
            }
            for n, t in traces.items()
        },
        "slo_p99_ms": args.slo_ms,
        "emulated": (
            f"every server replica runs in emulated-device mode: a batch costs "
            f"{US_PER_BATCH / 1000:g} ms + {US_PER_ROW:g} us per row, slept (no CPU), so a "
            f"replica has a fixed capacity on this shared 2-core machine; the variant's "
            f"profile is written to match (profiled up to 128 rows; batch tuning may raise "
            f"the ceiling to {MAX_BATCH_ROWS}). HTTP, router, Prometheus, operator, KEDA, "
            f"HPA and pod start-up are real; pods are local processes (node agent)."
        ),
        "capacity_rps_per_replica": calibration,
        "settings": {
            "recserve": "replicas Auto, batchTuning true, "
            f"intervalSeconds {args.interval_seconds}, scaleUpCooldownSeconds 30, "
            f"scaleDownCooldownSeconds {b.down_window_s}",
            "prometheus_scrape_seconds": args.scrape_seconds,
            "recserve-nobatch": "the same with batchTuning false",
            "keda": (
                b.keda_note
                or f"KEDA {_keda_version()} ScaledObject: prometheus trigger AverageValue on "
                "sum(rate(recserve_requests_total[1m])) of the pool, threshold = "
                "capacityRequestsPerSecond x 0.7, pollingInterval 30, cooldownPeriod 300, "
                "min 1 max 8; HPA sync 15 s (kube-controller-manager default); scale-down "
                f"stabilization {b.down_window_s} s"
                + (" (HPA default)" if b.down_window_s == 300 else " (quick: as recserve's)")
                + "; policy replicas External, batchTuning false"
            ),
            "keda-tuned": b.keda_note
            or "the same with the trigger tuned for bursts: sum(rate(...[{}])), "
            "pollingInterval {}".format(*KEDA_TRIGGERS["keda-tuned"]),
            "static": "replicas Static, traffic sized for the trace's peak, batchTuning false",
            "max_replicas": MAX_REPLICAS,
        },
        "keda_hpa": keda_runs or None,  # per KEDA system: its ScaledObject and HPA
        "load_average": {
            "at_start": [round(x, 2) for x in load_start],
            "at_end": [round(x, 2) for x in os.getloadavg()],
            "per_run_1m": {
                f"{s}/{t}": summaries[s][t]["load_avg_1m"] for s in summaries for t in summaries[s]
            },
            "cores": os.cpu_count(),
        },
        "per_system": {
            s: {
                t: {
                    k: v[k]
                    for k in (
                        "slo_violation_pct",
                        "p99_ms",
                        "replica_hours",
                        "reversals",
                        "max_replicas",
                        "p99_restore_s",
                        "outage_replicas_lost",
                        "oracle_replica_hours",
                        "max_batch_ceiling",
                    )
                    if k in v
                }
                for t, v in per.items()
            }
            for s, per in summaries.items()
        },
        "pngs": pngs,
        "wall_s": round(time.monotonic() - began, 1),
    }
    detail_runs = {
        f"{system}/{name}": {
            "events": run.events,
            "samples": {
                "t": [round(t, 2) for t in run.samples.t],
                "replicas": run.samples.replicas,
                "ready": run.samples.ready,
                "ceiling": run.samples.ceiling,
            },
        }
        for name, per in runs.items()
        for system, run in per.items()
    }
    (out / "details.json").write_text(
        json.dumps(
            finite({"report": report, "summaries": summaries, "runs": detail_runs}),
            indent=2,
            default=str,
        )
    )
    return report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve bench autoscale` (sharing the `bench` group with other benches)."""
    from recserve_runtime.cli import bench_group

    bsub = bench_group(sub)
    p = bsub.add_parser(
        "autoscale",
        help="recserve's autoscaler vs KEDA and static provisioning on load traces",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="compressed traces (~25 min in all)")
    p.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}"
    )
    p.add_argument("--traces", default="", help=f"comma-separated subset of {TRACES}")
    p.add_argument("--out", default="bench-autoscale", help="folder for PNGs and details.json")
    p.add_argument("--slo-ms", type=float, default=500.0, help="p99 target (default 500)")
    p.add_argument(
        "--base-rps", type=float, default=12.0, help="the traces' base rate (default 12)"
    )
    p.add_argument("--timeout-s", type=float, default=5.0, help="per request (a failure)")
    p.add_argument(
        "--scrape-seconds",
        type=int,
        default=1,
        help="Prometheus' scrape interval, for every system (default 1: as Knative's "
        "autoscaler samples its pods; the local control plane's default is 5)",
    )
    p.add_argument(
        "--interval-seconds",
        type=int,
        default=1,
        help="recserve's autoscaling.intervalSeconds (default 1)",
    )
    p.add_argument("--root", default="", help="local cluster state folder (default: temp)")
    p.set_defaults(handler=_bench_autoscale)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: faults undone, cluster down


def run_cluster_bench(
    name: str, run: Callable[[argparse.Namespace, Path], dict[str, Any]], args: argparse.Namespace
) -> int:
    """A local-control-plane bench as a command: SIGTERM runs its cleanup, this
    interpreter's tools come first on PATH, a temporary work folder, the report as the
    last stdout line (strict JSON)."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    with tempfile.TemporaryDirectory(prefix=f"recserve-bench-{name}-") as tmp:
        report = run(args, Path(tmp))
    print(json.dumps(finite(report), default=str), flush=True)
    return 0


def _bench_autoscale(args: argparse.Namespace) -> int:
    return run_cluster_bench("autoscale", bench, args)
