"""Sampler against independent references: argmax, softmax frequencies, numpy filters, loop-based
penalties and HF's RepetitionPenaltyLogitsProcessor, log_softmax; plus per-request reproducibility."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from tachyon.engine.sampler import Sampler, SamplingMetadata, apply_penalties, token_logprobs
from tachyon.sampling_params import SamplingParams

EOS = 0


def _meta(params, logits, generators=None, prompts=None, outputs=None, stops=None) -> SamplingMetadata:
    num_rows, vocab = logits.shape
    return SamplingMetadata.build(
        params=params,
        generators=generators or [torch.Generator().manual_seed(i) for i in range(num_rows)],
        prompt_token_ids=prompts or [[1, 2, 3]] * num_rows,
        output_token_ids=outputs or [[]] * num_rows,
        stop_token_ids=stops or [{EOS}] * num_rows,
        vocab_size=vocab,
        device=logits.device,
    )


def _sample(params, logits, **kw) -> list[int]:
    return Sampler()(logits, _meta(params, logits, **kw)).token_ids


def _draws(params: SamplingParams, row_logits: torch.Tensor, num: int, seed: int = 0) -> np.ndarray:
    """`num` independent samples of one row: the row repeated, all copies drawing from one generator."""
    gen = torch.Generator().manual_seed(seed)
    logits = row_logits.expand(num, -1).contiguous()
    return np.array(_sample([params] * num, logits, generators=[gen] * num))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _assert_frequencies_match(samples: np.ndarray, probs: np.ndarray) -> None:
    """Pearson chi-square test at p = 0.001; tokens expected fewer than 5 times share one bin."""
    observed = np.bincount(samples, minlength=len(probs)).astype(np.float64)
    expected = probs * len(samples)
    assert observed[expected == 0].sum() == 0
    rare = (expected > 0) & (expected < 5)
    bins = expected >= 5
    observed = np.append(observed[bins], observed[rare].sum())
    expected = np.append(expected[bins], expected[rare].sum())
    observed, expected = observed[expected > 0], expected[expected > 0]
    stat = float(((observed - expected) ** 2 / expected).sum())
    dof = len(expected) - 1
    critical = dof * (1 - 2 / (9 * dof) + 3.09 * (2 / (9 * dof)) ** 0.5) ** 3  # Wilson-Hilferty, z(0.999)
    assert stat < critical, (stat, critical)


def _numpy_kept(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Reference filters in float64: temperature, top_k, top_p, min_p; the kept mask of one row."""
    x = logits.astype(np.float64) / p.temperature
    kept = np.ones(len(x), dtype=bool)
    if p.top_k:
        kept &= x >= np.sort(x)[::-1][p.top_k - 1]
    if p.top_p < 1:
        probs = _softmax(np.where(kept, x, -np.inf))
        order = np.argsort(-probs, kind="stable")
        mass_above = np.cumsum(probs[order]) - probs[order]
        kept[order[mass_above >= p.top_p]] = False
    if p.min_p > 0:
        probs = _softmax(np.where(kept, x, -np.inf))
        kept &= probs >= p.min_p * probs.max()
    return kept


def test_greedy_batch_is_argmax_on_the_fast_path():
    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0)] * 64
    meta = _meta(params, logits)
    assert meta.is_plain_greedy
    assert Sampler()(logits, meta).token_ids == logits.argmax(-1).tolist()


def test_greedy_rows_draw_nothing_and_take_argmax_in_a_mixed_batch():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(temperature=0 if i % 2 else 1.0, top_k=5 if i % 2 else 0) for i in range(6)]
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    before = [g.get_state() for g in gens]
    tokens = _sample(params, logits, generators=gens)
    assert [tokens[i] for i in (1, 3, 5)] == logits[[1, 3, 5]].argmax(-1).tolist()
    for i in range(6):
        assert torch.equal(gens[i].get_state(), before[i]) == bool(i % 2)


