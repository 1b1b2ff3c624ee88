"""`recserve optimize`: compress a model into variants, measure, gate, select, store.

Checks every input before any work (model file, feature spec, dataset, output
locations), shows progress on the long steps, prints the variant table, writes every
variant content-addressed to ``--out``, the JSON report to ``--json`` and the Pareto
plot next to it (``.png``).

What is built follows the compression options (an OptimizationPolicy's
``spec.compression``, passed by the operator's build Job as these flags): --precisions,
--[no-]static-quantization, --prune-bp / --no-pruning, --max-students / --no-distillation;
accuracy is measured on --holdout-bp of each user's latest interactions (the RecModel's
``spec.evalDataset.holdoutBasisPoints``). ``builder.plan.plan_variants`` is the rule.
--quick shortens the run: fewer students (3 unless --max-students says otherwise),
shorter fine-tuning and profiles.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from recserve_runtime.artifacts import P99_TARGET_MS_DEFAULT


def build_options(args: argparse.Namespace) -> Any:
    """The validated BuildOptions of the parsed flags; BuildError on bad values."""
    from recserve_runtime.builder.plan import (
        BuildOptions,
        check_holdout,
        check_max_students,
        parse_precisions,
        parse_pruning,
    )

    return BuildOptions(
        precisions=parse_precisions(args.precisions),
        static_quantization=args.static_quantization,
        pruning_ratios_bp=parse_pruning(args.prune_bp, args.no_pruning),
        distillation=args.distillation,
        max_students=check_max_students(args.max_students),
        quick=args.quick,
        holdout_bp=check_holdout(args.holdout_bp),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole build; returns the report. Raises BuildError on bad input."""
    from recserve_runtime.builder import selection
    from recserve_runtime.builder.errors import BuildError
    from recserve_runtime.builder.pipeline import (
        BuildContext,
        Policy,
        build_variants,
        manifest_for,
        measure,
    )
    from recserve_runtime.builder.report import plot, table, variant_row, write_json
    from recserve_runtime.builder.source import check_data, load_source
    from recserve_runtime.builder.store import check_writable, check_writable_file, put_variant
    from recserve_runtime.data import DatasetError, load_dataset
    from recserve_runtime.datadrift import reference_from
    from recserve_runtime.profiler import cpu_threads
    from recserve_runtime.train import set_threads, stderr_progress

    start = time.monotonic()
    options = build_options(args)
    threads = set_threads(args.threads or cpu_threads())
    json_path = Path(args.json) if args.json else None
    plot_path = (
        Path(args.plot) if args.plot else (json_path.with_suffix(".png") if json_path else None)
    )
    check_writable(args.out)
    for path in (json_path, plot_path):
        if path is not None:
            check_writable_file(path)
    check_eval_args(args)
    try:
        named = (
            None if args.eval_data else load_dataset(args.dataset, holdout_bp=options.holdout_bp)
        )
        source = load_source(
            args.model,
            args.feature_spec,
            args.dataset,
            args.seed,
            options.holdout_bp,
            args.model_format,
            args.model_sha256,
        )
        data = named or load_eval_data(args, source.spec, options.holdout_bp)
        if args.max_train_rows and args.max_train_rows < len(data.train):
            data = replace(data, train=data.train.sample(args.max_train_rows, args.seed))
    except DatasetError as exc:
        raise BuildError(str(exc)) from exc
    check_data(source.spec, data)
    policy = Policy(
        accuracy_budget_basis_points=args.accuracy_budget_bp,
        p99_latency_target_ms=args.p99_target_ms,
        slo_batch_size=args.slo_batch,
    )
    progress = stderr_progress
    with tempfile.TemporaryDirectory(prefix="recserve-build-") as tmp:
        ctx = BuildContext(source, data, Path(tmp), policy, threads, args.seed, progress, options)
        if args.quick:
            ctx.student_epochs = 3
            ctx.finetune_epochs = 2
        if args.student_shape:
            ctx.shapes = list(args.student_shape)
        variants = build_variants(ctx)
        teacher_auc = measure(ctx, variants, args.hardware, 0.1 if args.quick else 0.3)
        slo = policy.slo_batch_size
        cands = [
            selection.Candidate(
                v.name, v.metrics["aucDropRelPct"], v.point(slo).p99_us, v.size_bytes
            )
            for v in variants
        ]
        front = set(selection.pareto_front(cands))
        for v in variants:
            v.accepted = selection.within_budget(
                v.metrics["aucDropRelPct"], policy.accuracy_budget_basis_points
            )
            v.pareto = v.name in front
        chosen, reason = selection.select(
            cands, policy.accuracy_budget_basis_points, policy.p99_latency_target_ms * 1000
        )
        meta = source.meta.get("metrics", {})
        facts = {
            "name": source.name,
            "arch": getattr(getattr(source.model, "config", None), "arch", source.kind),
            "format": source.kind,
            "dataset": args.eval_data or args.dataset,
            "synthetic": False,
            "teacherAuc": teacher_auc,
        }
        reference = reference_from(source.spec, data.train.sparse, data.train.dense)
        progress(
            f"[store] writing {len(variants)} variants to {args.out} (with the training "
            f"data's bins of {len(reference.features)} input columns, for data drift)"
        )
        for v in variants:
            manifest = manifest_for(v, ctx, facts)
            manifest.data_reference = reference
            v.location = put_variant(args.out, v.path, manifest)
        report: dict[str, Any] = {
            "model": facts,
            "hardware": args.hardware,
            "threads": threads,
            "profileThreads": ctx.profile_threads,
            "heldOutRows": len(data.test),
            "teacher": {
                "auc": teacher_auc,
                "lrAuc": meta.get("lrAuc"),
                "trainedAuc": meta.get("auc"),
            },
            "policy": {
                "accuracyBudgetBasisPoints": policy.accuracy_budget_basis_points,
                "p99LatencyTargetMs": policy.p99_latency_target_ms,
                "sloBatchSize": slo,
                **options.summary(),
            },
            "variants": [variant_row(v, slo) for v in variants],
            "paretoFront": [v.name for v in variants if v.pareto],
            "selected": chosen,
            "selectionReason": reason,
            "studentSearch": [s.summary() for s in ctx.students],
            "skipped": ctx.skipped,
            "seconds": round(time.monotonic() - start, 1),
        }
        print(table(variants, slo, chosen))
        if meta.get("lrAuc") is not None:
            print(
                f"teacher test AUC {teacher_auc:.4f} vs logistic regression "
                f"{meta['lrAuc']:.4f} (same features, per-user time split)"
            )
        for s in ctx.students:
            print(
                f"student search: {s.tag:<22} depth {len(s.mlp_layers)} valid AUC "
                f"{s.valid_auc:.4f} {s.latency_us:7.0f} µs @b{slo}"
                + ("  <- chosen" if s.chosen else "")
            )
        for item in ctx.skipped:
            print(f"skipped: {item['name']}: {item['reason']}")
        print(f"Pareto front: {', '.join(report['paretoFront'])}")
        print(f"selected: {chosen} ({reason})")
        if json_path:
            write_json(json_path, report)
            print(f"report: {json_path}")
        if plot_path:
            plot(plot_path, variants, slo, policy.accuracy_budget_basis_points)
            print(f"plot: {plot_path}")
    return report


