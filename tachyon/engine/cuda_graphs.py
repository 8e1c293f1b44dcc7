"""CUDA graphs for decode steps: the whole forward of one new token per sequence, logits included,
captured once per batch size of a ladder and replayed with the step's inputs copied into static buffers.

Why: a decode step of a small model is a few hundred short kernels; launched one by one from Python
the GPU idles between them. A replay launches them all at once. Owned by the model runner, which
sends pure-decode steps here and everything else (prefill, chunks, prompt logprobs) down the eager path.

A batch of B sequences runs the graph of the next captured size >= B. The padding rows write no KV
(slot -1) and attend to one key of block 0, so they read valid memory and never touch real sequences.
"""

from __future__ import annotations

import logging
import time

import torch

from tachyon.layers.attention.metadata import AttentionMetadata

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_num_seqs (which is always included)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return [*sizes, max_num_seqs]


class DecodeGraphs:
    def __init__(
        self,
        model: torch.nn.Module,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model, self.block_size, self.device = model, block_size, device
        self.sizes = capture_sizes(max_num_seqs)
        n = self.sizes[-1]
        # host staging for the small per-token inputs (one copy per step): ids, positions, slots, seq_lens
        self._host = torch.zeros(4, n, dtype=torch.int64, pin_memory=True)
        self._inputs = torch.zeros(4, n, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slot_mapping = self._inputs[0], self._inputs[1], self._inputs[2]
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self._host_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, pin_memory=True)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # batch size -> static [size, vocab] output
        self._metas: dict[int, AttentionMetadata] = {}  # kept alive: the graphs read their tensors

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            query_lens_cpu=[1] * size,
            seq_lens_cpu=[1] * size,
            block_size=self.block_size,
        )

    def _forward(self, size: int) -> torch.Tensor:
        meta = self._metas[size]
        hidden = self.model(self.input_ids[:size], self.positions[:size], meta)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> int:
        """Capture every size, largest first, into one shared memory pool; returns the pool's bytes."""
        start, before = time.perf_counter(), torch.cuda.memory_reserved(self.device)
        self.slot_mapping.fill_(-1)  # capture-time steps must not write the KV cache
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        for size in reversed(self.sizes):
            self._metas[size] = self._meta(size)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._forward(size)  # warm-up: compiles kernels and builds the backend's plan outside the graph
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self.logits[size] = self._forward(size)
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        used = torch.cuda.memory_reserved(self.device) - before
        logger.info(
            "CUDA graphs: captured decode batch sizes %s in %.1f s, %.0f MiB",
            _ranges(self.sizes),
            time.perf_counter() - start,
            used / 2**20,
        )
        return used

    def padded_size(self, num_seqs: int) -> int | None:
        """The captured size that runs a batch of num_seqs, or None if it is larger than all of them."""
        return next((s for s in self.sizes if s >= num_seqs), None)

    def run(
        self, token_ids: list[int], positions: list[int], slots: list[int], seq_lens: list[int], tables: list[list[int]]
    ) -> torch.Tensor:
        """One decode step of len(token_ids) sequences -> logits [B, vocab] in the model's dtype (a view of a
        static buffer, valid until the next run)."""
        num = len(token_ids)
        size = self.padded_size(num)
        assert size is not None, f"no graph for {num} sequences"
        host = self._host
        host[0, :num] = torch.tensor(token_ids)
        host[1, :num] = torch.tensor(positions)
        host[2, :num] = torch.tensor(slots)
        host[3, :num] = torch.tensor(seq_lens)
        host[:, num:size] = torch.tensor([[0], [0], [-1], [1]])  # padding rows
        width = max(map(len, tables))
        rows = self._host_tables
        rows[:num, :width] = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        self._inputs[:, :size].copy_(host[:, :size], non_blocking=True)
        self.seq_lens[:size].copy_(self._inputs[3, :size])
        self.block_tables[:num, :width].copy_(rows[:num, :width], non_blocking=True)
        self.graphs[size].replay()
        return self.logits[size][:num]


def _ranges(sizes: list[int]) -> str:
    return f"{sizes[:5]}..{sizes[-1]} ({len(sizes)} graphs)" if len(sizes) > 5 else str(sizes)
