"""Turns the last-position logits of a batch into one token per request, plus logprobs on demand.

The model runner builds a `SamplingMetadata` per step and calls `Sampler`; it also calls
`token_logprobs` on prompt chunks. Speculative decoding reuses `filtered_probs` and `exponential_race`.
Order of work on the logits (vLLM-compatible):

    raw logprobs -> min_tokens block -> repetition -> frequency/presence -> greedy argmax
                 -> temperature -> top_k -> top_p -> min_p -> exponential race with the row's generator
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tachyon.engine.outputs import Logprob, PositionLogprobs
from tachyon.kernels import cpu_elementwise
from tachyon.sampling_params import SamplingParams


@dataclass
class Penalties:
    repetition: torch.Tensor | None  # [B, 1]; None when no row sets one
    seen: torch.Tensor | None  # [B, V] bool: token occurs in the prompt or the output
    frequency: torch.Tensor | None  # [B, 1]; None when no row sets frequency or presence
    presence: torch.Tensor | None  # [B, 1]
    output_counts: torch.Tensor | None  # [B, V] float: occurrences in the output


@dataclass
class SamplingMetadata:
    vocab_size: int
    all_greedy: bool
    blocked: tuple[torch.Tensor, torch.Tensor] | None  # (rows, token ids) held back by min_tokens
    penalties: Penalties | None
    num_logprobs: list[int | None]  # per row; None: no logprobs wanted
    generators: list[torch.Generator | None]  # None on greedy rows: they draw nothing
    greedy: torch.Tensor | None = None  # [B] bool; only set when greedy and random rows are mixed
    temperature: torch.Tensor | None = None  # [B, 1]; 1 on greedy rows
    top_k: torch.Tensor | None = None  # [B, 1] long; 0 = off
    max_top_k: int = 0
    top_p: torch.Tensor | None = None  # [B, 1]; inf = off
    min_p: torch.Tensor | None = None  # [B, 1]; 0 = off

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        generators: list[torch.Generator],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        stop_token_ids: list[set[int]],
        vocab_size: int,
        device: torch.device,
    ) -> SamplingMetadata:
        """`stop_token_ids[i]` are the ids row i may not sample while it has fewer than min_tokens outputs."""
        meta = cls(
            vocab_size=vocab_size,
            all_greedy=all(p.is_greedy for p in params),
            blocked=_blocked(params, output_token_ids, stop_token_ids, vocab_size, device),
            penalties=_penalties(params, prompt_token_ids, output_token_ids, vocab_size, device),
            num_logprobs=[p.logprobs for p in params],
            generators=[None if p.is_greedy else g for p, g in zip(params, generators, strict=True)],
        )
        if not meta.all_greedy:
            meta._add_random(params, device)
        return meta

    def _add_random(self, params: list[SamplingParams], device: torch.device) -> None:
        greedy = [p.is_greedy for p in params]
        if any(greedy):
            self.greedy = torch.tensor(greedy, device=device)
        self.temperature = _column([1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)], device)
        top_k = [p.top_k if p.top_k < self.vocab_size else 0 for p in params]
        if any(top_k):
            self.top_k = torch.tensor(top_k, device=device).unsqueeze(1)
            self.max_top_k = max(top_k)
        if any(p.top_p < 1 for p in params):
            self.top_p = _column([p.top_p if p.top_p < 1 else float("inf") for p in params], device)
        if any(p.min_p > 0 for p in params):
            self.min_p = _column([p.min_p for p in params], device)

    @property
    def is_plain_greedy(self) -> bool:
        return self.all_greedy and self.penalties is None and self.blocked is None

    @property
    def max_num_logprobs(self) -> int | None:
        wanted = [n for n in self.num_logprobs if n is not None]
        return max(wanted) if wanted else None


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one sampled token per row
    logprobs: list[PositionLogprobs | None]  # per row: the sampled token + the top-n; None if not wanted


class Sampler:
    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """`logits` [B, V] from the model, in its dtype; left untouched. Everything but the argmax
        computes in float32."""
        wants_logprobs = meta.max_num_logprobs is not None
        raw_logprobs = logits.float().log_softmax(-1) if wants_logprobs else None  # [B, V]
        if meta.is_plain_greedy:
            tokens = greedy_ids(logits)  # [B]
        else:
            tokens = _sample(logits.to(torch.float32, copy=True), meta)
        logprobs: list[PositionLogprobs | None] = [None] * len(meta.num_logprobs)
        if raw_logprobs is not None:
            logprobs = _position_logprobs(raw_logprobs, tokens, meta.num_logprobs)
        return SamplerOutput(tokens.tolist(), logprobs)


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] -> the first argmax of each row [B], in the logits' own dtype (widening to float32 would not
    change it). On CPU a native kernel: torch's argmax there takes 20 times as long as its max."""
    if cpu_elementwise.supports(logits):
        return cpu_elementwise.argmax(logits)
    return logits.argmax(-1)


