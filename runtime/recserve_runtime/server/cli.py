"""`recserve serve`: argument parsing and process setup (heavy imports in the handler)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recserve_runtime.artifacts import P99_TARGET_MS_DEFAULT
from recserve_runtime.httplimits import READ_TIMEOUT_S
from recserve_runtime.threads import SERVER_INTRA_OP_THREADS


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` subcommand."""
    p = sub.add_parser(
        "serve",
        help="serve a variant over OIP v2 HTTP and /v1/rank with adaptive batching",
        description="Load a variant folder or fsspec URI (sha256-verified), then answer "
        "OIP v2 (KServe/Triton) HTTP requests and POST /v1/rank. See docs/serving.md.",
    )
    p.add_argument("--variant", required=True, help="variant folder or fsspec URI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--hardware", choices=["cpu", "gpu", "fpga"], default="cpu")
    p.add_argument(
        "--slo-p99-ms",
        type=float,
        default=float(P99_TARGET_MS_DEFAULT),
        help=f"latency target (default {P99_TARGET_MS_DEFAULT})",
    )
    p.add_argument("--model-name", help="OIP model name (default: the manifest's variant name)")
    p.add_argument("--workers", type=int, default=1, help="model threads (default 1)")
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=SERVER_INTRA_OP_THREADS,
        help=f"onnxruntime threads per run (default {SERVER_INTRA_OP_THREADS}, the count "
        "`recserve profile` measures with)",
    )
    p.add_argument("--max-batch-rows", type=int, default=4096, help="hard batch ceiling (rows)")
    p.add_argument("--max-queue", type=int, default=1024, help="hard cap on queued requests")
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    p.add_argument("--limits-file", type=Path, help="JSON limits, re-read when it changes")
    p.add_argument("--drain-timeout-s", type=float, default=30.0)
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=READ_TIMEOUT_S,
        help=f"a request must arrive whole within this many seconds of its connection (or "
        f"of its first byte on a kept-alive one), else 408 and the connection is closed "
        f"(default {READ_TIMEOUT_S:g}; slow clients cannot hold connections)",
    )
    p.add_argument(
        "--emulate-us-per-row",
        type=float,
        default=0.0,
        help="benchmark/test aid: emulate a slower device: a batch takes at least this many "
        "microseconds per row (the worker sleeps the difference, using no CPU; default 0 = off)",
    )
    p.add_argument(
        "--emulate-us-per-batch",
        type=float,
        default=0.0,
        help="benchmark/test aid, with --emulate-us-per-row: a fixed cost per batch as well "
        "(a device's launch and transfer cost, which larger batches amortize; default 0)",
    )
    p.add_argument(
        "--emulate-file",
        type=Path,
        help='benchmark/test aid: JSON {"emulate_us_per_row": x, "emulate_us_per_batch": y, '
        '"speedup_by_precision": {"int8": 2}}, re-read when it changes; its costs replace the '
        "two flags above once it exists, divided by the speed-up of the variant's precision "
        "(default 1) (an emulated device that slows down mid-run; `recserve bench drift`)",
    )
    p.add_argument(
        "--reference-variant",
        help="the FP32 reference variant (folder or URI): with --fidelity-sample-bp, a share "
        "of requests is also scored with it, off the request path, and the pairwise order "
        "agreement exported (recserve_fidelity_*; the operator's fidelity drift)",
    )
    p.add_argument(
        "--fidelity-sample-bp",
        type=int,
        default=0,
        help="share of requests scored with --reference-variant, in basis points (100 = 1%%; "
        "default 0 = off)",
    )
    p.add_argument(
        "--data-drift-window-rows",
        type=int,
        default=2000,
        help="rows per data drift window: each input column's PSI against the training "
        "data's bins in the manifest is exported every this many rows (recserve_feature_psi; "
        "the operator's data drift); 0 = off (default 2000)",
    )
    p.add_argument(
        "--request-sample-rows",
        type=int,
        default=0,
        help="keep a uniform sample of at most this many answered rows (their feature ids "
        "and values only) for `recserve recalibrate`, served on the admin port as GET "
        "/admin/request-sample; default 0 = none kept",
    )
    p.add_argument(
        "--request-sample-seconds",
        type=float,
        default=0.0,
        help="the request sample covers the rows of the last one to two windows of this "
        "many seconds, not every row answered (the operator sets the drift policy's "
        "sustainedSeconds); default 0 = every row since the server started",
    )
    p.add_argument(
        "--admin-port",
        type=int,
        default=0,
        help="serve the admin API (GET/PUT /admin/limits) on this port, never on --port "
        "(default 0: no admin API; the operator's servers use 8001, reachable by the "
        "operator only where NetworkPolicies are enforced)",
    )
    p.add_argument("--admin-host", default=None, help="address of --admin-port (default --host)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve /metrics on this port (at --host) and not on --port, so that a "
        "NetworkPolicy can open it to Prometheus only (default 0: /metrics on --port; the "
        "operator's servers use 8002)",
    )
    p.add_argument(
        "--admin-token-file",
        type=Path,
        default=None,
        help="file holding a token (e.g. a mounted Secret): admin requests then need "
        "`Authorization: Bearer <token>`",
    )
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from recserve_runtime.server.asgi import make_app, run_uvicorn
    from recserve_runtime.server.policy import Limits
    from recserve_runtime.server.service import InferenceServer, ServeConfig

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.request_sample_rows < 0:
        raise SystemExit(
            f"error: --request-sample-rows must be 0 or more, got {args.request_sample_rows}"
        )
    if args.request_sample_seconds < 0:
        raise SystemExit(
            "error: --request-sample-seconds must be 0 or more, got "
            f"{args.request_sample_seconds:g}"
        )
    limits = Limits(
        slo_p99_s=args.slo_p99_ms / 1000.0,
        max_batch_rows=args.max_batch_rows,
        min_batch_rows=min(64, args.max_batch_rows),
        max_queue=args.max_queue,
        max_queue_delay_s=args.max_queue_delay_ms / 1000.0,
    )
    config = ServeConfig(
        variant=args.variant,
        hardware=args.hardware,
        model_name=args.model_name,
        workers=args.workers,
        intra_op_threads=args.intra_op_threads,
        limits=limits,
        limits_file=args.limits_file,
        drain_timeout_s=args.drain_timeout_s,
        emulate_us_per_row=args.emulate_us_per_row,
        emulate_us_per_batch=args.emulate_us_per_batch,
        emulate_file=args.emulate_file,
        reference_variant=args.reference_variant,
        fidelity_sample_bp=args.fidelity_sample_bp,
        data_drift_window_rows=args.data_drift_window_rows,
        request_sample_rows=args.request_sample_rows,
        request_sample_seconds=args.request_sample_seconds,
        admin_token=_read_token(args.admin_token_file),
    )
    server = InferenceServer(config)
    logging.getLogger("recserve.server").info(
        "serving variant=%s on http://%s:%d hardware=%s", args.variant, args.host, args.port,
        args.hardware,
    )  # fmt: skip
    app = make_app(server, args.admin_port or None, args.metrics_port or None)
    run_uvicorn(
        app, args.host, args.port, args.drain_timeout_s, args.admin_host, args.read_timeout_s
    )
    return 0


def _read_token(path: Path | None) -> str | None:
    """The admin token from its file (surrounding whitespace dropped); SystemExit if the
    file is missing or empty: a server that should be protected never starts open."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"error: --admin-token-file {path}: {exc.strerror}") from exc
    if not token:
        raise SystemExit(f"error: --admin-token-file {path} is empty")
    return token
