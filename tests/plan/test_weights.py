"""Weight bytes per scheme: the planner's figures equal an independent tensor-by-tensor listing for the
default model and three real-shaped configs (every scheme, with and without 2:4), the published
parameter counts, and the actual bytes of checkpoints written by `tachyon compress` and LLM Compressor."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaConfig, Qwen2Config

from tachyon.compress import compress_model
from tachyon.plan.model_spec import load_model_spec, model_spec_from_config
from tachyon.plan.weights import create_plan_scheme, weight_breakdown
from tests.plan.helpers import ITEMSIZE, REAL_MODELS, SCHEMES, checkpoint_listing, config_path, listing_bytes

PUBLISHED_PARAMS = {
    "Llama-3.1-8B": 8_030_261_248,
    "Qwen2.5-7B": 7_615_616_512,
    "Mistral-7B-v0.3": 7_248_023_552,
    "SmolLM2-135M-Instruct": 134_515_008,
}
LLMCOMPRESSOR = os.path.join(os.path.dirname(__file__), "..", "data", "llmcompressor")


def _config(name: str, default_config: dict) -> dict:
    if name == "default":
        return default_config
    with open(config_path(name), encoding="utf-8") as f:
        return json.load(f)


def _planned_bytes(config: dict, scheme: str, sparsity: str | None, group_size: int | None, dtype_bytes: int) -> int:
    spec = model_spec_from_config(config)
    return sum(
        g.num_bytes for g in weight_breakdown(spec, create_plan_scheme(scheme, sparsity, group_size), dtype_bytes)
    )


@pytest.mark.parametrize("sparsity", [None, "2:4"])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("model", ["default", *REAL_MODELS])
def test_weight_bytes_match_a_tensor_listing(model, scheme, sparsity, default_config):
    config = _config(model, default_config)
    dense = "F32" if model == "default" else "BF16"  # the GGUF default model is float32, the others bf16
    grouped = scheme.startswith("W") and "A16" in scheme
    group = 64 if model == "default" and grouped else None  # SmolLM2's 576 is no multiple of 128
    expected = listing_bytes(checkpoint_listing(config, scheme, dense, group or 128))
    assert _planned_bytes(config, scheme, sparsity, group, ITEMSIZE[dense]) == expected


def test_hand_computed_llama_w4a16():
    # codes: 6,979,321,856 decoder Linear weights x 4 bits = 3,489,660,928 B
    # scales (bf16, group 128), per layer: q 4096*32 + k,v 1024*32 each + o 4096*32 + gate,up 14336*32 each
    #   + down 4096*112 = 1,703,936 -> 3,407,872 B, + 7 int64[2] shapes = 112 B; x 32 layers = 109,055,488 B
    # embeddings + lm_head: 2 * 128256*4096*2 B = 2,101,346,304 B; norms (65*4096 + 4096... ) 266,240*2 B
    with open(config_path("Llama-3.1-8B"), encoding="utf-8") as f:
        config = json.load(f)
    expected = 3_489_660_928 + 109_055_488 + 2_101_346_304 + 532_480
    assert _planned_bytes(config, "W4A16", None, None, 2) == expected == 5_700_595_200
    assert _planned_bytes(config, "bf16", None, None, 2) == 2 * 8_030_261_248


@pytest.mark.parametrize("model", [*REAL_MODELS, "default"])
def test_parameter_counts_are_the_published_ones(model, default_config):
    name = "SmolLM2-135M-Instruct" if model == "default" else model
    spec = model_spec_from_config(_config(model, default_config), name)
    total = sum(g.num_params for g in weight_breakdown(spec, create_plan_scheme("bf16"), 2))
    assert total == PUBLISHED_PARAMS[name]


def _stored_bytes(folder: str) -> int:
    total = 0
    for path in glob.glob(os.path.join(folder, "*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                s = f.get_slice(name)
                total += int(torch.tensor(s.get_shape()).prod()) * ITEMSIZE[s.get_dtype()]
    return total


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, model_dir) -> dict[str, str]:
    """Random Llama (untied lm_head) and Qwen2 (q/k/v biases) checkpoints, saved in bf16."""
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    shape = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2)
    configs = {
        "llama": LlamaConfig(**shape, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**shape, num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
    }
    folders = {}
    for name, config in configs.items():
        folder = str(tmp_path_factory.mktemp("plan") / name)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.mark.parametrize(
    ("model", "scheme", "sparsity"),
    [
        ("llama", "W8A16", None),
        ("llama", "W4A16_ASYM", "2:4"),
        ("llama", "FP8_DYNAMIC", None),
        ("qwen2", "W4A16", None),
        ("qwen2", "W8A8", "2:4"),
    ],
)
def test_planned_bytes_equal_a_real_compressed_checkpoint(tiny_models, tmp_path, model, scheme, sparsity):
    out = compress_model(tiny_models[model], scheme, str(tmp_path / "c"), sparsity=sparsity, dtype=torch.bfloat16)
    spec = load_model_spec(out)
    assert spec.stored_dtype == "bfloat16"
    plan_scheme = create_plan_scheme(scheme or "bf16", sparsity)
    assert sum(g.num_bytes for g in weight_breakdown(spec, plan_scheme, 2)) == _stored_bytes(out)


@pytest.mark.parametrize(("scheme", "group_size"), [("W4A16", 64), ("W8A8", None), ("FP8_DYNAMIC", None)])
def test_planned_bytes_equal_llm_compressor_checkpoints(scheme, group_size):
    folder = os.path.join(LLMCOMPRESSOR, scheme)
    spec = load_model_spec(folder)
    planned = weight_breakdown(spec, create_plan_scheme(scheme, group_size=group_size), 4)  # saved in float32
    assert sum(g.num_bytes for g in planned) == _stored_bytes(folder)


def test_two_four_alone_saves_nothing_and_overheads_are_reported():
    spec = load_model_spec(config_path("Mistral-7B-v0.3"))
    dense = weight_breakdown(spec, create_plan_scheme("bf16"), 2)
    assert weight_breakdown(spec, create_plan_scheme("bf16", "2:4"), 2) == dense
    groups = {g.name: g for g in weight_breakdown(spec, create_plan_scheme("W4A16_ASYM"), 2)}
    mlp = groups["mlp (gate/up/down)"]
    # per layer: scales 3 * 14336*32 (bf16) + zero points 3 * (14336*4/32 or 4096*4/32) * groups (int32) + shapes
    scales = 3 * 458_752 * 2
    zero_points = (1792 * 32 + 1792 * 32 + 512 * 112) * 4
    assert mlp.overhead_bytes == 32 * (scales + zero_points + 3 * 16)
    assert groups["embeddings"].overhead_bytes == 0 and groups["lm_head"].num_bytes == 32768 * 4096 * 2
