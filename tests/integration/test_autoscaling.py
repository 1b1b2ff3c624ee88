"""The autoscaler on the local control plane: real Prometheus, real servers, real load.

The operator is installed with the chart and reads the local Prometheus. Servers run in
emulated-device mode (a fixed cost per batch plus one per row, slept, not computed), so a
replica has a fixed capacity on a shared two-core machine, and the variant's profile is
written to match it (the store is laid out in advance: no build, no profile Jobs). A load
step through the router makes replicas and the batch ceiling rise; with Prometheus
stopped, decisions are held and the Scaling condition says why; after the load, both
fall back once the cooldown has passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from recserve_dev.loadgen import RunResult, Target, open_loop
from recserve_dev.localcluster.prometheus import SCRAPE_INTERVAL_SECONDS
from recserve_dev.servertesting import track_counts
from recserve_dev.testmodel import emulated_profile, rank_bodies, write_variant
from recserve_operator.api import GROUP, VERSION, OptimizationPolicy, RecModel
from recserve_operator.children import content_hash
from recserve_operator.observe import Windows, queries
from recserve_runtime.artifacts import (
    MODEL_FILE,
    BuildReport,
    ProfileReport,
    StoreLayout,
    load_manifest,
)
from tests.helpers import eventually, helm
from tests.manifests import REPO, example

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
RELEASE = NS_OPERATOR = "recserve-autoscale"
US_PER_BATCH, US_PER_ROW = 20000.0, 50.0  # the emulated device
CANDIDATES = 64
SLO_MS = 1000
POOL = "cpu-pool"
MODEL = "as-model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def autoscaling(
    local_cluster: Any,
    k8s: client.ApiClient,
    crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The chart installed against the local Prometheus, servers in emulated-device mode."""
    metrics_port = _free_port()
    assert local_cluster.state.prometheus_url, "the local control plane runs Prometheus"
    root = tmp_path_factory.mktemp("autoscale")
    store = root / "store"
    store.mkdir()
    variants = root / "template" / "variants"
    folder = write_variant(variants)
    out = root / "template" / "profile.json"
    subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "profile", f"--variants={variants}",
         f"--json={out}", "--seconds=0.1", "--no-serving"],
        check=True, capture_output=True,
    )  # fmt: skip
    profile = emulated_profile(ProfileReport.read(out), US_PER_BATCH, US_PER_ROW)
    helm(
        local_cluster,
        "install", RELEASE, str(REPO / "charts" / "recserve"),
        "-n", NS_OPERATOR, "--create-namespace",
        "--set", f"artifactStore.uri={store}",
        "--set", f"prometheus.url={local_cluster.state.prometheus_url}",
        "--set", f"prometheus.scrapeIntervalSeconds={SCRAPE_INTERVAL_SECONDS}",
        "--set", "autoscaler.tickSeconds=1",
        "--set", f"metrics.port={metrics_port}",
        "--set", f"serverArgs[0]=--emulate-us-per-row={US_PER_ROW}",
        "--set", f"serverArgs[1]=--emulate-us-per-batch={US_PER_BATCH}",
        "--set", "extraEnv[0].name=RECSERVE_RECONCILE_INTERVAL_SECONDS",
        "--set-string", "extraEnv[0].value=2",
    )  # fmt: skip
    core = client.CoreV1Api(k8s)

    def operator_ready() -> bool:
        pods = core.list_namespaced_pod(
            NS_OPERATOR, label_selector="app.kubernetes.io/component=operator"
        ).items
        return any(
            c.type == "Ready" and c.status == "True"
            for p in pods
            for c in p.status.conditions or []
        )

    eventually(operator_ready, 90, 1, "the operator pod Ready")
    custom = client.CustomObjectsApi(k8s)
    custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", example(POOL))
    yield {"store": store, "folder": folder, "profile": profile, "metrics_port": metrics_port}
    custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", POOL)
    helm(local_cluster, "uninstall", RELEASE, "-n", NS_OPERATOR)
    client.CoreV1Api(k8s).delete_namespace(NS_OPERATOR)


def _policy(namespace: str) -> dict[str, Any]:
    policy = example("latency-first")
    policy["metadata"] = {"name": "autoscaled", "namespace": namespace}
    policy["spec"]["objectives"]["p99LatencyTargetMilliseconds"] = SLO_MS
    policy["spec"]["autoscaling"] = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "maxBatchSize": 512,
        "intervalSeconds": 2,
        "scaleUpCooldownSeconds": 0,
        "scaleDownCooldownSeconds": 30,
    }
    return policy


def _model(namespace: str) -> dict[str, Any]:
    model = example("movielens-dlrm")
    model["metadata"] = {"name": MODEL, "namespace": namespace}
    model["spec"]["policyRef"] = {"name": "autoscaled"}
    model["spec"]["hardwarePoolRefs"] = [{"name": POOL}]
    model["spec"]["traffic"] = {
        "expectedRequestsPerSecond": 20,
        "peakFactorPercent": 100,
        "candidatesPerRequest": CANDIDATES,
    }
    return model


class Load:
    """Open-loop load through the router on a thread of its own."""

    def __init__(self, target: Target, rate: float, seconds: float) -> None:
        """``seconds``: the most it runs; :meth:`stop` ends it once a test has seen what
        the load was for (waiting out the rest cost minutes of CI per test)."""
        self.result: RunResult | None = None
        self._stop = threading.Event()
        run = open_loop(target, rate, seconds, stop=self._stop)
        self._thread = threading.Thread(
            target=lambda: setattr(self, "result", asyncio.run(run)), daemon=True
        )
        self._thread.start()

    def stop(self) -> RunResult:
        """End the load now (requests in flight finish) and return what it did."""
        self._stop.set()
        self._thread.join()
        assert self.result is not None
        return self.result


def _create_built(
    custom: client.CustomObjectsApi,
    autoscaling: dict[str, Any],
    namespace: str,
    raw: dict[str, Any],
    policy: dict[str, Any],
    pools: list[str],
    profile: ProfileReport | None = None,
    variants: list[Path] | None = None,
) -> StoreLayout[Path]:
    """Lay the variant, its emulated profile per pool (or ``profile``) and the build
    report into the store, then create the RecModel (in that order: a RecModel that finds
    no build report starts a real build Job). Returns where the build is."""
    compression = OptimizationPolicy.model_validate(policy).spec.compression
    digest = content_hash(RecModel.model_validate(raw).spec, compression)
    layout = StoreLayout.of(autoscaling["store"], namespace, MODEL, digest)
    for folder in variants or [autoscaling["folder"]]:
        shutil.copytree(folder, layout.variant(folder.name))
    for pool in pools:
        (profile or autoscaling["profile"]).write(layout.profile(pool))
    BuildReport(hardware="cpu", threads=1, model={"synthetic": True}).write(layout.report)
    stored = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", raw)
    # the API server's defaults are the types' own: the operator finds this very build
    assert content_hash(RecModel.model_validate(stored).spec, compression) == digest
    return layout


def _reference_and_faster_int8(
    autoscaling: dict[str, Any], tmp_path: Path, int8_of: Path | None = None
) -> tuple[Path, Path, ProfileReport]:
    """The FP32 test variant and a dynamic-INT8 copy (of ``int8_of``'s weights, default
    its own) in one folder, and their emulated profile with the INT8 twice as fast: the
    planner serves the INT8 first."""
    reference, int8, real = _reference_and_int8(autoscaling, tmp_path, int8_of)
    return reference, int8, _int8_at(real, int8, 2.0)


def _reference_and_int8(
    autoscaling: dict[str, Any], tmp_path: Path, int8_of: Path | None = None
) -> tuple[Path, Path, ProfileReport]:
    """The FP32 test variant and a dynamic-INT8 copy (of ``int8_of``'s weights, default
    its own) in one folder, and their measured profile."""
    from recserve_dev.testmodel import quantize_variant

    variants = tmp_path / "variants"
    reference = Path(shutil.copytree(autoscaling["folder"], variants / autoscaling["folder"].name))
    int8 = quantize_variant(int8_of or reference, variants)
    out = tmp_path / "profile.json"
    subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "profile", f"--variants={variants}",
         f"--json={out}", "--seconds=0.1", "--no-serving"],
        check=True, capture_output=True,
    )  # fmt: skip
    return reference, int8, ProfileReport.read(out)


