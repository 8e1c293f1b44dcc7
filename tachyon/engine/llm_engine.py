"""The synchronous engine: admits requests, runs scheduler -> model runner -> output processing
once per `step()`, and reports what each request produced. The offline `LLM` API drives it in
a loop; the async engine drives it from a background thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass

import torch

from tachyon.config import EngineConfig
from tachyon.distributed.kv_transfer.parking import KVParking
from tachyon.distributed.parallel_state import launched_by_torchrun
from tachyon.distributed.workers import WorkerGroup, rank_device
from tachyon.engine.detokenizer import IncrementalDetokenizer
from tachyon.engine.kv_cache_manager import KVCacheManager, extend_block_hashes
from tachyon.engine.model_runner import ModelRunner, ModelRunnerOutput
from tachyon.engine.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from tachyon.engine.request import Request, RequestStatus
from tachyon.engine.scheduler import Scheduler, SchedulerConfig
from tachyon.engine.spec_decode.speculator import SpecDecodeStats, Speculator
from tachyon.models.loader import load_model_source
from tachyon.models.registry import model_class_for
from tachyon.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

MAX_LOGPROBS = 20  # top-n logprobs per position, as vLLM's default --max-logprobs


@dataclass(eq=False)
class _Sequence:
    """Engine-side state of one of a request's n samples."""

    req: Request
    detok: IncrementalDetokenizer
    logprobs: list[PositionLogprobs] | None


