"""Structured pruning of MLP neurons with torch-pruning (magnitude importance).

Each MLP (``RecNet.mlps()``) is pruned on its own: every hidden Linear loses
``ratio`` of its output neurons (lowest group L2 norm first) and the next layer its
matching inputs; each MLP's last Linear keeps its width, so the surrounding graph
(interactions, output) is untouched. Fine-tuning afterwards is the caller's job
(``train.fit``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recserve_runtime.zoo.models import RecNet


def count_params(model: RecNet, mlp_only: bool = False) -> int:
    """Parameters of the model (or only of its MLPs)."""
    modules = model.mlps() if mlp_only else [model]
    return sum(p.numel() for m in modules for p in m.parameters())


def hidden_widths(model: RecNet) -> dict[str, list[int]]:
    """Current output widths of each MLP's Linears (last one included)."""
    from torch import nn

    out: dict[str, list[int]] = {}
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out[name] = [m.out_features for m in child if isinstance(m, nn.Linear)]
    return out


def prune_mlps(model: RecNet, ratio: float) -> RecNet:
    """Remove ``ratio`` of every hidden MLP layer's neurons in place; updates the config."""
    import torch
    import torch_pruning as tp
    from torch import nn

    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
    for seq in model.mlps():
        linears = [m for m in seq if isinstance(m, nn.Linear)]
        if len(linears) < 2:
            continue
        pruner = tp.pruner.MetaPruner(
            seq,
            example_inputs=torch.randn(2, linears[0].in_features),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=[linears[-1]],
        )
        pruner.step()
    widths = hidden_widths(model)
    if "bottom" in widths:
        model.config.bottom_mlp = widths["bottom"][:-1]
    if "top" in widths:
        model.config.top_mlp = widths["top"][:-1]
    return model