@pytest.mark.parametrize("repetition_penalty", [1.0, 1.5])
def test_input_logits_are_not_modified(repetition_penalty):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(2))
    copy = logits.clone()
    params = SamplingParams(
        temperature=0.5, top_p=0.8, top_k=10, min_p=0.1, repetition_penalty=repetition_penalty, min_tokens=2
    )
    _sample([params] * 4, logits)
    assert torch.equal(logits, copy)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_sampling_frequencies_match_softmax(temperature):
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    samples = _draws(SamplingParams(temperature=temperature), row, 20_000)
    _assert_frequencies_match(samples, _softmax(row.numpy() / temperature))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.8, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.7),
        SamplingParams(temperature=1.0, min_p=0.15),
        SamplingParams(temperature=0.9, top_k=12, top_p=0.9, min_p=0.05),
    ],
)
def test_filtered_sampling_emits_only_kept_tokens_at_renormalised_frequencies(params):
    row = torch.randn(40, generator=torch.Generator().manual_seed(3)) * 1.5
    kept = _numpy_kept(row.numpy(), params)
    samples = _draws(params, row, 20_000, seed=4)
    assert set(samples.tolist()) <= set(np.flatnonzero(kept).tolist())
    probs = _softmax(np.where(kept, row.numpy() / params.temperature, -np.inf))
    _assert_frequencies_match(samples, probs)


def test_filters_keep_exactly_the_numpy_set_on_many_rows():
    """With a near-flat tail an unfiltered row would show most tokens; after filtering every kept
    token is hit and no other is, across rows with different settings in one batch."""
    rng = np.random.default_rng(5)
    vocab, num_rows, draws_per_row = 64, 24, 400
    cases = []
    for _ in range(num_rows):
        p = SamplingParams(
            temperature=float(rng.uniform(0.5, 1.5)),
            top_k=int(rng.choice([0, 3, 8])),
            top_p=float(rng.choice([1.0, 0.6, 0.9])),
            min_p=float(rng.choice([0.0, 0.2])),
        )
        cases.append((p, torch.tensor(rng.normal(size=vocab) * 2, dtype=torch.float32)))
    params = [p for p, _ in cases for _ in range(draws_per_row)]
    logits = torch.stack([row for _, row in cases for _ in range(draws_per_row)])
    gen = torch.Generator().manual_seed(6)
    tokens = np.array(_sample(params, logits, generators=[gen] * len(params)))
    tokens = tokens.reshape(num_rows, draws_per_row)
    for (p, row), emitted in zip(cases, tokens, strict=True):
        kept = np.flatnonzero(_numpy_kept(row.numpy(), p))
        assert set(emitted.tolist()) <= set(kept.tolist()), p
        probs = _softmax(row.numpy()[kept] / p.temperature)
        likely = kept[probs > 0.03]  # 400 draws miss such a token with probability < 1e-5
        assert set(likely.tolist()) <= set(emitted.tolist()), p


def test_top_p_keeps_at_least_the_top_token():
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0]]).expand(500, -1).contiguous()
    gen = torch.Generator().manual_seed(0)
    assert set(_sample([SamplingParams(top_p=0.01)] * 500, logits, generators=[gen] * 500)) == {0}


def _reference_penalties(logits, prompt, output, p: SamplingParams) -> torch.Tensor:
    out = logits.clone()
    for token in set(prompt) | set(output):
        value = out[token].item()
        out[token] = value * p.repetition_penalty if value < 0 else value / p.repetition_penalty
    for token, count in Counter(output).items():
        out[token] -= p.frequency_penalty * count + p.presence_penalty
    return out


