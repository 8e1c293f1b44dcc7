"""oneshot end to end on a shallow copy of the default model (real weights, real calibration text):

- each calibrated algorithm keeps the model closer to the dense one than its data-free baseline, measured
  on held-out text (lee.cor) by the engine's teacher-forced log-probabilities;
- the checkpoints pass the format checks: compressed-tensors' own decompression, HF transformers loading
  them with the same log-probabilities as our engine, static fp8 and KV-cache scales where asked;
- sequential calibration holds one decoder layer at a time and writes what the whole-model pipeline writes;
- recipe.yaml is saved and reads back.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from compressed_tensors.compressors.base import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tachyon import LLM, SamplingParams
from tachyon.compress import (
    AWQModifier,
    GPTQModifier,
    MagnitudePruningModifier,
    QuantizationModifier,
    Recipe,
    SmoothQuantModifier,
    SparseGPTModifier,
    oneshot,
    pipeline,
)
from tachyon.compress.kv_scales import FP8_KV_CACHE_SCHEME
from tachyon.corpus import evaluation_text
from tachyon.quantization.compressed_tensors import decompress_module
from tachyon.quantization.schemes import QuantArgs
from tachyon.quantization.sparsity import is_2_4_sparse

# 2048 tokens: more than down_proj's 1536 inputs, so its Hessian has full rank
CALIBRATION = {"num_calibration_samples": 16, "max_seq_length": 128}
RECIPES = {
    "rtn_w4a16": [QuantizationModifier(scheme="W4A16", group_size=64)],
    "gptq_w4a16": [GPTQModifier(scheme="W4A16", group_size=64)],
    "awq_w4a16": [AWQModifier(scheme="W4A16", group_size=64, num_search_tokens=512)],
    "rtn_w8a8": [QuantizationModifier(scheme="W8A8")],
    "smoothquant_w8a8": [SmoothQuantModifier(smoothing_strength=0.5), QuantizationModifier(scheme="W8A8")],
    "magnitude_2of4": [MagnitudePruningModifier(mask_structure="2:4")],
    "sparsegpt_2of4": [SparseGPTModifier(mask_structure="2:4")],
    "fp8_static_kv": [QuantizationModifier(scheme="FP8", kv_cache_scheme=FP8_KV_CACHE_SCHEME)],
}


@pytest.fixture(scope="module")
def compressed(shallow_model_dir, tmp_path_factory):
    """recipe name -> checkpoint folder, made once per module."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            out = str(tmp_path_factory.mktemp("oneshot") / name)
            made[name] = oneshot(shallow_model_dir, RECIPES[name], output_dir=out, **CALIBRATION).output_dir
        return made[name]

    return get


@pytest.fixture(scope="module")
def heldout_ids(shallow_model_dir) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shallow_model_dir).encode(evaluation_text(4))[:256]


def engine_logprobs(model: str, ids: list[int]) -> torch.Tensor:
    llm = LLM(model=model)
    out = llm.generate([ids], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    return torch.tensor([out.prompt_logprobs[t][ids[t]].logprob for t in range(1, len(ids))])


@pytest.fixture(scope="module")
def drift(shallow_model_dir, heldout_ids, compressed):
    """recipe name -> mean |log p(token) - dense log p(token)| over the held-out text."""
    dense = engine_logprobs(shallow_model_dir, heldout_ids)
    return lambda name: (engine_logprobs(compressed(name), heldout_ids) - dense).abs().mean().item()


@pytest.mark.parametrize(
    ("calibrated", "baseline"),
    [
        ("gptq_w4a16", "rtn_w4a16"),
        ("awq_w4a16", "rtn_w4a16"),
        ("sparsegpt_2of4", "magnitude_2of4"),
        ("smoothquant_w8a8", "rtn_w8a8"),
    ],
)
def test_calibrated_algorithm_beats_its_data_free_baseline(drift, calibrated, baseline):
    ours, theirs = drift(calibrated), drift(baseline)
    assert ours < theirs, f"{calibrated} drifts {ours:.4f} nats per token from dense, {baseline} {theirs:.4f}"


def test_gptq_checkpoint_decompresses_with_compressed_tensors(compressed):
    out = compressed("gptq_w4a16")
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)["quantization_config"]
    stored = load_file(os.path.join(out, "model.safetensors"))
    scheme = QuantizationConfig.model_validate(raw).config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(raw["format"])
    module = "model.layers.1.mlp.down_proj"
    tensors = {s: stored[f"{module}.{s}"] for s in ("weight_packed", "weight_scale", "weight_shape")}
    ours = decompress_module(tensors, QuantArgs.from_config(raw["config_groups"]["group_0"]["weights"]), raw["format"])
    assert torch.equal(compressor.decompress(tensors, scheme)["weight"], ours)