def _int8_at(real: ProfileReport, int8: Path, speedup: float) -> ProfileReport:
    """The emulated profile, with the INT8 ``speedup`` times as fast as the reference."""
    slow = emulated_profile(real, US_PER_BATCH, US_PER_ROW)
    fast = emulated_profile(real, US_PER_BATCH / speedup, US_PER_ROW / speedup)
    return slow.model_copy(
        update={"variants": {**slow.variants, int8.name: fast.variants[int8.name]}}
    )


def _model_status(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    """The test RecModel's status as the API server holds it."""
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", MODEL)
    return dict(obj.get("status") or {})


def _is_ready(status: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def _served(status: dict[str, Any], key: str) -> set[str]:
    """The placements' pools (or variants) when the model is Ready, else nothing."""
    return {p[key] for p in status.get("placements", [])} if _is_ready(status) else set()


def _pod_ip(core: client.CoreV1Api, namespace: str, selector: str) -> str:
    """The address of a Ready pod of ``selector`` (the router runs in two pods: the
    model is Ready as soon as one of them is)."""

    def ready_ip() -> str | None:
        for p in core.list_namespaced_pod(namespace, label_selector=selector).items:
            conds = p.status.conditions or []
            if p.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in conds):
                return str(p.status.pod_ip)
        return None

    return str(eventually(ready_ip, 60, 0.5, f"a Ready pod of {selector}"))


def _record(url: str, path: str, since_monotonic: float, until_wall: float) -> None:
    """Every autoscaler query over the run, as Prometheus answered them (2 s steps)."""
    end = time.time()
    start = end - (time.monotonic() - since_monotonic)
    series: dict[str, Any] = {"start": start, "step": 2.0}
    for name, text in queries(Windows(scrape_seconds=SCRAPE_INTERVAL_SECONDS)).items():
        params = urllib.parse.urlencode({"query": text, "start": start, "end": end, "step": 2})
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as r:
            doc = json.load(r)
        series[name] = [
            [float(t), v]
            for s in doc["data"]["result"]
            for t, v in s["values"]
            if s["metric"].get("recserve_io_model") == MODEL
        ]
    series["load_ended"] = until_wall
    Path(path).write_text(json.dumps(series))


def _prometheus(url: str, query: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(
        f"{url}/api/v1/query?query={urllib.parse.quote(query)}", timeout=5
    ) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


@pytest.mark.fault(
    "Prometheus stopped (SIGSTOP) at the peak of a load step",
    expect="replicas held, never scaled down; scales back once it answers",
)
def test_load_step_scales_up_holds_without_prometheus_and_scales_back(
    autoscaling: dict[str, Any],
    local_cluster: Any,
    k8s: client.ApiClient,
    namespace: str,
    measured: Callable[[str], None],
) -> None:
    custom, core, apps = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", _policy(namespace)
    )
    _create_built(custom, autoscaling, namespace, _model(namespace), policy, [POOL])

    def model() -> dict[str, Any]:
        return dict(
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", MODEL)
        )

    def condition(type_: str) -> dict[str, Any]:
        return next(
            (c for c in model().get("status", {}).get("conditions", []) if c["type"] == type_), {}
        )

    def state() -> Any:
        status = model().get("status", {})
        return {"placements": status.get("placements"), "conditions": status.get("conditions")}

    eventually(lambda: condition("Ready").get("status") == "True", 240, 1, "Ready", state)
    deployment = f"{MODEL}-{POOL}"
    limits_name = f"{MODEL}-{POOL}-limits"

    def replicas() -> int:
        return int(apps.read_namespaced_deployment(deployment, namespace).spec.replicas)

    def ceiling() -> int:
        cm = core.read_namespaced_config_map(limits_name, namespace)
        return int(json.loads(cm.data["limits.json"])["max_batch_rows"])

    assert replicas() == 1  # the plan: 20 rps at ~53 rps per replica (70% of 76)
    assert ceiling() == 128  # the plan's batch: two requests
    # metrics known while idle: a rate of 0, not unknown
    eventually(
        lambda: condition("Scaling").get("reason") == "MetricsKnown", 60, 1, "Scaling known", state
    )

    # the operator's queries, as written once, answer on this Prometheus
    prom = local_cluster.state.prometheus_url
    for _name, text in queries(Windows(scrape_seconds=SCRAPE_INTERVAL_SECONDS)).items():
        _prometheus(prom, text)  # raises on a query Prometheus refuses
    dashboard = json.loads((REPO / "charts/recserve/dashboards/recserve.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            _prometheus(prom, target["expr"].replace("$namespace", ".*").replace("$model", ".*"))

    router = _pod_ip(
        core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
    )
    bodies = rank_bodies(load_manifest(autoscaling["folder"]), count=64, candidates=CANDIDATES)
    target = Target(router, 8080, "/v1/rank", bodies)

    # 1. a step to 130 rps: more than one replica serves (76 rps) -> the ceiling of 2
    started = time.monotonic()
    load = Load(target, rate=130, seconds=150)
    eventually(lambda: replicas() == 2, 60, 1, "scaled up to the ceiling", state)
    up_after = time.monotonic() - started
    # the status written after the scale says why
    eventually(
        lambda: "over the ceiling of 2" in model()["status"]["placements"][0]["reason"],
        30, 1, "the reason for 2 replicas", state,
    )  # fmt: skip
    eventually(lambda: ceiling() > 128, 90, 1, "a higher batch ceiling under load", state)
    raised = ceiling()
    # the servers got it the way a pod does: the mounted ConfigMap, re-read
    server = _pod_ip(
        core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=server"
    )

    def server_ceiling() -> int:
        with urllib.request.urlopen(f"http://{server}:8001/admin/limits", timeout=5) as r:
            return int(json.load(r)["max_batch_rows"])

    eventually(
        lambda: server_ceiling() == ceiling(), 30, 1, "the server applies the ConfigMap", state
    )
    status = model()["status"]
    assert status["observedRequestsPerSecond"] > 60
    assert status["placements"][0]["observedRequestsPerSecond"] > 60

    # 2. Prometheus stopped at peak: decisions held, the condition says why, nothing scaled
    prometheus_pid = local_cluster.state.pids["prometheus"]
    os.kill(prometheus_pid, signal.SIGSTOP)
    try:
        eventually(
            lambda: condition("Scaling").get("reason") == "MetricsUnknown", 45, 1, "held", state
        )
        message = condition("Scaling")["message"]
        assert "Prometheus query failed" in message or "no fresh series" in message
        for _ in range(20):
            assert replicas() == 2
            time.sleep(1)
    finally:
        os.kill(prometheus_pid, signal.SIGCONT)
    eventually(
        lambda: condition("Scaling").get("reason") == "MetricsKnown", 60, 1, "known again", state
    )
    # The step and the held decisions are seen; the load runs 90 s in all (not its whole
    # 150 s): the 429s before the scale-up (about 8 s at 130 req/s over one replica's 76)
    # then stay a small share of what was sent, as the assertion below expects.
    time.sleep(max(0.0, started + 90 - time.monotonic()))
    result = load.stop()
    assert result.sent > 0 and result.ok > 0.9 * result.sent, result.summary()

    # 3. the load is over: batch ceiling back to the plan's, replicas down after the cooldown
    ended = time.monotonic()
    eventually(lambda: ceiling() == 128, 60, 1, "the plan's batch ceiling again", state)
    eventually(lambda: replicas() == 1, 150, 1, "scaled back down", state)
    down_after = time.monotonic() - ended
    assert down_after >= 30 - 5, "no scale-down before the cooldown"
    # the operator's own /metrics counted what it did
    operator_ip = _pod_ip(core, NS_OPERATOR, "app.kubernetes.io/component=operator")
    url = f"http://{operator_ip}:{autoscaling['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        exposed = r.read().decode()
    counted = {
        line.split("{")[0].split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in exposed.splitlines()
        if line.startswith("recserve_operator_")
    }
    assert 'kind="replicas_up"' in exposed and 'kind="replicas_down"' in exposed, exposed
    assert counted.get("recserve_operator_prometheus_query_errors_total", 0) >= 1
    assert counted.get("recserve_operator_reconcile_duration_seconds_count", 0) >= 1
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={MODEL}"
    ).items
    reasons = {e.reason for e in events}
    assert {"Scaled", "BatchLimits"} <= reasons, reasons
    record = os.environ.get("RECSERVE_RECORD_SERIES")
    if record:  # the autoscaler's inputs over this run, for tests/unit/test_autoscaler.py
        _record(prom, record, started - 20, time.time() - (time.monotonic() - ended))
    measured(
        f"scaled up {up_after:.1f} s after the step; ceiling raised to {raised}; "
        f"scaled down {down_after:.1f} s after the load; load: {result.summary()}"
    )


@pytest.mark.fault(
    "a pool's nodes cordoned", expect="served from the next pool; back when uncordoned"
)
def test_a_cordoned_pool_fails_over_to_the_next_and_comes_back(
    autoscaling: dict[str, Any],
    local_cluster: Any,
    k8s: client.ApiClient,
    namespace: str,
    measured: Callable[[str], None],
) -> None:
    """The cheaper cpu-pool serves; its nodes cordoned (the agent's and any simulated
    one), the gpu-pool takes the load, and the model is Ready there; uncordoned, the plan
    returns to the cpu-pool."""
    custom, core, apps = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s), client.AppsV1Api(k8s)
    custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", example("gpu-pool"))
    cpu_nodes = [
        n.metadata.name for n in core.list_node(label_selector="recserve.io/hardware=cpu").items
    ]
    try:
        policy = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "optimizationpolicies", _policy(namespace)
        )
        raw = _model(namespace)
        raw["spec"]["hardwarePoolRefs"] = [{"name": POOL}, {"name": "gpu-pool"}]
        _create_built(custom, autoscaling, namespace, raw, policy, [POOL, "gpu-pool"])

        def model() -> dict[str, Any]:
            return dict(
                custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", MODEL)
            )

        def serving_on() -> set[str]:
            return _served(model().get("status", {}), "pool")

        def state() -> Any:
            status = model().get("status", {})
            pool = custom.get_cluster_custom_object(GROUP, VERSION, "hardwarepools", POOL)
            nodes = {n: core.read_node(n).spec.unschedulable for n in cpu_nodes}
            return {
                "plan": status.get("plan"),
                "conditions": status.get("conditions"),
                "cpu-pool": pool.get("status"),
                "cordoned": nodes,
            }

        eventually(lambda: serving_on() == {POOL}, 240, 1, "served on the cpu-pool", state)
        started = time.monotonic()
        for node in cpu_nodes:
            core.patch_node(node, {"spec": {"unschedulable": True}})
        eventually(
            lambda: serving_on() == {"gpu-pool"}, 120, 1, "failed over to the gpu-pool", state
        )
        failover_s = time.monotonic() - started
        assert "cpu-pool has no Ready, schedulable node" in model()["status"]["plan"]
        assert not [
            d
            for d in apps.list_namespaced_deployment(namespace).items
            if d.metadata.name == f"{MODEL}-{POOL}"
        ]
        started = time.monotonic()
        for node in cpu_nodes:
            core.patch_node(node, {"spec": {"unschedulable": False}})
        eventually(lambda: serving_on() == {POOL}, 120, 1, "back on the cpu-pool", state)
        back_s = time.monotonic() - started
        measured(f"failover to the gpu-pool, Ready: {failover_s:.1f} s; back: {back_s:.1f} s")
    finally:
        for node in cpu_nodes:
            core.patch_node(node, {"spec": {"unschedulable": False}})
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", "gpu-pool")