def _penalty_case(seed: int, num_rows: int, vocab: int):
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(size=(num_rows, vocab)) * 3, dtype=torch.float32)
    prompts = [rng.integers(0, vocab, size=rng.integers(1, 20)).tolist() for _ in range(num_rows)]
    outputs = [rng.integers(0, vocab // 2, size=rng.integers(0, 30)).tolist() for _ in range(num_rows)]
    return logits, prompts, outputs, rng


def test_penalties_equal_a_loop_reference():
    logits, prompts, outputs, rng = _penalty_case(7, num_rows=8, vocab=50)
    params = [
        SamplingParams(
            temperature=0,
            repetition_penalty=float(rng.choice([1.0, 1.2, 0.8, 2.0])),
            frequency_penalty=float(rng.uniform(-2, 2)),
            presence_penalty=float(rng.uniform(-2, 2)),
        )
        for _ in range(8)
    ]
    meta = _meta(params, logits, prompts=prompts, outputs=outputs)
    got = apply_penalties(logits.clone(), meta.penalties)
    want = torch.stack([_reference_penalties(logits[i], prompts[i], outputs[i], params[i]) for i in range(8)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert Sampler()(logits, meta).token_ids == want.argmax(-1).tolist()  # greedy takes the penalised argmax


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.5])
def test_repetition_penalty_equals_hf_processor(penalty):
    logits, prompts, outputs, _ = _penalty_case(8, num_rows=5, vocab=80)
    meta = _meta([SamplingParams(repetition_penalty=penalty)] * 5, logits, prompts=prompts, outputs=outputs)
    got = apply_penalties(logits.clone(), meta.penalties)
    for i in range(5):
        ids = torch.tensor([prompts[i] + outputs[i]])
        want = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits[i : i + 1].clone())
        torch.testing.assert_close(got[i : i + 1], want, rtol=0, atol=0)


def _seeded_rows():
    """Four requests with their own seeds and settings, and their logits over 6 steps."""
    params = [
        SamplingParams(temperature=1.0, seed=11),
        SamplingParams(temperature=0.7, top_k=20, seed=12),
        SamplingParams(temperature=1.2, top_p=0.9, min_p=0.02, seed=13),
        SamplingParams(temperature=0.9, frequency_penalty=0.5, repetition_penalty=1.1, logprobs=2, seed=14),
    ]
    steps = torch.randn(6, 4, 500, generator=torch.Generator().manual_seed(9))  # [steps, rows, V]
    return params, steps


def _run_seeded(batch_of, positions) -> list[list[int]]:
    """Sample the seeded rows for all steps, placed at `positions` in batches built by `batch_of`."""
    params, steps = _seeded_rows()
    gens = [torch.Generator().manual_seed(p.seed) for p in params]
    outputs: list[list[int]] = [[] for _ in params]
    for step_logits in steps:
        batch_params, logits, batch_gens, batch_outputs = batch_of(len(positions), step_logits.shape[-1])
        for row, pos in enumerate(positions):
            batch_params[pos], batch_gens[pos], batch_outputs[pos] = params[row], gens[row], outputs[row]
            logits[pos] = step_logits[row]
        tokens = _sample(
            batch_params,
            logits,
            generators=batch_gens,
            outputs=batch_outputs,
            prompts=[[5, 6]] * len(logits),
            stops=[{EOS}] * len(logits),
        )
        for row, pos in enumerate(positions):
            outputs[row] = outputs[row] + [tokens[pos]]
    return outputs


def _alone(num_rows, vocab):
    return [None] * num_rows, torch.zeros(num_rows, vocab), [None] * num_rows, [None] * num_rows


def _crowd(rng):
    def build(num_seeded, vocab, size=32):
        params = [
            SamplingParams(
                temperature=float(rng.choice([0.0, 0.5, 1.0])),
                top_k=int(rng.choice([0, 5])),
                top_p=float(rng.choice([1.0, 0.8])),
                presence_penalty=float(rng.choice([0.0, 1.0])),
                min_tokens=int(rng.choice([0, 3])),
                logprobs=int(rng.choice([0, 3])) if rng.random() < 0.5 else None,
            )
            for _ in range(size)
        ]
        logits = torch.tensor(rng.normal(size=(size, vocab)), dtype=torch.float32)
        gens = [torch.Generator().manual_seed(int(rng.integers(1 << 30))) for _ in range(size)]
        outputs = [rng.integers(0, vocab, size=rng.integers(0, 5)).tolist() for _ in range(size)]
        return params, logits, gens, outputs

    return build


def test_seeded_rows_sample_the_same_alone_in_a_crowd_and_permuted():
    rng = np.random.default_rng(10)
    alone = _run_seeded(_alone, [0, 1, 2, 3])
    in_crowd = _run_seeded(_crowd(rng), [3, 17, 30, 8])
    permuted = _run_seeded(_crowd(rng), [21, 2, 11, 0])
    assert alone == in_crowd == permuted
    assert len({tuple(t) for t in alone}) == 4  # the rows really sample different things


def test_min_tokens_blocks_stop_tokens_until_reached():
    logits = torch.zeros(4, 20)
    logits[:, EOS] = 50.0
    logits[:, 7] = 40.0
    logits[:, 3] = 10.0
    greedy, random = (
        SamplingParams(temperature=0, min_tokens=3),
        SamplingParams(temperature=1.0, min_tokens=3),
    )
    params = [greedy, greedy, random, random]
    outputs = [[4, 4], [4, 4, 4], [4], [4, 4, 4, 4]]
    stops = [{EOS, 7}, {EOS, 7}, {EOS, 7}, {EOS}]
    assert _sample(params, logits, outputs=outputs, stops=stops) == [3, EOS, 3, EOS]


def test_min_tokens_blocking_never_lets_a_random_row_emit_eos():
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(11)).expand(300, -1).contiguous()
    logits[:, EOS] = 5.0
    gen = torch.Generator().manual_seed(12)
    params = [SamplingParams(temperature=1.5, min_tokens=2)] * 300
    tokens = _sample(params, logits, generators=[gen] * 300, outputs=[[9]] * 300)
    assert EOS not in tokens and len(set(tokens)) > 5


