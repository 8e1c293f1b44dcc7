"""Small builders for engine unit tests."""

from __future__ import annotations

import torch

from tachyon.engine.request import Request
from tachyon.sampling_params import SamplingParams


def make_request(request_id: str, tokens: list[int], max_tokens: int = 8, **params) -> Request:
    return Request(
        request_id=request_id,
        prompt_token_ids=tokens,
        params=SamplingParams(max_tokens=max_tokens, temperature=0, **params),
        eos_token_ids=frozenset({0}),
        max_model_len=1024,
        generator=torch.Generator(),
    )
