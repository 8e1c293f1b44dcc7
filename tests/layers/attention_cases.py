"""Random paged-attention cases and a naive per-sequence reference, shared by backend tests."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from tachyon.layers.attention.metadata import AttentionMetadata


@dataclass
class Case:
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    kv_cache: torch.Tensor
    meta: AttentionMetadata
    scale: float


def make_case(
    query_lens: list[int],
    seq_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int = 16,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = "cpu",
) -> Case:
    """Sequences whose KV blocks are scattered at random over a pool prefilled with random history."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    slots = []
    for b, (n, q, s) in enumerate(zip(blocks_per_seq, query_lens, seq_lens)):
        table = [ids.pop() for _ in range(n)]
        tables[b, :n] = torch.tensor(table)
        slots += [table[p // block_size] * block_size + p % block_size for p in range(s - q, s)]
    num_tokens = sum(query_lens)
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    kv_cache = randn(2, num_blocks, block_size, num_kv_heads, head_dim)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=tables,
        query_lens_cpu=list(query_lens),
        seq_lens_cpu=list(seq_lens),
        block_size=block_size,
    )
    case = Case(
        randn(num_tokens, num_heads, head_dim),
        randn(num_tokens, num_kv_heads, head_dim),
        randn(num_tokens, num_kv_heads, head_dim),
        kv_cache,
        meta,
        1 / math.sqrt(head_dim),
    )
    if device != "cpu":
        for name in ("query", "key", "value", "kv_cache"):
            setattr(case, name, getattr(case, name).to(device))
        for name in ("slot_mapping", "query_start_loc", "seq_lens", "block_tables"):
            setattr(meta, name, getattr(meta, name).to(device))
    return case


def reference_attention(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive float64 attention, one sequence at a time; returns (output, kv_cache after the write)."""
    meta = case.meta
    cache = case.kv_cache.double().clone()
    flat = cache.flatten(1, 2)
    flat[0][meta.slot_mapping] = case.key.double()
    flat[1][meta.slot_mapping] = case.value.double()
    out = torch.empty(case.query.shape, dtype=torch.float64)
    group = case.query.shape[1] // case.key.shape[1]
    start = 0
    for b, (q_len, s_len) in enumerate(zip(meta.query_lens_cpu, meta.seq_lens_cpu)):
        table = meta.block_tables[b].long().cpu()
        pos = torch.arange(s_len)
        slots = table[pos // meta.block_size] * meta.block_size + pos % meta.block_size
        k = flat[0][slots].repeat_interleave(group, dim=1)  # [S, H, D]
        v = flat[1][slots].repeat_interleave(group, dim=1)
        q = case.query[start : start + q_len].double()  # [q, H, D]
        scores = torch.einsum("qhd,khd->hqk", q, k) * case.scale
        q_pos = torch.arange(s_len - q_len, s_len)
        scores.masked_fill_(pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        out[start : start + q_len] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
        start += q_len
    return out, cache
