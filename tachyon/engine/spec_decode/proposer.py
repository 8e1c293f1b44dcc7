"""The seam between speculative decoding and whatever proposes the drafts: n-gram lookup, a draft
model, the target's own first layers, and later learned heads (EAGLE, Medusa) all implement `Proposer`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from tachyon.engine.request import Request


@dataclass
class Draft:
    token_ids: list[int]
    probs: torch.Tensor | None = None  # [len(token_ids), V] the distribution each was sampled from; None: deterministic


class Proposer(ABC):
    name: str
    kv_bytes_per_block: int = 0  # a draft model's own KV cache, per block of the shared block table
    needs_kv_slots: bool = False  # drafting writes KV, so the slots of the draft positions must exist first

    def allocate_kv_cache(self, num_blocks: int) -> None:  # noqa: B027 (optional hook)
        """Called once with the pool's block count; proposers with their own KV cache allocate it."""

    @abstractmethod
    def propose(self, reqs: list[Request], num_tokens: list[int]) -> list[Draft]:
        """Up to num_tokens[i] draft tokens to follow reqs[i]'s tokens. Every request is decoding (all its
        tokens but the last have KV) and owns the KV slots for positions up to num_tokens - 1 + num_tokens[i]."""
