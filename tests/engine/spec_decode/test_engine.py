"""Speculative decoding in the running engine on the default model: greedy output identical to plain
decoding for every method on staggered batches (chunked prefill, prefix-cache hits, requests that may
not speculate), sampled output distributed as plain sampling, exact block accounting after many
rejections, reproducible seeds."""

from __future__ import annotations

from collections import Counter

import pytest
from scipy.stats import chi2_contingency

from tachyon import LLM, SamplingParams
from tests.data.prompts import PROMPTS

ENGINE = {"max_num_batched_tokens": 64, "enable_prefix_caching": True, "kv_cache_memory": 64 << 20}
# The paragraph prompts share their first ~100 tokens (prefix-cache hits) and need chunks of 64.
MIX = [PROMPTS[8], PROMPTS[9], PROMPTS[11], PROMPTS[13], "Repeat this sentence: " + PROMPTS[8][:300], PROMPTS[5]]
GREEDY = SamplingParams(temperature=0, max_tokens=32)
NO_SPEC = SamplingParams(temperature=0, max_tokens=32, repetition_penalty=1.2)  # penalties: never speculates


def _params(i: int) -> SamplingParams:
    return NO_SPEC if i == 3 else GREEDY


def run_staggered(llm: LLM, prompts: list[str], params) -> list[list[int]]:
    """Admit one request every 3 steps, so prefills, chunks and verifications share steps."""
    engine, done = llm.engine, {}
    ids = []
    for i, prompt in enumerate(prompts):
        ids.append(engine.add_request(prompt, params(i)))
        for _ in range(3):
            done.update({o.request_id: o for o in engine.step() if o.finished})
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    return [done[i].outputs[0].token_ids for i in ids]


def assert_no_blocks_held(llm: LLM) -> None:
    kv = llm.engine.kv
    assert kv.num_free_blocks == kv.num_blocks
    assert all(b.ref_count == 0 for b in kv.blocks)
    assert all(kv.cached[b.block_hash] is b for b in kv.blocks if b.block_hash is not None)


@pytest.fixture(scope="module")
def plain(model_dir):
    llm = LLM(model_dir, **ENGINE)
    return run_staggered(llm, MIX, _params)


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3},
        {"method": "self_spec", "num_speculative_tokens": 3, "num_draft_layers": 8},
        {"method": "draft_model", "num_speculative_tokens": 3},
    ],
    ids=lambda s: s["method"],
)
def test_greedy_output_is_identical_to_plain_decoding(model_dir, shallow_model_dir, plain, spec):
    if spec["method"] == "draft_model":
        spec = {**spec, "model": shallow_model_dir}
    llm = LLM(model_dir, speculative_config={**spec, "adaptive": False}, **ENGINE)
    assert run_staggered(llm, MIX, _params) == plain
    stats = llm.engine.stats().spec_decode
    assert stats.num_draft_tokens > 0 and 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert_no_blocks_held(llm)


def test_many_rejections_in_a_tight_pool_leak_no_blocks(model_dir, plain):
    """A one-layer draft is mostly wrong; a pool of 24 blocks forces preemption on top."""
    spec = {"method": "self_spec", "num_speculative_tokens": 5, "num_draft_layers": 1, "adaptive": False}
    llm = LLM(model_dir, speculative_config=spec, **{**ENGINE, "kv_cache_memory": 24 * 16 * 46080})
    assert run_staggered(llm, MIX, _params) == plain
    stats = llm.engine.stats()
    assert stats.spec_decode.acceptance_rate < 0.5 and stats.num_preemptions > 0
    assert_no_blocks_held(llm)


SAMPLING_PROMPT = "Pick a fruit: apple, pear, plum, apple, plum, pear, plum, apple,"  # spread, repetitive
SAMPLING_ENGINE = {"max_num_seqs": 200}


def _samples(llm: LLM) -> list[list[int]]:
    params = [SamplingParams(n=100, temperature=1.0, max_tokens=4, seed=seed * 1000) for seed in range(2)]
    outs = llm.generate([SAMPLING_PROMPT] * 2, params)
    return [c.token_ids for o in outs for c in o.outputs]


@pytest.fixture(scope="module")
def plain_samples(model_dir) -> list[list[int]]:
    return _samples(LLM(model_dir, **SAMPLING_ENGINE))


@pytest.mark.parametrize("method", ["ngram", "self_spec"])
def test_sampled_tokens_follow_the_plain_distribution(model_dir, plain_samples, method):
    """Chi-square test of homogeneity on each drafted position: 200 seeded samples with and without
    speculation (n-gram drafts are point masses, self-speculation drafts are sampled: both paths of the
    rejection sampler). Fixed seeds make the test deterministic."""
    spec = {"method": method, "num_speculative_tokens": 3, "num_draft_layers": 10, "adaptive": False}
    llm = LLM(model_dir, speculative_config=spec, **SAMPLING_ENGINE)
    speculative, plain = _samples(llm), plain_samples
    stats = llm.engine.stats().spec_decode
    assert stats.num_draft_tokens > 250 and 0 < stats.num_accepted_tokens < stats.num_draft_tokens
    assert speculative != plain  # different random draws ...
    for position in range(1, 4):  # ... from the same distributions (position 0 is sampled before any draft)
        a = Counter(s[position] for s in plain if len(s) > position)
        b = Counter(s[position] for s in speculative if len(s) > position)
        common = [t for t in set(a) | set(b) if a[t] + b[t] >= 10]
        table = [[a[t] for t in common] + [sum(a.values()) - sum(a[t] for t in common)]]
        table.append([b[t] for t in common] + [sum(b.values()) - sum(b[t] for t in common)])
        if table[0][-1] + table[1][-1] == 0:
            table = [row[:-1] for row in table]
        assert chi2_contingency(table).pvalue > 1e-3, (position, table)


def test_seeded_request_samples_the_same_alone_and_in_a_batch(model_dir):
    spec = {"method": "ngram", "num_speculative_tokens": 4, "adaptive": False}
    llm = LLM(model_dir, speculative_config=spec)
    params = SamplingParams(temperature=0.8, max_tokens=32, seed=11)
    copying = "Say it again: the cat sat on the mat. Say it again: the cat sat on the mat. Say it again:"
    alone = llm.generate(copying, params)[0].outputs[0].token_ids
    accepted_alone = llm.engine.stats().spec_decode.num_accepted_tokens
    batch = llm.generate([PROMPTS[2], copying, PROMPTS[11]], [GREEDY, params, SamplingParams(temperature=1.0)])
    assert batch[1].outputs[0].token_ids == alone
    assert accepted_alone > 0


def test_adaptive_speculation_switches_off_for_a_large_batch(model_dir, caplog):
    spec = {"method": "ngram", "num_speculative_tokens": 5}
    llm = LLM(model_dir, speculative_config=spec, max_num_seqs=64)
    controller = llm.engine.speculator.controller
    assert controller.choose(1, 0) > 0  # one stream on CPU: verifying 6 tokens costs little more than 1
    assert controller.choose(256, 0) == 0  # 256 streams x 6 tokens: compute-bound, drafts only cost