@pytest.mark.fault(
    "a node loses power under its serving pods (NotReady)",
    expect="re-planned onto the next pool once NotReady; back when powered on",
)
def test_a_node_powered_off_under_its_servers_fails_over_and_comes_back(
    autoscaling: dict[str, Any],
    local_cluster: Any,
    k8s: client.ApiClient,
    namespace: str,
    measured: Callable[[str], None],
) -> None:
    """A pool on the agent's GPU node, made the cheapest, serves; the node loses power
    (its server processes die, its heartbeat stops, its pods' objects still say Running):
    the node controller marks it NotReady after its grace period, the pool has no Ready
    node, and the model is re-planned onto the cpu-pool. Powered on, the plan returns.
    (The GPU node: the cpu node also runs the operator and the router, which a real
    cluster would run elsewhere.)"""
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    pool = example("gpu-pool")
    pool["metadata"]["name"] = "gpu-cheap"
    pool["spec"]["costPerReplicaHourMillicents"] = 1000  # cheaper than the cpu-pool
    custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
    node = "local-gpu"
    try:
        policy = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "optimizationpolicies", _policy(namespace)
        )
        raw = _model(namespace)
        raw["spec"]["hardwarePoolRefs"] = [{"name": POOL}, {"name": "gpu-cheap"}]
        _create_built(custom, autoscaling, namespace, raw, policy, [POOL, "gpu-cheap"])

        def status() -> dict[str, Any]:
            return _model_status(custom, namespace)

        def node_ready() -> str:
            conds = core.read_node(node).status.conditions or []
            return next((c.status for c in conds if c.type == "Ready"), "absent")

        def state() -> Any:
            st = status()
            pool = custom.get_cluster_custom_object(GROUP, VERSION, "hardwarepools", "gpu-cheap")
            return {
                "plan": st.get("plan"),
                "conditions": st.get("conditions"),
                "gpu-cheap": pool.get("status"),
                "node Ready": node_ready(),
            }

        def on(pool: str) -> Callable[[], bool]:
            return lambda: _served(status(), "pool") == {pool}

        eventually(on("gpu-cheap"), 240, 1, "served on the gpu-cheap pool", state)
        started = time.monotonic()
        local_cluster.power(node, on=False)
        eventually(lambda: node_ready() != "True", 120, 1, "the node NotReady", state)
        not_ready_s = time.monotonic() - started
        eventually(on(POOL), 120, 1, "Ready on the cpu-pool", state)
        failover_s = time.monotonic() - started
        assert "gpu-cheap has no Ready, schedulable node" in status()["plan"], status()["plan"]
        started = time.monotonic()
        local_cluster.power(node, on=True)
        eventually(on("gpu-cheap"), 180, 1, "back on the gpu-cheap pool", state)
        back_s = time.monotonic() - started
        measured(
            f"node powered off: NotReady after {not_ready_s:.1f} s, Ready on the cpu-pool "
            f"after {failover_s:.1f} s; powered on: back on its pool in {back_s:.1f} s"
        )
    finally:
        local_cluster.power(node, on=True)
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", "gpu-cheap")


