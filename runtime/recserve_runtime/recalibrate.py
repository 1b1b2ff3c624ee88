"""`recserve recalibrate`: calibrate a statically quantized variant again, on recent
requests instead of training rows.

A static INT8 variant fixes each activation's range from the rows it was calibrated
on. When live inputs move outside them (dense features scaled up, unseen ids), the
ranges clip and its ranking departs from the FP32 reference: fidelity drift. This
command

1. asks each server for its sample of answered rows (``GET /admin/request-sample`` on
   its admin port, :mod:`recserve_runtime.server.request_sample`) and pools them: the
   servers given (``--sample-from``) and the Ready pods that ``--servers-selector``
   selects when the command runs (in a Job: whichever servers the pool has by then, a
   re-planned pool's new ones included; they see the same requests), again every 5 s
   for up to ``--wait-s`` while they hold fewer than ``--min-rows`` rows (new servers
   start with an empty sample);
2. quantizes the FP32 reference again with four fifths of them as the calibration set
   (the same onnxruntime static QDQ recipe as the build);
3. checks, on the fifth held back, that the new variant ranks closer to the reference
   than the one it replaces (pairwise order agreement), and, on the build's held-out
   data, that its AUC stays within the accuracy budget; either failing is an error
   (exit 2) and nothing is written;
4. writes the new variant to the build's variant folder (``--name``), its manifest naming
   the variant it recalibrates (``recalibratedFrom``).

Exit codes: 0 done (or already there), 1 no server answered (worth a retry), 2 bad input
or a check failed (the same input fails the same way).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from recserve_runtime.artifacts import MANIFEST, Manifest, load_manifest
from recserve_runtime.threads import SERVER_INTRA_OP_THREADS

SAMPLE_PATH = "/admin/request-sample"
POLL_S = 5.0  # between two rounds of asking the servers for their samples
GROUP_ROWS = 64  # rows ranked together when agreement is measured (a request's candidates)


class Unreachable(RuntimeError):
    """No server answered with a sample (a retry may find them)."""


def fetch_samples(urls: list[str], timeout_s: float, token: str | None) -> tuple[Any, list[str]]:
    """The servers' samples pooled (a ``SampleRows``), and what went wrong with the others.
    Raises Unreachable when none answered."""
    from recserve_runtime.server.request_sample import SampleRows

    parts, failures = [], []
    headers = {"authorization": f"Bearer {token}"} if token else {}
    for base in urls:
        url = base.rstrip("/") + SAMPLE_PATH
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                parts.append(SampleRows.from_npz(resp.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace")
            failures.append(f"{url}: HTTP {exc.code} {detail}")
        except (OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
    if not parts:
        raise Unreachable(f"no server gave a request sample: {'; '.join(failures)}")
    return SampleRows.concat(parts), failures


def server_urls(selector: str, namespace: str, admin_port: int) -> list[str]:
    """Admin URLs of the Ready pods ``selector`` selects in ``namespace`` (in a pod: its
    service account's credentials; elsewhere: the kubeconfig)."""
    from recserve_runtime.router.discovery import kube_client, targets_from_pods

    core = kube_client(None, "CoreV1Api")
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [f"http://{t.host}:{t.port}" for t in targets_from_pods(pods, "admin", admin_port)]


def agreement(served: np.ndarray, reference: np.ndarray, group: int = GROUP_ROWS) -> float:
    """Pairwise order agreement of ``served`` with ``reference``, rows ranked in groups
    of ``group`` (as the candidates of one request are)."""
    from recserve_runtime.server.fidelity import pairwise_agreement

    pairs = agreeing = 0
    for start in range(0, len(served), group):
        p, a = pairwise_agreement(served[start : start + group], reference[start : start + group])
        pairs, agreeing = pairs + p, agreeing + a
    return agreeing / pairs if pairs else 1.0


def find_variant(variants: Path, name: str) -> tuple[Path, Manifest] | None:
    """The folder and manifest of the variant called ``name`` in a build's variant folder."""
    for sub in sorted(variants.iterdir()) if variants.is_dir() else []:
        if (sub / MANIFEST).exists():
            manifest = load_manifest(sub)
            if manifest.name == name:
                return sub, manifest
    return None


def _scores(path: Path, spec: Any, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
    from recserve_runtime.builder.evaluate import predict_onnx
    from recserve_runtime.data.tabular import Split

    rows = Split(sparse, dense, np.zeros(len(sparse), np.float32))
    return predict_onnx(path, spec, rows, SERVER_INTRA_OP_THREADS)


def _held_out(args: argparse.Namespace, manifest: Manifest) -> Any:
    """The build's held-out rows (the same flags as `recserve optimize`)."""
    from recserve_runtime.builder.errors import BuildError
    from recserve_runtime.builder.source import check_data
    from recserve_runtime.data import DatasetError
    from recserve_runtime.optimize import check_eval_args, load_eval_data

    check_eval_args(args)
    spec = manifest.feature_spec
    try:
        data = load_eval_data(args, spec, args.holdout_bp)
    except DatasetError as exc:
        raise BuildError(str(exc)) from exc
    check_data(spec, data)
    return data.test


def _servers(args: argparse.Namespace) -> list[str]:
    """The admin URLs to ask now: the given ones and the Ready pods the selector selects."""
    urls = list(args.sample_from or [])
    if args.servers_selector:
        try:
            urls += server_urls(args.servers_selector, args.namespace, args.admin_port)
        except Exception as exc:  # the API server unreachable now: worth a retry
            raise Unreachable(f"listing the servers ({args.servers_selector}): {exc}") from exc
    if not urls:
        raise Unreachable(f"no Ready server matches {args.servers_selector!r}")
    return urls


def collect(args: argparse.Namespace, token: str | None) -> tuple[Any, int]:
    """At least ``--min-rows`` recent rows pooled from the servers, and how many answered.

    Asked again every ``POLL_S`` until ``--wait-s`` has passed: a pool's servers may have
    just been replaced (a re-plan on fidelity drift replaces them at once, and the new
    ones start with an empty sample that fills as requests come). Each round pools what
    the servers hold then (a server's sample is a uniform one of all it has answered, so
    the rounds are not added up). Raises BuildError when too few rows came by then,
    Unreachable when no server answered at all."""
    from recserve_runtime.builder.errors import BuildError

    deadline = time.monotonic() + args.wait_s
    while True:
        try:
            urls = _servers(args)
            sample, failures = fetch_samples(urls, args.timeout_s, token)
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(POLL_S)
            continue
        for failure in failures:
            print(f"[recalibrate] skipped a server: {failure}", file=sys.stderr)
        servers = len(urls) - len(failures)
        if len(sample) >= args.min_rows:
            return sample, servers
        if time.monotonic() >= deadline:
            raise BuildError(
                f"only {len(sample)} recent rows from {servers} servers after waiting "
                f"{args.wait_s:.0f} s, fewer than --min-rows {args.min_rows}: too little "
                "traffic to calibrate on"
            )
        print(
            f"[recalibrate] {len(sample)} recent rows from {servers} servers, waiting for "
            f"{args.min_rows}",
            file=sys.stderr,
        )
        time.sleep(POLL_S)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole recalibration; returns its report. Raises BuildError on bad input or a
    failed check, Unreachable when no server answered."""
    from recserve_runtime.builder.errors import BuildError
    from recserve_runtime.builder.evaluate import drop_rel_pct, evaluate_onnx
    from recserve_runtime.builder.quantize import int8_static_qdq
    from recserve_runtime.builder.store import put_variant
    from recserve_runtime.data.tabular import Split
    from recserve_runtime.profiler import profile

    start = time.monotonic()
    if not args.sample_from and not args.servers_selector:
        raise BuildError("give the servers: --sample-from URL or --servers-selector LABELS")
    variants = Path(args.variants)
    done = find_variant(variants, args.name)
    if done is not None:
        return {"variant": args.name, "location": str(done[0]), "already": True}
    found, ref = find_variant(variants, args.variant), find_variant(variants, args.reference)
    if found is None or ref is None:
        missing = args.variant if found is None else args.reference
        raise BuildError(f"no variant {missing!r} under {variants}")
    (old_dir, old), (ref_dir, reference) = found, ref
    if old.recipe.quantization != "static":
        raise BuildError(
            f"{args.variant} is not statically quantized (quantization "
            f"{old.recipe.quantization!r}): there are no activation ranges to calibrate"
        )
    token = Path(args.admin_token_file).read_text().strip() if args.admin_token_file else None
    sample, servers = collect(args, token)
    order = np.random.default_rng(args.seed).permutation(len(sample))
    held = max(len(sample) // 5, 1)
    check, calib = order[:held], order[held:]
    spec = reference.feature_spec
    print(
        f"[recalibrate] {len(sample)} recent rows from {servers} "
        f"servers ({sample.seen} answered): {len(calib)} calibrate, {len(check)} check",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="recserve-recal-") as tmp:
        new_path = Path(tmp) / "model.onnx"
        rows = Split(sample.sparse[calib], sample.dense[calib], np.zeros(len(calib), np.float32))
        int8_static_qdq(ref_dir / reference.artifact.file, new_path, spec, rows)
        sparse, dense = sample.sparse[check], sample.dense[check]
        truth = _scores(ref_dir / reference.artifact.file, spec, sparse, dense)
        before = agreement(_scores(old_dir / old.artifact.file, spec, sparse, dense), truth)
        after = agreement(_scores(new_path, spec, sparse, dense), truth)
        print(
            f"[recalibrate] agreement with {args.reference} on {len(check)} held-back recent "
            f"rows: {args.variant} {before:.4f}, recalibrated {after:.4f}",
            file=sys.stderr,
        )
        if after < before:
            raise BuildError(
                f"recalibrating {args.variant} on recent requests ranks them further from "
                f"{args.reference} ({before:.4f} -> {after:.4f} pairwise agreement on "
                f"{len(check)} held-back rows): nothing written"
            )
        test = _held_out(args, reference)
        metrics = evaluate_onnx(new_path, spec, test, args.threads)
        old_auc = evaluate_onnx(old_dir / old.artifact.file, spec, test, args.threads)["auc"]
        # the reference measured again on the same rows: what the build compared with
        teacher = evaluate_onnx(ref_dir / reference.artifact.file, spec, test, args.threads)["auc"]
        drop = drop_rel_pct(teacher, metrics["auc"])
        drop_bp = max(round(drop * 100), 0)
        print(
            f"[recalibrate] AUC on {len(test)} held-out rows: {args.reference} {teacher:.4f}, "
            f"{args.variant} {old_auc:.4f}, recalibrated {metrics['auc']:.4f}",
            file=sys.stderr,
        )
        if drop_bp > args.accuracy_budget_bp:
            raise BuildError(
                f"the recalibrated variant's AUC on {len(test)} held-out rows is "
                f"{metrics['auc']:.4f}, {drop_bp} bp below {args.reference}'s {teacher:.4f}: "
                f"over the {args.accuracy_budget_bp} bp budget, nothing written"
            )
        size = new_path.stat().st_size
        ref_size = reference.artifact.size_bytes or size
        metrics.update(
            {
                "aucDropRelPct": drop,
                "sizeReductionPct": 100.0 * (1 - size / ref_size),
                "accepted": 1.0,
                "pareto": 0.0,
                "calibrationRows": float(len(calib)),
                "recentAgreementBefore": before,
                "recentAgreementAfter": after,
            }
        )
        manifest = old.model_copy(
            update={
                "name": args.name,
                "metrics": metrics,
                "recalibrated_from": args.variant,
                "profile": profile(new_path, spec, "cpu", seconds=0.1),
            }
        )
        location = put_variant(str(variants), new_path, manifest)
    report = {
        "variant": args.name,
        "from": args.variant,
        "location": location,
        "rows": len(sample),
        "agreementBefore": round(before, 4),
        "agreementAfter": round(after, 4),
        "auc": round(metrics["auc"], 4),
        "aucBefore": round(old_auc, 4),
        "aucDropBasisPoints": drop_bp,
        "seconds": round(time.monotonic() - start, 1),
    }
    return report


def _cmd(args: argparse.Namespace) -> int:
    from recserve_runtime.builder.errors import BuildError

    try:
        report = run(args)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve recalibrate`."""
    from recserve_runtime.optimize import add_eval_arguments

    p = sub.add_parser(
        "recalibrate",
        help="calibrate a static INT8 variant again on the servers' recent requests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variants", required=True, help="the build's variant folder")
    p.add_argument("--variant", required=True, help="the statically quantized variant's name")
    p.add_argument("--name", required=True, help="the new variant's name")
    p.add_argument("--reference", default="fp32", help="the FP32 variant (default fp32)")
    p.add_argument(
        "--sample-from",
        action="append",
        metavar="URL",
        help="a server's admin URL, e.g. http://10.0.0.5:8001 (repeatable)",
    )
    p.add_argument(
        "--servers-selector",
        default=None,
        metavar="LABELS",
        help="also the Ready pods these labels select in --namespace, on --admin-port "
        "(found when the command runs)",
    )
    p.add_argument("--namespace", default="default", help="of --servers-selector")
    p.add_argument(
        "--admin-port", type=int, default=8001, help="the servers' admin port (default 8001)"
    )
    p.add_argument("--admin-token-file", default=None, help="the servers' admin token, if any")
    p.add_argument("--min-rows", type=int, default=256, help="fewest recent rows to calibrate on")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per server (default 10)")
    p.add_argument(
        "--wait-s",
        type=float,
        default=120.0,
        help="ask the servers again every 5 s for up to this long while they hold fewer "
        "than --min-rows rows or none answers (default 120)",
    )
    p.add_argument(
        "--accuracy-budget-bp",
        type=int,
        default=100,
        help="largest AUC drop against --reference on the held-out data, basis points",
    )
    add_eval_arguments(p)
    p.add_argument("--holdout-bp", type=int, default=2000, help="as for `recserve optimize`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=SERVER_INTRA_OP_THREADS)
    p.set_defaults(handler=_cmd)
