"""Custom eval data: Parquet / CSV / Criteo TSV into the model's input layout, the
declared splits, the feature spec's column and OOV rules, and every error message."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest

from recserve_runtime.artifacts import DenseFeature, FeatureSpec, SparseFeature
from recserve_runtime.data import DatasetError, DatasetNotFoundError, Split, load_custom
from recserve_runtime.data.custom import CRITEO_COLUMNS
from recserve_runtime.data.oov import hash_strings

pytestmark = pytest.mark.unit

N_USERS, PER_USER, N_ITEMS = 100, 60, 500
N = N_USERS * PER_USER


def frame(seed: int = 0, n_users: int = N_USERS, per_user: int = PER_USER) -> pd.DataFrame:
    """Rows in shuffled order; ``price`` is the row number, so rows can be told apart."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    return pd.DataFrame(
        {
            "uid": rng.permutation(np.repeat(np.arange(n_users), per_user)),
            "item": rng.integers(0, N_ITEMS, n),
            "ts": rng.permutation(n) + 1_600_000_000,
            "price": np.arange(n, dtype=np.float64),
            "emb_0": rng.standard_normal(n),
            "emb_1": rng.standard_normal(n),
            "city": rng.choice(["paris", "oslo", "lima"], n),
            "clicked": (rng.random(n) < 0.5).astype(np.int64),
        }
    )


def spec(*extra_sparse: SparseFeature, **dense_fill: float) -> FeatureSpec:
    return FeatureSpec(
        sparse=[
            SparseFeature(name="user_id", column="uid", vocab_size=N_USERS, side="user"),
            SparseFeature(name="item_id", column="item", vocab_size=N_ITEMS, side="item"),
            *extra_sparse,
        ],
        dense=[
            DenseFeature(name="price", side="item", fill=dense_fill.get("price")),
            DenseFeature(name="emb", width=2, side="user"),
        ],
        label="clicked",
    )


def parquet(tmp_path: Path, df: pd.DataFrame, name: str = "eval.parquet") -> str:
    path = tmp_path / name
    df.to_parquet(path, index=False)
    return str(path)


def rows_of(split: Split) -> np.ndarray:
    """The source row numbers of a split (its ``price`` column)."""
    return split.dense[:, 0].astype(np.int64)


def message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


# --- formats and sources -----------------------------------------------------------


def test_parquet_file_is_in_the_model_layout(tmp_path: Path) -> None:
    df = frame()
    data = load_custom(parquet(tmp_path, df), spec(), time_column="ts", user_column="uid")
    assert data.name == "eval.parquet"
    assert len(data.train) + len(data.valid) + len(data.test) == N
    for split in (data.train, data.valid, data.test):
        assert split.sparse.dtype == np.int64 and split.sparse.shape[1] == 2
        assert split.dense.dtype == np.float32 and split.dense.shape[1] == 3
        assert split.label.dtype == np.float32 and set(np.unique(split.label)) <= {0.0, 1.0}
        rows = rows_of(split)
        # every row's inputs, in spec order, are its own data columns
        np.testing.assert_array_equal(split.sparse[:, 0], df["uid"].to_numpy()[rows])
        np.testing.assert_array_equal(split.sparse[:, 1], df["item"].to_numpy()[rows])
        np.testing.assert_allclose(split.dense[:, 1], df["emb_0"].to_numpy()[rows], rtol=1e-6)
        np.testing.assert_allclose(split.dense[:, 2], df["emb_1"].to_numpy()[rows], rtol=1e-6)
        np.testing.assert_array_equal(split.label, df["clicked"].to_numpy()[rows])


