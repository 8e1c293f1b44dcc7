"""Speculative decoding parts on their own: n-gram lookup, the rejection sampler against exact target
distributions (chi-square goodness of fit), the step-cost controller, and draft KV rollback in the scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tachyon.config import SpeculativeConfig
from tachyon.engine.kv_cache_manager import KVCacheManager
from tachyon.engine.request import Request
from tachyon.engine.scheduler import Scheduler, SchedulerConfig
from tachyon.engine.spec_decode.controller import SpeculationController, StepCost
from tachyon.engine.spec_decode.ngram import find_continuation
from tachyon.engine.spec_decode.rejection_sampler import verify_drafts
from tachyon.sampling_params import SamplingParams
from tests.engine.helpers import make_request


def _request(i: int, temperature: float, seed: int) -> Request:
    return Request(
        request_id=str(i),
        prompt_token_ids=[1],
        params=SamplingParams(temperature=temperature, max_tokens=8),
        eos_token_ids=frozenset(),
        max_model_len=64,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{oops", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"method": "eagle"}', "method must be one of"),
        ('{"k": 3}', "unknown --speculative-config keys ['k']"),
        ('{"method": "draft_model"}', 'needs "model"'),
        ('{"num_speculative_tokens": 0}', "at least 1"),
    ],
)
def test_speculative_config_errors_name_the_problem(value, message):
    with pytest.raises(ValueError) as e:
        SpeculativeConfig.parse(value)
    assert message in str(e.value)


def test_speculative_config_in_vllm_spelling():
    config = SpeculativeConfig.parse('{"model": "draft", "num_speculative_tokens": 4}')
    assert (config.method, config.num_speculative_tokens, config.model) == ("draft_model", 4, "draft")
    assert SpeculativeConfig.parse({"method": "ngram", "prompt_lookup_max": 3}).prompt_lookup_max == 3


def test_ngram_proposes_what_followed_the_longest_most_recent_match():
    tokens = np.array([5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 2, 3])
    assert find_continuation(tokens, 4, 1, 3) == [7, 8, 4]  # "2 3" last seen before "7 8 4"
    longer = np.array([1, 2, 3, 4, 0, 2, 3, 5, 1, 2, 3])
    assert find_continuation(longer, 3, 1, 2) == [4, 0]  # "1 2 3" beats the more recent "2 3"
    assert find_continuation(longer, 3, 1, 10) == [4, 0, 2, 3, 5, 1, 2, 3]  # capped by the known tokens
    assert find_continuation(np.array([1, 2, 3, 4]), 3, 1, 5) == []
    assert find_continuation(np.array([1, 2, 3, 4]), 3, 2, 5) == []


def test_greedy_verification_accepts_matching_prefix_then_emits_argmax():
    logits = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 4, 6, 2]):
        logits[row, best] = 5.0
    reqs = [_request(0, 0.0, 0), _request(1, 0.0, 0)]
    both = torch.cat([logits, logits[:2]])  # request 1 has a single draft: rows 0 and 1
    out = verify_drafts(both, reqs, [[3, 4, 5], [7]], 10)
    assert (out[0].token_ids, out[0].num_accepted) == ([3, 4, 6], 2)
    assert (out[1].token_ids, out[1].num_accepted) == ([3], 0)


def _expected(probs: torch.Tensor, total: int) -> np.ndarray:
    probs = probs.double().numpy()
    return probs / probs.sum() * total


@pytest.mark.parametrize("drafter", ["point_mass", "sampled"])
def test_rejection_sampling_emits_the_target_distribution(drafter):
    vocab, num = 6, 6000
    g = torch.Generator().manual_seed(1)
    target_logits = torch.randn(3, vocab, generator=g) * 1.5  # rows after: context, draft 1, draft 2
    p = target_logits.softmax(-1)
    q = (torch.randn(2, vocab, generator=g) * 1.5).softmax(-1)
    reqs, drafts = [], []
    for i in range(num):
        req = _request(i, 1.0, seed=1000 + i)
        if drafter == "sampled":
            draft = [int(torch.multinomial(q[j], 1, generator=g)) for j in range(2)]
            req.spec_draft_probs = q
        else:
            draft = [int(p[0].argsort()[-2]), int(p[1].argsort()[-3])]  # fairly likely tokens
        reqs.append(req)
        drafts.append(draft)
    out = verify_drafts(target_logits.repeat(num, 1), reqs, drafts, vocab)
    first = np.bincount([v.token_ids[0] for v in out], minlength=vocab)
    assert chisquare(first, _expected(p[0], num)).pvalue > 1e-3
    second = np.bincount([v.token_ids[1] for v in out if len(v.token_ids) > 1], minlength=vocab)
    assert second.sum() > 300
    assert chisquare(second, _expected(p[1], second.sum())).pvalue > 1e-3
    assert {v.num_accepted for v in out} == {0, 1, 2}


def test_rejection_sampling_is_reproducible_per_request_seed():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    runs = [verify_drafts(logits, [_request(0, 0.8, seed=5)], [[1, 2]], 50)[0].token_ids for _ in range(2)]
    assert runs[0] == runs[1]


def test_step_cost_interpolates_and_extrapolates():
    cost = StepCost([(1, 0.01), (4, 0.01), (16, 0.02), (64, 0.08)])
    assert cost(2) == pytest.approx(0.01)
    assert cost(10) == pytest.approx(0.015)
    assert cost(128) == pytest.approx(0.16)


def test_controller_speculates_while_memory_bound_and_stops_when_compute_bound():
    flat = StepCost([(1, 0.010), (512, 0.011)])  # verifying more tokens costs almost nothing
    linear = StepCost([(1, 0.001), (512, 0.512)])  # every token costs the same
    assert SpeculationController(5, flat, None).choose(1, 0) == 5
    assert SpeculationController(5, linear, None).choose(64, 0) == 0
    draft_round = StepCost([(1, 0.004), (64, 0.004)])
    low = SpeculationController(5, flat, draft_round)
    low.acceptance.update(num_accepted=1, num_rejections=40)
    assert low.choose(1, 0) == 0  # drafts cost a draft forward each and are nearly always rejected
    assert SpeculationController(5, flat, None, disable_by_batch_size=8).choose(4, 4) == 0
    assert SpeculationController(5, linear, None, adaptive=False).choose(64, 0) == 5


def test_controller_probes_with_backoff_while_drafts_fail():
    flat = StepCost([(1, 0.010), (512, 0.011)])
    controller = SpeculationController(5, flat, StepCost([(1, 0.004), (64, 0.004)]))
    controller.acceptance.update(num_accepted=0, num_rejections=60)
    chosen = [controller.choose(1, 0) for _ in range(8 + 16 + 32)]
    assert [i for i, k in enumerate(chosen) if k] == [7, 7 + 16, 7 + 16 + 32]  # probes, ever rarer
    assert set(chosen) == {0, 1}
    controller.acceptance.update(num_accepted=200, num_rejections=10)  # the drafts got good again
    assert controller.choose(1, 0) > 1


def test_scheduler_verifies_drafts_and_rolls_back_rejected_slots():
    kv = KVCacheManager(16, 4)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=16), kv)
    req = make_request("a", [1, 2, 3, 4, 5, 6])
    sched.add_request(req)
    out = sched.schedule()
    sched.update_after_step(out)
    req.append_token(7)  # 7 tokens, 6 computed
    req.spec_token_ids = [8, 9, 10, 11, 12, 13]
    out = sched.schedule()
    assert out.scheduled[0].num_new_tokens == 7 and out.scheduled[0].spec_token_ids == [8, 9, 10, 11, 12, 13]
    assert len(req.block_ids) == 4  # 13 positions
    sched.update_after_step(out, {"a": 5})  # one draft accepted
    assert req.num_computed_tokens == 8 and req.spec_token_ids == []
    assert len(req.block_ids) == 3  # positions 0..8 (the next token included); the 4th block is free again
    assert kv.num_free_blocks == 13
    assert next(iter(kv.free_queue)) not in req.block_ids  # the rolled-back block is reused first


def test_scheduler_trims_drafts_to_the_token_budget_and_drops_them_before_preempting():
    kv = KVCacheManager(3, 4, enable_prefix_caching=False)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=4), kv)
    req = make_request("a", [1, 2, 3, 4, 5, 6])
    sched.add_request(req)
    sched.update_after_step(sched.schedule())  # 4 of 6 prompt tokens
    sched.update_after_step(sched.schedule())
    req.append_token(7)
    req.spec_token_ids = [8, 9, 10, 11, 12]
    out = sched.schedule()
    assert out.scheduled[0].spec_token_ids == [8, 9, 10]  # 1 known + 3 drafts fill the budget of 4
    sched.update_after_step(out, {"a": 3})
    req.append_token(8)
    other = make_request("b", [1, 2, 3, 4])
    sched.add_request(other)
    sched.update_after_step(sched.schedule())  # b takes the last free block
    req.spec_token_ids = [9, 10, 11, 12]
    out = sched.schedule()  # a's drafts would need a 4th block: dropped, nobody preempted
    assert out.preempted == [] and out.scheduled[0].spec_token_ids == []
