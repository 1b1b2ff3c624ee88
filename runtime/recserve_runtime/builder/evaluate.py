"""Accuracy of ONNX variants on held-out rows (AUC, log-loss), with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recserve_runtime.artifacts import FeatureSpec
from recserve_runtime.data.tabular import Split


def predict_onnx(
    path: Path, spec: FeatureSpec, rows: Split, threads: int, batch: int = 4096
) -> np.ndarray:
    """Scores of an ONNX model over ``rows``."""
    from recserve_runtime.profiler import make_session

    sess = make_session(path, threads)
    out = [
        sess.run(
            None,
            {
                spec.sparse_input: rows.sparse[s : s + batch],
                spec.dense_input: rows.dense[s : s + batch],
            },
        )[0]
        for s in range(0, len(rows), batch)
    ]
    return np.concatenate(out).astype(np.float64)


def evaluate_onnx(path: Path, spec: FeatureSpec, rows: Split, threads: int) -> dict[str, float]:
    """{"auc", "logLoss"} of an ONNX model on ``rows``."""
    from recserve_runtime.train import auc_logloss

    auc, ll = auc_logloss(rows.label, predict_onnx(path, spec, rows, threads))
    return {"auc": auc, "logLoss": ll}


def drop_rel_pct(teacher_auc: float, auc: float) -> float:
    """Relative AUC drop in percent (positive = worse than the teacher)."""
    return 100.0 * (teacher_auc - auc) / teacher_auc
