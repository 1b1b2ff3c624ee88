"""Which variants a build makes: pure functions from the build options to the recipes.

``plan_variants`` is the one place that decides what `recserve optimize` builds; the
pipeline executes its list in order, so the options (OptimizationPolicy
``spec.compression`` and RecModel ``spec.evalDataset``, passed as command-line flags)
reach the build exactly as planned here. No torch, no I/O: tests call it directly.

What each option controls:

- ``precisions`` (fp32, fp16, int8, int4): the precision variants of every model built.
  fp32 is the reference every other variant is measured against: it is always built,
  listed or not. fp16 applies to the original model; int8 is dynamic INT8 (weights in
  int8, activations quantized per call) of every model; int4 stores the embedding tables
  row-wise in INT4 (with the MLP in dynamic INT8 too when int8 is listed).
- ``static_quantization``: also INT8 static QDQ, activations calibrated on training
  rows (original model; only when int8 is among the precisions).
- ``pruning_ratios_bp``: each ratio gives its own pruned (and fine-tuned) model of the
  original and of the chosen student, each in the precisions above; empty: no pruning.
- ``distillation`` / ``max_students``: the student search and the student variants;
  how many shapes the search tries (``student_shapes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recserve_runtime.artifacts import Recipe
from recserve_runtime.builder.errors import BuildError

PRECISIONS = ("fp32", "fp16", "int8", "int4")
DEFAULT_PRUNING_BP = 5000
PRUNING_BP_RANGE = (100, 9500)
HOLDOUT_BP_RANGE = (100, 5000)
DEFAULT_HOLDOUT_BP = 2000

# Student shapes, (embedding dim, top MLP widths), in the order the search tries them:
# wide+shallow and narrow+deep at similar cost first. The default search tries the
# first DEFAULT_STUDENTS, --quick the first QUICK_STUDENTS; --max-students N the first N.
STUDENT_SHAPES: list[tuple[int, list[int]]] = [
    (8, [64]),
    (16, [256]),
    (16, [64, 64, 64]),
    (16, [128, 64]),
    (16, [512]),
    (16, [128, 128, 128, 128]),
    (8, [128]),
    (8, [64, 32]),
    (8, [32, 32, 32]),
    (8, [256]),
    (12, [128]),
    (12, [64, 64]),
    (16, [256, 128]),
    (16, [32]),
    (4, [64]),
    (4, [128]),
]
DEFAULT_STUDENTS = 6
QUICK_STUDENTS = 3
MAX_STUDENTS = len(STUDENT_SHAPES)

# How a variant is made from its base model's float ONNX export.
FLOAT = "float"  # the export itself
FP16 = "fp16"
INT8 = "int8"  # dynamic INT8
INT8_STATIC = "int8-static"  # static QDQ, calibrated
INT4 = "int4"  # INT4 row-wise embedding tables, float MLP
INT4_INT8 = "int4-int8"  # INT4 row-wise tables + dynamic INT8 MLP

# The models variants are made from.
TEACHER = "teacher"
PRUNED = "pruned"
STUDENT = "student"
STUDENT_PRUNED = "student-pruned"


@dataclass(frozen=True)
class BuildOptions:
    """The compression options of one build (validated by ``build_options``)."""

    precisions: frozenset[str] = frozenset(PRECISIONS)
    static_quantization: bool = True
    pruning_ratios_bp: tuple[int, ...] = (DEFAULT_PRUNING_BP,)
    distillation: bool = True
    max_students: int | None = None  # None: DEFAULT_STUDENTS (QUICK_STUDENTS with quick)
    quick: bool = False
    holdout_bp: int = DEFAULT_HOLDOUT_BP

    def summary(self) -> dict[str, Any]:
        """The options as report JSON."""
        return {
            "precisions": [p for p in PRECISIONS if p in self.precisions],
            "staticQuantization": self.static_quantization,
            "pruningRatiosBasisPoints": list(self.pruning_ratios_bp),
            "distillation": self.distillation,
            "maxStudents": self.max_students,
            "holdoutBasisPoints": self.holdout_bp,
        }


@dataclass(frozen=True)
class Base:
    """A model variants are made from: the original, a pruned copy, a student ..."""

    kind: str
    prune_bp: int = 0


@dataclass(frozen=True)
class Planned:
    """One variant to build: its name, base model, conversion step and recipe."""

    name: str
    base: Base
    step: str
    recipe: Recipe = field(compare=False)


def ratio_tag(bp: int) -> str:
    """A pruning ratio in names: 5000 -> '50', 5050 -> '50p5' (stays DNS-safe)."""
    return str(bp // 100) if bp % 100 == 0 else f"{bp / 100:g}".replace(".", "p")


def student_tag(dim: int, widths: list[int]) -> str:
    """'d16-256x128' for a student shape."""
    return f"d{dim}-" + "x".join(map(str, widths))


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BuildError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_precisions(text: str) -> frozenset[str]:
    """'fp32,int8' -> {'fp32', 'int8'}; fp32 (the reference) is always added."""
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    if not names:
        raise BuildError(f"--precisions names no precision (choose from {', '.join(PRECISIONS)})")
    unknown = [n for n in names if n not in PRECISIONS]
    if unknown:
        raise BuildError(
            f"unknown precision {unknown[0]!r} in --precisions "
            f"(choose from {', '.join(PRECISIONS)})"
        )
    return frozenset([*names, "fp32"])


def parse_pruning(text: str | None, no_pruning: bool) -> tuple[int, ...]:
    """'5000,3000' -> (5000, 3000) (duplicates dropped, order kept); None -> the default."""
    if no_pruning:
        if text is not None:
            raise BuildError("--no-pruning and --prune-bp contradict each other: pass one")
        return ()
    if text is None:
        return (DEFAULT_PRUNING_BP,)
    ratios = _parse_ints(text, "--prune-bp")
    low, high = PRUNING_BP_RANGE
    for r in ratios:
        if not low <= r <= high:
            raise BuildError(
                f"pruning ratio {r} bp is out of range {low}..{high} (5000 = 50% of MLP neurons)"
            )
    if not ratios:
        raise BuildError("--prune-bp names no ratio: pass --no-pruning to build no pruned variant")
    return tuple(dict.fromkeys(ratios))


def check_holdout(bp: int) -> int:
    """The held-out share in basis points, range-checked."""
    low, high = HOLDOUT_BP_RANGE
    if not low <= bp <= high:
        raise BuildError(f"--holdout-bp {bp} is out of range {low}..{high} (2000 = 20%)")
    return bp


def check_max_students(n: int | None) -> int | None:
    """--max-students, range-checked."""
    if n is not None and not 1 <= n <= MAX_STUDENTS:
        raise BuildError(f"--max-students {n} is out of range 1..{MAX_STUDENTS}")
    return n


def student_shapes(
    opts: BuildOptions, explicit: list[tuple[int, list[int]]] | None = None
) -> list[tuple[int, list[int]]]:
    """The shapes the student search tries: none without distillation; else the explicit
    ``--student-shape`` list or the built-in STUDENT_SHAPES, cut to --max-students when
    given, otherwise to QUICK_STUDENTS with --quick and DEFAULT_STUDENTS without."""
    if not opts.distillation:
        return []
    pool = list(explicit) if explicit else STUDENT_SHAPES
    if opts.max_students is not None:
        limit = opts.max_students
    elif explicit:
        limit = len(pool)
    else:
        limit = QUICK_STUDENTS if opts.quick else DEFAULT_STUDENTS
    return [(d, list(w)) for d, w in pool[:limit]]


def plan_variants(
    opts: BuildOptions, zoo: bool, student: tuple[int, list[int]] | None = None
) -> list[Planned]:
    """Every variant a build makes, in build (and report) order; ``fp32`` comes first.

    ``zoo``: the source is a zoo model (pruning and distillation need one; TorchScript
    models get the ONNX-level variants of the original only). ``student``: the shape the
    search chose (None: no student variants).
    """
    p = opts.precisions
    int8, int4 = "int8" in p, "int4" in p
    out: list[Planned] = []

    def add(name: str, base: Base, step: str, **recipe: Any) -> None:
        out.append(Planned(name, base, step, Recipe(**recipe)))

    def int4_step(base: Base, stem: str, **recipe: Any) -> None:
        """INT4 tables, with the MLP in INT8 when int8 is listed."""
        if int8:
            add(f"{stem}-int4emb-int8", base, INT4_INT8, precision="int4", **recipe)
        else:
            add(f"{stem}-int4emb", base, INT4, precision="int4", **recipe)

    teacher = Base(TEACHER)
    add("fp32", teacher, FLOAT)
    if "fp16" in p:
        add("fp16", teacher, FP16, precision="fp16")
    if int8:
        add("int8-dynamic", teacher, INT8, precision="int8", quantization="dynamic")
        if opts.static_quantization:
            add("int8-static-qdq", teacher, INT8_STATIC, precision="int8", quantization="static")
    if int4:
        add("int4-rowwise-emb", teacher, INT4, precision="int4", quantization="rowwise")
        if int8:
            add(
                "int4-rowwise-emb-int8",
                teacher,
                INT4_INT8,
                precision="int4",
                quantization="rowwise",
            )
    if not zoo:
        return out
    for bp in opts.pruning_ratios_bp:
        base, stem = Base(PRUNED, bp), f"pruned-{ratio_tag(bp)}"
        add(stem, base, FLOAT, pruning_ratio_basis_points=bp)
        if int8:
            add(f"{stem}-int8", base, INT8, precision="int8", quantization="dynamic",
                pruning_ratio_basis_points=bp)  # fmt: skip
    if not opts.distillation or student is None:
        return out
    shape = {"embeddingDim": student[0], "mlpLayers": list(student[1])}
    stem = f"student-{student_tag(*student)}"
    base = Base(STUDENT)
    add(stem, base, FLOAT, student=shape)
    if int8:
        add(f"{stem}-int8", base, INT8, precision="int8", quantization="dynamic", student=shape)
    if int4:
        int4_step(base, stem, quantization="rowwise", student=shape)
    for bp in opts.pruning_ratios_bp:
        base, pstem = Base(STUDENT_PRUNED, bp), f"{stem}-pruned{ratio_tag(bp)}"
        common: dict[str, Any] = {"pruning_ratio_basis_points": bp, "student": shape}
        if int8:
            add(f"{pstem}-int8", base, INT8, precision="int8", quantization="dynamic", **common)
        if int4:
            int4_step(base, pstem, quantization="rowwise", **common)
        if not (int8 or int4):  # the float combination is then the only one
            add(pstem, base, FLOAT, **common)
    return out
