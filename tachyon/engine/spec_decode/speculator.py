"""Speculative decoding inside continuous batching: after each step the engine asks the `Speculator`
for drafts for every running request that is decoding; the scheduler runs them after the request's
last token in the next step (mixed with prefills and plain decodes), the model runner verifies them
(`rejection_sampler.py`) and the scheduler rolls back the KV slots of rejected ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from tachyon.config import EngineConfig, SpeculativeConfig
from tachyon.engine.kv_cache_manager import KVCacheManager
from tachyon.engine.model_runner import ModelRunner
from tachyon.engine.request import Request
from tachyon.engine.scheduler import SchedulerOutput
from tachyon.engine.spec_decode.controller import SpeculationController, StepCost
from tachyon.engine.spec_decode.draft_model import DraftModelProposer
from tachyon.engine.spec_decode.ngram import NgramProposer
from tachyon.engine.spec_decode.proposer import Proposer

logger = logging.getLogger(__name__)

PROFILE_TOKEN_COUNTS = (1, 4, 16, 64, 256)


@dataclass
class SpecDecodeStats:
    num_steps: int = 0  # steps that verified drafts
    num_drafts: int = 0  # (request, step) pairs that verified at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verified draft: accepted ones plus the target's own (vLLM's definition)."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0

    @property
    def drafts_per_step(self) -> float:
        return self.num_drafts / self.num_steps if self.num_steps else 0.0


def create_proposer(spec: SpeculativeConfig, config: EngineConfig, runner: ModelRunner) -> Proposer:
    if spec.method == "ngram":
        return NgramProposer(spec.prompt_lookup_max, spec.prompt_lookup_min)
    if spec.method == "self_spec":
        return DraftModelProposer.self_speculative(runner, spec.num_draft_layers)
    return DraftModelProposer.load(spec.model, config, runner)


def can_speculate(req: Request) -> bool:
    """Decoding (every token but the last has KV), and nothing that makes a token's distribution depend
    on the tokens sampled just before it in the same step (penalties, min_tokens still blocking eos)."""
    p = req.params
    return (
        req.num_computed_tokens == req.num_tokens - 1
        and not req.is_prefilling
        and not p.has_penalties
        and req.num_output_tokens >= p.min_tokens
    )


class Speculator:
    def __init__(self, spec: SpeculativeConfig, config: EngineConfig, runner: ModelRunner) -> None:
        self.spec, self.runner = spec, runner
        self.proposer = create_proposer(spec, config, runner)
        self.controller: SpeculationController | None = None  # built by `profile`, after the KV pool exists
        self.stats = SpecDecodeStats()

    @property
    def kv_bytes_per_block(self) -> int:
        return self.proposer.kv_bytes_per_block

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.proposer.allocate_kv_cache(num_blocks)

    def profile(self, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        """Time target forwards (and draft rounds) over a ladder of token counts: the controller's cost model."""
        k = self.spec.num_speculative_tokens
        if not self.spec.adaptive:
            logger.info("Speculative decoding: %s, always %d draft tokens (adaptive off)", self.proposer.name, k)
            self.controller = SpeculationController(k, None, None, self.spec.disable_by_batch_size, adaptive=False)
            return
        cap = min(max_num_seqs * (k + 1), max_num_batched_tokens)
        counts = [n for n in PROFILE_TOKEN_COUNTS if n <= cap] or [1]
        step = StepCost([(n, _time_forward(self.runner, n, None)) for n in counts])
        draft = None
        if isinstance(self.proposer, DraftModelProposer):
            draft = StepCost([(n, _time_forward(self.proposer.runner, n, self.proposer.num_layers)) for n in counts])
        logger.info(
            "Speculative decoding: %s, up to %d draft tokens; target step %s%s",
            self.proposer.name,
            k,
            step.describe(),
            f"; draft round {draft.describe()}" if draft else "",
        )
        self.controller = SpeculationController(k, step, draft, self.spec.disable_by_batch_size)

    def record(self, sched: SchedulerOutput, num_rejected: dict[str, int]) -> None:
        """Count what the step verified and feed the acceptance estimate."""
        accepted = rejections = drafts = 0
        for s in sched.scheduled:
            if s.spec_token_ids:
                n = len(s.spec_token_ids) - num_rejected.get(s.request.request_id, 0)
                self.stats.num_draft_tokens += len(s.spec_token_ids)
                accepted += n
                rejections += n < len(s.spec_token_ids)
                drafts += 1
        self.stats.num_accepted_tokens += accepted
        self.stats.num_drafts += drafts
        self.stats.num_steps += drafts > 0
        self.controller.acceptance.update(accepted, rejections)

    def propose(self, running: list[Request], kv: KVCacheManager) -> None:
        """Give each decoding request its drafts for the next step (none when the controller says so)."""
        for req in running:
            req.clear_draft()
        eligible = [r for r in running if can_speculate(r)]
        k = self.controller.choose(len(eligible), len(running) - len(eligible))
        reqs, ks = [], []
        for req in eligible if k else []:
            room = [k, req.max_model_len - req.num_tokens - 1]
            if req.params.max_tokens is not None:
                room.append(req.params.max_tokens - req.num_output_tokens - 1)
            req_k = min(room)
            # model drafters write KV for their inputs, so they need the slots first
            if req_k > 0 and (not self.proposer.needs_kv_slots or kv.allocate_slots(req, 1 + req_k)):
                reqs.append(req)
                ks.append(req_k)
        if not reqs:
            return
        for req, draft in zip(reqs, self.proposer.propose(reqs, ks), strict=True):
            if draft.token_ids and (self.proposer.needs_kv_slots or kv.allocate_slots(req, 1 + len(draft.token_ids))):
                req.spec_token_ids, req.spec_draft_probs = draft.token_ids, draft.probs


@torch.inference_mode()
def _time_forward(runner: ModelRunner, num_tokens: int, num_layers: int | None) -> float:
    """Seconds for one forward of `num_tokens` one-token sequences, logits for every row included.
    Writes only slot 0 of block 0, before any request exists."""
    dev = runner.device
    args = ([0] * num_tokens, [0] * num_tokens, [1] * num_tokens, [1] * num_tokens, [[0]] * num_tokens)
    times = []
    for _ in range(2):  # the first run warms up kernels and allocator
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        runner.compute_logits(runner.forward(*args, num_layers=num_layers), slice(0, num_tokens))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    return times[-1]
