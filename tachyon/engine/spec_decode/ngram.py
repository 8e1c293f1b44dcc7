"""N-gram prompt lookup (vLLM's "ngram" method): if the last n tokens occurred earlier in the prompt or
the output, propose what followed them there. No model runs, so it costs microseconds, and it pays on
input-grounded tasks (summarize, edit, extract, code changes) where the output copies the input."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tachyon.engine.request import Request
from tachyon.engine.spec_decode.proposer import Draft, Proposer


def find_continuation(tokens: np.ndarray, max_n: int, min_n: int, num_tokens: int) -> list[int]:
    """The tokens after the most recent earlier match of the longest suffix n-gram (max_n down to min_n)."""
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        windows = sliding_window_view(tokens[: length - 1], n)  # every n-gram that ends before the last token
        hits = np.flatnonzero((windows == tokens[length - n :]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return tokens[start : start + num_tokens].tolist()
    return []


class NgramProposer(Proposer):
    name = "ngram"

    def __init__(self, prompt_lookup_max: int, prompt_lookup_min: int) -> None:
        self.max_n, self.min_n = prompt_lookup_max, prompt_lookup_min

    def propose(self, reqs: list[Request], num_tokens: list[int]) -> list[Draft]:
        return [
            Draft(find_continuation(np.asarray(r.all_token_ids), self.max_n, self.min_n, k))
            for r, k in zip(reqs, num_tokens, strict=True)
        ]
