"""Data sets for training and evaluating recommendation models (MovieLens, synthetic,
a user's own data)."""

from recserve_runtime.data.custom import load_custom
from recserve_runtime.data.tabular import DatasetError, DatasetNotFoundError, Split, TabularData

DATASETS = ("movielens-100k",)

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetNotFoundError",
    "Split",
    "TabularData",
    "load_custom",
    "load_dataset",
]


def load_dataset(name: str, cache_dir: str | None = None, holdout_bp: int = 2000) -> TabularData:
    """Load a named data set (see ``DATASETS``) with ``holdout_bp`` basis points of each
    user's latest interactions held out for evaluation; raises DatasetNotFoundError."""
    if name == "movielens-100k":
        from recserve_runtime.data.movielens import load_movielens

        return load_movielens(cache_dir, holdout_bp)
    raise DatasetNotFoundError(f"unknown dataset {name!r}: the builder knows {', '.join(DATASETS)}")
