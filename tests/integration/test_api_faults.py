"""The operator against a faulty API server: a fault-injecting proxy
(``recserve_dev.faultproxy``) between the operator process and the real API server
answers some requests with 429/500/503, resets connections, ends watches with 410 Gone,
or refuses every connection for a minute. The operator still brings the bring-your-own
example to Ready, with one build Job, no crash and no watch hot loop, and reconciles
what changed while the API was out of its reach."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from recserve_dev.faultproxy import FaultPlan, FaultProxy
from recserve_dev.localcluster.cluster import write_kubeconfig
from recserve_dev.servertesting import process
from recserve_operator.api import GROUP, VERSION
from tests.helpers import apply_byom_example, eventually
from tests.manifests import REPO, example

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BYOM = REPO / "examples" / "bring-your-own"


@pytest.fixture(scope="module")
def byom_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact store, holding the bring-your-own example's model and data."""
    store = tmp_path_factory.mktemp("store")
    subprocess.run(
        [sys.executable, str(BYOM / "make_model_and_data.py"), "--out", str(store / "byom"),
         "--rows", "20000"],
        capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    return store


POOL = "faults-cpu-pool"  # not the examples' name: other modules create cpu-pool


@pytest.fixture(scope="module")
def cpu_pool(k8s: client.ApiClient, crds: list[str]) -> Iterator[str]:
    """A CPU pool of its own (other modules create cpu-pool). It is deleted at the end
    with no operator running: it carries no finalizer, so nothing is left Terminating."""
    custom = client.CustomObjectsApi(k8s)
    pool = example("cpu-pool")
    pool["metadata"]["name"] = POOL
    custom.create_cluster_custom_object(GROUP, VERSION, "hardwarepools", pool)
    yield POOL
    custom.delete_cluster_custom_object(GROUP, VERSION, "hardwarepools", POOL)
    eventually(
        lambda: (
            not any(
                p["metadata"]["name"] == POOL
                for p in custom.list_cluster_custom_object(GROUP, VERSION, "hardwarepools")["items"]
            )
        ),
        timeout=30,
        what=f"HardwarePool {POOL} gone",
    )


class ProxiedOperator:
    """An operator process whose every API request goes through a FaultProxy."""

    def __init__(self, proxy: FaultProxy, proc: Any, log: Path) -> None:
        self.proxy, self.proc, self.log = proxy, proc, log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def start_operator(
    local_cluster: Any, store: Path, namespace: str, plan: FaultPlan, tmp: Path
) -> Iterator[ProxiedOperator]:
    admin = yaml.safe_load(local_cluster.admin_kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]["server"]
    token = admin["users"][0]["user"]["token"]
    proxy = FaultProxy(server, str(local_cluster.ca_file), plan)
    port = proxy.start()
    kubeconfig = write_kubeconfig(tmp / "proxied.kubeconfig", f"http://127.0.0.1:{port}",
                                  token, None, "admin")  # fmt: skip
    env = {
        "KUBECONFIG": str(kubeconfig),
        "RECSERVE_ARTIFACT_STORE": str(store),
        "RECSERVE_OPTIMIZE_ARGS": "--quick",
        "RECSERVE_RECONCILE_INTERVAL_SECONDS": "3",
        "RECSERVE_NAMESPACE": namespace,
        "RECSERVE_METRICS_PORT": "0",
        "RECSERVE_PROMETHEUS_URL": local_cluster.state.prometheus_url or "",
    }
    log = tmp / "operator.log"
    argv = [sys.executable, "-m", "recserve_operator.main", "-n", namespace, "--liveness="]
    try:
        with process(argv, log, env) as proc:
            yield ProxiedOperator(proxy, proc, log)
    finally:
        proxy.stop()


def apply_model(k8s: client.ApiClient, namespace: str, name: str) -> None:
    """The bring-your-own RecModel on this module's pool."""
    apply_byom_example(k8s, namespace, name, [POOL])


def ready_probe(k8s: client.ApiClient, namespace: str, name: str, op: ProxiedOperator) -> Any:
    custom = client.CustomObjectsApi(k8s)

    def ready() -> dict[str, Any] | None:
        assert op.proc.poll() is None, f"the operator exited: {op.logs()[-3000:]}"
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "recmodels", name)
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
        cond = conds.get("Ready")
        if cond and cond["reason"] in ("BuildFailed", "ProfileFailed", "NoFeasiblePlacement"):
            pytest.fail(f"{cond['reason']}: {cond['message']}")
        return dict(obj) if cond and cond["status"] == "True" else None

    return ready


