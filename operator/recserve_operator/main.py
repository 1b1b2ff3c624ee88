"""`recserve-operator`: run the kopf operator that reconciles recserve.io resources."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the operator until it is stopped."""
    args = build_parser().parse_args(argv)
    import kopf

    from recserve_operator import handlers  # registers the handlers with kopf

    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=list(args.namespace),
        liveness_endpoint=args.liveness or None,
    )
    _ = handlers
    return 0


if __name__ == "__main__":
    sys.exit(main())
