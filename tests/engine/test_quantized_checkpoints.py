"""The engine runs compressed-tensors checkpoints (ours, written by `tachyon compress`) as stored, and
agrees with HF transformers running the same checkpoint.

Weight-only schemes are compared by greedy tokens. Activation-quantized ones (W8A8, FP8_DYNAMIC) by
teacher-forced perplexity: rounding activations to 8 bits turns float-level differences (a different
attention kernel) into whole quantization steps, so greedy paths of two correct implementations part
early. HF against itself with sdpa vs eager attention agrees on only 41% (W8A8) and 49% (FP8) of greedy
tokens on this model (docs/quantization.md), while perplexity over the same text stays equal.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from tachyon import LLM, SamplingParams
from tachyon.compress import compress_model
from tests.data.prompts import PROMPTS
from tests.reference import hf_greedy

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def checkpoint(model_dir, tmp_path_factory):
    """scheme -> our compressed checkpoint of the default model (group 64 for the grouped schemes)."""
    made: dict[str, str] = {}

    def get(scheme: str) -> str:
        if scheme not in made:
            group_size = 64 if scheme.endswith("A16") else None
            made[scheme] = compress_model(
                model_dir, scheme, str(tmp_path_factory.mktemp("ckpt") / scheme), group_size=group_size
            )
        return made[scheme]

    return get


def _hf(folder: str):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("scheme", ["W4A16"])  # W8A16: same method, layer-tested
def test_weight_only_greedy_agrees_with_hf(checkpoint, scheme):
    folder = checkpoint(scheme)
    ours = LLM(folder).generate(PROMPTS[:8], SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    hf = _hf(folder)
    same = sum(
        a == b
        for out in ours
        for a, b in zip(out.outputs[0].token_ids, hf_greedy(hf, out.prompt_token_ids, NEW_TOKENS))
    )
    assert same / (len(ours) * NEW_TOKENS) >= 0.9, f"{scheme}: greedy token agreement {same / (8 * NEW_TOKENS):.1%}"


# Both sides round activations to 8 bits, so float-level differences (another GEMM, another attention
# kernel) flip whole quantization steps; what is left is how far two correct implementations land apart.
# HF against itself, sdpa vs eager attention, on a 2-vCPU Intel AMX VM: 0.55% apart in W8A8, 0.24% in
# FP8_DYNAMIC; ours from HF's sdpa run there: 1.25% (W8A8: we multiply in exact int32 where HF rounds fp32
# products) and 0.19% (FP8: HF's own fake-quantized arithmetic). The EPYC VM measured 0.2-1.1% and
# < 1e-4. Dropping the activation quantization altogether moves perplexity 3.7%.
NLL_TOLERANCE = {"W8A8": 0.03, "FP8_DYNAMIC": 0.01}


@pytest.mark.parametrize("scheme", ["W8A8", "FP8_DYNAMIC"])
def test_activation_quantized_perplexity_equals_hf(checkpoint, scheme):
    folder = checkpoint(scheme)
    llm = LLM(folder)
    ids = llm.get_tokenizer()(" ".join(PROMPTS))["input_ids"][:400]
    out = llm.generate([ids], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    ours = -sum(out.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))) / (len(ids) - 1)
    with torch.no_grad():
        logprobs = torch.log_softmax(_hf(folder)(torch.tensor([ids])).logits[0], dim=-1)
    theirs = -logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None]).mean().item()
    print(f"{scheme}: perplexity ours {math.exp(ours):.4f}, HF {math.exp(theirs):.4f}")
    assert abs(ours - theirs) < NLL_TOLERANCE[scheme], f"{scheme}: mean NLL ours {ours:.5f} vs HF {theirs:.5f}"


def test_unsupported_quantization_is_refused_clearly(checkpoint, tmp_path):
    folder = str(tmp_path / "per_tensor_int8")  # W8A8's tensors, with int8 per-tensor dynamic activations
    os.mkdir(folder)
    for name in os.listdir(checkpoint("W8A8")):
        os.symlink(os.path.join(checkpoint("W8A8"), name), os.path.join(folder, name))
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor"
    os.unlink(config_path)
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="no kernel for weights"):
        LLM(folder)