def build_jobs(k8s: client.ApiClient, namespace: str) -> list[Any]:
    batch = client.BatchV1Api(k8s)
    selector = "app.kubernetes.io/component=build"
    return list(batch.list_namespaced_job(namespace, label_selector=selector).items)


def busiest_window(times: list[float], window_s: float = 10.0) -> int:
    """The most events in any ``window_s`` seconds."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.fault(
    "the API answers 429 (Retry-After), 500 and 503, resets connections and ends watches with "
    "410 Gone (a fault-injecting proxy)",
    expect="waits, backs off, re-lists without a hot loop; Ready; one build Job",
)
def test_operator_reaches_ready_through_throttling_errors_resets_and_expired_watches(
    local_cluster: Any,
    k8s: client.ApiClient,
    cpu_pool: str,
    byom_files: Path,
    namespace: str,
    tmp_path: Path,
    measured: Callable[[str], None],
) -> None:
    plan = FaultPlan(throttle=0.06, server_error=0.03, unavailable=0.03, reset=0.02, gone=0.3)
    with start_operator(local_cluster, byom_files, namespace, plan, tmp_path) as op:
        started = time.monotonic()
        apply_model(k8s, namespace, "byom-faults")
        eventually(
            ready_probe(k8s, namespace, "byom-faults", op),
            timeout=600,
            interval=3,
            what="Ready through the faults",
        )
        took = time.monotonic() - started
        counts = dict(op.proxy.counts)
        for fault in ("throttle", "server_error", "unavailable", "reset", "gone"):
            assert counts.get(fault, 0) > 0, f"no {fault} was injected: {counts}"
        assert len(build_jobs(k8s, namespace)) == 1
        burst = busiest_window(op.proxy.watch_starts)
        # kopf watches a handful of resources; a 410 answered with an instant re-watch
        # loop would start hundreds of watches per second
        assert burst < 100, f"{burst} watches started within 10 s: a hot loop"
        measured(
            f"API faults: Ready in {took:.0f} s; injected {counts}; "
            f"at most {burst} watches started in 10 s"
        )


@pytest.mark.fault(
    "the API server out of reach for a minute; a RecModel created meanwhile",
    expect="nothing done while out of reach; the missed RecModel built after; no restart",
)
def test_operator_catches_up_after_the_api_server_is_out_of_reach_for_a_minute(
    local_cluster: Any,
    k8s: client.ApiClient,
    cpu_pool: str,
    byom_files: Path,
    namespace: str,
    tmp_path: Path,
    measured: Callable[[str], None],
) -> None:
    with start_operator(local_cluster, byom_files, namespace, FaultPlan(), tmp_path) as op:
        time.sleep(5)  # the operator has listed and watches
        op.proxy.down(60)
        down_at = time.monotonic()
        # created while the operator cannot reach the API server: a missed change
        apply_model(k8s, namespace, "byom-outage")
        time.sleep(5)
        assert build_jobs(k8s, namespace) == [], "the operator acted without the API"
        eventually(lambda: build_jobs(k8s, namespace), timeout=180, interval=1, what="a build Job")
        noticed = time.monotonic() - down_at
        # the build goes on from there as in any other test (Ready is the faults test's)
        assert op.proc.poll() is None, f"the operator exited: {op.logs()[-3000:]}"
        time.sleep(5)
        assert len(build_jobs(k8s, namespace)) == 1, "the operator created it once"
        measured(
            f"API outage: 60 s down; the model created meanwhile got its build Job "
            f"{noticed - 60:.1f} s after the API was reachable again"
        )
        assert noticed >= 60