def token_logprobs(logits: torch.Tensor, target_ids: torch.Tensor, num_top: int) -> list[PositionLogprobs]:
    """`logits` [T, V] at T positions, `target_ids` [T] the tokens that follow them (prompt tokens, or
    the tokens speculative decoding accepted): each one's raw logprob and rank, plus the top num_top."""
    logprobs = logits.to(torch.float32).log_softmax(-1)  # [T, V]
    return _position_logprobs(logprobs, target_ids.to(logprobs.device), [num_top] * len(target_ids))


def _sample(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """`logits` [B, V], a private copy modified in place; returns the sampled ids [B]."""
    if meta.blocked is not None:
        logits[meta.blocked] = float("-inf")
    if meta.penalties is not None:
        logits = apply_penalties(logits, meta.penalties)
    if meta.all_greedy:
        return greedy_ids(logits)
    greedy = greedy_ids(logits) if meta.greedy is not None else None  # [B]
    random_ids = exponential_race(filtered_probs(logits, meta), meta.generators)  # [B]
    return random_ids if greedy is None else torch.where(meta.greedy, greedy, random_ids)


def filtered_probs(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """The distribution a random row samples from: temperature, top-k, top-p, then min-p.
    `logits` [B, V] is modified in place; returns probs [B, V], rows summing to 1."""
    logits.div_(meta.temperature)
    if meta.top_k is not None:
        logits = apply_top_k(logits, meta.top_k, meta.max_top_k)
    if meta.top_p is not None:
        logits = apply_top_p(logits, meta.top_p)
    probs = logits.softmax(-1)  # [B, V]
    if meta.min_p is not None:
        probs = apply_min_p(probs, meta.min_p)
        probs.div_(probs.sum(-1, keepdim=True))
    return probs


def exponential_race(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One id per row of `probs` [B, V] (unnormalized is fine), drawn with the row's own generator."""
    return (probs / _exponential_noise(probs, generators)).argmax(-1)


def apply_penalties(logits: torch.Tensor, p: Penalties) -> torch.Tensor:
    """Repetition (HF: over prompt + output), then frequency/presence (OpenAI: over the output)."""
    if p.seen is not None:
        penalized = torch.where(logits < 0, logits * p.repetition, logits / p.repetition)  # [B, V]
        logits = torch.where(p.seen, penalized, logits)
    if p.output_counts is not None:
        logits -= p.frequency * p.output_counts + p.presence * (p.output_counts > 0)
    return logits


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """Keep the top_k largest logits per row (and ties with the k-th); top_k [B, 1], 0 = off."""
    top = logits.topk(max_top_k, dim=-1).values  # [B, K], descending
    kth = top.gather(1, (top_k - 1).clamp(min=0))  # [B, 1]
    kth.masked_fill_(top_k == 0, float("-inf"))
    return logits.masked_fill_(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest most-likely set whose probability reaches top_p [B, 1]: a token is dropped
    when the tokens ranked above it already hold top_p (so the top token always stays)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # [B, V]
    probs = sorted_logits.softmax(-1)
    mass_above = probs.cumsum(-1) - probs  # [B, V]
    drop = torch.empty_like(mass_above, dtype=torch.bool).scatter_(1, order, mass_above >= top_p)
    return logits.masked_fill_(drop, float("-inf"))


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero the tokens less likely than min_p [B, 1] times the row's most likely one."""
    return probs.masked_fill_(probs < probs.amax(-1, keepdim=True) * min_p, 0.0)


def _exponential_noise(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """q [B, V] ~ Exp(1), each row drawn only from its own generator (1 on greedy rows), so
    argmax(probs / q) samples each row exactly as it would alone, in any batch and order."""
    q = torch.ones_like(probs)
    for row, gen in enumerate(generators):
        if gen is not None:
            q[row].exponential_(generator=gen)
    return q.clamp_(min=torch.finfo(q.dtype).tiny)  # q == 0 would turn filtered 0 / 0 into NaN


def _position_logprobs(
    logprobs: torch.Tensor, chosen: torch.Tensor, num_top: list[int | None]
) -> list[PositionLogprobs | None]:
    """Per row: the chosen token's logprob and rank plus the row's top num_top.
    `logprobs` [N, V], `chosen` [N]."""
    chosen_lp = logprobs.gather(1, chosen.unsqueeze(1))  # [N, 1]
    chosen_rank = (logprobs > chosen_lp).sum(-1) + 1  # [N]
    max_top = max((n for n in num_top if n is not None), default=0)
    top_lp, top_ids = logprobs.topk(max_top, dim=-1)  # [N, K], descending
    top_rank = (top_lp.unsqueeze(1) > top_lp.unsqueeze(2)).sum(-1) + 1  # [N, K]: ties share a rank
    chosen_rows = zip(chosen.tolist(), chosen_lp.squeeze(1).tolist(), chosen_rank.tolist(), strict=True)
    top_rows = zip(top_ids.tolist(), top_lp.tolist(), top_rank.tolist(), strict=True)
    out: list[PositionLogprobs | None] = []
    for (token, lp, rank), top, n in zip(chosen_rows, top_rows, num_top, strict=True):
        if n is None:
            out.append(None)
            continue
        entry = {token: Logprob(lp, rank)}
        entry.update({i: Logprob(v, r) for i, v, r in zip(*(column[:n] for column in top), strict=True)})
        out.append(entry)
    return out


def _blocked(
    params: list[SamplingParams],
    output_token_ids: list[list[int]],
    stop_token_ids: list[set[int]],
    vocab_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    rows: list[int] = []
    cols: list[int] = []
    for row, (p, out, stops) in enumerate(zip(params, output_token_ids, stop_token_ids, strict=True)):
        if len(out) < p.min_tokens:
            ids = [t for t in stops if 0 <= t < vocab_size]
            rows += [row] * len(ids)
            cols += ids
    if not rows:
        return None
    return torch.tensor(rows, device=device), torch.tensor(cols, device=device)


def _penalties(
    params: list[SamplingParams],
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    vocab_size: int,
    device: torch.device,
) -> Penalties | None:
    if not any(p.has_penalties for p in params):
        return None
    penalties = Penalties(None, None, None, None, None)
    output_counts = _token_counts(output_token_ids, vocab_size, device)  # [B, V]
    if any(p.repetition_penalty != 1 for p in params):
        penalties.repetition = _column([p.repetition_penalty for p in params], device)
        penalties.seen = (_token_counts(prompt_token_ids, vocab_size, device) + output_counts) > 0
    if any(p.frequency_penalty != 0 or p.presence_penalty != 0 for p in params):
        penalties.frequency = _column([p.frequency_penalty for p in params], device)
        penalties.presence = _column([p.presence_penalty for p in params], device)
        penalties.output_counts = output_counts
    return penalties


def _token_counts(token_ids: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[B, V] float32: how often each token occurs in each row's list."""
    width = max((len(t) for t in token_ids), default=0)
    padded = [t + [vocab_size] * (width - len(t)) for t in token_ids]  # pad into a spare column
    ids = torch.tensor(padded, dtype=torch.long, device=device).reshape(len(token_ids), width)  # [B, L]
    counts = torch.zeros(len(token_ids), vocab_size + 1, device=device)
    counts.scatter_add_(1, ids, torch.ones(ids.shape, device=device))
    return counts[:, :vocab_size]


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)  # [B, 1]
