"""The engine serves compressed-tensors checkpoints (ours, written by `tachyon compress`) and its
greedy tokens agree with HF transformers running the same checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tachyon import LLM, SamplingParams
from tachyon.compress import compress_model
from tests.data.prompts import PROMPTS
from tests.reference import hf_greedy

NEW_TOKENS = 24


@pytest.mark.parametrize("scheme", ["W8A16", "W4A16"])
def test_engine_greedy_agrees_with_hf_on_our_checkpoint(model_dir, tmp_path, scheme):
    folder = compress_model(model_dir, scheme, str(tmp_path / scheme), group_size=64)
    prompts = PROMPTS[:8]
    ours = LLM(folder).generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    same = total = 0
    for out in ours:
        expected = hf_greedy(hf, out.prompt_token_ids, NEW_TOKENS)
        same += sum(a == b for a, b in zip(out.outputs[0].token_ids, expected))
        total += NEW_TOKENS
    assert same / total >= 0.9, f"{scheme}: greedy token agreement {same / total:.1%}"


def test_activation_quantized_checkpoint_is_refused_clearly(model_dir, tmp_path):
    folder = compress_model(model_dir, "W8A8", str(tmp_path / "w8a8"))
    with pytest.raises(ValueError, match="quantizes activations"):
        LLM(folder)
