"""Data drift: the training data's bins, PSI, and the server-side sketch."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from recserve_runtime.artifacts import (
    DataReference,
    DenseFeature,
    FeatureBins,
    FeatureSpec,
    Side,
    SparseFeature,
)
from recserve_runtime.datadrift import (
    EPS,
    MIN_ID_SHARE,
    ROWS_PER_REQUEST,
    SIGNIFICANT_PSI,
    TOP_IDS,
    Binner,
    DriftSketch,
    psi,
    reference_from,
)

pytestmark = pytest.mark.unit

SPEC = FeatureSpec(
    sparse=[
        SparseFeature(name="user", vocab_size=1000, side=Side.USER),
        SparseFeature(name="item", vocab_size=50, side=Side.ITEM),
    ],
    dense=[
        DenseFeature(name="age", side=Side.USER),
        DenseFeature(name="emb", width=2, side=Side.ITEM),
    ],
)


def rows(
    n: int, seed: int, shift: float = 0.0, unseen: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Training-like rows: Zipf-ish ids, normal dense columns; ``shift`` moves the dense
    columns by that many standard deviations, ``unseen`` is the share of user ids drawn
    from ids the training data never had."""
    rng = np.random.default_rng(seed)
    users = np.minimum(rng.zipf(1.3, n), 500).astype(np.int64)
    fresh = rng.random(n) < unseen
    users[fresh] = rng.integers(600, 1000, fresh.sum())
    items = rng.integers(0, 50, n).astype(np.int64)
    dense = rng.normal(0.0, 1.0, (n, 3)).astype(np.float32) + shift
    return np.stack([users, items], axis=1), dense


def test_reference_bins_every_column_with_shares_that_sum_to_one() -> None:
    sparse, dense = rows(20_000, 0)
    ref = reference_from(SPEC, sparse, dense)
    assert [f.feature for f in ref.features] == ["user", "item", "age", "emb_0", "emb_1"]
    for f in ref.features:
        assert math.isclose(sum(f.shares), 1.0, abs_tol=1e-9), f.feature
    user = ref.features[0]
    assert user.ids[0] == 1  # Zipf: id 1 is the most frequent
    # the frequent ids only: each holds 1% of the rows or more (Zipf 1.3: about a dozen)
    assert 5 < len(user.ids) < TOP_IDS and min(user.shares[:-1]) >= MIN_ID_SHARE
    assert reference_from(SPEC, *rows(20_000, 0)).features[1].ids[:3]  # 50 items: 2% each
    assert user.shares[-1] > 0  # the tail beyond the top ids
    age = ref.features[2]
    assert len(age.edges) == 9 and all(abs(s - 0.1) < 0.01 for s in age.shares)  # deciles
    # it survives the manifest's JSON
    assert DataReference.model_validate_json(ref.model_dump_json(by_alias=True)) == ref


def test_a_flag_column_is_binned_at_its_values() -> None:
    spec = FeatureSpec(
        sparse=[SparseFeature(name="s", vocab_size=2, side=Side.USER)],
        dense=[DenseFeature(name="flag", side=Side.USER)],
    )
    dense = (np.arange(1000) % 4 == 0).astype(np.float32)[:, None]
    ref = reference_from(spec, np.zeros((1000, 1), np.int64), dense)
    flag = ref.features[1]
    # repeated deciles collapse; below the training minimum is a bin of its own (empty
    # in training: a live value there is a shift)
    assert flag.edges == [0.0, 1.0] and flag.shares == pytest.approx([0.0, 0.75, 0.25])


def test_bins_must_match_their_shares() -> None:
    with pytest.raises(ValueError, match="3 shares for 2 bins"):
        FeatureBins(feature="x", kind="dense", column=0, edges=[0.0], shares=[0.2, 0.3, 0.5])


def test_psi_by_hand() -> None:
    expected = np.array([0.5, 0.5])
    big = 10**9  # samples: the small-sample term vanishes
    assert psi(expected, np.array([big, big])) == pytest.approx(0.0)
    # (0.8-0.5) ln(0.8/0.5) + (0.2-0.5) ln(0.2/0.5)
    by_hand = 0.3 * math.log(1.6) - 0.3 * math.log(0.4)
    assert psi(expected, np.array([4 * big, big])) == pytest.approx(by_hand)
    # an empty bin counts as EPS, not as an infinite PSI
    assert psi(expected, np.array([big, 0])) == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (EPS - 0.5) * math.log(EPS / 0.5)
    )
    assert psi(expected, np.array([0, 0])) == 0.0
    # less what chance gives n live and N reference samples: (bins - 1) (1/n + 1/N)
    assert psi(expected, np.array([80, 20]), 1000) == pytest.approx(by_hand - (1 / 100 + 1 / 1000))
    assert psi(expected, np.array([52, 48]), 1000) == 0.0  # chance, not drift


def test_user_columns_count_once_per_request() -> None:
    """A ranking request repeats its user's features for every candidate: counted per
    row, 62 requests looked like 2,000 samples, and their chance PSI like drift."""
    ref = reference_from(SPEC, *rows(20_000, 0))
    binner = Binner(ref)
    sparse, dense = rows(4, 1)
    sparse, dense = np.repeat(sparse, 3, axis=0), np.repeat(dense, 3, axis=0)  # 4 requests
    first = np.tile([True, False, False], 4)
    counted = dict(
        zip([f.feature for f in ref.features], binner.counts(sparse, dense, first), strict=True)
    )
    sides = {f.feature: f.side for f in ref.features}
    for feature, counts in counted.items():
        assert counts.sum() == (4 if sides[feature] == Side.USER else 12), feature
    assert sides["user"] == Side.USER and sides["emb_0"] == Side.ITEM


