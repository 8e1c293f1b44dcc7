"""Triton "unified" paged attention: one kernel for decodes, prefill chunks and verification.

Called by `tachyon.layers.attention.triton_backend`. Every sequence's new query tokens attend
causally to its keys, read in place from the paged KV cache through the block table. Runs on CUDA,
or on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1), which the tests use.

One program = (query tile, KV head). A tile is BLOCK_Q consecutive new tokens of one sequence; its
M rows are those tokens times the GROUP query heads that share the KV head, so each K/V tile is
loaded once for the whole GQA group:

    row m -> token  q_first + m // GROUP,  head  kv_head * GROUP + m % GROUP   (rows >= BLOCK_Q * GROUP idle)

    keys of seq b:  0 .............................. ctx_len ........ seq_len
                    |<-- cached prefix (all visible) -->|<-- new tokens -->|
    query token i sits at position ctx_len + i and sees keys 0..ctx_len + i.

The program walks the keys in BLOCK_N tiles up to the last position its tile can see, mapping each
key to its cache slot (block_tables[b, pos // block_size] * block_size + pos % block_size), and
keeps an online softmax in float32 (base 2, log2(e) folded into the scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tachyon.kernels.triton_runtime import check_device
from tachyon.layers.attention.metadata import AttentionMetadata

_LOG2E = 1.4426950408889634
_DECODE_BLOCK_M = 16  # rows per program when every sequence has one new token
_PREFILL_BLOCK_M = 64  # rows per program otherwise (tune on GPU together with BLOCK_N / num_warps)
_BLOCK_N = 32  # keys per inner-loop step, independent of the cache's block_size


@triton.jit
def _unified_attention_kernel(
    out_ptr,  # [T, H, D]
    q_ptr,  # [T, H, D]
    k_cache_ptr,  # [num_blocks, block_size, H_kv, D]
    v_cache_ptr,  # [num_blocks, block_size, H_kv, D]
    block_tables_ptr,  # [B, max_num_blocks] int32
    seq_lens_ptr,  # [B] int32
    query_start_loc_ptr,  # [B + 1] int32
    tile_map_ptr,  # [num_tiles, 2] int32: (seq, first new token of the tile)
    qk_scale,  # softmax scale * log2(e)
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_cb,
    stride_cs,
    stride_ch,
    stride_bt,
    GROUP: tl.constexpr,  # query heads per KV head
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,  # next power of two
    BLOCK_SIZE: tl.constexpr,  # cache block size
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # BLOCK_M // GROUP tokens per tile
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 (no TF32 rounding), None = default
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(tile_map_ptr + 2 * tile)
    q_first = tl.load(tile_map_ptr + 2 * tile + 1)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    q_idx = q_first + offs_m // GROUP  # [M] new-token index within the sequence
    head = kv_head * GROUP + offs_m % GROUP  # [M]
    row_ok = (offs_m < BLOCK_Q * GROUP) & (q_idx < q_len)
    q_pos = ctx_len + q_idx  # [M] absolute position: sees keys 0..q_pos
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM

    token = (q_start + q_idx).to(tl.int64)
    q_offs = token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptr + q_offs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [M, D]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    kv_end = tl.minimum(seq_len, ctx_len + q_first + BLOCK_Q)  # keys the tile's last token sees
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for start in range(0, kv_end, BLOCK_N):
        k_pos = start + tl.arange(0, BLOCK_N)  # [N]
        k_ok = k_pos < kv_end
        block = tl.load(table_row + k_pos // BLOCK_SIZE, mask=k_ok, other=0).to(tl.int64)
        slot = block * stride_cb + (k_pos % BLOCK_SIZE) * stride_cs + kv_head * stride_ch  # [N]
        kv_offs = slot[:, None] + offs_d[None, :]
        kv_mask = k_ok[:, None] & d_ok[None, :]  # padded slots may hold NaN: never load them
        k = tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0)  # [N, D]
        v = tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0)  # [N, D]

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [M, N]
        s = tl.where(k_pos[None, :] <= q_pos[:, None], s, float("-inf"))
        # key 0 is visible to every row, so m_new is finite from the first step on
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_offs = token[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
    tl.store(out_ptr + o_offs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _write_kv_kernel(
    key_ptr,  # [T, H_kv, D]
    value_ptr,  # [T, H_kv, D]
    k_cache_ptr,  # [num_blocks, block_size, H_kv, D]
    v_cache_ptr,
    slot_mapping_ptr,  # [T] int64; negative = padding token, not written
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_cs,
    stride_ch,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    if slot >= 0:
        offs_h = tl.arange(0, HEADS_PAD)
        offs_d = tl.arange(0, HEAD_DIM_PAD)
        mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
        dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
        dst_offs = dst + offs_h[:, None] * stride_ch + offs_d[None, :]
        k_offs = t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :]
        v_offs = t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :]
        tl.store(k_cache_ptr + dst_offs, tl.load(key_ptr + k_offs, mask=mask), mask=mask)
        tl.store(v_cache_ptr + dst_offs, tl.load(value_ptr + v_offs, mask=mask), mask=mask)


@dataclass
class TilePlan:
    """Which (sequence, first new token) each program handles; depends only on the step."""

    tile_map: torch.Tensor  # [num_tiles, 2] int32
    block_m: int
    block_q: int


def plan_tiles(meta: AttentionMetadata, group: int, device: torch.device) -> TilePlan:
    """Cut every sequence's new tokens into tiles of BLOCK_Q; built once per step, shared by layers."""
    block_m = _DECODE_BLOCK_M if meta.max_query_len == 1 else _PREFILL_BLOCK_M
    block_m = max(block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    q_lens = torch.tensor(meta.query_lens_cpu, dtype=torch.int64)  # [B]
    tiles_per_seq = (q_lens + block_q - 1) // block_q  # [B]
    seq = torch.repeat_interleave(torch.arange(len(q_lens)), tiles_per_seq)  # [num_tiles]
    first_tile = torch.cumsum(tiles_per_seq, 0) - tiles_per_seq  # [B]
    q_first = (torch.arange(len(seq)) - first_tile[seq]) * block_q  # [num_tiles]
    tile_map = torch.stack([seq, q_first], 1).to(torch.int32)
    return TilePlan(tile_map.to(device, non_blocking=True), block_m, block_q)


def write_kv(
    key: torch.Tensor,  # [T, H_kv, D]
    value: torch.Tensor,  # [T, H_kv, D]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, H_kv, D]
    slot_mapping: torch.Tensor,  # [T] int64
) -> None:
    """Store the step's keys/values into their cache slots; a token with slot < 0 is skipped."""
    check_device(key, "Triton paged attention")
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    assert key.stride(-1) == 1 and value.stride(-1) == 1 and kv_cache.stride(-1) == 1
    k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, H_kv, D]
    _write_kv_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        HEADS_PAD=triton.next_power_of_2(num_kv_heads), HEAD_DIM_PAD=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=k_cache.shape[1],
    )  # fmt: skip


