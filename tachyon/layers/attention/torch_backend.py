"""PyTorch reference attention over the paged KV cache: runs anywhere torch runs.

Sequences with the same number of new tokens are attended together: their KV is gathered from
the block pool into a padded [G, H_kv, K, D] tensor and handed to SDPA with a causal mask.
Decodes (1 new token) form one group, speculative verifications (k + 1) another, and each
prefill chunk usually its own. The gather plan depends only on the step, so it is built once
per step and reused by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tachyon.layers.attention.backend import AttentionBackend, register_backend, write_kv_cache
from tachyon.layers.attention.metadata import AttentionMetadata


@dataclass
class _Group:
    token_idx: torch.Tensor  # [G, q] rows of the flat batch
    kv_slots: torch.Tensor  # [G, K] cache slots, padded with slot 0
    mask: torch.Tensor  # [G, 1, q, K] True where a query may attend


def _build_plan(meta: AttentionMetadata, device: torch.device) -> list[_Group]:
    by_len: dict[int, list[int]] = {}
    for b, q_len in enumerate(meta.query_lens_cpu):
        by_len.setdefault(q_len, []).append(b)
    starts = meta.query_start_loc.tolist()
    groups = []
    for q_len, seqs in by_len.items():
        seq_lens = torch.tensor([meta.seq_lens_cpu[b] for b in seqs], device=device)  # [G]
        k_len = int(seq_lens.max())
        offsets = torch.arange(q_len, device=device)
        token_idx = torch.tensor([starts[b] for b in seqs], device=device)[:, None] + offsets  # [G, q]
        kv_pos = torch.arange(k_len, device=device)  # [K]
        tables = meta.block_tables[seqs][:, : -(-k_len // meta.block_size)].long()  # [G, nb]
        slots = tables[:, kv_pos // meta.block_size] * meta.block_size + kv_pos % meta.block_size  # [G, K]
        q_pos = seq_lens[:, None] - q_len + offsets  # [G, q] absolute position of each query
        mask = kv_pos[None, None, :] <= q_pos[:, :, None]  # [G, q, K]; also excludes padding
        groups.append(_Group(token_idx, torch.where(mask[:, -1], slots, 0), mask[:, None]))
    return groups


@register_backend("torch")
class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def __init__(self) -> None:
        self._plan_for: AttentionMetadata | None = None
        self._plan: list[_Group] = []

    def forward(self, query, key, value, kv_cache, meta, scale):
        write_kv_cache(key, value, kv_cache, meta.slot_mapping)
        if self._plan_for is not meta:
            self._plan, self._plan_for = _build_plan(meta, query.device), meta
        flat = kv_cache.flatten(1, 2)  # [2, num_slots, H_kv, D]
        out = torch.empty_like(query)
        for g in self._plan:
            q = query[g.token_idx].transpose(1, 2)  # [G, H, q, D]
            k = flat[0][g.kv_slots].transpose(1, 2)  # [G, H_kv, K, D]
            v = flat[1][g.kv_slots].transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scale, enable_gqa=True)
            out[g.token_idx] = o.transpose(1, 2)
        return out