def test_many_candidates_of_few_users_like_the_training_data_are_not_drift() -> None:
    ref = reference_from(SPEC, *rows(20_000, 0))
    published: list[dict[str, float]] = []
    sketch = DriftSketch(ref, lambda found, _n: published.append(found), window_rows=2000)
    for request in range(400):  # 400 requests x 32 candidates, one user each
        sparse, dense = rows(32, 100 + request)
        sparse[:, 0], dense[:, 0] = sparse[0, 0], dense[0, 0]  # the user's columns
        first = np.zeros(32, bool)
        first[0] = True
        sketch.add(sparse, dense, first)
    assert len(published) == 6
    assert max(max(w.values()) for w in published) < SIGNIFICANT_PSI, published


def test_binner_counts_ids_outside_the_top_in_the_last_bin() -> None:
    ref = DataReference(
        rows=10,
        features=[
            FeatureBins(feature="s", kind="sparse", column=0, ids=[7, 3], shares=[0.5, 0.3, 0.2])
        ],
    )
    [counts] = Binner(ref).counts(np.array([[3], [7], [7], [9], [0]]), np.zeros((5, 0)))
    assert counts.tolist() == [2, 1, 2]  # id 7, id 3, others


def _windows(sparse: np.ndarray, dense: np.ndarray, ref: DataReference) -> list[dict[str, float]]:
    published: list[dict[str, float]] = []
    sketch = DriftSketch(ref, lambda found, _rows: published.append(found), window_rows=2000)
    for start in range(0, len(sparse), 100):  # batches of 100 rows
        sketch.add(sparse[start : start + 100], dense[start : start + 100])
    return published


def test_live_rows_like_the_training_data_stay_far_below_the_threshold() -> None:
    ref = reference_from(SPEC, *rows(20_000, 0))
    windows = _windows(*rows(10_000, 1), ref)
    assert len(windows) == 5
    worst = max(max(w.values()) for w in windows)
    assert worst < 0.05, windows


def test_shifted_dense_columns_and_unseen_ids_are_significant_drift() -> None:
    ref = reference_from(SPEC, *rows(20_000, 0))
    shifted = _windows(*rows(4_000, 1, shift=1.0), ref)
    assert all(w["age"] > SIGNIFICANT_PSI and w["emb_1"] > SIGNIFICANT_PSI for w in shifted)
    assert all(w["user"] < 0.05 and w["item"] < 0.05 for w in shifted)
    unseen = _windows(*rows(4_000, 1, unseen=0.5), ref)
    assert all(w["user"] > SIGNIFICANT_PSI and w["age"] < 0.05 for w in unseen)


def test_sketch_thread_publishes_off_the_request_path_and_counts_what_it_drops() -> None:
    ref = reference_from(SPEC, *rows(5_000, 0))
    published: list[tuple[dict[str, float], int]] = []
    dropped: list[int] = []
    sketch = DriftSketch(
        ref,
        lambda found, n: published.append((found, n)),
        window_rows=100,
        rows_per_second=1e6,  # no budget here
        on_drop=lambda: dropped.append(1),
        queue_size=1,
    )
    sparse, dense = rows(2_000, 1)
    for start in range(0, 120, 20):  # no thread yet: the second offer finds the queue full
        sketch.offer(sparse[start : start + 20], dense[start : start + 20])
    assert len(dropped) == 5
    sketch.start()
    for start in range(0, 300, 20):
        sketch.offer(sparse[start : start + 20], dense[start : start + 20])
        time.sleep(0.02)
    # a large request counts ROWS_PER_REQUEST of its rows (drawn at random)
    sketch.offer(sparse[:1000], dense[:1000])
    sketch.stop()
    rows_binned = [n for _, n in published]
    # 352 rows: three windows of 100, or two when the thread merged queued requests
    assert 2 <= len(rows_binned) <= 3 and all(n >= 100 for n in rows_binned), rows_binned
    assert sum(rows_binned) <= 20 + 300 + ROWS_PER_REQUEST
    # a column's PSI is published once it has MIN_SAMPLES: the item columns once 250 rows
    # were binned; the user columns (one sample per request, 18 requests) not yet
    assert not published[0][0]
    assert set().union(*(found for found, _ in published)) == {"item", "emb_0", "emb_1"}


def test_the_sketch_takes_at_most_its_budget_of_rows_a_second() -> None:
    ref = reference_from(SPEC, *rows(5_000, 0))
    published: list[int] = []
    sketch = DriftSketch(ref, lambda _f, n: published.append(n), 10, rows_per_second=40)
    sparse, dense = rows(1, 1)
    sketch.start()
    for _ in range(200):  # a burst: a second's budget, then nothing until it refills
        sketch.offer(sparse, dense)
    time.sleep(0.25)  # ten more rows
    for _ in range(200):
        sketch.offer(sparse, dense)
    sketch.stop()
    assert sum(published) in range(40, 60), published  # one row each: 50 taken of 400
