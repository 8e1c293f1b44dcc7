"""AWQ (Lin et al. 2024, arXiv 2306.00978): activation-aware weight quantization. For a norm (or Linear)
feeding Linears W_1..W_k, search per-input-channel scales

    s = mean|x|^r / mean|ŵ|^(1-r),  r in {0, 1/n, ..., (n-1)/n}      ŵ: |W| normalized per quantization group
    s = s / sqrt(max s * min s)

keeping the r whose pseudo-quantized Q(W·s)/s gives the parent block (attention, MLP, down_proj) the output
closest to the original; then fold 1/s into the feeding op and s into W. Then search, per output channel and
group, the clipping range max|w|·(1 - i/n) that minimizes the quantized group's output error. The weights
are finally quantized round-to-nearest. `AWQModifier` runs these on each decoder layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tachyon.quantization.quantize import round_to_nearest
from tachyon.quantization.schemes import QuantArgs

__all__ = ["apply_clip", "clip_search", "scale_search"]

_MIN_SCALE = 1e-4


def _group_len(args: QuantArgs, in_features: int) -> int:
    return args.group_size if args.strategy == "group" else in_features


def _normalized_weight_mean(linears: list[nn.Linear], args: QuantArgs) -> torch.Tensor:
    """mean over output rows of |w| / max|w| of its quantization group: [in_features]."""
    weight = torch.cat([lin.weight for lin in linears]).float()  # [sum_out, in]
    rows, cols = weight.shape
    groups = weight.abs().reshape(rows, -1, _group_len(args, cols))
    normalized = groups / groups.amax(dim=-1, keepdim=True).clamp(min=1e-8)
    return normalized.reshape(rows, cols).mean(dim=0)


@torch.no_grad()
def scale_search(
    linears: list[nn.Linear],
    act_mean: torch.Tensor,
    block_output: Callable[[], torch.Tensor],
    args: QuantArgs,
    *,
    n_grid: int = 20,
    duo_scaling: bool = True,
) -> torch.Tensor:
    """The best smoothing scales [in_features] for `linears`: `block_output()` recomputes the parent block's
    output over the search samples with the Linears' current weights. Weights are restored on return."""
    originals = [lin.weight.detach().clone() for lin in linears]
    reference = block_output()
    weight_mean = _normalized_weight_mean(linears, args)
    best_scales, best_loss = torch.ones_like(act_mean), float("inf")
    for step in range(n_grid):
        ratio = step / n_grid
        if duo_scaling:
            scales = act_mean.pow(ratio) / weight_mean.pow(1 - ratio).clamp(min=_MIN_SCALE)
        else:
            scales = act_mean.pow(ratio)
        scales = scales.clamp(min=_MIN_SCALE)
        scales = scales / (scales.max() * scales.min()).sqrt()
        for lin, weight in zip(linears, originals):
            lin.weight.copy_(round_to_nearest(weight * scales, args)[0] / scales)
        loss = (block_output() - reference).float().pow(2).mean().item()
        if loss < best_loss:
            best_loss, best_scales = loss, scales.clone()
    for lin, weight in zip(linears, originals):
        lin.weight.copy_(weight)
    return best_scales


@torch.no_grad()
def clip_search(
    weight: torch.Tensor, inputs: torch.Tensor, args: QuantArgs, *, n_grid: int = 20, max_shrink: float = 0.5
) -> torch.Tensor:
    """Per (output row, group) clipping bound [out, num_groups, 1] minimizing the group's output error
    (x_g · w_g - x_g · Q(clip(w_g)))² averaged over `inputs` [tokens, in]."""
    rows, cols = weight.shape
    group_len = _group_len(args, cols)
    w = weight.float().reshape(rows, -1, group_len)  # [out, G, g]
    x = inputs.float().reshape(-1, cols // group_len, group_len)  # [tokens, G, g]
    reference = torch.einsum("tgk,ogk->ogt", x, w)  # [out, G, tokens]
    original_max = w.abs().amax(dim=-1, keepdim=True)  # [out, G, 1]
    best_max = original_max.clone()
    best_err = torch.full_like(original_max, float("inf"))
    for step in range(int(max_shrink * n_grid)):
        max_val = original_max * (1 - step / n_grid)
        clipped = torch.max(torch.min(w, max_val), -max_val).reshape(rows, cols)
        quantized = round_to_nearest(clipped, args)[0].reshape(rows, -1, group_len)
        err = (torch.einsum("tgk,ogk->ogt", x, quantized) - reference).pow(2).mean(dim=-1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, max_val, best_max)
    return best_max


def apply_clip(weight: torch.Tensor, max_val: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """`weight` clamped to ±max_val per (row, group)."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, -1, _group_len(args, cols))
    return torch.max(torch.min(groups, max_val), -max_val).reshape(rows, cols)
