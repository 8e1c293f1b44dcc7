"""Architecture name (config.json `architectures[0]`) -> model class, and the factory that builds
and loads one. The model runner calls `create_model`."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from tachyon.models.llama import LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

logger = logging.getLogger(__name__)

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class_for(hf_config) -> type[nn.Module]:
    archs = getattr(hf_config, "architectures", None) or []
    for arch in archs:
        if arch in MODEL_REGISTRY:
            return MODEL_REGISTRY[arch]
    raise ValueError(f"unsupported architecture {archs}; supported: {sorted(MODEL_REGISTRY)}")


def create_model(source, dtype: torch.dtype, device: torch.device, weights: Iterable | None = None) -> nn.Module:
    """Build the model for `source` (a ModelSource) directly on `device` and load its weights
    (`weights` overrides the source's own stream, e.g. with dequantized tensors)."""
    cls = model_class_for(source.hf_config)
    with torch.device(device):
        model = cls(source.hf_config, dtype)
    model.load_weights(weights if weights is not None else source.iter_weights())
    logger.info("Loaded %s (%s) in %s on %s", source.path, cls.__name__, dtype, device)
    return model.eval()
