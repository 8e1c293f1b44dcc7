"""Each supported architecture computes what HF transformers computes: tiny random models (with the
default model's tokenizer) give the same greedy tokens and prompt logprobs as HF, in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config, Qwen3Config

from tachyon import LLM, SamplingParams
from tests.reference import hf_greedy, save_tiny_model

VOCAB = 49152
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
)
CONFIGS = {
    "llama3-rope": LlamaConfig(
        **COMMON,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "qwen2-bias": Qwen2Config(**COMMON, tie_word_embeddings=True),
    "qwen3-qknorm": Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=False),
}
PROMPTS = [[504, 3575, 282, 4649, 314], list(range(1000, 1100)), [7, 8, 9]]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory, hf_tokenizer):
    path = tmp_path_factory.mktemp(request.param)
    return str(path), save_tiny_model(CONFIGS[request.param], path, hf_tokenizer)


def test_greedy_and_prompt_logprobs_match_hf(tiny):
    path, hf = tiny
    llm = LLM(path, max_num_batched_tokens=64)  # the 100-token prompt is chunked
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, prompt_logprobs=0))
    for ids, out in zip(PROMPTS, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, ids, 16)
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
        for pos in range(1, len(ids)):
            assert abs(out.prompt_logprobs[pos][ids[pos]].logprob - ref[pos - 1, ids[pos]].item()) < 1e-4
