"""The variant pipeline behind `recserve optimize`: build, evaluate, profile, gate, store.

Variants (zoo models get all of them; TorchScript models the ONNX-level ones):

=========================== ==================================================
fp32                        exported ONNX, portable graph optimizations
fp16                        float16 weights/activations (for GPUs)
int8-dynamic                int8 weights (Gemm + embedding tables), dynamic activations
int8-static-qdq             int8 QDQ, activations calibrated on training rows
int4-rowwise-emb            INT4 row-wise embedding tables, float MLP
int4-rowwise-emb-int8       INT4 row-wise tables + dynamic INT8 MLP
pruned-<r>                  <r>% of MLP neurons removed, fine-tuned (distilled)
pruned-<r>-int8             the same, dynamic INT8
student-<shape>             distilled student chosen by the hardware-aware search
student-<shape>-int8        the same, dynamic INT8
student-<shape>-pruned<r>-int8          combined: distilled + pruned + INT8
student-<shape>-pruned<r>-int4emb-int8  combined with INT4 row-wise tables
=========================== ==================================================
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recserve_runtime.artifacts import Manifest, Profile, Recipe
from recserve_runtime.builder.errors import BuildError
from recserve_runtime.data.tabular import TabularData

Progress = Callable[[str], None]


@dataclass
class Policy:
    """The parts of an OptimizationPolicy the builder applies."""

    accuracy_budget_basis_points: int = 100
    p99_latency_target_ms: float = 25.0
    slo_batch_size: int = 256
    pruning_ratio_basis_points: int = 5000


@dataclass
class Variant:
    """One built variant and its measurements."""

    name: str
    recipe: Recipe
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    profile: Profile | None = None
    location: str = ""
    accepted: bool = True
    pareto: bool = False

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def point(self, batch: int) -> Any:
        assert self.profile is not None
        return next(p for p in self.profile.points if p.batch_size == batch)


@dataclass
class BuildContext:
    """Everything a build step needs."""

    source: Any  # builder.source.SourceModel
    data: TabularData
    work: Path
    policy: Policy
    threads: int
    seed: int = 0
    progress: Progress | None = None
    students: list[Any] = field(default_factory=list)
    shapes: list[tuple[int, list[int]]] | None = None
    student_epochs: int = 6
    finetune_epochs: int = 4

    skipped: list[dict[str, str]] = field(default_factory=list)

    def say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def skip(self, name: str, reason: str) -> None:
        """Record a variant that could not be built or measured (kept in the report)."""
        self.skipped.append({"name": name, "reason": reason})
        self.say(f"[skip] {name}: {reason}")


def _recipe(
    precision: str = "fp32",
    quant: str = "none",
    prune_bp: int = 0,
    student: dict[str, Any] | None = None,
) -> Recipe:
    return Recipe(
        precision=precision,
        quantization=quant,
        pruning_ratio_basis_points=prune_bp,
        student=student,
    )


def onnx_variants(
    ctx: BuildContext, base: Path, prefix: str, recipe: Recipe, full: bool
) -> list[Variant]:
    """The ONNX-level variants of one float model (all of them when ``full``)."""
    from recserve_runtime.builder.int4 import int4_embeddings
    from recserve_runtime.builder.quantize import int8_dynamic, int8_static_qdq, to_fp16

    w, out = ctx.work, []
    name = prefix.rstrip("-") or "fp32"

    def add(suffix: str, build: Callable[[], Path], **changes: Any) -> bool:
        """Build one variant; a converter failure skips it (with the reason), not the run."""
        full_name = f"{prefix}{suffix}" if prefix else suffix
        ctx.say(f"[build] {full_name}")
        try:
            path = build()
        except Exception as exc:
            ctx.skip(full_name, f"build failed: {str(exc).splitlines()[0][:300]}")
            return False
        out.append(Variant(full_name, recipe.model_copy(update=changes), path))
        return True

    out.append(Variant(name, recipe, base))
    int8_name = "int8-dynamic" if full else "int8"
    add(
        int8_name,
        lambda: int8_dynamic(base, w / f"{prefix}int8.onnx"),
        precision="int8",
        quantization="dynamic",
    )
    if full:
        add("fp16", lambda: to_fp16(base, w / "fp16.onnx"), precision="fp16")
        calib = ctx.data.train.sample(2048, ctx.seed)
        add(
            "int8-static-qdq",
            lambda: int8_static_qdq(base, w / "qdq.onnx", ctx.source.spec, calib),
            precision="int8",
            quantization="static",
        )
    if full or prefix.startswith("student"):
        int4 = w / f"{prefix}int4.onnx"
        if int4_embeddings(base, int4) == 0:
            ctx.skip(f"{prefix}int4", "no float embedding table with an even dim to quantize")
            return out
        if full:
            add("int4-rowwise-emb", lambda: int4, precision="int4", quantization="rowwise")
        add(
            "int4emb-int8" if prefix else "int4-rowwise-emb-int8",
            lambda: int8_dynamic(int4, w / f"{prefix}int4-int8.onnx", ["Gemm", "MatMul"]),
            precision="int4",
            quantization="rowwise",
        )
    return out


def export_float(ctx: BuildContext, model: Any, stem: str) -> Path:
    """Export to ONNX and apply the portable FP32 optimizations."""
    from recserve_runtime.builder.export import export_onnx, optimize_portable

    raw = export_onnx(model, ctx.source.spec, ctx.work / f"{stem}-raw.onnx")
    return optimize_portable(raw, ctx.work / f"{stem}.onnx")


def pruned_variants(ctx: BuildContext, model: Any, logits: Any, prefix: str) -> list[Variant]:
    """Prune ``model``'s MLPs, fine-tune with distillation, export float + INT8."""
    from recserve_runtime.builder.prune import count_params, prune_mlps
    from recserve_runtime.train import FitConfig, fit

    bp = ctx.policy.pruning_ratio_basis_points
    pruned = copy.deepcopy(model)
    before = count_params(pruned, mlp_only=True)
    prune_mlps(pruned, bp / 10_000)
    after = count_params(pruned, mlp_only=True)
    ctx.say(
        f"[prune] {prefix or 'teacher-'}{bp // 100}%: MLP params {before} -> {after}; fine-tuning"
    )
    cfg = FitConfig(
        epochs=ctx.finetune_epochs,
        batch_size=1024,
        lr=5e-4,
        weight_decay=3e-4,
        patience=1,
        seed=ctx.seed,
    )
    fit(
        pruned,
        ctx.data.train,
        ctx.data.valid,
        cfg,
        logits,
        ctx.progress,
        tag=f"finetune {prefix or 'teacher-'}pruned",
    )
    pct = bp // 100
    student = getattr(model, "_student_shape", None)
    recipe = _recipe(prune_bp=bp, student=student)
    stem = f"{prefix}pruned{pct}" if prefix else f"pruned-{pct}"
    base = export_float(ctx, pruned, stem)
    vs = onnx_variants(ctx, base, f"{stem}-", recipe, full=False)
    vs[0].metrics["mlpParams"] = float(after)
    return vs


