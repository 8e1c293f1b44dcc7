"""Triton attention backend for CUDA: a Triton KV-cache write, then the unified paged-attention kernel.

Picked by `create_attention_backend("auto" | "triton", device)`; importing it needs only triton
installed, launching needs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1).
"""

from __future__ import annotations

from tachyon.kernels.paged_attention import TilePlan, paged_attention, plan_tiles, write_kv
from tachyon.layers.attention.backend import AttentionBackend, register_backend
from tachyon.layers.attention.metadata import AttentionMetadata


@register_backend("triton")
class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def __init__(self) -> None:
        self._plan_for: AttentionMetadata | None = None
        self._plan: TilePlan | None = None

    def forward(self, query, key, value, kv_cache, meta, scale):
        write_kv(key, value, kv_cache, meta.slot_mapping)
        if self._plan_for is not meta:  # the tile plan depends only on the step: build it once
            group = query.shape[1] // key.shape[1]
            self._plan, self._plan_for = plan_tiles(meta, group, query.device), meta
        return paged_attention(query, kv_cache, meta, scale, plan=self._plan)
