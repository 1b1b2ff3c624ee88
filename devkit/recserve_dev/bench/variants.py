"""`recserve bench variants`: compression ratios against FP32 PyTorch eager.

Speed and size come from a SYNTHETIC production-scale DLRM (26 sparse fields, 10^5 rows
per table, dim 64, bottom MLP 512-256-64, top MLP 1024-512-256; random weights, so its
accuracy means nothing). Accuracy comes from MovieLens-100k (the real `recserve
optimize` pipeline, per-user time split), over ``--seeds`` seeds (mean ± half-range).
The student and pruning recipe chosen on MovieLens is scaled to the synthetic model
(embedding dim and MLP widths by the same ratios). Timings: onnxruntime and torch with
the same thread count, same batch size, in one process, rounds interleaved. The trained
MovieLens FP32, INT8 and combined variants (seed 0's build) are timed in the same rounds,
so the speedups can also be read on a real trained model. Each headline speed ratio is
the median over rounds of the ratio paired within a round (both timed back to back), with
its [min, max] under ``spread``; the table also prints each point's best round. The last
line is one JSON object with the headline ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SYNTH_DIM = 64
SYNTH_BOTTOM = [512, 256]
SYNTH_TOP = [1024, 512, 256]
PAPER_CPU = {  # source paper, Table 1, CPU column: size reduction %, speedup, AUC drop %
    "int8": (75, 2.8, 0.3),
    "pruned-50": (50, 2.1, 0.5),
    "distilled": (80, 3.6, 1.1),
    "combined": (90, 5.2, 1.4),
}
COMBINED = "-pruned50-int8"
BIG = 256  # the headline batch; both batch sets below hold it


def accuracy_part(seeds: int, quick: bool, threads: int, keep: Path) -> dict[str, Any]:
    """Run `recserve optimize --model demo` per seed; collect drops and the student.
    Seed 0's variants stay in ``keep`` (the speed part times them)."""
    from recserve_runtime.optimize import add_arguments, run

    per_seed: list[dict[str, Any]] = []
    shape: list[str] = []  # later seeds reuse the student shape seed 0's search chose
    for seed in range(seeds):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        with tempfile.TemporaryDirectory() as scratch:
            out = str(keep) if seed == 0 else scratch
            argv = ["--out", out, "--seed", str(seed), "--threads", str(threads), *shape]
            report = run(parser.parse_args(argv + (["--quick"] if quick else [])))
        rows = {v["name"]: v for v in report["variants"]}
        combined = next(n for n in rows if n.startswith("student-") and n.endswith(COMBINED))
        student = next(s for s in report["studentSearch"] if s["chosen"])
        widths = "x".join(map(str, student["mlpLayers"]))
        shape = ["--student-shape", f"{student['embeddingDim']}:{widths}"]
        per_seed.append(
            {
                "seed": seed,
                "teacherAuc": report["teacher"]["auc"],
                "lrAuc": report["teacher"]["lrAuc"],
                "rows": rows,
                "combined": combined,
                "student": student,
            }
        )
    return {"seeds": per_seed}


def _drops(acc: dict[str, Any], pick: Any) -> list[float]:
    return [float(s["rows"][pick(s)]["metrics"]["aucDropRelPct"]) for s in acc["seeds"]]


