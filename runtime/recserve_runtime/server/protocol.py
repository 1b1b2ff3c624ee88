"""Request decoding and validation: OIP v2 infer (JSON and binary tensors) and /v1/rank.

Every rejection is a :class:`BadInput` naming the offending field, which the server turns
into HTTP 400. Out-of-vocabulary ids are rejected (400), not mapped to an OOV row,
unless the feature spec declares a mapping for the feature (``oov: hash`` or ``oov: id``,
applied exactly as the builder applied it to the eval data): without one, the tables
have no reserved OOV row, and silently scoring a client bug as an unknown item hides it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from recserve_runtime import artifacts
from recserve_runtime.data.oov import map_ids

# OIP v2 datatype <-> numpy
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_DATATYPE = {v.name: k for k, v in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"


class BadInput(ValueError):
    """A client error; ``field`` names where it is (JSON-path-like)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class Batch:
    """Model-ready rows of one request."""

    sparse: np.ndarray  # int64 [n, n_sparse]
    dense: np.ndarray  # float32 [n, n_dense]


@dataclass
class InferRequest:
    """A decoded OIP v2 infer request."""

    id: str | None
    batch: Batch
    outputs: list[str]
    binary_outputs: bool


@dataclass
class RankRequest:
    """A decoded /v1/rank request."""

    batch: Batch
    ids: list[Any]
    top_k: int | None


