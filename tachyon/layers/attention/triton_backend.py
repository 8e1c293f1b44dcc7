"""Triton attention backend for CUDA: a Triton KV-cache write, then the unified paged-attention kernel.

Picked by `create_attention_backend("auto" | "triton", device)`; importing it needs only triton
installed, launching needs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1).
"""

from __future__ import annotations

from tachyon.kernels.paged_attention import paged_attention, plan_tiles, write_kv
from tachyon.layers.attention.backend import AttentionBackend, register_backend


@register_backend("triton")
class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def forward(self, query, key, value, kv_cache, meta, scale, kv_scales=None):
        if kv_scales is not None:
            raise NotImplementedError("the Triton backend has no 8-bit KV cache yet; the runner picks torch for it")
        write_kv(key, value, kv_cache, meta.slot_mapping)
        if meta.plan is None:  # the tile plan depends only on the step: the first layer builds it
            meta.plan = plan_tiles(meta, query.shape[1] // key.shape[1], query.device)
        return paged_attention(query, kv_cache, meta, scale, plan=meta.plan)