def paged_attention(
    query: torch.Tensor,  # [T, H, D]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, H_kv, D]
    meta: AttentionMetadata,
    scale: float,
    out: torch.Tensor | None = None,  # [T, H, D]
    plan: TilePlan | None = None,
) -> torch.Tensor:  # [T, H, D]
    """Causal attention of each sequence's new tokens over its paged KV (already written)."""
    check_device(query, "Triton paged attention")
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = kv_cache.shape[3]
    assert num_heads % num_kv_heads == 0, f"{num_heads} query heads over {num_kv_heads} KV heads"
    assert query.stride(-1) == 1 and kv_cache.stride(-1) == 1
    out = torch.empty_like(query) if out is None else out
    if num_tokens == 0:
        return out
    group = num_heads // num_kv_heads
    plan = plan_tiles(meta, group, query.device) if plan is None else plan
    k_cache, v_cache = kv_cache[0], kv_cache[1]  # [num_blocks, block_size, H_kv, D]
    fp32 = query.dtype == torch.float32
    grid = (plan.tile_map.shape[0], num_kv_heads)
    _unified_attention_kernel[grid](
        out, query, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
        plan.tile_map, scale * _LOG2E,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        GROUP=group, HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=meta.block_size, BLOCK_M=plan.block_m, BLOCK_Q=plan.block_q, BLOCK_N=_BLOCK_N,
        DOT_PRECISION="ieee" if fp32 else None,
        num_warps=8 if plan.block_m >= 64 else 4,  # 4 warps at BLOCK_M 64, head_dim 128 hits 255 regs
    )  # fmt: skip
    return out
