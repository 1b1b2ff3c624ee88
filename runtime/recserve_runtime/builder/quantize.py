"""FP16 and INT8 (dynamic and static QDQ) variants via onnxconverter-common and
onnxruntime.quantization."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recserve_runtime.artifacts import FeatureSpec
from recserve_runtime.data.tabular import Split

SEQUENCE_OPS = [
    "SequenceConstruct",
    "SequenceInsert",
    "SequenceEmpty",
    "SequenceAt",
    "SequenceErase",
    "SequenceLength",
    "SplitToSequence",
    "ConcatFromSequence",
]


def to_fp16(src: Path, dst: Path) -> Path:
    """Weights and activations in float16, float32 inputs/outputs kept (for GPUs)."""
    import onnx
    from onnxconverter_common import float16

    # sequence ops (TorchScript list comprehensions) keep float32: the converter would
    # retype their outputs without retyping the sequence, which onnxruntime rejects
    model = float16.convert_float_to_float16(
        onnx.load(str(src)),
        keep_io_types=True,
        op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *SEQUENCE_OPS],
    )
    onnx.save(model, str(dst))
    return dst


def int8_dynamic(src: Path, dst: Path, op_types: list[str] | None = None) -> Path:
    """Dynamic INT8: weights (Gemm/MatMul and embedding Gathers) stored as int8,
    activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=op_types or ["Gemm", "MatMul", "Gather"],
    )
    return dst


class _Calibration:
    """Feeds calibration batches from training rows to the static quantizer."""

    def __init__(self, spec: FeatureSpec, rows: Split, batch: int) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = (
            {
                spec.sparse_input: rows.sparse[s : s + batch],
                spec.dense_input: rows.dense[s : s + batch],
            }
            for s in range(0, len(rows), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # required by newer onnxruntime readers; one pass suffices
        return None


def int8_static_qdq(
    src: Path, dst: Path, spec: FeatureSpec, calibration: Split, batch: int = 256
) -> Path:
    """Static INT8 in QDQ format, activation ranges calibrated (MinMax) on training rows."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    logging.getLogger().setLevel(logging.ERROR)
    reader = _Calibration(spec, calibration, batch)
    CalibrationDataReader.register(_Calibration)
    quantize_static(
        str(src),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["Gemm", "MatMul", "Gather"],
    )
    return dst
