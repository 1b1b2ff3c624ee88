"""`recserve bench drift`: how fast the operator notices drift and acts on it.

On the local control plane (real kube-apiserver, controller manager, scheduler, the node
agent running pods as local processes, Prometheus), with the chart installed against the
local Prometheus, each scenario serves the synthetic model from a fresh RecModel under
steady open-loop load through its router, then changes one thing:

* ``latency``: the pool's emulated device slows 2x mid-run (every server reads the
  device's cost from a file, ``recserve serve --emulate-file``, a live limit) -> latency
  drift detected, the pool re-profiled by a Job, the model re-planned;
* ``fidelity``: a statically calibrated INT8 is served (the faster variant); the inputs
  move (every dense feature two standard deviations off the calibration data) -> its
  ranking departs from the FP32 reference's (fidelity drift) -> re-planned to the
  reference at once, the INT8 recalibrated on the servers' sample of recent requests and
  rolled out by canary;
* ``canary``: a new plan moves the pool to an INT8 that loads and answers but ranks
  unlike the reference (another model's weights) -> its canary is rolled back;
* ``failover``: the GPU pool (the cheaper one, planned first) has its nodes cordoned and
  its pods deleted -> the model is re-planned onto the CPU pool; uncordoned, it returns.

Before each change the load runs steady for ``--steady-s``: any action the operator takes
then (a ``status.lastOptimization`` entry, the Drift condition True) is a false alarm.

EMULATED: the replicas share this machine's two cores, so every server runs in
emulated-device mode (a fixed time per batch plus one per row, slept, not computed), and
the variants' profiles are written to match (the store is laid out in advance: no build
Job). The re-profile Job of the latency scenario is the real profiler on this machine's
CPU (it does not see the emulated device), and the GPU pool's node runs the CPU
execution provider. Everything else is real: HTTP through the router, Prometheus
scrapes, the operator's detectors and decisions, Jobs, canary weights, pod start-up.

The last stdout line is one JSON object (each key the median over ``--runs``, with every
run's value under ``spread``); a PNG per scenario and details.json go to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recserve_dev.bench.autoscale import (
    POOL,
    US_PER_BATCH,
    US_PER_ROW,
    Bench,
    _examples,
    _until,
    finite,
    pick,
    restore_time,
    rolling_p99,
    run_cluster_bench,
)

SCENARIOS = ("latency", "fidelity", "canary", "failover")
GPU_POOL = "bench-gpu"
MODEL = "drift"
CANDIDATES = 64
BODIES = 1024  # distinct requests, cycled
RATE_RPS = 15.0
MAX_LOAD_S = 1800.0  # a scenario's load ends by then at the latest
SLOWDOWN = 2.0
INT8_SPEEDUP = 2.0  # the emulated device runs INT8 variants this much faster (profiled so)
DENSE_SHIFT = 2.0
# the synthetic model's INT8 variants lose about 4% AUC against labels drawn from its own
# FP32 scores (test data, not an accuracy claim): the budget leaves room for that
ACCURACY_BUDGET_BP = 800
EXTRA_KEYS = (  # reported beside the targets
    "fidelity_replan_s",
    "recalibrated_s",
    "recalibrated_served_s",
    "bad_canary_rollback_from_progressing_s",
    "failover_ready_s",
    "failover_back_s",
)
TARGETS = {
    "latency_drift_detect_s": 120,
    "latency_drift_replan_s": 300,
    "fidelity_drift_detect_s": 120,
    "bad_canary_rollback_s": 180,
    "bad_canary_traffic_pct": 10,
    "failover_restore_s": 120,
    "false_alarms_steady_hour": 0,
}


def _log(msg: str) -> None:
    print(f"[bench drift {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- measures (pure) ------------------------------------------------------------------
def median_spread(values: list[float | None]) -> tuple[float | None, list[float | None]]:
    """The median of the known values (None when none is known) and every value."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    shown = [v if v is None or not math.isfinite(v) else round(v, 2) for v in values]
    return (round(statistics.median(known), 2) if known else None), shown