@pytest.mark.fault(
    "a pool's pods stay Pending (Insufficient memory)",
    expect=(
        "held out past failover.pendingDeadlineSeconds with the scheduler's reason; back when fixed"
    ),
)
def test_a_pool_whose_pods_stay_pending_fails_over_and_comes_back_when_fixed(
    autoscaling: dict[str, Any],
    k8s: client.ApiClient,
    namespace: str,
    measured: Callable[[str], None],
) -> None:
    """A cheaper pool on the same Ready nodes asks 1 TiB of memory per replica: its pods
    stay Pending (Insufficient memory); past failover.pendingDeadlineSeconds the pool is
    held out with the scheduler's reason and the cpu-pool serves. The pool fixed (its
    spec edited), it is back in the plan, and the cpu-pool serves until it is ready."""
    custom, apps = client.CustomObjectsApi(k8s), client.AppsV1Api(k8s)
    big = example(POOL)
    big["metadata"] = {"name": "cpu-too-big"}
    big["spec"]["resources"]["memoryMebibytes"] = 1024 * 1024
    big["spec"]["costPerReplicaHourMillicents"] = 1000  # cheaper: planned first
    custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", big)
    try:
        policy = _policy(namespace)
        policy["spec"]["failover"] = {"pendingDeadlineSeconds": 30}
        policy = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "optimizationpolicies", policy
        )
        raw = _model(namespace)
        raw["spec"]["hardwarePoolRefs"] = [{"name": "cpu-too-big"}, {"name": POOL}]
        _create_built(custom, autoscaling, namespace, raw, policy, ["cpu-too-big", POOL])
        created = time.monotonic()

        def status() -> dict[str, Any]:
            return _model_status(custom, namespace)

        def serving_on() -> set[str]:
            return _served(status(), "pool")

        def deployments() -> set[str]:
            return {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}

        def state() -> Any:
            st = status()
            return {k: st.get(k) for k in ("plan", "unavailablePools", "conditions")}

        eventually(
            lambda: {p["pool"] for p in status().get("placements", [])} == {"cpu-too-big"},
            120, 1, "planned on the cheaper pool first", state,
        )  # fmt: skip
        eventually(lambda: serving_on() == {POOL}, 180, 1, "failed over to the cpu-pool", state)
        failover_s = time.monotonic() - created
        [held] = status()["unavailablePools"]
        assert held["pool"] == "cpu-too-big"
        assert "Insufficient memory" in held["reason"], held
        assert "Insufficient memory" in status()["plan"]
        assert f"{MODEL}-cpu-too-big" not in deployments()
        events = client.CoreV1Api(k8s).list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={MODEL}"
        )
        assert "PoolUnavailable" in {e.reason for e in events.items}

        # the pool fixed: back in the plan; the cpu-pool serves until it is ready
        fixed = time.monotonic()
        custom.patch_cluster_custom_object(
            GROUP, VERSION, "hardwarepools", "cpu-too-big",
            {"spec": {"resources": {"memoryMebibytes": 512}}},
        )  # fmt: skip
        saw_both = False

        def back() -> bool:
            nonlocal saw_both
            names = deployments()
            saw_both |= {f"{MODEL}-cpu-too-big", f"{MODEL}-{POOL}"} <= names
            return serving_on() == {"cpu-too-big"}

        eventually(back, 120, 1, "back on the fixed pool", state)
        back_s = time.monotonic() - fixed
        assert status().get("unavailablePools") == []
        assert saw_both, "the cpu-pool served until the fixed pool was ready"
        eventually(lambda: f"{MODEL}-{POOL}" not in deployments(), 30, 1, "the cpu-pool released")
        measured(
            f"pending pool held out, Ready on the cpu-pool {failover_s:.1f} s after creation"
            f" (deadline 30 s); fixed pool Ready {back_s:.1f} s after its edit"
        )
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", "cpu-too-big")


def test_latency_drift_re_profiles_the_pool_and_re_plans(
    autoscaling: dict[str, Any], k8s: client.ApiClient, namespace: str
) -> None:
    """The pool's profile says the device is 4x faster than it is (as if the device had
    slowed down since it was profiled): under load the latency drift is detected, a
    profile Job runs on the pool (round 1, the real profiler) while the old profile keeps
    serving, and the model is re-planned from it; lastOptimization says so."""
    custom, batch = client.CustomObjectsApi(k8s), client.BatchV1Api(k8s)
    core = client.CoreV1Api(k8s)
    policy = _policy(namespace)
    policy["spec"]["drift"] = {
        "checkIntervalSeconds": 5,
        "sustainedSeconds": 20,
        "cooldownSeconds": 600,
        "latencyDriftBasisPoints": 5000,
    }
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    raw = _model(namespace)
    fast = emulated_profile(
        ProfileReport.model_validate(autoscaling["profile"].model_dump()),
        US_PER_BATCH / 4,
        US_PER_ROW / 4,
    )
    _create_built(custom, autoscaling, namespace, raw, policy, [POOL], fast)

    def status() -> dict[str, Any]:
        return _model_status(custom, namespace)

    def ready() -> bool:
        return _is_ready(status())

    def state() -> Any:
        st = status()
        return {k: st.get(k) for k in ("lastOptimization", "profileRounds", "conditions")}

    eventually(ready, 120, 1, "the model Ready", state)
    router = _pod_ip(
        core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
    )
    bodies = rank_bodies(load_manifest(autoscaling["folder"]), count=32, candidates=CANDIDATES)
    load = Load(Target(router, 8080, "/v1/rank", bodies), 15, 150)
    started = time.monotonic()

    def drift_found() -> bool:
        return any(
            c["type"] == "Drift" and c["status"] == "True" for c in status().get("conditions", [])
        )

    eventually(drift_found, 120, 1, "latency drift detected", state)
    detected_s = time.monotonic() - started
    eventually(lambda: bool(status().get("lastOptimization")), 30, 1, "a re-optimization", state)
    [entry] = status()["lastOptimization"]
    assert entry["cause"].startswith("LatencyDrift"), entry
    assert status()["profileRounds"] == {POOL: 1}
    assert ready(), "the old profile keeps serving while the pool is re-profiled"
    eventually(
        lambda: status()["lastOptimization"][0]["outcome"] != "pending",
        240, 2, "the re-profile done and re-planned", state,
    )  # fmt: skip
    replanned_s = time.monotonic() - started
    [entry] = status()["lastOptimization"]
    assert entry["outcome"].startswith("re-planned from the new profile"), entry

    def reprofile_jobs() -> list[Any]:
        items = batch.list_namespaced_job(namespace).items
        return [j for j in items if j.metadata.name.endswith("-r1")]

    # The operator reads the round's report from the store; the Job controller marks the
    # Job succeeded a moment after its pod exits, so the two may be seen in either order.
    eventually(
        lambda: [j.status.succeeded for j in reprofile_jobs()] == [1],
        30, 1, "the one re-profile Job succeeded", lambda: [j.status for j in reprofile_jobs()],
    )  # fmt: skip
    reasons = {
        e.reason
        for e in core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={MODEL}"
        ).items
    }
    assert {"DriftDetected", "Reoptimizing", "Reoptimized"} <= reasons, reasons
    eventually(ready, 60, 1, "Ready on the new plan", state)
    load.stop()
    print(
        f"\nlatency drift detected {detected_s:.1f} s after the load began; re-profiled and "
        f"re-planned {replanned_s:.1f} s after it; outcome: {entry['outcome']}"
    )


