"""A user's own evaluation data (Parquet, CSV or Criteo TSV), in the model's input layout.

The feature spec says which data column feeds each input (``SparseFeature.column``,
``DenseFeature.columns``, ``FeatureSpec.label``) and what out-of-vocabulary ids become
(``SparseFeature.oov``, the same mapping the server applies to requests). Data is read
from a local path or any fsspec URI (``file://``, ``memory://``, ``s3://``,
``http(s)://``); only the columns the spec names are read.

The split must be declared, never guessed: a ready-made test file (``test_uri``), or a
time column whose latest ``holdout_bp`` basis points of rows are the test (per user with
a user column). The latest 10% of the rest validate (early stopping).

Every problem is a :class:`~recserve_runtime.data.tabular.DatasetError` whose message
starts with ``eval data <uri>:``, names the column and the spec field, and says what to
do; a URI that cannot be reached or read is a ``DatasetNotFoundError``.

Conversions: sparse ids are integers (floats with whole values, bools and Criteo's hex
strings too); a missing id is -1, which is out of vocabulary; string ids need
``oov: hash``. Dense values are numbers or bools; missing ones need the feature's
``fill``; infinities are refused. Labels are 0/1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recserve_runtime.artifacts import FeatureSpec, Oov, SparseFeature
from recserve_runtime.data.oov import hash_strings, map_ids
from recserve_runtime.data.tabular import (
    VALID_BP,
    DatasetError,
    DatasetNotFoundError,
    Split,
    TabularData,
    ceil_share,
    time_split_masks,
)

FORMATS = ("parquet", "csv", "criteo")
MIN_TEST_ROWS = 1000  # fewer held-out rows give an AUC too noisy to rank variants by
MIN_CLASS_ROWS = 100  # likewise for either class
CRITEO_COLUMNS = ["label", *(f"I{k}" for k in range(1, 14)), *(f"C{k}" for k in range(1, 27))]
_CRITEO_HEX = frozenset(f"C{k}" for k in range(1, 27))
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "criteo",
    ".txt": "criteo",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")  # text formats may be compressed
_SHOWN_COLUMNS = 20
# Hex digit value per byte; -1 for every byte that is not one.
_HEX_DIGITS = np.full(256, -1, np.int64)
for _k, _c in enumerate("0123456789abcdef"):
    _HEX_DIGITS[ord(_c)] = _HEX_DIGITS[ord(_c.upper())] = _k
_MAX_HEX_DIGITS = 15  # 16**15 still fits an int64
_POWERS_OF_16 = 16 ** np.arange(_MAX_HEX_DIGITS, dtype=np.int64)


@dataclass(frozen=True)
class _Source:
    """One data file (or Parquet folder), resolved to a filesystem and a format."""

    uri: str
    fs: Any  # fsspec.AbstractFileSystem (untyped)
    path: str
    fmt: str

    def fail(self, message: str) -> DatasetError:
        return DatasetError(f"eval data {self.uri}: {message}")


def load_custom(
    uri: str,
    spec: FeatureSpec,
    *,
    fmt: str | None = None,
    test_uri: str | None = None,
    time_column: str | None = None,
    user_column: str | None = None,
    holdout_bp: int = 2000,
    seed: int = 0,
) -> TabularData:
    """Load custom eval data into train / valid / test splits for ``spec``.

    ``fmt``: parquet, csv or criteo (None: from each file's extension; a folder is
    Parquet). The split: ``test_uri``, a ready-made test file (``uri`` is then the train
    part); else ``time_column``: the latest ``holdout_bp`` basis points of rows (rounded
    up) are the test, each user's latest with ``user_column``. Validation (early
    stopping) is the latest 10% of the train part by time (each user's latest with
    ``user_column`` and no test file; a ``seed``-ed random 10% with a test file and no
    time column). Ties in time go by row order. Raises DatasetError
    (DatasetNotFoundError where a URI cannot be reached or read).
    """
    if test_uri is None and time_column is None:
        raise DatasetError(
            f"eval data {uri}: no split declared: give --time-column (and --user-column for "
            "a per-user split), i.e. evalDataset.timeColumn/userColumn, or a ready-made test "
            "file with --eval-test-data, i.e. evalDataset.testUri"
        )
    if user_column is not None and time_column is None:
        raise DatasetError(
            f"eval data {uri}: the user column {user_column!r} splits each user's rows by "
            "time: give --time-column (evalDataset.timeColumn) too"
        )
    if not 0 < holdout_bp < 10_000:
        raise DatasetError(
            f"eval data {uri}: holdout of {holdout_bp} basis points: give 1 to 9999 "
            "(--holdout-bp, evalDataset.holdoutBasisPoints)"
        )
    split_columns = [
        (column, role)
        for column, role in ((time_column, "time column"), (user_column, "user column"))
        if column is not None
    ]

    source = _resolve(uri, fmt)
    frame = _read(source, spec, split_columns)
    whole = _to_split(source, frame, spec)
    ts = None if time_column is None else _times(source, frame[time_column], time_column)
    if test_uri is not None:
        test_source = _resolve(test_uri, fmt)
        test = _to_split(test_source, _read(test_source, spec, []), spec)
        _check_test(test_source, test)
        if ts is None:
            valid = np.zeros(len(whole), bool)
            n_valid = int(ceil_share(np.array(len(whole)), VALID_BP))
            valid[np.random.default_rng(seed).choice(len(whole), n_valid, replace=False)] = True
        else:  # the latest rows of the train part, overall
            valid, _ = time_split_masks(np.zeros(len(ts), np.int8), ts, VALID_BP, 0)
        train = _take(whole, ~valid)
        valid_split = _take(whole, valid)
    else:
        assert ts is not None  # a time column: checked at the top
        groups = np.zeros(len(ts), np.int8) if user_column is None else _groups(frame[user_column])
        test_mask, valid = time_split_masks(groups, ts, holdout_bp, VALID_BP)
        test = _take(whole, test_mask)
        _check_test(source, test, holdout_bp)
        train = _take(whole, ~(test_mask | valid))
        valid_split = _take(whole, valid)
    if len(train) == 0:
        raise source.fail(
            f"the train part has {len(train)} rows left after the test and validation "
            f"rows ({len(valid_split)} validate): at least 1 is needed to train students; "
            "give more training data"
        )
    name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or uri
    return TabularData(name=name, spec=spec, train=train, valid=valid_split, test=test)


# --- reading -------------------------------------------------------------------------


def _resolve(uri: str, fmt: str | None) -> _Source:
    """The filesystem, path and format of ``uri``; DatasetNotFoundError if it is not there."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        # info, not exists: exists says False for a server that cannot be reached, too.
        is_dir = fs.info(path).get("type") == "directory"
    except FileNotFoundError as exc:
        # Some filesystems (http) say "not found" for what they could not reach.
        cause = exc.__cause__
        what = (
            "not found (no such file or folder)"
            if cause is None
            else f"cannot be reached ({type(cause).__name__}: {cause})"
        )
        raise DatasetNotFoundError(
            f"eval data {uri}: {what}; check the URI, and that the build can reach it "
            "(network, credentials)"
        ) from exc
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"eval data {uri}: reading this URI needs a package that is not installed "
            f"({exc}); install it (e.g. s3fs for s3://) or copy the data to a local path"
        ) from exc
    except Exception as exc:  # any filesystem's failure there means "cannot reach"
        raise DatasetNotFoundError(
            f"eval data {uri}: cannot be reached ({type(exc).__name__}: {exc}); check the "
            "URI and the credentials or network access it needs"
        ) from exc
    source = _Source(uri, fs, path, _format(uri, fmt, is_dir))
    if is_dir and source.fmt != "parquet":
        raise source.fail(f"is a folder: only Parquet data can be a folder, not {source.fmt}")
    return source


