"""Quantized KV cache (`--kv-cache-dtype fp8|int8`): 8-bit keys and values with one float32 scale per
(token, KV head), computed when the token is written (absmax over head_dim / the type's max).

Why per token and head instead of the checkpoint's per-tensor `k_scale`/`v_scale`: it needs no
calibration, is never coarser than a per-tensor scale, and costs 4 bytes next to head_dim bytes, so
the pool still holds ~1.9x the tokens of a 16-bit cache (head_dim 64: 68 vs 128 bytes per head).

Scales live beside the cache: [2, num_blocks, block_size, num_kv_heads] float32 (keys, values), so a
slot's scale has the same index as its row in the [slots * H_kv, D] view the backends gather from.
"""

from __future__ import annotations

import torch

KV_CACHE_DTYPES: dict[str, torch.dtype] = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
SCALE_DTYPE = torch.float32


def _max_code(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max) if dtype.is_floating_point else 127.0


def kv_bytes_per_head(head_dim: int, model_dtype: torch.dtype, kv_dtype: torch.dtype | None) -> int:
    """Bytes one token's key (or value) of one KV head takes in the pool, scale included."""
    if kv_dtype is None:
        return head_dim * model_dtype.itemsize
    return head_dim * kv_dtype.itemsize + SCALE_DTYPE.itemsize


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, H, D] -> codes [T, H, D] of `dtype` and scales [T, H] float32 (zero rows get scale 1)."""
    absmax = x.abs().amax(dim=-1).float()
    scale = torch.where(absmax > 0, absmax / _max_code(dtype), 1.0)
    scaled = x.float() / scale[..., None]
    codes = scaled.to(dtype) if dtype.is_floating_point else scaled.round_().to(dtype)
    return codes, scale


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes [..., D], scale [...] -> values [..., D] in the model dtype."""
    return (codes.float() * scale[..., None]).to(dtype)