@pytest.mark.fault(
    "the re-profile Job on drift fails (its pod killed twice: backoffLimit 1)",
    expect="one action for two causes; the current plan kept, the entry and Profiled say why",
)
def test_two_drifts_give_one_re_profile_whose_failure_keeps_the_plan(
    autoscaling: dict[str, Any],
    k8s: client.ApiClient,
    namespace: str,
    measured: Callable[[str], None],
) -> None:
    """The profile says the device is 4x faster than it is, and one replica (the most
    the policy allows, batch tuning off) gets more than it serves: latency drift (slower
    batches) and capacity drift (saturated, serving under the profile) are both found,
    and give one re-profile between them. Its Job's pods are killed until the Job fails: the entry
    closes as failed, the current plan keeps serving, the Profiled condition says why,
    and nothing retries within the cooldown."""
    custom, batch = client.CustomObjectsApi(k8s), client.BatchV1Api(k8s)
    core = client.CoreV1Api(k8s)
    policy = _policy(namespace)
    # one replica at the plan's batch ceiling stays saturated (batch tuning would raise
    # the ceiling until it serves the load: seen, no capacity drift then)
    policy["spec"]["autoscaling"].update(maxReplicas=1, batchTuning=False)
    policy["spec"]["drift"] = {
        "checkIntervalSeconds": 5,
        "sustainedSeconds": 20,
        "cooldownSeconds": 600,
        "latencyDriftBasisPoints": 5000,
        "capacityDriftBasisPoints": 3000,
    }
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    fast = emulated_profile(
        ProfileReport.model_validate(autoscaling["profile"].model_dump()),
        US_PER_BATCH / 4,
        US_PER_ROW / 4,
    )
    _create_built(custom, autoscaling, namespace, _model(namespace), policy, [POOL], fast)

    def status() -> dict[str, Any]:
        return _model_status(custom, namespace)

    def state() -> Any:
        st = status()
        return {k: st.get(k) for k in ("lastOptimization", "placements", "conditions")}

    def reasons() -> list[str]:
        found = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={MODEL}"
        ).items
        return [f"{e.reason}: {e.message}" for e in found]

    eventually(lambda: _is_ready(status()), 120, 1, "the model Ready", state)
    served = _served(status(), "variant")
    router = _pod_ip(
        core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
    )
    bodies = rank_bodies(load_manifest(autoscaling["folder"]), count=32, candidates=CANDIDATES)
    load = Load(Target(router, 8080, "/v1/rank", bodies), 100, 300)  # one replica serves ~76
    started = time.monotonic()
    try:
        # the re-profile Job starts at the first finding: its pods are killed at once
        # (the real profiler is done in about 30 s), the other drift may come meanwhile
        eventually(lambda: status().get("lastOptimization"), 150, 0.5, "a re-profile", state)
        found_s = time.monotonic() - started
        [entry] = status()["lastOptimization"]
        assert entry["outcome"] == "pending" and "re-profile pool" in entry["action"], entry
        selector = f"recserve.io/model={MODEL},app.kubernetes.io/component=profile"

        def running_pid() -> int | None:
            for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
                for cs in pod.status.container_statuses or []:
                    cid = cs.container_id or ""
                    if cs.state.running and cid.startswith("local://"):
                        return int(cid.removeprefix("local://"))
            return None

        killed: set[int] = set()
        for _ in range(2):  # backoffLimit 1: the second failure fails the Job
            pid = eventually(
                lambda: (p if (p := running_pid()) not in killed else None),
                120, 0.2, "a re-profile pod running",
            )  # fmt: skip
            os.killpg(pid, signal.SIGKILL)
            killed.add(pid)
        eventually(
            lambda: status()["lastOptimization"][0]["outcome"] != "pending",
            120, 1, "the re-profile's failure recorded", state,
        )  # fmt: skip
        failed_s = time.monotonic() - started
        [entry] = status()["lastOptimization"]
        assert entry["outcome"].startswith("failed: profile Job"), entry
        assert "kept the current plan" in entry["outcome"], entry
        profiled = next(c for c in status()["conditions"] if c["type"] == "Profiled")
        assert "re-profile of cpu-pool (round 1) failed" in profiled["message"], profiled
        assert any(r.startswith("ReoptimizeFailed") for r in reasons()), reasons()

        def both_found() -> bool:
            found = " ".join(reasons())
            return "latency drift" in found and "capacity drift" in found

        # both causes found (together, or the second within the first's action): one
        # action between them
        eventually(both_found, 90, 1, "latency and capacity drift", lambda: reasons())
        # the plan keeps serving, and nothing is retried within the cooldown
        time.sleep(10)
        assert _served(status(), "variant") == served, state()
        assert len(status()["lastOptimization"]) == 1, state()
        names = [j.metadata.name for j in batch.list_namespaced_job(namespace).items]
        rounds = [n.rsplit("-", 1)[-1] for n in names if re.search(r"-r\d+$", n)]
        assert rounds == ["r1"], names  # one re-profile Job, not run again
    finally:
        load.stop()
    measured(
        f"drift found {found_s:.1f} s after the overload began (latency and capacity: one "
        f"re-profile); its Job failed and the plan was kept {failed_s:.1f} s after"
    )


def test_inputs_unlike_the_training_data_are_reported_as_data_drift(
    autoscaling: dict[str, Any], k8s: client.ApiClient, namespace: str
) -> None:
    """Requests whose dense features sit two standard deviations off the training data:
    the servers' PSI (against the manifest's training bins, through the real Prometheus)
    stays over the threshold, the model's Drift condition says DataDrift naming a column,
    a lastOptimization entry reports it, and the plan is kept."""
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    policy = _policy(namespace)
    policy["spec"]["drift"] = {
        "checkIntervalSeconds": 5,
        "sustainedSeconds": 20,
        "cooldownSeconds": 600,
        "latencyDriftBasisPoints": 50000,  # this test is about the inputs only
    }
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    _create_built(custom, autoscaling, namespace, _model(namespace), policy, [POOL])

    def status() -> dict[str, Any]:
        return _model_status(custom, namespace)

    def state() -> Any:
        st = status()
        return {k: st.get(k) for k in ("placements", "lastOptimization", "conditions")}

    eventually(lambda: _is_ready(status()), 120, 1, "the model Ready", state)
    planned = _served(status(), "variant")
    # the servers' NetworkPolicy, as the API server holds it (the local control plane does
    # not enforce NetworkPolicies; kind with a policy-enforcing CNI would)
    netpol = client.NetworkingV1Api(k8s).read_namespaced_network_policy(
        f"{MODEL}-servers", namespace
    )
    [inference, admin, scrape] = netpol.spec.ingress
    assert [{p.port for p in rule.ports} for rule in (inference, admin, scrape)] == [
        {8000},
        {8001},
        {8002},
    ]
    [operator_pods, recalibrate] = admin._from
    assert recalibrate.pod_selector.match_labels == {
        "recserve.io/model": MODEL,
        "app.kubernetes.io/component": "recalibrate",
    }
    assert operator_pods.namespace_selector.match_labels == {
        "kubernetes.io/metadata.name": NS_OPERATOR
    }
    router = _pod_ip(
        core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
    )
    manifest = load_manifest(autoscaling["folder"])
    assert manifest.data_reference is not None
    bodies = rank_bodies(manifest, count=32, candidates=CANDIDATES, dense_shift=2.0)
    load = Load(Target(router, 8080, "/v1/rank", bodies), 10, 150)
    started = time.monotonic()

    def drift() -> dict[str, Any]:
        return next((c for c in status().get("conditions", []) if c["type"] == "Drift"), {})

    eventually(lambda: drift().get("reason") == "DataDrift", 120, 1, "data drift", state)
    detected_s = time.monotonic() - started
    load.stop()
    assert drift()["status"] == "True" and "PSI of" in drift()["message"], drift()
    [entry] = status()["lastOptimization"]
    assert entry["cause"] == "DataDrift" and entry["outcome"].startswith("reported"), entry
    assert _served(status(), "variant") == planned, "the plan is kept"
    assert not status().get("profileRounds")
    reasons = {
        e.reason
        for e in core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={MODEL}"
        ).items
    }
    assert "DriftDetected" in reasons and "Reoptimizing" not in reasons, reasons
    print(f"\ndata drift reported {detected_s:.1f} s after the load began: {entry['evidence']}")


@pytest.mark.fault(
    "etcd stopped (SIGTERM) for 5 s under a served model, then started on its data",
    expect="the API answers again; the model stays Ready; an edit made then is reconciled",
)
def test_the_operator_carries_on_after_etcd_restarts(
    autoscaling: dict[str, Any],
    local_cluster: Any,
    k8s: client.ApiClient,
    namespace: str,
    measured: Callable[[str], None],
) -> None:
    """etcd stopped for 5 s under a served model and started again on its data: the API
    server answers again, the model stays Ready, and an edit made after the restart is
    reconciled (the operator's watches came back)."""
    custom = client.CustomObjectsApi(k8s)
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", _policy(namespace)
    )
    _create_built(custom, autoscaling, namespace, _model(namespace), policy, [POOL])

    def model() -> dict[str, Any]:
        return dict(
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", MODEL)
        )

    def state() -> Any:
        return (model().get("status") or {}).get("conditions")

    eventually(lambda: _is_ready(model().get("status") or {}), 120, 1, "Ready", state)
    started = time.monotonic()
    local_cluster.restart_etcd(down_s=5)

    def answers() -> bool:
        try:
            return bool(model())
        except Exception:  # refused or 5xx while etcd comes back
            return False

    eventually(answers, 60, 0.5, "the API server answering")
    back_s = time.monotonic() - started
    assert _is_ready(model()["status"]), model()["status"]
    edited = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "recmodels", MODEL,
        {"spec": {"traffic": {"expectedRequestsPerSecond": 30}}},
    )  # fmt: skip
    generation = edited["metadata"]["generation"]
    eventually(
        lambda: (model().get("status") or {}).get("observedGeneration") == generation
        and _is_ready(model()["status"]),
        120, 1, "the edit reconciled, Ready", state,
    )  # fmt: skip
    measured(
        f"etcd restarted (5 s down): API answering {back_s:.1f} s after the stop; the edit "
        f"after it reconciled {time.monotonic() - started:.1f} s after the stop"
    )


