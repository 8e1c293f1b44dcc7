"""2:4 sparsity: magnitude pruning, checkpoints with a sparsity_config that the compressed-tensors library
validates and HF transformers loads, the engine running them, and the legacy sparse-24-bitmask format
(packed here with numpy's little-endian packbits, as the library that wrote it did)."""

from __future__ import annotations

import json
import os

import numpy
import pytest
import torch
from compressed_tensors.config import SparsityCompressionConfig
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from tachyon import LLM, SamplingParams
from tachyon.compress import compress_model
from tachyon.quantization import decompress
from tachyon.quantization.sparsity import densify_sparse_24, is_2_4_sparse, prune_2_4
from tests.reference import hf_greedy, save_tiny_model


def test_prune_keeps_the_two_largest_of_every_four():
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    pruned = prune_2_4(weight)
    assert is_2_4_sparse(pruned) and not is_2_4_sparse(weight)
    for row_w, row_p in zip(weight.reshape(-1, 4), pruned.reshape(-1, 4)):
        kept = set(torch.argsort(row_w.abs(), descending=True)[:2].tolist())
        assert {i for i in range(4) if row_p[i] != 0} == kept
        assert torch.equal(row_p[list(kept)], row_w[list(kept)])
    with pytest.raises(ValueError, match="divisible by 4"):
        prune_2_4(torch.ones(2, 6))


def _bitmask_tensors(module: str, dense: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = dense != 0
    return {
        f"{module}.compressed": dense[mask].reshape(dense.shape[0], -1),
        f"{module}.bitmask": torch.from_numpy(numpy.packbits(mask.numpy(), axis=-1, bitorder="little")),
        f"{module}.shape": torch.tensor(dense.shape).reshape(-1, 1),
    }


def test_legacy_bitmask_format_densifies_to_the_original():
    gen = torch.Generator().manual_seed(1)
    dense = {m: prune_2_4(torch.randn(12, 40, generator=gen)) for m in ("a.q_proj", "b.down_proj")}
    codes = prune_2_4(torch.randint(-127, 128, (6, 24), generator=gen).to(torch.int8))
    stream = [("x.weight", torch.ones(3))]
    for module, weight in dense.items():
        stream += list(_bitmask_tensors(module, weight).items())
    stream += list(_bitmask_tensors("c.o_proj", codes).items())
    out = dict(densify_sparse_24(reversed(stream)))  # parts may come in any order
    assert set(out) == {"x.weight", "a.q_proj.weight", "b.down_proj.weight", "c.o_proj.weight"}
    for module, weight in dense.items():
        assert torch.equal(out[f"{module}.weight"], weight)
    assert out["c.o_proj.weight"].dtype == torch.int8 and torch.equal(out["c.o_proj.weight"], codes)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, model_dir) -> str:
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    folder = str(tmp_path_factory.mktemp("tiny") / "llama")
    save_tiny_model(config, folder, AutoTokenizer.from_pretrained(model_dir))
    return folder


@pytest.mark.parametrize("scheme", [None, "W4A16"])
def test_sparse_checkpoint_is_valid_loads_in_hf_and_runs_in_the_engine(tiny_dir, tmp_path, scheme):
    folder = compress_model(tiny_dir, scheme, str(tmp_path / "sparse"), sparsity="2:4", group_size=64)
    with open(os.path.join(folder, "config.json")) as f:
        raw = json.load(f)["quantization_config"]
    sparsity = SparsityCompressionConfig.load_from_registry(raw["sparsity_config"]["format"], **raw["sparsity_config"])
    assert sparsity.sparsity_structure == "2:4" and sparsity.global_sparsity == pytest.approx(0.5)
    QuantizationConfig.model_validate(raw)
    weights = dict(decompress(folder)) if scheme else load_file(os.path.join(folder, "model.safetensors"))
    linears = [w for name, w in weights.items() if "proj" in name]
    assert len(linears) == 14 and all(is_2_4_sparse(w) for w in linears)

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = [[5, 17, 300, 42, 8], [100, 7, 7, 250], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    ours = LLM(folder, max_model_len=128).generate(
        prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    )
    for prompt, out in zip(prompts, ours):
        assert out.outputs[0].token_ids == hf_greedy(hf, prompt, 12)


def test_engine_reads_a_legacy_bitmask_checkpoint(tiny_dir, tmp_path):
    folder = compress_model(tiny_dir, None, str(tmp_path / "dense24"), sparsity="2:4")
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    legacy = {}
    for name, tensor in tensors.items():
        module = name.removesuffix(".weight")
        legacy.update(_bitmask_tensors(module, tensor) if "proj" in name else {name: tensor})
    save_file(legacy, path)
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["quantization_config"]["sparsity_config"]["format"] = "sparse-24-bitmask"
    with open(config_path, "w") as f:
        json.dump(config, f)
    legacy_llm = LLM(folder, max_model_len=128)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    prompts = [[5, 17, 300, 42, 8], [100, 7, 7, 250]]
    got = [o.outputs[0].token_ids for o in legacy_llm.generate(prompts, params)]
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()  # pruned here, by HF's path
    with torch.no_grad():
        for name, module in hf.named_modules():
            if name.endswith("proj"):
                module.weight.copy_(prune_2_4(module.weight))
    assert got == [hf_greedy(hf, p, 8) for p in prompts]
