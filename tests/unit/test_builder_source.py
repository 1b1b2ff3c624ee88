"""builder/source.py: what a bring-your-own model file may be, and every way it is refused."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from recserve_runtime.artifacts import FeatureSpec
from recserve_runtime.builder.errors import BuildError
from recserve_runtime.builder.evaluate import NotProbabilities, evaluate_onnx
from recserve_runtime.builder.export import export_onnx, normalize_onnx
from recserve_runtime.builder.source import load_source
from recserve_runtime.data.tabular import Split

pytestmark = pytest.mark.unit
torch.set_num_threads(2)

VOCAB, N_DENSE = 50, 3


class DenseFirst(nn.Module):
    """Takes its inputs as (dense_feats, ids): names and order not recserve's defaults."""

    def __init__(self, outputs: int = 1, sigmoid: bool = True) -> None:
        super().__init__()
        self.a = nn.Embedding(VOCAB, 4)
        self.b = nn.Embedding(VOCAB, 4)
        self.head = nn.Linear(8 + N_DENSE, outputs)
        self.sigmoid = sigmoid
        self.squeeze = outputs == 1  # an attribute: a branch on it is no data-dependent flow

    def forward(self, dense_feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.a(ids[:, 0]), self.b(ids[:, 1]), dense_feats], 1)
        out = self.head(x) * 3.0
        out = torch.sigmoid(out) if self.sigmoid else out
        return out.squeeze(1) if self.squeeze else out


def spec(sparse_input: str = "ids", dense_input: str = "dense_feats") -> FeatureSpec:
    return FeatureSpec.model_validate(
        {
            "sparseInput": sparse_input,
            "denseInput": dense_input,
            "sparse": [
                {"name": "u", "vocabSize": VOCAB, "side": "user"},
                {"name": "i", "vocabSize": VOCAB, "side": "item"},
            ],
            "dense": [{"name": "x", "width": N_DENSE, "side": "item"}],
        }
    )


def write_spec(tmp_path: Path, fs: FeatureSpec) -> str:
    path = tmp_path / "spec.json"
    path.write_text(fs.model_dump_json(by_alias=True))
    return str(path)


def scripted(tmp_path: Path, module: nn.Module, name: str = "m.pt") -> str:
    torch.manual_seed(0)
    path = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)


def onnx_file(tmp_path: Path, module: nn.Module, names: tuple[str, str], output: str) -> str:
    path = tmp_path / "m.onnx"
    dense, ids = torch.zeros(2, N_DENSE), torch.zeros(2, 2, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (dense, ids),
            str(path),
            input_names=list(names),
            output_names=[output],
            dynamic_axes={names[0]: {0: "b"}, names[1]: {0: "b"}, output: {0: "b"}},
            opset_version=17,
            dynamo=False,
        )
    return str(path)


