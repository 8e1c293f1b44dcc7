"""What the engine hands back to callers: per-request outputs and the logprob entries inside them.

Built by `LLMEngine` (and the sampler, for logprobs); read by the offline `LLM` API, the async
engine and the server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    logprob: float
    rank: int  # 1 = most likely: 1 + the number of tokens with a strictly greater logprob
    decoded_token: str | None = None


PositionLogprobs = dict[int, Logprob]  # token id -> Logprob at one position: the chosen token + the top-n


@dataclass
class CompletionOutput:
    index: int  # which of the request's n samples
    text: str
    delta_text: str  # text added since the previous output of this request (for streaming)
    token_ids: list[int]
    logprobs: list[PositionLogprobs] | None
    finish_reason: str | None  # "stop", "length", "abort"; None while running
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[PositionLogprobs | None] | None  # entry 0 is None: the first token has no context
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