def false_alarms_per_hour(actions: int, observed_s: float) -> float | None:
    """Actions in steady load per hour, once at least an hour was observed (a shorter
    window cannot show a rate of zero per hour: None)."""
    return actions / (observed_s / 3600) if observed_s >= 3600 else None


def share_pct(part: float, whole: float) -> float | None:
    """``part`` as a percentage of ``whole`` (None when nothing was counted)."""
    return round(100 * part / whole, 2) if whole > 0 else None


def first_times(
    checks: dict[str, Callable[[], Any]],
    timeout: float,
    mark: Callable[[str], Any],
    every: float = 0.5,
) -> dict[str, Any]:
    """Poll every check side by side (every ``every`` s) and ``mark`` each by its name
    the first time it holds: waiting for them one after another would mark one that held
    earlier only at the end of the wait before it. Returns each check's first truthy
    value (AssertionError naming the rest, and the last error of each, when ``timeout``
    passes first). A check that raises (an API call that failed once) is asked again."""
    found: dict[str, Any] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        for what, check in checks.items():
            if what in found:
                continue
            try:
                value = check()
            except Exception as exc:  # a passing error (the API once away): asked again
                errors[what] = f"{type(exc).__name__}: {exc}"
                continue
            if value:
                found[what] = value
                mark(what)
        if len(found) == len(checks):
            return found
        if time.monotonic() > deadline:
            missing = ", ".join(
                w + (f" (last error {errors[w]})" if w in errors else "")
                for w in checks
                if w not in found
            )
            raise AssertionError(f"not seen within {timeout:g} s: {missing}")
        time.sleep(every)


# -- the load -------------------------------------------------------------------------
class LiveLoad:
    """Open-loop Poisson load through the router on a thread, until :meth:`stop`; every
    request recorded (send time from the load's start, latency, status); the bodies may
    be swapped mid-run (:meth:`set_bodies`)."""

    def __init__(self, host: str, bodies: list[bytes], rate: float, seed: int) -> None:
        from recserve_dev.loadgen import Target, TraceResult, open_loop_trace, thinned_arrivals

        self.target = Target(host, 8080, "/v1/rank", bodies)
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.result: TraceResult | None = None
        offsets = thinned_arrivals(lambda _t: rate, MAX_LOAD_S, rate, seed=seed)

        def on_start(t0: float) -> None:
            self.t0 = t0

        def run() -> None:
            self.result = asyncio.run(
                open_loop_trace(
                    self.target, offsets, timeout_s=5.0, on_start=on_start, stop=self._stop
                )
            )

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        """Seconds since the load began."""
        return time.monotonic() - self.t0

    def set_bodies(self, bodies: list[bytes]) -> None:
        self.target.set_bodies(bodies)

    def stop(self) -> Any:
        self._stop.set()
        self._thread.join()
        assert self.result is not None
        return self.result


@dataclass
class Outcome:
    """One scenario of one run: its measures, its marks (seconds from the load's start)
    and every request."""

    scenario: str
    run: int = 1
    measures: dict[str, Any] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    steady_s: float = 0.0
    steady_actions: int = 0
    send_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latency_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    codes: dict[str, int] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