def test_parquet_folder_reads_every_part_in_order(tmp_path: Path) -> None:
    df = frame()
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, part in enumerate(np.array_split(np.arange(N), 3)):
        df.iloc[part].to_parquet(folder / f"part-{k}.parquet", index=False)
    data = load_custom(str(folder), spec(), time_column="ts", user_column="uid")
    whole = load_custom(parquet(tmp_path, df), spec(), time_column="ts", user_column="uid")
    assert data.name == "parts"
    for mine, theirs in ((data.train, whole.train), (data.test, whole.test)):
        np.testing.assert_array_equal(mine.sparse, theirs.sparse)
        np.testing.assert_array_equal(mine.dense, theirs.dense)


def test_parquet_categoricals_are_read_as_their_values(tmp_path: Path) -> None:
    df = frame()
    city = SparseFeature(name="city", vocab_size=50, side="user", oov="hash")
    plain = load_custom(parquet(tmp_path, df), spec(city), time_column="ts")
    df["city"] = df["city"].astype("category")
    df["item"] = df["item"].astype("category")
    coded = load_custom(parquet(tmp_path, df, "cat.parquet"), spec(city), time_column="ts")
    np.testing.assert_array_equal(coded.test.sparse, plain.test.sparse)


def test_csv_reads_like_parquet(tmp_path: Path) -> None:
    df = frame()
    csv = tmp_path / "eval.csv"
    df.to_csv(csv, index=False)
    data = load_custom(str(csv), spec(), time_column="ts")
    same = load_custom(parquet(tmp_path, df), spec(), time_column="ts")
    for mine, theirs in ((data.train, same.train), (data.valid, same.valid)):
        np.testing.assert_array_equal(mine.sparse, theirs.sparse)
        np.testing.assert_array_equal(mine.dense, theirs.dense)
        np.testing.assert_array_equal(mine.label, theirs.label)


def test_format_argument_overrides_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "eval.data"
    frame().to_csv(path, index=False)
    assert len(load_custom(str(path), spec(), fmt="csv", time_column="ts").test) == 1200


def criteo_lines(
    rng: np.random.Generator, n: int, hex_format: str = "08x"
) -> tuple[str, pd.DataFrame]:
    """A Criteo TSV (label, I1..I13, C1..C26; hex categoricals, some values empty) and
    what it holds (hex columns as ints, -1 where empty; NaN where I is empty)."""
    cols: dict[str, Any] = {"label": (rng.random(n) < 0.5).astype(np.int64)}
    for k in range(1, 14):
        cols[f"I{k}"] = rng.integers(-2, 1000, n).astype(np.float64)
    for k in range(1, 27):
        cols[f"C{k}"] = rng.integers(0, 2**32, n)
    truth = pd.DataFrame(cols)
    truth.loc[rng.random(n) < 0.1, "I1"] = np.nan
    truth.loc[rng.random(n) < 0.1, "C1"] = -1
    text = []
    for row in truth.itertuples(index=False):
        fields = [str(row.label)]
        fields += ["" if np.isnan(v) else str(int(v)) for v in row[1:14]]
        fields += ["" if v < 0 else format(v, hex_format) for v in row[14:]]
        text.append("\t".join(fields))
    return "\n".join(text) + "\n", truth