def _format(uri: str, fmt: str | None, is_dir: bool) -> str:
    """``fmt`` checked, or the format the file name says."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise DatasetError(
                f"eval data {uri}: unknown format {fmt!r}: use one of {', '.join(FORMATS)}"
            )
        return fmt
    if is_dir:
        return "parquet"
    name = uri.split("?", 1)[0].lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name.removesuffix(suffix)
            break
    ext = "." + name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
    if ext not in _EXTENSIONS:
        known = ", ".join(sorted(_EXTENSIONS))
        raise DatasetError(
            f"eval data {uri}: cannot tell the format from the extension {ext or '(none)'!r} "
            f"(known: {known}, or a folder of Parquet files): pass the format with "
            f"--eval-format ({', '.join(FORMATS)})"
        )
    return _EXTENSIONS[ext]


def _read(source: _Source, spec: FeatureSpec, extra: list[tuple[str, str]]) -> Any:
    """The columns ``spec`` (and ``extra``: (column, role)) names, as a pandas DataFrame;
    one error lists every column the data lacks."""
    wanted = _wanted_columns(spec, extra)
    names = list(dict.fromkeys(c for c, _ in wanted))
    try:
        if source.fmt == "parquet":
            return _read_parquet(source, wanted, names)
        return _read_text(source, wanted, names)
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetNotFoundError(
            f"eval data {source.uri}: cannot be read ({type(exc).__name__}: {exc}); check "
            "the URI and the access it needs"
        ) from exc
    except ValueError as exc:  # pyarrow's ArrowInvalid, pandas' ParserError, decode errors
        raise source.fail(
            f"is not a readable {source.fmt} file ({type(exc).__name__}: {exc}); check the "
            "file, or pass the right format with --eval-format"
        ) from exc


def _wanted_columns(spec: FeatureSpec, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(column, the spec field that names it) for every column the data must have."""
    wanted = [(spec.label, "label")]
    wanted += [(f.data_column, f"sparse feature {f.name}") for f in spec.sparse]
    wanted += [(c, f"dense feature {f.name}") for f in spec.dense for c in f.data_columns]
    return wanted + extra


