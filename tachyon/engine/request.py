"""One generation request as the engine tracks it: its tokens, how many have KV in the cache, its
blocks, and why it finished. Created by the engine front end, advanced by the scheduler."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from tachyon.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self.name.startswith("FINISHED")


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    max_model_len: int
    generator: torch.Generator
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    cache_salt: str | None = None  # keeps prefix-cache entries apart (LoRA, multimodal, tenants)
    parent_id: str | None = None  # set on the n > 1 siblings that share one prompt
    kv_transfer_id: str | None = None  # prefill role: park the prompt's KV under this id when finished

    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # one per full block of all_token_ids
    num_cached_blocks: int = 0  # leading blocks already registered in the prefix cache
    num_cached_prompt_tokens: int = 0  # prefix-cache hit at first scheduling (for stats)
    stop_reason: int | str | None = None
    # speculative decoding: tokens proposed for the next step (not yet in all_token_ids), the draft's
    # distribution they were sampled from ([k, V]; None: deterministic, as greedy or n-gram drafts),
    # and how many leading tokens have KV in a separate draft model's cache
    spec_token_ids: list[int] = field(default_factory=list)
    spec_draft_probs: torch.Tensor | None = None
    num_draft_computed_tokens: int = 0

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens :]

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None

    def append_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)

    def clear_draft(self) -> None:
        self.spec_token_ids = []
        self.spec_draft_probs = None

    def check_stop(self) -> RequestStatus | None:
        """After a token was appended: the finished status it causes, if any (stop strings are the detokenizer's)."""
        last, params = self.all_token_ids[-1], self.params
        if self.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and last in self.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if last in params.stop_token_ids:
                self.stop_reason = last
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and self.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if self.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None
