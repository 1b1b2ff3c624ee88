"""Request decoding and validation (pure logic on a synthetic manifest)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recserve_dev import testmodel as tm
from recserve_runtime import artifacts
from recserve_runtime.server.protocol import BadInput, Validator

pytestmark = pytest.mark.unit

SPEC = tm.TestModelSpec(vocab_size=100, top_mlp=(16,))


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    variant = tm.write_variant(tmp_path_factory.mktemp("store"), SPEC, keep_weights=False)
    return Validator(artifacts.load_manifest(variant), max_batch_rows=256)


def infer_body(rows: int = 3, override: dict[tuple[int, str], Any] | None = None) -> dict[str, Any]:
    sparse, dense = tm.random_batch(SPEC, rows)
    body: dict[str, Any] = {
        "inputs": [
            {"name": "sparse_ids", "datatype": "INT64", "shape": [rows, SPEC.n_sparse],
             "data": sparse.ravel().tolist()},
            {"name": "dense", "datatype": "FP32", "shape": [rows, SPEC.n_dense],
             "data": dense.ravel().tolist()},
        ]
    }  # fmt: skip
    for (index, field), value in (override or {}).items():
        body["inputs"][index][field] = value
    return body


def test_valid_json_infer_decodes_to_model_arrays(validator: Validator) -> None:
    req = validator.infer_request(orjson.dumps(infer_body(4)), None)
    assert req.batch.sparse.shape == (4, SPEC.n_sparse) and req.batch.sparse.dtype == np.int64
    assert req.batch.dense.shape == (4, SPEC.n_dense) and req.batch.dense.dtype == np.float32
    assert req.outputs == ["score"] and not req.binary_outputs


def test_binary_tensor_extension(validator: Validator) -> None:
    sparse, dense = tm.random_batch(SPEC, 2)
    head = orjson.dumps({
        "inputs": [
            {"name": "sparse_ids", "datatype": "INT64", "shape": list(sparse.shape),
             "parameters": {"binary_data_size": sparse.nbytes}},
            {"name": "dense", "datatype": "FP32", "shape": list(dense.shape),
             "parameters": {"binary_data_size": dense.nbytes}},
        ],
        "outputs": [{"name": "score", "parameters": {"binary_data": True}}],
    })  # fmt: skip
    req = validator.infer_request(head + sparse.tobytes() + dense.tobytes(), len(head))
    assert np.array_equal(req.batch.sparse, sparse) and np.array_equal(req.batch.dense, dense)
    assert req.binary_outputs


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"{not json", "body", "malformed JSON"),
        (b"[1,2]", "body", "JSON object"),
        (infer_body(3, {(0, "name"): "user_idz"}), "inputs[0].name", "unknown input 'user_idz'"),
        (infer_body(3, {(0, "datatype"): "FP32"}), "inputs[0].datatype", "must be INT64"),
        (infer_body(3, {(1, "datatype"): "FP64"}), "inputs[1].datatype", "must be FP32"),
        (infer_body(3, {(0, "shape"): [3, 5]}), "inputs[0].shape", "must have shape"),
        (infer_body(3, {(1, "shape"): [3]}), "inputs[1].shape", "must have shape"),
        (infer_body(3, {(1, "shape"): [4, SPEC.n_dense]}), "inputs[1].data", "values"),
        (
            infer_body(3, {(0, "shape"): [300, SPEC.n_sparse]}),
            "inputs[0].shape[0]",
            "exceeds the maximum",
        ),
        (infer_body(3, {(1, "data"): ["a"] * 3 * SPEC.n_dense}), "inputs[1].data", "non-numeric"),
        (infer_body(3, {(0, "data"): [1.5] * 3 * SPEC.n_sparse}), "inputs[0].data", "integers"),
        ({"inputs": []}, "inputs", "non-empty"),
    ],
)
def test_bad_infer_requests_name_the_field(
    validator: Validator, body: Any, field: str, words: str
) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(BadInput) as err:
        validator.infer_request(raw, None)
    assert err.value.field == field, str(err.value)
    assert words in str(err.value)


def test_out_of_vocabulary_id_is_rejected_with_column_and_feature(validator: Validator) -> None:
    body = infer_body(3)
    body["inputs"][0]["data"][SPEC.n_sparse + 2] = SPEC.vocab_size  # row 1, column 2
    with pytest.raises(BadInput) as err:
        validator.infer_request(orjson.dumps(body), None)
    assert err.value.field == "inputs[0].data"
    assert "row 1, column 2" in str(err.value) and "'u_cat2'" in str(err.value)


def test_nan_in_binary_dense_is_rejected(validator: Validator) -> None:
    sparse, dense = tm.random_batch(SPEC, 2)
    dense[1, 3] = np.nan
    head = orjson.dumps({"inputs": [
        {"name": "sparse_ids", "datatype": "INT64", "shape": list(sparse.shape),
         "parameters": {"binary_data_size": sparse.nbytes}},
        {"name": "dense", "datatype": "FP32", "shape": list(dense.shape),
         "parameters": {"binary_data_size": dense.nbytes}},
    ]})  # fmt: skip
    with pytest.raises(BadInput) as err:
        validator.infer_request(head + sparse.tobytes() + dense.tobytes(), len(head))
    assert err.value.field == "inputs[1].data" and "NaN" in str(err.value)


def rank_body(n: int = 5) -> dict[str, Any]:
    return {
        "user": {"sparse": [1] * SPEC.n_sparse_user, "dense": [0.5] * SPEC.n_dense_user},
        "candidates": [
            {
                "id": f"item{i}",
                "sparse": [i] * SPEC.n_sparse_item,
                "dense": [0.1] * SPEC.n_dense_item,
            }
            for i in range(n)
        ],
    }


def test_rank_broadcasts_user_features(validator: Validator) -> None:
    req = validator.rank_request(orjson.dumps(rank_body(5)))
    assert req.batch.sparse.shape == (5, SPEC.n_sparse)
    assert (req.batch.sparse[:, : SPEC.n_sparse_user] == 1).all()
    assert list(req.batch.sparse[:, SPEC.n_sparse_user]) == [0, 1, 2, 3, 4]
    assert req.ids == [f"item{i}" for i in range(5)]


def test_rank_accepts_features_by_name(validator: Validator) -> None:
    body = rank_body(2)
    body["user"]["sparse"] = {f"u_cat{i}": 3 for i in range(SPEC.n_sparse_user)}
    req = validator.rank_request(orjson.dumps(body))
    assert (req.batch.sparse[:, : SPEC.n_sparse_user] == 3).all()


def _mutate(path: str, value: Any) -> dict[str, Any]:
    body = rank_body(4)
    node: Any = body
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_mutate("candidates.2.sparse.1", 100), "candidates[2].sparse.i_cat1"),
        (_mutate("user.sparse.0", -1), "user.sparse.u_cat0"),
        (_mutate("candidates.3.dense.0", float("inf")), "candidates[3].dense"),
        (_mutate("candidates.1.sparse", [1, 2]), "candidates[1].sparse"),
        (_mutate("user.dense", [1.0]), "user.dense"),
        (_mutate("candidates", []), "candidates"),
        (_mutate("top_k", 0), "top_k"),
        (_mutate("candidates", [{"id": i} for i in range(300)]), "candidates"),
    ],
)
def test_bad_rank_requests_name_the_field(validator: Validator, body: Any, field: str) -> None:
    with pytest.raises(BadInput) as err:
        validator.rank_request(orjson.dumps(body))
    assert err.value.field == field, str(err.value)


def test_variant_fixture_verifies(tmp_path: Path) -> None:
    variant = tm.write_variant(tmp_path, SPEC)
    assert artifacts.verify(variant).name == "model.onnx"


def test_out_of_vocabulary_ids_are_mapped_only_as_the_spec_declares(validator: Validator) -> None:
    """Unset: 400. ``oov: id``: the OOV row; ``oov: hash``: modulo the vocabulary, the
    same mapping the builder applied to the eval data."""
    manifest = validator.manifest.model_copy(deep=True)
    sparse, dense = tm.random_batch(SPEC, 2)
    sparse[0, 0], sparse[1, 0] = 100, -3  # outside [0, 100)
    sparse[0, 1], sparse[1, 1] = 250, -1
    with pytest.raises(BadInput, match="outside the vocabulary"):
        validator.check_batch(sparse, dense, ("sparse_ids", "dense"))
    fs = manifest.feature_spec
    fs.sparse[0] = fs.sparse[0].model_copy(update={"oov": artifacts.Oov.ID})
    fs.sparse[1] = fs.sparse[1].model_copy(update={"oov": artifacts.Oov.HASH})
    original = sparse.copy()
    batch = Validator(manifest, max_batch_rows=256).check_batch(
        sparse, dense, ("sparse_ids", "dense")
    )
    assert batch.sparse[:, 0].tolist() == [99, 99]
    assert batch.sparse[:, 1].tolist() == [50, 99]
    assert (sparse == original).all(), "the request's own buffer is not written"


# --- fuzzing the decoder: any body is a request or a BadInput (HTTP 400), never a crash ---

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
FUZZ = settings(
    max_examples=int(os.environ.get("RECSERVE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _mutate(doc: Any, path: list[Any], value: Any) -> Any:
    """``doc`` with the node at ``path`` (followed as far as it exists) replaced."""
    if not path or not isinstance(doc, dict | list):
        return value
    key, rest = path[0], path[1:]
    if isinstance(doc, list):
        if not doc:
            return value
        index = key % len(doc) if isinstance(key, int) else 0
        return [_mutate(v, rest, value) if i == index else v for i, v in enumerate(doc)]
    name = key if isinstance(key, str) and key in doc else next(iter(doc), None)
    if name is None:
        return value
    return {k: _mutate(v, rest, value) if k == name else v for k, v in doc.items()}


PATHS = st.lists(st.sampled_from(["inputs", "outputs", "name", "datatype", "shape", "data",
                                  "parameters", "user", "candidates", "sparse", "dense", "id",
                                  "top_k", 0, 1, 2]), max_size=4)  # fmt: skip


def _encode(doc: Any) -> bytes:
    """JSON as a client may send it: integers past 64 bits, Infinity (stdlib json)."""
    return json.dumps(doc).encode()


def _decodes_or_400(call: Any, *args: Any) -> None:
    with contextlib.suppress(BadInput):
        call(*args)


@FUZZ
@given(doc=JSON)
def test_fuzz_any_json_document(validator: Validator, doc: Any) -> None:
    body = _encode(doc)
    _decodes_or_400(validator.infer_request, body, None)
    _decodes_or_400(validator.rank_request, body)


@FUZZ
@given(path=PATHS, value=JSON)
def test_fuzz_valid_infer_bodies_with_one_node_replaced(
    validator: Validator, path: list[Any], value: Any
) -> None:
    doc = _mutate(infer_body(2), path, value)
    _decodes_or_400(validator.infer_request, _encode(doc), None)


@FUZZ
@given(path=PATHS, value=JSON)
def test_fuzz_valid_rank_bodies_with_one_node_replaced(
    validator: Validator, path: list[Any], value: Any
) -> None:
    sparse, dense = tm.random_batch(SPEC, 3)
    doc = {
        "user": {"sparse": sparse[0, : SPEC.n_sparse_user].tolist(),
                 "dense": dense[0, : SPEC.n_dense_user].tolist()},
        "candidates": [{"id": i, "sparse": sparse[i, SPEC.n_sparse_user :].tolist(),
                        "dense": dense[i, SPEC.n_dense_user :].tolist()} for i in range(3)],
    }  # fmt: skip
    _decodes_or_400(validator.rank_request, _encode(_mutate(doc, path, value)))


@FUZZ
@given(raw=st.binary(max_size=400), header_length=st.none() | st.integers(-5, 500))
def test_fuzz_raw_bytes_and_binary_header_lengths(
    validator: Validator, raw: bytes, header_length: int | None
) -> None:
    _decodes_or_400(validator.infer_request, raw, header_length)
    _decodes_or_400(validator.rank_request, raw)


@pytest.mark.fault("an OIP v2 body whose input name is an object", expect="400, not 500")
def test_an_input_name_that_is_not_a_string_is_a_400(validator: Validator) -> None:
    """Regression: {"name": {}} was answered 500 (TypeError: unhashable type)."""
    for bad in ({}, [], 1, None):
        with pytest.raises(BadInput, match=r"inputs\[0\]\.name"):
            validator.infer_request(orjson.dumps(infer_body(2, {(0, "name"): bad})), None)