def parse_json(body: bytes, field: str = "body") -> Any:
    """orjson.loads with malformed input mapped to BadInput."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(field, f"malformed JSON: {exc}") from None


class Validator:
    """Checks decoded tensors against one variant's manifest and limits."""

    def __init__(self, manifest: artifacts.Manifest, max_batch_rows: int) -> None:
        self.manifest = manifest
        self.max_batch_rows = max_batch_rows
        fs = manifest.feature_spec
        self.sparse_name = fs.sparse_input
        self.dense_name = fs.dense_input
        self.vocab = np.array([f.vocab_size for f in fs.sparse], dtype=np.int64)
        self.sparse_names = [f.name for f in fs.sparse]
        self.oov = [(col, f) for col, f in enumerate(fs.sparse) if f.oov is not None]
        self.n_sparse = len(fs.sparse)
        self.n_dense = sum(f.width for f in fs.dense)
        self.inputs = {t.name: t for t in manifest.inputs}
        self.output_names = [t.name for t in manifest.outputs]
        # user/item column indices (dense features may be several columns wide)
        self.sparse_user = [i for i, f in enumerate(fs.sparse) if f.side == "user"]
        self.sparse_item = [i for i, f in enumerate(fs.sparse) if f.side == "item"]
        dense_cols: list[tuple[str, str, list[int]]] = []
        col = 0
        for f in fs.dense:
            dense_cols.append((f.name, f.side, list(range(col, col + f.width))))
            col += f.width
        self.dense_user = [c for _, side, cols in dense_cols if side == "user" for c in cols]
        self.dense_item = [c for _, side, cols in dense_cols if side == "item" for c in cols]
        # contiguous column runs become slices (much cheaper to assign than index lists)
        self._cols = {
            name: _as_slice(cols)
            for name, cols in (
                ("sparse_user", self.sparse_user),
                ("sparse_item", self.sparse_item),
                ("dense_user", self.dense_user),
                ("dense_item", self.dense_item),
            )
        }
        self.sparse_by_side = {
            "user": [fs.sparse[i].name for i in self.sparse_user],
            "item": [fs.sparse[i].name for i in self.sparse_item],
        }
        self.dense_by_side = {
            side: [(n, len(cols)) for n, s, cols in dense_cols if s == side]
            for side in ("user", "item")
        }

    # --- shared checks -------------------------------------------------------------

    def check_batch(self, sparse: np.ndarray, dense: np.ndarray, fields: tuple[str, str]) -> Batch:
        """Rows, vocabulary and finiteness checks on model-ready arrays."""
        sfield, dfield = fields
        n = sparse.shape[0]
        if n == 0:
            raise BadInput(sfield, "batch is empty")
        if n > self.max_batch_rows:
            raise BadInput(
                sfield, f"batch of {n} rows exceeds the maximum of {self.max_batch_rows}"
            )
        if dense.shape[0] != n:
            raise BadInput(dfield, f"has {dense.shape[0]} rows, {sfield} has {n}")
        if self.oov:
            sparse = sparse.copy()  # may be a view of the request's buffer
            for col, feature in self.oov:
                sparse[:, col] = map_ids(sparse[:, col], feature)
        bad = (sparse < 0) | (sparse >= self.vocab)
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            raise BadInput(
                sfield,
                f"id {int(sparse[row, col])} at row {row}, column {col} "
                f"(feature {self.sparse_names[col]!r}) is outside the vocabulary "
                f"[0, {int(self.vocab[col])})",
            )
        if not np.isfinite(dense).all():
            row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(dense)))
            raise BadInput(dfield, f"NaN or infinite value at row {row}, column {col}")
        return Batch(sparse=sparse, dense=dense)

    # --- OIP v2 infer -----------------------------------------------------------

    def infer_request(self, body: bytes, header_length: int | None) -> InferRequest:
        """Decode an OIP v2 infer body (JSON, or JSON header + binary tensor data)."""
        if header_length is not None:
            if header_length < 0 or header_length > len(body):
                raise BadInput(
                    "Inference-Header-Content-Length",
                    f"{header_length} is outside the body of {len(body)} bytes",
                )
            doc = parse_json(body[:header_length])
            binary = memoryview(body)[header_length:]
        else:
            doc = parse_json(body)
            binary = memoryview(b"")
        if not isinstance(doc, dict):
            raise BadInput("body", "must be a JSON object")
        raw_inputs = doc.get("inputs")
        if not isinstance(raw_inputs, list) or not raw_inputs:
            raise BadInput("inputs", "must be a non-empty list")
        tensors: dict[str, np.ndarray] = {}
        offset = 0
        for i, item in enumerate(raw_inputs):
            field = f"inputs[{i}]"
            if not isinstance(item, dict):
                raise BadInput(field, "must be an object")
            name = item.get("name")
            if not isinstance(name, str) or name not in self.inputs:
                raise BadInput(
                    f"{field}.name",
                    f"unknown input {name!r}; the model's inputs are {', '.join(self.inputs)}",
                )
            if name in tensors:
                raise BadInput(f"{field}.name", f"input {name!r} given twice")
            spec = self.inputs[name]
            want = NUMPY_TO_DATATYPE[spec.dtype]
            datatype = item.get("datatype")
            if datatype != want:
                raise BadInput(f"{field}.datatype", f"{name} must be {want}, got {datatype!r}")
            shape = item.get("shape")
            if (
                not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                or len(shape) != len(spec.shape)
                or any(w != -1 and w != d for w, d in zip(spec.shape, shape, strict=True))
            ):
                raise BadInput(
                    f"{field}.shape", f"{name} must have shape {spec.shape}, got {shape}"
                )
            if shape[0] > self.max_batch_rows:
                raise BadInput(
                    f"{field}.shape[0]",
                    f"batch of {shape[0]} rows exceeds the maximum of {self.max_batch_rows}",
                )
            dtype = DATATYPES[want]
            count = math.prod(shape)
            params = item.get("parameters") or {}
            size = params.get("binary_data_size") if isinstance(params, dict) else None
            if size is not None:
                if not isinstance(size, int) or size != count * dtype.itemsize:
                    raise BadInput(
                        f"{field}.parameters.binary_data_size",
                        f"{size!r} bytes, shape {shape} of {want} needs {count * dtype.itemsize}",
                    )
                if offset + size > len(binary):
                    raise BadInput(f"{field}.parameters.binary_data_size", "past the body's end")
                arr = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
                offset += size
            else:
                data = item.get("data")
                if not isinstance(data, list):
                    raise BadInput(f"{field}.data", "must be a list (or use binary data)")
                arr = _to_array(data, dtype, f"{field}.data")
                if arr.size != count:
                    raise BadInput(
                        f"{field}.data", f"has {arr.size} values, shape {shape} needs {count}"
                    )
                arr = arr.reshape(shape)
            tensors[name] = arr
        missing = [n for n in self.inputs if n not in tensors]
        if missing:
            raise BadInput("inputs", f"missing input(s) {', '.join(missing)}")
        names = [self._find(raw_inputs, n) for n in (self.sparse_name, self.dense_name)]
        batch = self.check_batch(tensors[self.sparse_name], tensors[self.dense_name], names)  # type: ignore[arg-type]
        outputs, binary_out = self._requested_outputs(doc.get("outputs"))
        rid = doc.get("id")
        return InferRequest(
            id=str(rid) if rid is not None else None,
            batch=batch,
            outputs=outputs,
            binary_outputs=binary_out,
        )

    @staticmethod
    def _find(raw_inputs: list[Any], name: str) -> str:
        for i, item in enumerate(raw_inputs):
            if item.get("name") == name:
                return f"inputs[{i}].data"
        return "inputs"

    def _requested_outputs(self, raw: Any) -> tuple[list[str], bool]:
        if raw is None:
            return list(self.output_names), False
        if not isinstance(raw, list):
            raise BadInput("outputs", "must be a list")
        names: list[str] = []
        binary = False
        for i, item in enumerate(raw):
            name = item.get("name") if isinstance(item, dict) else None
            if name not in self.output_names:
                raise BadInput(
                    f"outputs[{i}].name",
                    f"unknown output {name!r}; the model's outputs are "
                    f"{', '.join(self.output_names)}",
                )
            params = item.get("parameters") or {}
            binary = binary or bool(isinstance(params, dict) and params.get("binary_data"))
            names.append(name)
        return names, binary

    # --- /v1/rank ---------------------------------------------------------------

    def rank_request(self, body: bytes) -> RankRequest:
        """Decode a /v1/rank body into one row per candidate (user features broadcast)."""
        return self.rank_doc(parse_json(body))

    def rank_doc(self, doc: Any) -> RankRequest:
        """Like :meth:`rank_request`, from an already parsed document."""
        if not isinstance(doc, dict):
            raise BadInput("body", "must be a JSON object")
        user = doc.get("user", {})
        if not isinstance(user, dict):
            raise BadInput("user", "must be an object")
        cands = doc.get("candidates")
        if not isinstance(cands, list) or not cands:
            raise BadInput("candidates", "must be a non-empty list")
        n = len(cands)
        if n > self.max_batch_rows:
            raise BadInput(
                "candidates", f"{n} candidates exceed the maximum of {self.max_batch_rows}"
            )
        top_k = doc.get("top_k")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise BadInput("top_k", f"must be a positive integer, got {top_k!r}")
        u_sparse = self._side_values(user.get("sparse"), "user", "sparse", "user.sparse")
        u_dense = self._side_values(user.get("dense"), "user", "dense", "user.dense")
        fast = self._fast_items(cands)
        if fast is not None:
            ids, item_sparse, item_dense = fast
        else:
            ids, item_sparse, item_dense = self._slow_items(cands)
        sparse = np.empty((n, self.n_sparse), dtype=np.int64)
        dense = np.empty((n, self.n_dense), dtype=np.float32)
        try:
            self._fill(sparse, dense, u_sparse, u_dense, item_sparse, item_dense)
        except BadInput:
            raise
        except ValueError as exc:
            raise BadInput("candidates", f"values do not fit the feature layout: {exc}") from None
        try:
            batch = self.check_batch(sparse, dense, ("sparse", "dense"))
        except BadInput as exc:
            raise self._rank_field(exc) from None
        return RankRequest(batch=batch, ids=ids, top_k=top_k)

    def _fill(
        self,
        sparse: np.ndarray,
        dense: np.ndarray,
        u_sparse: list[Any],
        u_dense: list[Any],
        item_sparse: Any,
        item_dense: Any,
    ) -> None:
        """Write user (broadcast) and item columns into the model-ready arrays."""
        c = self._cols
        if self.sparse_user:
            sparse[:, c["sparse_user"]] = _to_array(u_sparse, np.dtype(np.int64), "user.sparse")
        if self.sparse_item:
            sparse[:, c["sparse_item"]] = _to_array(
                item_sparse, np.dtype(np.int64), "candidates[].sparse"
            )
        if self.dense_user:
            dense[:, c["dense_user"]] = _to_array(u_dense, np.dtype(np.float32), "user.dense")
        if self.dense_item:
            dense[:, c["dense_item"]] = _to_array(
                item_dense, np.dtype(np.float32), "candidates[].dense"
            )

    def _fast_items(self, cands: list[Any]) -> tuple[list[Any], Any, Any] | None:
        """Vectorized path for the common list form; None sends the request to the slow path,
        which finds and names the offending field."""
        try:
            ids = [c.get("id", i) for i, c in enumerate(cands)]
            sp = np.asarray([c["sparse"] for c in cands]) if self.sparse_item else None
            dn = np.asarray([c["dense"] for c in cands]) if self.dense_item else None
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        n = len(cands)
        if sp is not None and (sp.dtype.kind not in "iu" or sp.shape != (n, len(self.sparse_item))):
            return None
        if dn is not None and (dn.dtype.kind not in "iuf" or dn.shape != (n, len(self.dense_item))):
            return None
        return ids, sp, dn

    def _slow_items(self, cands: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        """Per-candidate decoding with precise field names in errors."""
        item_sparse: list[list[Any]] = []
        item_dense: list[list[Any]] = []
        ids: list[Any] = []
        for i, c in enumerate(cands):
            if not isinstance(c, dict):
                raise BadInput(f"candidates[{i}]", "must be an object")
            ids.append(c.get("id", i))
            item_sparse.append(
                self._side_values(c.get("sparse"), "item", "sparse", f"candidates[{i}].sparse")
            )
            item_dense.append(
                self._side_values(c.get("dense"), "item", "dense", f"candidates[{i}].dense")
            )
        return ids, item_sparse, item_dense

    def _rank_field(self, exc: BadInput) -> BadInput:
        """Re-express a column error in /v1/rank terms (user.sparse / candidates[i].sparse)."""
        msg = str(exc).split(": ", 1)[1]
        if exc.field == "sparse" and "row" in msg:
            row = int(msg.split(" at row ")[1].split(",")[0])
            col = int(msg.split("column ")[1].split(" ")[0])
            name = self.sparse_names[col]
            where = "user.sparse" if col in self.sparse_user else f"candidates[{row}].sparse"
            return BadInput(f"{where}.{name}", msg)
        if exc.field == "dense" and "row" in msg:
            row = int(msg.split(" at row ")[1].split(",")[0])
            col = int(msg.split("column ")[1].split(" ")[0].rstrip(","))
            where = "user.dense" if col in self.dense_user else f"candidates[{row}].dense"
            return BadInput(where, msg)
        return exc

    def _side_values(self, raw: Any, side: str, kind: str, field: str) -> list[Any]:
        """Values of one side's features in column order, from a list or a name->value dict."""
        if kind == "sparse":
            names = self.sparse_by_side[side]
            want = len(names)
            if raw is None and want == 0:
                return []
            if isinstance(raw, dict):
                unknown = [k for k in raw if k not in names]
                if unknown:
                    raise BadInput(
                        f"{field}.{unknown[0]}", f"unknown {side} sparse feature; expected {names}"
                    )
                try:
                    return [raw[nm] for nm in names]
                except KeyError as exc:
                    raise BadInput(f"{field}.{exc.args[0]}", "missing") from None
            if not isinstance(raw, list) or len(raw) != want:
                raise BadInput(field, f"must be a list of {want} ids or an object {names}")
            return raw
        widths = self.dense_by_side[side]
        want = sum(w for _, w in widths)
        if raw is None and want == 0:
            return []
        if isinstance(raw, dict):
            out: list[Any] = []
            for nm, w in widths:
                if nm not in raw:
                    raise BadInput(f"{field}.{nm}", "missing")
                vals = raw[nm] if isinstance(raw[nm], list) else [raw[nm]]
                if len(vals) != w:
                    raise BadInput(f"{field}.{nm}", f"must have {w} value(s), got {len(vals)}")
                out.extend(vals)
            unknown = [k for k in raw if k not in dict(widths)]
            if unknown:
                raise BadInput(f"{field}.{unknown[0]}", f"unknown {side} dense feature")
            return out
        if not isinstance(raw, list) or len(raw) != want:
            raise BadInput(field, f"must be a list of {want} numbers or an object")
        return raw


def _as_slice(cols: list[int]) -> slice | list[int]:
    """``cols`` as a slice when it is a contiguous ascending run."""
    if cols and cols == list(range(cols[0], cols[-1] + 1)):
        return slice(cols[0], cols[-1] + 1)
    return cols


def _to_array(data: Any, dtype: np.dtype[Any], field: str) -> np.ndarray:
    """np.asarray with every conversion problem mapped to BadInput."""
    if dtype.kind in "iu":
        try:
            arr = np.asarray(data)
        except ValueError as exc:
            raise BadInput(field, f"ragged or non-numeric data: {exc}") from None
        if arr.dtype.kind == "b" or (arr.dtype.kind not in "iu" and arr.size):
            if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
                return arr.astype(dtype)
            raise BadInput(field, f"must hold integers, got {arr.dtype.name} values")
        return arr.astype(dtype, copy=False)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, rejected later
            arr = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise BadInput(field, f"non-numeric or ragged data: {exc}") from None
    return arr
