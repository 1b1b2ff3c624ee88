"""The variant pipeline behind `recserve optimize`: build, evaluate, profile, gate, store.

What is built is decided by ``builder.plan.plan_variants`` from the build options
(precisions, static quantization, pruning ratios, distillation); this module executes
that plan. The full plan (zoo models get all of it; TorchScript and ONNX models the
ONNX-level variants of the original):

=========================== ==================================================
fp32                        exported ONNX, portable graph optimizations (always)
fp16                        float16 weights/activations (for GPUs)
int8-dynamic                int8 weights (Gemm + embedding tables), dynamic activations
int8-static-qdq             int8 QDQ, activations calibrated on training rows
int4-rowwise-emb            INT4 row-wise embedding tables, float MLP
int4-rowwise-emb-int8       INT4 row-wise tables + dynamic INT8 MLP
pruned-<r>                  <r>% of MLP neurons removed, fine-tuned (distilled); one per ratio
pruned-<r>-int8             the same, dynamic INT8
student-<shape>             distilled student chosen by the hardware-aware search
student-<shape>-int8        the same, dynamic INT8
student-<shape>-int4emb-int8            the same with INT4 row-wise tables
student-<shape>-pruned<r>-int8          combined: distilled + pruned + INT8 (per ratio)
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

from recserve_runtime.artifacts import P99_TARGET_MS_DEFAULT, Manifest, Profile, Recipe
from recserve_runtime.builder.errors import BuildError
from recserve_runtime.builder.plan import (
    FLOAT,
    FP16,
    INT4,
    INT4_INT8,
    INT8,
    INT8_STATIC,
    PRUNED,
    STUDENT,
    STUDENT_PRUNED,
    TEACHER,
    Base,
    BuildOptions,
    Planned,
    plan_variants,
    ratio_tag,
    student_shapes,
    student_tag,
)
from recserve_runtime.data.tabular import TabularData
from recserve_runtime.threads import SERVER_INTRA_OP_THREADS

Progress = Callable[[str], None]


@dataclass
class Policy:
    """The objectives of an OptimizationPolicy the builder applies (gate and selection)."""

    accuracy_budget_basis_points: int = 100
    p99_latency_target_ms: float = P99_TARGET_MS_DEFAULT
    slo_batch_size: int = 256


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
    options: BuildOptions = field(default_factory=BuildOptions)
    students: list[Any] = field(default_factory=list)
    shapes: list[tuple[int, list[int]]] | None = None  # explicit --student-shape list
    student_epochs: int = 6
    finetune_epochs: int = 4
    # onnxruntime threads for latency measurements: what a server replica runs with
    profile_threads: int = SERVER_INTRA_OP_THREADS

    skipped: list[dict[str, str]] = field(default_factory=list)

    def say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def skip(self, name: str, reason: str) -> None:
        """Record a variant that could not be built or measured (kept in the report)."""
        self.skipped.append({"name": name, "reason": reason})
        self.say(f"[skip] {name}: {reason}")


def export_float(ctx: BuildContext, model: Any, stem: str) -> Path:
    """Export to ONNX (an ONNX source: bring it to the output contract) and apply the
    portable FP32 optimizations."""
    from recserve_runtime.builder.export import export_onnx, normalize_onnx, optimize_portable

    raw = ctx.work / f"{stem}-raw.onnx"
    if ctx.source.kind == "onnx":
        normalize_onnx(model, raw)
    else:
        export_onnx(model, ctx.source.spec, raw, ctx.source.inputs)
    return optimize_portable(raw, ctx.work / f"{stem}.onnx")


def prune_and_finetune(
    ctx: BuildContext, model: Any, logits: Any, bp: int, label: str
) -> tuple[Any, int]:
    """A copy of ``model`` with ``bp`` of its MLP neurons removed, fine-tuned with
    distillation from the teacher's ``logits``; returns (model, MLP params left)."""
    from recserve_runtime.builder.prune import count_params, prune_mlps
    from recserve_runtime.train import FitConfig, fit

    pruned = copy.deepcopy(model)
    before = count_params(pruned, mlp_only=True)
    prune_mlps(pruned, bp / 10_000)
    after = count_params(pruned, mlp_only=True)
    ctx.say(f"[prune] {label} {bp / 100:g}%: MLP params {before} -> {after}; fine-tuning")
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
        tag=f"finetune {label} pruned",
    )
    return pruned, after


def search(ctx: BuildContext) -> Any:
    """The hardware-aware student search (zoo models); the chosen student or None."""
    from recserve_runtime.builder.distill import search_students
    from recserve_runtime.train import FitConfig, auc_logloss, predict_proba

    shapes = student_shapes(ctx.options, ctx.shapes)
    if ctx.source.kind != "zoo" or not shapes:
        return None
    teacher = ctx.source.model
    t_valid, _ = auc_logloss(ctx.data.valid.label, predict_proba(teacher, ctx.data.valid))
    ctx.say(f"[distill] hardware-aware student search over {len(shapes)} shapes")
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
        shapes,
        cfg,
        ctx.policy.slo_batch_size,
        ctx.profile_threads,
        max_drop_rel_pct=ctx.policy.accuracy_budget_basis_points / 100 / 2,
        progress=ctx.progress,
    )
    return next(s for s in ctx.students if s.chosen)


