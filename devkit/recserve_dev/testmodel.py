"""A synthetic DLRM-like variant for tests and benchmarks, written in the artifact format.

The graph is built with ``onnx.helper`` from numpy weights (no torch needed): one
concatenated embedding table indexed with per-column offsets, a bottom MLP on the dense
input, DLRM's pairwise dot-product interaction, and a top MLP with a sigmoid. The same
weights can be loaded into an equivalent torch module (:func:`torch_model`) for the
naive baseline. The weights are random: this model is for speed and protocol tests only,
never for accuracy claims (its manifest says ``synthetic: true``).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recserve_runtime import artifacts
from recserve_runtime.datadrift import reference_from

WEIGHTS_FILE = "weights.npz"


@dataclass(frozen=True)
class TestModelSpec:
    """Shape of the synthetic model (Criteo-like: 26 sparse and 13 dense fields)."""

    __test__ = False  # not a pytest test class

    n_sparse_user: int = 8
    n_sparse_item: int = 18
    n_dense_user: int = 5
    n_dense_item: int = 8
    vocab_size: int = 1000
    dim: int = 16
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (256, 128)
    seed: int = 0
    name: str = "synthetic-dlrm-fp32"

    @property
    def n_sparse(self) -> int:
        """Columns of ``sparse_ids``."""
        return self.n_sparse_user + self.n_sparse_item

    @property
    def n_dense(self) -> int:
        """Columns of ``dense``."""
        return self.n_dense_user + self.n_dense_item


@dataclass
class Weights:
    """Numpy weights shared by the ONNX graph and the torch twin."""

    table: np.ndarray
    offsets: np.ndarray
    bottom: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    top: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    triu: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def make_weights(spec: TestModelSpec) -> Weights:
    """Random weights (He-scaled MLPs, small embeddings) for ``spec``."""
    rng = np.random.default_rng(spec.seed)
    table = (rng.standard_normal((spec.n_sparse * spec.vocab_size, spec.dim)) * 0.05).astype(
        np.float32
    )
    offsets = (np.arange(spec.n_sparse, dtype=np.int64) * spec.vocab_size).reshape(1, -1)

    def mlp(sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        layers = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            layers.append((w, np.zeros(fan_out, np.float32)))
        return layers

    bottom = mlp([spec.n_dense, *spec.bottom_mlp, spec.dim])
    n_vec = spec.n_sparse + 1
    rows, cols = np.triu_indices(n_vec, k=1)
    triu = (rows * n_vec + cols).astype(np.int64)
    top = mlp([len(triu) + spec.dim, *spec.top_mlp, 1])
    return Weights(table=table, offsets=offsets, bottom=bottom, top=top, triu=triu)


def build_onnx(spec: TestModelSpec, w: Weights) -> Any:
    """The ONNX ModelProto of the DLRM-like graph."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(w.table, "emb_table"),
        numpy_helper.from_array(w.offsets, "emb_offsets"),
        numpy_helper.from_array(w.triu, "triu_idx"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape_flat"),
        numpy_helper.from_array(np.array([0, 1, spec.dim], np.int64), "shape_one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Add", ["sparse_ids", "emb_offsets"], ["ids_off"]),
        helper.make_node("Gather", ["emb_table", "ids_off"], ["emb"], axis=0),  # [B,S,D]
    ]
    x = "dense"
    for i, (wt, b) in enumerate(w.bottom):
        inits += [numpy_helper.from_array(wt, f"bw{i}"), numpy_helper.from_array(b, f"bb{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"bw{i}", f"bb{i}"], [f"bg{i}"]))
        nodes.append(helper.make_node("Relu", [f"bg{i}"], [f"br{i}"]))
        x = f"br{i}"
    nodes += [
        helper.make_node("Reshape", [x, "shape_one"], ["bot3"]),  # [B,1,D]
        helper.make_node("Concat", ["bot3", "emb"], ["vecs"], axis=1),  # [B,S+1,D]
        helper.make_node("Transpose", ["vecs"], ["vecs_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["vecs", "vecs_t"], ["inter"]),  # [B,S+1,S+1]
        helper.make_node("Reshape", ["inter", "shape_flat"], ["inter_flat"]),
        helper.make_node("Gather", ["inter_flat", "triu_idx"], ["pairs"], axis=1),
        helper.make_node("Concat", [x, "pairs"], ["top_in"], axis=1),
    ]
    x = "top_in"
    for i, (wt, b) in enumerate(w.top):
        inits += [numpy_helper.from_array(wt, f"tw{i}"), numpy_helper.from_array(b, f"tb{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"tw{i}", f"tb{i}"], [f"tg{i}"]))
        if i < len(w.top) - 1:
            nodes.append(helper.make_node("Relu", [f"tg{i}"], [f"tr{i}"]))
            x = f"tr{i}"
        else:
            x = f"tg{i}"
    nodes += [
        helper.make_node("Sigmoid", [x], ["prob"]),
        helper.make_node("Squeeze", ["prob", "axis1"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic_dlrm",
        [
            helper.make_tensor_value_info(
                "sparse_ids", TensorProto.INT64, ["batch", spec.n_sparse]
            ),
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", spec.n_dense]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def feature_spec(spec: TestModelSpec) -> artifacts.FeatureSpec:
    """User columns first, then item columns, for both inputs."""
    sparse = [
        artifacts.SparseFeature(name=f"u_cat{i}", vocab_size=spec.vocab_size, side="user")
        for i in range(spec.n_sparse_user)
    ] + [
        artifacts.SparseFeature(name=f"i_cat{i}", vocab_size=spec.vocab_size, side="item")
        for i in range(spec.n_sparse_item)
    ]
    dense = [
        artifacts.DenseFeature(name=f"u_num{i}", side="user") for i in range(spec.n_dense_user)
    ] + [artifacts.DenseFeature(name=f"i_num{i}", side="item") for i in range(spec.n_dense_item)]
    return artifacts.FeatureSpec(sparse=sparse, dense=dense)


def write_variant(
    store: Path, spec: TestModelSpec | None = None, *, keep_weights: bool = True
) -> Path:
    """Write a complete variant folder (model.onnx, manifest.json) under ``store``.

    The folder is content-addressed like the builder's (first 16 hex digits of the
    model's sha256). With ``keep_weights`` the numpy weights are saved next to it as
    ``weights.npz`` so :func:`torch_model` can rebuild the same network.
    """
    import onnx

    spec = spec or TestModelSpec()
    w = make_weights(spec)
    model = build_onnx(spec, w)
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store, prefix=".build-"))
    onnx_path = tmp / artifacts.MODEL_FILE
    onnx.save_model(model, str(onnx_path))
    digest = artifacts.sha256_file(onnx_path)
    final = store / digest[:16]
    if final.exists():
        shutil.rmtree(tmp)
        return final
    if keep_weights:
        arrays: dict[str, Any] = {"table": w.table, "offsets": w.offsets, "triu": w.triu}
        for prefix, layers in (("bottom", w.bottom), ("top", w.top)):
            for i, (weight, bias) in enumerate(layers):
                arrays[f"{prefix}_w{i}"] = weight
                arrays[f"{prefix}_b{i}"] = bias
        np.savez(tmp / WEIGHTS_FILE, **arrays)
    manifest = artifacts.Manifest(
        name=spec.name,
        model={"name": "synthetic-dlrm", "arch": "dlrm", "synthetic": True},
        artifact=artifacts.ArtifactFile(
            sha256=digest, size_bytes=onnx_path.stat().st_size, file=artifacts.MODEL_FILE
        ),
        inputs=[
            artifacts.TensorSpec(name="sparse_ids", dtype="int64", shape=[-1, spec.n_sparse]),
            artifacts.TensorSpec(name="dense", dtype="float32", shape=[-1, spec.n_dense]),
        ],
        outputs=[artifacts.TensorSpec(name="score", dtype="float32", shape=[-1])],
        feature_spec=feature_spec(spec),
        # its "training data" is what random_batch draws (other seeds: the same law)
        data_reference=reference_from(feature_spec(spec), *random_batch(spec, 20_000, seed=99)),
    )
    artifacts.write_manifest(tmp, manifest)
    tmp.rename(final)
    return final


def torch_model(variant_dir: Path) -> Any:
    """The torch eager twin of a variant written by :func:`write_variant` (needs torch)."""
    import torch

    data = np.load(variant_dir / WEIGHTS_FILE)
    n_bottom = sum(1 for k in data.files if k.startswith("bottom_w"))
    n_top = sum(1 for k in data.files if k.startswith("top_w"))

    def linears(prefix: str, n: int) -> torch.nn.ModuleList:
        layers = torch.nn.ModuleList()
        for i in range(n):
            wt = torch.from_numpy(data[f"{prefix}_w{i}"])
            lin = torch.nn.Linear(wt.shape[0], wt.shape[1])
            with torch.no_grad():
                lin.weight.copy_(wt.T)
                lin.bias.copy_(torch.from_numpy(data[f"{prefix}_b{i}"]))
            layers.append(lin)
        return layers

    class DLRM(torch.nn.Module):
        offsets: torch.Tensor
        triu: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            table = torch.from_numpy(data["table"])
            self.emb = torch.nn.Embedding.from_pretrained(table)  # type: ignore[no-untyped-call]
            self.register_buffer("offsets", torch.from_numpy(data["offsets"]))
            self.register_buffer("triu", torch.from_numpy(data["triu"]))
            self.bottom = linears("bottom", n_bottom)
            self.top = linears("top", n_top)

        def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
            x = dense
            for lin in self.bottom:
                x = torch.relu(lin(x))
            emb = self.emb(sparse_ids + self.offsets)
            vecs = torch.cat([x.unsqueeze(1), emb], dim=1)
            inter = torch.bmm(vecs, vecs.transpose(1, 2)).flatten(1)
            y = torch.cat([x, inter[:, self.triu]], dim=1)
            for i, lin in enumerate(self.top):
                y = lin(y)
                if i < len(self.top) - 1:
                    y = torch.relu(y)
            return torch.sigmoid(y).squeeze(1)

    return DLRM().eval()


def random_batch(
    spec_or_manifest: TestModelSpec | artifacts.Manifest, rows: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Valid random ``(sparse_ids, dense)`` for a model."""
    rng = np.random.default_rng(seed)
    if isinstance(spec_or_manifest, TestModelSpec):
        vocab = [spec_or_manifest.vocab_size] * spec_or_manifest.n_sparse
        n_dense = spec_or_manifest.n_dense
    else:
        fs = spec_or_manifest.feature_spec
        vocab = [f.vocab_size for f in fs.sparse]
        n_dense = sum(f.width for f in fs.dense)
    sparse = np.stack([rng.integers(0, v, rows) for v in vocab], axis=1).astype(np.int64)
    dense = rng.standard_normal((rows, n_dense)).astype(np.float32)
    return sparse, dense


def rank_bodies(
    manifest: artifacts.Manifest,
    count: int,
    candidates: int = 64,
    seed: int = 0,
    dense_shift: float = 0.0,
) -> list[bytes]:
    """``count`` valid /v1/rank JSON bodies, each ranking ``candidates`` items; every dense
    value drawn from N(0, 1), plus ``dense_shift`` (inputs unlike the training data)."""
    import orjson

    rng = np.random.default_rng(seed)
    fs = manifest.feature_spec
    u_sp = [f.vocab_size for f in fs.sparse if f.side == "user"]
    i_sp = [f.vocab_size for f in fs.sparse if f.side == "item"]
    u_dn = sum(f.width for f in fs.dense if f.side == "user")
    i_dn = sum(f.width for f in fs.dense if f.side == "item")
    out = []
    for _ in range(count):
        doc = {
            "user": {
                "sparse": [int(rng.integers(0, v)) for v in u_sp],
                "dense": np.round(rng.standard_normal(u_dn) + dense_shift, 4).tolist(),
            },
            "candidates": [
                {
                    "id": int(rng.integers(0, 1 << 30)),
                    "sparse": [int(rng.integers(0, v)) for v in i_sp],
                    "dense": np.round(rng.standard_normal(i_dn) + dense_shift, 4).tolist(),
                }
                for _ in range(candidates)
            ],
        }
        out.append(orjson.dumps(doc))
    return out


def _quantized_copy(
    src: Path,
    store: Path,
    kind: str,
    recipe: artifacts.Recipe,
    quantize: Callable[[Path, Path, artifacts.Manifest], object],
) -> Path:
    """A quantized copy of a variant (``quantize(model file, out file, manifest)``),
    content-addressed like the builder's, named with ``kind`` for "fp32"."""
    manifest = artifacts.load_manifest(src)
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=store, prefix=".build-"))
    out = tmp / artifacts.MODEL_FILE
    quantize(src / manifest.artifact.file, out, manifest)
    digest = artifacts.sha256_file(out)
    final = store / digest[:16]
    if final.exists():
        shutil.rmtree(tmp)
        return final
    q = manifest.model_copy(deep=True)
    q.name = manifest.name.replace("fp32", kind) if "fp32" in manifest.name else f"{q.name}-{kind}"
    q.recipe = recipe
    q.artifact = artifacts.ArtifactFile(sha256=digest, size_bytes=out.stat().st_size)
    artifacts.write_manifest(tmp, q)
    tmp.rename(final)
    return final


def quantize_variant(src: Path, store: Path) -> Path:
    """A dynamic-INT8 copy of a variant (onnxruntime quantize_dynamic), same manifest shape."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def quantize(model: Path, out: Path, _manifest: artifacts.Manifest) -> None:
        quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8)

    recipe = artifacts.Recipe(precision="int8", quantization="dynamic")
    return _quantized_copy(src, store, "int8", recipe, quantize)


def static_variant(src: Path, store: Path, rows: int = 2048, seed: int = 7) -> Path:
    """A static-INT8 (QDQ) copy of a variant, its activation ranges calibrated on
    ``rows`` rows of its "training data" (:func:`random_batch`), as the builder does."""
    from recserve_runtime.builder.quantize import int8_static_qdq
    from recserve_runtime.data.tabular import Split

    def quantize(model: Path, out: Path, manifest: artifacts.Manifest) -> None:
        sparse, dense = random_batch(manifest, rows, seed)
        calibration = Split(sparse, dense, np.zeros(rows, np.float32))
        int8_static_qdq(model, out, manifest.feature_spec, calibration)

    recipe = artifacts.Recipe(precision="int8", quantization="static")
    return _quantized_copy(src, store, "int8-static", recipe, quantize)


def write_eval_csv(variant: Path, path: Path, rows: int, seed: int = 0) -> Path:
    """Labelled rows for a synthetic variant as custom eval data (CSV, the feature spec's
    columns and ``label``): the label is whether the variant's own score is above its
    median, flipped for a fifth of the rows, so AUC is meaningful (about 0.8)."""
    import onnxruntime as ort

    manifest = artifacts.load_manifest(variant)
    sparse, dense = random_batch(manifest, rows, seed)
    sess = ort.InferenceSession(str(variant / manifest.artifact.file))
    scores = np.asarray(sess.run(None, {"sparse_ids": sparse, "dense": dense})[0]).reshape(-1)
    rng = np.random.default_rng(seed)
    label = (scores > np.median(scores)) ^ (rng.random(rows) < 0.2)
    fs = manifest.feature_spec
    names = [f.name for f in fs.sparse] + [f.name for f in fs.dense] + [fs.label]
    table = np.concatenate([sparse, dense, label.reshape(-1, 1)], axis=1)
    with path.open("w") as out:
        out.write(",".join(names) + "\n")
        for row in table:
            cells = [str(int(v)) for v in row[: len(fs.sparse)]]
            cells += [f"{v:.5f}" for v in row[len(fs.sparse) : -1]] + [str(int(row[-1]))]
            out.write(",".join(cells) + "\n")
    return path


def quick_profile(variants: Path, out: Path) -> artifacts.ProfileReport:
    """Every variant of the folder profiled briefly on this machine (model compute only:
    `recserve profile --seconds 0.1 --no-serving`), the report also written to ``out``:
    the shape that :func:`emulated_profile` rewrites."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "recserve_runtime.cli", "profile", f"--variants={variants}",
         f"--json={out}", "--seconds=0.1", "--no-serving"],
        check=True, capture_output=True,
    )  # fmt: skip
    return artifacts.ProfileReport.read(out)


def emulated_profile(
    real: artifacts.ProfileReport,
    us_per_batch: float,
    us_per_row: float,
    batches: tuple[int, ...] = (1, 8, 64, 128),
) -> artifacts.ProfileReport:
    """``real`` with the times of a device emulated by `recserve serve --emulate-us-per-batch
    --emulate-us-per-row` (no serving overhead: the planner counts the model only), at
    ``batches`` rows."""
    variants = {}
    for key, measured in real.variants.items():
        points = []
        for batch in batches:
            p50 = us_per_batch + us_per_row * batch
            points.append(
                artifacts.ProfilePoint(
                    batch_size=batch,
                    p50_us=p50,
                    p99_us=p50 * 1.2,
                    samples_per_second=batch / (p50 / 1e6),
                )
            )
        variants[key] = measured.model_copy(update={"points": points})
    return real.model_copy(update={"variants": variants, "serving": None})
