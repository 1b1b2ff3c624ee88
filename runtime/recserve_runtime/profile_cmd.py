"""`recserve profile`: profile every variant in a folder on this node's hardware.

Run by the operator's per-pool profile Jobs (pinned to the pool's nodes), so that each
pool's numbers come from its own hardware and execution provider. Two parts: the model
compute of every variant per batch size (:mod:`recserve_runtime.profiler`), then, with
``--serving`` (the default), the served-path calibration: the real server on this node,
driven to saturation, gives the per-request, per-row and per-batch cost of serving
beyond the model (:mod:`recserve_runtime.serving_profile`), so that planned capacity is
what a replica serves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from recserve_runtime.artifacts import Profile
from recserve_runtime.serving_profile import CONCURRENCY, REPEATS, SECONDS_PER_SIZE, SIZES
from recserve_runtime.threads import SERVER_INTRA_OP_THREADS


def _handler(args: argparse.Namespace) -> int:
    from recserve_runtime.artifacts import (
        MANIFEST,
        IntegrityError,
        ProfiledVariant,
        ProfileReport,
        load_manifest,
        verify,
    )
    from recserve_runtime.profiler import profile
    from recserve_runtime.serving_profile import calibrate

    root = Path(args.variants)
    if not root.is_dir():
        print(f"error: {root} is not a folder of variants", file=sys.stderr)
        return 2
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    results: dict[str, ProfiledVariant] = {}
    provider = reason = None
    threads = args.threads
    dirs = sorted(d for d in root.iterdir() if (d / MANIFEST).exists())
    if not dirs:
        print(f"error: no variant (folder with manifest.json) in {root}", file=sys.stderr)
        return 2
    serving_sizes = tuple(int(r) for r in args.serving_sizes.split(","))
    if args.serving and (len(set(serving_sizes)) < 2 or min(serving_sizes) < 1):
        print("error: --serving-sizes needs two or more distinct sizes >= 1", file=sys.stderr)
        return 2
    manifests = {}
    for n, folder in enumerate(dirs, 1):
        manifest = manifests[folder.name] = load_manifest(folder)
        try:
            path = verify(folder, manifest)
        except IntegrityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"[{n}/{len(dirs)}] profiling {manifest.name} on {args.hardware}", flush=True)
        prof = profile(
            path,
            manifest.feature_spec,
            args.hardware,
            batch_sizes,
            threads=args.threads,
            seconds=args.seconds,
        )
        provider, reason, threads = prof.execution_provider, prof.fallback_reason, prof.threads
        results[folder.name] = ProfiledVariant(name=manifest.name, **prof.model_dump())
    serving = None
    if args.serving:
        # The per-request cost is the HTTP side's, largely the same for every variant of
        # a build (one feature spec): calibrate on the fastest, whose compute is the
        # smallest share of what is measured.
        key = max(results, key=lambda k: _peak_throughput(results[k]))
        print(
            f"serving calibration on {results[key].name}: real server, closed loop, "
            f"{args.serving_seconds:g}s per size {','.join(map(str, serving_sizes))}",
            file=sys.stderr,
            flush=True,
        )
        try:
            serving = calibrate(
                root / key,
                manifests[key],
                results[key].points,
                hardware=args.hardware,
                threads=args.threads,
                sizes=serving_sizes,
                seconds=args.serving_seconds,
                concurrency=args.serving_concurrency,
                log=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
            )
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"error: serving calibration failed: {exc}", file=sys.stderr)
            return 1
    report = ProfileReport(
        hardware=args.hardware,
        execution_provider=provider,
        fallback_reason=reason,
        threads=threads,
        variants=results,
        serving=serving,
    )
    out = Path(args.json)
    report.write(out)  # written last and atomically: its presence means the profile is done
    print(f"wrote {out}")
    return 0


def _peak_throughput(variant: Profile) -> float:
    """Samples per second at the variant's largest profiled batch."""
    points = sorted(variant.points, key=lambda p: p.batch_size)
    return float(points[-1].samples_per_second) if points else 0.0


def register(sub: Any) -> None:
    """Add `recserve profile` to the CLI."""
    p = sub.add_parser(
        "profile",
        help="profile a folder of variants on this machine's hardware",
        description="Latency (p50/p99) and throughput per batch size of every variant under "
        "--variants, with the execution provider for --hardware (the fallback, if any, is "
        "recorded); then (--serving, the default) the real server's per-request and per-row "
        "cost beyond the model, measured under saturating load; writes one JSON report.",
    )
    p.add_argument("--variants", required=True, help="folder holding variant folders")
    p.add_argument("--hardware", choices=["cpu", "gpu", "fpga"], default="cpu")
    p.add_argument("--json", required=True, help="report file to write")
    p.add_argument("--batch-sizes", default="1,8,64,256,1024", help="comma-separated")
    p.add_argument("--seconds", type=float, default=0.3, help="timed seconds per batch size")
    p.add_argument(
        "--threads",
        type=int,
        default=SERVER_INTRA_OP_THREADS,
        help="onnxruntime intra-op threads per call (default: what a server replica uses, "
        f"{SERVER_INTRA_OP_THREADS}, so the profile is one replica's capacity; recorded in "
        "the report as `threads`)",
    )
    p.add_argument(
        "--serving",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="calibrate the served path: start `recserve serve` on 127.0.0.1 with the fastest "
        "variant and these threads, saturate it with /v1/rank requests of --serving-sizes "
        "candidates (one and several to a batch), and record the fitted overhead (perRequest "
        "+ perRow x candidates + perBatch / requests per batch) as `serving` (default on; "
        "the planner counts model compute only without it)",
    )
    p.add_argument(
        "--serving-sizes",
        default=",".join(str(r) for r in SIZES),
        help="candidates per request of the calibration runs, comma-separated (two or more)",
    )
    p.add_argument(
        "--serving-seconds",
        type=float,
        default=SECONDS_PER_SIZE,
        help=f"timed seconds per size (default {SECONDS_PER_SIZE:g}; {REPEATS} windows per "
        "batch setting)",
    )
    p.add_argument(
        "--serving-concurrency",
        type=int,
        default=CONCURRENCY,
        help=f"closed-loop client connections (default {CONCURRENCY})",
    )
    p.set_defaults(handler=_handler)
