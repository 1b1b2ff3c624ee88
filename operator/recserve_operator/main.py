"""`recserve-operator`: run the kopf operator that reconciles recserve.io resources."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

from recserve_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the operator process."""
    parser = argparse.ArgumentParser(
        prog="recserve-operator",
        description="Reconcile RecModel, HardwarePool, OptimizationPolicy and ModelVariant "
        "resources against the cluster in the current kubeconfig (or in-cluster config). "
        "Settings are documented in recserve_operator/settings.py.",
    )
    parser.add_argument("--version", action="version", version=f"recserve-operator {__version__}")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL (default: %(default)s; empty to disable)",
    )
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        default=os.environ.get("RECSERVE_LEADER_ELECTION", "") == "1",
        help="take part in leader election on the Lease recserve-operator in "
        "$RECSERVE_NAMESPACE before acting (for more than one replica; the chart's "
        "leaderElection.enabled; env RECSERVE_LEADER_ELECTION=1)",
    )
    parser.add_argument(
        "--lease-duration",
        type=int,
        default=int(os.environ.get("RECSERVE_LEASE_DURATION_SECONDS", "15")),
        help="seconds a Lease not renewed stays the leader's (default %(default)s; a "
        "standby takes over after it; env RECSERVE_LEASE_DURATION_SECONDS)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


LEASE_NAME = "recserve-operator"


@contextlib.contextmanager
def standby_liveness(url: str) -> Iterator[None]:
    """Answer the liveness URL while standing by (kopf serves it once it runs): a standby
    is alive, and must not be restarted for waiting."""
    if not url:
        yield
        return
    parsed = urlparse(url)

    class Alive(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == parsed.path else 404)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 80), Alive)
    thread = threading.Thread(target=server.serve_forever, name="standby-liveness", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def elector(duration_s: int) -> Any:
    """This process's candidate for the operator Lease (identity: the pod's name)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    from recserve_operator.leader import LeaderElector

    # unique per process, as client-go's: a restarted container is a new candidate, which
    # waits for the lease like any standby instead of resuming a leadership it lost
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    namespace = os.environ.get("RECSERVE_NAMESPACE", "default")
    renew_s = max(duration_s / 3, 1.0)
    return LeaderElector(
        client.CoordinationV1Api(), namespace, LEASE_NAME, identity, duration_s, renew_s
    )


def _lost_lease() -> None:
    # a leader that may have been replaced must not take one more decision: no cleanup
    # handlers, no graceful drain (client-go's leader election exits the same way)
    logging.getLogger("recserve.leader").error("exiting: the lease is lost")
    os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the operator until it is stopped."""
    args = build_parser().parse_args(argv)
    import kopf

    from recserve_operator import handlers  # registers the handlers with kopf

    kopf.configure(verbose=args.verbose)
    lease = None
    if args.leader_elect:
        lease = elector(args.lease_duration)
        with standby_liveness(args.liveness):
            lease.acquire()
        lease.keep(on_lost=_lost_lease)
    try:
        kopf.run(
            standalone=True,  # one replica, or the Lease's leader: no kopf peering
            clusterwide=not args.namespace,
            namespaces=list(args.namespace),
            liveness_endpoint=args.liveness or None,
        )
    finally:
        if lease is not None:
            lease.release()
    _ = handlers
    return 0


if __name__ == "__main__":
    sys.exit(main())
