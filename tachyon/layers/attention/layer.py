"""The attention layer models call: owns its head geometry; the model runner binds the chosen
backend and this layer's slice of the KV cache before the first step."""

from __future__ import annotations

import torch
from torch import nn

from tachyon.layers.attention.backend import AttentionBackend
from tachyon.layers.attention.metadata import AttentionMetadata


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = (
            num_heads,
            num_kv_heads,
            head_dim,
            scale,
        )
        self.backend: AttentionBackend | None = None
        self.kv_cache: torch.Tensor | None = None  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        self.kv_scales: torch.Tensor | None = None  # [2, num_blocks, block_size, num_kv_heads]: 8-bit cache only

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q [T, H, D], k/v [T, H_kv, D] -> [T, H * D]"""
        if self.backend is None or self.kv_cache is None:
            raise RuntimeError("attention layer used before the model runner bound a backend and KV cache")
        out = self.backend.forward(q, k, v, self.kv_cache, meta, self.scale, self.kv_scales)
        return out.flatten(1)
