"""Checkpoints of zoo models: one torch file with config, state dict and feature spec."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from recserve_runtime.artifacts import FeatureSpec
from recserve_runtime.zoo.models import ModelConfig, RecNet, build_model

FORMAT = "recserve-zoo-v1"


def models_dir() -> Path:
    """Where trained models are cached (outside git): $RECSERVE_MODEL_DIR or ~/.cache."""
    raw = os.environ.get("RECSERVE_MODEL_DIR")
    return Path(raw) if raw else Path.home() / ".cache" / "recserve" / "models"


def save_checkpoint(
    path: Path, model: RecNet, spec: FeatureSpec, meta: dict[str, Any] | None = None
) -> Path:
    """Write a checkpoint atomically (temp file + rename; the temp file's name is its
    own, so two processes writing the same checkpoint never interleave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    torch.save(
        {
            "format": FORMAT,
            "config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "feature_spec": spec.model_dump(by_alias=True, mode="json"),
            "meta": meta or {},
        },
        tmp,
    )
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> tuple[RecNet, FeatureSpec, dict[str, Any]]:
    """(model in eval mode, feature spec, meta); raises ValueError if not a checkpoint."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    model = build_model(ModelConfig.from_dict(raw["config"]))
    # pruned checkpoints carry their narrower widths in the config
    model.load_state_dict(raw["state_dict"])
    model.eval()
    return model, FeatureSpec.model_validate(raw["feature_spec"]), dict(raw.get("meta", {}))
