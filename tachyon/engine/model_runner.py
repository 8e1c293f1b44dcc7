"""Runs one scheduled step on the device: builds the flat token batch and its attention metadata,
calls the model, computes logits only for rows that need them, and samples.

Owned by the engine; also sizes and allocates the paged KV pool at start-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from tachyon.config import EngineConfig
from tachyon.distributed.workers import WorkerGroup
from tachyon.engine.cuda_graphs import DecodeGraphs
from tachyon.engine.outputs import PositionLogprobs
from tachyon.engine.sampler import Sampler, SamplingMetadata, token_logprobs
from tachyon.engine.scheduler import ScheduledRequest, SchedulerOutput
from tachyon.engine.spec_decode.rejection_sampler import verify_drafts
from tachyon.layers import fused
from tachyon.layers.attention.backend import create_attention_backend
from tachyon.layers.attention.kv_quant import KV_CACHE_DTYPES, SCALE_DTYPE, kv_bytes_per_head
from tachyon.layers.attention.layer import PagedAttention
from tachyon.layers.attention.metadata import AttentionMetadata
from tachyon.layers.linear import BATCH_INVARIANT, Linear
from tachyon.models.registry import create_model

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_CACHE_BYTES = 2 << 30


@dataclass
class ModelRunnerOutput:
    # request id -> its new tokens: one, or with speculative decoding the accepted drafts and one more
    sampled: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, list[PositionLogprobs]] = field(default_factory=dict)  # one entry per new token
    num_rejected: dict[str, int] = field(default_factory=dict)  # request id -> draft tokens rejected
    # request id -> (first position, logprobs of the prompt tokens after positions first, first + 1, ...)
    prompt_logprobs: dict[str, tuple[int, list[PositionLogprobs]]] = field(default_factory=dict)


class ModelRunner:
    """With tensor parallelism every rank has one; the driver's (rank 0) holds `workers` and has them mirror
    each model call (`forward`, `compute_logits`, the KV pool's allocation) before making it itself."""

    def __init__(
        self, config: EngineConfig, source, device: torch.device, dtype: torch.dtype, workers: WorkerGroup | None = None
    ) -> None:
        self.config, self.device, self.dtype = config, device, dtype
        self.workers = workers
        self.block_size = config.block_size
        self.model = create_model(source, dtype, device, load_format=config.load_format)
        self.vocab_size = source.hf_config.vocab_size
        self.attn_layers = [m for m in self.model.modules() if isinstance(m, PagedAttention)]
        self.kv_dtype = KV_CACHE_DTYPES.get(config.kv_cache_dtype)  # None: the model dtype
        backend = config.attention_backend
        if self.kv_dtype is not None and backend != "torch":
            logger.warning("--kv-cache-dtype %s runs on the torch attention backend", config.kv_cache_dtype)
            backend = "torch"
        attn = self.attn_layers[0]
        self.backend = create_attention_backend(
            backend, device, dtype, attn.num_heads // attn.num_kv_heads, attn.head_dim
        )
        if config.deterministic:
            self._make_batch_invariant()
        logger.info("Attention backend: %s", self.backend.name)
        logger.info("Elementwise layers: %s", fused.describe(self.dtype, self.device))
        for layer in self.attn_layers:
            layer.backend = self.backend
        self.sampler = Sampler()
        self.use_cuda_graphs = device.type == "cuda" and not config.enforce_eager
        if self.use_cuda_graphs and config.tensor_parallel_size > 1:
            logger.warning("CUDA graphs are not captured with tensor parallelism yet; decode steps run eagerly")
            self.use_cuda_graphs = False
        if self.use_cuda_graphs and self.backend.name != "triton":
            logger.warning("CUDA graphs need the triton attention backend; running %s eagerly", self.backend.name)
            self.use_cuda_graphs = False
        self.graphs: DecodeGraphs | None = None

    def _make_batch_invariant(self) -> None:
        """--deterministic: every query row through the native kernel; refused where a GEMM's result could
        depend on the batch size (anything but the packed dense CPU GEMMs)."""
        if self.device.type != "cpu":
            raise ValueError(
                "--deterministic runs on CPU only so far: batch-invariant GEMMs on CUDA need their own kernels "
                "(cuBLAS picks a different reduction for different batch sizes)"
            )
        if self.backend.name != "cpu":
            raise ValueError(
                f"--deterministic needs the native CPU attention kernel; {self.dtype} got {self.backend.name} "
                "(see the warning above)"
            )
        unpacked = sorted({m.method.kernel for m in self.model.modules() if isinstance(m, Linear)} - BATCH_INVARIANT)
        if unpacked:
            raise ValueError(f"--deterministic needs dense float32/bfloat16 weights; this model runs {unpacked}")
        self.backend.batch_invariant = True
        logger.info("Batch-invariant mode: every attention row through the native kernel, packed GEMMs")

    # ---- KV pool -------------------------------------------------------------------------------
    @property
    def kv_bytes_per_block(self) -> int:
        a = self.attn_layers[0]
        per_head = kv_bytes_per_head(a.head_dim, self.dtype, self.kv_dtype)
        return 2 * len(self.attn_layers) * self.block_size * a.num_kv_heads * per_head

    def kv_budget_bytes(self) -> int:
        if self.device.type == "cpu":
            return self.config.kv_cache_memory or DEFAULT_CPU_KV_CACHE_BYTES
        if self.config.kv_cache_memory:
            return self.config.kv_cache_memory
        return self._profile_free_gpu_memory()

    @torch.inference_mode()
    def _profile_free_gpu_memory(self) -> int:
        """Run the largest step once with a throwaway cache; what it peaked at stays reserved."""
        num_tokens = self.config.max_num_batched_tokens
        num_blocks = -(-num_tokens // self.block_size)
        self.allocate_kv_cache(num_blocks)
        torch.cuda.reset_peak_memory_stats(self.device)
        hidden = self.forward(
            [0] * num_tokens, list(range(num_tokens)), [num_tokens], [num_tokens], [list(range(num_blocks))]
        )
        self.compute_logits(hidden, slice(0, self.config.max_num_seqs))  # the largest sampling step's logits
        del hidden
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        graphs = self._profile_decode_graph_memory() if self.use_cuda_graphs else 0
        self.release_kv_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        in_use_elsewhere = total - free - torch.cuda.memory_reserved(self.device)
        budget = int(total * self.config.gpu_memory_utilization) - peak - graphs - in_use_elsewhere
        logger.info(
            "GPU memory: total %.1f GiB, model+activations peak %.2f GiB, CUDA graphs ~%.2f GiB, KV budget %.2f GiB",
            total / 2**30,
            peak / 2**30,
            graphs / 2**30,
            budget / 2**30,
        )
        if budget <= 0:
            raise RuntimeError(
                "no GPU memory left for the KV cache; raise --gpu-memory-utilization or lower --max-num-batched-tokens"
            )
        return budget

    def _profile_decode_graph_memory(self) -> int:
        """Activation bytes of the largest decode step: what the graphs' private pool will hold."""
        n = self.config.max_num_seqs
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        hidden = self.forward([0] * n, [0] * n, [1] * n, [1] * n, [[0]] * n)
        self.compute_logits(hidden, slice(0, n))
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - base

    def capture_cuda_graphs(self, max_model_len: int) -> None:
        """After the KV pool exists (the graphs bake in its address): capture the decode ladder."""
        if not self.use_cuda_graphs:
            return
        max_blocks = -(-max_model_len // self.block_size)
        self.graphs = DecodeGraphs(self.model, self.config.max_num_seqs, max_blocks, self.block_size, self.device)
        self.graphs.capture()

    def allocate_kv_cache(self, num_blocks: int) -> None:
        if self.workers:
            self.workers.call("allocate_kv_cache", num_blocks)
        a = self.attn_layers[0]
        shape = (2, num_blocks, self.block_size, a.num_kv_heads, a.head_dim)
        for layer in self.attn_layers:
            layer.kv_cache = torch.zeros(shape, dtype=self.kv_dtype or self.dtype, device=self.device)
            if self.kv_dtype is not None:
                layer.kv_scales = torch.ones(shape[:-1], dtype=SCALE_DTYPE, device=self.device)

    def read_kv_blocks(self, block_ids: list[int]) -> torch.Tensor:
        """Everything the cache holds for these blocks, every layer's keys, values (and 8-bit scales), as
        bytes: uint8 [len(block_ids), kv_bytes_per_block] on the cache's device, for moving KV to another
        instance."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        parts = []
        for layer in self.attn_layers:
            for t in (layer.kv_cache, layer.kv_scales):
                if t is not None:  # [2, blocks, ...] -> [n, 2 * ...] bytes
                    parts.append(t.index_select(1, index).transpose(0, 1).contiguous().view(torch.uint8).flatten(1))
        return torch.cat(parts, dim=1)

    def write_kv_blocks(self, block_ids: list[int], data: torch.Tensor) -> None:
        """The inverse of `read_kv_blocks`: store uint8 [len(block_ids), kv_bytes_per_block] into these blocks."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        data = data.to(self.device)
        offset = 0
        for layer in self.attn_layers:
            for t in (layer.kv_cache, layer.kv_scales):
                if t is not None:
                    shape = (len(block_ids), 2, *t.shape[2:])
                    size = t.element_size() * t[:, 0].numel()
                    chunk = data[:, offset : offset + size].contiguous().view(t.dtype).view(shape).transpose(0, 1)
                    t.index_copy_(1, index, chunk)
                    offset += size
        if offset != data.shape[1]:
            raise ValueError(f"KV block data has {data.shape[1]} bytes per block; this cache holds {offset}")

    def release_kv_cache(self) -> None:
        """Drop the pool (the GPU profile's throwaway one)."""
        if self.workers:
            self.workers.call("release_kv_cache")
        for layer in self.attn_layers:
            layer.kv_cache = layer.kv_scales = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- one step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        token_ids, positions, query_lens, seq_lens, tables = [], [], [], [], []
        sample_rows: list[int] = []  # flat row of the last token of each request that samples
        verify_rows: list[int] = []  # flat rows of the last known token and the drafts of speculating requests
        prompt_rows: list[tuple[ScheduledRequest, int, int]] = []  # (request, first row, num rows)
        row = 0
        for s in sched.scheduled:
            req, start = s.request, s.request.num_computed_tokens
            end = start + s.num_new_tokens
            token_ids += req.all_token_ids[start : end - len(s.spec_token_ids)] + s.spec_token_ids
            positions += range(start, end)
            query_lens.append(s.num_new_tokens)
            seq_lens.append(end)
            tables.append(req.block_ids)
            if req.wants_prompt_logprobs and start < req.num_prompt_tokens:
                prompt_rows.append((s, row, min(end, req.num_prompt_tokens - 1) - start))
            row += s.num_new_tokens
            if s.completes_sequence and s.spec_token_ids:
                verify_rows += range(row - len(s.spec_token_ids) - 1, row)
            elif s.completes_sequence:
                sample_rows.append(row - 1)
        out = ModelRunnerOutput()
        graph_ok = self.graphs is not None and self.graphs.padded_size(row) is not None
        if graph_ok and len(sample_rows) == row == len(query_lens) and not prompt_rows:  # pure decode
            slots = self._slots(query_lens, seq_lens, tables)
            logits = self.graphs.run(token_ids, positions, slots, seq_lens, tables)
        else:
            hidden = self.forward(token_ids, positions, query_lens, seq_lens, tables)
            self._prompt_logprobs(out, hidden, prompt_rows)
            if not sample_rows and not verify_rows:
                return out
            logits = self.compute_logits(hidden, sample_rows + verify_rows)  # [B + verified rows, V]
        completing = [s for s in sched.scheduled if s.completes_sequence]
        if sample_rows:
            self._sample(out, [s.request for s in completing if not s.spec_token_ids], logits[: len(sample_rows)])
        if verify_rows:
            self._verify(out, [s for s in completing if s.spec_token_ids], logits[len(sample_rows) :])
        return out

    def _slots(self, query_lens, seq_lens, tables) -> list[int]:
        """The KV-cache slot each new token writes."""
        bs = self.block_size
        return [
            tables[b][p // bs] * bs + p % bs
            for b, (q, s) in enumerate(zip(query_lens, seq_lens))
            for p in range(s - q, s)
        ]

    def forward(
        self,
        token_ids: list[int],
        positions: list[int],
        query_lens: list[int],
        seq_lens: list[int],
        tables: list[list[int]],
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """token ids and positions of the T new tokens; per sequence its new-token count, KV length and block
        ids -> hidden [T, H]. `num_layers`: only the first layers (self-speculative drafting)."""
        if self.workers:
            self.workers.call("forward", token_ids, positions, query_lens, seq_lens, tables, num_layers)
        width = max(len(t) for t in tables)
        dev = self.device
        ids = torch.tensor(token_ids, dtype=torch.long, device=dev)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(self._slots(query_lens, seq_lens, tables), dtype=torch.long, device=dev),
            query_start_loc=torch.tensor([0, *_cumsum(query_lens)], dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=dev),
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
            block_size=self.block_size,
        )
        return self.model(ids, torch.tensor(positions, dtype=torch.long, device=dev), meta, num_layers)

    def compute_logits(self, hidden: torch.Tensor, rows: list[int] | slice) -> torch.Tensor:
        """Logits [len(rows), V], in the model's dtype, of the given rows of `forward`'s hidden states."""
        if self.workers:
            self.workers.call("compute_logits", rows)
        index = rows if isinstance(rows, slice) else torch.tensor(rows, device=self.device)
        return self.model.compute_logits(hidden[index])

    def _prompt_logprobs(self, out: ModelRunnerOutput, hidden: torch.Tensor, prompt_rows) -> None:
        for s, first, num in prompt_rows:
            req, start = s.request, s.request.num_computed_tokens
            if num <= 0:
                continue
            logits = self.compute_logits(hidden, slice(first, first + num))
            targets = torch.tensor(req.all_token_ids[start + 1 : start + 1 + num], device=self.device)
            out.prompt_logprobs[req.request_id] = (
                start,
                token_logprobs(logits, targets, req.params.prompt_logprobs),
            )

    def _sample(self, out: ModelRunnerOutput, reqs, logits: torch.Tensor) -> None:
        """logits [B, V] of the requests that sample this step, in order."""
        meta = SamplingMetadata.build(
            params=[r.params for r in reqs],
            generators=[r.generator for r in reqs],
            prompt_token_ids=[r.prompt_token_ids for r in reqs],
            output_token_ids=[r.output_token_ids for r in reqs],
            stop_token_ids=[_stop_ids(r) for r in reqs],
            vocab_size=self.vocab_size,
            device=self.device,
        )
        result = self.sampler(logits, meta)
        for req, token, lp in zip(reqs, result.token_ids, result.logprobs):
            out.sampled[req.request_id] = [token]
            if lp is not None:
                out.logprobs[req.request_id] = [lp]

    def _verify(self, out: ModelRunnerOutput, scheduled: list[ScheduledRequest], logits: torch.Tensor) -> None:
        """logits [sum(drafts + 1), V] of the speculating requests, in order."""
        reqs, drafts = [s.request for s in scheduled], [s.spec_token_ids for s in scheduled]
        for req, draft, v in zip(reqs, drafts, verify_drafts(logits, reqs, drafts, self.vocab_size), strict=True):
            out.sampled[req.request_id] = v.token_ids
            out.num_rejected[req.request_id] = len(draft) - v.num_accepted
            if v.logprobs is not None:
                out.logprobs[req.request_id] = v.logprobs


def _cumsum(values: list[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out


def _stop_ids(req) -> set[int]:
    """Tokens that min_tokens must hold back: eos (unless ignored) and the request's stop ids."""
    eos = set() if req.params.ignore_eos else set(req.eos_token_ids)
    return eos | set(req.params.stop_token_ids)