def load_eval_data(args: argparse.Namespace, spec: Any, holdout_bp: int) -> Any:
    """The eval data the flags of :func:`add_eval_arguments` name (``--eval-data`` in the
    layout of ``spec``, a FeatureSpec, else the named ``--dataset``); raises DatasetError."""
    from recserve_runtime.data import load_custom, load_dataset

    if not args.eval_data:
        return load_dataset(args.dataset, holdout_bp=holdout_bp)
    return load_custom(
        args.eval_data,
        spec,
        fmt=args.eval_format,
        test_uri=args.eval_test_data,
        time_column=args.time_column,
        user_column=args.user_column,
        holdout_bp=holdout_bp,
        seed=args.seed,
    )


def check_eval_args(args: argparse.Namespace) -> None:
    """The custom eval data flags go together (with --eval-data, and a declared split)."""
    from recserve_runtime.builder.errors import BuildError

    custom_only = {
        "--eval-format": args.eval_format,
        "--eval-test-data": args.eval_test_data,
        "--time-column": args.time_column,
        "--user-column": args.user_column,
    }
    if not args.eval_data:
        given = [flag for flag, value in custom_only.items() if value]
        if given:
            raise BuildError(f"{', '.join(given)} describe --eval-data, which is not given")
        return
    if args.user_column and not args.time_column:
        raise BuildError("--user-column splits each user's rows by time: give --time-column too")


def parse_shape(text: str) -> tuple[int, list[int]]:
    """'16:256x128' -> (16, [256, 128])."""
    try:
        dim, widths = text.split(":")
        return int(dim), [int(w) for w in widths.split("x")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"student shape {text!r} is not DIM:W1xW2...") from exc


