"""INT4 row-wise embedding tables by ONNX graph surgery (hand-written, with a reason).

Why custom: onnxruntime's quantizers store Gather tables per-tensor (dynamic/static) or
need the contrib op GatherBlockQuantized (com.microsoft, CPU/CUDA only, integer zero
points). Row-wise 4-bit with a float scale and bias per row (Guan et al. 2019) is not
offered, and a contrib op would tie the artifact to onnxruntime. So each embedding
``Gather(table, ids)`` becomes, in standard ONNX ops only (opset 13+, any provider)::

    codes = Gather(packed uint8 [V, D/2], ids)        # two 4-bit codes per byte
    pairs = Gather(LUT float32 [256, 2], Cast(codes)) # byte -> (low nibble, high nibble)
    rows  = Reshape(pairs, [..., D]) * Cast(Gather(scale fp16 [V,1], ids))
                                     + Cast(Gather(bias  fp16 [V,1], ids))

Per row: bias = min (rounded down to fp16), scale = (max - bias) / 15 (rounded up to
fp16), code = round((w - bias) / scale) in [0, 15]; so every element dequantizes
within ``scale / 2`` of its float value. Storage: D/2 + 4 bytes per row (dim 64: 36 of
256 bytes, 14%). Tables with an odd dim or fewer than ``min_rows`` rows stay float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LEVELS = 15


def _fp16_down(x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float16)
    return np.where(h.astype(np.float32) > x, np.nextafter(h, np.float16(-np.inf)), h)


def _fp16_up(x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float16)
    return np.where(h.astype(np.float32) < x, np.nextafter(h, np.float16(np.inf)), h)


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(packed uint8 [V, D/2], scale fp16 [V, 1], bias fp16 [V, 1]) of a float table."""
    w = table.astype(np.float32)
    if w.ndim != 2 or w.shape[1] % 2:
        raise ValueError(f"need a [rows, even dim] table, got shape {w.shape}")
    bias = _fp16_down(w.min(axis=1, keepdims=True))
    span = w.max(axis=1, keepdims=True) - bias.astype(np.float32)
    scale = _fp16_up(np.maximum(span / LEVELS, 1e-8))
    codes = np.rint((w - bias.astype(np.float32)) / scale.astype(np.float32))
    codes = np.clip(codes, 0, LEVELS).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, scale, bias


def dequantize_rows(packed: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Float32 rows back from ``quantize_rows`` output (the graph computes the same)."""
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    return codes.astype(np.float32) * scale.astype(np.float32) + bias.astype(np.float32)


def nibble_lut() -> np.ndarray:
    """[256, 2] float32: byte value -> (low nibble, high nibble)."""
    b = np.arange(256, dtype=np.uint8)
    return np.stack([b & 0x0F, b >> 4], axis=1).astype(np.float32)


def int4_embeddings(src: Path, dst: Path, min_rows: int = 2) -> int:
    """Rewrite every embedding Gather of ``src`` as INT4 row-wise; returns tables done."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    done: dict[str, tuple[str, str, str, int]] = {}
    lut = "int4_nibble_lut"
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" else ""
        t = inits.get(table)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        ok = (
            t is not None
            and axis == 0
            and len(t.dims) == 2
            and t.dims[1] % 2 == 0
            and t.dims[0] >= min_rows
            and t.data_type == TensorProto.FLOAT
        )
        if not ok:
            new_nodes.append(node)
            continue
        assert t is not None
        if table not in done:
            packed, scale, bias = quantize_rows(numpy_helper.to_array(t))
            names = (f"{table}_int4", f"{table}_scale", f"{table}_bias")
            for name, arr in zip(names, (packed, scale, bias), strict=True):
                graph.initializer.append(numpy_helper.from_array(arr, name))
            done[table] = (*names, int(t.dims[1]))
        packed_n, scale_n, bias_n, dim = done[table]
        ids, out = node.input[1], node.output[0]
        p = f"{node.name or out}_int4"
        new_nodes += [
            helper.make_node("Gather", [packed_n, ids], [f"{p}_codes"]),
            helper.make_node("Cast", [f"{p}_codes"], [f"{p}_codes32"], to=TensorProto.INT32),
            helper.make_node("Gather", [lut, f"{p}_codes32"], [f"{p}_pairs"]),
            helper.make_node("Shape", [ids], [f"{p}_idshape"]),
            helper.make_node("Concat", [f"{p}_idshape", f"{p}_dim"], [f"{p}_shape"], axis=0),
            helper.make_node("Reshape", [f"{p}_pairs", f"{p}_shape"], [f"{p}_codesf"]),
            helper.make_node("Gather", [scale_n, ids], [f"{p}_s16"]),
            helper.make_node("Cast", [f"{p}_s16"], [f"{p}_s"], to=TensorProto.FLOAT),
            helper.make_node("Gather", [bias_n, ids], [f"{p}_b16"]),
            helper.make_node("Cast", [f"{p}_b16"], [f"{p}_b"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_codesf", f"{p}_s"], [f"{p}_scaled"]),
            helper.make_node("Add", [f"{p}_scaled", f"{p}_b"], [out]),
        ]
        graph.initializer.append(numpy_helper.from_array(np.array([dim], np.int64), f"{p}_dim"))
    if done:
        graph.initializer.append(numpy_helper.from_array(nibble_lut(), lut))
        used = {i for n in new_nodes for i in n.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        del graph.node[:]
        graph.node.extend(new_nodes)
    onnx.save(model, str(dst))
    return len(done)