def rows(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (
        rng.integers(0, VOCAB, (n, 2)).astype(np.int64),
        rng.standard_normal((n, N_DENSE)).astype(np.float32),
    )


def test_torchscript_inputs_are_bound_by_name_in_any_order(tmp_path: Path) -> None:
    module = DenseFirst()
    source = load_source(scripted(tmp_path, module), write_spec(tmp_path, spec()), "x")
    assert source.kind == "torchscript" and source.inputs == ("dense_feats", "ids")
    exported = export_onnx(source.model, source.spec, tmp_path / "e.onnx", source.inputs)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"ids", "dense_feats"}
    sparse, dense = rows()
    got = session.run(None, {"ids": sparse, "dense_feats": dense})[0]
    with torch.no_grad():
        want = module(torch.from_numpy(dense), torch.from_numpy(sparse)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_torchscript_names_that_do_not_match_the_spec_name_both_sides(tmp_path: Path) -> None:
    model = scripted(tmp_path, DenseFirst())
    with pytest.raises(BuildError) as caught:
        load_source(model, write_spec(tmp_path, spec("sparse_ids", "dense")), "x")
    msg = str(caught.value)
    assert "forward(dense_feats, ids)" in msg
    assert "sparseInput: sparse_ids" in msg and "denseInput: dense" in msg


def test_onnx_source_is_brought_to_the_score_contract(tmp_path: Path) -> None:
    module = DenseFirst()
    path = onnx_file(tmp_path, module, ("dense_feats", "ids"), "probability")
    source = load_source(path, write_spec(tmp_path, spec()), "x", fmt="onnx")
    assert source.kind == "onnx" and Path(source.model) == Path(path)
    normal = normalize_onnx(Path(path), tmp_path / "n.onnx")
    session = ort.InferenceSession(str(normal), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["score"]
    sparse, dense = rows()
    got = session.run(None, {"ids": sparse, "dense_feats": dense})[0]
    assert got.shape == (64,)
    with torch.no_grad():
        np.testing.assert_allclose(
            got, module(torch.from_numpy(dense), torch.from_numpy(sparse)).numpy(), atol=1e-6
        )


def test_onnx_inputs_the_spec_does_not_name(tmp_path: Path) -> None:
    path = onnx_file(tmp_path, DenseFirst(), ("features", "categoricals"), "p")
    with pytest.raises(BuildError) as caught:
        load_source(path, write_spec(tmp_path, spec()), "x")
    msg = str(caught.value)
    assert "inputs features, categoricals" in msg
    assert "sparseInput: ids" in msg and "denseInput: dense_feats" in msg


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_a_model_with_more_than_one_score_per_row_is_refused(tmp_path: Path, kind: str) -> None:
    module = DenseFirst(outputs=3)
    path = (
        scripted(tmp_path, module)
        if kind == "torchscript"
        else onnx_file(tmp_path, module, ("dense_feats", "ids"), "p")
    )
    with pytest.raises(BuildError) as caught:
        load_source(path, write_spec(tmp_path, spec()), "x")
    assert "one finite score per row" in str(caught.value) and "[2, 3]" in str(caught.value)


def test_sha256_is_checked_before_the_model_is_used(tmp_path: Path) -> None:
    path = scripted(tmp_path, DenseFirst())
    fs = write_spec(tmp_path, spec())
    actual = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert load_source(path, fs, "x", sha256=actual).kind == "torchscript"
    with pytest.raises(BuildError) as caught:
        load_source(path, fs, "x", sha256="0" * 64)
    assert actual in str(caught.value) and "0" * 64 in str(caught.value)
    assert "nothing was built" in str(caught.value)


def test_declared_format_must_be_what_the_file_is(tmp_path: Path) -> None:
    path = scripted(tmp_path, DenseFirst())
    with pytest.raises(BuildError) as caught:
        load_source(path, write_spec(tmp_path, spec()), "x", fmt="onnx")
    assert "declared onnx" in str(caught.value) and "torchscript model" in str(caught.value)
    with pytest.raises(BuildError) as caught:
        load_source("demo", None, "movielens-100k", sha256="a" * 64)
    assert "demo model is trained here" in str(caught.value)


def test_unreachable_model_uri(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as caught:
        load_source("http://127.0.0.1:9/models/m.pt", None, "x")
    msg = str(caught.value)
    assert "model http://127.0.0.1:9/models/m.pt cannot be fetched" in msg
    assert "check the URI and access" in msg


def test_feature_spec_from_an_fsspec_uri(tmp_path: Path) -> None:
    import fsspec

    with fsspec.open("memory://recserve-test/spec.json", "w") as handle:
        handle.write(spec().model_dump_json(by_alias=True))
    source = load_source(scripted(tmp_path, DenseFirst()), "memory://recserve-test/spec.json", "x")
    assert source.spec.sparse_input == "ids"


def test_scores_that_are_not_probabilities_are_refused(tmp_path: Path) -> None:
    module = DenseFirst(sigmoid=False)
    path = onnx_file(tmp_path, module, ("dense_feats", "ids"), "logit")
    normal = normalize_onnx(Path(path), tmp_path / "n.onnx")
    sparse, dense = rows(400)
    split = Split(sparse, dense, (np.arange(400) % 2).astype(np.float32))
    assert "auc" in evaluate_onnx(normal, spec(), split, 1)  # other variants: no check
    with pytest.raises(NotProbabilities) as caught:
        evaluate_onnx(normal, spec(), split, 1, probabilities=True)
    assert "probability in [0, 1]" in str(caught.value) and "sigmoid" in str(caught.value)
