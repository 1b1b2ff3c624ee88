"""Variant builder: ONNX export, quantization, INT4 embeddings, pruning, distillation,
evaluation, accuracy gate, Pareto selection and the content-addressed store."""

from recserve_runtime.builder.errors import BuildError

__all__ = ["BuildError"]