def zoo_variants(ctx: BuildContext) -> list[Variant]:
    """Pruning, distillation search and the combination (zoo models only)."""
    from recserve_runtime.builder.distill import DEFAULT_SHAPES, search_students
    from recserve_runtime.train import FitConfig, auc_logloss, predict_logits, predict_proba

    teacher = ctx.source.model
    logits = predict_logits(teacher, ctx.data.train)
    out = pruned_variants(ctx, teacher, logits, "")
    t_valid, _ = auc_logloss(ctx.data.valid.label, predict_proba(teacher, ctx.data.valid))
    ctx.say("[distill] hardware-aware student search")
    cfg = FitConfig(
        epochs=ctx.student_epochs,
        batch_size=1024,
        lr=2e-3,
        weight_decay=1e-4,
        patience=2,
        seed=ctx.seed,
    )
    ctx.students = search_students(
        teacher,
        ctx.data,
        t_valid,
        ctx.shapes or DEFAULT_SHAPES,
        cfg,
        ctx.policy.slo_batch_size,
        ctx.threads,
        max_drop_rel_pct=ctx.policy.accuracy_budget_basis_points / 100 / 2,
        progress=ctx.progress,
    )
    best = next(s for s in ctx.students if s.chosen)
    shape = {"embeddingDim": best.embedding_dim, "mlpLayers": best.mlp_layers}
    best.model._student_shape = shape
    prefix = f"student-{best.tag}-"
    base = export_float(ctx, best.model, f"student-{best.tag}")
    out += onnx_variants(ctx, base, prefix, _recipe(student=shape), full=False)
    combined = pruned_variants(ctx, best.model, logits, prefix)
    out += combined[1:]  # the float pruned student is an intermediate, not a variant
    return out