@pytest.mark.parametrize("name", ["gptq_w4a16", "awq_w4a16", "sparsegpt_2of4", "smoothquant_w8a8"])
def test_hf_transformers_loads_the_checkpoint_and_agrees_with_the_engine(compressed, heldout_ids, name):
    """Weight-only and pruned checkpoints token by token; W8A8 by mean log-likelihood, since rounding
    activations to int8 turns float-level differences into whole steps (test_quantized_checkpoints.py)."""
    out = compressed(name)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([heldout_ids])
    with torch.no_grad():
        logprobs = hf(ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    ours = engine_logprobs(out, heldout_ids)
    if name.endswith("w8a8"):
        assert ours.mean().item() == pytest.approx(logprobs.mean().item(), abs=0.02)
    else:
        assert torch.allclose(ours, logprobs, atol=2e-3)


def test_sparsegpt_checkpoint_is_2_4_sparse_and_says_so(compressed):
    out = compressed("sparsegpt_2of4")
    stored = load_file(os.path.join(out, "model.safetensors"))
    linears = [t for n, t in stored.items() if n.endswith("proj.weight")]
    assert len(linears) == 3 * 7 and all(is_2_4_sparse(t) for t in linears)
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        sparsity = json.load(f)["quantization_config"]["sparsity_config"]
    assert sparsity["sparsity_structure"] == "2:4" and sparsity["global_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_static_fp8_writes_input_and_kv_cache_scales(compressed, heldout_ids):
    out = compressed("fp8_static_kv")
    stored = load_file(os.path.join(out, "model.safetensors"))
    assert stored["model.layers.0.self_attn.q_proj.input_scale"].shape == (1,)
    k_scales = [stored[f"model.layers.{i}.self_attn.k_scale"] for i in range(3)]
    assert all(s.shape == (1,) and s.item() > 0 for s in k_scales)
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config = json.load(f)["quantization_config"]
    assert config["kv_cache_scheme"] == FP8_KV_CACHE_SCHEME
    assert config["config_groups"]["group_0"]["input_activations"]["dynamic"] is False
    # the key scale bounds what the cache stores: keys after RoPE, max |k| / 448
    assert all(s.item() * 448 < 1e4 for s in k_scales)
    assert torch.isfinite(engine_logprobs(out, heldout_ids)).all()
    AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # HF loads it (it ignores kv scales)


def test_sequential_pipeline_holds_one_layer_and_matches_whole_model(shallow_model_dir, tmp_path, monkeypatch):
    most = [0]
    real = pipeline.LayerwiseModel.materialize

    def counting(self, index):
        layer = real(self, index)
        live = sum(not next(layer.parameters()).is_meta for layer in self.skeleton.model.layers)
        most[0] = max(most[0], live)
        return layer

    monkeypatch.setattr(pipeline.LayerwiseModel, "materialize", counting)
    recipe = [SmoothQuantModifier(), QuantizationModifier(scheme="W8A8")]
    sequential = oneshot(shallow_model_dir, recipe, output_dir=str(tmp_path / "seq"), **CALIBRATION).output_dir
    assert most[0] == 1
    whole = oneshot(
        shallow_model_dir, recipe, output_dir=str(tmp_path / "whole"), pipeline="whole_model", **CALIBRATION
    ).output_dir
    assert most[0] == 3
    a, b = load_file(f"{sequential}/model.safetensors"), load_file(f"{whole}/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_recipe_is_saved_and_reads_back(compressed):
    out = compressed("smoothquant_w8a8")
    recipe = Recipe.from_yaml(os.path.join(out, "recipe.yaml"))
    assert [type(m).__name__ for m in recipe.modifiers] == ["SmoothQuantModifier", "QuantizationModifier"]
    assert recipe.modifiers[0].smoothing_strength == 0.5 and recipe.modifiers[1].scheme == "W8A8"


def test_cli_compresses_with_a_recipe_file_and_saves_it(shallow_model_dir, tmp_path):
    from tests.test_cli import _tachyon

    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "recipes", "fp8_static_kv.yaml")
    out = tmp_path / "fp8"
    run = _tachyon(
        "compress", shallow_model_dir, "--recipe", recipe, "--output", str(out),
        "--num-calibration-samples", "2", "--max-seq-length", "32",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 calibration samples" in run.stderr and "peak memory" in run.stderr
    saved = Recipe.from_yaml(str(out / "recipe.yaml")).modifiers
    assert [m.to_dict() for m in saved] == [m.to_dict() for m in Recipe.from_yaml(recipe).modifiers]
    mixed = _tachyon(
        "compress", shallow_model_dir, "--recipe", recipe, "--scheme", "W8A8", "--output", str(tmp_path / "x")
    )
    assert mixed.returncode == 2 and "go into the recipe instead" in mixed.stderr
