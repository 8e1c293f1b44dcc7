"""End-to-end acceptance for the engine: greedy tokens equal HF transformers' `generate` (fp32, CPU)
with prefix caching on and off, with forced chunked prefill and under preemption; prompt logprobs
equal HF's log_softmax; prefix-cache hits are exact; no KV block leaks."""

from __future__ import annotations

import pytest
import torch

from tachyon import LLM, SamplingParams
from tests.data.prompts import PROMPTS
from tests.reference import hf_greedy

NEW_TOKENS = 64
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def hf_greedy_outputs(hf_model, hf_tokenizer):
    """HF's greedy continuation of each prompt, one at a time (no padding), EOS not stopping it."""
    return [hf_greedy(hf_model, hf_tokenizer(p).input_ids, NEW_TOKENS) for p in PROMPTS]


def _assert_all_blocks_free(llm: LLM) -> None:
    kv = llm.engine.kv
    assert kv.num_free_blocks == kv.num_blocks
    assert all(b.ref_count == 0 for b in kv.blocks)


def _check_greedy(llm: LLM, hf_greedy_outputs) -> None:
    outputs = llm.generate(PROMPTS, GREEDY)
    for prompt, out, expected in zip(PROMPTS, outputs, hf_greedy_outputs):
        assert out.outputs[0].token_ids == expected, f"diverged on {prompt[:40]!r}"
    _assert_all_blocks_free(llm)


@pytest.mark.parametrize(
    "engine_args",
    [
        {"enable_prefix_caching": True},
        {"enable_prefix_caching": False},
        {"max_num_batched_tokens": 32},
    ],
    ids=["prefix-caching", "no-prefix-caching", "chunked-prefill-32"],
)
def test_greedy_matches_hf(model_dir, hf_greedy_outputs, engine_args):
    llm = LLM(model_dir, **engine_args)
    _check_greedy(llm, hf_greedy_outputs)


def test_greedy_matches_hf_under_preemption(model_dir, hf_greedy_outputs):
    # 40 blocks of 16 tokens cannot hold 16 sequences of up to ~300 tokens at once
    block_bytes = 2 * 30 * 16 * 3 * 64 * 4
    llm = LLM(model_dir, kv_cache_memory=40 * block_bytes)
    assert llm.engine.kv.num_blocks == 40
    _check_greedy(llm, hf_greedy_outputs)
    assert llm.engine.stats().num_preemptions > 0


def test_prompt_logprobs_match_hf_log_softmax(model_dir, hf_model, hf_tokenizer):
    llm = LLM(model_dir, max_num_batched_tokens=48)  # chunked: logprobs are stitched across chunks
    prompt = PROMPTS[8]
    out = llm.generate(prompt, SamplingParams(max_tokens=1, prompt_logprobs=2))[0]
    ids = hf_tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(ids).logits[0].float(), dim=-1)  # [S, V]
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == ids.shape[1]
    for pos in range(1, ids.shape[1]):
        token = ids[0, pos].item()
        entry = out.prompt_logprobs[pos]
        assert abs(entry[token].logprob - ref[pos - 1, token].item()) < 1e-4
        top = ref[pos - 1].topk(2).indices.tolist()
        assert set(top) <= set(entry)


def test_repeated_prompt_hits_prefix_cache_for_all_full_blocks(model_dir):
    llm = LLM(model_dir)
    prompt_ids = llm.get_tokenizer().encode(PROMPTS[11])
    params = SamplingParams(temperature=0, max_tokens=4)
    before = llm.engine.scheduler.num_scheduled_tokens
    first = llm.generate(prompt_ids, params)[0]
    cost_first = llm.engine.scheduler.num_scheduled_tokens - before
    second = llm.generate(prompt_ids, params)[0]
    cost_second = llm.engine.scheduler.num_scheduled_tokens - before - cost_first
    expected_hit = (len(prompt_ids) - 1) // 16 * 16
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == expected_hit
    assert cost_second == cost_first - expected_hit
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    _assert_all_blocks_free(llm)


def test_no_leak_after_aborts_under_preemption(model_dir):
    block_bytes = 2 * 30 * 16 * 3 * 64 * 4
    llm = LLM(model_dir, kv_cache_memory=24 * block_bytes)
    engine = llm.engine
    ids = [
        engine.add_request(p, SamplingParams(max_tokens=40, ignore_eos=True, temperature=0.8, seed=i))
        for i, p in enumerate(PROMPTS)
    ]
    for step in range(30):
        engine.step()
        if step == 10:
            for request_id in ids[::3]:
                engine.abort(request_id)
    for request_id in ids:
        engine.abort(request_id)
    assert not engine.has_unfinished_requests()
    assert engine.stats().num_preemptions > 0
    _assert_all_blocks_free(llm)


def test_seeded_sampling_is_batch_invariant(model_dir):
    llm = LLM(model_dir)
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, seed=1234)
    alone = llm.generate(PROMPTS[5], params)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=0.9, top_k=50, max_tokens=24, seed=i) for i in range(31)]
    batch = [PROMPTS[i % len(PROMPTS)] for i in range(31)]
    outs = llm.generate([*batch[:13], PROMPTS[5], *batch[13:]], [*others[:13], params, *others[13:]])
    assert outs[13].outputs[0].token_ids == alone


def test_bad_requests_get_clear_errors_and_engine_keeps_serving(model_dir):
    llm = LLM(model_dir, max_model_len=64)
    with pytest.raises(ValueError, match="empty"):
        llm.generate("")
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate("word " * 100)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="logprobs=50"):
        llm.generate("Hello", SamplingParams(logprobs=50))
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate([[1, 2, 10**9]])
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=5))
    assert len(out[0].outputs[0].token_ids) == 5
    _assert_all_blocks_free(llm)


def test_unknown_model_path_is_a_clear_error(tmp_path):
    from tachyon.models.loader import ModelLoadError

    with pytest.raises(ModelLoadError, match="does-not-exist"):
        LLM(str(tmp_path / "does-not-exist"))


def test_a_context_longer_than_the_model_was_built_for_is_refused(model_dir):
    with pytest.raises(ValueError, match=r"--max-model-len 8193 exceeds the model's max_position_embeddings \(8192\)"):
        LLM(model_dir, max_model_len=8193)