class _Bases:
    """Float ONNX exports (and INT4-table versions) of the plan's base models, each
    made once, on first use."""

    def __init__(self, ctx: BuildContext, student: Any) -> None:
        self.ctx, self.student = ctx, student
        self.paths: dict[Base, Path] = {}
        self.int4: dict[Base, Path | None] = {}
        self.mlp_params: dict[Base, int] = {}
        self._logits: Any = None

    def stem(self, base: Base) -> str:
        tag = (
            student_tag(self.student.embedding_dim, self.student.mlp_layers) if self.student else ""
        )
        return {
            TEACHER: "fp32",
            PRUNED: f"pruned-{ratio_tag(base.prune_bp)}",
            STUDENT: f"student-{tag}",
            STUDENT_PRUNED: f"student-{tag}-pruned{ratio_tag(base.prune_bp)}",
        }[base.kind]

    def logits(self) -> Any:
        from recserve_runtime.train import predict_logits

        if self._logits is None:
            self._logits = predict_logits(self.ctx.source.model, self.ctx.data.train)
        return self._logits

    def model(self, base: Base) -> Any:
        teacher = self.ctx.source.model
        if base.kind == TEACHER:
            return teacher
        if base.kind == STUDENT:
            return self.student.model
        parent, label = (
            (teacher, "teacher") if base.kind == PRUNED else (self.student.model, "student")
        )
        pruned, params = prune_and_finetune(self.ctx, parent, self.logits(), base.prune_bp, label)
        self.mlp_params[base] = params
        return pruned

    def float_path(self, base: Base) -> Path:
        if base not in self.paths:
            if base.kind == TEACHER:
                self.ctx.say("[build] exporting fp32 ONNX")
            self.paths[base] = export_float(self.ctx, self.model(base), self.stem(base))
        return self.paths[base]

    def int4_path(self, base: Base) -> Path | None:
        """The base with INT4 row-wise tables; None when no table can be quantized."""
        from recserve_runtime.builder.int4 import int4_embeddings

        if base not in self.int4:
            path = self.ctx.work / f"{self.stem(base)}-int4tables.onnx"
            self.int4[base] = path if int4_embeddings(self.float_path(base), path) else None
        return self.int4[base]


def _convert(ctx: BuildContext, bases: _Bases, item: Planned) -> Path | None:
    """The ONNX file of one planned variant (None: skipped, reason recorded)."""
    from recserve_runtime.builder.quantize import int8_dynamic, int8_static_qdq, to_fp16

    base = bases.float_path(item.base)
    dst = ctx.work / f"{item.name}.onnx"
    if item.step == FLOAT:
        return base
    if item.step == FP16:
        return to_fp16(base, dst)
    if item.step == INT8:
        return int8_dynamic(base, dst)
    if item.step == INT8_STATIC:
        calib = ctx.data.train.sample(2048, ctx.seed)
        return int8_static_qdq(base, dst, ctx.source.spec, calib)
    if item.step in (INT4, INT4_INT8):
        int4 = bases.int4_path(item.base)
        if int4 is None:
            ctx.skip(item.name, "no float embedding table with an even dim to quantize")
            return None
        return int4 if item.step == INT4 else int8_dynamic(int4, dst, ["Gemm", "MatMul"])
    raise ValueError(f"unknown build step {item.step!r}")


def build_variants(ctx: BuildContext) -> list[Variant]:
    """Every variant the build options ask for (``plan_variants``), unmeasured."""
    start = time.monotonic()
    zoo = ctx.source.kind == "zoo"
    opts = ctx.options
    if not zoo and (opts.pruning_ratios_bp or student_shapes(opts, ctx.shapes)):
        ctx.say(
            f"[build] {ctx.source.kind} model: pruning and distillation need a recserve "
            "checkpoint (`recserve train`); building ONNX-level variants only"
        )
    best = search(ctx) if zoo else None
    shape = (best.embedding_dim, best.mlp_layers) if best is not None else None
    plan = plan_variants(opts, zoo, shape)
    ctx.say(f"[build] plan: {len(plan)} variants: {', '.join(p.name for p in plan)}")
    bases = _Bases(ctx, best)
    out: list[Variant] = []
    for item in plan:
        if item.step != FLOAT:
            ctx.say(f"[build] {item.name}")
        bases.float_path(item.base)  # base failures (export, fine-tuning) end the build
        try:
            path = _convert(ctx, bases, item)
        except Exception as exc:  # a converter failure skips the variant, not the run
            ctx.skip(item.name, f"build failed: {str(exc).splitlines()[0][:300]}")
            continue
        if path is None:
            continue
        v = Variant(item.name, item.recipe, path)
        if item.base in bases.mlp_params:
            v.metrics["mlpParams"] = float(bases.mlp_params[item.base])
        out.append(v)
    ctx.say(f"[build] {len(out)} variants built in {time.monotonic() - start:.0f}s")
    return out


def measure(ctx: BuildContext, variants: list[Variant], hardware: str, seconds: float) -> float:
    """Evaluate and profile every variant; returns the teacher (fp32) AUC.

    Latency is measured with ``ctx.profile_threads`` onnxruntime threads, what one server
    replica uses, so that the gate and the selection see what a replica delivers."""
    from recserve_runtime.builder.evaluate import NotProbabilities, drop_rel_pct, evaluate_onnx
    from recserve_runtime.profiler import profile

    teacher_auc = 0.0
    base_size = variants[0].size_bytes
    for v in list(variants):
        ctx.say(f"[measure] {v.name}: accuracy on {len(ctx.data.test)} held-out rows, profile")
        try:
            v.metrics.update(
                evaluate_onnx(v.path, ctx.source.spec, ctx.data.test, ctx.threads, v.name == "fp32")
            )
        except NotProbabilities as exc:
            raise BuildError(str(exc)) from exc
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
        v.profile = profile(
            v.path, ctx.source.spec, hardware, threads=ctx.profile_threads, seconds=seconds
        )
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
