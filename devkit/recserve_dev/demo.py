"""`recserve demo`: the main job, end to end on the local control plane (or, with
`--kind`, on the kind cluster of `make kind-up`).

Starts (or reuses) the local cluster, installs the chart (the operator runs as a pod
under its own ServiceAccount), applies the example HardwarePools, OptimizationPolicy and
the MovieLens RecModel, waits until the model is Ready while showing each step, prints
the variants and placements, then sends open-loop ranking load through the router and
reports the latency it measured and what Prometheus saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recserve_dev.localcluster.prometheus import SCRAPE_INTERVAL_SECONDS
from recserve_dev.servertesting import wait_http
from recserve_operator.api import GROUP, VERSION

MODEL = "movielens-dlrm"


def _say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _cluster(root: Path, build: bool) -> Any:
    from recserve_dev.localcluster.cluster import ClusterError, LocalCluster
    from recserve_dev.localcluster.tools import find_tools

    tools = find_tools(build=build)
    try:
        cluster = LocalCluster.attach(root)
        cluster.tools = tools
        cluster.kubectl("get", "--raw=/readyz")
        _say(f"reusing the local cluster in {root}")
        return cluster
    except ClusterError:
        pass
    cluster = LocalCluster(root, tools)
    _say(f"starting the local control plane in {root}")
    state = cluster.start(timeout=180)
    _say(f"control plane ready in {state.ready_seconds:.1f}s: {state.server}")
    return cluster


def _install(cluster: Any, repo: Path, store: Path, quick: bool) -> None:
    import subprocess

    store.mkdir(parents=True, exist_ok=True)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(repo / "crds"))
    args = [
        str(cluster.tools.helm),
        f"--kubeconfig={cluster.admin_kubeconfig}",
        "upgrade",
        "--install",
        "recserve",
        str(repo / "charts" / "recserve"),
        "-n",
        "recserve-system",
        "--create-namespace",
        "--set",
        f"artifactStore.uri={store}",
        # every pool's nodes are this machine: profile one pool at a time
        "--set",
        "profileJobsAtOnce=1",
        "--set",
        "extraEnv[0].name=RECSERVE_RECONCILE_INTERVAL_SECONDS",
        "--set-string",
        "extraEnv[0].value=3",
    ]
    if cluster.state.prometheus_url:  # the autoscaler reads the local Prometheus
        args += [
            "--set",
            f"prometheus.url={cluster.state.prometheus_url}",
            "--set",
            f"prometheus.scrapeIntervalSeconds={SCRAPE_INTERVAL_SECONDS}",
        ]
    if quick:
        args += [
            "--set",
            "extraEnv[1].name=RECSERVE_OPTIMIZE_ARGS",
            "--set-string",
            "extraEnv[1].value=--quick",
        ]
    subprocess.run(args, check=True, capture_output=True, text=True)
    _say(
        "installed the chart: operator Deployment, ServiceAccount, RBAC (namespace recserve-system)"
    )


def _wait_ready(api: Any, timeout: float) -> dict[str, Any]:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, "default", "recmodels", MODEL)
        for cond in (obj.get("status") or {}).get("conditions", []):
            line = f"{cond['status']:<5} {cond['reason']}: {cond['message']}"
            if seen.get(cond["type"]) != line:
                seen[cond["type"]] = line
                _say(f"  {cond['type']:<13} {line}")
        ready = [
            c
            for c in (obj.get("status") or {}).get("conditions", [])
            if c["type"] == "Ready" and c["status"] == "True"
        ]
        if ready:
            return dict(obj)
        time.sleep(2)
    raise TimeoutError(f"{MODEL} not Ready within {timeout:.0f}s")


def _install_kind(cluster: Any, quick: bool) -> None:
    sets = ["--set", "extraEnv[0].name=RECSERVE_RECONCILE_INTERVAL_SECONDS"]
    sets += ["--set-string", "extraEnv[0].value=3"]
    if quick:
        sets += ["--set", "extraEnv[1].name=RECSERVE_OPTIMIZE_ARGS"]
        sets += ["--set-string", "extraEnv[1].value=--quick"]
    cluster.install_chart(*sets)
    _say("installed the chart on kind (hack/kind.sh chart): images from `make images`")


def _router_nodeport(cluster: Any) -> tuple[str, int]:
    """A NodePort Service in front of the model's routers: this machine reaches kind's
    nodes on podman's network, so the load goes node -> kube-proxy -> router pod, as a
    client outside the cluster would."""
    name = f"{MODEL}-router-demo"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "selector": {
                "recserve.io/model": MODEL,
                "app.kubernetes.io/component": "router",
            },
            "ports": [{"name": "http", "port": 8080, "targetPort": 8080}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(service))
    port = int(
        cluster.kubectl(
            "get", "service", name, "-n", "default", "-o", "jsonpath={.spec.ports[0].nodePort}"
        )
    )
    address = cluster.node_address()
    # A new Service answers once kube-proxy has its rules: until then a NodePort refuses
    # connections (the first demo on kind lost 94 of its first requests so). Measure the
    # routers, not that delay.
    started = time.monotonic()
    wait_http(f"http://{address}:{port}/v2/health/ready", 60)
    _say(f"NodePort {address}:{port} answered after {time.monotonic() - started:.1f} s")
    return address, port


def _router_ip(api: Any) -> str:
    from kubernetes import client

    pods = client.CoreV1Api(api).list_namespaced_pod(
        "default", label_selector=f"recserve.io/model={MODEL},app.kubernetes.io/component=router"
    )
    for pod in pods.items:
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            return str(pod.status.pod_ip)
    raise RuntimeError("no ready router pod")


def _load(
    ip: str, port: int, manifest_dir: Path, rate: float, seconds: float, kind: bool = False
) -> dict[str, Any]:
    from recserve_dev.loadgen import Target, open_loop
    from recserve_dev.testmodel import rank_bodies
    from recserve_runtime.artifacts import load_manifest

    bodies = rank_bodies(load_manifest(manifest_dir), count=64, candidates=64)
    # kind: a node's address on podman's network (private, on this machine)
    target = Target(ip, port, "/v1/rank", bodies, private_ok=kind)
    result = asyncio.run(open_loop(target, rate, seconds))
    return dict(result.summary())


def _prometheus(url: str, query: str) -> list[dict[str, Any]]:
    full = f"{url}/api/v1/query?query={urllib.parse.quote(query)}"
    with urllib.request.urlopen(full, timeout=5) as resp:
        return list(json.load(resp)["data"]["result"])


def run(args: argparse.Namespace) -> int:
    from recserve_dev.localcluster.access import api_client
    from recserve_dev.localcluster.tools import repo_root

    repo = repo_root()
    prometheus: Callable[[str], list[dict[str, Any]]] | None = None
    if args.kind:
        from recserve_dev.kindcluster import STORE_ON_HOST, KindCluster

        cluster: Any = KindCluster.attach()
        _say(f"using the kind cluster ({cluster.kubeconfig})")
        store = STORE_ON_HOST
        _install_kind(cluster, quick=not args.full)
        prometheus = cluster.prometheus
        done = f"done. KUBECONFIG={cluster.kubeconfig}; delete the cluster with `make kind-down`"
    else:
        root = Path(args.root).resolve()
        cluster = _cluster(root, build=True)
        store = root / "store"
        _install(cluster, repo, store, quick=not args.full)
        if cluster.state.prometheus_url:
            url = cluster.state.prometheus_url
            prometheus = lambda query: _prometheus(url, query)  # noqa: E731
        done = f"done. KUBECONFIG={cluster.admin_kubeconfig}; stop with `make cluster-down`"
    api = api_client(cluster.admin_kubeconfig)
    cluster.kubectl("apply", "-f", str(repo / "examples"))
    _say(
        "applied examples/: 3 HardwarePools, OptimizationPolicy latency-first, "
        "RecModel movielens-dlrm"
    )
    started = time.monotonic()
    model = _wait_ready(api, args.timeout)
    _say(f"{MODEL} Ready after {time.monotonic() - started:.0f}s")
    print(cluster.kubectl("get", "hardwarepools"))
    print(cluster.kubectl("get", "modelvariants", "-n", "default", "-o", "wide"))
    print(cluster.kubectl("get", "recmodels", "-n", "default", "-o", "wide"))
    print(cluster.kubectl("get", "pods", "-n", "default", "-o", "wide"))
    status = model["status"]
    _say(f"plan: {status.get('plan')}")
    for placement in status.get("placements", []):
        _say(
            f"  pool {placement['pool']}: {placement['replicas']} x {placement['variant']}, "
            f"batch {placement['batchSize']}"
        )
    ip, port = _router_nodeport(cluster) if args.kind else (_router_ip(api), 8080)
    variant = status["placements"][0]["variant"]
    from kubernetes import client

    mv = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, "default", "modelvariants", variant
    )
    local_dir = store / mv["spec"]["artifact"]["uri"].removeprefix("/artifacts/")
    _say(
        f"sending {args.rate:.0f} req/s (64 candidates each) for {args.seconds:.0f}s "
        f"to the router at {ip}:{port}"
    )
    summary = _load(ip, port, local_dir, args.rate, args.seconds, kind=args.kind)
    _say(
        f"load: {summary['throughput']} req/s ok, p50 {summary['p50_ms']} ms, "
        f"p99 {summary['p99_ms']} ms, p99.9 {summary['p999_ms']} ms, codes {summary['codes']}"
    )
    if prometheus is not None:
        time.sleep(6)
        p99 = (
            "histogram_quantile(0.99, sum by (le, pod) "
            "(rate(recserve_request_duration_seconds_bucket[30s]))) * 1000"
        )
        for name, query in (
            ("requests/s by pod (Prometheus)", "sum by (pod) (rate(recserve_requests_total[30s]))"),
            ("server p99 ms by pod (Prometheus)", p99),
        ):
            for series in prometheus(query):
                _say(f"  {name}: {series['metric'].get('pod')} = {float(series['value'][1]):.1f}")
    _say(done)
    return 0


def register(sub: Any) -> None:
    """Add `recserve demo` to the CLI."""
    p = sub.add_parser(
        "demo",
        help="the main job: build, measure, place and serve the MovieLens model locally",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default=".cluster", help="local cluster state folder")
    p.add_argument(
        "--kind",
        action="store_true",
        help="run on the kind cluster of `make kind-up` (images from `make images`)",
    )
    p.add_argument("--full", action="store_true", help="full variant search (slower)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds to wait for Ready")
    p.add_argument("--rate", type=float, default=200, help="requests per second of load")
    p.add_argument("--seconds", type=float, default=15, help="seconds of load")
    p.set_defaults(handler=lambda args: run(args))


if __name__ == "__main__":
    sys.exit(
        run(
            argparse.Namespace(
                root=".cluster", kind=False, full=False, timeout=1200, rate=200, seconds=15
            )
        )
    )