def _check_columns(source: _Source, have: list[str], wanted: list[tuple[str, str]]) -> None:
    present = set(have)
    missing = [f"{c!r} ({role})" for c, role in wanted if c not in present]
    if not missing:
        return
    shown = ", ".join(repr(c) for c in have[:_SHOWN_COLUMNS])
    more = f" ... ({len(have)} in all)" if len(have) > _SHOWN_COLUMNS else ""
    raise source.fail(
        f"missing columns: {', '.join(missing)}; the data has {shown or 'no columns'}{more}. "
        "Name the data's columns in the feature spec (label; column on a sparse feature; "
        "columns on a dense feature) or add them to the data"
    )


def _read_parquet(source: _Source, wanted: list[tuple[str, str]], names: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = ds.dataset(source.path, filesystem=source.fs, format="parquet")
    if not dataset.files:
        raise source.fail("the folder holds no Parquet files; check the URI")
    _check_columns(source, list(dataset.schema.names), wanted)
    table = dataset.to_table(columns=names)
    # Dictionary-encoded columns (pandas categoricals) as their plain values.
    columns = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table]
    return pa.table(columns, names=table.column_names).to_pandas()


def _open(source: _Source) -> Any:
    import fsspec

    return fsspec.open(source.uri, "rb", compression="infer")


def _read_text(source: _Source, wanted: list[tuple[str, str]], names: list[str]) -> Any:
    if source.fmt == "criteo":
        return _read_criteo(source, wanted, names)
    import pandas as pd

    with _open(source) as f:
        have = [str(c) for c in pd.read_csv(f, nrows=0).columns]
    _check_columns(source, have, wanted)
    with _open(source) as f:
        # One pass over each column (low_memory=False): a column's type is that of all
        # its rows, not of each chunk's.
        return pd.read_csv(f, usecols=names, low_memory=False)