def _cmd_optimize(args: argparse.Namespace) -> int:
    from recserve_runtime.builder.errors import BuildError

    try:
        run(args)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The held-out data flags (RecModel spec.evalDataset), shared with `recserve
    recalibrate`, which measures accuracy on the same rows as the build."""
    p.add_argument(
        "--dataset",
        default="movielens-100k",
        help="named evaluation/training data (movielens-100k); see --eval-data for your own",
    )
    p.add_argument(
        "--eval-data",
        default=None,
        metavar="URI",
        help="your own data instead of --dataset: a Parquet file or folder, a CSV file or a "
        "Criteo TSV file (path or fsspec URI), columns mapped by --feature-spec",
    )
    p.add_argument(
        "--eval-format",
        default=None,
        choices=["parquet", "csv", "criteo"],
        help="format of --eval-data (default: from the file extension)",
    )
    p.add_argument(
        "--eval-test-data",
        default=None,
        metavar="URI",
        help="a ready-made test file (same format): --eval-data is then the training part",
    )
    p.add_argument(
        "--time-column",
        default=None,
        help="split --eval-data by time: the latest --holdout-bp of rows are held out",
    )
    p.add_argument(
        "--user-column",
        default=None,
        help="with --time-column: hold out each user's latest --holdout-bp of rows",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `recserve optimize`."""
    p.add_argument(
        "--model",
        default="demo",
        help="'demo' (MovieLens DLRM teacher, trained if missing), a checkpoint "
        "from `recserve train`, or a TorchScript or ONNX file (needs --feature-spec): a path "
        "or an fsspec URI (s3://, gs://, http(s)://)",
    )
    p.add_argument(
        "--model-format",
        default="auto",
        choices=["auto", "demo", "checkpoint", "torchscript", "onnx"],
        help="what --model is; the file must be that (default: tell by its content)",
    )
    p.add_argument(
        "--model-sha256",
        default=None,
        metavar="HEX",
        help="the model file's expected sha256, checked before anything runs",
    )
    p.add_argument(
        "--feature-spec",
        default=None,
        metavar="URI",
        help="FeatureSpec YAML/JSON file (path or fsspec URI): the model's input names and "
        "columns, and which data columns feed them (docs/bring-your-own-model.md)",
    )
    add_eval_arguments(p)
    p.add_argument("--hardware", default="cpu", choices=["cpu", "gpu", "fpga"])
    p.add_argument(
        "--out",
        default=str(Path.home() / ".cache" / "recserve" / "variants"),
        help="variant store: folder or fsspec URI",
    )
    p.add_argument("--json", default=None, help="write the JSON report here")
    p.add_argument("--plot", default=None, help="Pareto plot PNG (default: --json with .png)")
    p.add_argument(
        "--accuracy-budget-bp",
        type=int,
        default=100,
        help="largest relative AUC drop accepted, basis points (100 = 1%%)",
    )
    p.add_argument("--p99-target-ms", type=float, default=float(P99_TARGET_MS_DEFAULT))
    p.add_argument("--slo-batch", type=int, default=256, choices=[1, 8, 64, 256, 1024])
    p.add_argument(
        "--precisions",
        default="fp32,fp16,int8,int4",
        help="comma list of precisions to build, from fp32, fp16, int8, int4 (default: all). "
        "fp32 is the reference every variant is measured against and is always built; "
        "fp16 applies to the original model; int8 is dynamic INT8 of every model; int4 "
        "stores embedding tables row-wise in INT4 (MLP in INT8 too when int8 is listed)",
    )
    p.add_argument(
        "--static-quantization",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also build INT8 static QDQ with activations calibrated on training rows "
        "(needs int8 in --precisions; default: on)",
    )
    p.add_argument(
        "--prune-bp",
        default=None,
        metavar="BP[,BP...]",
        help="structured pruning ratios, basis points of MLP neurons removed (5000 = 50%%; "
        "each 100..9500); every ratio gives its own pruned variants of the original and "
        "of the student (default: 5000)",
    )
    p.add_argument(
        "--no-pruning", action="store_true", help="build no pruned variant (not with --prune-bp)"
    )
    p.add_argument(
        "--max-students",
        type=int,
        default=None,
        help="student shapes the distillation search tries, 1..16 (default: 6; 3 with "
        "--quick; an explicit value wins over --quick and cuts --student-shape lists)",
    )
    p.add_argument(
        "--distillation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search and build distilled students (--no-distillation: none; default: on)",
    )
    p.add_argument(
        "--holdout-bp",
        type=int,
        default=2000,
        help="share of each user's latest interactions held out for evaluation, basis "
        "points, 100..5000 (default 2000 = 20%%); the demo teacher is trained without them",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="default: CPUs available")
    p.add_argument(
        "--quick",
        action="store_true",
        help="shorter run: 3 student shapes unless --max-students is given, shorter "
        "fine-tuning and profiles",
    )
    p.add_argument(
        "--student-shape",
        action="append",
        default=None,
        type=parse_shape,
        help="student shape to try, DIM:W1xW2 (repeatable; default: the built-in search)",
    )
    p.add_argument(
        "--max-train-rows",
        type=int,
        default=None,
        help="train students / fine-tune on at most this many rows (faster, less accurate)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve optimize`."""
    p = sub.add_parser(
        "optimize",
        help="compress a model into measured, accuracy-gated variants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=_cmd_optimize)
