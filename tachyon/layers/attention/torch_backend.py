"""PyTorch reference attention over the paged KV cache: runs anywhere torch runs.

Sequences with the same number of new tokens are attended together: their KV is gathered from
the block pool into a padded [G, H_kv, K, D] tensor and handed to SDPA with a causal mask.
Decodes (1 new token) form one group, speculative verifications (k + 1) another, and each
prefill chunk usually its own. The gather plan depends only on the step, so it is built once
per step and reused by every layer.

GQA without repeating KV: the query heads sharing a KV head are folded into the query-length
axis, so each KV head meets `group * q` query rows in one matmul:

    q [G, q, H_kv * group, D] -> [G, H_kv, q * group, D]   (row r = token r // group, head r % group)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tachyon.layers.attention.backend import AttentionBackend, register_backend, write_kv_cache
from tachyon.layers.attention.kv_quant import dequantize_kv
from tachyon.layers.attention.metadata import AttentionMetadata


@dataclass
class _Group:
    token_idx: torch.Tensor  # [G * q] rows of the flat batch, sequence-major
    kv_slots: torch.Tensor  # [G * K] cache slots, padded with slot 0
    num_seqs: int
    q_len: int
    k_len: int
    mask: torch.Tensor  # [G, 1, q, K] True where a query may attend
    folded_bias: torch.Tensor | None = None  # [G, 1, q * group, K] 0 / -inf, made by the first layer
    kv_rows: torch.Tensor | None = None  # [G * H_kv * K] rows of the [slots * H_kv, D] cache view


def build_plan(meta: AttentionMetadata, device: torch.device, subset: list[int] | None = None) -> list[_Group]:
    """Group the step's sequences (all, or those in `subset`) by their number of new tokens; gather indices
    per group."""
    by_len: dict[int, list[int]] = {}
    for b in range(len(meta.query_lens_cpu)) if subset is None else subset:
        by_len.setdefault(meta.query_lens_cpu[b], []).append(b)
    starts = [0, *itertools.accumulate(meta.query_lens_cpu)]  # host-side: no device sync
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
        slots = torch.where(mask[:, -1], slots, 0)
        groups.append(_Group(token_idx.flatten(), slots.flatten(), len(seqs), q_len, k_len, mask[:, None]))
    return groups


# Up to this many folded query rows per KV head (decodes, short verifications), two batched
# matmuls beat CPU SDPA (2x in bf16 on AVX-512); longer prefill chunks go to SDPA's flash kernel.
MATMUL_ATTENTION_MAX_ROWS = 16


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """q [G, H_kv, R, D], k/v [G, H_kv, K, D], bias [G, 1, R, K] -> [G, H_kv, R, D]"""
    if q.shape[2] > MATMUL_ATTENTION_MAX_ROWS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale).add_(bias)  # [G, H_kv, R, K]
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


def _gather(flat, kv_scales, i: int, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows (slot * H_kv + head) of keys (i=0) or values (i=1) -> [rows, D] in the model dtype."""
    head_dim = flat.shape[-1]
    if kv_scales is None:
        return flat[i].view(-1, head_dim).index_select(0, rows)
    codes = flat[i].view(torch.uint8).view(-1, head_dim).index_select(0, rows).view(flat.dtype)  # fp8: no index ops
    return dequantize_kv(codes, kv_scales[i].reshape(-1).index_select(0, rows), dtype)


def attend_groups(
    query: torch.Tensor, kv_cache: torch.Tensor, groups: list[_Group], scale: float, out: torch.Tensor, kv_scales=None
) -> None:
    """Attention of each group's query rows over its gathered, padded KV, written into their rows of `out`."""
    flat = kv_cache.flatten(1, 2)  # [2, num_slots, H_kv, D]
    num_kv_heads, head_dim = flat.shape[-2:]
    group_size = query.shape[1] // num_kv_heads
    for g in groups:
        G, q_len, k_len = g.num_seqs, g.q_len, g.k_len
        q = query.index_select(0, g.token_idx).view(G, q_len, num_kv_heads, group_size, head_dim)
        q = q.permute(0, 2, 1, 3, 4).reshape(G, num_kv_heads, q_len * group_size, head_dim)
        if g.kv_rows is None:  # gathering (slot, head) rows yields [G, H_kv, K, D] contiguous
            heads = torch.arange(num_kv_heads, device=q.device)
            g.kv_rows = (g.kv_slots.view(G, 1, k_len) * num_kv_heads + heads[None, :, None]).flatten()
        k, v = (_gather(flat, kv_scales, i, g.kv_rows, query.dtype) for i in (0, 1))
        k, v = k.view(G, num_kv_heads, k_len, head_dim), v.view(G, num_kv_heads, k_len, head_dim)
        if g.folded_bias is None:  # an additive mask is faster than a boolean one in CPU SDPA
            bias = torch.zeros(g.mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~g.mask, float("-inf"))
            g.folded_bias = bias.repeat_interleave(group_size, dim=2)
        o = _attend(q, k, v, g.folded_bias, scale)  # [G, H_kv, q*group, D]
        o = o.view(G, num_kv_heads, q_len, group_size, head_dim).permute(0, 2, 1, 3, 4)
        out[g.token_idx] = o.reshape(G * q_len, num_kv_heads * group_size, head_dim)


@register_backend("torch")
class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def forward(self, query, key, value, kv_cache, meta, scale, kv_scales=None):
        write_kv_cache(key, value, kv_cache, meta.slot_mapping, kv_scales)
        if meta.plan is None:
            meta.plan = build_plan(meta, query.device)
        out = torch.empty_like(query)
        attend_groups(query, kv_cache, meta.plan, scale, out, kv_scales)
        return out
