"""Content-addressed store: layout, manifest last, integrity, unwritable locations."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from recserve_runtime.artifacts import (
    ArtifactFile,
    DenseFeature,
    FeatureSpec,
    Manifest,
    Side,
    SparseFeature,
    TensorSpec,
    load_manifest,
    sha256_file,
    verify,
)
from recserve_runtime.builder.errors import BuildError
from recserve_runtime.builder.store import check_writable, check_writable_file, put_variant

pytestmark = pytest.mark.unit


def manifest() -> Manifest:
    spec = FeatureSpec(
        sparse=[SparseFeature(name="u", vocab_size=3, side=Side.USER)],
        dense=[DenseFeature(name="d", width=1, side=Side.ITEM)],
    )
    return Manifest(
        name="int8-dynamic",
        artifact=ArtifactFile(sha256="0" * 64, size_bytes=0),
        inputs=[TensorSpec(name="sparse_ids", dtype="int64", shape=[-1, 1])],
        outputs=[TensorSpec(name="score", dtype="float32", shape=[-1])],
        feature_spec=spec,
        metrics={"auc": 0.78},
    )


def test_variant_folder_is_named_by_content(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes")
    where = Path(put_variant(str(tmp_path / "store"), model, manifest()))
    digest = sha256_file(model)
    assert where == tmp_path / "store" / digest[:16]
    loaded = load_manifest(where)
    assert loaded.artifact.sha256 == digest and loaded.artifact.size_bytes == 10
    assert verify(where) == where / "model.onnx"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [digest[:16]]
    # same content again: same folder, no leftovers
    assert put_variant(str(tmp_path / "store"), model, manifest()) == str(where)
    assert len(list((tmp_path / "store").iterdir())) == 1


def test_unfinished_folder_is_replaced(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"complete model")
    stale = tmp_path / "store" / sha256_file(model)[:16]
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"trunc")  # an earlier build died before its manifest
    where = Path(put_variant(str(tmp_path / "store"), model, manifest()))
    assert verify(where).read_bytes() == b"complete model"


def test_fsspec_store(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"remote model")
    where = put_variant("memory://recserve-test/store", model, manifest())
    fs = fsspec.filesystem("memory")
    key = where.removeprefix("memory://")
    assert fs.cat(f"{key}/model.onnx") == b"remote model"
    assert json.loads(fs.cat(f"{key}/manifest.json"))["artifact"]["sha256"] == sha256_file(model)


def test_unwritable_store_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(BuildError, match="cannot write to output location"):
        check_writable(str(blocker / "store"))
    with pytest.raises(BuildError, match="cannot write report file"):
        check_writable_file(blocker / "report.json")
    with pytest.raises(BuildError, match="cannot write report file"):
        check_writable_file(tmp_path)  # a directory
