"""Recommendation architectures. Every model maps (sparse_ids int64 [B, F], dense float32
[B, D]) to ``score`` float32 [B] probabilities; ``logits`` gives the pre-sigmoid value.

Embeddings are ``nn.Embedding`` (one per field), not ``EmbeddingBag``: the ONNX exporter
does not handle EmbeddingBag. MLPs are ``nn.Sequential`` of Linear/ReLU whose last
Linear is never pruned, so structured pruning can work on each MLP on its own.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

ARCHS = ("dlrm", "dcnv2", "deepfm")


@dataclass
class ModelConfig:
    """Architecture and sizes. ``top_mlp`` are hidden widths; a final Linear to 1 follows."""

    arch: str
    vocab_sizes: list[int]
    n_dense: int
    embedding_dim: int = 32
    bottom_mlp: list[int] = field(default_factory=lambda: [64])
    top_mlp: list[int] = field(default_factory=lambda: [512, 256, 128])
    cross_layers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        return cls(**raw)


def mlp(in_dim: int, widths: list[int], out_dim: int | None, last_relu: bool) -> nn.Sequential:
    """Linear+ReLU stack; ``out_dim`` appends a final Linear (ReLU'd when ``last_relu``)."""
    layers: list[nn.Module] = []
    dims = [in_dim, *widths]
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    if out_dim is not None:
        layers.append(nn.Linear(dims[-1], out_dim))
        if last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RecNet(nn.Module):
    """Base class: per-field embeddings; subclasses define ``logits``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        tables = [nn.Embedding(v, config.embedding_dim) for v in config.vocab_sizes]
        for emb in tables:
            nn.init.normal_(emb.weight, std=0.05)
        self.embeddings = nn.ModuleList(tables)

    def embed(self, sparse_ids: torch.Tensor) -> torch.Tensor:
        """[B, F, dim] embeddings of each field."""
        return torch.stack([emb(sparse_ids[:, k]) for k, emb in enumerate(self.embeddings)], dim=1)

    def logits(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(sparse_ids, dense))

    def mlps(self) -> list[nn.Sequential]:
        """The MLPs structured pruning may shrink (their last Linear keeps its width)."""
        return [m for m in self.children() if isinstance(m, nn.Sequential)]


class DLRM(RecNet):
    """DLRM: bottom MLP on dense features, pairwise dot interactions, top MLP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        dim, n = config.embedding_dim, len(config.vocab_sizes) + 1
        self.bottom = mlp(config.n_dense, config.bottom_mlp, dim, last_relu=True)
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pair_index", rows * n + cols, persistent=False)
        self.top = mlp(dim + n * (n - 1) // 2, config.top_mlp, 1, last_relu=False)

    def logits(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        t = torch.cat([x.unsqueeze(1), self.embed(sparse_ids)], dim=1)
        z = torch.bmm(t, t.transpose(1, 2)).flatten(1)
        pairs = torch.index_select(z, 1, self.pair_index)  # type: ignore[arg-type]
        out: torch.Tensor = self.top(torch.cat([x, pairs], dim=1))
        return out.squeeze(1)


class DCNv2(RecNet):
    """DCN-v2 (stacked): full-rank cross layers over [embeddings, dense], then the MLP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        width = config.embedding_dim * len(config.vocab_sizes) + config.n_dense
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(config.cross_layers))
        self.top = mlp(width, config.top_mlp, 1, last_relu=False)

    def logits(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([self.embed(sparse_ids).flatten(1), dense], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        out: torch.Tensor = self.top(x)
        return out.squeeze(1)


class DeepFM(RecNet):
    """DeepFM: first-order terms + FM second-order interactions + MLP, summed."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.first = nn.ModuleList(nn.Embedding(v, 1) for v in config.vocab_sizes)
        self.dense_linear = nn.Linear(config.n_dense, 1)
        width = config.embedding_dim * len(config.vocab_sizes) + config.n_dense
        self.top = mlp(width, config.top_mlp, 1, last_relu=False)

    def logits(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        e = self.embed(sparse_ids)
        first = sum(emb(sparse_ids[:, k]) for k, emb in enumerate(self.first))
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1, keepdim=True)
        deep = self.top(torch.cat([e.flatten(1), dense], dim=1))
        out = first + fm + deep + self.dense_linear(dense)
        return out.squeeze(1)  # type: ignore[no-any-return]


_CLASSES: dict[str, type[RecNet]] = {"dlrm": DLRM, "dcnv2": DCNv2, "deepfm": DeepFM}


def build_model(config: ModelConfig) -> RecNet:
    """A freshly initialised model of ``config.arch``."""
    if config.arch not in _CLASSES:
        raise ValueError(f"unknown architecture {config.arch!r}; the zoo has {', '.join(ARCHS)}")
    return _CLASSES[config.arch](config)