@pytest.mark.fault("a profile Job's pod killed (SIGKILL)", expect="retried; the Job succeeds")
def test_a_killed_profile_pod_is_retried_and_the_job_succeeds(
    autoscaling: dict[str, Any], k8s: client.ApiClient, namespace: str
) -> None:
    """A transient failure (the Job's pod killed, exit 137) is retried by the Job's
    backoff, unlike bad input (exit 2, failed at once: test_operator): the second pod
    profiles the pool and the model becomes Ready."""
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", _policy(namespace)
    )
    _create_built(custom, autoscaling, namespace, _model(namespace), policy, [])  # no profile
    selector = f"recserve.io/model={MODEL},app.kubernetes.io/component=profile"

    def running_pid() -> int | None:
        for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
            for cs in pod.status.container_statuses or []:
                if cs.state.running and (cs.container_id or "").startswith("local://"):
                    return int(cs.container_id.removeprefix("local://"))
        return None

    pid = eventually(running_pid, 90, 0.5, "the profile pod running")
    assert pid is not None
    time.sleep(2)
    os.killpg(pid, signal.SIGKILL)

    def status() -> dict[str, Any]:
        return _model_status(custom, namespace)

    def ready() -> bool:
        return _is_ready(status())

    eventually(ready, 240, 1, "Ready after the retried profile", lambda: status().get("conditions"))
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    codes = sorted(
        cs.state.terminated.exit_code
        for p in pods
        for cs in p.status.container_statuses or []
        if cs.state.terminated
    )
    assert codes == [0, 137], codes
    job = client.BatchV1Api(k8s).list_namespaced_job(namespace, label_selector=selector).items[0]
    assert (job.status.failed, job.status.succeeded) == (1, 1)


def test_a_variant_whose_ranking_departs_from_the_reference_is_planned_around(
    autoscaling: dict[str, Any], k8s: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """A compressed variant that ranks unlike its FP32 reference (an INT8 copy of other
    weights: it loads and answers, its order is noise) is served first, being faster.
    Its servers score half their requests with the reference too; the pairwise order
    agreement stays near 50%: fidelity drift, the variant is taken out of the plan, and
    the model is re-planned onto the reference."""
    from recserve_dev.testmodel import TestModelSpec

    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    other = write_variant(tmp_path / "other", TestModelSpec(seed=7))
    reference, bad, profile = _reference_and_faster_int8(autoscaling, tmp_path, other)
    policy = _policy(namespace)
    policy["spec"]["drift"] = {
        "fidelitySampleBasisPoints": 5000,
        "fidelityAgreementBasisPoints": 9000,
        "checkIntervalSeconds": 5,
        "sustainedSeconds": 20,
        "cooldownSeconds": 600,
        "latencyDriftBasisPoints": 50000,
    }
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    _create_built(
        custom, autoscaling, namespace, _model(namespace), policy, [POOL], profile,
        [reference, bad],
    )  # fmt: skip

    def status() -> dict[str, Any]:
        return _model_status(custom, namespace)

    def serving() -> set[str]:
        return _served(status(), "variant")

    def state() -> Any:
        st = status()
        keys = ("placements", "driftedVariants", "lastOptimization", "conditions")
        return {k: st.get(k) for k in keys}

    int8 = f"{MODEL}-synthetic-dlrm-int8"
    eventually(lambda: serving() == {int8}, 120, 1, "the faster INT8 variant served", state)
    router = _pod_ip(
        core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
    )
    bodies = rank_bodies(load_manifest(autoscaling["folder"]), count=32, candidates=CANDIDATES)
    load = Load(Target(router, 8080, "/v1/rank", bodies), 10, 120)
    started = time.monotonic()
    eventually(lambda: status().get("driftedVariants") == [int8], 120, 1, "fidelity drift", state)
    detected_s = time.monotonic() - started
    [entry] = status()["lastOptimization"]
    assert entry["cause"].startswith("FidelityDrift") and entry["variant"] == int8, entry
    assert "of candidate pairs" in entry["evidence"]
    eventually(lambda: serving() == {f"{MODEL}-synthetic-dlrm-fp32"}, 120, 1, "on the FP32", state)
    replanned_s = time.monotonic() - started
    [entry] = status()["lastOptimization"]
    assert entry["outcome"].startswith(f"re-planned without {int8} (changed)"), entry
    load.stop()
    print(
        f"\nfidelity drift found {detected_s:.1f} s after the load began ({entry['evidence']}); "
        f"Ready on the FP32 reference {replanned_s:.1f} s after it"
    )


@pytest.mark.fault(
    "a served variant's file rots in the store (a bit flipped, size and mtime kept), its "
    "servers restart",
    expect=(
        "servers refuse it; reported (corruptVariants, ArtifactCorrupt Event); re-planned "
        "onto another variant; served again once restored"
    ),
)
def test_a_variant_damaged_in_the_store_after_it_was_served_is_planned_around(
    autoscaling: dict[str, Any],
    k8s: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    measured: Callable[[str], None],
) -> None:
    """The served INT8 variant's file rots in the store (one bit flipped, size and mtime
    kept: nothing about the file says it changed). Its servers, restarted, refuse it
    (ChecksumMismatch, not Ready); the operator hashes the file again, reports it
    (corruptVariants, an ArtifactCorrupt Event) and re-plans onto the FP32 variant.
    Restored in place, the INT8 variant is planned and served again."""
    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    reference, int8, profile = _reference_and_faster_int8(autoscaling, tmp_path)
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", _policy(namespace)
    )
    layout = _create_built(
        custom, autoscaling, namespace, _model(namespace), policy, [POOL], profile,
        [reference, int8],
    )  # fmt: skip

    def status() -> dict[str, Any]:
        return _model_status(custom, namespace)

    def serving() -> set[str]:
        return _served(status(), "variant")

    def state() -> Any:
        st = status()
        return {k: st.get(k) for k in ("placements", "corruptVariants", "conditions")}

    int8_obj, fp32_obj = f"{MODEL}-synthetic-dlrm-int8", f"{MODEL}-synthetic-dlrm-fp32"
    eventually(lambda: serving() == {int8_obj}, 120, 1, "the faster INT8 variant served", state)
    stored = layout.variant(int8.name) / MODEL_FILE
    before = stored.stat()
    original = stored.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    stored.write_bytes(bytes(damaged))
    os.utime(stored, ns=(before.st_atime_ns, before.st_mtime_ns))
    started = time.monotonic()
    core.delete_collection_namespaced_pod(
        namespace, label_selector=f"recserve.io/model={MODEL},app.kubernetes.io/component=server"
    )
    eventually(
        lambda: status().get("corruptVariants") == [int8_obj], 120, 1, "the damage reported", state
    )
    reported_s = time.monotonic() - started
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={MODEL},reason=ArtifactCorrupt"
    ).items
    assert len(events) == 1 and events[0].type == "Warning", events
    assert events[0].message.startswith(f"{int8_obj}: checksum mismatch"), events[0].message
    eventually(lambda: serving() == {fp32_obj}, 120, 1, "Ready on the FP32 variant", state)
    replanned_s = time.monotonic() - started
    stored.write_bytes(original)
    os.utime(stored, ns=(before.st_atime_ns, before.st_mtime_ns))
    restored = time.monotonic()
    eventually(lambda: serving() == {int8_obj}, 150, 1, "the restored INT8 served again", state)
    back_s = time.monotonic() - restored
    assert status().get("corruptVariants") == []
    measured(
        f"damaged artifact reported {reported_s:.1f} s after its servers restarted, Ready on "
        f"the FP32 variant after {replanned_s:.1f} s; the restored INT8 served again "
        f"{back_s:.1f} s after the restore"
    )