def _mean_spread(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (max(xs) - min(xs)) / 2


def synthetic_models(student: dict[str, Any], ml_dim: int, ml_top: list[int]) -> dict[str, Any]:
    """The synthetic teacher, pruned teacher, student and pruned student (torch)."""
    import copy

    import torch

    from recserve_runtime.builder.prune import prune_mlps
    from recserve_runtime.data.synthetic import synthetic_spec
    from recserve_runtime.zoo.models import ModelConfig, build_model

    spec = synthetic_spec()
    cfg = ModelConfig(
        "dlrm",
        [f.vocab_size for f in spec.sparse],
        13,
        SYNTH_DIM,
        list(SYNTH_BOTTOM),
        list(SYNTH_TOP),
    )
    torch.manual_seed(0)
    teacher = build_model(cfg).eval()
    dim_ratio = student["embeddingDim"] / ml_dim
    width_ratio = SYNTH_TOP[0] / ml_top[0]
    s_cfg = copy.deepcopy(cfg)
    s_cfg.embedding_dim = max(2, int(SYNTH_DIM * dim_ratio))
    s_cfg.top_mlp = [max(8, int(w * width_ratio)) for w in student["mlpLayers"]]
    s_cfg.bottom_mlp = [min(w, 2 * s_cfg.embedding_dim) for w in cfg.bottom_mlp]
    stud = build_model(s_cfg).eval()
    pruned = prune_mlps(copy.deepcopy(teacher), 0.5).eval()
    combined = prune_mlps(copy.deepcopy(stud), 0.5).eval()
    return {
        "spec": spec,
        "fp32": teacher,
        "pruned-50": pruned,
        "distilled": stud,
        "combined": combined,
        "studentConfig": s_cfg,
    }


def movielens_variants(acc: dict[str, Any]) -> dict[str, tuple[Path, Any]]:
    """Seed 0's trained FP32, INT8 and combined variants: (ONNX file, feature spec)."""
    from recserve_runtime.artifacts import load_manifest

    seed0 = acc["seeds"][0]
    names = {"ml-fp32": "fp32", "ml-int8": "int8-dynamic", "ml-combined": seed0["combined"]}
    out: dict[str, tuple[Path, Any]] = {}
    for key, name in names.items():
        folder = Path(seed0["rows"][name]["location"])
        manifest = load_manifest(folder)
        out[key] = (folder / manifest.artifact.file, manifest.feature_spec)
    return out


def paired(lat: dict[str, dict[int, list[float]]], num: str, den: str, b: int) -> list[float]:
    """Per-round ratios lat[num]/lat[den] at batch ``b``, sorted (each pair timed back to
    back in one round, so a slow moment of the machine slows both)."""
    return sorted(n / d for n, d in zip(lat[num][b], lat[den][b], strict=True))


def speed_part(
    models: dict[str, Any],
    threads: int,
    batches: tuple[int, ...],
    rounds: int,
    seconds: float,
    work: Path,
    trained: dict[str, tuple[Path, Any]],
) -> dict[str, Any]:
    """Sizes and per-batch median latencies, torch eager vs onnxruntime variants (the
    synthetic ones, and the ``trained`` MovieLens files with their own inputs)."""
    import torch

    from recserve_runtime.builder.export import export_onnx, optimize_portable
    from recserve_runtime.builder.quantize import int8_dynamic
    from recserve_runtime.profiler import make_session, random_feed, time_calls

    spec = models["spec"]
    files: dict[str, Path] = {}
    for key in ("fp32", "pruned-50", "distilled", "combined"):
        print(f"[bench] exporting synthetic {key}", file=sys.stderr, flush=True)
        raw = export_onnx(models[key], spec, work / f"{key}-raw.onnx")
        files[key] = optimize_portable(raw, work / f"{key}.onnx")
        raw.unlink()
    print("[bench] quantizing synthetic int8 / combined", file=sys.stderr, flush=True)
    files["int8"] = int8_dynamic(files["fp32"], work / "int8.onnx")
    files["combined"] = int8_dynamic(files["combined"], work / "combined-int8.onnx")
    torch_bytes = sum(p.numel() * 4 for p in models["fp32"].parameters())
    sessions = {k: make_session(p, threads) for k, p in files.items()}
    trained_sessions = {k: (make_session(p, threads), fs) for k, (p, fs) in trained.items()}
    lat: dict[str, dict[int, list[float]]] = {
        k: {b: [] for b in batches} for k in ["torch", *files, *trained]
    }
    for r in range(rounds):
        print(f"[bench] timing round {r + 1}/{rounds}", file=sys.stderr, flush=True)
        for b in batches:
            feed = random_feed(spec, b, seed=r)
            sp, de = torch.from_numpy(feed["sparse_ids"]), torch.from_numpy(feed["dense"])
            time.sleep(0.05)  # let onnxruntime's spinning workers go idle first
            with torch.no_grad():
                pt = time_calls(lambda: models["fp32"](sp, de), b, seconds)  # noqa: B023
            lat["torch"][b].append(pt.p50_us)
            for k, sess in sessions.items():
                time.sleep(0.05)
                pt = time_calls(lambda: sess.run(None, feed), b, seconds)  # noqa: B023
                lat[k][b].append(pt.p50_us)
            for k, (sess, fs) in trained_sessions.items():
                ml_feed = random_feed(fs, b, seed=r)
                time.sleep(0.05)
                pt = time_calls(lambda: sess.run(None, ml_feed), b, seconds)  # noqa: B023
                lat[k][b].append(pt.p50_us)
    # each entry is a median (p50) of many calls; the table shows each point's best
    # round, the headline ratios are medians of ratios paired within a round
    best = {k: {b: min(v) for b, v in d.items()} for k, d in lat.items()}
    sizes = {k: p.stat().st_size for k, p in files.items()}
    return {"torchBytes": torch_bytes, "sizes": sizes, "p50": best, "lat": lat}


def _cmd_bench(args: argparse.Namespace) -> int:
    from recserve_runtime.builder.errors import BuildError
    from recserve_runtime.train import demo_config, set_threads

    start = time.monotonic()
    threads = set_threads(args.threads)
    batches = (1, BIG) if args.quick else (1, 64, BIG, 1024)
    with tempfile.TemporaryDirectory(prefix="recserve-bench-") as tmp:
        try:
            acc = accuracy_part(args.seeds, args.quick, threads, Path(tmp) / "movielens")
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ml = demo_config("dlrm", [1], 1)
        student = acc["seeds"][0]["student"]
        models = synthetic_models(student, ml.embedding_dim, ml.top_mlp)
        trained = movielens_variants(acc)
        sp = speed_part(models, threads, batches, args.rounds, args.seconds, Path(tmp), trained)
    lat = sp["lat"]
    base = sp["torchBytes"]
    from recserve_runtime.builder.prune import count_params

    mlp_before = count_params(models["fp32"], mlp_only=True)
    mlp_after = count_params(models["pruned-50"], mlp_only=True)
    sc = models["studentConfig"]
    print(
        f"\nSYNTHETIC production-scale DLRM (26 x 1e5 x {SYNTH_DIM}, MLP "
        f"{'-'.join(map(str, SYNTH_TOP))}; random weights) vs FP32 PyTorch eager, "
        f"{threads} threads; student scaled from MovieLens: dim {sc.embedding_dim}, "
        f"MLP {sc.top_mlp}"
    )
    ort = sp["p50"]["fp32"]
    head = f"{'variant':<12} {'size MB':>9} {'-size%':>7} {'x b256 vs ORT fp32':>19}" + "".join(
        f" {f'p50 b{b} µs':>12} {f'x b{b}':>7}" for b in batches
    )
    print(head + "   (each point: its best round)")
    reduction: dict[str, float] = {}  # size reduction, %
    for k in ["torch", "fp32", "int8", "pruned-50", "distilled", "combined"]:
        size = base if k == "torch" else sp["sizes"][k]
        red = reduction[k] = 100 * (1 - size / base)
        speed = {b: sp["p50"]["torch"][b] / sp["p50"][k][b] for b in batches}
        vs_ort = ort[BIG] / sp["p50"][k][BIG]
        print(
            f"{k:<12} {size / 1e6:>9.1f} {red:>7.1f} {vs_ort:>19.2f}"
            + "".join(f" {sp['p50'][k][b]:>12.0f} {speed[b]:>7.2f}" for b in batches)
        )
    print(
        f"pruned-50: MLP parameters {mlp_before:,} -> {mlp_after:,} "
        f"({100 * (1 - mlp_after / mlp_before):.1f}% fewer); the embedding tables, "
        "99% of the bytes, are not pruned"
    )
    int8_d = _mean_spread(_drops(acc, lambda s: "int8-dynamic"))
    comb_d = _mean_spread(_drops(acc, lambda s: s["combined"]))
    prune_d = _mean_spread(_drops(acc, lambda s: "pruned-50"))
    dist_d = _mean_spread(
        _drops(acc, lambda s: next(n for n in s["rows"] if n.startswith("student-")))
    )
    teach = _mean_spread([s["teacherAuc"] for s in acc["seeds"]])
    lr = _mean_spread([s["lrAuc"] for s in acc["seeds"] if s["lrAuc"] is not None] or [0.0])
    print(
        f"\nMovieLens-100k accuracy over {args.seeds} seed(s) (mean ± half-range): teacher "
        f"AUC {teach[0]:.4f} ± {teach[1]:.4f}, logistic regression {lr[0]:.4f} ± {lr[1]:.4f}"
    )
    drops = {"int8": int8_d, "pruned-50": prune_d, "distilled": dist_d, "combined": comb_d}
    print(
        f"\n{'vs paper (CPU)':<12} {'size red. ours/paper':>22} {'speedup b256 ours/paper':>25}"
        f" {'AUC drop % ours/paper':>24}"
    )
    for k, (p_red, p_x, p_drop) in PAPER_CPU.items():
        d = drops[k]
        x = statistics.median(paired(lat, "torch", k, BIG))
        print(
            f"{k:<12} {reduction[k]:>12.1f}% / {p_red:>3}% {x:>14.2f}x / "
            f"{p_x:.1f}x {d[0]:>9.2f}±{d[1]:.2f} / {p_drop:.1f}"
        )
    # headline speed ratios: (numerator, denominator, batch); a ratio > 1 is a speedup
    # except for the batch-1 latency ratio (combined / torch: lower is better)
    pairs = {
        "int8_speedup_b256": ("torch", "int8", BIG),
        "combined_speedup_b256": ("torch", "combined", BIG),
        "combined_latency_ratio_b1": ("combined", "torch", 1),
        "int8_speedup_vs_ort_fp32_b256": ("fp32", "int8", BIG),
        "combined_speedup_vs_ort_fp32_b256": ("fp32", "combined", BIG),
        "int8_speedup_vs_ort_fp32_b256_movielens": ("ml-fp32", "ml-int8", BIG),
        "combined_speedup_vs_ort_fp32_b256_movielens": ("ml-fp32", "ml-combined", BIG),
    }
    spread = {key: paired(lat, n, d, b) for key, (n, d, b) in pairs.items()}
    print(
        f"\nheadline ratios: median of {args.rounds} per-round paired ratios [min-max] "
        f"(each timing a median of many calls; MovieLens: seed 0's trained variants, "
        f"{acc['seeds'][0]['combined']} as combined)"
    )
    for key, ratios in spread.items():
        print(f"  {key:<45} {statistics.median(ratios):>6.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]")
    print(f"bench took {time.monotonic() - start:.0f}s")
    line: dict[str, Any] = {
        "int8_size_reduction_pct": round(reduction["int8"], 2),
        "int8_auc_drop_rel_pct": round(int8_d[0], 3),
        "combined_size_reduction_pct": round(reduction["combined"], 2),
        "combined_auc_drop_rel_pct": round(comb_d[0], 3),
        **{key: round(statistics.median(r), 3) for key, r in spread.items()},
        "rounds": args.rounds,
        "spread": {key: [round(r[0], 3), round(r[-1], 3)] for key, r in spread.items()},
    }
    print(json.dumps(line))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve bench variants` (under a `bench` group other benches may share)."""
    from recserve_runtime.cli import bench_group

    group = bench_group(sub)
    p = group.add_parser(
        "variants",
        help="compression ratios vs FP32 PyTorch eager",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=int, default=2, help="MovieLens seeds for accuracy")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--seconds", type=float, default=0.2, help="timed seconds per point")
    p.add_argument("--threads", type=int, default=None, help="default: CPUs available")
    p.add_argument("--quick", action="store_true", help="fewer students and batch sizes")
    p.set_defaults(handler=_cmd_bench)
