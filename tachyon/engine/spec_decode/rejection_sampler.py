"""Verifies draft tokens against the target model's logits so that the output keeps the target's
distribution exactly (Leviathan et al. 2023; Chen et al. 2023).

A request with k drafts has k + 1 rows of target logits: row i scores the token after draft i
(row 0: after the last known token). Greedy rows accept drafts while they equal the argmax and then
emit the argmax. Random rows accept draft d at row i with probability min(1, p_i(d) / q_i(d)); the
first rejection emits a sample of the residual max(p_i - q_i, 0), and if all k pass, a bonus token
from p_k. q is the draft's distribution, or a point mass on d for deterministic drafts (n-gram),
where the rule reduces to "accept with probability p(d), else sample p without d".

All randomness comes from the request's own generator (k uniforms, then one exponential race), so
a seeded request draws the same numbers whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tachyon.engine.outputs import PositionLogprobs
from tachyon.engine.request import Request
from tachyon.engine.sampler import SamplingMetadata, exponential_race, filtered_probs, greedy_ids, token_logprobs


@dataclass
class Verified:
    token_ids: list[int]  # accepted drafts, then one token from the target
    num_accepted: int
    logprobs: list[PositionLogprobs] | None  # one per emitted token, when the request wants them


def verify_drafts(
    logits: torch.Tensor, reqs: list[Request], drafts: list[list[int]], vocab_size: int
) -> list[Verified]:
    """`logits` [sum(k_i + 1), V]: each request's k_i + 1 rows, in order. Drafts' distributions are
    read from `req.spec_draft_probs` ([k_i, V] or None)."""
    params = [r.params for r, d in zip(reqs, drafts, strict=True) for _ in range(len(d) + 1)]
    gens = [r.generator for r, d in zip(reqs, drafts, strict=True) for _ in range(len(d) + 1)]
    no_history = [[]] * len(params)  # speculating requests have no penalties and are past min_tokens
    meta = SamplingMetadata.build(
        params, gens, no_history, no_history, [set()] * len(params), vocab_size, logits.device
    )
    greedy = greedy_ids(logits).tolist()
    probs = None if meta.all_greedy else filtered_probs(logits.to(torch.float32, copy=True), meta)  # [R, V]
    out: list[Verified] = []
    row = 0
    for req, draft in zip(reqs, drafts, strict=True):
        k = len(draft)
        if req.params.is_greedy:
            target = greedy[row : row + k + 1]
            n = next((i for i in range(k) if draft[i] != target[i]), k)
            tokens = [*draft[:n], target[n]]
        else:
            n, token = _rejection_sample(probs[row : row + k + 1], draft, req.spec_draft_probs, req.generator)
            tokens = [*draft[:n], token]
        lps = None
        if req.params.logprobs is not None:
            rows = logits[row : row + len(tokens)]
            lps = token_logprobs(rows, torch.tensor(tokens, device=rows.device), req.params.logprobs)
        out.append(Verified(tokens, n, lps))
        row += k + 1
    return out


def _rejection_sample(
    p: torch.Tensor, draft: list[int], q: torch.Tensor | None, generator: torch.Generator
) -> tuple[int, int]:
    """p [k + 1, V] target probabilities, q [k, V] or None (point masses on the drafts).
    Returns (accepted drafts, the token that follows them)."""
    k = len(draft)
    ids = torch.tensor(draft, device=p.device)
    rows = torch.arange(k, device=p.device)
    p_draft = p[rows, ids]  # [k]
    q_draft = q[rows, ids] if q is not None else torch.ones_like(p_draft)
    u = torch.rand(k, generator=generator, device=p.device)
    rejected = (u * q_draft >= p_draft).nonzero()
    n = int(rejected[0]) if len(rejected) else k
    if n == k:
        dist = p[k]
    else:
        dist = (p[n] - q[n]).clamp_(min=0) if q is not None else p[n].clone().index_fill_(0, ids[n], 0.0)
        if not dist.sum() > 0:  # p == q up to rounding: nothing left to correct
            dist = p[n]
    return n, int(exponential_race(dist.unsqueeze(0), [generator])[0])