# -- canary rollouts ------------------------------------------------------------------------


def _canary_policy(namespace: str) -> dict[str, Any]:
    """Short steps; the drift detectors kept out of the way (the rollout's own analysis
    is under test)."""
    policy = _policy(namespace)
    policy["spec"]["rollout"] = {
        "stepWeightsPercent": [10, 50, 100],
        "stepSeconds": 10,
        "failureLimit": 2,
        "minRequests": 5,
        "fidelitySampleBasisPoints": 10000,
    }
    policy["spec"]["drift"] = {
        "checkIntervalSeconds": 5,
        "sustainedSeconds": 3600,
        "cooldownSeconds": 3600,
        "latencyDriftBasisPoints": 50000,
    }
    return policy


class _Rollout:
    """A model serving the FP32 reference (the INT8 4x slower in its profile), under load
    through its router; :meth:`move` makes the INT8 twice as fast, which moves the pool."""

    def __init__(
        self,
        autoscaling: dict[str, Any],
        k8s: client.ApiClient,
        namespace: str,
        tmp_path: Path,
        int8_of: Path | None,
    ) -> None:
        self.custom, self.core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
        self.apps = client.AppsV1Api(k8s)
        self.namespace = namespace
        reference, int8, real = _reference_and_int8(autoscaling, tmp_path, int8_of)
        self.real, self.int8_folder = real, int8
        policy = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "optimizationpolicies", _canary_policy(namespace)
        )
        self.layout = _create_built(
            self.custom, autoscaling, namespace, _model(namespace), policy, [POOL],
            _int8_at(real, int8, 0.25), [reference, int8],
        )  # fmt: skip
        self.fp32 = f"{MODEL}-synthetic-dlrm-fp32"
        self.int8 = f"{MODEL}-synthetic-dlrm-int8"
        eventually(lambda: self.serving() == {self.fp32}, 120, 1, "the FP32 served", self.state)
        eventually(lambda: self.stable_variant() is not None, 60, 1, "the pool's Deployment")
        self.router = _pod_ip(
            self.core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
        )
        bodies = rank_bodies(load_manifest(autoscaling["folder"]), count=32, candidates=CANDIDATES)
        self.load = Load(Target(self.router, 8080, "/v1/rank", bodies), 20, 600)

    def status(self) -> dict[str, Any]:
        return _model_status(self.custom, self.namespace)

    def serving(self) -> set[str]:
        return _served(self.status(), "variant")

    def state(self) -> Any:
        st = self.status()
        keys = ("placements", "rollouts", "driftedVariants", "lastOptimization", "conditions")
        return {k: st.get(k) for k in keys}

    def deployment(self, name: str) -> Any:
        found = self.apps.list_namespaced_deployment(
            self.namespace, field_selector=f"metadata.name={name}"
        ).items
        return found[0] if found else None

    def stable_variant(self) -> str | None:
        dep = self.deployment(f"{MODEL}-{POOL}")
        return None if dep is None else dep.spec.template.metadata.labels["recserve.io/variant"]

    def phase(self) -> str | None:
        rollouts = self.status().get("rollouts") or []
        return rollouts[0]["phase"] if rollouts else None

    def move(self) -> None:
        """The INT8 twice as fast as the reference: the next pass plans it."""
        _int8_at(self.real, self.int8_folder, 2.0).write(self.layout.profile(POOL))
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "recmodels", MODEL,
            {"spec": {"traffic": {"expectedRequestsPerSecond": 21}}},
        )  # fmt: skip

    def events(self) -> list[str]:
        found = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={MODEL}"
        ).items
        return [e.reason for e in sorted(found, key=lambda e: e.first_timestamp or e.event_time)]


@pytest.mark.fault(
    "a new plan's variant answers but ranks unlike its reference (corrupted weights that load)",
    expect="its canary is rolled back after a small share of requests; the old variant serves",
)
def test_a_bad_variant_s_canary_is_rolled_back_after_a_small_share_of_requests(
    autoscaling: dict[str, Any],
    k8s: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    measured: Callable[[str], None],
) -> None:
    """The plan moves the pool to an INT8 variant that loads and answers but ranks
    unlike the reference (another model's weights). It runs beside the FP32 as a canary
    at 10% of requests; two analyses find its fidelity far below 90% and it is rolled
    back: the FP32 keeps serving throughout, the INT8 leaves the plan and is not tried
    again."""
    from recserve_dev.testmodel import TestModelSpec

    other = write_variant(tmp_path / "other", TestModelSpec(seed=7))
    r = _Rollout(autoscaling, k8s, namespace, tmp_path, other)
    old = r.stable_variant()
    r.move()
    moved = time.monotonic()
    eventually(lambda: r.phase() == "Progressing", 120, 0.5, "the canary taking requests", r.state)
    progressing = time.monotonic()
    before = track_counts(r.router)
    eventually(lambda: r.int8 in (r.status().get("driftedVariants") or []), 180, 0.5,
               "rolled back", r.state)  # fmt: skip
    rolled_back = time.monotonic()
    after = track_counts(r.router)
    entry = next(e for e in r.status()["lastOptimization"] if e["cause"] == "CanaryFailed")
    assert entry["variant"] == r.int8 and "fidelity" in entry["evidence"], entry
    eventually(lambda: r.deployment(f"{MODEL}-{POOL}-canary") is None, 60, 1, "canary gone")
    eventually(lambda: not r.status().get("rollouts"), 60, 1, "rollout over", r.state)
    assert r.stable_variant() == old  # the pool's Deployment never moved
    assert r.serving() == {r.fp32}
    canary = after["canary"] - before["canary"]
    total = canary + after["stable"] - before["stable"]
    share = 100 * canary / total
    time.sleep(5)
    settled = track_counts(r.router)
    result = r.load.stop()
    failed = sum(n for code, n in result.codes.items() if code not in ("200", "429"))
    assert failed == 0, result.codes
    assert settled["canary"] == after["canary"]  # none after the rollback
    reasons = r.events()
    assert reasons.count("CanaryRolledBack") == 1 and "CanaryPromoted" not in reasons, reasons
    assert reasons.count("CanaryStarted") == 1, reasons  # the rollback is not rolled out again
    assert share <= 20, (share, before, after)
    measured(
        f"bad canary: Progressing {progressing - moved:.1f} s after the plan moved; rolled "
        f"back {rolled_back - progressing:.1f} s after it took requests; {share:.1f}% of "
        f"the {total:.0f} requests in between reached it ({entry['evidence']})"
    )


