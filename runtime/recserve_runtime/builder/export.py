"""Torch -> ONNX export with the recserve input contract, and the portable FP32 pass.

The legacy TorchScript exporter is used on purpose: it also takes TorchScript models
(bring-your-own), and it emits plain Gemm/Gather graphs that onnxruntime's quantizer
handles. Inputs: the feature spec's ``sparseInput`` (int64 [B, F], default ``sparse_ids``)
and ``denseInput`` (float32 [B, D], default ``dense``), in the order the model takes them;
output ``score`` float32 [B]. A bring-your-own ONNX model is brought to the same output
contract by :func:`normalize_onnx`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from recserve_runtime.artifacts import FeatureSpec, TensorSpec

OPSET = 17


def io_specs(spec: FeatureSpec) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The manifest's inputs and outputs for a feature spec."""
    n_dense = sum(f.width for f in spec.dense)
    inputs = [
        TensorSpec(name=spec.sparse_input, dtype="int64", shape=[-1, len(spec.sparse)]),
        TensorSpec(name=spec.dense_input, dtype="float32", shape=[-1, n_dense]),
    ]
    return inputs, [TensorSpec(name="score", dtype="float32", shape=[-1])]


def example_inputs(spec: FeatureSpec, batch: int = 4, seed: int = 0) -> tuple[Any, Any]:
    """Random torch inputs that fit the spec."""
    import torch

    rng = np.random.default_rng(seed)
    vocab = np.array([f.vocab_size for f in spec.sparse])
    sparse = (rng.random((batch, len(vocab))) * vocab).astype(np.int64)
    n_dense = sum(f.width for f in spec.dense)
    dense = rng.standard_normal((batch, n_dense)).astype(np.float32)
    return torch.from_numpy(sparse), torch.from_numpy(dense)


def export_onnx(
    model: Any, spec: FeatureSpec, path: Path, order: tuple[str, str] | None = None
) -> Path:
    """Export a torch (or TorchScript) model to ONNX. ``order``: its input names in the
    order forward() takes them (default: sparseInput, denseInput)."""
    import torch

    sparse, dense = example_inputs(spec)
    names = order or (spec.sparse_input, spec.dense_input)
    by_name = {spec.sparse_input: sparse, spec.dense_input: dense}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(by_name[n] for n in names),
            str(path),
            input_names=list(names),
            output_names=["score"],
            dynamic_axes={
                spec.sparse_input: {0: "batch"},
                spec.dense_input: {0: "batch"},
                "score": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def normalize_onnx(src: Path, dst: Path) -> Path:
    """A bring-your-own ONNX model with the recserve output contract: its one output
    (checked by the source loader: [B] or [B, 1]) reshaped to ``score`` float32 [B]."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    out = model.graph.output[0]
    shape = numpy_helper.from_array(np.array([-1], np.int64), "recserve_score_shape")
    model.graph.initializer.append(shape)
    model.graph.node.append(
        helper.make_node("Reshape", [out.name, shape.name], ["score"], name="recserve_score")
    )
    del model.graph.output[:]
    model.graph.output.append(
        helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["batch"])
    )
    onnx.save(model, str(dst))
    return dst


def optimize_portable(src: Path, dst: Path) -> Path:
    """onnxruntime's basic graph optimizations (constant folding, redundant-node removal),
    saved offline. Only standard ONNX ops come out, so the file stays loadable by any
    execution provider; hardware-specific fusions are left to load time."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.intra_op_num_threads = 1
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return dst
