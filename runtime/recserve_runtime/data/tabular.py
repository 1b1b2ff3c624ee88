"""In-memory tabular splits in the model's input layout (sparse ids + dense floats)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recserve_runtime.artifacts import FeatureSpec


class DatasetNotFoundError(RuntimeError):
    """A data set cannot be found or read; the message says what to do."""


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