def _read_criteo(source: _Source, wanted: list[tuple[str, str]], names: list[str]) -> Any:
    """Criteo TSV via pyarrow's multi-threaded reader (such files are large); the hex
    categoricals become ids, an empty one -1."""
    import pyarrow as pa
    import pyarrow.csv as pv

    with _open(source) as f:
        first = f.readline().rstrip(b"\r\n")
    fields = first.count(b"\t") + 1 if first else 0
    if fields != len(CRITEO_COLUMNS):
        raise source.fail(
            f"a Criteo line has {len(CRITEO_COLUMNS)} tab-separated fields (label, I1..I13, "
            f"C1..C26); this file's first line has {fields}: check the file, or pass "
            "--eval-format csv for a file with a header"
        )
    _check_columns(source, CRITEO_COLUMNS, wanted)
    hex_columns = [c for c in names if c in _CRITEO_HEX]
    with _open(source) as f:
        table = pv.read_csv(
            f,
            # Big blocks: few, long chunks for the vectorised hex parse.
            read_options=pv.ReadOptions(column_names=CRITEO_COLUMNS, block_size=1 << 26),
            parse_options=pv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pv.ConvertOptions(
                include_columns=names,
                column_types=dict.fromkeys(hex_columns, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
    ids = {c: _hex_ids(source, table.column(c), c) for c in hex_columns}
    frame = table.drop_columns(hex_columns).to_pandas()
    for column, values in ids.items():
        frame[column] = values
    return frame


def _hex_ids(source: _Source, values: Any, column: str) -> np.ndarray:
    """A pyarrow string column of hex ids as int64 ids (null: -1)."""
    chunks = [_hex_chunk(source, chunk, column) for chunk in values.chunks]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


def _hex_chunk(source: _Source, strings: Any, column: str) -> np.ndarray:
    """One pyarrow string array of hex ids as int64 ids (null: -1), vectorised over the
    array's bytes."""
    present = np.flatnonzero(~strings.is_null().to_numpy(zero_copy_only=False))
    ids = np.full(len(strings), -1, np.int64)
    if not len(present):
        return ids
    _, offsets_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int32)[strings.offset :][: len(strings) + 1]
    data = (
        np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    )
    starts = offsets[present].astype(np.int64)
    lengths = offsets[present + 1] - starts
    width = int(lengths[0])
    if (
        0 < width <= _MAX_HEX_DIGITS
        and (lengths == width).all()
        and (np.diff(starts) == width).all()
    ):  # the usual case (Criteo's ids are 8 digits): a [rows, width] byte matrix
        values, bad = _hex_fixed(data[starts[0] : starts[0] + len(present) * width], width)
    else:
        values, bad = _hex_ragged(data, starts, lengths)
    if bad.any():
        example = strings[int(present[np.flatnonzero(bad)[0]])].as_py()
        raise source.fail(
            f"Criteo column {column!r} holds {int(bad.sum())} values that are not hex ids "
            f"(e.g. {example!r}): check the file, or pass --eval-format csv or parquet for "
            "other data"
        )
    ids[present] = values
    return ids


def _hex_fixed(data: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, not-hex mask) of back-to-back hex strings of ``width`` digits each."""
    digits = _HEX_DIGITS[data.reshape(-1, width)]
    values = np.zeros(len(digits), np.int64)
    for k in range(width):  # Horner's rule over the few digit places
        values = values * 16 + digits[:, k]
    return values, (digits < 0).any(axis=1)


def _hex_ragged(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(values, not-hex mask) of hex strings of any length: each byte's digit times 16
    to the power of its place from the string's end, summed per string."""
    bad = (lengths == 0) | (lengths > _MAX_HEX_DIGITS)
    if bad.any():  # values are not needed: the caller fails
        return np.zeros(len(lengths), np.int64), bad
    first_byte = np.cumsum(lengths) - lengths  # of each string, among the gathered bytes
    within = np.arange(int(lengths.sum())) - np.repeat(first_byte, lengths)
    digits = _HEX_DIGITS[data[np.repeat(starts, lengths) + within]]
    bad[np.repeat(np.arange(len(lengths)), lengths)[digits < 0]] = True
    place = np.repeat(lengths, lengths) - 1 - within
    return np.add.reduceat(digits * _POWERS_OF_16[place], first_byte), bad


# --- columns into the model's layout -------------------------------------------------


def _to_split(source: _Source, frame: Any, spec: FeatureSpec) -> Split:
    """The model's inputs and labels of every row of ``frame``."""
    n = len(frame)
    sparse = np.empty((n, len(spec.sparse)), np.int64)
    for k, feature in enumerate(spec.sparse):
        sparse[:, k] = _sparse_ids(source, frame[feature.data_column], feature)
    dense = np.empty((n, spec.n_dense), np.float32)
    k = 0
    for dense_feature in spec.dense:
        for column in dense_feature.data_columns:
            dense[:, k] = _dense_values(
                source, frame[column], column, dense_feature.name, dense_feature.fill
            )
            k += 1
    return Split(sparse, dense, _labels(source, frame[spec.label], spec.label))


def _kind(values: Any) -> str:
    """bool, int, float, string or other: what a column holds (object columns by content)."""
    import pandas as pd

    api = pd.api.types
    if api.is_bool_dtype(values.dtype):
        return "bool"
    if api.is_integer_dtype(values.dtype):
        return "int"
    if api.is_float_dtype(values.dtype):
        return "float"
    if api.is_string_dtype(values.dtype) or api.is_object_dtype(values.dtype):
        inferred = api.infer_dtype(values, skipna=True)
        numeric = ("boolean", "integer", "floating", "mixed-integer-float", "decimal", "empty")
        if inferred in numeric:
            return "float"  # e.g. bools or ints with missing values, from Parquet
        if inferred in ("string", "bytes", "mixed", "mixed-integer"):
            return "string"
    return "other"


def _first(values: Any, mask: np.ndarray) -> Any:
    """The first value where ``mask`` holds, as a plain Python value (shown with repr)."""
    value = values.iloc[int(np.flatnonzero(mask)[0])]
    return value.item() if isinstance(value, np.generic) else value


def _sparse_ids(source: _Source, values: Any, feature: SparseFeature) -> np.ndarray:
    """One sparse feature's ids, mapped per ``feature.oov``; an error where any stays
    outside the vocabulary."""
    column, name = feature.data_column, feature.name
    missing = values.isna().to_numpy()
    kind = _kind(values)
    if kind == "int":
        ids = values.to_numpy(dtype=np.int64, na_value=-1)
    elif kind == "string":
        if feature.oov != Oov.HASH:
            raise source.fail(
                f"column {column!r} (sparse feature {name}) holds strings (e.g. "
                f"{_first(values, ~missing)!r}): set oov: hash on {name} in the feature spec "
                "to hash them into its vocabulary, or map them to integer ids in the data"
            )
        ids = np.full(len(values), -1, np.int64)
        ids[~missing] = hash_strings(values.to_numpy(dtype=object)[~missing].astype(str))
    elif kind in ("float", "bool"):
        floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isnan(floats) | ((floats == np.floor(floats)) & (np.abs(floats) < 2.0**63))
        if not whole.all():
            raise source.fail(
                f"column {column!r} (sparse feature {name}) holds {int((~whole).sum())} "
                f"values that are not whole numbers (e.g. {_first(values, ~whole)!r}): ids "
                "must be integers; fix the data or point the feature's column elsewhere"
            )
        ids = np.where(np.isnan(floats), -1, floats).astype(np.int64)
    else:
        raise source.fail(
            f"column {column!r} (sparse feature {name}) holds {values.dtype} values: ids "
            "must be integers (or strings with oov: hash); fix the data or the feature's column"
        )
    ids = map_ids(ids, feature)
    outside = (ids < 0) | (ids >= feature.vocab_size)
    if outside.any():
        count = int(outside.sum())
        n_missing = int((outside & missing).sum())
        gaps = f", {n_missing} of them missing values" if n_missing else ""
        raise source.fail(
            f"column {column!r} (sparse feature {name}) has {count} ids outside its "
            f"vocabulary [0, {feature.vocab_size}){gaps} (largest {int(ids[outside].max())}, "
            f"e.g. {int(ids[outside][0])} at row {int(np.flatnonzero(outside)[0])}): set "
            f"oov: hash or oov: id on {name} in the feature spec (what the server then does "
            "too), or fix vocabSize or the data"
        )
    return np.asarray(ids, np.int64)


def _dense_values(
    source: _Source, values: Any, column: str, name: str, fill: float | None
) -> np.ndarray:
    """One dense column as float32; missing values filled with ``fill`` or refused."""
    import pandas as pd

    kind = _kind(values)
    if kind == "string":
        # Show a value that is not a number, where one is (CSV columns of numeric text).
        words = (pd.to_numeric(values, errors="coerce").isna() & values.notna()).to_numpy()
        example = _first(values, words if words.any() else values.notna().to_numpy())
        raise source.fail(
            f"dense column {column!r} (feature {name}) holds strings (e.g. {example!r}): "
            "dense features must be numbers; fix the data, or make it a sparse feature"
        )
    if kind == "other":
        raise source.fail(
            f"dense column {column!r} (feature {name}) holds {values.dtype} values: dense "
            "features must be numbers or bools; convert it in the data"
        )
    floats: np.ndarray = values.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(floats)
    if missing.any():
        if fill is None:
            raise source.fail(
                f"dense column {column!r} (feature {name}) has {int(missing.sum())} missing "
                f"(NaN or empty) values: set fill on {name} in the feature spec (the value "
                "they become), or fill them in the data"
            )
        floats = np.where(missing, fill, floats)
    with np.errstate(over="ignore"):
        out = floats.astype(np.float32)
    infinite = np.isinf(out)
    if infinite.any():
        raise source.fail(
            f"dense column {column!r} (feature {name}) has {int(infinite.sum())} infinite "
            "values (or beyond float32's range): replace them in the data"
        )
    return out


def _labels(source: _Source, values: Any, column: str) -> np.ndarray:
    """The label column as float32 0/1; any other value (missing ones too) is refused."""
    kind = _kind(values)
    floats: np.ndarray
    if kind in ("bool", "int", "float"):
        floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~((floats == 0.0) | (floats == 1.0))
    else:
        floats = np.zeros(len(values))
        bad = np.ones(len(values), bool)
    if bad.any():
        raise source.fail(
            f"label column {column!r} has {int(bad.sum())} values that are not 0/1 (e.g. "
            f"{_first(values, bad)!r}): labels must be 0/1 (bools, integers or 0.0/1.0); "
            "fix the data, or set label in the feature spec to the right column"
        )
    return floats.astype(np.float32)


def _times(source: _Source, values: Any, column: str) -> np.ndarray:
    """The time column as sortable numbers: numbers as they are, datetimes and date
    strings as microseconds."""
    import pandas as pd

    api = pd.api.types
    if api.is_numeric_dtype(values.dtype) and not api.is_bool_dtype(values.dtype):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isnan(out)
    else:
        try:
            when = pd.to_datetime(values, utc=True, errors="coerce")
        except (TypeError, ValueError) as exc:
            raise source.fail(
                f"time column {column!r} holds {values.dtype} values, not times ({exc}): it "
                "must hold numbers (e.g. unix seconds), datetimes or date strings"
            ) from exc
        bad = when.isna().to_numpy()
        out = when.dt.tz_localize(None).to_numpy("datetime64[us]").view(np.int64)
    if bad.any():
        raise source.fail(
            f"time column {column!r} has {int(bad.sum())} values that are missing or not "
            f"times (e.g. {_first(values, bad)!r}): it must hold numbers (e.g. unix seconds), "
            "datetimes or date strings in every row"
        )
    return np.asarray(out)


def _groups(values: Any) -> np.ndarray:
    """User ids as int64 group codes (any type; a missing user is one more group)."""
    import pandas as pd

    codes, _ = pd.factorize(values, sort=False)
    return np.asarray(codes, np.int64)


def _take(split: Split, mask: np.ndarray) -> Split:
    return Split(split.sparse[mask], split.dense[mask], split.label[mask])


def _check_test(source: _Source, test: Split, holdout_bp: int | None = None) -> None:
    """A held-out split big enough for a stable AUC."""
    positive = int(test.label.sum())
    negative = len(test) - positive
    if len(test) >= MIN_TEST_ROWS and min(positive, negative) >= MIN_CLASS_ROWS:
        return
    fix = (
        "give a bigger test file"
        if holdout_bp is None
        else f"give more data or a larger holdout than {holdout_bp} basis points "
        "(--holdout-bp, evalDataset.holdoutBasisPoints)"
    )
    raise source.fail(
        f"the test split has {len(test)} rows ({positive} positive, {negative} negative); a "
        f"stable AUC needs at least {MIN_TEST_ROWS} held-out rows with at least "
        f"{MIN_CLASS_ROWS} of each class: {fix}"
    )
