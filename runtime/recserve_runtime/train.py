"""Training: the demo teacher, fine-tuning and distillation loops, the LR baseline, and
`recserve train`.

One loop serves all three uses: plain training on labels, fine-tuning after pruning,
and distillation (``teacher_logits`` given: loss = alpha * BCE(labels) + (1 - alpha) *
T^2 * BCE(soft teacher labels at temperature T)). Early stopping on validation AUC keeps
the best epoch's weights.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recserve_runtime.data.tabular import Split

if TYPE_CHECKING:
    from recserve_runtime.zoo.models import RecNet

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Default progress sink: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class FitConfig:
    """Optimiser and stopping settings."""

    epochs: int = 10
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 0
    alpha: float = 0.5  # weight of the true-label loss when distilling
    temperature: float = 2.0
    max_seconds: float = 120.0


def auc_logloss(label: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, log-loss) of probabilities ``score``."""
    from sklearn.metrics import log_loss, roc_auc_score

    clipped = np.clip(score.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(roc_auc_score(label, clipped)), float(log_loss(label, clipped))


def predict_logits(model: RecNet, split: Split, batch_size: int = 8192) -> np.ndarray:
    """Logits of a torch model over a split (eval mode, no grad)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(split), batch_size):
            sp = torch.from_numpy(split.sparse[s : s + batch_size])
            de = torch.from_numpy(split.dense[s : s + batch_size])
            out.append(model.logits(sp, de).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def predict_proba(model: RecNet, split: Split) -> np.ndarray:
    """Probabilities of a torch model over a split."""
    return 1.0 / (1.0 + np.exp(-predict_logits(model, split)))  # type: ignore[no-any-return]


def fit(
    model: RecNet,
    train: Split,
    valid: Split,
    cfg: FitConfig,
    teacher_logits: np.ndarray | None = None,
    progress: Progress | None = None,
    tag: str = "train",
) -> float:
    """Train in place with early stopping; returns the best validation AUC."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sparse = torch.from_numpy(train.sparse)
    dense = torch.from_numpy(train.dense)
    label = torch.from_numpy(train.label)
    soft = None if teacher_logits is None else torch.from_numpy(teacher_logits)
    best_auc, best_state, stale = -1.0, copy.deepcopy(model.state_dict()), 0
    start = time.monotonic()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(train)))
        total = 0.0
        for s in range(0, len(train), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            logits = model.logits(sparse[idx], dense[idx])
            loss = F.binary_cross_entropy_with_logits(logits, label[idx])
            if soft is not None:
                t = cfg.temperature
                target = torch.sigmoid(soft[idx] / t)
                kd = F.binary_cross_entropy_with_logits(logits / t, target) * t * t
                loss = cfg.alpha * loss + (1 - cfg.alpha) * kd
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
        auc, _ = auc_logloss(valid.label, predict_proba(model, valid))
        if progress:
            progress(
                f"[{tag}] epoch {epoch + 1}/{cfg.epochs} loss={total / len(train):.4f} "
                f"valid_auc={auc:.4f} elapsed={time.monotonic() - start:.1f}s"
            )
        if auc > best_auc:
            best_auc, best_state, stale = auc, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if stale >= cfg.patience or time.monotonic() - start > cfg.max_seconds:
            break
    model.load_state_dict(best_state)
    model.eval()
    return best_auc


def logistic_regression_auc(train: Split, test: Split, seed: int = 0) -> tuple[float, float]:
    """(AUC, log-loss) of a one-hot logistic regression on the same features and split."""
    from scipy import sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    enc = OneHotEncoder(handle_unknown="ignore")
    x_train = sp.hstack([enc.fit_transform(train.sparse), sp.csr_matrix(train.dense)]).tocsr()
    x_test = sp.hstack([enc.transform(test.sparse), sp.csr_matrix(test.dense)]).tocsr()
    lr = LogisticRegression(max_iter=2000, C=0.5, random_state=seed)
    lr.fit(x_train, train.label)
    return auc_logloss(test.label, lr.predict_proba(x_test)[:, 1])


def demo_config(arch: str, vocab_sizes: list[int], n_dense: int) -> Any:
    """The demo teacher's shape for MovieLens."""
    from recserve_runtime.zoo.models import ModelConfig

    return ModelConfig(
        arch=arch,
        vocab_sizes=vocab_sizes,
        n_dense=n_dense,
        embedding_dim=32,
        bottom_mlp=[64],
        top_mlp=[512, 256, 128],
    )


def teacher_fit_config(seed: int = 0) -> FitConfig:
    """The demo teacher's optimiser: AdamW-style decay on every embedding row keeps the
    id embeddings from overfitting (MovieLens overfits after 1-2 epochs without it)."""
    return FitConfig(epochs=12, batch_size=1024, lr=1e-3, weight_decay=3e-4, seed=seed)


def set_threads(threads: int | None = None) -> int:
    """Pin torch to the CPUs this process may use (or ``threads``); returns the count."""
    import os

    import torch

    n = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def train_teacher(
    dataset: str = "movielens-100k",
    arch: str = "dlrm",
    seed: int = 0,
    progress: Progress | None = stderr_progress,
    holdout_bp: int = 2000,
) -> tuple[RecNet, dict[str, Any]]:
    """Train the demo teacher on the split that holds out ``holdout_bp`` of each user's
    latest interactions; returns (model, metrics incl. the LR baseline)."""
    import torch

    from recserve_runtime.data import load_dataset
    from recserve_runtime.zoo.models import build_model

    data = load_dataset(dataset, holdout_bp=holdout_bp)
    torch.manual_seed(seed)
    model = build_model(demo_config(arch, data.vocab_sizes, data.n_dense))
    start = time.monotonic()
    fit(model, data.train, data.valid, teacher_fit_config(seed), None, progress, tag="teacher")
    seconds = time.monotonic() - start
    auc, ll = auc_logloss(data.test.label, predict_proba(model, data.test))
    lr_auc, lr_ll = logistic_regression_auc(data.train, data.test, seed)
    metrics = {
        "auc": auc,
        "logLoss": ll,
        "lrAuc": lr_auc,
        "lrLogLoss": lr_ll,
        "trainSeconds": seconds,
        "seed": seed,
    }
    return model, metrics


def demo_path(
    dataset: str = "movielens-100k", arch: str = "dlrm", seed: int = 0, holdout_bp: int = 2000
) -> Path:
    """Where the cached demo teacher lives (one per held-out share: a teacher must not
    have trained on the rows it is evaluated on)."""
    from recserve_runtime.zoo.checkpoint import models_dir

    held = "" if holdout_bp == 2000 else f"-holdout{holdout_bp}"
    return models_dir() / f"{dataset}-{arch}-seed{seed}{held}.pt"


def ensure_teacher(
    dataset: str = "movielens-100k",
    arch: str = "dlrm",
    seed: int = 0,
    retrain: bool = False,
    progress: Progress | None = stderr_progress,
    holdout_bp: int = 2000,
) -> Path:
    """The cached teacher's path, training it first when missing."""
    from recserve_runtime.data import load_dataset
    from recserve_runtime.zoo.checkpoint import save_checkpoint

    path = demo_path(dataset, arch, seed, holdout_bp)
    if path.exists() and not retrain:
        return path
    model, metrics = train_teacher(dataset, arch, seed, progress, holdout_bp)
    if metrics["auc"] <= metrics["lrAuc"]:
        print(
            f"warning: teacher AUC {metrics['auc']:.4f} does not beat logistic regression "
            f"({metrics['lrAuc']:.4f})",
            file=sys.stderr,
        )
    spec = load_dataset(dataset).spec
    meta = {"dataset": dataset, "arch": arch, "holdoutBasisPoints": holdout_bp, "metrics": metrics}
    save_checkpoint(path, model, spec, meta)
    return path


def _cmd_train(args: argparse.Namespace) -> int:
    from recserve_runtime.data import DatasetNotFoundError

    set_threads(args.threads)
    try:
        path = ensure_teacher(args.dataset, args.arch, args.seed, retrain=True)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from recserve_runtime.zoo.checkpoint import load_checkpoint

    _, _, meta = load_checkpoint(path)
    m = meta["metrics"]
    print(
        f"teacher {args.arch} on {args.dataset}: test AUC {m['auc']:.4f} log-loss "
        f"{m['logLoss']:.4f} (logistic regression: AUC {m['lrAuc']:.4f}) "
        f"trained in {m['trainSeconds']:.1f}s -> {path}"
    )
    return 0 if m["auc"] > m["lrAuc"] else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `recserve train`."""
    p = sub.add_parser(
        "train",
        help="train the demo teacher on a real data set (cached outside git)",
        description="Train a zoo model on a data set with early stopping, compare it with a "
        "logistic regression on the same features and split, and cache the checkpoint "
        "under $RECSERVE_MODEL_DIR (default ~/.cache/recserve/models). Exit 1 if the "
        "model does not beat logistic regression.",
    )
    p.add_argument("--dataset", default="movielens-100k")
    p.add_argument("--arch", default="dlrm", choices=["dlrm", "dcnv2", "deepfm"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.set_defaults(handler=_cmd_train)
