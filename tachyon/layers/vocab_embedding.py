"""The token embedding and the LM head, with the vocabulary split across tensor-parallel ranks.

Each rank holds rows [start, end) of the vocabulary (the last share padded when the ranks do not divide it).
Embedding: a rank looks up the ids it holds, zeros the rest, and the ranks all-reduce. Logits: a rank
multiplies by its rows and the ranks all-gather the slices. With one rank both are the plain operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tachyon.distributed.parallel_state import all_gather_last_dim, all_reduce, tp_rank, tp_size
from tachyon.layers.linear import PackedDense, frozen, pack_dense


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        rows = -(-vocab_size // tp_size())
        self.start = min(tp_rank() * rows, vocab_size)
        self.end = min(self.start + rows, vocab_size)
        self.weight = frozen(torch.zeros(rows, hidden_size, dtype=dtype))
        self.packed_head: PackedDense | None = None  # the weight packed for the logits GEMM on CPU

    def load_weight(self, loaded: torch.Tensor) -> None:
        """Take this rank's rows of the whole [vocab, hidden] checkpoint tensor."""
        if tuple(loaded.shape) != (self.vocab_size, self.hidden_size):
            raise ValueError(
                f"shape mismatch: checkpoint {tuple(loaded.shape)}, model ({self.vocab_size}, {self.hidden_size})"
            )
        self.weight[: self.end - self.start].copy_(loaded[self.start : self.end])

    def pack_head(self, embeds_too: bool) -> None:
        """Before serving logits on CPU: pack the matrix for its GEMM, the largest of a decode step. A head
        that does not also embed (untied) drops its plain copy."""
        self.packed_head = pack_dense(self.weight)
        if self.packed_head is not None and not embeds_too:
            self.weight = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> embeddings [T, hidden]"""
        if tp_size() == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        elsewhere = (local < 0) | (local >= self.end - self.start)
        x = F.embedding(local.masked_fill(elsewhere, 0), self.weight)
        return all_reduce(x.masked_fill_(elsewhere.unsqueeze(-1), 0))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] in the weights' dtype, as HF's lm_head computes them before
        its `.float()`. The sampler widens them where it computes; a greedy argmax needs no copy."""
        if self.packed_head is not None:
            local = self.packed_head(hidden, None)
        else:
            local = F.linear(hidden, self.weight)
        return all_gather_last_dim(local)[:, : self.vocab_size]
