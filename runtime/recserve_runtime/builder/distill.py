"""Knowledge distillation into smaller students, and the hardware-aware shape search.

A student has the teacher's architecture with a smaller embedding dim and a narrower or
shallower top MLP. It learns from true labels and the teacher's soft labels
(``train.fit`` with ``teacher_logits``). The search trains each candidate shape briefly,
measures its onnxruntime latency at the SLO batch size on this machine, and picks the
fastest whose validation AUC stays within the given share of the accuracy budget.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recserve_runtime.builder.plan import DEFAULT_STUDENTS, STUDENT_SHAPES, student_tag
from recserve_runtime.data.tabular import TabularData

if TYPE_CHECKING:
    from recserve_runtime.zoo.models import RecNet

# (embedding dim, top MLP widths) of the default search; the full ordered list, and how
# --quick / --max-students cut it, live in builder.plan
DEFAULT_SHAPES: list[tuple[int, list[int]]] = STUDENT_SHAPES[:DEFAULT_STUDENTS]


@dataclass
class StudentResult:
    """One candidate of the search."""

    embedding_dim: int
    mlp_layers: list[int]
    valid_auc: float
    latency_us: float
    params: int
    chosen: bool = False
    model: Any = field(default=None, repr=False)

    @property
    def tag(self) -> str:
        return student_tag(self.embedding_dim, self.mlp_layers)

    def summary(self) -> dict[str, Any]:
        return {
            "embeddingDim": self.embedding_dim,
            "mlpLayers": self.mlp_layers,
            "depth": len(self.mlp_layers),
            "validAuc": round(self.valid_auc, 5),
            "latencyUsAtSloBatch": round(self.latency_us, 1),
            "params": self.params,
            "chosen": self.chosen,
        }


def student_config(teacher: RecNet, dim: int, widths: list[int]) -> Any:
    """The teacher's config with a student's embedding dim and top MLP."""
    cfg = copy.deepcopy(teacher.config)
    cfg.embedding_dim = dim
    cfg.top_mlp = list(widths)
    cfg.bottom_mlp = [min(w, 2 * dim) for w in cfg.bottom_mlp]
    return cfg


def train_student(
    teacher: RecNet,
    data: TabularData,
    dim: int,
    widths: list[int],
    teacher_logits: Any,
    fit_cfg: Any,
    progress: Callable[[str], None] | None = None,
) -> tuple[RecNet, float]:
    """(student, best validation AUC), distilled from ``teacher_logits`` on train rows."""
    import torch

    from recserve_runtime.train import fit
    from recserve_runtime.zoo.models import build_model

    torch.manual_seed(fit_cfg.seed)
    student = build_model(student_config(teacher, dim, widths))
    tag = f"student d{dim} " + "x".join(map(str, widths))
    auc = fit(student, data.train, data.valid, fit_cfg, teacher_logits, progress, tag=tag)
    return student, auc


def onnx_latency_us(model: RecNet, data: TabularData, batch: int, threads: int) -> float:
    """Median onnxruntime latency (µs) of the FP32 export at ``batch``."""
    from recserve_runtime.builder.export import export_onnx
    from recserve_runtime.profiler import profile_batch

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, data.spec, Path(tmp) / "m.onnx")
        return profile_batch(path, data.spec, batch, threads, seconds=0.3).p50_us


def search_students(
    teacher: RecNet,
    data: TabularData,
    teacher_valid_auc: float,
    shapes: list[tuple[int, list[int]]],
    fit_cfg: Any,
    slo_batch: int,
    threads: int,
    max_drop_rel_pct: float,
    progress: Callable[[str], None] | None = None,
) -> list[StudentResult]:
    """Train and time every shape; mark the chosen one (fastest within the drop limit,
    else the most accurate)."""
    from recserve_runtime.builder.prune import count_params
    from recserve_runtime.train import predict_logits

    logits = predict_logits(teacher, data.train)
    results = []
    for dim, widths in shapes:
        student, auc = train_student(teacher, data, dim, widths, logits, fit_cfg, None)
        lat = onnx_latency_us(student, data, slo_batch, threads)
        res = StudentResult(dim, list(widths), auc, lat, count_params(student), model=student)
        results.append(res)
        if progress:
            progress(
                f"[search] student {res.tag}: valid AUC {auc:.4f} "
                f"(teacher {teacher_valid_auc:.4f}), {lat:.0f} µs at batch {slo_batch}"
            )
    ok = [
        r
        for r in results
        if 100 * (teacher_valid_auc - r.valid_auc) / teacher_valid_auc <= max_drop_rel_pct
    ]
    best = min(ok, key=lambda r: r.latency_us) if ok else max(results, key=lambda r: r.valid_auc)
    best.chosen = True
    return results