@pytest.mark.parametrize("hex_format", ["08x", "x"])  # Criteo's 8 digits, or any length
def test_criteo_tsv_hex_categoricals_empty_values_and_fill(tmp_path: Path, hex_format: str) -> None:
    rng = np.random.default_rng(3)
    train_text, train_truth = criteo_lines(rng, 500, hex_format)
    test_text, test_truth = criteo_lines(rng, 2000, hex_format)
    (tmp_path / "day0.txt").write_text(train_text)
    (tmp_path / "day1.tsv").write_text(test_text.upper())  # upper-case hex digits too
    crit = FeatureSpec(
        sparse=[
            SparseFeature(name="C1", vocab_size=1000, side="user", oov="hash"),
            SparseFeature(name="site", column="C2", vocab_size=2**32, side="item"),
        ],
        dense=[
            DenseFeature(name="I1", side="user", fill=-7.0),
            DenseFeature(name="I2", side="item"),
        ],
    )
    data = load_custom(
        str(tmp_path / "day0.txt"), crit, test_uri=str(tmp_path / "day1.tsv"), seed=1
    )
    test = data.test
    assert len(test) == 2000 and len(data.train) + len(data.valid) == 500
    np.testing.assert_array_equal(test.sparse[:, 0], np.mod(test_truth["C1"], 1000))
    assert (test.sparse[test_truth["C1"].to_numpy() < 0, 0] == 999).all()  # empty: -1 -> hash
    np.testing.assert_array_equal(test.sparse[:, 1], test_truth["C2"])  # full 8-digit range
    np.testing.assert_array_equal(test.dense[:, 0], test_truth["I1"].fillna(-7.0))
    np.testing.assert_array_equal(test.dense[:, 1], test_truth["I2"])
    np.testing.assert_array_equal(test.label, test_truth["label"])
    seen = np.sort(np.concatenate([data.train.dense[:, 1], data.valid.dense[:, 1]]))
    np.testing.assert_array_equal(seen, np.sort(train_truth["I2"]))


@pytest.mark.parametrize("bad", ["zz12", "0000zzzz", "123456789abcdef01"])
def test_criteo_rejects_values_that_are_not_hex(tmp_path: Path, bad: str) -> None:
    text, _ = criteo_lines(np.random.default_rng(0), 20)
    lines = text.splitlines()
    fields = lines[3].split("\t")
    fields[14] = bad  # C1
    lines[3] = "\t".join(fields)
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    crit = FeatureSpec(sparse=[SparseFeature(name="C1", vocab_size=10, side="user", oov="hash")])
    with pytest.raises(DatasetError) as err:
        load_custom(str(path), crit, test_uri=str(path))
    assert f"Criteo column 'C1' holds 1 values that are not hex ids (e.g. {bad!r})" in message(err)


def test_criteo_checks_the_field_count(tmp_path: Path) -> None:
    path = tmp_path / "short.tsv"
    path.write_text("1\t2\t3\n0\t4\t5\n")
    crit = FeatureSpec(sparse=[SparseFeature(name="C1", vocab_size=10, side="user")])
    with pytest.raises(DatasetError) as err:
        load_custom(str(path), crit, test_uri=str(path))
    assert f"eval data {path}: a Criteo line has 40" in message(err)
    assert "first line has 3" in message(err) and len(CRITEO_COLUMNS) == 40


def test_memory_uri_through_fsspec() -> None:
    fs = fsspec.filesystem("memory")
    path = f"/recserve-test-{uuid.uuid4().hex}/eval.parquet"
    with fs.open(path, "wb") as f:
        frame().to_parquet(f, index=False)
    try:
        data = load_custom(f"memory://{path}", spec(), time_column="ts", user_column="uid")
        assert len(data.test) == N_USERS * 12 and data.name == "eval.parquet"
    finally:
        fs.rm(path)


# --- splits ------------------------------------------------------------------------


def test_per_user_time_split_holds_out_each_users_latest(tmp_path: Path) -> None:
    df = frame()
    data = load_custom(parquet(tmp_path, df), spec(), time_column="ts", user_column="uid")
    assert (len(data.test), len(data.valid), len(data.train)) == (1200, 500, 4300)
    ts, uid = df["ts"].to_numpy(), df["uid"].to_numpy()
    test, valid, train = rows_of(data.test), rows_of(data.valid), rows_of(data.train)
    for u in range(N_USERS):
        mine = uid == u
        held = ts[test][uid[test] == u]
        assert len(held) == 12  # ceil(60 * 20%)
        assert ts[valid][uid[valid] == u].max() < held.min()
        assert ts[train][uid[train] == u].max() < ts[valid][uid[valid] == u].min()
        assert len(held) + (uid[valid] == u).sum() + (uid[train] == u).sum() == mine.sum()