def test_a_good_variant_s_canary_is_promoted_step_by_step_without_a_failed_request(
    autoscaling: dict[str, Any], k8s: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """An INT8 of the same weights: each step's analysis passes (errors, p99, fidelity),
    the share goes 10 -> 50 -> 100%, the pool's Deployment moves to the INT8 and the
    canary is removed; no request fails on the way."""
    r = _Rollout(autoscaling, k8s, namespace, tmp_path, None)
    r.move()
    moved = time.monotonic()
    eventually(lambda: r.phase() == "Progressing", 120, 0.5, "the canary taking requests", r.state)
    eventually(lambda: r.phase() == "Promoting", 180, 0.5, "promoted", r.state)
    promoted = time.monotonic()
    eventually(lambda: not r.status().get("rollouts"), 120, 1, "rollout over", r.state)
    done = time.monotonic()
    assert r.stable_variant() == "synthetic-dlrm-int8"
    assert r.deployment(f"{MODEL}-{POOL}-canary") is None
    eventually(lambda: r.serving() == {r.int8}, 60, 1, "Ready on the INT8", r.state)
    result = r.load.stop()
    failed = sum(n for code, n in result.codes.items() if code not in ("200", "429"))
    assert failed == 0, result.codes
    reasons = [x for x in r.events() if x.startswith("Canary")]
    assert reasons == [
        "CanaryStarted", "CanaryStep", "CanaryStep", "CanaryStep", "CanaryPromoted", "CanaryDone"
    ], reasons  # fmt: skip
    refused = result.codes.get("429", 0)
    print(
        f"\ngood canary: promoted {promoted - moved:.1f} s after the plan moved, rollout over "
        f"{done - moved:.1f} s after; {sum(result.codes.values())} requests, {refused} 429, "
        f"none failed"
    )


@pytest.mark.fault(
    "Prometheus stopped (SIGSTOP) during a canary step",
    expect="the step holds (no advance, no failure counted); the rollout ends once it answers",
)
def test_a_canary_holds_while_prometheus_is_away_and_goes_on_after(
    autoscaling: dict[str, Any],
    k8s: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    local_cluster: Any,
    measured: Callable[[str], None],
) -> None:
    """A good INT8's canary is taking requests when Prometheus stops answering for
    three steps' time: its analysis has no figures, which holds the step (neither passed
    nor failed; Flagger would count failures and roll back), the share stays where it
    was, and the rollout is promoted once Prometheus answers again."""
    r = _Rollout(autoscaling, k8s, namespace, tmp_path, None)
    r.move()
    eventually(lambda: r.phase() == "Progressing", 120, 0.5, "the canary taking requests", r.state)
    [before] = r.status()["rollouts"]
    prometheus_pid = local_cluster.state.pids["prometheus"]
    os.kill(prometheus_pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        held: list[dict[str, Any]] = []
        while time.monotonic() - stopped < 35:  # stepSeconds 10
            [now] = r.status()["rollouts"]
            assert now["phase"] == "Progressing", r.state()
            assert now["step"] == before["step"], (before, now)
            assert now["weightPercent"] == before["weightPercent"], (before, now)
            assert now.get("failures", 0) == before.get("failures", 0), (before, now)
            held.append(now)
            time.sleep(1)
        assert any("holding" in h.get("message", "") for h in held), held[-1]
    finally:
        os.kill(prometheus_pid, signal.SIGCONT)
    resumed = time.monotonic()
    eventually(lambda: not r.status().get("rollouts"), 180, 1, "rollout over", r.state)
    done = time.monotonic()
    assert r.stable_variant() == "synthetic-dlrm-int8"
    result = r.load.stop()
    failed = sum(n for code, n in result.codes.items() if code not in ("200", "429"))
    assert failed == 0, result.codes
    reasons = r.events()
    assert "CanaryRolledBack" not in reasons and "CanaryAnalysisFailed" not in reasons, reasons
    measured(
        f"Prometheus away {resumed - stopped:.0f} s: the canary held at "
        f"{before['weightPercent']}% without a failed analysis; promoted and done "
        f"{done - resumed:.1f} s after it answered"
    )


# In two CI runs the recalibrated variant missed the accuracy budget (0.6816 against
# FP32's 0.8040). The cause: the Job calibrated on the 384 rows (6 requests) that servers
# just started had answered; it now waits for a whole sample (children.recalibrate_job's
# --min-rows). alone: kept from before the cause was found (its Job is CPU-heavy).
@pytest.mark.alone
def test_a_static_int8_whose_inputs_moved_is_recalibrated_on_recent_requests_and_rolled_out(
    autoscaling: dict[str, Any], k8s: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """A static INT8 (activation ranges calibrated on training rows) is served first,
    being faster. The requests' dense features sit three standard deviations off those rows:
    its ranking departs from the FP32 reference (fidelity drift), so the pool goes to the
    reference at once, and a recalibrate Job, which finds the pool's servers itself,
    calibrates the INT8 again on their sample of recent requests and checks it (on rows it
    held back, and on the held-out data). The new variant replaces the old one in the plan
    and is rolled out by canary, whose fidelity analysis passes on the same shifted
    traffic."""
    from recserve_dev.testmodel import static_variant, write_eval_csv

    custom, core = client.CustomObjectsApi(k8s), client.CoreV1Api(k8s)
    variants = tmp_path / "variants"
    reference = Path(shutil.copytree(autoscaling["folder"], variants / autoscaling["folder"].name))
    static = static_variant(reference, variants)
    out = tmp_path / "profile.json"
    subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "profile", f"--variants={variants}",
         f"--json={out}", "--seconds=0.1", "--no-serving"],
        check=True, capture_output=True,
    )  # fmt: skip
    profile = _int8_at(ProfileReport.read(out), static, 2.0)
    policy = _policy(namespace)
    # the synthetic model's INT8 variants lose about 4% AUC against labels drawn from its
    # own FP32 scores, and one recalibrated on rows 3 SD off loses 5-10% on the unshifted
    # held-out rows, by the sample it drew (test data, not an accuracy claim: the budget's
    # refusal is test_recalibrate.py's)
    policy["spec"]["objectives"]["accuracyBudgetBasisPoints"] = 1500
    policy["spec"]["drift"] = {
        "fidelitySampleBasisPoints": 5000,
        # 3 SD off: the static INT8 agrees about 0.81-0.83 with FP32 there, recalibrated about
        # 0.89 (2 SD gave 0.92 vs 0.92 with the dependencies of 2026-12-07: no drift)
        "fidelityAgreementBasisPoints": 8600,
        "checkIntervalSeconds": 5,
        "sustainedSeconds": 20,
        "cooldownSeconds": 600,
        "latencyDriftBasisPoints": 50000,
        "capacityDriftBasisPoints": 9000,
        "recalibrationSampleRows": 1024,
    }
    policy["spec"]["rollout"] = {
        "stepWeightsPercent": [50, 100],
        "stepSeconds": 10,
        "minRequests": 5,
        "fidelitySampleBasisPoints": 10000,
    }
    policy = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "optimizationpolicies", policy
    )
    raw = _model(namespace)
    raw["spec"]["evalDataset"] = {
        "name": "custom",
        "uri": str(write_eval_csv(reference, tmp_path / "train.csv", 4000, seed=1)),
        "testUri": str(write_eval_csv(reference, tmp_path / "test.csv", 3000, seed=2)),
    }
    _create_built(custom, autoscaling, namespace, raw, policy, [POOL], profile, [reference, static])

    def status() -> dict[str, Any]:
        return _model_status(custom, namespace)

    def serving() -> set[str]:
        return _served(status(), "variant")

    def state() -> Any:
        st = status()
        keys = ("placements", "driftedVariants", "lastOptimization", "rollouts", "conditions")
        return {k: st.get(k) for k in keys}

    old = f"{MODEL}-synthetic-dlrm-int8-static"
    new = f"{old}-recal1"
    eventually(lambda: serving() == {old}, 120, 1, "the faster static INT8 served", state)
    router = _pod_ip(
        core, namespace, f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
    )
    bodies = rank_bodies(
        load_manifest(autoscaling["folder"]), count=32, candidates=CANDIDATES, dense_shift=3.0
    )
    load = Load(Target(router, 8080, "/v1/rank", bodies), 10, 400)
    started = time.monotonic()

    def recalibration() -> dict[str, Any]:
        return next((o for o in status().get("lastOptimization", []) if o.get("recalibration")), {})

    eventually(lambda: recalibration().get("outcome") not in (None, "pending"), 240, 1,
               "the recalibration done", state)  # fmt: skip
    recalibrated_s = time.monotonic() - started
    entry = recalibration()
    assert entry["cause"] == "FidelityDrift" and entry["variant"] == old, entry
    assert entry["outcome"].startswith("recalibrated synthetic-dlrm-int8-static as"), entry
    eventually(lambda: serving() == {new} and not status().get("rollouts"), 240, 1,
               "the recalibrated INT8 rolled out", state)  # fmt: skip
    served_s = time.monotonic() - started
    result = load.stop()
    assert old in status()["driftedVariants"] and new not in status()["driftedVariants"]
    events = [
        e.reason
        for e in core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={MODEL}"
        ).items
    ]
    assert "Recalibrated" in events and "CanaryPromoted" in events, events
    failed = sum(n for code, n in result.codes.items() if code not in ("200", "429"))
    assert failed == 0, result.codes
    print(
        f"\nrecalibrated {recalibrated_s:.1f} s after the shifted load began ({entry['outcome']}); "
        f"the recalibrated INT8 served after its canary {served_s:.1f} s after it; "
        f"{sum(result.codes.values())} requests, none failed"
    )
