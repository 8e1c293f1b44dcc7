"""--kv-cache-dtype fp8 / int8: the pool holds more tokens in the same memory, and the model still computes
nearly the same distribution as with a full-precision cache (HF transformers' fp32 logprobs)."""

from __future__ import annotations

import pytest
import torch

from tachyon import LLM, SamplingParams
from tests.data.prompts import PROMPTS

KV_BYTES = 64 << 20
# measured 0.024 (int8) and 0.076 (fp8: 3 mantissa bits) nats; a wrong scale or layout costs several nats
MAX_MEAN_ERROR = {"int8": 0.05, "fp8": 0.15}


@pytest.fixture(scope="module")
def reference_logprobs(hf_model, model_dir) -> list[tuple[list[int], torch.Tensor]]:
    """(prompt ids, HF's fp32 log-probability of each next prompt token) for 8 prompts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for text in PROMPTS[:8]:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0], dim=-1)
        out.append((ids, logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]))
    return out


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
def test_8bit_kv_cache_fits_more_tokens_and_keeps_the_distribution(model_dir, reference_logprobs, kv_dtype, caplog):
    full = LLM(model_dir, kv_cache_memory=KV_BYTES)
    with caplog.at_level("INFO", logger="tachyon"):
        small = LLM(model_dir, kv_cache_memory=KV_BYTES, kv_cache_dtype=kv_dtype)
    # fp32 on CPU: 64 dims x 4 bytes per head and token, against 64 x 1 + a 4-byte scale
    ratio = small.engine.kv.num_blocks / full.engine.kv.num_blocks
    assert ratio == pytest.approx(256 / 68, rel=0.01)
    assert f"({kv_dtype}, " in caplog.text
    prompts = [ids for ids, _ in reference_logprobs]
    outs = small.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0))
    errors = []
    for out, (ids, expected) in zip(outs, reference_logprobs):
        ours = torch.tensor([out.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))])
        errors.append((ours - expected).abs())
    mean_error = torch.cat(errors).mean().item()
    print(f"{kv_dtype}: mean |logprob difference| vs HF fp32 {mean_error:.4f}")
    assert mean_error < MAX_MEAN_ERROR[kv_dtype]