def _check_entry(entry, raw_row: torch.Tensor, chosen: int, num_top: int):
    want_top = raw_row.topk(num_top).indices.tolist() if num_top else []
    assert set(entry) == {chosen, *want_top}
    for token, lp in entry.items():
        assert lp.logprob == pytest.approx(raw_row[token].item(), abs=1e-6)
        assert lp.rank == 1 + int((raw_row > raw_row[token]).sum())


def test_logprobs_are_raw_log_softmax_with_ranks():
    logits = torch.randn(5, 200, generator=torch.Generator().manual_seed(13)) * 2
    params = [
        SamplingParams(temperature=0, logprobs=0),
        SamplingParams(temperature=0.3, top_k=3, logprobs=4, frequency_penalty=2.0),
        SamplingParams(temperature=1.0, logprobs=None),
        SamplingParams(temperature=0, logprobs=2, repetition_penalty=50.0),
        SamplingParams(temperature=2.0, logprobs=6),
    ]
    prompts = [[int(logits[3].argmax())]] * 5  # row 3's penalty pushes it off its top token
    out = Sampler()(logits, _meta(params, logits, prompts=prompts))
    raw = torch.log_softmax(logits, -1)
    assert out.logprobs[2] is None
    for row in (0, 1, 3, 4):
        _check_entry(out.logprobs[row], raw[row], out.token_ids[row], params[row].logprobs)
    assert out.logprobs[3][out.token_ids[3]].rank == 2


def test_tied_logprobs_share_a_rank():
    logits = torch.tensor([[3.0, 1.0, 3.0, 1.0, 0.0]])
    out = Sampler()(logits, _meta([SamplingParams(temperature=0, logprobs=4)], logits))
    assert {t: lp.rank for t, lp in out.logprobs[0].items()} == {0: 1, 2: 1, 1: 3, 3: 3}


@pytest.mark.parametrize("num_top", [0, 1, 5])
def test_prompt_logprobs_gather_log_softmax_at_targets(num_top):
    logits = torch.randn(12, 100, generator=torch.Generator().manual_seed(14)) * 3
    targets = torch.randint(0, 100, (12,), generator=torch.Generator().manual_seed(15))
    entries = token_logprobs(logits.to(torch.bfloat16).float(), targets, num_top)
    raw = torch.log_softmax(logits.to(torch.bfloat16).float(), -1)
    assert len(entries) == 12
    for pos, entry in enumerate(entries):
        _check_entry(entry, raw[pos], int(targets[pos]), num_top)
