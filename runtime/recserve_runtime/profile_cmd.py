"""`recserve profile`: profile every variant in a folder on this node's hardware.

Run by the operator's per-pool profile Jobs (pinned to the pool's nodes), so that each
pool's numbers come from its own hardware and execution provider.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
    for n, folder in enumerate(dirs, 1):
        manifest = load_manifest(folder)
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
    report = ProfileReport(
        hardware=args.hardware,
        execution_provider=provider,
        fallback_reason=reason,
        threads=threads,
        variants=results,
    )
    out = Path(args.json)
    report.write(out)  # written last and atomically: its presence means the profile is done
    print(f"wrote {out}")
    return 0


def register(sub: Any) -> None:
    """Add `recserve profile` to the CLI."""
    p = sub.add_parser(
        "profile",
        help="profile a folder of variants on this machine's hardware",
        description="Latency (p50/p99) and throughput per batch size of every variant under "
        "--variants, with the execution provider for --hardware (the fallback, if any, is "
        "recorded); writes one JSON report.",
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
    p.set_defaults(handler=_handler)
