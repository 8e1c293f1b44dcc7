"""Architecture name (config.json `architectures[0]`) -> model class, and the factory that builds
and loads one. The model runner calls `create_model`."""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn

from tachyon.layers.linear import Linear
from tachyon.models.llama import LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM
from tachyon.quantization.sparsity import SPARSE_24_BITMASK, densify_sparse_24

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


def create_model(source, dtype: torch.dtype, device: torch.device, load_format: str = "auto") -> nn.Module:
    """Build the model for `source` (a ModelSource) directly on `device` and load its weights. load_format
    "dummy" fills them with random values instead, for speed and memory measurements of a model's shape."""
    cls = model_class_for(source.hf_config)
    with torch.device(device):
        model = cls(source.hf_config, dtype)
    if load_format == "dummy":
        _randomize(model)
        model.finish_loading()
        logger.warning(
            "Random weights (load_format=dummy) for %s (%s): outputs are meaningless", source.path, cls.__name__
        )
    else:
        model.load_weights(_checkpoint_weights(source))
        logger.info("Loaded %s (%s) in %s on %s", source.path, cls.__name__, dtype, device)
    _log_linear_kernels(model)
    return model.eval()


@torch.no_grad()
def _randomize(model: nn.Module) -> None:
    """Norm scales 1, biases 0, matrices N(0, 0.02): activations stay in range, as in a trained model.
    Quantized weights get random codes and scales that put them in the same range."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(0)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        elif name.endswith("bias") or name.endswith("zero_point"):
            p.zero_()
        elif name.endswith("_scale"):
            p.fill_(0.02 / 4)  # int8 codes of std ~4 or fp8 values of std ~4
        elif p.dtype == torch.int32:  # packed codes: every bit pattern is valid
            p.random_(generator=generator)
        elif p.dtype.is_floating_point and p.element_size() > 1:
            p.normal_(0.0, 0.02, generator=generator)
        else:  # int8 codes, fp8 values
            p.copy_(torch.randn(p.shape, generator=generator, device=p.device).mul_(4).clamp_(-127, 127).round_())


def _checkpoint_weights(source):
    """The source's weight stream, legacy sparse-24-bitmask modules turned back into plain `<m>.weight`."""
    sparsity = (getattr(source.hf_config, "quantization_config", None) or {}).get("sparsity_config") or {}
    if sparsity.get("format") == SPARSE_24_BITMASK:
        return densify_sparse_24(source.iter_weights())
    return source.iter_weights()


def _log_linear_kernels(model: nn.Module) -> None:
    """Say which kernel runs the Linears."""
    kernels = Counter(m.method.kernel for m in model.modules() if isinstance(m, Linear))
    logger.info("Linear layers: %s", "; ".join(f"{n} x {kernel}" for kernel, n in kernels.items()))
