"""Checkpoints made by LLM Compressor 0.14 itself (tests/data/llmcompressor, written by
benchmarks/llmcompressor_checkpoints.py --tiny: a small random Llama, data-free W8A8, FP8_DYNAMIC and
W4A16 group 64) load in the engine, run as stored, and agree with HF transformers on the same folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tachyon import LLM, SamplingParams
from tests.reference import hf_greedy

FIXTURES = Path(__file__).parent.parent / "data" / "llmcompressor"
NEW_TOKENS = 16
VOCAB = 512  # the fixtures' vocabulary; prompts are token ids below it


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, VOCAB, (int(n),), generator=gen).tolist() for n in torch.randint(4, 40, (16,), generator=gen)
    ]


@pytest.mark.parametrize("scheme", ["W8A8", "FP8_DYNAMIC", "W4A16"])
def test_llmcompressor_checkpoint_agrees_with_hf(scheme, model_dir, tmp_path, prompts, caplog):
    folder = shutil.copytree(FIXTURES / scheme, tmp_path / scheme)
    for name in os.listdir(model_dir):  # the fixtures carry no tokenizer; the engine needs one to start
        if name.startswith("tokenizer"):
            shutil.copy(os.path.join(model_dir, name), folder)
    with caplog.at_level("INFO", logger="tachyon"):
        llm = LLM(str(folder), max_model_len=128)
    assert "Linear layers: 8 x" in caplog.text  # quantized methods ran them, no dense fallback
    ours = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    same = sum(
        a == b for p, out in zip(prompts, ours) for a, b in zip(out.outputs[0].token_ids, hf_greedy(hf, p, NEW_TOKENS))
    )
    rate = same / (len(prompts) * NEW_TOKENS)
    print(f"{scheme}: greedy agreement with HF {rate:.1%}")
    assert rate >= 0.9
