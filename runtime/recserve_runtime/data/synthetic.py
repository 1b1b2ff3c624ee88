"""A synthetic Criteo-shaped data set for speed and size only (never for accuracy).

Every report that uses it says ``synthetic``. Labels are random, so accuracy numbers
from it are meaningless by construction.
"""

from __future__ import annotations

import numpy as np

from recserve_runtime.artifacts import DenseFeature, FeatureSpec, Side, SparseFeature
from recserve_runtime.data.tabular import Split, TabularData


def synthetic_spec(n_sparse: int = 26, rows: int = 100_000, n_dense: int = 13) -> FeatureSpec:
    """Criteo-like spec: ``n_sparse`` fields of ``rows`` ids each, ``n_dense`` numbers."""
    half = n_sparse // 2
    return FeatureSpec(
        sparse=[
            SparseFeature(
                name=f"C{k + 1}", vocab_size=rows, side=Side.USER if k < half else Side.ITEM
            )
            for k in range(n_sparse)
        ],
        dense=[DenseFeature(name=f"I{k + 1}", width=1, side=Side.USER) for k in range(n_dense)],
    )


def synthetic_split(spec: FeatureSpec, n: int, seed: int = 0) -> Split:
    """``n`` random rows that fit ``spec`` (ids uniform in each vocabulary)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f.vocab_size for f in spec.sparse])
    sparse = (rng.random((n, len(vocab))) * vocab).astype(np.int64)
    width = sum(f.width for f in spec.dense)
    dense = rng.standard_normal((n, width)).astype(np.float32)
    label = (rng.random(n) < 0.25).astype(np.float32)
    return Split(sparse, dense, label)


def synthetic_data(spec: FeatureSpec, n: int = 4096, seed: int = 0) -> TabularData:
    """A small synthetic data set (calibration and smoke runs)."""
    return TabularData(
        "synthetic",
        spec,
        synthetic_split(spec, n, seed),
        synthetic_split(spec, n // 4, seed + 1),
        synthetic_split(spec, n // 4, seed + 2),
    )