# -- the bench ------------------------------------------------------------------------
class DriftBench(Bench):
    """The local control plane with the chart, and the drift scenarios."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        super().__init__(args, work)
        # the emulated device's costs, live: outside /tmp, which the local cluster's node
        # agent maps to each pod's own emptyDir (the operator passes the path on)
        shm = Path("/dev/shm")
        self.device = (
            shm if shm.is_dir() else Path("/var/tmp")
        ) / f"recserve-drift-{os.getpid()}.json"
        self.variants: dict[str, Path] = {}
        self.names: dict[str, str] = {}
        self.real: Any = None
        self.layout: Any = None  # the current scenario's build in the store

    def server_args(self) -> list[str]:
        return [*super().server_args(), f"--emulate-file={self.device}"]

    def set_device(self, factor: float) -> None:
        """Every server's emulated device ``factor`` times as slow as profiled."""
        tmp = self.device.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "emulate_us_per_row": US_PER_ROW * factor,
                    "emulate_us_per_batch": US_PER_BATCH * factor,
                    "speedup_by_precision": {"int8": INT8_SPEEDUP},
                }
            )
        )
        tmp.replace(self.device)

    def _template(self) -> None:
        """The FP32 reference, a static INT8 of it, an INT8 of another model's weights
        (the bad variant), their measured profile (for the shape), eval data and the
        request bodies (in place of the autoscale bench's template)."""
        from recserve_dev.testmodel import (
            TestModelSpec,
            quantize_variant,
            quick_profile,
            rank_bodies,
            static_variant,
            write_eval_csv,
            write_variant,
        )
        from recserve_runtime.artifacts import load_manifest

        variants = self.work / "template" / "variants"
        reference = write_variant(variants)
        other = write_variant(self.work / "template" / "other", TestModelSpec(seed=7))
        self.variants = {
            "reference": reference,
            "static": static_variant(reference, variants),
            "bad": quantize_variant(other, variants),
        }
        self.real = quick_profile(variants, self.work / "template" / "profile.json")
        self.train_csv = write_eval_csv(reference, self.work / "train.csv", 4000, seed=1)
        self.test_csv = write_eval_csv(reference, self.work / "test.csv", 3000, seed=2)
        self.manifest = load_manifest(reference)
        # the variants' names in the RecModel's status: the model's, then the manifest's
        self.labels = {k: load_manifest(v).name for k, v in self.variants.items()}  # pods'
        self.names = {k: f"{MODEL}-{label}" for k, label in self.labels.items()}
        # many distinct users and items: 64 bodies repeat 64 users, whose dense columns
        # alone then sit far enough from the training bins for data drift (PSI 0.33 seen)
        self.steady_bodies = rank_bodies(self.manifest, count=BODIES, candidates=CANDIDATES)
        # made here, not mid-run: making them holds the GIL for seconds, which stalls the
        # load generator's thread (a 870 ms p99 that was the benchmark's own)
        self.shifted_bodies = rank_bodies(
            self.manifest, count=BODIES, candidates=CANDIDATES, dense_shift=DENSE_SHIFT
        )

    def profile_with(self, faster: dict[str, float]) -> Any:
        """The emulated profile of every variant, those in ``faster`` (folder name ->
        speed-up) that many times as fast as the device."""
        from recserve_dev.testmodel import emulated_profile

        base = emulated_profile(self.real, US_PER_BATCH, US_PER_ROW)
        variants = dict(base.variants)
        for name, speedup in faster.items():
            fast = emulated_profile(self.real, US_PER_BATCH / speedup, US_PER_ROW / speedup)
            variants[name] = fast.variants[name]
        return base.model_copy(update={"variants": variants})

    # -- documents --------------------------------------------------------------------
    def policy(self, namespace: str, scenario: str) -> dict[str, Any]:
        """The scenario's policy: the latency-first example, short intervals (documented
        in the JSON's ``settings``)."""
        from recserve_dev.localcluster.tools import repo_root

        policy = _examples(repo_root())["latency-first"]
        policy["metadata"] = {"name": "drift", "namespace": namespace}
        spec = policy["spec"]
        spec["objectives"]["p99LatencyTargetMilliseconds"] = int(self.args.slo_ms)
        spec["objectives"]["throughputFloorRequestsPerSecond"] = 1
        spec["objectives"]["accuracyBudgetBasisPoints"] = ACCURACY_BUDGET_BP
        spec["autoscaling"] = {
            "minReplicas": 1,
            "maxReplicas": 4,
            "maxBatchSize": 512,
            "intervalSeconds": 5,
            "scaleUpCooldownSeconds": 30,
            "scaleDownCooldownSeconds": 120,
        }
        spec["drift"] = dict(DRIFT)
        spec["rollout"] = dict(ROLLOUT)
        spec["failover"] = {"pendingDeadlineSeconds": 60}
        return policy

    def model(self, namespace: str, pools: list[str], scenario: str) -> dict[str, Any]:
        from recserve_dev.localcluster.tools import repo_root

        model = _examples(repo_root())["movielens-dlrm"]
        model["metadata"] = {"name": MODEL, "namespace": namespace}
        model["spec"]["policyRef"] = {"name": "drift"}
        model["spec"]["hardwarePoolRefs"] = [{"name": p} for p in pools]
        model["spec"]["traffic"] = {
            "expectedRequestsPerSecond": round(RATE_RPS),
            "peakFactorPercent": 100,
            "candidatesPerRequest": CANDIDATES,
        }
        if scenario == "fidelity":
            model["spec"]["evalDataset"] = {
                "name": "custom",
                "uri": str(self.train_csv),
                "testUri": str(self.test_csv),
            }
        return model

    # -- a scenario's model ---------------------------------------------------------------
    def create(
        self,
        namespace: str,
        scenario: str,
        pools: list[str],
        variants: list[str],
        profile: Any,
    ) -> Any:
        """Lay the variants, their profile per pool and the build report into the store,
        then create the policy and the RecModel (in that order: a RecModel that finds no
        build report starts a real build Job). Returns the store layout."""
        from kubernetes import client

        from recserve_operator.api import GROUP, VERSION, OptimizationPolicy, RecModel
        from recserve_operator.children import content_hash
        from recserve_runtime.artifacts import BuildReport, StoreLayout

        custom = client.CustomObjectsApi(self.api)
        self.namespace(namespace, None)
        policy = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "optimizationpolicies", self.policy(namespace, scenario)
        )
        compression = OptimizationPolicy.model_validate(policy).spec.compression
        raw = self.model(namespace, pools, scenario)
        digest = content_hash(RecModel.model_validate(raw).spec, compression)
        layout = StoreLayout.of(self.store, namespace, MODEL, digest)
        for key in variants:
            folder = self.variants[key]
            shutil.copytree(folder, layout.variant(folder.name))
        for pool in pools:
            profile.write(layout.profile(pool))
        BuildReport(hardware="cpu", threads=1, model={"synthetic": True}).write(layout.report)
        stored = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", raw)
        if content_hash(RecModel.model_validate(stored).spec, compression) != digest:
            raise RuntimeError("the API server's defaults changed the RecModel's hash")
        return layout

    def status(self, namespace: str) -> dict[str, Any]:
        from kubernetes import client

        from recserve_operator.api import GROUP, VERSION

        obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "recmodels", MODEL
        )
        return dict(obj.get("status") or {})

    def served(self, namespace: str, key: str) -> set[str]:
        """The placements' pools (or variants) when the model is Ready, else nothing."""
        status = self.status(namespace)
        conds = status.get("conditions") or []
        if not any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            return set()
        return {p[key] for p in status.get("placements") or []}

    def ready_pods(self, namespace: str, variant: str) -> int:
        """The model's Ready server pods of ``variant`` (its name in the store) that are
        not being deleted: the ones the routers send requests to."""
        from kubernetes import client

        from recserve_operator.children import dns_name

        label = dns_name(variant)  # what the operator writes on the pods
        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            namespace, label_selector=f"recserve.io/model={MODEL},recserve.io/variant={label}"
        )
        return sum(
            1
            for p in pods.items
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        )

    def actions(self, namespace: str) -> int:
        """What the operator has done about drift so far: lastOptimization entries, plus
        one if the Drift condition is True without one."""
        status = self.status(namespace)
        entries = len(status.get("lastOptimization") or [])
        drift = any(
            c["type"] == "Drift" and c["status"] == "True" for c in status.get("conditions") or []
        )
        return entries or int(drift)

    # -- one scenario -----------------------------------------------------------------
    def scenario(self, name: str, run: int) -> Outcome:
        """Serve, load steadily for ``--steady-s``, change one thing, measure."""
        namespace = f"drift-{name}-{run}"
        out = Outcome(name, run)
        setup = getattr(self, f"setup_{name}")
        pools, variants, profile, first = setup()
        self.layout = self.create(namespace, name, pools, variants, profile)
        key, value = first
        _until(lambda: self.served(namespace, key) == {value}, 300, f"{name}: served {value}")
        router = self.router(MODEL, namespace)
        load = LiveLoad(router, self.steady_bodies, RATE_RPS, seed=run)
        _log(f"{name} (run {run}): served on {value}; steady load {self.args.steady_s:g} s")
        try:
            time.sleep(self.args.steady_s)
            out.steady_s = load.now()
            out.steady_actions = self.actions(namespace)
            act = getattr(self, f"act_{name}")
            try:
                act(namespace, router, load, out)
            except AssertionError as exc:  # a wait timed out: recorded, the run goes on
                out.measures["error"] = str(exc)[:1000]
                _log(f"  {name}: {out.measures['error']}")
        finally:
            result = load.stop()
            if name == "latency":
                self.set_device(1.0)
        out.send_s = result.send_s
        out.latency_s = np.where(result.ok, result.latency_s, np.inf)
        out.codes = result.codes
        out.measures["requests"] = len(result.send_s)
        out.measures["failed"] = int(np.count_nonzero(~result.ok))
        out.events = self.events(namespace, MODEL, load.t0, involved=(MODEL,), reasons=None)
        self.remove("recserve", MODEL, namespace)
        _log(f"  -> {name}: {out.measures}; false alarms in steady load: {out.steady_actions}")
        return out

    def mark(self, out: Outcome, load: LiveLoad, what: str) -> float:
        out.marks[what] = round(load.now(), 2)
        return out.marks[what]

    # latency ------------------------------------------------------------------------
    def setup_latency(self) -> tuple[list[str], list[str], Any, tuple[str, str]]:
        self.set_device(1.0)
        return [POOL], ["reference"], self.profile_with({}), ("pool", POOL)

    def act_latency(self, ns: str, router: str, load: LiveLoad, out: Outcome) -> None:
        changed = self.mark(out, load, "slowed 2x")
        self.set_device(SLOWDOWN)

        def entry() -> dict[str, Any] | None:
            entries = self.status(ns).get("lastOptimization") or []
            return next((e for e in entries if e["cause"].startswith("LatencyDrift")), None)

        _until(entry, 600, "latency drift detected")
        detected = self.mark(out, load, "detected")

        def replanned() -> bool:
            found = entry()
            return bool(found and found["outcome"] != "pending" and self.served(ns, "pool"))

        _until(replanned, 600, "re-profiled and re-planned")
        done = self.mark(out, load, "re-planned")
        found = entry() or {}
        out.measures.update(
            latency_drift_detect_s=round(detected - changed, 2),
            latency_drift_replan_s=round(done - detected, 2),
            outcome=found.get("outcome"),
            evidence=found.get("evidence"),
        )

    # fidelity -----------------------------------------------------------------------
    def setup_fidelity(self) -> tuple[list[str], list[str], Any, tuple[str, str]]:
        profile = self.profile_with({self.variants["static"].name: INT8_SPEEDUP})
        return [POOL], ["reference", "static"], profile, ("variant", self.names["static"])

    def act_fidelity(self, ns: str, router: str, load: LiveLoad, out: Outcome) -> None:
        static = self.names["static"]
        load.set_bodies(self.shifted_bodies)
        changed = self.mark(out, load, "inputs shifted")

        def detected_now() -> bool:
            # the Drift condition names every finding; lastOptimization only the ones
            # acted on (data drift on the same inputs may have started the action)
            status = self.status(ns)
            conds = status.get("conditions") or []
            drift: dict[str, Any] = next((c for c in conds if c["type"] == "Drift"), {})
            entries = status.get("lastOptimization") or []
            return "fidelity drift" in drift.get("message", "") or any(
                "FidelityDrift" in e["cause"] for e in entries
            )

        def off_the_int8() -> bool:
            # no pod of it takes requests: the plan alone may have moved on while the
            # INT8 still serves the stable side of its successor's canary
            served = self.served(ns, "variant")
            return (
                bool(served)
                and static not in served
                and not self.ready_pods(ns, self.labels["static"])
            )

        def recalibrated() -> dict[str, Any] | None:
            entries = self.status(ns).get("lastOptimization") or []
            found = next((e for e in entries if e.get("recalibration")), None)
            return found if found and found["outcome"] != "pending" else None

        def rolled_out() -> str | None:
            closed = recalibrated()
            if closed is None:
                return None
            if not closed["outcome"].startswith("recalibrated"):
                return "failed"  # nothing to roll out (its mark is not shown)
            new = f"{static}-recal1"
            done = self.served(ns, "variant") == {new} and not self.status(ns).get("rollouts")
            return "served" if done else None

        # watched side by side: one that happens first is not marked when another is
        got = first_times(
            {
                "detected": detected_now,
                "off the INT8": off_the_int8,
                "recalibrated": recalibrated,
                "recalibrated served": rolled_out,
            },
            900,
            lambda what: self.mark(out, load, what),
        )
        detected, replanned = out.marks["detected"], out.marks["off the INT8"]
        recal = out.marks["recalibrated"]
        rolled = got["recalibrated served"] == "served"
        served = out.marks["recalibrated served"] if rolled else None
        if not rolled:
            del out.marks["recalibrated served"]
        out.measures.update(
            fidelity_drift_detect_s=round(detected - changed, 2),
            # 0 where the INT8 was out of service before its drift was found
            fidelity_replan_s=round(max(replanned - detected, 0.0), 2),
            recalibrated_s=round(recal - changed, 2),
            recalibrated_served_s=None if served is None else round(served - changed, 2),
            actions=[
                f"{e['cause']}: {e['action']} -> {e['outcome']}"
                for e in self.status(ns).get("lastOptimization") or []
            ],
        )

    # canary -------------------------------------------------------------------------
    def setup_canary(self) -> tuple[list[str], list[str], Any, tuple[str, str]]:
        slower = self.profile_with({self.variants["bad"].name: 0.25})  # not planned first
        return [POOL], ["reference", "bad"], slower, ("variant", self.names["reference"])

    def act_canary(self, ns: str, router: str, load: LiveLoad, out: Outcome) -> None:
        from kubernetes import client

        from recserve_dev.servertesting import track_counts
        from recserve_operator.api import GROUP, VERSION

        bad_folder = self.variants["bad"].name
        bad = self.names["bad"]
        before = track_counts(router)
        # the new plan: the bad INT8 profiled as fast as the device runs it (until now its
        # profile said 4x slower, so the reference was planned), and a spec edit that makes
        # the operator plan again
        self.profile_with({bad_folder: INT8_SPEEDUP}).write(self.layout.profile(POOL))
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            GROUP, VERSION, ns, "recmodels", MODEL,
            {"spec": {"traffic": {"expectedRequestsPerSecond": round(RATE_RPS) + 1}}},
        )  # fmt: skip
        pushed = self.mark(out, load, "bad plan pushed")

        def phase() -> str | None:
            rollouts = self.status(ns).get("rollouts") or []
            return rollouts[0]["phase"] if rollouts else None

        _until(lambda: phase() == "Progressing", 300, "the canary taking requests")
        progressing = self.mark(out, load, "canary progressing")
        _until(lambda: bad in (self.status(ns).get("driftedVariants") or []), 600, "rolled back")
        rolled = self.mark(out, load, "rolled back")
        time.sleep(5)  # requests in flight to the canary end
        after = track_counts(router)
        canary = after["canary"] - before["canary"]
        total = canary + after["stable"] - before["stable"]
        entries = self.status(ns).get("lastOptimization") or []
        entry: dict[str, Any] = next((e for e in entries if e["cause"] == "CanaryFailed"), {})
        out.measures.update(
            bad_canary_rollback_s=round(rolled - pushed, 2),
            bad_canary_rollback_from_progressing_s=round(rolled - progressing, 2),
            bad_canary_traffic_pct=share_pct(canary, total),
            canary_requests=canary,
            evidence=entry.get("evidence"),
        )

    # failover -----------------------------------------------------------------------
    def setup_failover(self) -> tuple[list[str], list[str], Any, tuple[str, str]]:
        from kubernetes import client

        from recserve_dev.localcluster.tools import repo_root
        from recserve_operator.api import GROUP, VERSION

        custom = client.CustomObjectsApi(self.api)
        try:
            custom.get_cluster_custom_object(GROUP, VERSION, "hardwarepools", GPU_POOL)
        except client.ApiException:
            pool = _examples(repo_root())["gpu-pool"]
            pool["metadata"] = {"name": GPU_POOL}
            pool["spec"]["costPerReplicaHourMillicents"] = 1000  # cheaper: planned first
            custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
        return [GPU_POOL, POOL], ["reference"], self.profile_with({}), ("pool", GPU_POOL)

    def gpu_nodes(self) -> list[str]:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        return [
            n.metadata.name for n in core.list_node(label_selector="recserve.io/hardware=gpu").items
        ]

    def cordon(self, nodes: list[str], on: bool) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        for node in nodes:
            core.patch_node(node, {"spec": {"unschedulable": on}})

    def act_failover(self, ns: str, router: str, load: LiveLoad, out: Outcome) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        nodes = self.gpu_nodes()
        try:
            cordoned = self.mark(out, load, "GPU nodes cordoned, pods deleted")
            self.cordon(nodes, True)
            core.delete_collection_namespaced_pod(
                ns, label_selector=f"recserve.io/model={MODEL},recserve.io/pool={GPU_POOL}"
            )
            _until(lambda: self.served(ns, "pool") == {POOL}, 300, "Ready on the CPU pool")
            ready = self.mark(out, load, "Ready on the CPU pool")
            time.sleep(self.args.settle_s)  # the load on the new pool, for the p99 restore
            uncordoned = self.mark(out, load, "GPU nodes uncordoned")
            self.cordon(nodes, False)
            _until(lambda: self.served(ns, "pool") == {GPU_POOL}, 300, "back on the GPU pool")
            back = self.mark(out, load, "back on the GPU pool")
        finally:
            self.cordon(nodes, False)
        out.measures.update(
            failover_ready_s=round(ready - cordoned, 2),
            failover_back_s=round(back - uncordoned, 2),
        )

    def restore(self, out: Outcome) -> float | None:
        """Cordon to the rolling p99 (failures as inf) within the SLO for good, up to the
        end of the settle window (the uncordon)."""
        start = out.marks.get("GPU nodes cordoned, pods deleted")
        end = out.marks.get("GPU nodes uncordoned")
        if start is None or end is None:  # the scenario did not get that far
            return None
        grid = np.arange(1.0, math.floor(end) + 1.0)
        roll = rolling_p99(out.send_s, out.latency_s, grid)  # send_s sorted: the arrivals
        return restore_time(grid, roll, self.slo_s, start, end)


