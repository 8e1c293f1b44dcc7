"""Engine features beyond greedy parity: n > 1 sharing prompt blocks, stop strings, generated-token
logprobs against HF, streaming deltas, priority scheduling."""

from __future__ import annotations

import pytest
import torch

from tachyon import LLM, SamplingParams
from tests.data.prompts import PROMPTS


@pytest.fixture(scope="module")
def llm(model_dir):
    return LLM(model_dir)


def _all_free(llm: LLM) -> bool:
    kv = llm.engine.kv
    return kv.num_free_blocks == kv.num_blocks


def test_n_samples_share_prompt_blocks_and_differ(llm):
    prompt_ids = llm.get_tokenizer().encode(PROMPTS[8])
    hits_before = llm.engine.kv.stats.hits
    out = llm.generate(prompt_ids, SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=7))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.outputs}) == 3
    full_blocks = (len(prompt_ids) - 1) // 16 * 16
    assert llm.engine.kv.stats.hits - hits_before == 2 * full_blocks  # siblings 2 and 3 reuse sibling 1's
    again = llm.generate(prompt_ids, SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=7))[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in out.outputs]
    assert _all_free(llm)


def test_stop_string_cuts_text_and_reports_reason(llm):
    params = SamplingParams(temperature=0, max_tokens=64)
    full = llm.generate(PROMPTS[1], params)[0].outputs[0].text  # " Paris.\n\nThe answer is: ..."
    stop = full[8:12]
    out = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=64, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full[: full.index(stop)]
    kept = llm.generate(
        PROMPTS[1], SamplingParams(temperature=0, max_tokens=64, stop=[stop], include_stop_str_in_output=True)
    )[0].outputs[0]
    assert kept.text == full[: full.index(stop) + len(stop)]


def test_stop_token_ids_and_max_tokens(llm):
    greedy = llm.generate(PROMPTS[3], SamplingParams(temperature=0, max_tokens=10))[0].outputs[0]
    assert greedy.finish_reason == "length" and len(greedy.token_ids) == 10
    stop_at = greedy.token_ids[4]
    out = llm.generate(PROMPTS[3], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_at]))[0]
    first = greedy.token_ids.index(stop_at)
    assert out.outputs[0].token_ids == greedy.token_ids[: first + 1]
    assert out.outputs[0].stop_reason == stop_at


def test_generated_logprobs_match_hf(llm, hf_model):
    out = llm.generate(PROMPTS[6], SamplingParams(temperature=0, max_tokens=12, logprobs=3))[0]
    prompt_ids = out.prompt_token_ids
    gen = out.outputs[0].token_ids
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt_ids + gen])).logits[0].float()
    ref = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)  # [n, V] at each generation step
    for step, (token, entry) in enumerate(zip(gen, out.outputs[0].logprobs)):
        assert entry[token].rank == 1  # greedy picked the most likely token
        assert abs(entry[token].logprob - ref[step, token].item()) < 1e-4
        assert set(ref[step].topk(3).indices.tolist()) <= set(entry)


def test_streamed_deltas_concatenate_to_final_text(llm):
    engine = llm.engine
    rid = engine.add_request(PROMPTS[10], SamplingParams(temperature=0.8, seed=5, max_tokens=40, stop=["."]))
    deltas, final = [], None
    while final is None:
        for out in engine.step():
            if out.request_id == rid:
                deltas.append(out.outputs[0].delta_text)
                final = out if out.finished else None
    assert "".join(deltas) == final.outputs[0].text
    assert "." not in final.outputs[0].text or final.outputs[0].finish_reason == "length"


def test_priority_policy_serves_urgent_request_first(model_dir):
    llm = LLM(model_dir, scheduling_policy="priority", max_num_seqs=1)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=3)
    engine.add_request("background job", params, request_id="low", priority=10)
    engine.add_request("urgent job", params, request_id="high", priority=0)
    finished = []
    while engine.has_unfinished_requests():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert finished == ["high", "low"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_tracks_fp32_reference(model_dir, hf_model, dtype):
    """16-bit runs are not bit-exact, but their prompt logprobs stay close to HF's fp32 ones."""
    llm = LLM(model_dir, dtype=dtype, kv_cache_memory=64 << 20)
    assert llm.engine.runner.dtype == getattr(torch, dtype)
    out = llm.generate(PROMPTS[8], SamplingParams(temperature=0, max_tokens=8, prompt_logprobs=0))[0]
    ids = out.prompt_token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)
    errors = [abs(out.prompt_logprobs[p][ids[p]].logprob - ref[p - 1, ids[p]].item()) for p in range(1, len(ids))]
    assert sum(errors) / len(errors) < 0.05
    assert len(out.outputs[0].token_ids) == 8