def test_global_time_split_holds_out_the_latest_rows(tmp_path: Path) -> None:
    df = frame()
    df["ts"] = df["ts"] // 7  # ties: broken by row order
    data = load_custom(parquet(tmp_path, df), spec(), time_column="ts", holdout_bp=2500)
    order = np.lexsort((np.arange(N), df["ts"].to_numpy()))
    n_test = 1500  # ceil(6000 * 25%)
    n_valid = 450  # ceil(4500 * 10%)
    assert set(rows_of(data.test)) == set(order[-n_test:])
    assert set(rows_of(data.valid)) == set(order[-n_test - n_valid : -n_test])
    assert set(rows_of(data.train)) == set(order[: -n_test - n_valid])


def test_time_split_accepts_date_strings(tmp_path: Path) -> None:
    df = frame()
    df["when"] = pd.to_datetime(df["ts"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
    csv = tmp_path / "dates.csv"
    df.to_csv(csv, index=False)
    by_date = load_custom(str(csv), spec(), time_column="when", user_column="uid")
    by_number = load_custom(str(csv), spec(), time_column="ts", user_column="uid")
    np.testing.assert_array_equal(rows_of(by_date.test), rows_of(by_number.test))


def test_test_file_split_validates_on_a_seeded_tenth(tmp_path: Path) -> None:
    train_df, test_df = frame(seed=1, per_user=20), frame(seed=2, per_user=12)
    train, test = parquet(tmp_path, train_df, "train.parquet"), parquet(tmp_path, test_df)
    data = load_custom(train, spec(), test_uri=test, seed=5)
    assert (len(data.train), len(data.valid), len(data.test)) == (1800, 200, 1200)
    np.testing.assert_array_equal(rows_of(data.test), np.arange(1200))
    again = load_custom(train, spec(), test_uri=test, seed=5)
    other = load_custom(train, spec(), test_uri=test, seed=6)
    np.testing.assert_array_equal(rows_of(again.valid), rows_of(data.valid))
    assert set(rows_of(other.valid)) != set(rows_of(data.valid))
    # with a time column, the train part's latest tenth validates
    timed = load_custom(train, spec(), test_uri=test, time_column="ts")
    latest = np.argsort(train_df["ts"].to_numpy())[-200:]
    assert set(rows_of(timed.valid)) == set(latest)


# --- labels ------------------------------------------------------------------------


@pytest.mark.parametrize("as_type", [bool, np.int32, np.float64])
def test_labels_may_be_bools_ints_or_whole_floats(tmp_path: Path, as_type: Any) -> None:
    df = frame()
    df["clicked"] = df["clicked"].astype(as_type)
    data = load_custom(parquet(tmp_path, df), spec(), time_column="ts")
    assert data.test.label.dtype == np.float32
    total = sum(float(s.label.sum()) for s in (data.train, data.valid, data.test))
    assert total == df["clicked"].astype(float).sum()


@pytest.mark.parametrize(
    ("bad", "example"), [(2, "2.0"), (0.5, "0.5"), (np.nan, "nan"), ("yes", "(e.g. '")]
)
def test_labels_other_than_0_1_are_refused(tmp_path: Path, bad: Any, example: str) -> None:
    df = frame()
    if isinstance(bad, str):  # a string column: every value is bad
        df["clicked"] = df["clicked"].map({0: "no", 1: bad})
    else:
        df["clicked"] = df["clicked"].astype(float)
        df.loc[[4, 9, 17], "clicked"] = bad
    uri = parquet(tmp_path, df)
    with pytest.raises(DatasetError) as err:
        load_custom(uri, spec(), time_column="ts")
    text = message(err)
    assert text.startswith(f"eval data {uri}: label column 'clicked' has ")
    expected = N if isinstance(bad, str) else 3
    assert f"has {expected} values that are not 0/1 (e.g. " in text
    assert example in text


# --- sparse ids and OOV ------------------------------------------------------------


def test_oov_hash_maps_negative_large_and_string_ids_stably(tmp_path: Path) -> None:
    df = frame()
    df.loc[:9, "item"] = -3
    df.loc[10:19, "item"] = N_ITEMS + 7
    city = SparseFeature(name="city", vocab_size=50, side="user", oov="hash")
    item = SparseFeature(name="item_id", column="item", vocab_size=N_ITEMS, side="item", oov="hash")
    custom = spec(city).model_copy(update={"sparse": [spec().sparse[0], item, city]})
    uri = parquet(tmp_path, df)
    first = load_custom(uri, custom, time_column="ts")
    second = load_custom(uri, custom, time_column="ts")
    np.testing.assert_array_equal(first.train.sparse, second.train.sparse)
    everything = np.concatenate([s.sparse for s in (first.train, first.valid, first.test)])
    rows = np.concatenate([rows_of(s) for s in (first.train, first.valid, first.test)])
    item_ids = everything[:, 1]
    assert (item_ids[rows < 10] == N_ITEMS - 3).all()  # -3 mod 500
    assert (item_ids[(rows >= 10) & (rows < 20)] == 7).all()
    cities = df["city"].to_numpy()[rows]
    expected = np.mod(hash_strings(cities), 50)
    np.testing.assert_array_equal(everything[:, 2], expected)
    assert len(np.unique(everything[:, 2])) == 3 and (everything[:, 2] < 50).all()


@pytest.mark.parametrize(("oov_id", "row"), [(None, N_ITEMS - 1), (0, 0)])
def test_oov_id_maps_outside_ids_to_the_oov_row(
    tmp_path: Path, oov_id: int | None, row: int
) -> None:
    df = frame()
    df.loc[:4, "item"] = N_ITEMS * 3
    df["item"] = df["item"].astype(float)
    df.loc[5:6, "item"] = np.nan  # missing: out of vocabulary too
    item = SparseFeature(
        name="item_id", column="item", vocab_size=N_ITEMS, side="item", oov="id", oov_id=oov_id
    )
    custom = spec().model_copy(update={"sparse": [spec().sparse[0], item]})
    data = load_custom(parquet(tmp_path, df), custom, time_column="ts")
    ids = np.concatenate([s.sparse[:, 1] for s in (data.train, data.valid, data.test)])
    rows = np.concatenate([rows_of(s) for s in (data.train, data.valid, data.test)])
    assert (ids[rows < 7] == row).all()
    np.testing.assert_array_equal(ids[rows >= 7], df["item"].to_numpy()[rows[rows >= 7]])


def test_ids_outside_the_vocabulary_need_an_oov_rule(tmp_path: Path) -> None:
    df = frame()
    df.loc[:4, "item"] = [N_ITEMS, N_ITEMS + 1, 9999, -1, 3]
    uri = parquet(tmp_path, df)
    with pytest.raises(DatasetError) as err:
        load_custom(uri, spec(), time_column="ts")
    text = message(err)
    assert text.startswith(f"eval data {uri}: column 'item' (sparse feature item_id) has 4 ids")
    assert f"outside its vocabulary [0, {N_ITEMS})" in text and "largest 9999" in text
    assert "set oov: hash or oov: id on item_id" in text


def test_missing_ids_without_oov_are_counted(tmp_path: Path) -> None:
    df = frame()
    df["item"] = df["item"].astype(float)
    df.loc[:2, "item"] = np.nan
    with pytest.raises(DatasetError) as err:
        load_custom(parquet(tmp_path, df), spec(), time_column="ts")
    assert "has 3 ids outside its vocabulary [0, 500), 3 of them missing values" in message(err)


def test_whole_float_ids_are_ids_and_fractions_are_refused(tmp_path: Path) -> None:
    df = frame()
    df["item"] = df["item"].astype(float)
    data = load_custom(parquet(tmp_path, df), spec(), time_column="ts")
    assert data.test.sparse.dtype == np.int64
    np.testing.assert_array_equal(data.test.sparse[:, 1], df["item"].to_numpy()[rows_of(data.test)])
    df.loc[8, "item"] = 2.5
    with pytest.raises(DatasetError) as err:
        load_custom(parquet(tmp_path, df), spec(), time_column="ts")
    assert "column 'item' (sparse feature item_id) holds 1 values that are not whole" in str(
        err.value
    )


def test_string_ids_need_oov_hash(tmp_path: Path) -> None:
    city = SparseFeature(name="home", column="city", vocab_size=50, side="user")
    uri = parquet(tmp_path, frame())
    with pytest.raises(DatasetError) as err:
        load_custom(uri, spec(city), time_column="ts")
    text = message(err)
    assert text.startswith(f"eval data {uri}: column 'city' (sparse feature home) holds strings")
    assert "set oov: hash on home" in text


# --- dense values ------------------------------------------------------------------


def test_dense_strings_are_refused(tmp_path: Path) -> None:
    df = frame()
    df["emb_1"] = df["emb_1"].astype(str)
    df.loc[2, "emb_1"] = "abc"
    csv = tmp_path / "eval.csv"
    df.to_csv(csv, index=False)
    with pytest.raises(DatasetError) as err:
        load_custom(str(csv), spec(), time_column="ts")
    assert "dense column 'emb_1' (feature emb) holds strings (e.g. 'abc')" in message(err)


def test_dense_nan_is_counted_or_filled(tmp_path: Path) -> None:
    df = frame()
    df.loc[[3, 30, 300], "price"] = np.nan
    uri = parquet(tmp_path, df)
    with pytest.raises(DatasetError) as err:
        load_custom(uri, spec(), time_column="ts")
    text = message(err)
    assert text.startswith(f"eval data {uri}: dense column 'price' (feature price) has 3 missing")
    assert "set fill on price" in text
    data = load_custom(uri, spec(price=-1.0), time_column="ts")
    values = np.concatenate([s.dense[:, 0] for s in (data.train, data.valid, data.test)])
    assert (values == -1.0).sum() == 3 and np.isfinite(values).all()


def test_dense_infinity_is_refused_even_with_fill(tmp_path: Path) -> None:
    df = frame()
    df.loc[[1, 2], "price"] = [np.inf, -np.inf]
    df.loc[3, "price"] = 1e300  # beyond float32
    with pytest.raises(DatasetError) as err:
        load_custom(parquet(tmp_path, df), spec(price=0.0), time_column="ts")
    assert "dense column 'price' (feature price) has 3 infinite values" in message(err)


# --- columns, sizes, splits and sources: the errors --------------------------------


def test_missing_label_column(tmp_path: Path) -> None:
    uri = parquet(tmp_path, frame().drop(columns="clicked"))
    with pytest.raises(DatasetError) as err:
        load_custom(uri, spec(), time_column="ts")
    text = message(err)
    assert text.startswith(f"eval data {uri}: missing columns: 'clicked' (label);")
    assert "the data has 'uid', 'item', 'ts'" in text


def test_every_missing_column_is_listed_once(tmp_path: Path) -> None:
    uri = parquet(tmp_path, frame().drop(columns=["item", "emb_1"]))
    extra = SparseFeature(name="device", vocab_size=4, side="user")
    with pytest.raises(DatasetError) as err:
        load_custom(uri, spec(extra), time_column="when", user_column="uid")
    text = message(err)
    for part in (
        "'item' (sparse feature item_id)",
        "'device' (sparse feature device)",
        "'emb_1' (dense feature emb)",
        "'when' (time column)",
    ):
        assert part in text
    assert "'uid' (" not in text and "'price' (" not in text


def test_missing_columns_in_the_test_file_name_it(tmp_path: Path) -> None:
    train = parquet(tmp_path, frame(), "train.parquet")
    test = parquet(tmp_path, frame(seed=1).drop(columns="price"), "test.parquet")
    with pytest.raises(DatasetError) as err:
        load_custom(train, spec(), test_uri=test)
    assert message(err).startswith(f"eval data {test}: missing columns: 'price' (dense feature")


def test_too_few_test_rows(tmp_path: Path) -> None:
    uri = parquet(tmp_path, frame(per_user=40))  # 100 users x ceil(8) = 800 held out
    with pytest.raises(DatasetError) as err:
        load_custom(uri, spec(), time_column="ts", user_column="uid")
    text = message(err)
    assert text.startswith(f"eval data {uri}: the test split has 800 rows (")
    assert "a stable AUC needs at least 1000 held-out rows with at least 100 of each class" in text


def test_too_few_of_one_class(tmp_path: Path) -> None:
    df = frame()
    df["clicked"] = (np.arange(N) % 100 == 0).astype(int)  # 1% positive
    train = parquet(tmp_path, df, "train.parquet")
    test = parquet(tmp_path, df.head(3000), "test.parquet")
    with pytest.raises(DatasetError) as err:
        load_custom(train, spec(), test_uri=test)
    text = message(err)
    assert text.startswith(f"eval data {test}: the test split has 3000 rows (30 positive, 2970 ")
    assert "give a bigger test file" in text


def test_empty_train_part(tmp_path: Path) -> None:
    train = parquet(tmp_path, frame().head(1), "train.parquet")
    with pytest.raises(DatasetError) as err:
        load_custom(train, spec(), test_uri=parquet(tmp_path, frame()))
    assert message(err).startswith(f"eval data {train}: the train part has 0 rows left")


def test_a_split_must_be_declared(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_custom(parquet(tmp_path, frame()), spec())
    text = message(err)
    assert "no split declared" in text and "--time-column" in text and "--user-column" in text
    assert "--eval-test-data" in text and "evalDataset.testUri" in text
    with pytest.raises(DatasetError, match="give --time-column"):
        load_custom(parquet(tmp_path, frame()), spec(), user_column="uid", test_uri="x")


def test_time_column_with_missing_values(tmp_path: Path) -> None:
    df = frame()
    df["ts"] = df["ts"].astype(float)
    df.loc[[0, 1], "ts"] = np.nan
    with pytest.raises(DatasetError) as err:
        load_custom(parquet(tmp_path, df), spec(), time_column="ts")
    assert "time column 'ts' has 2 values that are missing or not times" in message(err)


def test_a_path_that_does_not_exist(tmp_path: Path) -> None:
    uri = str(tmp_path / "nope.parquet")
    with pytest.raises(DatasetNotFoundError) as err:
        load_custom(uri, spec(), time_column="ts")
    assert message(err).startswith(f"eval data {uri}: not found")
    assert isinstance(err.value, DatasetError)


def test_an_unreachable_url() -> None:
    uri = "http://127.0.0.1:9/x.parquet"
    with pytest.raises(DatasetNotFoundError) as err:
        load_custom(uri, spec(), time_column="ts")
    assert message(err).startswith(f"eval data {uri}: cannot be reached (")
    assert "check the URI" in message(err)


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "eval.parquet"
    path.write_text("not parquet at all")
    with pytest.raises(DatasetError) as err:
        load_custom(str(path), spec(), time_column="ts")
    assert message(err).startswith(f"eval data {path}: is not a readable parquet file")


def test_unknown_extension_asks_for_the_format(tmp_path: Path) -> None:
    path = tmp_path / "eval.dat"
    frame().to_csv(path, index=False)
    with pytest.raises(DatasetError) as err:
        load_custom(str(path), spec(), time_column="ts")
    text = message(err)
    assert text.startswith(f"eval data {path}: cannot tell the format from the extension '.dat'")
    assert "--eval-format" in text
    with pytest.raises(DatasetError, match="unknown format 'json'"):
        load_custom(str(path), spec(), fmt="json", time_column="ts")
