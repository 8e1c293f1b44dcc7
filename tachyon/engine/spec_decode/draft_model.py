"""Draft-model proposers: a second, smaller model with the same tokenizer (vLLM's "draft_model"), or
the target's own first layers and LM head ("self_spec": nothing extra to download or hold).

Drafting runs k forwards of the draft: the first catches the draft up on every token it has not seen
(the whole prompt for a new request, else the one or two tokens the last verification added), each
later one feeds back the previous draft token. The draft's KV lives in the target's block table: a
separate draft model has its own KV tensors with the same block ids (so block accounting stays one
manager's job), and self-speculation writes the shared first layers' KV, which verification then
overwrites with identical values for accepted tokens.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from tachyon.config import EngineConfig
from tachyon.engine.model_runner import ModelRunner
from tachyon.engine.request import Request
from tachyon.engine.sampler import SamplingMetadata, exponential_race, filtered_probs, greedy_ids
from tachyon.engine.spec_decode.proposer import Draft, Proposer
from tachyon.models.loader import load_model_source

logger = logging.getLogger(__name__)


class DraftModelProposer(Proposer):
    needs_kv_slots = True

    def __init__(self, runner: ModelRunner, num_layers: int | None, name: str) -> None:
        """`num_layers` set: `runner` is the target's, and the draft is its first layers (shared KV)."""
        self.runner, self.num_layers, self.name = runner, num_layers, name
        self.shares_kv = num_layers is not None

    @classmethod
    def load(cls, draft_model: str, config: EngineConfig, target: ModelRunner) -> DraftModelProposer:
        source = load_model_source(draft_model, load_format=config.load_format)
        if source.hf_config.vocab_size != target.vocab_size:
            raise ValueError(
                f"draft model {draft_model} has a vocabulary of {source.hf_config.vocab_size} tokens, the target "
                f"{target.vocab_size}: a draft model must share the target's tokenizer"
            )
        draft_config = dataclasses.replace(
            config, model=draft_model, tokenizer=None, enforce_eager=True, speculative_config=None
        )
        runner = ModelRunner(draft_config, source, target.device, target.dtype)
        logger.info("Draft model %s: %d layers", draft_model, len(runner.attn_layers))
        return cls(runner, None, "draft_model")

    @classmethod
    def self_speculative(cls, target: ModelRunner, num_layers: int | None) -> DraftModelProposer:
        total = len(target.attn_layers)
        num_layers = num_layers or max(1, total // 4)
        if num_layers >= total:
            raise ValueError(f"num_draft_layers must be below the target's {total} layers, got {num_layers}")
        logger.info("Self-speculation: the first %d of %d layers draft", num_layers, total)
        return cls(target, num_layers, "self_spec")

    @property
    def kv_bytes_per_block(self) -> int:
        return 0 if self.shares_kv else self.runner.kv_bytes_per_block

    def allocate_kv_cache(self, num_blocks: int) -> None:
        if not self.shares_kv:
            self.runner.allocate_kv_cache(num_blocks)

    @torch.inference_mode()
    def propose(self, reqs: list[Request], num_tokens: list[int]) -> list[Draft]:
        tokens: list[list[int]] = [[] for _ in reqs]
        probs: list[list[torch.Tensor]] = [[] for _ in reqs]
        # round 0: every token the draft has no KV for yet, ending with the request's last token. Draft KV
        # past the target's computed tokens may hold rejected or never-verified drafts: recompute it.
        starts = [r.num_computed_tokens if self.shares_kv else r.num_draft_computed_tokens for r in reqs]
        starts = [min(start, r.num_computed_tokens) for start, r in zip(starts, reqs, strict=True)]
        batch = [(r, r.all_token_ids[s:], s) for r, s in zip(reqs, starts, strict=True)]
        active = list(range(len(reqs)))
        for step in range(max(num_tokens)):
            if step > 0:
                active = [i for i in active if num_tokens[i] > step]
                batch = [(reqs[i], tokens[i][-1:], reqs[i].num_tokens + step - 1) for i in active]
            logits = self._last_logits(batch)
            self._sample([reqs[i] for i in active], logits, [tokens[i] for i in active], [probs[i] for i in active])
        if not self.shares_kv:
            for r, k in zip(reqs, num_tokens, strict=True):
                r.num_draft_computed_tokens = r.num_tokens + k - 1
        return [Draft(t, torch.stack(p) if p else None) for t, p in zip(tokens, probs, strict=True)]

    def _last_logits(self, batch: list[tuple[Request, list[int], int]]) -> torch.Tensor:
        """Run (request, new tokens, first position) through the draft; logits [B, V] at each last token."""
        ids, positions, query_lens, seq_lens, last_rows = [], [], [], [], []
        for _, new, first in batch:
            ids += new
            positions += range(first, first + len(new))
            query_lens.append(len(new))
            seq_lens.append(first + len(new))
            last_rows.append(len(ids) - 1)
        tables = [r.block_ids for r, _, _ in batch]
        hidden = self.runner.forward(ids, positions, query_lens, seq_lens, tables, self.num_layers)
        return self.runner.compute_logits(hidden, last_rows)

    def _sample(self, reqs: list[Request], logits: torch.Tensor, tokens: list[list[int]], probs: list[list]) -> None:
        """Greedy requests draft the argmax; random ones sample the draft's filtered distribution q with
        their own generator and keep q for the rejection test."""
        greedy = greedy_ids(logits).tolist()
        if all(r.params.is_greedy for r in reqs):
            for out, token in zip(tokens, greedy, strict=True):
                out.append(token)
            return
        params, gens = [r.params for r in reqs], [r.generator for r in reqs]
        empty = [[]] * len(reqs)
        meta = SamplingMetadata.build(params, gens, empty, empty, [set()] * len(reqs), logits.shape[-1], logits.device)
        q = filtered_probs(logits.to(torch.float32, copy=True), meta)  # [B, V]
        sampled = exponential_race(q, meta.generators).tolist()
        for i, r in enumerate(reqs):
            if r.params.is_greedy:
                tokens[i].append(greedy[i])
            else:
                tokens[i].append(sampled[i])
                probs[i].append(q[i])
