"""`recserve cluster up|down|status`: the local control plane from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_ROOT = ".cluster"


def _up(args: argparse.Namespace) -> int:
    from recserve_dev.localcluster.cluster import ClusterError, LocalCluster
    from recserve_dev.localcluster.tools import ToolsMissing, find_tools

    root = Path(args.root)
    try:
        existing = LocalCluster.attach(root)
        if existing.state and _alive(existing.state.pids.get("kube-apiserver")):
            print(f"a local cluster is already running in {root}; `make cluster-down` first")
            return 1
    except ClusterError:
        pass
    try:
        tools = find_tools(build=args.build)
        if args.keda and args.build:
            from recserve_dev.localcluster.keda import find_keda_tools

            find_keda_tools(build=True)
    except ToolsMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    simulated = {"gpu": args.sim_gpu, "fpga": args.sim_fpga, "cpu": args.sim_cpu}
    try:
        cluster = LocalCluster(
            root,
            tools,
            simulated=simulated,
            prometheus=not args.no_prometheus,
            keda=True if args.keda else None,  # None: RECSERVE_CLUSTER_KEDA decides
        )
    except ToolsMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"starting local control plane in {root} ...", flush=True)
    try:
        state = cluster.start(timeout=args.timeout)
    except ClusterError as exc:
        print(f"error: {exc}\nlogs: {root / 'logs'}", file=sys.stderr)
        return 1
    print(f"ready in {state.ready_seconds:.1f}s")
    _print_env(cluster)
    return 0


def _alive(pid: Any) -> bool:
    return isinstance(pid, int) and Path(f"/proc/{pid}").exists()


def _print_env(cluster: Any) -> None:
    state = cluster.state
    print(f"  export KUBECONFIG={cluster.admin_kubeconfig}")
    print(f"  API server:  {state.server}")
    if state.prometheus_url:
        print(f"  Prometheus:  {state.prometheus_url}")
    print(f"  kubectl:     {cluster.tools.kubectl}" if hasattr(cluster, "tools") else "")
    print(f"  logs:        {cluster.logs}")


def _down(args: argparse.Namespace) -> int:
    from recserve_dev.localcluster.cluster import ClusterError, LocalCluster

    try:
        cluster = LocalCluster.attach(Path(args.root))
    except ClusterError as exc:
        print(str(exc))
        return 0
    cluster.stop()
    print(f"stopped the local cluster in {args.root}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from recserve_dev.localcluster.cluster import ClusterError, LocalCluster

    try:
        cluster = LocalCluster.attach(Path(args.root))
    except ClusterError as exc:
        print(str(exc))
        return 1
    assert cluster.state is not None
    alive = {name: _alive(pid) for name, pid in cluster.state.pids.items()}
    print(json.dumps({"server": cluster.state.server, "components": alive}, indent=2))
    return 0 if all(alive.values()) else 1


def register(sub: Any) -> None:
    """Add `recserve cluster` to the CLI."""
    parser = sub.add_parser(
        "cluster",
        help="start/stop the local Kubernetes control plane (tests and demo)",
        description="A real control plane on this machine: etcd, kube-apiserver (RBAC), "
        "controller manager and scheduler built from Go modules, kwok-simulated GPU/FPGA/CPU "
        "nodes, a node agent that runs pods as local processes, and Prometheus.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    up = verbs.add_parser("up", help="start it and print KUBECONFIG")
    up.add_argument("--root", default=DEFAULT_ROOT, help="state folder (default: %(default)s)")
    up.add_argument("--build", action="store_true", help="build missing binaries first")
    up.add_argument("--sim-gpu", type=int, default=2, help="kwok GPU nodes (default: 2)")
    up.add_argument("--sim-fpga", type=int, default=1, help="kwok FPGA nodes (default: 1)")
    up.add_argument("--sim-cpu", type=int, default=2, help="kwok CPU nodes (default: 2)")
    up.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    up.add_argument(
        "--keda",
        action="store_true",
        help="also start KEDA's operator and metrics adapter (docs/keda.md)",
    )
    up.add_argument("--timeout", type=float, default=120, help="seconds to wait for readiness")
    up.set_defaults(handler=_up)
    down = verbs.add_parser("down", help="stop it")
    down.add_argument("--root", default=DEFAULT_ROOT)
    down.set_defaults(handler=_down)
    status = verbs.add_parser("status", help="show whether every component runs")
    status.add_argument("--root", default=DEFAULT_ROOT)
    status.set_defaults(handler=_status)
