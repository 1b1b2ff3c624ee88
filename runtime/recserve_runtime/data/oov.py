"""Out-of-vocabulary ids, mapped as a feature spec declares (``SparseFeature.oov``).

The builder's custom eval data and the server's requests go through the same function,
so a variant is measured on the ids it will be served.
"""

from __future__ import annotations

import numpy as np

from recserve_runtime.artifacts import Oov, SparseFeature


def map_ids(ids: np.ndarray, feature: SparseFeature) -> np.ndarray:
    """``ids`` (int64) with every id outside ``[0, vocab_size)`` mapped per ``feature.oov``
    (hash: modulo vocab_size, non-negative; id: ``feature.oov_row``). Unset: unchanged
    (the caller rejects what is outside)."""
    if feature.oov == Oov.HASH:
        return np.asarray(np.mod(ids, feature.vocab_size), dtype=np.int64)
    if feature.oov == Oov.ID:
        return np.where((ids < 0) | (ids >= feature.vocab_size), feature.oov_row, ids)
    return ids


def hash_strings(values: np.ndarray) -> np.ndarray:
    """Stable non-negative int64 ids for string values (the same on every machine and run:
    pandas' keyed SipHash), to be reduced modulo the vocabulary by :func:`map_ids`."""
    import pandas as pd

    hashed = pd.util.hash_array(values.astype(object), categorize=False)
    return np.asarray(hashed >> np.uint64(1)).astype(np.int64)
