"""Batch-invariant mode (`deterministic=True`): a request's tokens and logprobs are the same bits alone and
inside a crowd that chunks its prompt differently, and when its prompt comes from the prefix cache."""

from __future__ import annotations

import pytest

from tachyon import LLM, SamplingParams
from tachyon.config import EngineConfig
from tachyon.layers.attention import cpu_backend
from tests.data.prompts import PROMPTS

PARAMS = SamplingParams(temperature=0, max_tokens=16, logprobs=2, ignore_eos=True)
TARGET = 11  # the longest prompt (199 tokens): chunked differently alone and behind the others


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_output_is_the_same_bits_alone_and_in_a_crowd(model_dir, dtype, monkeypatch):
    # by default, chunks over contexts this long would take SDPA (fp32), whose sums depend on the chunking
    monkeypatch.setattr(cpu_backend, "NATIVE_MAX_CONTEXT", 32)
    # without prefix caching the crowd recomputes the prompt, in other chunks beside other sequences
    llm = LLM(model_dir, dtype=dtype, deterministic=True, max_num_batched_tokens=64, enable_prefix_caching=False)
    alone = llm.generate(PROMPTS[TARGET], PARAMS)[0].outputs[0]
    crowd = llm.generate([*PROMPTS, PROMPTS[8]], PARAMS)[TARGET].outputs[0]
    assert crowd.token_ids == alone.token_ids
    assert crowd.logprobs == alone.logprobs  # every float, not just the argmax


def test_a_prefix_cache_hit_gives_the_same_bits(model_dir):
    llm = LLM(model_dir, dtype="bfloat16", deterministic=True, max_num_batched_tokens=48)
    first = llm.generate(PROMPTS[TARGET], PARAMS)[0]
    again = llm.generate([PROMPTS[8], PROMPTS[TARGET]], PARAMS)[1]
    assert first.num_cached_tokens == 0 and again.num_cached_tokens == 192
    assert again.outputs[0].logprobs == first.outputs[0].logprobs


def test_configurations_it_cannot_keep_invariant_are_refused():
    with pytest.raises(ValueError, match="--deterministic"):
        EngineConfig(deterministic=True, kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="--deterministic"):
        EngineConfig(deterministic=True, attention_backend="torch")
