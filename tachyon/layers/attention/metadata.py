"""What one forward step tells the attention backends about its batch.

Built once per step by the model runner and shared by every layer. The batch is "flat":
sequence b contributes `query_lens[b]` new tokens, the last tokens of its `seq_lens[b]` tokens
in the KV cache (cached prefix + new), so prefill chunks, decodes and speculative verification
are all the same shape of work.

    tokens:     | seq 0 new tokens | seq 1 new tokens | ...      (query_start_loc marks the cuts)
    KV of seq b: blocks block_tables[b, 0..], slot = block_id * block_size + offset
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: KV-cache slot that each new token writes
    query_start_loc: torch.Tensor  # [B + 1] int32: cumulative query lengths
    seq_lens: torch.Tensor  # [B] int32: KV length of each sequence after this step
    block_tables: torch.Tensor  # [B, max_num_blocks] int32, padded with 0
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    block_size: int
    # what the backend derives from the fields above (tile map, gather indices): built by the first
    # layer, reused by the rest, and alive as long as this metadata (CUDA graphs replay against it)
    plan: Any = None

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens_cpu)
