"""In-memory tabular splits in the model's input layout (sparse ids + dense floats), the
time split every data set uses, and the errors data loaders raise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recserve_runtime.artifacts import FeatureSpec

# Share of the train part, its latest rows, that validates (early stopping).
VALID_BP = 1000


class DatasetError(RuntimeError):
    """The data set cannot be used; the message says why and what to do."""


class DatasetNotFoundError(DatasetError):
    """A data set cannot be found or read; the message says what to do."""


def ceil_share(n: np.ndarray, bp: int) -> np.ndarray:
    """ceil(n * bp / 10000), in integers (exact for every share)."""
    return -(-n * bp // 10_000)


def time_split_masks(
    groups: np.ndarray, ts: np.ndarray, holdout_bp: int, valid_bp: int = VALID_BP
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group time split: (test mask, valid mask) — each group's latest ``holdout_bp``
    basis points of rows (rounded up), then the latest ``valid_bp`` of the rest. Groups
    are users (one value for all rows: a global time split); ties in time go by row
    order, so the split is deterministic."""
    order = np.lexsort((np.arange(len(ts)), ts, groups))
    g_sorted = groups[order]
    starts = np.r_[0, np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(g_sorted)])
    rank = np.arange(len(g_sorted)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)
    n_train = n - ceil_share(n, holdout_bp)
    n_fit = n_train - ceil_share(n_train, valid_bp)
    test = np.zeros(len(ts), bool)
    valid = np.zeros(len(ts), bool)
    test[order] = rank >= n_train
    valid[order] = (rank >= n_fit) & (rank < n_train)
    return test, valid


@dataclass(frozen=True)
class Split:
    """One split: ``sparse`` int64 [N, n_sparse], ``dense`` float32 [N, n_dense], ``label``."""

    sparse: np.ndarray
    dense: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def head(self, n: int) -> Split:
        """The first ``n`` rows."""
        return Split(self.sparse[:n], self.dense[:n], self.label[:n])

    def sample(self, n: int, seed: int = 0) -> Split:
        """``n`` rows drawn without replacement (all rows if fewer)."""
        if n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Split(self.sparse[idx], self.dense[idx], self.label[idx])


@dataclass(frozen=True)
class TabularData:
    """A data set with train / validation (early stopping) / test (held-out) splits."""

    name: str
    spec: FeatureSpec
    train: Split
    valid: Split
    test: Split

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.spec.sparse]

    @property
    def n_dense(self) -> int:
        return sum(f.width for f in self.spec.dense)
