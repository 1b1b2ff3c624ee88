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


class NotProbabilities(ValueError):
    """A model's scores are not probabilities (log-loss needs them)."""


def evaluate_onnx(
    path: Path, spec: FeatureSpec, rows: Split, threads: int, probabilities: bool = False
) -> dict[str, float]:
    """{"auc", "logLoss"} of an ONNX model on ``rows``. ``probabilities``: raise
    NotProbabilities when a score is outside [0, 1] (checked on the source model: a model
    that returns logits would get a meaningless log-loss)."""
    from recserve_runtime.train import auc_logloss

    scores = predict_onnx(path, spec, rows, threads)
    if probabilities and len(scores) and (scores.min() < 0.0 or scores.max() > 1.0):
        raise NotProbabilities(
            f"the model's scores on the held-out rows range over [{scores.min():.4g}, "
            f"{scores.max():.4g}]: it must return a probability in [0, 1] per row (apply "
            "the sigmoid in forward()), which log-loss and the served scores assume"
        )
    auc, ll = auc_logloss(rows.label, scores)
    return {"auc": auc, "logLoss": ll}


def drop_rel_pct(teacher_auc: float, auc: float) -> float:
    """Relative AUC drop in percent (positive = worse than the teacher)."""
    return 100.0 * (teacher_auc - auc) / teacher_auc
