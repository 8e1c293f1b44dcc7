"""Each supported architecture computes what HF transformers computes: tiny random models (with the
default model's tokenizer) give the same greedy tokens and prompt logprobs as HF, in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from tachyon import LLM, SamplingParams

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
    torch.manual_seed(0)
    config = CONFIGS[request.param]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # larger weights than the default init, so logits are far from uniform
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    hf_tokenizer.save_pretrained(path)
    return str(path), model


def test_greedy_and_prompt_logprobs_match_hf(tiny):
    path, hf = tiny
    llm = LLM(path, max_num_batched_tokens=64)  # the 100-token prompt is chunked
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, prompt_logprobs=0))
    for ids, out in zip(PROMPTS, outs):
        prompt = torch.tensor([ids])
        with torch.no_grad():
            expected = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=16,
                min_new_tokens=16,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=None,
            )
            ref = torch.log_softmax(hf(prompt).logits[0].float(), dim=-1)
        assert out.outputs[0].token_ids == expected[0, len(ids) :].tolist()
        for pos in range(1, len(ids)):
            assert abs(out.prompt_logprobs[pos][ids[pos]].logprob - ref[pos - 1, ids[pos]].item()) < 1e-4