# -- policy settings (the JSON's `settings`) ------------------------------------------
DRIFT = {
    "checkIntervalSeconds": 5,
    "sustainedSeconds": 20,
    "cooldownSeconds": 600,
    "latencyDriftBasisPoints": 5000,
    "capacityDriftBasisPoints": 9000,
    "fidelitySampleBasisPoints": 5000,
    "fidelityAgreementBasisPoints": 8500,
    "recalibrationSampleRows": 1024,
}
ROLLOUT = {
    "stepWeightsPercent": [5, 10, 25, 50, 100],
    "stepSeconds": 15,
    "failureLimit": 2,
    "minRequests": 5,
    "fidelitySampleBasisPoints": 10000,
}


def plot(outcome: Outcome, slo_s: float, path: Path) -> None:
    """Rolling p99 and answers per second over the scenario, its marks as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    if len(outcome.send_s):
        end = float(outcome.send_s.max()) + 1
        grid = np.arange(1.0, math.floor(end) + 1.0)
        roll = rolling_p99(outcome.send_s, outcome.latency_s, grid)
        axes[0].plot(grid, np.minimum(roll * 1000, 10 * slo_s * 1000), label="p99, rolling 10 s")
        ok = np.isfinite(outcome.latency_s)
        bins = np.arange(0, end + 1.0)
        axes[1].plot(bins[:-1], np.histogram(outcome.send_s[ok], bins)[0], label="answered/s")
        axes[1].plot(bins[:-1], np.histogram(outcome.send_s[~ok], bins)[0], label="failed/s")
    axes[0].axhline(slo_s * 1000, color="red", linestyle="--", label="SLO")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("ms (failures capped at 10x SLO)")
    axes[1].set_ylabel("requests/s")
    axes[1].set_xlabel("seconds from the load's start")
    for ax in axes:
        ax.axvspan(0, outcome.steady_s, color="grey", alpha=0.15)
        for i, (what, at) in enumerate(outcome.marks.items()):
            ax.axvline(at, color=f"C{i + 2}", linestyle=":", label=what)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"recserve bench drift: {outcome.scenario} (grey: steady, false alarms counted)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every scenario ``--runs`` times; the report (medians, spread, settings)."""
    began = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenarios = pick(args.scenarios, SCENARIOS, "scenarios")
    b = DriftBench(args, work)
    outcomes: list[Outcome] = []
    try:
        b.set_device(1.0)
        b.start(want_keda=False)
        for run in range(1, args.runs + 1):
            for name in scenarios:
                outcome = b.scenario(name, run)
                if name == "failover":
                    outcome.measures["failover_restore_s"] = b.restore(outcome)
                outcomes.append(outcome)
                plot(outcome, b.slo_s, out / f"drift-{name}-run{run}.png")
    finally:
        b.stop()
        b.device.unlink(missing_ok=True)
    report: dict[str, Any] = {}
    spread: dict[str, list[Any]] = {}
    for key in TARGETS:
        if key == "false_alarms_steady_hour":
            continue
        values = [o.measures.get(key) for o in outcomes if key in o.measures]
        report[key], spread[key] = median_spread(values)
    steady_s = sum(o.steady_s for o in outcomes)
    alarms = sum(o.steady_actions for o in outcomes)
    report["false_alarms_steady_hour"] = false_alarms_per_hour(alarms, steady_s)
    report["false_alarms_steady"] = alarms
    report["steady_observed_s"] = round(steady_s, 1)
    for key in EXTRA_KEYS:
        values = [o.measures.get(key) for o in outcomes if key in o.measures]
        report[key], spread[key] = median_spread(values)
    report["met"] = {  # None: not measured (the steady hour, in a shorter run)
        k: None if report[k] is None else report[k] <= target for k, target in TARGETS.items()
    }
    report.update(
        targets=TARGETS,
        spread=spread,
        runs=args.runs,
        failed_requests={f"{o.scenario}/run{o.run}": o.codes for o in outcomes},
        settings={
            "rate_rps": RATE_RPS,
            "candidates": CANDIDATES,
            "steady_s": args.steady_s,
            "slo_p99_ms": args.slo_ms,
            "drift": DRIFT,
            "rollout": ROLLOUT,
            "slowdown": SLOWDOWN,
            "dense_shift_sd": DENSE_SHIFT,
            "emulated": f"{US_PER_BATCH / 1000:g} ms per batch + {US_PER_ROW:g} us per row, slept",
        },
        pngs=sorted(str(p) for p in out.glob("drift-*.png")),
        wall_s=round(time.monotonic() - began, 1),
    )
    details = [
        {
            "scenario": o.scenario,
            "run": o.run,
            "measures": o.measures,
            "marks": o.marks,
            "steady_s": o.steady_s,
            "steady_actions": o.steady_actions,
            "codes": o.codes,
            "events": o.events,
        }
        for o in outcomes
    ]
    (out / "details.json").write_text(
        json.dumps(finite({"report": report, "runs": details}), indent=2, default=str)
    )
    return report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve bench drift` (sharing the `bench` group with other benches)."""
    from recserve_runtime.cli import bench_group

    p = bench_group(sub).add_parser(
        "drift",
        help="drift detection, re-optimization, canary rollback and failover, timed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {SCENARIOS}")
    p.add_argument("--runs", type=int, default=2, help="runs of every scenario (default 2)")
    p.add_argument(
        "--steady-s",
        type=float,
        default=60.0,
        help="steady load before each change, its actions counted as false alarms (default "
        "60; 900 with four scenarios gives the hour of false_alarms_steady_hour per run)",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=40.0,
        help="failover: load on the CPU pool before the GPU nodes are uncordoned (default 40)",
    )
    p.add_argument("--out", default="bench-drift", help="folder for PNGs and details.json")
    p.add_argument("--slo-ms", type=float, default=500.0, help="p99 target (default 500)")
    p.add_argument("--root", default="", help="local cluster state folder (default: temp)")
    p.set_defaults(handler=_bench_drift, quick=True)


def _bench_drift(args: argparse.Namespace) -> int:
    return run_cluster_bench("drift", bench, args)