@dataclass(eq=False)
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[_Sequence]
    prompt_logprobs: list[PositionLogprobs | None] | None

    @property
    def finished(self) -> bool:
        return all(s.req.status.is_finished for s in self.seqs)


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_free_blocks: int
    num_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_parked_blocks: int = 0  # prefill role: blocks held for decode instances to fetch
    spec_decode: SpecDecodeStats | None = None  # None: speculative decoding is off


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.source = load_model_source(config.model, tokenizer=config.tokenizer, load_format=config.load_format)
        self.tokenizer = self.source.tokenizer
        device = rank_device(config, 0)
        dtype = config.resolve_dtype(self.source.hf_config, device)
        trained = self.source.hf_config.max_position_embeddings
        if config.max_model_len and config.max_model_len > trained:
            # the rotary table (and what the model was trained on) ends there, as vLLM also refuses
            raise ValueError(
                f"--max-model-len {config.max_model_len} exceeds the model's max_position_embeddings ({trained})"
            )
        self.max_model_len = config.max_model_len or trained
        self.workers = self._start_workers(device) if config.tensor_parallel_size > 1 else None
        try:
            self._init_model_and_cache(device, dtype)
        except BaseException:
            if self.workers:
                self.workers.shutdown(graceful=False)
            raise
        self.eos_token_ids = frozenset(self.source.eos_token_ids)
        self._states: dict[str, _RequestState] = {}
        self._seq_of: dict[str, tuple[_RequestState, _Sequence]] = {}
        self._seed_rng = torch.Generator().manual_seed(config.seed)
        self._ids = itertools.count()

    def _start_workers(self, device: torch.device) -> WorkerGroup:
        size = self.config.tensor_parallel_size
        model_class_for(self.source.hf_config).check_tensor_parallel(self.source.hf_config, size)
        if device.type == "cuda" and torch.cuda.device_count() < size and not launched_by_torchrun():
            raise ValueError(f"--tensor-parallel-size {size} needs {size} GPUs; torch sees {torch.cuda.device_count()}")
        return WorkerGroup.start(self.config, device)

    def _init_model_and_cache(self, device: torch.device, dtype: torch.dtype) -> None:
        config = self.config
        self.runner = ModelRunner(config, self.source, device, dtype, self.workers)
        spec = config.speculative_config
        self.speculator = Speculator(spec, config, self.runner) if spec is not None else None
        draft_kv_bytes = self.speculator.kv_bytes_per_block if self.speculator else 0
        num_blocks = self.runner.kv_budget_bytes() // (self.runner.kv_bytes_per_block + draft_kv_bytes)
        if num_blocks < 1:
            raise ValueError("the KV cache budget holds not even one block; raise --kv-cache-memory")
        self.runner.allocate_kv_cache(num_blocks)
        if self.speculator:
            self.speculator.allocate_kv_cache(num_blocks)
            self.speculator.profile(config.max_num_seqs, config.max_num_batched_tokens)
        self.runner.capture_cuda_graphs(self.max_model_len)
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.parking = KVParking(self.kv, config.kv_transfer_timeout)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=config.max_num_batched_tokens,
                policy=config.scheduling_policy,
            ),
            self.kv,
        )
        num_tokens = num_blocks * config.block_size
        logger.info(
            "KV cache: %d blocks = %d tokens (%s, %d bytes per token%s); max concurrency %.2f at max_model_len %d",
            num_blocks,
            num_tokens,
            config.kv_cache_dtype if config.kv_cache_dtype != "auto" else str(self.runner.dtype).removeprefix("torch."),
            self.runner.kv_bytes_per_block // config.block_size,
            f" + {draft_kv_bytes // config.block_size} for the draft model" if draft_kv_bytes else "",
            num_tokens / self.max_model_len,
            self.max_model_len,
        )
        if self.workers:
            size = config.tensor_parallel_size
            logger.info("Tensor parallel: %d ranks, each with 1/%d of every layer and of the KV heads", size, size)

    # ---- KV transfer (disaggregated prefill/decode) ---------------------------------------------
    @property
    def kv_layout(self) -> str:
        """What a block of this engine's KV pool holds; two instances can exchange blocks only if equal."""
        a, r = self.runner.attn_layers[0], self.runner
        kv_dtype = self.config.kv_cache_dtype if self.config.kv_cache_dtype != "auto" else str(r.dtype)
        return (
            f"{len(r.attn_layers)} layers x {self.kv.block_size} tokens x {a.num_kv_heads} KV heads x {a.head_dim}, "
            f"{kv_dtype}, {r.kv_bytes_per_block} bytes"
        )

    def prompt_block_hashes(self, token_ids: list[int], cache_salt: str | None = None) -> list[int]:
        """Hashes of the prompt blocks a prefix-cache hit could cover (the last token is always computed)."""
        num_blocks = (len(token_ids) - 1) // self.kv.block_size
        return extend_block_hashes([], token_ids[: num_blocks * self.kv.block_size], self.kv.block_size, cache_salt)

    def import_kv(self, blocks: dict[int, torch.Tensor]) -> int:
        """Put KV computed elsewhere (block hash -> its bytes, in prompt order) into free blocks of the pool,
        as prefix-cache entries that the next request with this prompt adopts; returns how many were new."""
        taken = self.kv.import_blocks(list(blocks))
        if taken:
            self.runner.write_kv_blocks([b for _, b in taken], torch.stack([blocks[h] for h, _ in taken]))
        return len(taken)

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (the engine is unusable afterwards)."""
        if self.workers:
            self.workers.shutdown()
            self.workers = None

    # ---- admission ---------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
    ) -> str:
        """Validate and queue a request; raises ValueError (and queues nothing) on bad input."""
        return self.submit(self.prepare_request(prompt, params, request_id, priority))

    def prepare_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        priority: int = 0,
        kv_transfer_id: str | None = None,
    ) -> _RequestState:
        """Tokenize and validate without touching the engine's queues, so another thread may call it
        while the engine steps; `submit` then queues the result. `kv_transfer_id`: park the prompt's KV
        under this id when the request finishes, for a decode instance to fetch (disaggregated prefill)."""
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else str(next(self._ids))
        if request_id in self._states:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, token_ids = self._tokenize(prompt)
        self._check_prompt(token_ids, params)
        seqs = [self._new_sequence(request_id, i, token_ids, params, priority) for i in range(params.n)]
        for seq in seqs:
            seq.req.kv_transfer_id = kv_transfer_id
        wants_prompt_lp = params.prompt_logprobs is not None
        return _RequestState(request_id, text, token_ids, params, seqs, [None] if wants_prompt_lp else None)

    def submit(self, state: _RequestState) -> str:
        if state.request_id in self._states:
            raise ValueError(f"request id {state.request_id!r} is already in use")
        self._states[state.request_id] = state
        for seq in state.seqs:
            self._seq_of[seq.req.request_id] = (state, seq)
            self.scheduler.add_request(seq.req)
        return state.request_id

    def _tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt, add_special_tokens=True)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise ValueError("prompt must be a string or a list of integer token ids")
        return None, list(prompt)

    def _check_prompt(self, token_ids: list[int], params: SamplingParams) -> None:
        if not token_ids:
            raise ValueError("prompt is empty")
        for name in ("logprobs", "prompt_logprobs"):
            wanted = getattr(params, name)
            if wanted is not None and wanted > MAX_LOGPROBS:
                raise ValueError(f"{name}={wanted} exceeds the most this engine returns ({MAX_LOGPROBS})")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(token_ids)} tokens, but max_model_len is {self.max_model_len} "
                "(the prompt must leave room for at least one output token)"
            )
        bad = [t for t in token_ids if not 0 <= t < self.runner.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.runner.vocab_size})")
        if -(-len(token_ids) // self.kv.block_size) > self.kv.num_blocks:
            raise ValueError(
                f"prompt of {len(token_ids)} tokens does not fit in the whole KV cache "
                f"({self.kv.num_blocks * self.kv.block_size} tokens); raise --kv-cache-memory"
            )

    def _new_sequence(self, request_id, index, token_ids, params, priority) -> _Sequence:
        seed = params.seed + index if params.seed is not None else None
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seed_rng))
        req = Request(
            request_id=request_id if params.n == 1 else f"{request_id}#{index}",
            prompt_token_ids=token_ids,
            params=params,
            eos_token_ids=self.eos_token_ids,
            max_model_len=self.max_model_len,
            generator=torch.Generator(device=self.runner.device).manual_seed(seed),
            priority=priority,
            parent_id=request_id if params.n > 1 else None,
        )
        logprobs = [] if params.logprobs is not None else None
        return _Sequence(req, IncrementalDetokenizer(self.tokenizer, token_ids, params), logprobs)

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its blocks; False if it is unknown or already finished."""
        state = self._states.pop(request_id, None)
        if state is None:
            return False
        for seq in state.seqs:
            self._seq_of.pop(seq.req.request_id, None)
            if not seq.req.status.is_finished:
                self.scheduler.finish(seq.req, RequestStatus.FINISHED_ABORTED)
        return True

    # ---- the loop ----------------------------------------------------------------------------
    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished

    def step(self) -> list[RequestOutput]:
        try:
            return self._step()
        except RuntimeError as e:  # a collective failed: say which tensor-parallel worker died
            if self.workers:
                self.workers.raise_if_dead(e)
            raise

    def _step(self) -> list[RequestOutput]:
        self.parking.collect()
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return self._drop_unschedulable()
        result = self.runner.execute(sched)
        self.scheduler.update_after_step(sched, result.num_rejected)
        touched = self._process(sched, result)
        if self.speculator:
            self.speculator.record(sched, result.num_rejected)
            self.speculator.propose(self.scheduler.running, self.kv)
        return [self._make_output(state) for state in touched]

    def _drop_unschedulable(self) -> list[RequestOutput]:
        """Nothing runs yet the queue head cannot fit in the empty pool: it outgrew the KV cache."""
        if self.scheduler.running or not self.scheduler.waiting:
            return []
        req = self.scheduler.waiting[0]
        logger.warning("request %s needs more KV blocks than the whole cache holds; finishing it", req.request_id)
        self.scheduler.finish(req, RequestStatus.FINISHED_LENGTH)
        state, _ = self._seq_of[req.request_id]
        return [self._make_output(state)] if state.finished else []

    def _process(self, sched, result: ModelRunnerOutput) -> list[_RequestState]:
        touched: dict[str, _RequestState] = {}
        for s in sched.scheduled:
            state, seq = self._seq_of[s.request.request_id]
            chunk_lp = result.prompt_logprobs.get(s.request.request_id)
            if chunk_lp is not None and seq is state.seqs[0]:
                self._add_prompt_logprobs(state, *chunk_lp)
            tokens = result.sampled.get(s.request.request_id, [])
            logprobs = result.logprobs.get(s.request.request_id)
            for i, token in enumerate(tokens):
                if self._append_token(seq, token, logprobs[i] if logprobs else None):
                    break  # finished: drop accepted drafts past a stop
            touched[state.request_id] = state
        return list(touched.values())

    def _add_prompt_logprobs(self, state: _RequestState, first_pos: int, chunk: list[PositionLogprobs]) -> None:
        """`chunk` scores prompt tokens first_pos+1...; a preempted request recomputes, so skip seen ones."""
        state.prompt_logprobs.extend(chunk[len(state.prompt_logprobs) - (first_pos + 1) :])

    def _append_token(self, seq: _Sequence, token: int, logprobs: PositionLogprobs | None) -> bool:
        """Append one token; True if it finished the sequence."""
        req = seq.req
        req.append_token(token)
        if seq.logprobs is not None:
            seq.logprobs.append(logprobs)
        status = req.check_stop()
        stopped_by_token = status == RequestStatus.FINISHED_STOPPED
        if not stopped_by_token and seq.detok.add_token(token):
            status = RequestStatus.FINISHED_STOPPED
            req.stop_reason = seq.detok.matched_stop
        if status is not None:
            if req.kv_transfer_id is not None:
                self.parking.park(req.kv_transfer_id, req)
            self.scheduler.finish(req, status)
        return status is not None

    def _make_output(self, state: _RequestState) -> RequestOutput:
        finished = state.finished
        outputs = []
        for i, seq in enumerate(state.seqs):
            req = seq.req
            done = req.status.is_finished
            outputs.append(
                CompletionOutput(
                    index=i,
                    text=seq.detok.output_text,
                    delta_text=seq.detok.take_delta(finished=done),
                    token_ids=req.output_token_ids,
                    logprobs=seq.logprobs,
                    finish_reason=req.status.value if done else None,
                    stop_reason=req.stop_reason,
                )
            )
        if finished:
            self._states.pop(state.request_id, None)
            for seq in state.seqs:
                self._seq_of.pop(seq.req.request_id, None)
        first = state.seqs[0].req
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=state.prompt_logprobs,
            outputs=outputs,
            finished=finished,
            num_cached_tokens=first.num_cached_prompt_tokens,
        )

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.kv.usage,
            num_free_blocks=self.kv.num_free_blocks,
            num_blocks=self.kv.num_blocks,
            prefix_cache_queries=self.kv.stats.queries,
            prefix_cache_hits=self.kv.stats.hits,
            num_preemptions=self.scheduler.num_preemptions,
            num_parked_blocks=self.parking.num_blocks,
            spec_decode=dataclasses.replace(self.speculator.stats) if self.speculator else None,
        )
