"""SmoothQuant (Xiao et al. 2023, arXiv 2211.10438): move activation outliers into the weights before W8A8.
For a norm feeding Linears W_1..W_k, per input channel j:

    s_j = max|X_j|^α / max_i max|W_i[:, j]|^(1-α)        X' = X / s  (folded into the norm's weight)
                                                          W_i' = W_i * s  (column j scaled)

so X' W_i'ᵀ = X W_iᵀ exactly, while X' has flatter channels (easier per-token int8) and the weights absorb
the outliers (per-channel int8 handles them). `SmoothQuantModifier` calls these on each layer.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LLAMA_SMOOTHING_MAPPINGS", "apply_smoothing", "smoothing_scales"]

# (norm, the Linears it feeds), relative to a decoder layer: LLM Compressor's default for Llama-family models
LLAMA_SMOOTHING_MAPPINGS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
)
_MIN_SCALE = 1e-5


def smoothing_scales(act_absmax: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    """s [in_features] from the calibration inputs' per-channel max |x| and the Linears' column max |w|."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing_strength must be in [0, 1], got {alpha}")
    weight_absmax = torch.stack([lin.weight.abs().amax(dim=0) for lin in linears]).amax(dim=0)
    scales = act_absmax.float().pow(alpha) / weight_absmax.float().pow(1 - alpha)
    scales = torch.where(torch.isfinite(scales), scales, torch.ones_like(scales))  # dead channels: leave alone
    return scales.clamp(min=_MIN_SCALE)


@torch.no_grad()
def apply_smoothing(norm: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """Divide the norm's weight by `scales` and multiply each Linear's input columns by them (in place)."""
    norm.weight.div_(scales.to(norm.weight.dtype))
    for linear in linears:
        linear.weight.mul_(scales.to(linear.weight.dtype)[None, :])
