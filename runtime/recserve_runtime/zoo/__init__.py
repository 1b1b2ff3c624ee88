"""Model zoo: DLRM, DCN-v2 and DeepFM in torch, with one config type and checkpoint format."""

from recserve_runtime.zoo.models import ARCHS, ModelConfig, RecNet, build_model

__all__ = ["ARCHS", "ModelConfig", "RecNet", "build_model"]
