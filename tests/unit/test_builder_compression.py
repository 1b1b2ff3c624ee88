"""Zoo models, ONNX export and every compression step, on tiny models."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from recserve_runtime.artifacts import DenseFeature, FeatureSpec, Side, SparseFeature
from recserve_runtime.builder.export import export_onnx, optimize_portable
from recserve_runtime.builder.int4 import dequantize_rows, int4_embeddings, quantize_rows
from recserve_runtime.builder.prune import count_params, hidden_widths, prune_mlps
from recserve_runtime.builder.quantize import int8_dynamic, int8_static_qdq, to_fp16
from recserve_runtime.data.synthetic import synthetic_split
from recserve_runtime.profiler import make_session
from recserve_runtime.zoo.checkpoint import load_checkpoint, save_checkpoint
from recserve_runtime.zoo.models import ARCHS, ModelConfig, build_model

pytestmark = pytest.mark.unit
torch.set_num_threads(1)

SPEC = FeatureSpec(
    sparse=[
        SparseFeature(name=f"f{k}", vocab_size=v, side=Side.USER)
        for k, v in enumerate([50, 300, 2000])
    ],
    dense=[DenseFeature(name="d", width=4, side=Side.ITEM)],
)
ROWS = synthetic_split(SPEC, 256, seed=3)


def tiny(arch: str = "dlrm", dim: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch, [50, 300, 2000], 4, dim, [16], [64, 32])
    return build_model(cfg).eval()


def ort_scores(path: Path) -> np.ndarray:
    sess = make_session(path, 1)
    return sess.run(None, {"sparse_ids": ROWS.sparse, "dense": ROWS.dense})[0]  # type: ignore[no-any-return]


def torch_scores(model: torch.nn.Module) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ROWS.sparse), torch.from_numpy(ROWS.dense)).numpy()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    tmp = tmp_path_factory.mktemp("fp32")
    model = tiny()
    raw = export_onnx(model, SPEC, tmp / "raw.onnx")
    return model, optimize_portable(raw, tmp / "fp32.onnx")


@pytest.mark.parametrize("arch", ARCHS)
def test_zoo_models_export_and_match_onnx(arch: str, tmp_path: Path) -> None:
    model = tiny(arch)
    scores = torch_scores(model)
    assert scores.shape == (256,) and ((scores > 0) & (scores < 1)).all()
    path = export_onnx(model, SPEC, tmp_path / "m.onnx")
    sess = make_session(path, 1)
    assert [i.name for i in sess.get_inputs()] == ["sparse_ids", "dense"]
    assert [o.name for o in sess.get_outputs()] == ["score"]
    np.testing.assert_allclose(ort_scores(path), scores, atol=1e-5)


def test_int4_rows_dequantize_within_half_a_step() -> None:
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((500, 16)) * rng.uniform(0.01, 3, (500, 1))).astype(np.float32)
    table[7] = 0.25  # a constant row must survive too
    packed, scale, bias = quantize_rows(table)
    assert packed.dtype == np.uint8 and packed.shape == (500, 8)
    assert scale.dtype == np.float16 and bias.dtype == np.float16
    err = np.abs(dequantize_rows(packed, scale, bias) - table)
    assert (err <= scale.astype(np.float32) / 2 + 1e-6).all()
    assert err[7].max() < 1e-3
    stored = packed.nbytes + scale.nbytes + bias.nbytes
    assert stored / table.nbytes == pytest.approx((8 + 4) / 64)


def test_int4_rejects_odd_dim() -> None:
    with pytest.raises(ValueError, match="even"):
        quantize_rows(np.zeros((3, 5), np.float32))


def test_int4_graph_equals_dequantized_tables(fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, path = fp32
    out = tmp_path / "int4.onnx"
    assert int4_embeddings(path, out) == 3
    graph = onnx.load(str(out)).graph
    names = {t.name for t in graph.initializer}
    assert not any(n.startswith("embeddings.") and n.endswith(".weight") for n in names)
    # the same model with each table replaced by its dequantized rows, in torch
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for emb in ref.embeddings:
            deq = dequantize_rows(*quantize_rows(emb.weight.numpy()))
            emb.weight.copy_(torch.from_numpy(deq))
    np.testing.assert_allclose(ort_scores(out), torch_scores(ref), atol=1e-5)
    assert out.stat().st_size < path.stat().st_size


def test_int8_dynamic_smaller_and_close(fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, path = fp32
    out = int8_dynamic(path, tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    assert out.stat().st_size < 0.4 * path.stat().st_size
    assert np.abs(ort_scores(out) - ort_scores(path)).max() < 0.05


def test_int8_static_qdq_is_calibrated(fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, path = fp32
    out = int8_static_qdq(path, tmp_path / "qdq.onnx", SPEC, ROWS, batch=64)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert np.abs(ort_scores(out) - ort_scores(path)).max() < 0.05


def test_fp16_weights(fp32, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, path = fp32
    out = to_fp16(path, tmp_path / "fp16.onnx")
    types = {t.data_type for t in onnx.load(str(out)).graph.initializer if len(t.dims) == 2}
    assert types == {onnx.TensorProto.FLOAT16}
    sess = make_session(out, 1)
    assert sess.get_inputs()[1].type == "tensor(float)"  # float32 I/O kept
    assert np.abs(ort_scores(out) - ort_scores(path)).max() < 0.01


@pytest.mark.parametrize("arch", ARCHS)
def test_structured_pruning_halves_hidden_neurons(arch: str, tmp_path: Path) -> None:
    model = tiny(arch)
    before, widths = count_params(model, mlp_only=True), hidden_widths(model)
    prune_mlps(model, 0.5)
    after = hidden_widths(model)
    assert after["top"] == [32, 16, 1]  # hidden halved, output kept
    assert after["top"] != widths["top"]
    assert count_params(model, mlp_only=True) < 0.5 * before
    assert model.config.top_mlp == [32, 16]
    assert torch_scores(model).shape == (256,)
    # a pruned checkpoint reloads with its new shapes and gives the same scores
    path = save_checkpoint(tmp_path / "p.pt", model, SPEC)
    again, _, _ = load_checkpoint(path)
    np.testing.assert_allclose(torch_scores(again), torch_scores(model), atol=1e-6)


def test_pruning_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="ratio"):
        prune_mlps(tiny(), 1.0)