def build_variants(ctx: BuildContext) -> list[Variant]:
    """Every variant of the source model, unmeasured."""
    start = time.monotonic()
    ctx.say("[build] exporting fp32 ONNX")
    base = export_float(ctx, ctx.source.model, "fp32")
    out = onnx_variants(ctx, base, "", _recipe(), full=True)
    if ctx.source.kind == "zoo":
        out += zoo_variants(ctx)
    else:
        ctx.say(
            "[build] TorchScript model: pruning and distillation need a zoo model "
            "(architecture + state dict); building ONNX-level variants only"
        )
    ctx.say(f"[build] {len(out)} variants built in {time.monotonic() - start:.0f}s")
    return out


def measure(ctx: BuildContext, variants: list[Variant], hardware: str, seconds: float) -> float:
    """Evaluate and profile every variant; returns the teacher (fp32) AUC."""
    from recserve_runtime.builder.evaluate import drop_rel_pct, evaluate_onnx
    from recserve_runtime.profiler import profile

    teacher_auc = 0.0
    base_size = variants[0].size_bytes
    for v in list(variants):
        ctx.say(f"[measure] {v.name}: accuracy on {len(ctx.data.test)} held-out rows, profile")
        try:
            v.metrics.update(evaluate_onnx(v.path, ctx.source.spec, ctx.data.test, ctx.threads))
        except Exception as exc:
            if v.name == "fp32":
                raise BuildError(f"the exported fp32 model cannot be run: {exc}") from exc
            ctx.skip(v.name, f"onnxruntime cannot run it: {str(exc).splitlines()[0][:300]}")
            variants.remove(v)
            continue
        if v.name == "fp32":
            teacher_auc = v.metrics["auc"]
        v.metrics["aucDropRelPct"] = drop_rel_pct(teacher_auc, v.metrics["auc"])
        v.metrics["sizeReductionPct"] = 100.0 * (1 - v.size_bytes / base_size)
        v.profile = profile(v.path, ctx.source.spec, hardware, threads=ctx.threads, seconds=seconds)
    return teacher_auc


def manifest_for(v: Variant, ctx: BuildContext, model_facts: dict[str, Any]) -> Manifest:
    """The manifest of a measured variant (artifact filled in by the store)."""
    from recserve_runtime.artifacts import ArtifactFile
    from recserve_runtime.builder.export import io_specs

    inputs, outputs = io_specs(ctx.source.spec)
    metrics = dict(v.metrics)
    metrics["accepted"] = 1.0 if v.accepted else 0.0
    metrics["pareto"] = 1.0 if v.pareto else 0.0
    return Manifest(
        name=v.name,
        model=model_facts,
        recipe=v.recipe,
        artifact=ArtifactFile(sha256="0" * 64, size_bytes=0),
        inputs=inputs,
        outputs=outputs,
        feature_spec=ctx.source.spec,
        metrics=metrics,
        profile=v.profile,
    )
