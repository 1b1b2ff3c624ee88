"""`recserve route`: argument parsing and process setup (heavy imports in the handler)."""

from __future__ import annotations

import argparse
import logging

from recserve_runtime.httplimits import READ_TIMEOUT_S
from recserve_runtime.router.balancer import POLICIES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `route` subcommand."""
    p = sub.add_parser(
        "route",
        help="one entry point spreading requests over backends by live latency",
        description="Forward OIP v2 and /v1/rank requests to the backend with the lowest "
        "expected wait (power of two choices on EWMA latency x in-flight); retry a failed "
        "request once elsewhere; eject and re-admit backends by health. See docs/serving.md.",
    )
    p.add_argument("--backends", nargs="*", default=[], help="static host:port list")
    p.add_argument("--selector", help="discover backends with this label selector")
    p.add_argument(
        "--source",
        choices=["endpointslices", "pods"],
        default="endpointslices",
        help="what --selector selects: EndpointSlices (default) or Ready pods",
    )
    p.add_argument("--namespace", default="default", help="namespace for --selector")
    p.add_argument("--port-name", help="port name (default: the first port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--policy", choices=list(POLICIES), default="p2c",
        help="p2c on live latency (default); least-request and round-robin are the "
        "benchmark's baselines, with the same retries",
    )  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=5.0, help="per backend request")
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=READ_TIMEOUT_S,
        help=f"a client's request must arrive whole within this many seconds, else 408 "
        f"(default {READ_TIMEOUT_S:g})",
    )
    p.add_argument("--health-interval-s", type=float, default=1.0)
    p.add_argument(
        "--refresh-interval-s",
        type=float,
        default=10.0,
        help="list the backends at least this often; with --selector they are also watched "
        "and listed again on every change",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve /metrics and /router/backends on this port (at --host) and not on --port, "
        "so that a NetworkPolicy can keep them from the router's clients (default 0: on "
        "--port; the operator's routers use 8082)",
    )
    p.add_argument(
        "--weights-config-map",
        metavar="NAME",
        help="canary rollouts: read and watch this ConfigMap (in --namespace), whose "
        'data["weights.json"] is {"canaryPercent": <int 0..100>}, and send that share of '
        "requests to the backends labelled recserve.io/track=canary (default: no split)",
    )
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(handler=_route)


def _route(args: argparse.Namespace) -> int:
    from collections.abc import Callable, Sequence

    from recserve_runtime.router.balancer import Balancer, Target
    from recserve_runtime.router.discovery import (
        Addr,
        EndpointSliceSource,
        PodSource,
        parse_static,
    )
    from recserve_runtime.router.service import Router
    from recserve_runtime.router.weights import WeightsSource
    from recserve_runtime.server.asgi import ASGIApp, run_uvicorn, split_off

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    discover: Callable[[], Sequence[Addr | Target]]
    watch = None
    if args.selector:
        kind = PodSource if args.source == "pods" else EndpointSliceSource
        source = kind(args.namespace, args.selector, args.port_name)
        discover, watch = source.list, source.watch
    else:
        static = parse_static(args.backends)
        if not static:
            print("error: give --backends or --selector")
            return 2
        discover = lambda: static  # noqa: E731
    weights = WeightsSource(args.namespace, args.weights_config_map)
    with_weights = bool(args.weights_config_map)  # without it: no split, as before canaries
    router = Router(
        Balancer(policy=args.policy),
        discover,
        timeout_s=args.timeout_s,
        health_interval_s=args.health_interval_s,
        refresh_interval_s=args.refresh_interval_s,
        watch=watch,
        read_weights=weights.read if with_weights else None,
        watch_weights=weights.watch if with_weights else None,
    )
    logging.getLogger("recserve.router").info(
        "routing on http://%s:%d policy=%s weights=%s",
        args.host, args.port, args.policy, args.weights_config_map or "-",
    )  # fmt: skip
    app = ASGIApp(router.handle, router.startup, router.shutdown)
    if args.metrics_port:
        inner = frozenset({"/metrics", "/router/backends"})
        rest, only = split_off(router.handle, inner, "--metrics-port")
        app = ASGIApp(rest, router.startup, router.shutdown, metrics=(args.metrics_port, only))
    run_uvicorn(app, args.host, args.port, 10, read_timeout_s=args.read_timeout_s)
    return 0
